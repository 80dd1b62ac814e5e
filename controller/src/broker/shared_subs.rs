//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5 §4.8.2), with Mosquitto's
//! semantics: each group matching a topic gets one copy of the message, given to its
//! members in turn (round-robin per message); retained messages are not sent on a
//! shared subscribe (the router's concern).
//!
//! ```text
//!   $share/g1/sensors/#  ─┐                ┌─ member a   ← message 1, 3, …
//!                         ├─ group "g1" ───┤
//!   (one trie entry)     ─┘                └─ member b   ← message 2, 4, …
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use super::trie::TrieNode;
use super::types::SubOptions;
use crate::auth::acl::valid_topic_filter;

/// The prefix of a shared subscription's filter.
pub const PREFIX: &str = "$share/";

/// Why a `$share/` filter is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidShare {
    /// The share name is empty or contains `+` or `#`.
    #[error("a share name must be non-empty and must not contain `+` or `#`")]
    ShareName,
    /// No `/` and filter follow the share name, or the filter is invalid.
    #[error("a share name must be followed by `/` and a valid topic filter")]
    Filter,
}

/// Splits `$share/{group}/{filter}` into group and filter. `Ok(None)` for a filter
/// that is not a shared subscription.
pub fn parse(filter: &str) -> Result<Option<(&str, &str)>, InvalidShare> {
    let Some(rest) = filter.strip_prefix(PREFIX) else {
        return Ok(None);
    };
    let (group, topic) = rest.split_once('/').ok_or(InvalidShare::Filter)?;
    if group.is_empty() || group.contains(['+', '#']) {
        return Err(InvalidShare::ShareName);
    }
    if !valid_topic_filter(topic) {
        return Err(InvalidShare::Filter);
    }
    Ok(Some((group, topic)))
}

#[derive(Debug, Default)]
struct Group {
    members: Vec<(Arc<str>, SubOptions)>,
    next: usize,
}

/// Every share group, found by topic through a trie of their filters.
#[derive(Debug, Default)]
pub struct SharedSubs {
    /// Keyed by the full `$share/{group}/{filter}` string: one entry per group.
    trie: TrieNode,
    groups: HashMap<Arc<str>, Group>,
}

impl SharedSubs {
    /// Adds `client` to the group of `share` (a filter [`parse`] accepted), or
    /// replaces its options there.
    pub fn insert(&mut self, share: &str, client: Arc<str>, opts: SubOptions) {
        let Ok(Some((_, filter))) = parse(share) else {
            return;
        };
        let group = match self.groups.get_mut(share) {
            Some(g) => g,
            None => {
                let key: Arc<str> = share.into();
                self.trie.insert(filter, key.clone(), SubOptions::default());
                self.groups.entry(key).or_default()
            }
        };
        match group.members.iter_mut().find(|(c, _)| *c == client) {
            Some(m) => m.1 = opts,
            None => group.members.push((client, opts)),
        }
    }

    /// Removes `client` from the group of `share`; a group left empty is removed.
    /// Returns whether it was a member.
    pub fn remove(&mut self, share: &str, client: &str) -> bool {
        let Some(group) = self.groups.get_mut(share) else {
            return false;
        };
        let before = group.members.len();
        group.members.retain(|(c, _)| &**c != client);
        let removed = group.members.len() != before;
        if group.members.is_empty() {
            self.groups.remove(share);
            if let Ok(Some((_, filter))) = parse(share) {
                self.trie.remove(filter, share);
            }
        }
        removed
    }

    /// The member of each group matching `topic` that gets this message, with the
    /// options of its subscription; advances each group's turn. A member for which
    /// `may_receive` is false is passed over (the ACL keeps the message from it), so
    /// the next one in turn gets the message; when no member may receive it, the member
    /// whose turn it was is returned, for the caller to count the refusal.
    pub fn pick(
        &mut self,
        topic: &str,
        mut may_receive: impl FnMut(&str) -> bool,
    ) -> Vec<(Arc<str>, SubOptions)> {
        let mut out = Vec::new();
        for (key, _) in self.trie.matches(topic) {
            let Some(g) = self.groups.get_mut(&key) else {
                continue;
            };
            let n = g.members.len();
            if n == 0 {
                continue;
            }
            let turn = g.next % n;
            let i = (0..n)
                .map(|k| (turn + k) % n)
                .find(|&i| may_receive(&g.members[i].0))
                .unwrap_or(turn);
            g.next = i + 1;
            out.push(g.members[i].clone());
        }
        out
    }

    /// Nodes of the groups' trie.
    pub fn trie_nodes(&self) -> usize {
        self.trie.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Arc<str> {
        s.into()
    }

    #[test]
    fn share_names_with_wildcards_or_without_a_filter_are_refused() {
        assert_eq!(parse("a/b"), Ok(None));
        assert_eq!(parse("$share/g/a/+"), Ok(Some(("g", "a/+"))));
        assert_eq!(parse("$share/g+/a"), Err(InvalidShare::ShareName));
        assert_eq!(parse("$share/#/a"), Err(InvalidShare::ShareName));
        assert_eq!(parse("$share//a"), Err(InvalidShare::ShareName));
        assert_eq!(parse("$share/g"), Err(InvalidShare::Filter));
        assert_eq!(parse("$share/g/"), Err(InvalidShare::Filter));
        assert_eq!(parse("$share/g/a/#/b"), Err(InvalidShare::Filter));
    }

    #[test]
    fn members_of_a_group_take_messages_in_turn_and_each_group_gets_one_copy() {
        let mut s = SharedSubs::default();
        s.insert("$share/g1/t/#", id("a"), SubOptions::default());
        s.insert("$share/g1/t/#", id("b"), SubOptions::default());
        s.insert("$share/g2/t/+", id("c"), SubOptions::default());
        let mut g1 = Vec::new();
        for _ in 0..4 {
            let mut got: Vec<String> = s
                .pick("t/x", |_| true)
                .iter()
                .map(|(c, _)| c.to_string())
                .collect();
            got.sort();
            assert_eq!(got.len(), 2, "one copy per group: {got:?}");
            assert_eq!(got.last().map(String::as_str), Some("c"));
            g1.push(got[0].clone());
        }
        assert_eq!(g1, ["a", "b", "a", "b"]);
    }

    #[test]
    fn members_that_may_not_receive_are_passed_over() {
        let mut s = SharedSubs::default();
        for m in ["a", "b", "c"] {
            s.insert("$share/g/t", id(m), SubOptions::default());
        }
        let picked: Vec<String> = (0..6)
            .map(|_| s.pick("t", |c| c != "b")[0].0.to_string())
            .collect();
        assert_eq!(picked, ["a", "c", "a", "c", "a", "c"]);
        // Nobody may receive: the member in turn is returned (and refused by the caller).
        let nobody: Vec<String> = (0..3)
            .map(|_| s.pick("t", |_| false)[0].0.to_string())
            .collect();
        assert_eq!(nobody, ["a", "b", "c"]);
    }

    #[test]
    fn the_last_member_leaving_removes_the_group() {
        let mut s = SharedSubs::default();
        s.insert("$share/g/t", id("a"), SubOptions::default());
        assert!(s.remove("$share/g/t", "a"));
        assert!(!s.remove("$share/g/t", "a"));
        assert!(s.pick("t", |_| true).is_empty());
        assert_eq!(s.trie_nodes(), 1);
    }
}
