//! Loading and validation: YAML documents → typed, cross-checked [`Resources`].
//!
//! ```text
//!  folder(s) of *.yaml ──► parse (per document: syntax, kind, fields, types)
//!                               │ file:line of every mistake
//!  Kubernetes watchers ──►  Resources::apply / delete
//!                               │
//!                               ▼
//!                          validate (schema checks, references, conflicts)
//! ```
//!
//! The folder loader and the Kubernetes watchers feed the same index, so the plan never
//! knows where an object came from. Every mistake is collected, not just the first, and
//! names the object and, for files, `file:line`:
//!
//! ```text
//! home/users.yaml:12: MqttUser/alice: spec: unknown field `pasword`, expected one of ...
//! ```

mod effective;
mod locate;
mod parse;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;

use crate::api::{Bridge, Broker, Certificate, MqttUser};

pub use effective::{effective, Effective, Held};
pub use locate::Seg;
pub use validate::{filter_error, warnings, DEFAULT_NAMESPACE};

/// Reads every `*.yaml` / `*.yml` file below `config_dir` (recursively, in sorted
/// order, skipping hidden files and folders) and, when given, the Secret manifests
/// below `secrets_dir`, then validates the whole set.
///
/// Returns every mistake found, each with `file:line` and the object it concerns.
pub fn load(config_dir: &Path, secrets_dir: Option<&Path>) -> Result<Resources, LoadErrors> {
    let folder = read_folder(config_dir, secrets_dir);
    if folder.errors.is_empty() {
        Ok(folder.res)
    } else {
        Err(LoadErrors::new(folder.errors))
    }
}

/// A folder as read: every object that could be read, and every mistake.
#[derive(Clone, Debug, Default)]
pub struct Folder {
    /// The objects that were read without a mistake of their own in the file.
    pub res: Resources,
    /// Every mistake, sorted by file and line.
    pub errors: Vec<LoadError>,
    /// A folder or file could not be read at all (not a mistake in it): nothing can be
    /// said about what it holds.
    pub unreadable: bool,
}

/// Reads and checks a folder as [`load`] does, but keeps what was read when there are
/// mistakes, so each object can be judged on its own (see [`effective`]).
pub fn read_folder(config_dir: &Path, secrets_dir: Option<&Path>) -> Folder {
    let mut loader = parse::Loader::default();
    loader.read_root(config_dir, parse::RootKind::Config);
    if let Some(dir) = secrets_dir {
        loader.read_root(dir, parse::RootKind::Secrets);
    }
    let unreadable = loader.io_failed();
    let (res, mut errors, broken) = loader.finish();
    errors.extend(validate::validate(&res, &broken));
    errors.extend(validate::shared_host_ports(&res));
    Folder {
        res,
        errors: LoadErrors::new(errors).into_vec(),
        unreadable,
    }
}

/// The mistakes of a set of objects from a folder: [`Resources::validate`] plus the
/// check that Brokers sharing the host do not share a port.
pub fn check_folder(res: &Resources) -> Vec<LoadError> {
    let mut errors = validate::validate(res, &Default::default());
    errors.extend(validate::shared_host_ports(res));
    errors
}

/// The mistakes of a set of objects from one namespace of a cluster (each Broker has
/// a pod of its own, so ports do not clash across Brokers).
pub fn check_namespace(res: &Resources) -> Vec<LoadError> {
    validate::validate(res, &Default::default())
}

/// The kinds the loader reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `edgemq.io/v1alpha1` Broker.
    Broker,
    /// `edgemq.io/v1alpha1` MqttUser.
    MqttUser,
    /// `edgemq.io/v1alpha1` Bridge.
    Bridge,
    /// `edgemq.io/v1alpha1` Certificate.
    Certificate,
    /// core `v1` Secret.
    Secret,
}

impl Kind {
    /// Every kind, in the order objects are reported.
    pub const ALL: [Kind; 5] = [
        Kind::Broker,
        Kind::MqttUser,
        Kind::Bridge,
        Kind::Certificate,
        Kind::Secret,
    ];

    /// The kind as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Broker => "Broker",
            Kind::MqttUser => "MqttUser",
            Kind::Bridge => "Bridge",
            Kind::Certificate => "Certificate",
            Kind::Secret => "Secret",
        }
    }

    /// The `apiVersion` this kind is read with.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Secret => "v1",
            _ => crate::api::API_VERSION,
        }
    }

    /// The kind named `s`, if the loader reads it.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A place in a file: the path as the folder was given plus the path inside it, and a
/// 1-based line.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceLocation {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Identity and origin of a loaded object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    /// The kind.
    pub kind: Kind,
    /// Namespace; `default` when the manifest names none.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.generation`, when known (objects from the Kubernetes API).
    pub generation: Option<i64>,
    /// Where the object's YAML document starts, for objects read from files.
    pub location: Option<SourceLocation>,
    /// The document's text, to find the line of a field inside it.
    text: Option<Arc<str>>,
}

impl ObjectRef {
    /// An object that did not come from a file (for example from the Kubernetes API).
    pub fn new(kind: Kind, namespace: &str, name: &str) -> ObjectRef {
        ObjectRef {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
            generation: None,
            location: None,
            text: None,
        }
    }

    /// Kind, namespace and name: what identifies the object.
    pub fn key(&self) -> ObjectKey {
        (self.kind, self.namespace.clone(), self.name.clone())
    }

    /// `Kind/name`, as errors name the object.
    pub fn display_name(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }

    /// `file:line` for objects read from files, else `Kind/namespace/name`.
    pub fn origin(&self) -> String {
        match &self.location {
            Some(l) => l.to_string(),
            None => format!("{}/{}/{}", self.kind, self.namespace, self.name),
        }
    }

    /// The location of a field of this object (or of its nearest enclosing field that
    /// exists), falling back to the document start.
    pub fn field_location(&self, path: &[Seg<'_>]) -> Option<SourceLocation> {
        let start = self.location.as_ref()?;
        let line = self
            .text
            .as_deref()
            .and_then(|t| locate::line_of(t, path))
            .map(|l| start.line + l - 1)
            .unwrap_or(start.line);
        Some(SourceLocation {
            file: start.file.clone(),
            line,
        })
    }

    /// An error about this object, located at `path` inside it.
    pub fn error_at(&self, path: &[Seg<'_>], message: impl Into<String>) -> LoadError {
        LoadError {
            location: self.field_location(path),
            object: Some(self.display_name()),
            subject: Some(self.key()),
            message: message.into(),
        }
    }
}

/// A loaded object and where it came from. Dereferences to its [`ObjectRef`].
#[derive(Clone, Debug)]
pub struct Loaded<T> {
    /// Identity and origin.
    pub meta: ObjectRef,
    /// The object, with `metadata.namespace` filled in.
    pub object: T,
}

impl<T> std::ops::Deref for Loaded<T> {
    type Target = ObjectRef;
    fn deref(&self) -> &ObjectRef {
        &self.meta
    }
}

/// One object of any kind the loader reads.
#[derive(Clone, Debug)]
pub enum Object {
    /// A Broker.
    Broker(Box<Broker>),
    /// An MqttUser.
    MqttUser(Box<MqttUser>),
    /// A Bridge.
    Bridge(Box<Bridge>),
    /// A Certificate.
    Certificate(Box<Certificate>),
    /// A core v1 Secret.
    Secret(Box<Secret>),
}

impl Object {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Broker(_) => Kind::Broker,
            Object::MqttUser(_) => Kind::MqttUser,
            Object::Bridge(_) => Kind::Bridge,
            Object::Certificate(_) => Kind::Certificate,
            Object::Secret(_) => Kind::Secret,
        }
    }

    fn metadata_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Object::Broker(o) => &mut o.metadata,
            Object::MqttUser(o) => &mut o.metadata,
            Object::Bridge(o) => &mut o.metadata,
            Object::Certificate(o) => &mut o.metadata,
            Object::Secret(o) => &mut o.metadata,
        }
    }
}

/// `(namespace, name)`, the key of every object map.
pub type Key = (String, String);

/// `(kind, namespace, name)`: one object of any kind.
pub type ObjectKey = (Kind, String, String);

fn key(ns: &str, name: &str) -> Key {
    (ns.to_string(), name.to_string())
}

/// Every loaded object, by kind and `(namespace, name)`. Fed by the folder loader or by
/// Kubernetes watchers through [`Resources::apply`] and [`Resources::delete`].
#[derive(Clone, Debug, Default)]
pub struct Resources {
    brokers: BTreeMap<Key, Loaded<Broker>>,
    users: BTreeMap<Key, Loaded<MqttUser>>,
    bridges: BTreeMap<Key, Loaded<Bridge>>,
    certificates: BTreeMap<Key, Loaded<Certificate>>,
    secrets: BTreeMap<Key, Loaded<Secret>>,
}

impl Resources {
    /// Adds or replaces an object. A missing namespace becomes `default`; a missing
    /// name becomes empty (the loader refuses such objects before they get here).
    /// Returns the identity of the object it replaced, if any.
    pub fn apply(
        &mut self,
        mut obj: Object,
        location: Option<SourceLocation>,
    ) -> Option<ObjectRef> {
        let meta = obj_ref(&mut obj, location, None);
        let k = key(&meta.namespace, &meta.name);
        self.insert(k, obj, meta)
    }

    pub(crate) fn insert_parsed(
        &mut self,
        mut obj: Object,
        location: SourceLocation,
        text: Arc<str>,
    ) -> Option<ObjectRef> {
        let meta = obj_ref(&mut obj, Some(location), Some(text));
        let k = key(&meta.namespace, &meta.name);
        self.insert(k, obj, meta)
    }

    fn insert(&mut self, k: Key, obj: Object, meta: ObjectRef) -> Option<ObjectRef> {
        fn put<T>(
            map: &mut BTreeMap<Key, Loaded<T>>,
            k: Key,
            object: T,
            meta: ObjectRef,
        ) -> Option<ObjectRef> {
            map.insert(k, Loaded { meta, object }).map(|l| l.meta)
        }
        match obj {
            Object::Broker(o) => put(&mut self.brokers, k, *o, meta),
            Object::MqttUser(o) => put(&mut self.users, k, *o, meta),
            Object::Bridge(o) => put(&mut self.bridges, k, *o, meta),
            Object::Certificate(o) => put(&mut self.certificates, k, *o, meta),
            Object::Secret(o) => put(&mut self.secrets, k, *o, meta),
        }
    }

    /// Removes an object; returns whether it was there.
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) -> bool {
        let k = key(namespace, name);
        match kind {
            Kind::Broker => self.brokers.remove(&k).is_some(),
            Kind::MqttUser => self.users.remove(&k).is_some(),
            Kind::Bridge => self.bridges.remove(&k).is_some(),
            Kind::Certificate => self.certificates.remove(&k).is_some(),
            Kind::Secret => self.secrets.remove(&k).is_some(),
        }
    }

    /// Copies object `k` (with its origin) from `other` into this index, replacing
    /// what is here; returns whether `other` had it.
    pub fn copy_from(&mut self, other: &Resources, k: &ObjectKey) -> bool {
        fn copy<T: Clone>(
            to: &mut BTreeMap<Key, Loaded<T>>,
            from: &BTreeMap<Key, Loaded<T>>,
            k: Key,
        ) -> bool {
            match from.get(&k) {
                Some(l) => {
                    to.insert(k, l.clone());
                    true
                }
                None => false,
            }
        }
        let key = key(&k.1, &k.2);
        match k.0 {
            Kind::Broker => copy(&mut self.brokers, &other.brokers, key),
            Kind::MqttUser => copy(&mut self.users, &other.users, key),
            Kind::Bridge => copy(&mut self.bridges, &other.bridges, key),
            Kind::Certificate => copy(&mut self.certificates, &other.certificates, key),
            Kind::Secret => copy(&mut self.secrets, &other.secrets, key),
        }
    }

    /// `metadata.uid` of an object, when it has one (objects from the Kubernetes API).
    pub(crate) fn uid(&self, k: &ObjectKey) -> Option<&str> {
        let key = key(&k.1, &k.2);
        match k.0 {
            Kind::Broker => self.brokers.get(&key)?.object.metadata.uid.as_deref(),
            Kind::MqttUser => self.users.get(&key)?.object.metadata.uid.as_deref(),
            Kind::Bridge => self.bridges.get(&key)?.object.metadata.uid.as_deref(),
            Kind::Certificate => self.certificates.get(&key)?.object.metadata.uid.as_deref(),
            Kind::Secret => self.secrets.get(&key)?.object.metadata.uid.as_deref(),
        }
    }

    /// The key of every object, in kind order.
    pub fn keys(&self) -> Vec<ObjectKey> {
        fn ks<T>(kind: Kind, m: &BTreeMap<Key, Loaded<T>>) -> impl Iterator<Item = ObjectKey> + '_ {
            m.keys().map(move |(ns, n)| (kind, ns.clone(), n.clone()))
        }
        ks(Kind::Broker, &self.brokers)
            .chain(ks(Kind::MqttUser, &self.users))
            .chain(ks(Kind::Bridge, &self.bridges))
            .chain(ks(Kind::Certificate, &self.certificates))
            .chain(ks(Kind::Secret, &self.secrets))
            .collect()
    }

    /// The identity of an object, if present.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&ObjectRef> {
        let k = key(namespace, name);
        match kind {
            Kind::Broker => self.brokers.get(&k).map(|l| &l.meta),
            Kind::MqttUser => self.users.get(&k).map(|l| &l.meta),
            Kind::Bridge => self.bridges.get(&k).map(|l| &l.meta),
            Kind::Certificate => self.certificates.get(&k).map(|l| &l.meta),
            Kind::Secret => self.secrets.get(&k).map(|l| &l.meta),
        }
    }

    /// Checks everything a single object's schema cannot: references between objects,
    /// duplicate usernames, port clashes inside a Broker, ACL filters, password hashes.
    /// (The folder loader runs this, plus the check that Brokers sharing the host do
    /// not share a port.)
    pub fn validate(&self) -> Result<(), LoadErrors> {
        let errors = validate::validate(self, &Default::default());
        if errors.is_empty() {
            Ok(())
        } else {
            Err(LoadErrors::new(errors))
        }
    }

    /// Brokers, sorted by namespace and name.
    pub fn brokers(&self) -> impl Iterator<Item = &Loaded<Broker>> {
        self.brokers.values()
    }
    /// MqttUsers, sorted by namespace and name.
    pub fn users(&self) -> impl Iterator<Item = &Loaded<MqttUser>> {
        self.users.values()
    }
    /// Bridges, sorted by namespace and name.
    pub fn bridges(&self) -> impl Iterator<Item = &Loaded<Bridge>> {
        self.bridges.values()
    }
    /// Certificates, sorted by namespace and name.
    pub fn certificates(&self) -> impl Iterator<Item = &Loaded<Certificate>> {
        self.certificates.values()
    }
    /// Secrets, sorted by namespace and name.
    pub fn secrets(&self) -> impl Iterator<Item = &Loaded<Secret>> {
        self.secrets.values()
    }

    /// A Broker by namespace and name.
    pub fn broker(&self, namespace: &str, name: &str) -> Option<&Loaded<Broker>> {
        self.brokers.get(&key(namespace, name))
    }
    /// An MqttUser by namespace and name.
    pub fn user(&self, namespace: &str, name: &str) -> Option<&Loaded<MqttUser>> {
        self.users.get(&key(namespace, name))
    }
    /// A Bridge by namespace and name.
    pub fn bridge(&self, namespace: &str, name: &str) -> Option<&Loaded<Bridge>> {
        self.bridges.get(&key(namespace, name))
    }
    /// A Certificate by namespace and name.
    pub fn certificate(&self, namespace: &str, name: &str) -> Option<&Certificate> {
        self.certificates
            .get(&key(namespace, name))
            .map(|l| &l.object)
    }
    /// A Secret by namespace and name.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<&Secret> {
        self.secrets.get(&key(namespace, name)).map(|l| &l.object)
    }

    /// The MqttUsers of one Broker (same namespace, `brokerRef` = its name), sorted.
    pub fn users_of<'a>(
        &'a self,
        namespace: &'a str,
        broker: &'a str,
    ) -> impl Iterator<Item = &'a Loaded<MqttUser>> + 'a {
        self.users
            .values()
            .filter(move |u| u.namespace == namespace && u.object.spec.broker_ref == broker)
    }

    /// The Bridges of one Broker, sorted.
    pub fn bridges_of<'a>(
        &'a self,
        namespace: &'a str,
        broker: &'a str,
    ) -> impl Iterator<Item = &'a Loaded<Bridge>> + 'a {
        self.bridges
            .values()
            .filter(move |b| b.namespace == namespace && b.object.spec.broker_ref == broker)
    }

    /// Every value of every Secret of `namespace`, by (Secret name, key); `stringData`
    /// wins over `data`, as the Kubernetes API merges them.
    pub fn secret_values(&self, namespace: &str) -> BTreeMap<(String, String), Vec<u8>> {
        let mut out = BTreeMap::new();
        for s in self.secrets().filter(|s| s.meta.namespace == namespace) {
            let name = &s.meta.name;
            for (k, v) in s.object.data.iter().flatten() {
                out.insert((name.clone(), k.clone()), v.0.clone());
            }
            for (k, v) in s.object.string_data.iter().flatten() {
                out.insert((name.clone(), k.clone()), v.as_bytes().to_vec());
            }
        }
        out
    }

    /// The value of one key of a Secret in `namespace`: `stringData` wins over `data`,
    /// as the Kubernetes API merges them. `None` when the Secret or key is missing; a
    /// Secret in another namespace never resolves.
    pub fn secret_value(&self, namespace: &str, name: &str, key: &str) -> Option<Vec<u8>> {
        let s = self.secret(namespace, name)?;
        if let Some(v) = s.string_data.as_ref().and_then(|d| d.get(key)) {
            return Some(v.as_bytes().to_vec());
        }
        s.data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
    }
}

fn obj_ref(
    obj: &mut Object,
    location: Option<SourceLocation>,
    text: Option<Arc<str>>,
) -> ObjectRef {
    let kind = obj.kind();
    let meta = obj.metadata_mut();
    let namespace = meta
        .namespace
        .get_or_insert_with(|| DEFAULT_NAMESPACE.to_string())
        .clone();
    ObjectRef {
        kind,
        namespace,
        name: meta.name.clone().unwrap_or_default(),
        generation: meta.generation,
        location,
        text,
    }
}

/// One mistake in the resources.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct LoadError {
    /// Where, for objects read from files.
    pub location: Option<SourceLocation>,
    /// `Kind/name` of the object, when known.
    pub object: Option<String>,
    /// Kind, namespace and name of the object the mistake belongs to, when it is one
    /// the loader reads: which object keeps its last good version (see [`effective`]).
    pub subject: Option<ObjectKey>,
    /// What is wrong.
    pub message: String,
}

impl LoadError {
    fn render(&self) -> String {
        let mut s = String::new();
        if let Some(l) = &self.location {
            s.push_str(&format!("{l}: "));
        }
        if let Some(o) = &self.object {
            s.push_str(&format!("{o}: "));
        }
        s.push_str(&self.message);
        s
    }
}

/// Every mistake found, sorted by file and line. Displays one per line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct LoadErrors(Vec<LoadError>);

impl LoadErrors {
    fn new(mut errors: Vec<LoadError>) -> LoadErrors {
        errors.sort_by(|a, b| match (&a.location, &b.location) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
        errors.dedup();
        LoadErrors(errors)
    }

    /// The errors, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, LoadError> {
        self.0.iter()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for an error returned by [`load`].
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The errors, owned.
    pub fn into_vec(self) -> Vec<LoadError> {
        self.0
    }
}

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a LoadErrors {
    type Item = &'a LoadError;
    type IntoIter = std::slice::Iter<'a, LoadError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::testing::{fixture, standalone_example};
    use super::*;

    /// `(file name, line, object)` of every `# expect-error: Kind/name` marker
    /// (`-` for no object).
    fn expected_errors(dir: &Path) -> Vec<(String, usize, Option<String>)> {
        let mut out = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("fixture folder")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).expect("fixture file");
            for (i, line) in text.lines().enumerate() {
                if let Some((_, obj)) = line.split_once("# expect-error: ") {
                    let obj = obj.trim();
                    let name = f.file_name().expect("name").to_string_lossy().into_owned();
                    out.push((name, i + 1, (obj != "-").then(|| obj.to_string())));
                }
            }
        }
        out
    }

    #[test]
    fn every_seeded_mistake_is_reported_with_its_file_line_and_object() {
        let dir = fixture("bad");
        let errors = load(&dir, None).expect_err("the bad folder must not load");
        let mut got: Vec<(String, usize, Option<String>)> = errors
            .iter()
            .map(|e| {
                let loc = e
                    .location
                    .as_ref()
                    .expect("every error in a folder has a location");
                let name = loc
                    .file
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                (name, loc.line, e.object.clone())
            })
            .collect();
        got.sort();
        let mut want = expected_errors(&dir);
        want.sort();
        assert_eq!(got, want, "reported:\n{errors}");
    }

    #[test]
    fn errors_display_as_file_line_object_message() {
        let errors = load(&fixture("bad"), None).expect_err("bad folder");
        let text = errors.to_string();
        let users = fixture("bad").join("users.yaml");
        let line = format!(
            "{}:6: MqttUser/alice: spec: unknown field `pasword`, expected one of",
            users.display()
        );
        assert!(text.contains(&line), "{text}");
    }

    #[test]
    fn the_standalone_example_loads() {
        let res = load(&standalone_example(), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(res.brokers().count(), 1);
        assert_eq!(res.users_of("default", "home").count(), 2);
        assert_eq!(
            res.secret_value("default", "homeassistant-mqtt", "password")
                .as_deref(),
            Some(&b"change-me-please"[..])
        );
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write");
    }

    const BROKER: &str = "apiVersion: edgemq.io/v1alpha1\nkind: Broker\nmetadata: {name: home, namespace: iot}\nspec:\n  listeners: [{name: lan, port: 1883}]\n";
    const USER: &str = "apiVersion: edgemq.io/v1alpha1\nkind: MqttUser\nmetadata: {name: ha, namespace: iot}\nspec:\n  brokerRef: home\n  passwordSecretRef: {name: ha, key: password}\n";

    #[test]
    fn secrets_come_from_the_secrets_folder_as_data_or_string_data() {
        let cfg = tempfile::tempdir().expect("tempdir");
        let sec = tempfile::tempdir().expect("tempdir");
        write(cfg.path(), "all.yaml", &format!("{BROKER}---\n{USER}"));
        assert!(load(cfg.path(), None).is_err());
        // base64 of "pw"
        write(sec.path(), "ha.yml", "apiVersion: v1\nkind: Secret\nmetadata: {name: ha, namespace: iot}\ndata: {password: cHc=}\n");
        let res = load(cfg.path(), Some(sec.path())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            res.secret_value("iot", "ha", "password").as_deref(),
            Some(&b"pw"[..])
        );
    }

    #[test]
    fn a_secret_in_another_namespace_does_not_resolve() {
        let cfg = tempfile::tempdir().expect("tempdir");
        write(cfg.path(), "all.yaml", &format!("{BROKER}---\n{USER}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: ha}}\nstringData: {{password: pw}}\n"));
        let e = load(cfg.path(), None)
            .expect_err("must not resolve")
            .to_string();
        assert!(
            e.contains("Secret `ha` not found in namespace `iot`"),
            "{e}"
        );
    }

    #[test]
    fn hidden_folders_and_other_files_are_skipped_and_empty_documents_ignored() {
        let cfg = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(cfg.path().join(".git")).expect("mkdir");
        write(&cfg.path().join(".git"), "junk.yaml", "not: [valid");
        write(cfg.path(), "notes.txt", "not: [valid");
        std::fs::create_dir(cfg.path().join("sub")).expect("mkdir");
        write(
            &cfg.path().join("sub"),
            "b.yaml",
            &format!("---\n# nothing\n---\n{BROKER}---\n"),
        );
        let res = load(cfg.path(), None).unwrap_or_else(|e| panic!("{e}"));
        let b = res.broker("iot", "home").expect("broker");
        assert_eq!(b.location.as_ref().map(|l| l.line), Some(3));
    }

    #[test]
    fn a_syntax_error_in_one_document_leaves_the_others_read() {
        let cfg = tempfile::tempdir().expect("tempdir");
        write(
            cfg.path(),
            "a.yaml",
            &format!("{BROKER}---\nkind: [\n---\n{USER}"),
        );
        let errs = load(cfg.path(), None).expect_err("syntax").into_vec();
        assert!(
            errs.iter().any(|e| e.message.starts_with("invalid YAML")),
            "{errs:?}"
        );
        // The user's reference to the missing Secret is still checked.
        assert!(
            errs.iter()
                .any(|e| e.object.as_deref() == Some("MqttUser/ha")),
            "{errs:?}"
        );
    }
}
