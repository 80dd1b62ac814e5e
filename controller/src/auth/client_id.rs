//! Client ids bound to users (a Broker's `clientIdPattern`).
//!
//! Without a pattern any client may use any client id and a new connection takes the
//! session of that id over, whoever held it (Mosquitto's behaviour). With a pattern such
//! as `%u-*`, every client id belongs to at most one user and only that user may use it:
//!
//! ```text
//!  pattern "%u-*", users alice, alice-b
//!    "alice-phone"  ──► owner alice     (matches alice-*)
//!    "alice-b-x"    ──► owner alice-b   (matches alice-* and alice-b-*: the longest
//!                                        username wins, so ownership never overlaps)
//!    "sensor-1"     ──► no owner: only clients without a username may use it
//!  CONNECT user U, client id C: accepted when owner(C) == U
//!  CONNECT anonymous, client id C: accepted when C has no owner
//! ```
//!
//! A refused CONNECT gets CONNACK "client identifier not valid" (MQTT 3.1.1 return
//! code 2, MQTT 5 0x85) before it reaches the session, so the owner's session, connected
//! or saved, is left as it was.

use std::fmt;

/// A parsed `clientIdPattern`: text with one `%u`, optionally ending in `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdPattern {
    before: String,
    after: String,
    /// Ends in `*`: any characters (none included) may follow.
    open: bool,
}

/// Why a `clientIdPattern` is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("clientIdPattern {pattern:?} is not valid: {why}")]
pub struct InvalidPattern {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl ClientIdPattern {
    /// Parses a pattern: exactly one `%u`, no other `%`, and `*` only as the last
    /// character.
    pub fn parse(pattern: &str) -> Result<ClientIdPattern, InvalidPattern> {
        let bad = |why| InvalidPattern {
            pattern: pattern.to_owned(),
            why,
        };
        let (body, open) = match pattern.strip_suffix('*') {
            Some(b) => (b, true),
            None => (pattern, false),
        };
        if body.contains('*') {
            return Err(bad("`*` may only be the last character"));
        }
        let Some((before, after)) = body.split_once("%u") else {
            return Err(bad("it must contain `%u` (the username) once"));
        };
        if before.contains('%') || after.contains('%') {
            return Err(bad("`%u` must appear once and no other `%` may appear"));
        }
        Ok(ClientIdPattern {
            before: before.to_owned(),
            after: after.to_owned(),
            open,
        })
    }

    /// Whether `client_id` matches the pattern with `%u` standing for `username`.
    pub fn matches(&self, username: &str, client_id: &str) -> bool {
        let Some(rest) = client_id
            .strip_prefix(self.before.as_str())
            .and_then(|r| r.strip_prefix(username))
        else {
            return false;
        };
        if self.open {
            rest.starts_with(self.after.as_str())
        } else {
            rest == self.after
        }
    }

    /// The user owning `client_id`: of the users whose pattern it matches, the one with
    /// the longest name (there is at most one of each length), or `None`.
    pub fn owner<'a>(
        &self,
        client_id: &str,
        users: impl IntoIterator<Item = &'a str>,
    ) -> Option<&'a str> {
        users
            .into_iter()
            .filter(|u| self.matches(u, client_id))
            .max_by_key(|u| u.len())
    }

    /// Whether a client with `username` (`None`: anonymous) may use `client_id`, given
    /// every user of the broker.
    pub fn allows<'a>(
        &self,
        username: Option<&str>,
        client_id: &str,
        users: impl IntoIterator<Item = &'a str>,
    ) -> bool {
        self.owner(client_id, users) == username
    }

    /// A client id for a user who sent an empty one: the pattern with `%u` put in and
    /// `suffix` in place of a trailing `*`.
    pub fn assign(&self, username: &str, suffix: &str) -> String {
        let mut id = format!("{}{username}{}", self.before, self.after);
        if self.open {
            id.push_str(suffix);
        }
        id
    }
}

impl fmt::Display for ClientIdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}%u{}{}",
            self.before,
            self.after,
            if self.open { "*" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ClientIdPattern {
        ClientIdPattern::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn patterns_hold_one_username_and_at_most_a_trailing_star() {
        for ok in ["%u", "%u-*", "%u/*", "site1-%u-*", "%u*", "%u-phone"] {
            assert_eq!(p(ok).to_string(), ok);
        }
        for (bad, why) in [
            ("", "it must contain `%u` (the username) once"),
            ("dev-*", "it must contain `%u` (the username) once"),
            ("%u-%u", "`%u` must appear once and no other `%` may appear"),
            ("%u-%c", "`%u` must appear once and no other `%` may appear"),
            ("*-%u", "`*` may only be the last character"),
            ("%u-**", "`*` may only be the last character"),
        ] {
            assert_eq!(
                ClientIdPattern::parse(bad).map_err(|e| e.why),
                Err(why),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_pattern_matches_with_the_username_put_in() {
        let star = p("%u-*");
        assert!(star.matches("alice", "alice-"));
        assert!(star.matches("alice", "alice-phone"));
        assert!(!star.matches("alice", "alice"));
        assert!(!star.matches("alice", "bob-phone"));
        assert!(!star.matches("alice", "xalice-phone"));
        let exact = p("%u");
        assert!(exact.matches("alice", "alice"));
        assert!(!exact.matches("alice", "alice-1"));
        let framed = p("site-%u-*");
        assert!(framed.matches("bob", "site-bob-1"));
        assert!(!framed.matches("bob", "bob-1"));
    }

    #[test]
    fn the_longest_matching_username_owns_a_client_id() {
        let star = p("%u-*");
        let users = ["alice", "alice-b", "bob"];
        assert_eq!(star.owner("alice-phone", users), Some("alice"));
        assert_eq!(star.owner("alice-b-x", users), Some("alice-b"));
        assert_eq!(star.owner("sensor-1", users), None);
        assert!(star.allows(Some("alice"), "alice-phone", users));
        assert!(!star.allows(Some("alice"), "alice-b-x", users));
        assert!(star.allows(Some("alice-b"), "alice-b-x", users));
        assert!(!star.allows(Some("bob"), "alice-phone", users));
        assert!(!star.allows(None, "alice-phone", users));
        assert!(star.allows(None, "sensor-1", users));
        assert!(!star.allows(Some("bob"), "sensor-1", users));
    }

    #[test]
    fn an_empty_client_id_is_assigned_from_the_pattern() {
        assert_eq!(p("%u").assign("alice", "1f"), "alice");
        assert_eq!(p("%u-*").assign("alice", "1f"), "alice-1f");
        assert_eq!(p("site-%u/*").assign("bob", "x"), "site-bob/x");
    }
}
