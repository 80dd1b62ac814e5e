//! Which version of each object runs: the effective set the plan reads.
//!
//! ```text
//!  observed objects + their mistakes ─┐
//!  last good set (kept by the caller) ─┼─► effective ─► plan
//!                                      │     │ every object with a mistake: its last
//!                                      │     │ good version, or left out; repeated
//!                                      │     ▼ until the set checks clean
//!                                      └── next last good set = the effective set
//! ```
//!
//! One mistake must not freeze a Broker: deleting a user, a rule or a certificate takes
//! effect at once whatever else is broken. So each object is judged on its own. An
//! object with a mistake runs at its last good version, or is left out when it never
//! had one, and its own status says why; everything else applies. An object that is
//! gone is gone: a deletion never brings back a last good version. Leaving an object
//! out can break another that needs it (a Bridge whose Certificate is left out), so the
//! set is checked again until nothing else changes.
//!
//! Both front doors call [`effective`]: the folder loop and the Kubernetes controller
//! each keep the set it returned as their last good set.

use std::collections::BTreeMap;

use super::{Kind, LoadError, ObjectKey, Resources};

/// An object that does not run as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// Its mistakes (or the mistakes of what it needs), as `edgemq validate` prints them.
    pub errors: Vec<LoadError>,
    /// Whether its last good version runs in its place; otherwise it is left out.
    pub kept: bool,
}

impl Held {
    /// The mistakes and what runs instead, in one line for a status message.
    pub fn message(&self) -> String {
        let errors: Vec<String> = self.errors.iter().map(|e| e.to_string()).collect();
        format!(
            "{}; {}",
            errors.join("; "),
            if self.kept {
                "its last good version stays in effect"
            } else {
                "left out until fixed"
            }
        )
    }
}

/// What runs.
#[derive(Clone, Debug, Default)]
pub struct Effective {
    /// The objects the plan reads; also the caller's next last good set.
    pub res: Resources,
    /// Every object with a mistake: kept at its last good version, or left out.
    pub held: BTreeMap<ObjectKey, Held>,
    /// Every mistake: the ones given plus those found because something was left out.
    pub errors: Vec<LoadError>,
}

/// The effective set of `observed`, whose mistakes are `errors` (as [`check`] or the
/// folder loader found them), given the previous effective set `last_good`.
///
/// - An object with a mistake runs at its version in `last_good` (when that is the
///   same object: on a cluster, the same `uid`), else it is left out.
/// - An object absent from `observed` is absent from the result, with one exception:
///   when some document could not be read at all (invalid YAML, so nobody can say
///   which object it holds), a Broker missing from `observed` keeps its last good
///   version. Keeping a Broker keeps the service running and no credential alive:
///   users, bridges and certificates are objects of their own.
/// - `check` finds the mistakes of a set; it runs again on the result until it finds
///   none, so what is returned always checks clean.
///
/// Pure: the same inputs give the same result.
pub fn effective(
    observed: &Resources,
    errors: &[LoadError],
    last_good: &Resources,
    check: impl Fn(&Resources) -> Vec<LoadError>,
) -> Effective {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Kept,
        LeftOut,
    }
    let mut res = observed.clone();
    let mut held: BTreeMap<ObjectKey, (State, Vec<LoadError>)> = BTreeMap::new();
    let mut all: Vec<LoadError> = errors.to_vec();
    let mut pending: Vec<LoadError> = errors.to_vec();

    let unreadable: Vec<&LoadError> = errors.iter().filter(|e| e.subject.is_none()).collect();
    if !unreadable.is_empty() {
        let named: Vec<&ObjectKey> = errors.iter().filter_map(|e| e.subject.as_ref()).collect();
        for b in last_good.brokers() {
            let k = b.meta.key();
            if observed.get(Kind::Broker, &k.1, &k.2).is_none() && !named.contains(&&k) {
                let where_ = unreadable
                    .iter()
                    .map(|e| {
                        e.location
                            .as_ref()
                            .map_or_else(|| e.to_string(), |l| l.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let e = LoadError {
                    location: b.meta.location.clone(),
                    object: Some(b.meta.display_name()),
                    subject: Some(k),
                    message: format!(
                        "not found while a document cannot be read ({where_}); it may be that document"
                    ),
                };
                all.push(e.clone());
                pending.push(e);
            }
        }
    }

    loop {
        let mut by_object: BTreeMap<ObjectKey, Vec<LoadError>> = BTreeMap::new();
        for e in pending {
            if let Some(k) = e.subject.clone() {
                by_object.entry(k).or_default().push(e);
            }
        }
        let mut changed = false;
        for (k, errs) in by_object {
            let (kind, ns, name) = (&k.0, &k.1, &k.2);
            let state = held.get(&k).map(|(s, _)| *s);
            let next = match state {
                None => {
                    let same_object = match (observed.uid(&k), last_good.uid(&k)) {
                        (Some(now), Some(before)) => now == before,
                        _ => true,
                    };
                    res.delete(*kind, ns, name);
                    if same_object && res.copy_from(last_good, &k) {
                        State::Kept
                    } else {
                        State::LeftOut
                    }
                }
                Some(State::Kept) => {
                    res.delete(*kind, ns, name);
                    State::LeftOut
                }
                Some(State::LeftOut) => State::LeftOut,
            };
            changed |= state != Some(next);
            let entry = held.entry(k).or_insert((next, Vec::new()));
            entry.0 = next;
            for e in errs {
                if !entry.1.contains(&e) {
                    entry.1.push(e);
                }
            }
        }
        if !changed {
            break;
        }
        pending = check(&res);
        for e in &pending {
            if !all.contains(e) {
                all.push(e.clone());
            }
        }
    }

    Effective {
        res,
        held: held
            .into_iter()
            .map(|(k, (state, errors))| {
                (
                    k,
                    Held {
                        errors,
                        kept: state == State::Kept,
                    },
                )
            })
            .collect(),
        errors: all,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{check_folder, check_namespace, read_folder, Object};
    use crate::plan;

    const HASH: &str = "$7$101$qKSz0fyQacdTZ9HB$If/JbDtgTExFDBNmWitmhEReV5nR415+Z0sGyz5/w3xtjXLmRigZrJPRATCjNC+TE2hwhkAwJuKCX/NjaVU4kw==";

    fn broker(port: u16) -> String {
        format!("apiVersion: edgemq.io/v1alpha1\nkind: Broker\nmetadata: {{name: home}}\nspec:\n  listeners: [{{name: lan, port: {port}}}]\n")
    }

    fn user(name: &str, extra: &str) -> String {
        format!("apiVersion: edgemq.io/v1alpha1\nkind: MqttUser\nmetadata: {{name: {name}}}\nspec:\n  brokerRef: home\n{extra}")
    }

    fn hashed(name: &str, topic: &str) -> String {
        user(
            name,
            &format!(
                "  passwordHash: \"{HASH}\"\n  acl: [{{topic: \"{topic}\", access: readwrite}}]\n"
            ),
        )
    }

    /// One reload of a folder holding `docs`, judged against `last_good`.
    fn reload(docs: &[&str], last_good: &Resources) -> Effective {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("all.yaml"), docs.join("---\n")).expect("write");
        let folder = read_folder(dir.path(), None);
        assert!(!folder.unreadable);
        effective(&folder.res, &folder.errors, last_good, check_folder)
    }

    fn usernames(e: &Effective) -> Vec<String> {
        let bundles = plan::plan(&e.res).expect("the effective set plans");
        bundles["default/home"].users.keys().cloned().collect()
    }

    fn held<'a>(e: &'a Effective, kind: Kind, name: &str) -> Option<&'a Held> {
        e.held.get(&(kind, "default".to_string(), name.to_string()))
    }

    #[test]
    fn deleting_a_user_applies_while_another_user_is_invalid() {
        let b = broker(1883);
        let good = reload(
            &[
                &b,
                &hashed("alice", "a/#"),
                &hashed("bob", "b/#"),
                &hashed("carol", "c/#"),
            ],
            &Resources::default(),
        );
        assert!(good.errors.is_empty(), "{:?}", good.errors);
        let broken_carol = user("carol", "  passwordHash: \"$7$101$tooshort$abc\"\n");
        let next = reload(&[&b, &hashed("alice", "a/#"), &broken_carol], &good.res);
        assert_eq!(
            usernames(&next),
            ["alice", "carol"],
            "bob is gone, carol keeps her last good version"
        );
        let h = held(&next, Kind::MqttUser, "carol").expect("carol is held");
        assert!(h.kept);
        let text = h.message();
        assert!(
            text.contains("all.yaml:") && text.contains("MqttUser/carol: "),
            "{text}"
        );
        assert!(
            text.ends_with("its last good version stays in effect"),
            "{text}"
        );
        let carol = next.res.user("default", "carol").expect("carol");
        assert_eq!(carol.object.spec.password_hash.as_deref(), Some(HASH));
        assert_eq!(next.held.len(), 1, "nothing else is held: {:?}", next.held);
    }

    #[test]
    fn an_edit_of_another_user_applies_while_one_is_invalid() {
        let b = broker(1883);
        let good = reload(
            &[&b, &hashed("alice", "a/#"), &hashed("carol", "c/#")],
            &Resources::default(),
        );
        let broken_carol = user("carol", "  passwordSecretRef: {name: nowhere, key: pw}\n");
        let next = reload(&[&b, &hashed("alice", "x/#"), &broken_carol], &good.res);
        let bundles = plan::plan(&next.res).expect("plans");
        let acl = &bundles["default/home"].acl.users;
        assert_eq!(acl["alice"][0].topic, "x/#", "alice's edit applies");
        assert_eq!(
            acl["carol"][0].topic, "c/#",
            "carol keeps her last good rules"
        );
    }

    #[test]
    fn an_invalid_object_that_never_had_a_good_version_stays_out() {
        let b = broker(1883);
        let good = reload(&[&b, &hashed("alice", "a/#")], &Resources::default());
        let dave = user("dave", "  passwordSecretRef: {name: nowhere, key: pw}\n");
        let next = reload(&[&b, &hashed("alice", "a/#"), &dave], &good.res);
        assert_eq!(usernames(&next), ["alice"]);
        let h = held(&next, Kind::MqttUser, "dave").expect("dave is held");
        assert!(!h.kept);
        assert!(
            h.message().contains("Secret `nowhere` not found"),
            "{}",
            h.message()
        );
        assert!(h.message().ends_with("left out until fixed"));
    }

    #[test]
    fn an_invalid_broker_keeps_its_last_good_version_and_user_deletions_still_apply() {
        let good = reload(
            &[
                &broker(1883),
                &hashed("alice", "a/#"),
                &hashed("bob", "b/#"),
            ],
            &Resources::default(),
        );
        let next = reload(&[&broker(0), &hashed("alice", "a/#")], &good.res);
        assert_eq!(usernames(&next), ["alice"], "bob's deletion applies");
        let b = next.res.broker("default", "home").expect("the Broker runs");
        assert_eq!(
            b.object.spec.listeners[0].port, 1883,
            "at its last good version"
        );
        assert!(held(&next, Kind::Broker, "home").is_some_and(|h| h.kept));
    }

    #[test]
    fn a_newcomer_never_takes_over_a_username_in_use() {
        let b = broker(1883);
        let good = reload(&[&b, &hashed("zed", "z/#")], &Resources::default());
        // `aaron` sorts first, so a one-sided check would blame `zed`.
        let aaron = user(
            "aaron",
            "  username: zed\n  passwordHash: \"$6$AAAAAAAAAAAAAAAA$x\"\n",
        );
        let aaron = aaron.replace("$6$AAAAAAAAAAAAAAAA$x", HASH);
        let next = reload(&[&b, &aaron, &hashed("zed", "z/#")], &good.res);
        let bundles = plan::plan(&next.res).expect("plans");
        assert_eq!(bundles["default/home"].users["zed"].source, "default/zed");
        assert!(held(&next, Kind::MqttUser, "aaron").is_some_and(|h| !h.kept));
        assert!(held(&next, Kind::MqttUser, "zed").is_some_and(|h| h.kept));
    }

    #[test]
    fn a_user_whose_password_secret_is_deleted_is_locked_out_not_kept() {
        let b = broker(1883);
        let secret =
            "apiVersion: v1\nkind: Secret\nmetadata: {name: pw}\nstringData: {carol: pw}\n";
        let carol = user("carol", "  passwordSecretRef: {name: pw, key: carol}\n");
        let good = reload(
            &[&b, &hashed("alice", "a/#"), &carol, secret],
            &Resources::default(),
        );
        assert_eq!(usernames(&good), ["alice", "carol"]);
        let next = reload(&[&b, &hashed("alice", "a/#"), &carol], &good.res);
        assert_eq!(usernames(&next), ["alice"]);
        assert!(held(&next, Kind::MqttUser, "carol").is_some_and(|h| !h.kept));
    }

    #[test]
    fn a_document_that_cannot_be_read_keeps_a_missing_broker_but_not_a_missing_user() {
        let good = reload(
            &[
                &broker(1883),
                &hashed("alice", "a/#"),
                &hashed("bob", "b/#"),
            ],
            &Resources::default(),
        );
        // The Broker's document and bob's are now one unreadable document each.
        let next = reload(
            &["kind: [\n", &hashed("alice", "a/#"), "acl: {\n"],
            &good.res,
        );
        assert_eq!(usernames(&next), ["alice"], "bob is not kept");
        let h = held(&next, Kind::Broker, "home").expect("the Broker is held");
        assert!(
            h.kept && h.message().contains("cannot be read"),
            "{}",
            h.message()
        );
    }

    #[test]
    fn leaving_an_object_out_leaves_out_what_needs_it() {
        let good = reload(&[&hashed("alice", "a/#")], &Resources::default());
        assert!(
            good.res.users().next().is_none(),
            "no Broker, so alice is out"
        );
        assert!(held(&good, Kind::MqttUser, "alice").is_some_and(|h| !h.kept));
        // A Broker that never checked clean takes its users out with it.
        let next = reload(&[&broker(0), &hashed("alice", "a/#")], &good.res);
        assert!(next.res.brokers().next().is_none() && next.res.users().next().is_none());
        assert!(check_folder(&next.res).is_empty());
    }

    #[test]
    fn a_recreated_object_does_not_inherit_the_last_good_version_of_the_one_before() {
        let obj = |uid: &str, hash: &str| {
            let mut u: crate::api::MqttUser =
                serde_yaml::from_str(&hashed("carol", "c/#")).expect("user");
            u.metadata.uid = Some(uid.into());
            u.spec.password_hash = Some(hash.into());
            Object::MqttUser(Box::new(u))
        };
        let mut before = Resources::default();
        before.apply(
            Object::Broker(Box::new(
                serde_yaml::from_str(&broker(1883)).expect("broker"),
            )),
            None,
        );
        before.apply(obj("uid-1", HASH), None);
        let mut now = before.clone();
        now.apply(obj("uid-2", "not a hash"), None);
        let errors = check_namespace(&now);
        let e = effective(&now, &errors, &before, check_namespace);
        assert!(e.res.user("default", "carol").is_none());
        let same = effective(
            &now,
            &errors,
            &{
                let mut b = before.clone();
                b.apply(obj("uid-2", HASH), None);
                b
            },
            check_namespace,
        );
        assert!(same.res.user("default", "carol").is_some());
    }
}
