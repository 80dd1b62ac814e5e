//! A Broker's last good version, kept in its bundle Secret so that it outlives a restart
//! of the controller.
//!
//! ```text
//!  plan from Broker (last good) ─► bundle Secret: bundle.json + broker.json {uid, spec}
//!  after a restart, a Broker with a mistake and no last good version in memory:
//!  its bundle Secret (read by name) + the Broker as observed ─► recovered ─► last good set
//! ```
//!
//! Without it, a controller that restarts while a Broker's own spec has a mistake has
//! no version of that Broker to run: it writes nothing, and the pod keeps its old
//! bundle, with every user deleted since (a revocation held back by an unrelated
//! mistake). With it, the Broker runs the spec the controller last planned from, and
//! user deletions apply.
//!
//! What is stored is only the Broker's `spec` and `uid`: a spec holds names of Secrets,
//! never their values, and it is stored only while it is at most
//! [`MAX_STORED_BROKER_BYTES`], so that it never makes the bundle Secret too big to
//! write. A recovered spec is trusted only when the bundle Secret is the Broker's own
//! (its controller owner reference has the Broker's `uid`) and was written for that
//! same Broker (the stored `uid`): a Broker deleted and made again starts afresh. It is
//! then judged like any last good version: checked again, and left out if it no longer
//! checks clean.

use k8s_openapi::api::core::v1::Secret;
use serde::{Deserialize, Serialize};

use super::bundle::bundle_secret_name;
use edgemq::api::{Broker, BrokerSpec};
use edgemq::load::{LoadError, Object, Resources};

/// Key of the bundle Secret holding the Broker the bundle was planned from.
pub const BROKER_KEY: &str = "broker.json";

/// The largest stored Broker, in bytes of JSON. A larger spec is not stored (its
/// Broker then has no last good version after a restart until its spec is fixed).
pub const MAX_STORED_BROKER_BYTES: usize = 64 * 1024;

/// What [`BROKER_KEY`] holds.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
struct Stored {
    /// `metadata.uid` of the Broker.
    uid: String,
    /// The spec the bundle was planned from.
    spec: BrokerSpec,
}

/// The value of [`BROKER_KEY`] for a bundle planned from `broker`; `None` when it has
/// no `uid` (not from the API) or its spec is larger than [`MAX_STORED_BROKER_BYTES`].
pub fn stored_broker(broker: &Broker) -> Option<String> {
    let uid = broker.metadata.uid.clone().filter(|u| !u.is_empty())?;
    let text = serde_json::to_string(&Stored {
        uid,
        spec: broker.spec.clone(),
    })
    .ok()?;
    (text.len() <= MAX_STORED_BROKER_BYTES).then_some(text)
}

/// Names of the Brokers of `ns` in `observed` that have a mistake of their own
/// (`errors`) and no last good version in `last_good`: those whose bundle Secret may
/// hold one.
pub fn wanted(observed: &Resources, errors: &[LoadError], last_good: &Resources) -> Vec<String> {
    let mut out: Vec<String> = observed
        .brokers()
        .filter(|b| {
            let k = b.meta.key();
            errors.iter().any(|e| e.subject.as_ref() == Some(&k))
                && last_good.broker(&k.1, &k.2).is_none()
        })
        .map(|b| b.meta.key().2)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The last good versions `bundles` (bundle Secrets as read from the API) hold for the
/// Brokers in `observed` that `last_good` has no version of. Each is the Broker as
/// observed with the stored spec, and only when the Secret is that Broker's own and
/// was written for it (same `uid`). Pure.
pub fn recovered(observed: &Resources, bundles: &[Secret], last_good: &Resources) -> Vec<Object> {
    let mut out = Vec::new();
    for b in observed.brokers() {
        let (_, ns, name) = b.meta.key();
        if last_good.broker(&ns, &name).is_some() {
            continue;
        }
        let Some(uid) = b.object.metadata.uid.as_deref().filter(|u| !u.is_empty()) else {
            continue;
        };
        let secret_name = bundle_secret_name(&name);
        let Some(secret) = bundles.iter().find(|s| {
            s.metadata.name.as_deref() == Some(secret_name.as_str())
                && s.metadata.namespace.as_deref().unwrap_or(&ns) == ns
        }) else {
            continue;
        };
        let owned = secret
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.kind == "Broker" && o.uid == uid);
        if !owned {
            continue;
        }
        let Some(raw) = value(secret, BROKER_KEY) else {
            continue;
        };
        if raw.len() > MAX_STORED_BROKER_BYTES {
            continue;
        }
        let Ok(stored) = serde_json::from_slice::<Stored>(&raw) else {
            continue;
        };
        if stored.uid != uid {
            continue;
        }
        let mut broker = b.object.clone();
        broker.spec = stored.spec;
        broker.status = None;
        out.push(Object::Broker(Box::new(broker)));
    }
    out
}

/// `last_good` with the [`recovered`] Brokers in it.
pub fn seed(observed: &Resources, bundles: &[Secret], mut last_good: Resources) -> Resources {
    for o in recovered(observed, bundles, &last_good) {
        last_good.apply(o, None);
    }
    last_good
}

fn value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::PodBundle;
    use crate::desired::{broker_objects, Settings};
    use edgemq::load::{check_namespace, effective, Kind};

    const HASH: &str = "$7$101$qKSz0fyQacdTZ9HB$If/JbDtgTExFDBNmWitmhEReV5nR415+Z0sGyz5/w3xtjXLmRigZrJPRATCjNC+TE2hwhkAwJuKCX/NjaVU4kw==";

    fn broker(uid: &str, listeners: &str) -> Broker {
        serde_yaml::from_str(&format!(
            "apiVersion: edgemq.io/v1alpha1\nkind: Broker\nmetadata: {{name: home, namespace: iot, uid: {uid}, generation: 3}}\nspec:\n  listeners: {listeners}\n"
        ))
        .expect("broker yaml")
    }

    const GOOD: &str = "[{name: lan, port: 1883}]";
    /// Accepted by the API server, refused by validation.
    const BAD: &str = "[{name: lan, port: 1883}, {name: lan2, port: 1883}]";

    fn user(name: &str) -> Object {
        Object::MqttUser(Box::new(
            serde_yaml::from_str(&format!(
                "apiVersion: edgemq.io/v1alpha1\nkind: MqttUser\nmetadata: {{name: {name}, namespace: iot, uid: u-{name}}}\nspec: {{brokerRef: home, passwordHash: \"{HASH}\"}}\n"
            ))
            .expect("user yaml"),
        ))
    }

    fn objects(b: &Broker, users: &[&str]) -> Resources {
        let mut res = Resources::default();
        res.apply(Object::Broker(Box::new(b.clone())), None);
        for u in users {
            res.apply(user(u), None);
        }
        res
    }

    /// The bundle Secret the controller writes for `b` with `users`, as the API
    /// returns it (values under `data`).
    fn bundle_secret(b: &Broker, users: &[&str]) -> Secret {
        let res = objects(b, users);
        let loaded = res.broker("iot", "home").expect("broker").clone();
        let bundle = edgemq::plan::plan_broker(&res, &loaded).expect("plan");
        let settings = Settings {
            image: "edgemq:1".into(),
            image_pull_policy: None,
            trust: Default::default(),
        };
        let mut s = broker_objects(b, &PodBundle::new(bundle, &res), &settings).bundle;
        s.data = Some(
            s.string_data
                .take()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, k8s_openapi::ByteString(v.into_bytes())))
                .collect(),
        );
        s
    }

    fn spec_of(o: &Object) -> &BrokerSpec {
        match o {
            Object::Broker(b) => &b.spec,
            _ => panic!("not a Broker"),
        }
    }

    #[test]
    fn after_a_restart_a_broker_with_a_mistake_runs_the_spec_its_bundle_was_planned_from() {
        let good = broker("b-1", GOOD);
        let secret = bundle_secret(&good, &["alice", "bob"]);
        // Restarted: nothing in memory; the Broker now has a mistake and bob is gone.
        let now = objects(&broker("b-1", BAD), &["alice"]);
        let errors = check_namespace(&now);
        assert!(errors
            .iter()
            .any(|e| e.subject == Some((Kind::Broker, "iot".into(), "home".into()))));
        let empty = Resources::default();
        assert_eq!(wanted(&now, &errors, &empty), ["home"]);
        let got = recovered(&now, std::slice::from_ref(&secret), &empty);
        assert_eq!(got.len(), 1);
        assert_eq!(spec_of(&got[0]), &good.spec);

        // What runs: the recovered Broker, without bob, and the Broker says why.
        let last_good = seed(&now, &[secret], empty);
        let e = effective(&now, &errors, &last_good, check_namespace);
        let b = e.res.broker("iot", "home").expect("the Broker runs");
        assert_eq!(b.object.spec.listeners.len(), 1);
        let bundles = edgemq::plan::plan(&e.res).expect("plans");
        assert_eq!(
            bundles["iot/home"].users.keys().collect::<Vec<_>>(),
            ["alice"]
        );
        let h = &e.held[&(Kind::Broker, "iot".into(), "home".into())];
        assert!(h.kept, "{h:?}");
        assert!(
            h.message()
                .contains("port 1883 is already used by listener `lan`"),
            "{}",
            h.message()
        );
        // alice is not held: her Broker runs.
        assert_eq!(e.held.len(), 1, "{:?}", e.held);
    }

    #[test]
    fn nothing_is_recovered_for_another_broker_of_the_same_name() {
        let secret = bundle_secret(&broker("b-1", GOOD), &["alice"]);
        let now = objects(&broker("b-2", BAD), &["alice"]);
        assert!(recovered(&now, &[secret], &Resources::default()).is_empty());
    }

    #[test]
    fn nothing_is_recovered_from_a_secret_the_broker_does_not_own() {
        let mut secret = bundle_secret(&broker("b-1", GOOD), &["alice"]);
        // Someone else's Secret of that name, with a stored Broker of the right uid.
        secret.metadata.owner_references = None;
        let now = objects(&broker("b-1", BAD), &["alice"]);
        assert!(recovered(&now, &[secret], &Resources::default()).is_empty());
    }

    #[test]
    fn nothing_is_recovered_when_memory_has_a_last_good_version() {
        let old = broker("b-1", "[{name: old, port: 1884}]");
        let secret = bundle_secret(&broker("b-1", GOOD), &["alice"]);
        let now = objects(&broker("b-1", BAD), &["alice"]);
        let last_good = objects(&old, &["alice"]);
        assert!(wanted(&now, &check_namespace(&now), &last_good).is_empty());
        assert!(recovered(&now, &[secret], &last_good).is_empty());
    }

    #[test]
    fn a_valid_broker_is_not_looked_up() {
        let now = objects(&broker("b-1", GOOD), &["alice"]);
        assert!(wanted(&now, &check_namespace(&now), &Resources::default()).is_empty());
    }

    #[test]
    fn a_broker_without_a_stored_spec_or_with_a_garbled_one_stays_out() {
        let now = objects(&broker("b-1", BAD), &["alice"]);
        let mut secret = bundle_secret(&broker("b-1", GOOD), &["alice"]);
        let data = secret.data.as_mut().expect("data");
        data.insert(BROKER_KEY.into(), k8s_openapi::ByteString(b"{".to_vec()));
        assert!(recovered(&now, &[secret.clone()], &Resources::default()).is_empty());
        secret.data.as_mut().expect("data").remove(BROKER_KEY);
        assert!(recovered(&now, &[secret], &Resources::default()).is_empty());
    }

    #[test]
    fn the_stored_spec_is_bounded_and_is_only_the_spec_and_uid() {
        let good = broker("b-1", GOOD);
        let stored: serde_json::Value =
            serde_json::from_str(&stored_broker(&good).expect("stored")).expect("json");
        let keys: Vec<&String> = stored.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["spec", "uid"]);
        // A spec larger than the bound is not stored.
        let mut big = good.clone();
        big.spec
            .pod
            .annotations
            .insert("big".into(), "x".repeat(MAX_STORED_BROKER_BYTES));
        assert_eq!(stored_broker(&big), None);
        let secret = bundle_secret(&big, &["alice"]);
        // Written empty, so that an older stored spec does not stay behind.
        assert_eq!(
            secret
                .data
                .expect("data")
                .get(BROKER_KEY)
                .map(|v| v.0.len()),
            Some(0)
        );
        // Nor is a Broker that did not come from the API.
        let mut local = good;
        local.metadata.uid = None;
        assert_eq!(stored_broker(&local), None);
    }

    #[test]
    fn a_recovered_spec_that_no_longer_checks_clean_is_left_out() {
        // The last good spec serves TLS from a Secret that is gone now.
        let tls = broker(
            "b-1",
            "[{name: lan, port: 1883}, {name: tls, port: 8883, tls: {secretRef: gone}}]",
        );
        let mut with_pair = objects(&tls, &["alice"]);
        with_pair.apply(
            Object::Secret(Box::new(
                serde_yaml::from_str(
                    "apiVersion: v1\nkind: Secret\nmetadata: {name: gone, namespace: iot}\ntype: kubernetes.io/tls\nstringData: {tls.crt: x, tls.key: y}\n",
                )
                .expect("secret"),
            )),
            None,
        );
        let loaded = with_pair.broker("iot", "home").expect("broker").clone();
        let bundle = edgemq::plan::plan_broker(&with_pair, &loaded).expect("plan");
        let settings = Settings {
            image: "edgemq:1".into(),
            image_pull_policy: None,
            trust: Default::default(),
        };
        let secret = broker_objects(&tls, &PodBundle::new(bundle, &with_pair), &settings).bundle;
        let now = objects(&broker("b-1", BAD), &["alice"]);
        let errors = check_namespace(&now);
        let last_good = seed(&now, &[secret], Resources::default());
        assert!(
            last_good.broker("iot", "home").is_some(),
            "from stringData too"
        );
        let e = effective(&now, &errors, &last_good, check_namespace);
        assert!(e.res.broker("iot", "home").is_none());
        assert!(!e.held[&(Kind::Broker, "iot".into(), "home".into())].kept);
    }
}
