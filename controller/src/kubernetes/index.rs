//! The controller's view of one namespace: the objects its watchers hold, fed into the
//! same [`Resources`] index the folder loader fills, then validated and planned the
//! same way. The core never knows where objects came from.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;

use crate::api::{Bridge, Broker, Certificate, MqttUser};
use crate::load::{Kind, LoadError, Object, Resources};

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
    /// Secrets.
    pub secrets: Vec<std::sync::Arc<Secret>>,
}

fn in_ns<K: kube::Resource>(o: &K, ns: &str) -> bool {
    o.meta().namespace.as_deref() == Some(ns) && o.meta().deletion_timestamp.is_none()
}

/// The objects of namespace `ns`, as the loader's index.
pub fn namespace(snapshot: &Snapshot, ns: &str) -> Resources {
    let mut res = Resources::default();
    for b in snapshot.brokers.iter().filter(|o| in_ns(o.as_ref(), ns)) {
        res.apply(Object::Broker(Box::new(without_status(b))), None);
    }
    for u in snapshot.users.iter().filter(|o| in_ns(o.as_ref(), ns)) {
        res.apply(Object::MqttUser(Box::new((**u).clone())), None);
    }
    for b in snapshot.bridges.iter().filter(|o| in_ns(o.as_ref(), ns)) {
        res.apply(Object::Bridge(Box::new((**b).clone())), None);
    }
    for c in snapshot
        .certificates
        .iter()
        .filter(|o| in_ns(o.as_ref(), ns))
    {
        res.apply(Object::Certificate(Box::new((**c).clone())), None);
    }
    for s in snapshot.secrets.iter().filter(|o| in_ns(o.as_ref(), ns)) {
        res.apply(Object::Secret(Box::new((**s).clone())), None);
    }
    res
}

/// A Broker without its status (the plan reads the spec).
pub fn without_status(b: &Broker) -> Broker {
    let mut b = b.clone();
    b.status = None;
    b
}

/// Every validation error of the namespace.
pub fn errors(res: &Resources) -> Vec<LoadError> {
    match res.validate() {
        Ok(()) => Vec::new(),
        Err(e) => e.into_vec(),
    }
}

/// `Kind/name` of every object a Broker's configuration is made of: the Broker, its
/// MqttUsers and Bridges, and the Certificates its listeners and Bridges use.
pub fn parts_of(res: &Resources, ns: &str, broker: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::from([format!("{}/{broker}", Kind::Broker)]);
    for u in res.users_of(ns, broker) {
        out.insert(format!("{}/{}", Kind::MqttUser, u.name));
    }
    let mut certs = BTreeSet::new();
    if let Some(b) = res.broker(ns, broker) {
        for l in &b.object.spec.listeners {
            if let Some(c) = l.tls.as_ref().and_then(|t| t.certificate_ref.clone()) {
                certs.insert(c);
            }
        }
    }
    for b in res.bridges_of(ns, broker) {
        out.insert(format!("{}/{}", Kind::Bridge, b.name));
        let v = serde_json::to_value(&b.object.spec).unwrap_or_default();
        collect_certificate_refs(&v, &mut certs);
    }
    for c in certs {
        out.insert(format!("{}/{c}", Kind::Certificate));
    }
    out
}

/// Names in every `certificateRef`-like field (`certificateRef`, `clientCertificateRef`,
/// `caCertificateRef`, `awsIotEndpoint.certificateRef`) of a spec.
fn collect_certificate_refs(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k.ends_with("ertificateRef") {
                    if let Some(s) = v.as_str() {
                        out.insert(s.to_string());
                    }
                }
                collect_certificate_refs(v, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_certificate_refs(v, out)),
        _ => {}
    }
}

/// The errors among `errors` that concern one of `parts`.
pub fn concerning<'a>(errors: &'a [LoadError], parts: &BTreeSet<String>) -> Vec<&'a LoadError> {
    errors
        .iter()
        .filter(|e| e.object.as_ref().is_some_and(|o| parts.contains(o)))
        .collect()
}

/// A namespace's index and its validation errors.
pub struct View {
    /// The objects, as the loader's index.
    pub res: Resources,
    /// Every validation error of the namespace.
    pub errors: Vec<LoadError>,
}

/// The index of `ns`, with `fresh` (the object a reconcile was called for, newer than
/// the store's copy) in place of the stored one.
pub fn view(snapshot: &Snapshot, ns: &str, fresh: Option<Object>) -> View {
    let mut res = namespace(snapshot, ns);
    if let Some(o) = fresh {
        res.apply(o, None);
    }
    let errors = errors(&res);
    View { res, errors }
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
    content_version(o).hash(&mut h);
    o.meta().deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

/// A value that changes whenever an object of `ns` is added, changed or removed (the
/// key of a cached [`View`]).
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
        sum(&s.secrets, ns, 5),
    ];
    parts.iter().fold(0u64, |acc, (h, n)| {
        acc.rotate_left(7).wrapping_add(*h).wrapping_add(*n)
    })
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
