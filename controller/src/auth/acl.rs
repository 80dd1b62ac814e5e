//! Where a client may publish and receive, decided exactly as Mosquitto 2.0 decides it.
//!
//! ```text
//!  check(username, client id, topic, op)
//!    │ ACL disabled ───────────────────────────────────────────────► allow
//!    │ the client's own rules: a user's block, or the anonymous rules
//!    │   deny rules first, then the others in order;
//!    │   a matching deny ► deny;  a matching rule granting `op` ► allow
//!    │ patterns: username or client id holds `+`/`#` ──────────────► deny
//!    │   same walk, `%u`/`%c` levels replaced, `%u` rules skipped without a username
//!    ▼ nothing decided ────────────────────────────────────────────► deny
//! ```
//!
//! A rule whose filter matches but does not grant `op` (a `read` rule on a publish)
//! decides nothing; the walk goes on, as in Mosquitto. A topic starting with `$` is only
//! matched by rules starting with `$`. Filters are split into levels once, in
//! [`Acl::new`], because [`Acl::check`] runs on every publish and every delivery.
//!
//! `%u` and `%c` replace a whole level, with the value as it is: a username `a/b`
//! stands for two levels, as with Mosquitto's textual substitution.
//!
//! A SUBSCRIBE is granted when some topic of its filter passes this check for reading
//! ([`Acl::may_subscribe`], in `acl/subscribe.rs`); Mosquitto 2.0's `acl_file` grants
//! every SUBSCRIBE, edgemq refuses the ones that could never deliver anything.

use std::collections::HashMap;
use std::str::Split;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::{Access, AclRule};

mod subscribe;

/// The ACL of a broker, in Mosquitto's terms.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AclPlan {
    /// When false, every connected client may publish and receive anywhere.
    pub enabled: bool,
    /// Rules for clients without a username (Mosquitto: `topic` lines before any `user`).
    pub anonymous: Vec<AclRule>,
    /// Each user's own rules (Mosquitto: `user NAME` blocks).
    pub users: BTreeMap<String, Vec<AclRule>>,
    /// Rules for every client, with `%u` and `%c` (Mosquitto: `pattern` lines).
    pub patterns: Vec<AclRule>,
}

/// What a client wants to do on a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Receive a message (checked on each delivery, retained messages included; a
    /// SUBSCRIBE is granted when some topic of its filter may be read, see
    /// [`Acl::may_subscribe`]).
    Read,
    /// Publish a message.
    Write,
}

impl Op {
    fn bit(self) -> u8 {
        match self {
            Op::Read => READ,
            Op::Write => WRITE,
        }
    }
}

const READ: u8 = 1;
const WRITE: u8 = 2;

/// The longest topic name or filter MQTT can carry (a UTF-8 string's length is 16 bits).
const MAX_TOPIC_LEN: usize = 65_535;

/// A rule of the plan whose topic filter is not a valid MQTT filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ACL topic filter {topic:?} in {list}")]
pub struct InvalidRule {
    /// Where the rule is: `anonymous rules`, `rules of user NAME` or `patterns`.
    pub list: String,
    /// The offending filter.
    pub topic: String,
}

/// One level of a pre-split filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(Box<str>),
    Plus,
    Hash,
    /// `%u` in a pattern.
    Username,
    /// `%c` in a pattern.
    ClientId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Deny,
    /// Bit set of [`READ`] and [`WRITE`].
    Allow(u8),
}

#[derive(Debug, Clone)]
struct Rule {
    levels: Box<[Level]>,
    /// The filter starts with `$`.
    dollar: bool,
    /// A deny rule whose filter is invalid: it matches every topic, so a broken rule
    /// can only take access away.
    match_all: bool,
    /// A pattern using `%u`: skipped for clients without a username.
    needs_username: bool,
    grant: Grant,
}

impl Rule {
    fn matches(&self, topic: &str, username: Option<&str>, client_id: &str) -> bool {
        if self.match_all {
            return true;
        }
        if topic.starts_with('$') != self.dollar {
            return false;
        }
        match_levels(&self.levels, topic.split('/'), username, client_id)
    }
}

/// One list of rules, deny rules first, each group in its original order.
#[derive(Debug, Clone, Default)]
struct RuleList {
    rules: Box<[Rule]>,
}

impl RuleList {
    fn new(rules: &[crate::api::AclRule], pattern: bool) -> RuleList {
        let compiled: Vec<Rule> = rules
            .iter()
            .filter_map(|r| compile(&r.topic, r.access, pattern))
            .collect();
        let (mut ordered, allows): (Vec<Rule>, Vec<Rule>) =
            compiled.into_iter().partition(|r| r.grant == Grant::Deny);
        ordered.extend(allows);
        RuleList {
            rules: ordered.into_boxed_slice(),
        }
    }

    /// `Some(true)` allowed, `Some(false)` denied, `None` when no rule decides.
    fn decide(&self, topic: &str, username: Option<&str>, client_id: &str, op: Op) -> Option<bool> {
        for rule in self.rules.iter() {
            if rule.needs_username && username.is_none() {
                continue;
            }
            if !rule.matches(topic, username, client_id) {
                continue;
            }
            match rule.grant {
                Grant::Deny => return Some(false),
                Grant::Allow(bits) if bits & op.bit() != 0 => return Some(true),
                Grant::Allow(_) => {}
            }
        }
        None
    }
}

fn compile(topic: &str, access: Access, pattern: bool) -> Option<Rule> {
    let grant = match access {
        Access::Read => Grant::Allow(READ),
        Access::Write => Grant::Allow(WRITE),
        Access::Readwrite => Grant::Allow(READ | WRITE),
        Access::Deny => Grant::Deny,
    };
    if !valid_topic_filter(topic) {
        // An invalid allow rule grants nothing; an invalid deny rule denies everything.
        return (grant == Grant::Deny).then(|| Rule {
            levels: Box::new([]),
            dollar: false,
            match_all: true,
            needs_username: false,
            grant,
        });
    }
    let levels: Box<[Level]> = topic
        .split('/')
        .map(|level| match level {
            "+" => Level::Plus,
            "#" => Level::Hash,
            "%u" if pattern => Level::Username,
            "%c" if pattern => Level::ClientId,
            other => Level::Literal(other.into()),
        })
        .collect();
    Some(Rule {
        levels,
        dollar: topic.starts_with('$'),
        match_all: false,
        // Mosquitto skips any pattern mentioning `%u` for a client without a username.
        needs_username: pattern && topic.contains("%u"),
        grant,
    })
}

fn match_levels(
    levels: &[Level],
    mut topic: Split<'_, char>,
    username: Option<&str>,
    client_id: &str,
) -> bool {
    for level in levels {
        let ok = match level {
            // `#` matches the rest, including nothing: `a/#` matches `a`.
            Level::Hash => return true,
            Level::Plus => topic.next().is_some(),
            Level::Literal(literal) => topic.next() == Some(&**literal),
            Level::Username => username.is_some_and(|u| consume(&mut topic, u)),
            Level::ClientId => consume(&mut topic, client_id),
        };
        if !ok {
            return false;
        }
    }
    topic.next().is_none()
}

/// Consumes the topic levels spelled by `value` (one per `/`-separated part).
fn consume(topic: &mut Split<'_, char>, value: &str) -> bool {
    value.split('/').all(|part| topic.next() == Some(part))
}

/// A broker's ACL, built once from the plan and consulted on every publish and delivery.
/// (No `Default`: a default plan is a disabled ACL, which allows everything; build one
/// from a plan on purpose.)
#[derive(Debug, Clone)]
pub struct Acl {
    enabled: bool,
    anonymous: RuleList,
    users: HashMap<String, RuleList>,
    patterns: RuleList,
    /// The plan has pattern rules (even invalid ones): Mosquitto's trigger for refusing
    /// `+`/`#` in usernames and client ids.
    has_patterns: bool,
}

impl Acl {
    /// Compiles the plan's rules. A rule with an invalid filter never grants access; an
    /// invalid `deny` rule denies every topic. [`Acl::validate`] reports such rules, so
    /// loaders can refuse them with a clear error before they get here.
    pub fn new(plan: &AclPlan) -> Acl {
        Acl {
            enabled: plan.enabled,
            anonymous: RuleList::new(&plan.anonymous, false),
            users: plan
                .users
                .iter()
                .map(|(user, rules)| (user.clone(), RuleList::new(rules, false)))
                .collect(),
            patterns: RuleList::new(&plan.patterns, true),
            has_patterns: !plan.patterns.is_empty(),
        }
    }

    /// Every rule of the plan whose topic filter is invalid, as Mosquitto refuses to
    /// load such an ACL file.
    pub fn validate(plan: &AclPlan) -> Result<(), Vec<InvalidRule>> {
        let mut invalid = Vec::new();
        let mut scan = |list: &str, rules: &[crate::api::AclRule]| {
            for rule in rules.iter().filter(|r| !valid_topic_filter(&r.topic)) {
                invalid.push(InvalidRule {
                    list: list.to_owned(),
                    topic: rule.topic.clone(),
                });
            }
        };
        scan("anonymous rules", &plan.anonymous);
        for (user, rules) in &plan.users {
            scan(&format!("rules of user {user}"), rules);
        }
        scan("patterns", &plan.patterns);
        if invalid.is_empty() {
            Ok(())
        } else {
            Err(invalid)
        }
    }

    /// Whether the ACL is enforced at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether a client may `op` on `topic`. `username` is `None` for an anonymous
    /// client. An invalid topic name is always denied.
    pub fn check(&self, username: Option<&str>, client_id: &str, topic: &str, op: Op) -> bool {
        if !self.enabled {
            return true;
        }
        if !valid_topic_name(topic) {
            return false;
        }
        let own = match username {
            Some(user) => self.users.get(user),
            None => Some(&self.anonymous),
        };
        // The client's own rules never substitute `%u`/`%c`.
        if let Some(decision) = own.and_then(|rules| rules.decide(topic, None, "", op)) {
            return decision;
        }
        if self.refuses_client(username, client_id) {
            return false;
        }
        self.patterns
            .decide(topic, username, client_id, op)
            .unwrap_or(false)
    }

    /// Whether a client must be refused at CONNECT: patterns exist and its username or
    /// client id contains `+` or `#`, which could widen a `%u`/`%c` pattern.
    pub fn refuses_client(&self, username: Option<&str>, client_id: &str) -> bool {
        let dangerous = |s: &str| s.contains(['+', '#']);
        self.enabled
            && self.has_patterns
            && (username.is_some_and(dangerous) || dangerous(client_id))
    }
}

/// Whether `topic` is a name a client may publish to: not empty, no `+`, `#` or NUL,
/// at most 65,535 bytes.
pub fn valid_topic_name(topic: &str) -> bool {
    // Bytes, not characters: the three are ASCII, which no other UTF-8 character's
    // bytes equal, and a byte scan costs a fraction of decoding the characters.
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC_LEN
        && !topic.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
}

/// Whether `filter` is a valid subscription filter: not empty, no NUL, at most 65,535
/// bytes, `+` only as a whole level, `#` only as the whole last level.
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_TOPIC_LEN || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if level.contains('#') && !(level == "#" && last) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// Whether `topic` matches `filter` with MQTT's wildcards: `+` one level, `#` the rest
/// including the parent level (`a/#` matches `a`). A topic starting with `$` is only
/// matched by a filter starting with `$`. Invalid filters and names match nothing.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if !valid_topic_filter(filter) || !valid_topic_name(topic) {
        return false;
    }
    match compile(filter, Access::Readwrite, false) {
        Some(rule) => rule.matches(topic, None, ""),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::AclRule;

    fn rule(access: Access, topic: &str) -> AclRule {
        AclRule {
            topic: topic.into(),
            access,
        }
    }

    /// A plan builder: `plan().anonymous(..).user("bob", ..).pattern(..).build()`.
    #[derive(Default)]
    struct PlanBuilder(AclPlan);

    fn plan() -> PlanBuilder {
        PlanBuilder(AclPlan {
            enabled: true,
            ..AclPlan::default()
        })
    }

    impl PlanBuilder {
        fn anonymous(mut self, access: Access, topic: &str) -> Self {
            self.0.anonymous.push(rule(access, topic));
            self
        }
        fn user(mut self, user: &str, access: Access, topic: &str) -> Self {
            self.0
                .users
                .entry(user.into())
                .or_default()
                .push(rule(access, topic));
            self
        }
        fn pattern(mut self, access: Access, topic: &str) -> Self {
            self.0.patterns.push(rule(access, topic));
            self
        }
        fn disabled(mut self) -> Self {
            self.0.enabled = false;
            self
        }
        fn build(self) -> Acl {
            Acl::new(&self.0)
        }
    }

    use Access::{Deny, Read, Readwrite, Write};

    fn anon_can(acl: &Acl, topic: &str, op: Op) -> bool {
        acl.check(None, "client", topic, op)
    }

    fn user_can(acl: &Acl, user: &str, topic: &str, op: Op) -> bool {
        acl.check(Some(user), "client", topic, op)
    }

    // --- topic matching ---

    #[test]
    fn exact_filter_matches_only_the_same_topic() {
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(!topic_matches("a/b", "a"));
        assert!(!topic_matches("a/b", "a/c"));
        assert!(!topic_matches("a/b", "A/b"));
    }

    #[test]
    fn plus_matches_exactly_one_level_including_an_empty_one() {
        assert!(topic_matches("a/+", "a/b"));
        assert!(topic_matches("a/+", "a/"));
        assert!(!topic_matches("a/+", "a"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(topic_matches("+/+", "/"));
        assert!(topic_matches("+/b/+", "x/b/y"));
        assert!(topic_matches("+", "a"));
        assert!(!topic_matches("+", "a/b"));
    }

    #[test]
    fn hash_matches_the_rest_including_the_parent_level() {
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/"));
        assert!(topic_matches("a/#", "a/b/c/d"));
        assert!(!topic_matches("a/#", "ab"));
        assert!(!topic_matches("a/#", "b/a"));
        assert!(topic_matches("#", "a/b"));
        assert!(topic_matches("#", "/"));
        assert!(topic_matches("+/#", "a"));
    }

    #[test]
    fn wildcards_do_not_match_topics_starting_with_dollar() {
        assert!(!topic_matches("#", "$SYS/broker/uptime"));
        assert!(!topic_matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(topic_matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(topic_matches("$SYS/+/uptime", "$SYS/broker/uptime"));
        assert!(!topic_matches("$SYS/#", "SYS/broker"));
    }

    #[test]
    fn invalid_filters_and_names_match_nothing() {
        assert!(!topic_matches("a/#/b", "a/x/b"));
        assert!(!topic_matches("a+", "a+"));
        assert!(!topic_matches("", ""));
        assert!(!topic_matches("#", "a/+"));
        assert!(!topic_matches("#", "a/#"));
        assert!(!topic_matches("#", "a\0b"));
    }

    #[test]
    fn topic_names_may_not_hold_wildcards_nul_or_be_empty() {
        assert!(valid_topic_name("a/b"));
        assert!(valid_topic_name("/"));
        assert!(valid_topic_name("$SYS/x"));
        assert!(valid_topic_name("a b/ü"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("a/+"));
        assert!(!valid_topic_name("a/#"));
        assert!(!valid_topic_name("a+b"));
        assert!(!valid_topic_name("a\0"));
        assert!(!valid_topic_name(&"a".repeat(65_536)));
        assert!(valid_topic_name(&"a".repeat(65_535)));
    }

    #[test]
    fn filters_allow_wildcards_only_as_whole_levels() {
        for ok in [
            "a",
            "a/b",
            "+",
            "#",
            "a/+",
            "a/#",
            "+/+/#",
            "/",
            "$SYS/#",
            "devices/%u/#",
        ] {
            assert!(valid_topic_filter(ok), "{ok:?} is valid");
        }
        for bad in [
            "", "a/#/b", "#/a", "a#", "a/b#", "a+", "a/+b", "++", "##", "a\0", "a/#/",
        ] {
            assert!(!valid_topic_filter(bad), "{bad:?} is invalid");
        }
        assert!(!valid_topic_filter(&"a".repeat(65_536)));
    }

    // --- the ACL ---

    #[test]
    fn disabled_acl_allows_everything() {
        let acl = plan().disabled().anonymous(Deny, "#").build();
        assert!(anon_can(&acl, "a/b", Op::Write));
        assert!(user_can(&acl, "bob", "$SYS/x", Op::Read));
        assert!(!acl.enabled());
    }

    #[test]
    fn empty_acl_denies_everything() {
        let acl = plan().build();
        assert!(!anon_can(&acl, "a", Op::Read));
        assert!(!anon_can(&acl, "a", Op::Write));
        assert!(!user_can(&acl, "bob", "a", Op::Read));
    }

    #[test]
    fn read_rule_grants_read_but_not_write() {
        let acl = plan().anonymous(Read, "public/#").build();
        assert!(anon_can(&acl, "public/weather", Op::Read));
        assert!(!anon_can(&acl, "public/weather", Op::Write));
        assert!(!anon_can(&acl, "private/x", Op::Read));
    }

    #[test]
    fn write_rule_grants_write_but_not_read() {
        let acl = plan().user("bob", Write, "cmd/#").build();
        assert!(user_can(&acl, "bob", "cmd/on", Op::Write));
        assert!(!user_can(&acl, "bob", "cmd/on", Op::Read));
    }

    #[test]
    fn readwrite_rule_grants_both() {
        let acl = plan().user("bob", Readwrite, "home/#").build();
        assert!(user_can(&acl, "bob", "home/a", Op::Write));
        assert!(user_can(&acl, "bob", "home/a", Op::Read));
    }

    #[test]
    fn deny_rule_wins_over_an_earlier_readwrite() {
        let acl = plan()
            .user("bob", Readwrite, "home/#")
            .user("bob", Deny, "home/secret")
            .build();
        assert!(!user_can(&acl, "bob", "home/secret", Op::Read));
        assert!(!user_can(&acl, "bob", "home/secret", Op::Write));
        assert!(user_can(&acl, "bob", "home/other", Op::Read));
    }

    #[test]
    fn matching_rule_without_the_needed_access_lets_a_later_rule_decide() {
        let acl = plan()
            .user("bob", Read, "a/#")
            .user("bob", Write, "a/b")
            .build();
        assert!(user_can(&acl, "bob", "a/b", Op::Write));
        assert!(!user_can(&acl, "bob", "a/c", Op::Write));
    }

    #[test]
    fn anonymous_rules_apply_only_to_clients_without_a_username() {
        let acl = plan()
            .anonymous(Readwrite, "public/#")
            .user("bob", Read, "home/#")
            .build();
        assert!(anon_can(&acl, "public/x", Op::Write));
        assert!(!user_can(&acl, "bob", "public/x", Op::Write));
        assert!(!user_can(&acl, "bob", "public/x", Op::Read));
    }

    #[test]
    fn a_users_rules_apply_only_to_that_user() {
        let acl = plan()
            .user("bob", Readwrite, "bob/#")
            .user("carol", Readwrite, "carol/#")
            .build();
        assert!(user_can(&acl, "bob", "bob/x", Op::Write));
        assert!(!user_can(&acl, "carol", "bob/x", Op::Write));
        assert!(!user_can(&acl, "dave", "bob/x", Op::Write));
        assert!(!anon_can(&acl, "bob/x", Op::Write));
    }

    #[test]
    fn username_without_a_block_falls_through_to_the_patterns() {
        let acl = plan()
            .user("bob", Read, "x")
            .pattern(Readwrite, "devices/%u/#")
            .build();
        assert!(user_can(&acl, "dave", "devices/dave/temp", Op::Write));
        assert!(!user_can(&acl, "dave", "devices/bob/temp", Op::Write));
    }

    #[test]
    fn own_rules_are_checked_before_the_patterns() {
        let acl = plan()
            .user("bob", Deny, "devices/bob/locked")
            .pattern(Readwrite, "devices/%u/#")
            .build();
        assert!(!user_can(&acl, "bob", "devices/bob/locked", Op::Write));
        assert!(user_can(&acl, "bob", "devices/bob/open", Op::Write));
    }

    #[test]
    fn own_allow_rule_wins_over_a_pattern_deny() {
        let acl = plan()
            .user("bob", Readwrite, "shared/#")
            .pattern(Deny, "shared/#")
            .build();
        assert!(user_can(&acl, "bob", "shared/x", Op::Write));
        assert!(!user_can(&acl, "carol", "shared/x", Op::Write));
    }

    #[test]
    fn pattern_deny_wins_over_an_earlier_pattern_allow() {
        let acl = plan()
            .pattern(Readwrite, "devices/%u/#")
            .pattern(Deny, "devices/+/admin")
            .build();
        assert!(!user_can(&acl, "bob", "devices/bob/admin", Op::Write));
        assert!(user_can(&acl, "bob", "devices/bob/x", Op::Write));
    }

    #[test]
    fn username_pattern_substitutes_a_whole_level() {
        let acl = plan().pattern(Readwrite, "devices/%u/#").build();
        assert!(user_can(&acl, "bob", "devices/bob", Op::Write));
        assert!(user_can(&acl, "bob", "devices/bob/a/b", Op::Read));
        assert!(!user_can(&acl, "bob", "devices/bobby/a", Op::Read));
        assert!(!user_can(&acl, "bob", "devices/carol/a", Op::Read));
    }

    #[test]
    fn client_id_pattern_substitutes_a_whole_level() {
        let acl = plan().pattern(Write, "clients/%c/status").build();
        assert!(acl.check(
            Some("bob"),
            "sensor-1",
            "clients/sensor-1/status",
            Op::Write
        ));
        assert!(acl.check(None, "sensor-1", "clients/sensor-1/status", Op::Write));
        assert!(!acl.check(None, "sensor-1", "clients/sensor-2/status", Op::Write));
        assert!(!acl.check(None, "sensor-1", "clients/sensor-1/status", Op::Read));
    }

    #[test]
    fn percent_u_inside_a_level_is_literal() {
        let acl = plan().pattern(Readwrite, "devices/%u-x").build();
        assert!(!user_can(&acl, "bob", "devices/bob-x", Op::Write));
        assert!(user_can(&acl, "bob", "devices/%u-x", Op::Write));
    }

    #[test]
    fn username_with_a_slash_stands_for_several_levels() {
        let acl = plan().pattern(Readwrite, "builders/%u/#").build();
        assert!(user_can(
            &acl,
            "x86/one",
            "builders/x86/one/status",
            Op::Write
        ));
        assert!(!user_can(&acl, "x86/one", "builders/x86/two", Op::Write));
    }

    #[test]
    fn username_pattern_is_skipped_for_a_client_without_username() {
        let acl = plan()
            .pattern(Deny, "devices/%u/#")
            .pattern(Readwrite, "devices/#")
            .build();
        // The deny rule would never match anyway; what matters is that it is skipped, and
        // that `%u` never stands for an empty level for anonymous clients.
        assert!(anon_can(&acl, "devices/x", Op::Write));
        let acl = plan().pattern(Readwrite, "%u/#").build();
        assert!(!anon_can(&acl, "/x", Op::Write));
        assert!(!anon_can(&acl, "x", Op::Write));
    }

    #[test]
    fn percent_u_in_a_users_own_rules_is_literal() {
        let acl = plan().user("bob", Readwrite, "devices/%u").build();
        assert!(!user_can(&acl, "bob", "devices/bob", Op::Write));
        assert!(user_can(&acl, "bob", "devices/%u", Op::Write));
    }

    #[test]
    fn dollar_topics_only_match_rules_starting_with_dollar() {
        let acl = plan()
            .user("bob", Readwrite, "#")
            .user("bob", Read, "$SYS/broker/#")
            .build();
        assert!(user_can(&acl, "bob", "anything", Op::Write));
        assert!(!user_can(&acl, "bob", "$SYS/other", Op::Read));
        assert!(user_can(&acl, "bob", "$SYS/broker/uptime", Op::Read));
        assert!(!user_can(&acl, "bob", "$SYS/broker/uptime", Op::Write));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_wildcard_patterns() {
        let acl = plan()
            .pattern(Readwrite, "#")
            .pattern(Readwrite, "+/%u")
            .build();
        assert!(!user_can(&acl, "bob", "$SYS/bob", Op::Read));
        assert!(user_can(&acl, "bob", "x/bob", Op::Read));
    }

    #[test]
    fn deny_on_hash_shuts_everything_but_dollar_topics() {
        let acl = plan()
            .user("bob", Readwrite, "$SYS/#")
            .user("bob", Deny, "#")
            .build();
        assert!(!user_can(&acl, "bob", "a", Op::Read));
        assert!(user_can(&acl, "bob", "$SYS/x", Op::Read));
    }

    #[test]
    fn wildcard_in_username_or_client_id_is_refused_when_patterns_exist() {
        let acl = plan().pattern(Readwrite, "devices/%u/#").build();
        assert!(acl.refuses_client(Some("bo+b"), "c"));
        assert!(acl.refuses_client(Some("#"), "c"));
        assert!(acl.refuses_client(None, "c#1"));
        assert!(acl.refuses_client(Some("bob"), "+"));
        assert!(!acl.refuses_client(Some("bob"), "c"));
        assert!(!acl.refuses_client(None, "c/$x"));
        // And the check itself denies them too, whatever the pattern would say.
        let everyone = plan().pattern(Readwrite, "#").build();
        assert!(!everyone.check(Some("a+"), "c", "x", Op::Write));
        assert!(!everyone.check(None, "c#", "x", Op::Write));
        assert!(everyone.check(None, "c", "x", Op::Write));
    }

    #[test]
    fn wildcard_in_username_is_allowed_without_patterns() {
        let acl = plan().user("bo+b", Readwrite, "x").build();
        assert!(!acl.refuses_client(Some("bo+b"), "c#"));
        assert!(acl.check(Some("bo+b"), "c#", "x", Op::Write));
        assert!(!plan()
            .disabled()
            .pattern(Read, "%u")
            .build()
            .refuses_client(Some("+"), "c"));
    }

    #[test]
    fn own_rules_decide_before_the_wildcard_refusal_as_in_mosquitto() {
        let acl = plan()
            .user("a+b", Readwrite, "x")
            .pattern(Readwrite, "#")
            .build();
        assert!(acl.check(Some("a+b"), "c", "x", Op::Write));
        assert!(!acl.check(Some("a+b"), "c", "y", Op::Write));
    }

    #[test]
    fn invalid_topic_names_are_always_denied() {
        let acl = plan().anonymous(Readwrite, "#").build();
        assert!(!anon_can(&acl, "a/+", Op::Write));
        assert!(!anon_can(&acl, "a/#", Op::Write));
        assert!(!anon_can(&acl, "", Op::Write));
        assert!(!anon_can(&acl, "a\0", Op::Write));
    }

    #[test]
    fn invalid_allow_rule_grants_nothing() {
        let acl = plan()
            .anonymous(Readwrite, "a/#/b")
            .anonymous(Readwrite, "x+")
            .build();
        assert!(!anon_can(&acl, "a/x/b", Op::Write));
        assert!(!anon_can(&acl, "x+", Op::Read));
    }

    #[test]
    fn invalid_deny_rule_denies_everything() {
        let acl = plan()
            .user("bob", Readwrite, "#")
            .user("bob", Deny, "a/#/b")
            .build();
        assert!(!user_can(&acl, "bob", "c", Op::Write));
        assert!(!user_can(&acl, "bob", "$SYS/x", Op::Read));
    }

    #[test]
    fn validate_names_every_invalid_rule() {
        let mut users = BTreeMap::new();
        users.insert(
            "bob".to_string(),
            vec![rule(Read, "ok/#"), rule(Read, "bad#")],
        );
        let plan = AclPlan {
            enabled: true,
            anonymous: vec![rule(Read, "a/#/b")],
            users,
            patterns: vec![rule(Read, "")],
        };
        let errors = Acl::validate(&plan).unwrap_err();
        let lists: Vec<&str> = errors.iter().map(|e| e.list.as_str()).collect();
        assert_eq!(lists, ["anonymous rules", "rules of user bob", "patterns"]);
        assert_eq!(
            errors[1].to_string(),
            "invalid ACL topic filter \"bad#\" in rules of user bob"
        );
        assert!(Acl::validate(&AclPlan::default()).is_ok());
    }

    #[test]
    fn rule_order_within_allows_is_kept() {
        // Both rules match; the first grants read only, the second write only.
        let acl = plan()
            .anonymous(Read, "a/+")
            .anonymous(Write, "a/#")
            .build();
        assert!(anon_can(&acl, "a/b", Op::Read));
        assert!(anon_can(&acl, "a/b", Op::Write));
    }
}
