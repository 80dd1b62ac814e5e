//! The controller's view of one namespace: the objects its watchers hold, fed into the
//! same [`Resources`] index the folder loader fills, then validated and planned the
//! same way. The core never knows where objects came from.
//!
//! Secrets are watched by metadata only (names and versions, never values): the index
//! holds the values of just the Secrets an edgemq object of the namespace names
//! ([`referenced_secrets`]), which the controller reads by name.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;

use edgemq::api::{Bridge, Broker, Certificate, MqttUser};
use edgemq::load::{Effective, Held, Kind, LoadError, Object, Resources};

/// Snapshots of every watched kind (any namespace; [`namespace`] picks one).
#[derive(Clone, Default)]
pub struct Snapshot {
    /// Brokers.
    pub brokers: Vec<std::sync::Arc<Broker>>,
    /// MqttUsers.
    pub users: Vec<std::sync::Arc<MqttUser>>,
    /// Bridges.
    pub bridges: Vec<std::sync::Arc<Bridge>>,
    /// Certificates.
    pub certificates: Vec<std::sync::Arc<Certificate>>,
    /// Secrets, metadata only: which exist, at which version.
    pub secrets: Vec<std::sync::Arc<PartialObjectMeta<Secret>>>,
}

fn in_ns<K: kube::Resource>(o: &K, ns: &str) -> bool {
    o.meta().namespace.as_deref() == Some(ns) && o.meta().deletion_timestamp.is_none()
}

/// The watchers' copies in `objs` of namespace `ns`, without those being deleted.
fn live_in<'a, K: kube::Resource>(
    objs: &'a [Arc<K>],
    ns: &'a str,
) -> impl Iterator<Item = &'a K> + 'a {
    objs.iter()
        .map(|o| o.as_ref())
        .filter(move |o| in_ns(*o, ns))
}

/// The edgemq objects of namespace `ns`, as the loader's index (without Secrets: see
/// [`with_secrets`]).
pub fn namespace(snapshot: &Snapshot, ns: &str) -> Resources {
    let mut res = Resources::default();
    for b in live_in(&snapshot.brokers, ns) {
        res.apply(Object::Broker(Box::new(without_status(b))), None);
    }
    for u in live_in(&snapshot.users, ns) {
        res.apply(Object::MqttUser(Box::new(u.clone())), None);
    }
    for b in live_in(&snapshot.bridges, ns) {
        res.apply(Object::Bridge(Box::new(b.clone())), None);
    }
    for c in live_in(&snapshot.certificates, ns) {
        res.apply(Object::Certificate(Box::new(c.clone())), None);
    }
    res
}

/// Names of the Secrets of `ns` that its edgemq objects in `res` name: every
/// `secretRef` and `…SecretRef` field (a name, or `{name, key}`) of every spec, and
/// every Certificate's Secret (a claim Certificate's pair is read from it). Only these
/// Secrets' values are read.
pub fn referenced_secrets(res: &Resources, ns: &str) -> BTreeSet<String> {
    secret_refs(
        res.brokers()
            .filter(|o| o.namespace == ns)
            .map(|o| &o.object),
        res.users().filter(|o| o.namespace == ns).map(|o| &o.object),
        res.bridges()
            .filter(|o| o.namespace == ns)
            .map(|o| &o.object),
        res.certificates()
            .filter(|o| o.namespace == ns)
            .map(|o| &o.object),
    )
}

/// [`referenced_secrets`] read straight from the watchers' copies of `ns`, without
/// building its index: which Secret changes concern the namespace's Brokers.
pub fn named_secrets(s: &Snapshot, ns: &str) -> BTreeSet<String> {
    secret_refs(
        live_in(&s.brokers, ns),
        live_in(&s.users, ns),
        live_in(&s.bridges, ns),
        live_in(&s.certificates, ns),
    )
}

fn secret_refs<'a>(
    brokers: impl Iterator<Item = &'a Broker>,
    users: impl Iterator<Item = &'a MqttUser>,
    bridges: impl Iterator<Item = &'a Bridge>,
    certificates: impl Iterator<Item = &'a Certificate>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut walk = |spec: serde_json::Result<serde_json::Value>| {
        if let Ok(v) = spec {
            collect_secret_refs(&v, &mut out);
        }
    };
    brokers.for_each(|b| walk(serde_json::to_value(&b.spec)));
    users.for_each(|u| walk(serde_json::to_value(&u.spec)));
    bridges.for_each(|b| walk(serde_json::to_value(&b.spec)));
    let mut names = Vec::new();
    for c in certificates {
        walk(serde_json::to_value(&c.spec));
        names.push(c.secret_name());
    }
    out.extend(names);
    out
}

/// Names of the Secrets a Certificate reads or writes: every `secretRef` / `…SecretRef`
/// of its spec (a private CA, solver and AWS credentials) and its own Secret.
pub fn secrets_of_certificate(c: &edgemq::api::Certificate) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(v) = serde_json::to_value(&c.spec) {
        collect_secret_refs(&v, &mut out);
    }
    out.insert(c.secret_name());
    out
}

/// Names in every `secretRef` / `…SecretRef` field of a spec.
fn collect_secret_refs(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "secretRef" || k.ends_with("SecretRef") {
                    let name = v
                        .as_str()
                        .or_else(|| v.get("name").and_then(|n| n.as_str()));
                    if let Some(n) = name.filter(|n| !n.is_empty()) {
                        out.insert(n.to_string());
                    }
                }
                collect_secret_refs(v, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_secret_refs(v, out)),
        _ => {}
    }
}

/// The resourceVersion of Secret `ns/name` as the metadata watch last saw it; `None`
/// when it does not exist (or is being deleted).
pub fn secret_version(snapshot: &Snapshot, ns: &str, name: &str) -> Option<String> {
    snapshot
        .secrets
        .iter()
        .find(|s| in_ns(s.as_ref(), ns) && s.metadata.name.as_deref() == Some(name))
        .map(|s| s.metadata.resource_version.clone().unwrap_or_default())
}

/// `res` with `secrets` (the values of the [`referenced_secrets`]) in it, validated and
/// judged against the namespace's `last_good` set.
pub fn with_secrets(res: Resources, secrets: &[Arc<Secret>], last_good: &Resources) -> View {
    let res = add_secrets(res, secrets);
    let errors = errors(&res);
    judge(res, errors, last_good)
}

/// `res` with `secrets` (the values of the [`referenced_secrets`]) in it.
pub fn add_secrets(mut res: Resources, secrets: &[Arc<Secret>]) -> Resources {
    for s in secrets {
        res.apply(Object::Secret(Box::new((**s).clone())), None);
    }
    res
}

/// The view of `res`, whose validation errors are `errors`, judged against the
/// namespace's `last_good` set.
pub fn judge(res: Resources, errors: Vec<LoadError>, last_good: &Resources) -> View {
    let effective =
        edgemq::load::effective(&res, &errors, last_good, edgemq::load::check_namespace);
    View {
        res,
        errors,
        effective,
    }
}

/// A Broker without its status (the plan reads the spec).
pub fn without_status(b: &Broker) -> Broker {
    let mut b = b.clone();
    b.status = None;
    b
}

/// Every validation error of the namespace.
pub fn errors(res: &Resources) -> Vec<LoadError> {
    edgemq::load::check_namespace(res)
}

/// A namespace's index, its validation errors, and what runs.
pub struct View {
    /// The objects, as the loader's index.
    pub res: Resources,
    /// Every validation error of the namespace.
    pub errors: Vec<LoadError>,
    /// What the plan reads: each object with a mistake at its last good version or
    /// left out (see [`edgemq::load::effective`]); the namespace's next last good set.
    pub effective: Effective,
}

impl View {
    /// Why `kind` `name` does not run as written, if it does not.
    pub fn held(&self, kind: Kind, ns: &str, name: &str) -> Option<&Held> {
        self.effective
            .held
            .get(&(kind, ns.to_string(), name.to_string()))
    }
}

/// The edgemq objects of `ns`, with `fresh` (the object a reconcile was called for,
/// newer than the store's copy) in place of the stored one; Secrets come next, with
/// [`with_secrets`].
pub fn objects(snapshot: &Snapshot, ns: &str, fresh: Option<Object>) -> Resources {
    let mut res = namespace(snapshot, ns);
    if let Some(o) = fresh {
        res.apply(o, None);
    }
    res
}

/// What identifies an object's content for the index: its `generation` (a custom
/// resource's spec; status writes do not move it, so they do not invalidate a view),
/// else its resourceVersion (a Secret).
pub fn content_version<K: kube::Resource>(o: &K) -> Option<String> {
    o.meta()
        .generation
        .map(|g| format!("g{g}"))
        .or_else(|| o.meta().resource_version.clone())
}

fn mix<K: kube::Resource>(o: &K, tag: u8) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tag.hash(&mut h);
    o.meta().name.hash(&mut h);
    o.meta().uid.hash(&mut h);
    // content_version's parts, hashed as they are: no string built per object.
    match o.meta().generation {
        Some(g) => g.hash(&mut h),
        None => o.meta().resource_version.hash(&mut h),
    }
    o.meta().deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

/// A value that changes whenever an edgemq object of `ns` is added, changed or removed
/// (with the Secrets a view read, the key of a cached [`View`]). Secrets are not in it:
/// a view depends only on the ones its objects name, and the controller writes others
/// (each broker's bundle) all the time.
pub fn fingerprint(s: &Snapshot, ns: &str) -> u64 {
    fn sum<K: kube::Resource>(objs: &[std::sync::Arc<K>], ns: &str, tag: u8) -> (u64, u64) {
        objs.iter()
            .filter(|o| o.meta().namespace.as_deref() == Some(ns))
            .fold((0u64, 0u64), |(acc, n), o| {
                (acc.wrapping_add(mix(o.as_ref(), tag)), n + 1)
            })
    }
    let parts = [
        sum(&s.brokers, ns, 1),
        sum(&s.users, ns, 2),
        sum(&s.bridges, ns, 3),
        sum(&s.certificates, ns, 4),
    ];
    parts.iter().fold(0u64, |acc, (h, n)| {
        acc.rotate_left(7).wrapping_add(*h).wrapping_add(*n)
    })
}

/// Whether each Secret of `read` (a name and the version a view read it at, `None`
/// for absent) is still at that version in `s`.
pub fn secrets_unchanged(s: &Snapshot, ns: &str, read: &[(String, Option<String>)]) -> bool {
    read.iter()
        .all(|(name, version)| secret_version(s, ns, name) == *version)
}

/// The [`content_version`] of the stored copy of `kind` `ns/name`.
pub fn stored_version(s: &Snapshot, kind: Kind, ns: &str, name: &str) -> Option<String> {
    fn find<K: kube::Resource>(objs: &[std::sync::Arc<K>], ns: &str, name: &str) -> Option<String> {
        objs.iter()
            .find(|o| {
                o.meta().namespace.as_deref() == Some(ns) && o.meta().name.as_deref() == Some(name)
            })
            .and_then(|o| content_version(o.as_ref()))
    }
    match kind {
        Kind::Broker => find(&s.brokers, ns, name),
        Kind::MqttUser => find(&s.users, ns, name),
        Kind::Bridge => find(&s.bridges, ns, name),
        Kind::Certificate => find(&s.certificates, ns, name),
        Kind::Secret => find(&s.secrets, ns, name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(yaml: &str) -> Object {
        let v: serde_yaml::Value = serde_yaml::from_str(yaml).expect("yaml");
        match v["kind"].as_str() {
            Some("Broker") => Object::Broker(Box::new(serde_yaml::from_value(v).unwrap())),
            Some("MqttUser") => Object::MqttUser(Box::new(serde_yaml::from_value(v).unwrap())),
            Some("Bridge") => Object::Bridge(Box::new(serde_yaml::from_value(v).unwrap())),
            Some("Certificate") => {
                Object::Certificate(Box::new(serde_yaml::from_value(v).unwrap()))
            }
            k => panic!("kind {k:?}"),
        }
    }

    fn resources(docs: &[&str]) -> Resources {
        let mut res = Resources::default();
        for d in docs {
            res.apply(obj(d), None);
        }
        res
    }

    const HEAD: &str = "apiVersion: edgemq.io/v1alpha1\n";

    #[test]
    fn only_the_secrets_edgemq_objects_name_are_read() {
        let broker = format!("{HEAD}kind: Broker\nmetadata: {{name: home, namespace: iot}}\nspec:\n  listeners:\n    - {{name: tls, port: 8883, tls: {{secretRef: server-pair}}}}\n");
        let user = format!("{HEAD}kind: MqttUser\nmetadata: {{name: ha, namespace: iot}}\nspec:\n  brokerRef: home\n  passwordSecretRef: {{name: ha-password, key: password}}\n");
        let bridge = format!("{HEAD}kind: Bridge\nmetadata: {{name: up, namespace: iot}}\nspec:\n  brokerRef: home\n  remote:\n    address: example.com:8883\n    usernameSecretRef: {{name: up-user, key: u}}\n    passwordSecretRef: {{name: up-pass, key: p}}\n    tls: {{caSecretRef: {{name: up-ca, key: ca.crt}}, clientSecretRef: up-client}}\n  topics: [{{pattern: '#', direction: out}}]\n");
        let ca = format!("{HEAD}kind: Certificate\nmetadata: {{name: signed, namespace: iot}}\nspec:\n  secretName: signed-pair\n  dnsNames: [a.example.com]\n  issuer: {{ca: {{secretRef: my-ca}}}}\n");
        let plain = format!("{HEAD}kind: Certificate\nmetadata: {{name: plain, namespace: iot}}\nspec:\n  dnsNames: [b.example.com]\n  issuer: {{selfSigned: {{}}}}\n");
        let elsewhere = format!("{HEAD}kind: MqttUser\nmetadata: {{name: other, namespace: lab}}\nspec:\n  brokerRef: home\n  passwordSecretRef: {{name: lab-password, key: password}}\n");
        let res = resources(&[&broker, &user, &bridge, &ca, &plain, &elsewhere]);
        let names: Vec<String> = referenced_secrets(&res, "iot").into_iter().collect();
        assert_eq!(
            names,
            [
                "ha-password",
                "my-ca",
                "plain",
                "server-pair",
                "signed-pair",
                "up-ca",
                "up-client",
                "up-pass",
                "up-user"
            ]
        );
        assert_eq!(
            referenced_secrets(&res, "lab")
                .into_iter()
                .collect::<Vec<_>>(),
            ["lab-password"]
        );
        // The same names straight from the watchers' copies: which Secret changes wake
        // the namespace's Brokers.
        let mut snap = Snapshot::default();
        for d in [&broker, &user, &bridge, &ca, &plain, &elsewhere] {
            match obj(d) {
                Object::Broker(b) => snap.brokers.push(Arc::new(*b)),
                Object::MqttUser(u) => snap.users.push(Arc::new(*u)),
                Object::Bridge(b) => snap.bridges.push(Arc::new(*b)),
                Object::Certificate(c) => snap.certificates.push(Arc::new(*c)),
                Object::Secret(_) => unreachable!(),
            }
        }
        assert_eq!(
            named_secrets(&snap, "iot").into_iter().collect::<Vec<_>>(),
            names
        );
        assert_eq!(
            named_secrets(&snap, "lab").into_iter().collect::<Vec<_>>(),
            ["lab-password"]
        );
        assert!(
            !named_secrets(&snap, "iot").contains("home-token-x2k9q"),
            "a ServiceAccount's token Secret is named by nothing"
        );
    }

    #[test]
    fn acme_solver_credentials_are_read() {
        let cert = format!("{HEAD}kind: Certificate\nmetadata: {{name: web, namespace: iot}}\nspec:\n  dnsNames: [mqtt.example.com]\n  issuer:\n    acme:\n      server: https://acme.example/dir\n      email: me@example.com\n      solver: {{dns01: {{cloudflare: {{apiTokenSecretRef: {{name: cf, key: token}}}}}}}}\n");
        let res = resources(&[&cert]);
        let names: Vec<String> = referenced_secrets(&res, "iot").into_iter().collect();
        assert_eq!(names, ["cf", "web"]);
    }

    #[test]
    fn a_secrets_version_comes_from_the_metadata_watch_of_its_own_namespace() {
        let meta = |ns: &str, name: &str, rv: &str| {
            Arc::new(PartialObjectMeta::<Secret> {
                types: None,
                metadata: kube::api::ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(ns.into()),
                    resource_version: Some(rv.into()),
                    ..Default::default()
                },
                _phantom: Default::default(),
            })
        };
        let snap = Snapshot {
            secrets: vec![meta("iot", "ha", "7"), meta("lab", "ha", "9")],
            ..Default::default()
        };
        assert_eq!(secret_version(&snap, "iot", "ha").as_deref(), Some("7"));
        assert_eq!(secret_version(&snap, "iot", "missing"), None);
    }

    /// A view stays good while its objects and the Secrets it read stay as they were:
    /// a write to a Secret nothing names (a broker's bundle) keeps it; a change to a
    /// Secret it read, or one it found missing appearing, does not.
    #[test]
    fn a_view_is_stale_only_when_what_it_read_changed() {
        let meta = |name: &str, rv: &str| {
            Arc::new(PartialObjectMeta::<Secret> {
                types: None,
                metadata: kube::api::ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some("iot".into()),
                    resource_version: Some(rv.into()),
                    ..Default::default()
                },
                _phantom: Default::default(),
            })
        };
        let user: MqttUser = serde_yaml::from_str(&format!(
            "{HEAD}kind: MqttUser\nmetadata: {{name: ha, namespace: iot, generation: 1}}\nspec:\n  brokerRef: home\n  passwordSecretRef: {{name: ha-password, key: password}}\n"
        ))
        .unwrap();
        let snap = |secrets: Vec<Arc<PartialObjectMeta<Secret>>>| Snapshot {
            users: vec![Arc::new(user.clone())],
            secrets,
            ..Default::default()
        };
        let read = vec![
            ("ha-password".to_string(), Some("7".to_string())),
            ("ha-ca".to_string(), None),
        ];
        let before = snap(vec![
            meta("ha-password", "7"),
            meta("edgemq-home-bundle", "1"),
        ]);
        assert!(secrets_unchanged(&before, "iot", &read));
        let bundle_written = snap(vec![
            meta("ha-password", "7"),
            meta("edgemq-home-bundle", "2"),
        ]);
        assert!(secrets_unchanged(&bundle_written, "iot", &read));
        assert_eq!(
            fingerprint(&before, "iot"),
            fingerprint(&bundle_written, "iot")
        );
        let password_changed = snap(vec![meta("ha-password", "8")]);
        assert!(!secrets_unchanged(&password_changed, "iot", &read));
        let ca_appeared = snap(vec![meta("ha-password", "7"), meta("ha-ca", "1")]);
        assert!(!secrets_unchanged(&ca_appeared, "iot", &read));
        let password_deleted = snap(vec![]);
        assert!(!secrets_unchanged(&password_deleted, "iot", &read));
        let mut edited = user.clone();
        edited.metadata.generation = Some(2);
        let user_edited = Snapshot {
            users: vec![Arc::new(edited)],
            ..before.clone()
        };
        assert_ne!(
            fingerprint(&before, "iot"),
            fingerprint(&user_edited, "iot")
        );
    }
}
