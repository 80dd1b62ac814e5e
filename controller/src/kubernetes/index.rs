//! The controller's view of one namespace: the objects its watchers hold, fed into the
//! same [`Resources`] index the folder loader fills, then validated and planned the
//! same way. The core never knows where objects came from.

use k8s_openapi::api::core::v1::Secret;

use crate::api::{Bridge, Broker, Certificate, MqttUser};
use crate::load::{Effective, Held, Kind, LoadError, Object, Resources};

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
    crate::load::check_namespace(res)
}

/// A namespace's index, its validation errors, and what runs.
pub struct View {
    /// The objects, as the loader's index.
    pub res: Resources,
    /// Every validation error of the namespace.
    pub errors: Vec<LoadError>,
    /// What the plan reads: each object with a mistake at its last good version or
    /// left out (see [`crate::load::effective`]); the namespace's next last good set.
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

/// The index of `ns`, with `fresh` (the object a reconcile was called for, newer than
/// the store's copy) in place of the stored one, judged against the namespace's
/// `last_good` set.
pub fn view(snapshot: &Snapshot, ns: &str, fresh: Option<Object>, last_good: &Resources) -> View {
    let mut res = namespace(snapshot, ns);
    if let Some(o) = fresh {
        res.apply(o, None);
    }
    let errors = errors(&res);
    let effective = crate::load::effective(&res, &errors, last_good, crate::load::check_namespace);
    View {
        res,
        errors,
        effective,
    }
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
