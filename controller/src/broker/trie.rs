//! The subscription trie: one node per topic level, subscribers at the node where
//! their filter ends. Nodes are freed when their last subscriber leaves, so memory
//! follows the live subscriptions.
//!
//! ```text
//!   root ─ home ─ + ─ temp   {client a}
//!        │      └ #          {client b}
//!        └ $SYS ─ #          {client c}   (`#`/`+` at the first level skip `$` topics)
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use super::types::SubOptions;

mod levels;
use levels::Levels;

/// What a topic matched for one subscriber: the options of its matching
/// subscriptions merged (highest QoS), and every subscription identifier among them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matched {
    /// Merged options.
    pub opts: SubOptions,
    /// MQTT 5 subscription identifiers of the matching subscriptions.
    pub ids: Vec<u32>,
}

impl From<SubOptions> for Matched {
    /// One subscription's options and its identifier.
    fn from(opts: SubOptions) -> Matched {
        Matched {
            opts,
            ids: opts.id.into_iter().collect(),
        }
    }
}

/// A trie of subscribers keyed by `K` (a client id, or a share group's key).
///
/// The wildcard levels have fields of their own, so that matching a topic looks up
/// each of its levels once (the literal level) rather than three times.
#[derive(Default, Debug)]
pub struct TrieNode {
    /// Literal levels.
    children: Levels,
    /// The `+` level.
    plus: Option<Box<TrieNode>>,
    /// The `#` level (a filter ends there, so only its subscribers count).
    hash: Option<Box<TrieNode>>,
    subscribers: HashMap<Arc<str>, SubOptions>,
}

impl TrieNode {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.subscribers.is_empty()
    }

    /// The child for `level`, created if missing.
    fn child_mut(&mut self, level: &str) -> &mut TrieNode {
        match level {
            "+" => self.plus.get_or_insert_with(Box::default),
            "#" => self.hash.get_or_insert_with(Box::default),
            _ => self.children.get_or_insert(level),
        }
    }

    /// Adds or replaces `client`'s subscription to `filter`.
    pub fn insert(&mut self, filter: &str, client: Arc<str>, opts: SubOptions) {
        let mut node = self;
        for level in filter.split('/') {
            node = node.child_mut(level);
        }
        node.subscribers.insert(client, opts);
    }

    /// Removes a subscriber; prunes nodes left empty. Returns whether it existed.
    pub fn remove(&mut self, filter: &str, client: &str) -> bool {
        self.remove_levels(Some(filter), client)
    }

    /// `levels`: what is left of the filter below this node (`None`: it ends here).
    fn remove_levels(&mut self, levels: Option<&str>, client: &str) -> bool {
        let Some(levels) = levels else {
            return self.subscribers.remove(client).is_some();
        };
        let (level, rest) = split_level(levels);
        match level {
            "+" => remove_below(&mut self.plus, rest, client),
            "#" => remove_below(&mut self.hash, rest, client),
            _ => {
                let Some(child) = self.children.get_mut(level) else {
                    return false;
                };
                let removed = child.remove_levels(rest, client);
                if child.is_empty() {
                    self.children.remove(level);
                }
                removed
            }
        }
    }

    /// Every subscriber whose filter matches `topic`, with its subscriptions merged,
    /// each subscriber once.
    pub fn matches(&self, topic: &str) -> Vec<(Arc<str>, Matched)> {
        let mut out = Vec::new();
        self.matches_into(topic, &mut out);
        out
    }

    /// [`TrieNode::matches`] appended to `out`, whose room a caller may keep from one
    /// message to the next.
    ///
    /// Most topics match the filters of one node only (`a/b` or `a/+`, not both): its
    /// subscribers are then taken as they are, and no list of nodes is made. Only
    /// when several nodes match are they merged by client, which costs a hash of each
    /// client id.
    pub fn matches_into(&self, topic: &str, out: &mut Vec<(Arc<str>, Matched)>) {
        if self.is_empty() {
            return;
        }
        let mut found = Found::None;
        self.collect(Some(topic), true, topic.starts_with('$'), &mut found);
        match found {
            Found::None => {}
            Found::One(subs) => out.extend(
                subs.iter()
                    .map(|(client, opts)| (client.clone(), Matched::from(*opts))),
            ),
            Found::Many(nodes) => {
                let mut merged: HashMap<Arc<str>, Matched> = HashMap::new();
                for subs in nodes {
                    merge(&mut merged, subs);
                }
                out.extend(merged);
            }
        }
    }

    /// The subscriber sets of every node whose filter matches `levels` (what is left
    /// of the topic below this node; `None`: the topic ends here).
    fn collect<'a>(&'a self, levels: Option<&str>, first: bool, dollar: bool, out: &mut Found<'a>) {
        // `#` and `+` at the first level do not match a `$` topic [MQTT-4.7.2-1].
        let wildcard_ok = !(first && dollar);
        if wildcard_ok {
            if let Some(hash) = &self.hash {
                out.add(&hash.subscribers);
            }
        }
        match levels {
            None => out.add(&self.subscribers),
            Some(levels) => {
                let (level, rest) = split_level(levels);
                if let Some(child) = self.children.get(level) {
                    child.collect(rest, false, dollar, out);
                }
                if wildcard_ok {
                    if let Some(child) = &self.plus {
                        child.collect(rest, false, dollar, out);
                    }
                }
            }
        }
    }

    /// Nodes in the trie, this one included.
    pub fn count(&self) -> usize {
        1 + self.children.nodes().map(TrieNode::count).sum::<usize>()
            + self.plus.as_ref().map_or(0, |n| n.count())
            + self.hash.as_ref().map_or(0, |n| n.count())
    }
}

/// Removes a subscriber below a wildcard child, and the child once it is empty.
fn remove_below(slot: &mut Option<Box<TrieNode>>, levels: Option<&str>, client: &str) -> bool {
    let Some(child) = slot else {
        return false;
    };
    let removed = child.remove_levels(levels, client);
    if child.is_empty() {
        *slot = None;
    }
    removed
}

/// The first level of `levels` and what follows it (`None` after the last level).
///
/// A plain scan: topic levels are short, and `split_once`'s search costs more to set
/// up than the scan.
fn split_level(levels: &str) -> (&str, Option<&str>) {
    match levels.bytes().position(|b| b == b'/') {
        // `/` is one byte of UTF-8: both sides are whole characters.
        Some(i) => (&levels[..i], Some(&levels[i + 1..])),
        None => (levels, None),
    }
}

/// The subscriber sets a topic matched: none, one (the usual case, kept without a
/// list), or several.
enum Found<'a> {
    None,
    One(&'a HashMap<Arc<str>, SubOptions>),
    Many(Vec<&'a HashMap<Arc<str>, SubOptions>>),
}

impl<'a> Found<'a> {
    fn add(&mut self, subs: &'a HashMap<Arc<str>, SubOptions>) {
        if subs.is_empty() {
            return;
        }
        *self = match std::mem::replace(self, Found::None) {
            Found::None => Found::One(subs),
            Found::One(first) => Found::Many(vec![first, subs]),
            Found::Many(mut all) => {
                all.push(subs);
                Found::Many(all)
            }
        };
    }
}

fn merge(out: &mut HashMap<Arc<str>, Matched>, subs: &HashMap<Arc<str>, SubOptions>) {
    for (client, opts) in subs {
        match out.get_mut(client) {
            Some(m) => {
                m.opts.qos = m.opts.qos.max(opts.qos);
                m.opts.no_local &= opts.no_local;
                m.opts.retain_as_published |= opts.retain_as_published;
                m.ids.extend(opts.id);
            }
            None => {
                out.insert(client.clone(), Matched::from(*opts));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(qos: u8, id: Option<u32>) -> SubOptions {
        SubOptions {
            qos,
            id,
            ..SubOptions::default()
        }
    }

    #[test]
    fn overlapping_subscriptions_merge_to_the_highest_qos_and_every_identifier() {
        let mut t = TrieNode::default();
        let c: Arc<str> = "c".into();
        t.insert("a/#", c.clone(), opts(0, Some(1)));
        t.insert("a/+", c.clone(), opts(2, Some(7)));
        t.insert("a/b", c.clone(), opts(1, None));
        let all = t.matches("a/b");
        assert_eq!(all.len(), 1, "one entry per subscriber: {all:?}");
        let (client, m) = &all[0];
        assert_eq!(client, &c);
        assert_eq!(m.opts.qos, 2);
        let mut ids = m.ids.clone();
        ids.sort();
        assert_eq!(ids, vec![1, 7]);
    }

    #[test]
    fn subscribers_of_one_node_come_once_each_with_their_own_options() {
        let mut t = TrieNode::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        t.insert("x/y", a.clone(), opts(1, Some(3)));
        t.insert("x/y", b.clone(), opts(0, None));
        let mut all = t.matches("x/y");
        all.sort_by(|l, r| l.0.cmp(&r.0));
        assert_eq!(
            all,
            vec![
                (
                    a,
                    Matched {
                        opts: opts(1, Some(3)),
                        ids: vec![3]
                    }
                ),
                (
                    b,
                    Matched {
                        opts: opts(0, None),
                        ids: vec![]
                    }
                ),
            ]
        );
        assert!(t.matches("x/z").is_empty());
    }

    #[test]
    fn the_last_subscriber_leaving_frees_its_nodes_wildcards_included() {
        let mut t = TrieNode::default();
        let c: Arc<str> = "c".into();
        let filters = ["a/+/b", "a/#", "+/x", "#", "a/b", "+"];
        for f in filters {
            t.insert(f, c.clone(), opts(0, None));
        }
        // root, a, a/+, a/+/b, a/#, a/b, +, +/x, #
        assert_eq!(t.count(), 9);
        assert_eq!(t.matches("a/q/b").len(), 1, "a/+/b, a/# and # merge");
        for f in filters {
            assert!(t.remove(f, "c"), "{f} was subscribed");
            assert!(!t.remove(f, "c"), "{f} is gone");
        }
        assert_eq!(t.count(), 1);
        assert!(t.matches("a/b").is_empty());
    }

    #[test]
    fn subscribers_of_several_nodes_come_once_each() {
        let mut t = TrieNode::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        t.insert("x/y", a.clone(), opts(1, None));
        t.insert("x/+", b.clone(), opts(1, None));
        t.insert("#", a.clone(), opts(0, None));
        t.insert("$SYS/#", b.clone(), opts(0, None));
        let mut all: Vec<_> = t
            .matches("x/y")
            .into_iter()
            .map(|(c, m)| (c, m.opts.qos))
            .collect();
        all.sort();
        assert_eq!(all, vec![(a.clone(), 1), (b.clone(), 1)]);
        // `#` at the first level does not match a `$` topic [MQTT-4.7.2-1].
        let sys: Vec<_> = t.matches("$SYS/x").into_iter().map(|(c, _)| c).collect();
        assert_eq!(sys, vec![b]);
    }
}
