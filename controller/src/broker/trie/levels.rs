//! The literal child levels of a trie node.
//!
//! Most nodes have a few children (`home/kitchen`, `home/garage`), and comparing a
//! few short strings costs less than hashing one: up to [`FEW`] children are kept in
//! a list searched in order, more in a hash map. The list is bounded, so a subscriber
//! who creates many levels under one node makes lookups no slower than hashing.

use std::collections::HashMap;

use super::TrieNode;

/// Most children kept in a list; one more and they move to a hash map.
const FEW: usize = 8;

/// The literal levels below a node.
#[derive(Debug)]
pub(super) enum Levels {
    /// Up to [`FEW`], searched in order.
    Few(Vec<(Box<str>, TrieNode)>),
    /// More than [`FEW`].
    Many(HashMap<Box<str>, TrieNode>),
}

impl Default for Levels {
    fn default() -> Self {
        Levels::Few(Vec::new())
    }
}

impl Levels {
    pub(super) fn is_empty(&self) -> bool {
        match self {
            Levels::Few(v) => v.is_empty(),
            Levels::Many(m) => m.is_empty(),
        }
    }

    pub(super) fn get(&self, level: &str) -> Option<&TrieNode> {
        match self {
            Levels::Few(v) => v.iter().find(|(l, _)| **l == *level).map(|(_, n)| n),
            Levels::Many(m) => m.get(level),
        }
    }

    pub(super) fn get_mut(&mut self, level: &str) -> Option<&mut TrieNode> {
        match self {
            Levels::Few(v) => v.iter_mut().find(|(l, _)| **l == *level).map(|(_, n)| n),
            Levels::Many(m) => m.get_mut(level),
        }
    }

    /// The child for `level`, created if missing.
    pub(super) fn get_or_insert(&mut self, level: &str) -> &mut TrieNode {
        if let Levels::Few(v) = self {
            if v.len() >= FEW && !v.iter().any(|(l, _)| **l == *level) {
                *self = Levels::Many(std::mem::take(v).into_iter().collect());
            }
        }
        match self {
            Levels::Few(v) => match v.iter().position(|(l, _)| **l == *level) {
                Some(i) => &mut v[i].1,
                None => {
                    v.push((level.into(), TrieNode::default()));
                    &mut v.last_mut().expect("just pushed").1
                }
            },
            Levels::Many(m) => m.entry(level.into()).or_default(),
        }
    }

    /// Removes the child for `level`. A map that shrank to [`FEW`] / 2 becomes a list
    /// again (not at [`FEW`], so that one level coming and going does not convert it
    /// back and forth).
    pub(super) fn remove(&mut self, level: &str) {
        match self {
            Levels::Few(v) => v.retain(|(l, _)| **l != *level),
            Levels::Many(m) => {
                m.remove(level);
                if m.len() <= FEW / 2 {
                    *self = Levels::Few(std::mem::take(m).into_iter().collect());
                }
            }
        }
    }

    pub(super) fn nodes(&self) -> Box<dyn Iterator<Item = &TrieNode> + '_> {
        match self {
            Levels::Few(v) => Box::new(v.iter().map(|(_, n)| n)),
            Levels::Many(m) => Box::new(m.values()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(levels: &Levels) -> Vec<String> {
        let mut out: Vec<String> = match levels {
            Levels::Few(v) => v.iter().map(|(l, _)| l.to_string()).collect(),
            Levels::Many(m) => m.keys().map(|l| l.to_string()).collect(),
        };
        out.sort();
        out
    }

    #[test]
    fn levels_move_to_a_map_past_the_list_and_back_once_few_are_left() {
        let mut levels = Levels::default();
        for i in 0..FEW {
            levels.get_or_insert(&format!("l{i}"));
            levels.get_or_insert(&format!("l{i}")); // found, not added twice
        }
        assert!(matches!(&levels, Levels::Few(v) if v.len() == FEW));
        levels.get_or_insert("l0");
        assert!(
            matches!(levels, Levels::Few(_)),
            "an existing level adds nothing"
        );
        levels.get_or_insert("extra");
        assert!(matches!(&levels, Levels::Many(m) if m.len() == FEW + 1));
        for i in 0..FEW {
            assert!(levels.get(&format!("l{i}")).is_some());
        }
        assert!(levels.get("extra").is_some() && levels.get("l").is_none());
        for i in 0..=FEW / 2 {
            levels.remove(&format!("l{i}"));
        }
        assert!(matches!(&levels, Levels::Few(v) if v.len() == FEW / 2));
        let mut want: Vec<String> = (FEW / 2 + 1..FEW).map(|i| format!("l{i}")).collect();
        want.push("extra".into());
        want.sort();
        assert_eq!(names(&levels), want);
        for l in want {
            levels.remove(&l);
        }
        assert!(levels.is_empty());
    }
}
