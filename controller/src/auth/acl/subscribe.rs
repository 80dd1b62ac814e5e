//! SUBSCRIBE: may a filter ever deliver anything to this client?
//!
//! A filter is granted when at least one topic it matches is one the client may read
//! ([`Acl::check`] with [`Op::Read`]), and refused (SUBACK 0x80 / MQTT 5 0x87) when no
//! such topic exists. Every delivery is still checked one by one, so a granted `#` brings
//! only what the client may read. Mosquitto 2.0's `acl_file` grants every SUBSCRIBE
//! (`security_default.c`: "FIXME - implement ACL subscription strings") and filters only
//! deliveries; edgemq refuses the subscriptions that could never deliver anything, which
//! is what keeps an unentitled member out of a shared group.
//!
//! ```text
//!  filter F ──► for each rule R that grants read (own rules; patterns with %u/%c put in)
//!                 G = F ∩ R (a filter, or nothing)
//!                 witnesses of G: each `+` and each level past a trailing `#` is a
//!                   fresh level no rule names, for every length up to the longest rule
//!                 any witness W with topic_matches(F, W) && check(W, read) ► granted
//!              nothing found ► refused
//! ```
//!
//! Why the witnesses suffice: a deny rule (or an earlier deciding rule) that matches a
//! witness matches it with `+` or `#` wherever the witness has a fresh level, so it
//! matches every topic of G of at least that length; and a witness longer than every
//! rule without `#` escapes all of those. If any readable topic of F exists, one of the
//! witnesses is readable too.

use super::{Acl, Grant, Level, Op, Rule, RuleList, READ};
use crate::auth::acl::topic_matches;

/// One level of a filter, with `%u` and `%c` already put in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L<'a> {
    Lit(&'a str),
    Plus,
    Hash,
}

fn split(filter: &str) -> Vec<L<'_>> {
    filter
        .split('/')
        .map(|level| match level {
            "+" => L::Plus,
            "#" => L::Hash,
            other => L::Lit(other),
        })
        .collect()
}

/// The levels of a rule for this client; `None` when the rule cannot apply to it.
fn rule_levels<'a>(
    rule: &'a Rule,
    username: Option<&'a str>,
    client_id: &'a str,
) -> Option<Vec<L<'a>>> {
    let mut out = Vec::with_capacity(rule.levels.len());
    for level in rule.levels.iter() {
        match level {
            Level::Literal(s) => out.push(L::Lit(s)),
            Level::Plus => out.push(L::Plus),
            Level::Hash => out.push(L::Hash),
            Level::Username => out.extend(username?.split('/').map(L::Lit)),
            Level::ClientId => out.extend(client_id.split('/').map(L::Lit)),
        }
    }
    Some(out)
}

/// The filter matching exactly the topics both `a` and `b` match, or `None` when no
/// topic matches both. (`$`-prefixed topics are handled by the caller.)
fn intersect<'a>(a: &[L<'a>], b: &[L<'a>]) -> Option<Vec<L<'a>>> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    for i in 0.. {
        let level = match (a.get(i), b.get(i)) {
            // `#` matches the rest, including nothing (`x/#` matches `x`).
            (Some(L::Hash), _) => {
                out.extend_from_slice(&b[i..]);
                return Some(out);
            }
            (_, Some(L::Hash)) => {
                out.extend_from_slice(&a[i..]);
                return Some(out);
            }
            (None, None) => return Some(out),
            (None, Some(_)) | (Some(_), None) => return None,
            (Some(L::Lit(x)), Some(L::Lit(y))) if x == y => L::Lit(x),
            (Some(L::Lit(_)), Some(L::Lit(_))) => return None,
            (Some(L::Lit(x)), Some(L::Plus)) | (Some(L::Plus), Some(L::Lit(x))) => L::Lit(x),
            (Some(L::Plus), Some(L::Plus)) => L::Plus,
        };
        out.push(level);
    }
    None
}

/// The longest topic name MQTT can carry (a two-byte length).
const MAX_TOPIC_BYTES: usize = 65_535;

impl Acl {
    /// Whether a client may subscribe to `filter` (a valid filter, without a
    /// `$share/{group}/` prefix): true when at least one topic the filter matches is
    /// one the client may read. `username` is `None` for an anonymous client.
    pub fn may_subscribe(&self, username: Option<&str>, client_id: &str, filter: &str) -> bool {
        if !self.enabled {
            return true;
        }
        let own = match username {
            Some(user) => self.users.get(user),
            None => Some(&self.anonymous),
        };
        let f = split(filter);
        let dollar = filter.starts_with('$');
        // A level no rule, filter, username or client id spells: longer than all of them.
        let longest = |list: Option<&RuleList>| {
            list.into_iter()
                .flat_map(|l| l.rules.iter())
                .flat_map(|r| r.levels.iter())
                .map(|l| match l {
                    Level::Literal(s) => s.len(),
                    _ => 0,
                })
                .max()
                .unwrap_or(0)
        };
        // Longest single level, not whole lengths: a witness topic holds one fresh level
        // per `+`, so a fresh level as long as the whole filter would make a 65 KB
        // filter of `+` levels ask for gigabytes.
        let level = |s: &str| s.split('/').map(str::len).max().unwrap_or(0);
        let fresh_len = [
            longest(own),
            longest(Some(&self.patterns)),
            level(filter),
            username.map_or(0, level),
            level(client_id),
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            + 1;
        let fresh = "_".repeat(fresh_len);
        // More levels than any rule can spell out without `#`.
        let extra = |list: Option<&RuleList>| {
            list.into_iter()
                .flat_map(|l| l.rules.iter())
                .map(|r| r.levels.len())
                .max()
                .unwrap_or(0)
        };
        let max_levels = extra(own).max(extra(Some(&self.patterns)))
            + username.map_or(0, |u| u.split('/').count())
            + client_id.split('/').count()
            + f.len()
            + 1;

        let candidates = own
            .into_iter()
            .flat_map(|l| l.rules.iter().map(move |r| (r, false)))
            .chain(self.patterns.rules.iter().map(|r| (r, true)));
        for (rule, pattern) in candidates {
            let Grant::Allow(bits) = rule.grant else {
                continue;
            };
            if bits & READ == 0 || rule.match_all || rule.dollar != dollar {
                continue;
            }
            if rule.needs_username && username.is_none() {
                continue;
            }
            // The client's own rules never substitute `%u`/`%c` (they hold none).
            let levels = if pattern {
                rule_levels(rule, username, client_id)
            } else {
                rule_levels(rule, None, "")
            };
            let Some(levels) = levels else { continue };
            let Some(g) = intersect(&f, &levels) else {
                continue;
            };
            let (fixed, open) = match g.split_last() {
                Some((L::Hash, fixed)) => (fixed, true),
                _ => (&g[..], false),
            };
            let lengths = if open {
                fixed.len()..=max_levels.max(fixed.len())
            } else {
                fixed.len()..=fixed.len()
            };
            for len in lengths {
                // No topic is longer than MQTT allows; longer witnesses prove nothing.
                let size: usize = (0..len)
                    .map(|i| match fixed.get(i) {
                        Some(L::Lit(s)) => s.len(),
                        _ => fresh_len,
                    })
                    .sum::<usize>()
                    + len.saturating_sub(1);
                if size > MAX_TOPIC_BYTES {
                    break;
                }
                let witness: Vec<&str> = (0..len)
                    .map(|i| match fixed.get(i) {
                        Some(L::Lit(s)) => s,
                        _ => fresh.as_str(),
                    })
                    .collect();
                let witness = witness.join("/");
                if topic_matches(filter, &witness)
                    && self.check(username, client_id, &witness, Op::Read)
                {
                    return true;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Access, AclRule};
    use crate::auth::acl::AclPlan;

    fn rule(access: Access, topic: &str) -> AclRule {
        AclRule {
            topic: topic.into(),
            access,
        }
    }

    fn acl(user_rules: &[(Access, &str)], patterns: &[(Access, &str)]) -> Acl {
        let mut plan = AclPlan {
            enabled: true,
            ..AclPlan::default()
        };
        plan.users.insert(
            "bob".into(),
            user_rules.iter().map(|(a, t)| rule(*a, t)).collect(),
        );
        plan.patterns = patterns.iter().map(|(a, t)| rule(*a, t)).collect();
        Acl::new(&plan)
    }

    fn bob(acl: &Acl, filter: &str) -> bool {
        acl.may_subscribe(Some("bob"), "bob-1", filter)
    }

    use Access::{Deny, Read, Readwrite, Write};

    #[test]
    fn a_filter_without_any_readable_topic_is_refused() {
        let a = acl(&[(Readwrite, "home/#")], &[]);
        assert!(!bob(&a, "jobs/#"));
        assert!(!bob(&a, "jobs/1"));
        assert!(bob(&a, "home/#"));
        assert!(bob(&a, "home/kitchen"));
    }

    #[test]
    fn a_wide_filter_overlapping_a_read_rule_is_granted() {
        let a = acl(&[(Read, "home/#")], &[]);
        assert!(bob(&a, "#"));
        assert!(bob(&a, "+/kitchen"));
        assert!(bob(&a, "home"));
        assert!(
            bob(&a, "+"),
            "`home` itself is readable (`home/#` matches it)"
        );
        assert!(!bob(&a, "+/+/+/+/x/y") || bob(&a, "home/+/+/+/x/y"));
        assert!(!bob(&a, "garden/+"));
    }

    #[test]
    fn write_only_rules_grant_no_subscription() {
        let a = acl(&[(Write, "cmd/#")], &[]);
        assert!(!bob(&a, "cmd/#"));
        assert!(!bob(&a, "cmd/light"));
    }

    #[test]
    fn a_deny_covering_the_whole_filter_refuses_it() {
        let a = acl(&[(Deny, "jobs/secret/#"), (Read, "jobs/#")], &[]);
        assert!(!bob(&a, "jobs/secret/#"));
        assert!(!bob(&a, "jobs/secret/x"));
        assert!(bob(&a, "jobs/#"));
        assert!(bob(&a, "jobs/+/x"), "jobs/<other>/x is readable");
        let every_level = acl(&[(Deny, "jobs/+"), (Deny, "jobs"), (Read, "jobs/#")], &[]);
        assert!(bob(&every_level, "jobs/#"), "jobs/a/b is still readable");
        assert!(!bob(&every_level, "jobs/+"));
    }

    #[test]
    fn patterns_are_checked_with_the_clients_own_names() {
        let a = acl(&[], &[(Readwrite, "devices/%u/#"), (Read, "clients/%c")]);
        assert!(bob(&a, "devices/bob/#"));
        assert!(bob(&a, "devices/+/temp"));
        assert!(!bob(&a, "devices/carol/#"));
        assert!(bob(&a, "clients/bob-1"));
        assert!(!bob(&a, "clients/other"));
        assert!(!a.may_subscribe(None, "anon", "devices/+/temp"));
    }

    #[test]
    fn own_rules_decide_before_patterns() {
        let a = acl(&[(Deny, "devices/#")], &[(Readwrite, "devices/%u/#")]);
        assert!(!bob(&a, "devices/bob/#"));
        let b = acl(&[(Read, "shared/#")], &[(Deny, "shared/#")]);
        assert!(bob(&b, "shared/x"));
    }

    #[test]
    fn dollar_filters_need_dollar_rules() {
        let a = acl(&[(Read, "#")], &[]);
        assert!(!bob(&a, "$SYS/#"));
        assert!(bob(&a, "#"));
        let b = acl(&[(Read, "$SYS/broker/#")], &[]);
        assert!(bob(&b, "$SYS/#"));
        assert!(!bob(&b, "#"), "`#` never matches $SYS topics");
        assert!(!bob(&b, "+/broker/uptime"));
    }

    #[test]
    fn a_username_pattern_starting_with_dollar_does_not_leak_through_a_wildcard() {
        // `+/x` never matches `$bob/x`, even though a rule grants that topic.
        let mut plan = AclPlan {
            enabled: true,
            ..AclPlan::default()
        };
        plan.users.insert("$bob".into(), vec![rule(Read, "$bob/x")]);
        plan.patterns = vec![rule(Read, "%u/x")];
        let a = Acl::new(&plan);
        assert!(!a.may_subscribe(Some("$bob"), "c", "+/x"));
        assert!(a.may_subscribe(Some("$bob"), "c", "$bob/x"));
    }

    #[test]
    fn every_filter_is_granted_when_the_acl_is_disabled_and_none_when_it_is_empty() {
        let disabled = Acl::new(&AclPlan::default());
        assert!(disabled.may_subscribe(None, "c", "anything/#"));
        let empty = Acl::new(&AclPlan {
            enabled: true,
            ..AclPlan::default()
        });
        assert!(!empty.may_subscribe(Some("bob"), "c", "#"));
    }

    /// The SUBSCRIBE check agrees with the delivery check: over a small universe of
    /// topics, a plain topic filter is granted exactly when that topic is readable, and
    /// a wildcard filter is granted whenever some topic it matches is readable.
    #[test]
    fn the_subscribe_check_agrees_with_delivery_checks() {
        let a = acl(
            &[
                (Read, "a/#"),
                (Deny, "a/b/#"),
                (Write, "c/+"),
                (Readwrite, "c/d"),
            ],
            &[(Read, "p/%u/+"), (Deny, "p/+/z")],
        );
        let topics = [
            "a", "a/b", "a/b/c", "a/x", "a/x/y", "c/d", "c/e", "p/bob/q", "p/bob/z", "p/eve/q", "q",
        ];
        for t in topics {
            assert_eq!(
                bob(&a, t),
                a.check(Some("bob"), "bob-1", t, Op::Read),
                "{t}"
            );
        }
        for filter in [
            "#", "a/+", "a/b/+", "+/b/#", "c/+", "p/+/z", "p/+/+", "+/+/q",
        ] {
            let readable = topics
                .iter()
                .any(|t| topic_matches(filter, t) && a.check(Some("bob"), "bob-1", t, Op::Read));
            if readable {
                assert!(bob(&a, filter), "{filter} has a readable topic");
            }
        }
        assert!(!bob(&a, "a/b/+"));
        assert!(!bob(&a, "p/+/z"));
        assert!(!bob(&a, "c/+/x"));
    }

    #[test]
    fn a_filter_of_thousands_of_plus_levels_is_judged_without_huge_witnesses() {
        // A fresh level as long as the whole filter made a 64 KB filter of `+` levels
        // ask for a witness of gigabytes. Witnesses now stay under the MQTT topic
        // limit: a deep filter under a readable prefix is still granted ...
        let acl = acl(&[], &[(Read, "devices/%u/#")]);
        let deep = format!("devices/bob/{}#", "+/".repeat(1_000));
        assert!(bob(&acl, &deep));
        let elsewhere = format!("other/{}#", "+/".repeat(1_000));
        assert!(!bob(&acl, &elsewhere));
        // ... and one whose witnesses would pass the limit is refused at once.
        let huge = format!("devices/bob/{}#", "+/".repeat(32_000));
        assert!(!bob(&acl, &huge));
    }
}
