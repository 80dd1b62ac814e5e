//! Which commit of a followed repository to apply: a pure function of the applied
//! commit, the remote's head and the new commits with their signature checks.
//!
//! Rules:
//! - fast-forward only: a head that does not descend from the applied commit (a
//!   rewind to an older commit, rewritten history) is refused as a whole;
//! - every new commit is checked, oldest first (parents before children); the first
//!   that is unsigned or not signed by an allowed signer stops the update: the newest
//!   good commit before it that descends from the applied one is applied, and the bad
//!   one is reported;
//! - with nothing applied yet, only the head is checked (its signature covers its
//!   whole tree): there is no known-good commit to count from.

use serde::{Deserialize, Serialize};

/// The result of checking one commit's signature against the allowed signers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signature {
    /// A good signature by an allowed signer (the principal of the allowed-signers file).
    Good {
        /// The principal (e.g. `alice@example.com`).
        signer: String,
    },
    /// No signature.
    Unsigned,
    /// A signature that verifies with a key that is not an allowed signer.
    UnknownKey {
        /// Fingerprint of the key, when known.
        key: String,
    },
    /// A signature that does not verify, or could not be checked (`%G?` of git).
    Bad {
        /// git's one-letter verdict.
        code: char,
    },
}

/// One commit between the applied one and the head, as the mirror knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCommit {
    /// Full commit id.
    pub id: String,
    /// Signature check.
    pub signature: Signature,
    /// Whether it descends from the applied commit (so applying it is a fast-forward).
    pub descends: bool,
    /// Committer time, Unix seconds.
    pub time: i64,
}

/// Why a commit was refused; also the `reason` label of the refusal metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RefusalReason {
    /// The head does not descend from the applied commit.
    NotFastForward,
    /// A new commit carries no signature.
    Unsigned,
    /// A new commit is signed by a key that is not in the allowed signers.
    UnknownSigner,
    /// A new commit's signature does not verify.
    BadSignature,
    /// The revision could not be checked out (the folder is missing from it).
    Checkout,
}

impl RefusalReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::NotFastForward => "not_fast_forward",
            RefusalReason::Unsigned => "unsigned",
            RefusalReason::UnknownSigner => "unknown_signer",
            RefusalReason::BadSignature => "bad_signature",
            RefusalReason::Checkout => "checkout",
        }
    }
}

/// A refused commit and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    /// The commit refused.
    pub commit: String,
    /// Why, as a label.
    pub reason: RefusalReason,
    /// Why, for people.
    pub message: String,
}

/// What to do after a fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The commit to switch to, with its signer and time (none: keep the applied one).
    pub apply: Option<(String, String, i64)>,
    /// The commit that stopped the update, if one did.
    pub refused: Option<Refusal>,
}

/// Decides what to apply. `new` lists the commits reachable from `head` but not from
/// `applied`, parents before children (with nothing applied, just the head).
pub fn decide(
    applied: Option<&str>,
    head: &str,
    head_descends: bool,
    new: &[NewCommit],
) -> Decision {
    let keep = |refused| Decision {
        apply: None,
        refused,
    };
    if applied == Some(head) {
        return keep(None);
    }
    if applied.is_some() && !head_descends {
        let a = applied.unwrap_or_default();
        return keep(Some(Refusal {
            commit: head.to_string(),
            reason: RefusalReason::NotFastForward,
            message: format!(
                "the remote's head {} does not descend from the applied commit {} (history rewound or rewritten); keeping {}",
                short(head),
                short(a),
                short(a)
            ),
        }));
    }
    let mut apply = None;
    for c in new {
        let (reason, why) = match &c.signature {
            Signature::Good { signer } => {
                if c.descends || applied.is_none() {
                    apply = Some((c.id.clone(), signer.clone(), c.time));
                }
                continue;
            }
            Signature::Unsigned => (RefusalReason::Unsigned, "it is not signed".to_string()),
            Signature::UnknownKey { key } => (
                RefusalReason::UnknownSigner,
                format!("it is signed by key {key}, which is not an allowed signer"),
            ),
            Signature::Bad { code } => (
                RefusalReason::BadSignature,
                format!("its signature does not verify (git: {code})"),
            ),
        };
        let kept = apply
            .as_ref()
            .map(|(id, _, _)| id.as_str())
            .or(applied)
            .map(short)
            .unwrap_or("nothing");
        return Decision {
            refused: Some(Refusal {
                commit: c.id.clone(),
                reason,
                message: format!(
                    "commit {} refused: {why}; the update stops at {kept}",
                    short(&c.id)
                ),
            }),
            apply,
        };
    }
    Decision {
        apply,
        refused: None,
    }
}

/// The first 12 characters of a commit id.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good(id: &str) -> NewCommit {
        NewCommit {
            id: id.into(),
            signature: Signature::Good {
                signer: "alice@example.com".into(),
            },
            descends: true,
            time: 100,
        }
    }

    fn with(id: &str, signature: Signature) -> NewCommit {
        NewCommit {
            signature,
            ..good(id)
        }
    }

    #[test]
    fn a_signed_fast_forward_is_applied_up_to_the_head() {
        let d = decide(Some("a"), "c", true, &[good("b"), good("c")]);
        assert_eq!(d.apply.unwrap().0, "c");
        assert_eq!(d.refused, None);
    }

    #[test]
    fn the_applied_head_changes_nothing() {
        assert_eq!(
            decide(Some("a"), "a", true, &[]),
            Decision {
                apply: None,
                refused: None
            }
        );
    }

    #[test]
    fn a_rewind_or_rewrite_is_refused_whatever_its_signatures() {
        let d = decide(Some("b"), "a", false, &[]);
        assert_eq!(d.apply, None);
        let r = d.refused.unwrap();
        assert_eq!(
            (r.commit.as_str(), r.reason),
            ("a", RefusalReason::NotFastForward)
        );
        assert!(r.message.contains("does not descend"), "{}", r.message);
    }

    #[test]
    fn an_unsigned_commit_stops_the_update_at_the_last_good_one() {
        let d = decide(
            Some("a"),
            "d",
            true,
            &[good("b"), with("c", Signature::Unsigned), good("d")],
        );
        assert_eq!(d.apply.unwrap().0, "b");
        let r = d.refused.unwrap();
        assert_eq!(
            (r.commit.as_str(), r.reason),
            ("c", RefusalReason::Unsigned)
        );
        assert!(r.message.contains("not signed") && r.message.contains("stops at b"));
    }

    #[test]
    fn a_signed_commit_on_top_of_an_unsigned_one_is_not_applied() {
        let d = decide(
            Some("a"),
            "c",
            true,
            &[with("b", Signature::Unsigned), good("c")],
        );
        assert_eq!(d.apply, None);
        assert_eq!(d.refused.unwrap().commit, "b");
    }

    #[test]
    fn unknown_keys_and_bad_signatures_are_told_apart() {
        let unknown = with(
            "b",
            Signature::UnknownKey {
                key: "SHA256:x".into(),
            },
        );
        let r = decide(Some("a"), "b", true, &[unknown]).refused.unwrap();
        assert_eq!(r.reason, RefusalReason::UnknownSigner);
        assert!(r.message.contains("SHA256:x"));
        let bad = with("b", Signature::Bad { code: 'B' });
        let r = decide(Some("a"), "b", true, &[bad]).refused.unwrap();
        assert_eq!(r.reason, RefusalReason::BadSignature);
    }

    #[test]
    fn a_good_commit_of_a_merged_side_branch_is_never_applied_alone() {
        // side (good, not a descendant of a) then merge m (unsigned): keep a.
        let mut side = good("side");
        side.descends = false;
        let d = decide(
            Some("a"),
            "m",
            true,
            &[side, with("m", Signature::Unsigned)],
        );
        assert_eq!(d.apply, None);
        assert_eq!(d.refused.unwrap().commit, "m");
    }

    #[test]
    fn with_nothing_applied_the_head_alone_decides() {
        let d = decide(None, "h", false, &[good("h")]);
        assert_eq!(d.apply.unwrap().0, "h");
        let d = decide(None, "h", false, &[with("h", Signature::Unsigned)]);
        assert_eq!(d.apply, None);
        assert!(d.refused.unwrap().message.contains("stops at nothing"));
    }
}
