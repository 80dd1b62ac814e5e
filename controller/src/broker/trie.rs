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
#[derive(Default, Debug)]
pub struct TrieNode {
    children: HashMap<Box<str>, TrieNode>,
    subscribers: HashMap<Arc<str>, SubOptions>,
}

impl TrieNode {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty()
    }

    /// Adds or replaces `client`'s subscription to `filter`.
    pub fn insert(&mut self, filter: &str, client: Arc<str>, opts: SubOptions) {
        self.insert_levels(&levels(filter), client, opts);
    }

    fn insert_levels(&mut self, levels: &[&str], client: Arc<str>, opts: SubOptions) {
        match levels.split_first() {
            None => {
                self.subscribers.insert(client, opts);
            }
            Some((first, rest)) => self
                .children
                .entry((*first).into())
                .or_default()
                .insert_levels(rest, client, opts),
        }
    }

    /// Removes a subscriber; prunes nodes left empty. Returns whether it existed.
    pub fn remove(&mut self, filter: &str, client: &str) -> bool {
        self.remove_levels(&levels(filter), client)
    }

    fn remove_levels(&mut self, levels: &[&str], client: &str) -> bool {
        match levels.split_first() {
            None => self.subscribers.remove(client).is_some(),
            Some((first, rest)) => {
                let Some(child) = self.children.get_mut(*first) else {
                    return false;
                };
                let removed = child.remove_levels(rest, client);
                if child.is_empty() {
                    self.children.remove(*first);
                }
                removed
            }
        }
    }

    /// Every subscriber whose filter matches `topic`, with its subscriptions merged,
    /// each subscriber once.
    ///
    /// Most topics match the filters of one node only (`a/b` or `a/+`, not both): its
    /// subscribers are then taken as they are. Only when several nodes match are they
    /// merged by client, which costs a hash of each client id.
    pub fn matches(&self, topic: &str) -> Vec<(Arc<str>, Matched)> {
        let mut nodes = Vec::new();
        self.collect(&levels(topic), true, topic.starts_with('$'), &mut nodes);
        nodes.retain(|subs| !subs.is_empty());
        match nodes.as_slice() {
            [] => Vec::new(),
            [subs] => subs
                .iter()
                .map(|(client, opts)| (client.clone(), Matched::from(*opts)))
                .collect(),
            _ => {
                let mut out: HashMap<Arc<str>, Matched> = HashMap::new();
                for subs in nodes {
                    merge(&mut out, subs);
                }
                out.into_iter().collect()
            }
        }
    }

    /// The subscriber sets of every node whose filter matches the levels.
    fn collect<'a>(
        &'a self,
        levels: &[&str],
        first: bool,
        dollar: bool,
        out: &mut Vec<&'a HashMap<Arc<str>, SubOptions>>,
    ) {
        let wildcard_ok = !(first && dollar);
        if wildcard_ok {
            if let Some(hash) = self.children.get("#") {
                out.push(&hash.subscribers);
            }
        }
        match levels.split_first() {
            None => out.push(&self.subscribers),
            Some((level, rest)) => {
                if let Some(child) = self.children.get(*level) {
                    child.collect(rest, false, dollar, out);
                }
                if wildcard_ok {
                    if let Some(child) = self.children.get("+") {
                        child.collect(rest, false, dollar, out);
                    }
                }
            }
        }
    }

    /// Nodes in the trie, this one included.
    pub fn count(&self) -> usize {
        1 + self.children.values().map(TrieNode::count).sum::<usize>()
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

fn levels(s: &str) -> Vec<&str> {
    s.split('/').collect()
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
