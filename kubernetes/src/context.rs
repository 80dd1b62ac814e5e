//! What every reconciler shares: the client, the stores the watchers fill, the Events
//! recorder, metrics, and the two writes every reconcile makes — server-side apply of an
//! object (skipped when nothing changed) and a status patch (only when it differs).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, GetParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use super::desired::Settings;
use super::index::{self, Snapshot, View};
use super::ownership;
use super::status::shows;
use super::{Error, Metrics, FIELD_MANAGER};
use edgemq::api::{Bridge, Broker, Certificate, MqttUser};
use edgemq::status::kinds::{reason, with_ready, Conditions};
use std::sync::Arc;

/// Ready=False reasons that only say work is under way (Events of type Normal).
const PROGRESS_REASONS: &[&str] = &[
    reason::POD_NOT_READY,
    reason::APPLYING,
    reason::PENDING,
    "Issuing",
    "Renewing",
    "Provisioning",
];

/// Shared by every reconcile.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Image and pull policy of broker pods.
    pub settings: Settings,
    /// Events recorder.
    pub recorder: Recorder,
    /// Reconcile counters and durations.
    pub metrics: Arc<Metrics>,
    pub(super) stores: Stores,
    /// Per applied object: hash of what was applied and the resourceVersion it gave,
    /// so an unchanged object is not applied again.
    pub(super) applied: Mutex<HashMap<String, (String, String)>>,
    /// The last index and validation of each namespace, by the fingerprint of its
    /// edgemq objects and the versions of the Secrets it read: reconciles of a
    /// namespace where nothing it reads changed share one.
    pub(super) views: Mutex<HashMap<String, Cached>>,
    /// Per namespace, the objects that ran last time, each at its last good version:
    /// what an object with a mistake falls back to. Kept in memory: after a restart an
    /// object with a mistake stays out until fixed (fail closed), except a Broker, whose
    /// last good version its bundle Secret keeps (see [`super::recover`]).
    pub(super) last_good: tokio::sync::Mutex<HashMap<String, edgemq::load::Resources>>,
    /// The background ACME issuers.
    pub(super) acme: super::tasks::Issuers,
    /// The background fleet provisioning tasks.
    pub(super) fleet: super::tasks::Provisioners,
    /// Whether every store has listed once.
    pub(super) synced: Synced,
    /// Values of the Secrets some edgemq object names, read by name, by
    /// (namespace, name): no other Secret's value is ever held.
    pub(super) secret_values: Mutex<HashMap<(String, String), Arc<Secret>>>,
    /// Per namespace: the Secrets its edgemq objects name, by the
    /// [`index::fingerprint`] they were read at (see [`Context::names_secret`]).
    pub(super) named: Mutex<HashMap<String, Named>>,
}

/// The Secrets a namespace's edgemq objects name, and the [`index::fingerprint`] of
/// those objects they were read at.
pub(super) type Named = (u64, Arc<BTreeSet<String>>);

/// A namespace's last view: the [`index::fingerprint`] of its edgemq objects, the
/// Secrets it read (see [`SecretsRead`]), and the view.
pub(super) type Cached = (u64, SecretsRead, Arc<View>);

/// The Secrets a view read, by name, each at the version the metadata watch showed
/// (`None`: it did not exist). A view stays good while these stay as they were; a write
/// to any other Secret (a broker's bundle, say) does not make it stale.
pub(super) type SecretsRead = Vec<(String, Option<String>)>;

/// Whether every store has listed once, for any number of waiters.
///
/// A reflector store's `wait_until_ready` keeps the waker of only the last task that
/// polled it, and each controller's runner already waits on its own kind's store that
/// way; a second waiter on the same store would take the wake-up from it (or lose
/// it). So the stores are never waited on here: each watch says when it has listed
/// (`Listed`, set by `controller::reflect` on the watch's first complete list), one
/// task waits for all of them, and everyone else waits on this channel, which wakes
/// them all.
#[derive(Clone)]
pub struct Synced(tokio::sync::watch::Receiver<Option<Result<(), String>>>);

/// A watch's "listed once" signal, by kind.
pub(super) type Listed = (&'static str, tokio::sync::watch::Receiver<bool>);

impl Synced {
    /// Starts the one task that waits for every watch in `listed`; `on_ready` runs once
    /// they have all listed.
    pub(super) fn spawn(listed: Vec<Listed>, on_ready: impl FnOnce() + Send + 'static) -> Synced {
        let (tx, rx) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            let mut r = Ok(());
            for (kind, mut rx) in listed {
                if rx.wait_for(|listed| *listed).await.is_err() {
                    r = Err(format!("{kind}: the watch ended before its first list"));
                    break;
                }
            }
            match &r {
                Ok(()) => on_ready(),
                Err(e) => tracing::error!(error = %e, "watches did not start"),
            }
            tx.send_replace(Some(r));
        });
        Synced(rx)
    }

    /// Waits until every store has listed once.
    pub(super) async fn wait(&self) -> Result<(), Error> {
        let mut rx = self.0.clone();
        let r = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::Watch("the watches stopped".into()))?
            .clone();
        match r {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(Error::Watch(e)),
            None => Err(Error::Watch("the watches stopped".into())),
        }
    }
}

/// The watched objects.
#[derive(Clone)]
pub struct Stores {
    /// Brokers.
    pub brokers: Store<Broker>,
    /// MqttUsers.
    pub users: Store<MqttUser>,
    /// Bridges.
    pub bridges: Store<Bridge>,
    /// Certificates.
    pub certificates: Store<Certificate>,
    /// Secrets, metadata only (names and versions; values are read by name).
    pub secrets: Store<PartialObjectMeta<Secret>>,
}

impl Stores {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            brokers: self.brokers.state(),
            users: self.users.state(),
            bridges: self.bridges.state(),
            certificates: self.certificates.state(),
            secrets: self.secrets.state(),
        }
    }
}

pub(super) fn now_rfc3339() -> String {
    edgemq::certs::rfc3339(time::OffsetDateTime::now_utc())
}

fn sha(v: &impl Serialize) -> String {
    use sha2::Digest;
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Context {
    /// Waits until every watcher has listed once.
    pub(super) async fn ready(&self) -> Result<(), Error> {
        self.synced.wait().await
    }

    /// The index and validation errors of `ns`, with `fresh` (the object being
    /// reconciled, `kind` `name` at `version`, see [`index::content_version`]) in it. Validation runs once per change
    /// of the namespace, not once per reconcile.
    pub(super) async fn view(
        &self,
        ns: &str,
        kind: edgemq::load::Kind,
        name: &str,
        version: Option<String>,
        fresh: edgemq::load::Object,
    ) -> Result<Arc<View>, Error> {
        self.ready().await?;
        let snap = self.snapshot();
        // One view at a time per controller: each is judged against the last good set
        // the one before it left.
        let mut last_good = self.last_good.lock().await;
        let none = edgemq::load::Resources::default();
        // Read in place, never copied here: at 1,000 objects a copy per reconcile cost
        // as much as the index itself.
        let previous = last_good.get(ns).unwrap_or(&none);
        if index::stored_version(&snap, kind, ns, name) != version {
            // The store has not seen this version yet: build it with the fresh copy. It
            // does not advance the last good set: a reconcile's copy may also be older
            // than the store's, and must not bring back what a newer version revoked.
            let (v, _) = self.build(&snap, ns, Some(fresh), previous).await?;
            return Ok(Arc::new(v));
        }
        let fp = index::fingerprint(&snap, ns);
        if let Some((f, read, v)) = self.views.lock().ok().and_then(|m| m.get(ns).cloned()) {
            if f == fp && index::secrets_unchanged(&snap, ns, &read) {
                return Ok(v);
            }
        }
        let (v, read) = self.build(&snap, ns, None, previous).await?;
        let v = Arc::new(v);
        last_good.insert(ns.to_string(), v.effective.res.clone());
        if let Ok(mut m) = self.views.lock() {
            m.insert(ns.to_string(), (fp, read, v.clone()));
        }
        Ok(v)
    }

    /// The view of `ns` (with `fresh` in it) judged against `previous`, its last good
    /// set, to which a Broker with a mistake and no last good version in memory (the
    /// controller restarted) first gets the one its bundle Secret holds (see
    /// [`super::recover`]); with the Secrets it read.
    async fn build(
        &self,
        snap: &Snapshot,
        ns: &str,
        fresh: Option<edgemq::load::Object>,
        previous: &edgemq::load::Resources,
    ) -> Result<(View, SecretsRead), Error> {
        // The rare path below (a Broker to recover) indexes the namespace again rather
        // than every reconcile copying the index in case it does.
        let objects = index::objects(snap, ns, fresh.clone());
        // The Secrets the last good versions name too: an object edited to name a
        // missing Secret falls back to a version that needs the old one.
        let (secrets, read) = self
            .referenced_secrets(snap, &[&objects, previous], ns)
            .await?;
        let res = index::add_secrets(objects, &secrets);
        let errors = index::errors(&res);
        let wanted = super::recover::wanted(&res, &errors, previous);
        if wanted.is_empty() {
            return Ok((index::judge(res, errors, previous), read));
        }
        let previous = {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
            let mut bundles = Vec::new();
            for b in &wanted {
                let name = super::desired::bundle_secret_name(b);
                // Not being able to read it leaves the Broker out, as before a restart
                // could: it must not stop the rest of the namespace.
                match api.get_opt(&name).await {
                    Ok(Some(s)) => bundles.push(s),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(secret = %format!("{ns}/{name}"), error = %e, "could not read a bundle Secret")
                    }
                }
            }
            let seeded = super::recover::seed(&res, &bundles, previous.clone());
            for b in &wanted {
                if seeded.broker(ns, b).is_some() {
                    tracing::info!(broker = %format!("{ns}/{b}"), "recovered the last good version of a Broker with a mistake from its bundle Secret");
                }
            }
            seeded
        };
        let objects = index::objects(snap, ns, fresh);
        // A recovered Broker may name Secrets nothing else does.
        let (secrets, read) = self
            .referenced_secrets(snap, &[&objects, &previous], ns)
            .await?;
        let res = index::add_secrets(objects, &secrets);
        let errors = index::errors(&res);
        Ok((index::judge(res, errors, &previous), read))
    }

    /// The Secrets of `ns` that the objects in `sets` name, each read by name when the
    /// metadata watch shows a version the cache does not hold; Secrets nobody names
    /// any more leave the cache. With them, every name and the version it was read at.
    async fn referenced_secrets(
        &self,
        snap: &Snapshot,
        sets: &[&edgemq::load::Resources],
        ns: &str,
    ) -> Result<(Vec<Arc<Secret>>, SecretsRead), Error> {
        let names: std::collections::BTreeSet<String> = sets
            .iter()
            .flat_map(|res| index::referenced_secrets(res, ns))
            .collect();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let mut out = Vec::new();
        let mut read = Vec::with_capacity(names.len());
        for name in &names {
            let key = (ns.to_string(), name.clone());
            let version = index::secret_version(snap, ns, name);
            read.push((name.clone(), version.clone()));
            let Some(version) = version else {
                self.forget_secret(&key);
                continue;
            };
            let cached = self
                .secret_values
                .lock()
                .ok()
                .and_then(|m| m.get(&key).cloned());
            if let Some(s) = cached.filter(|s| s.resource_version() == Some(version.clone())) {
                out.push(s);
                continue;
            }
            // At least the version the watch showed, from the API server's cache
            // rather than a read of its store.
            match get_opt_with(&api, name, &GetParams::at(&version)).await? {
                Some(mut s) => {
                    s.managed_fields_mut().clear();
                    let s = Arc::new(s);
                    if let Ok(mut m) = self.secret_values.lock() {
                        m.insert(key, s.clone());
                    }
                    out.push(s);
                }
                None => self.forget_secret(&key),
            }
        }
        if let Ok(mut m) = self.secret_values.lock() {
            m.retain(|(n, s), _| n != ns || names.contains(s));
        }
        Ok((out, read))
    }

    /// Whether a change of the Secret `ns/name` concerns the Brokers of `ns`: an edgemq
    /// object there names it, or the namespace's last view read it (an object with a
    /// mistake runs at a last good version that may name a Secret its spec no longer
    /// does). Other Secrets wake nobody: on clusters that still make a token Secret per
    /// ServiceAccount, each new Broker's woke every Broker of its namespace.
    pub(super) fn names_secret(&self, ns: &str, name: &str) -> bool {
        let snap = self.snapshot();
        let fp = index::fingerprint(&snap, ns);
        let named = {
            let mut cache = self.named.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(ns).filter(|(f, _)| *f == fp) {
                Some((_, names)) => names.clone(),
                None => {
                    let names = Arc::new(index::named_secrets(&snap, ns));
                    cache.insert(ns.to_string(), (fp, names.clone()));
                    names
                }
            }
        };
        named.contains(name)
            || self.views.lock().is_ok_and(|m| {
                m.get(ns)
                    .is_some_and(|(_, read, _)| read.iter().any(|(n, _)| n == name))
            })
    }

    fn forget_secret(&self, key: &(String, String)) {
        if let Ok(mut m) = self.secret_values.lock() {
            m.remove(key);
        }
    }

    /// What the watchers hold now.
    pub(super) fn snapshot(&self) -> Snapshot {
        self.stores.snapshot()
    }

    /// The object `obj` would be written over, as the API server's watch cache has it.
    ///
    /// That cache can be a moment behind the store. A read behind our own last write
    /// only costs an apply that changes nothing. A change by someone else reaches the
    /// cache before its watch event wakes the reconcile that puts it back (Services and
    /// Deployments); the kinds not watched are put back by a later reconcile, as
    /// before. An object of the name made by someone else a moment before the read can
    /// be missed by the ownership check, as one made between the read and the apply
    /// always could. Reading the store instead (a quorum read) cost the API server and
    /// its database six reads per Broker reconcile, 13,400 while 100 Brokers converged.
    pub(super) async fn observe<K>(&self, obj: &K) -> Result<Option<K>, Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let name = obj.meta().name.clone().unwrap_or_default();
        let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
        Ok(get_opt_with(&api, &name, &GetParams::any()).await?)
    }

    /// Applies `obj` with server-side apply unless the same content was applied before
    /// and nobody changed the object since; refuses to take over an object of that
    /// name that belongs to someone else ([`Error::Conflict`]). Returns the object as
    /// the server has it.
    pub(super) async fn ensure<K>(&self, obj: &K) -> Result<K, Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let current = self.observe(obj).await?;
        self.ensure_over(obj, current).await
    }

    /// [`Context::ensure`] with `current` already observed.
    pub(super) async fn ensure_over<K>(&self, obj: &K, current: Option<K>) -> Result<K, Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
    {
        check_owned(obj, current.as_ref())?;
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let name = obj.meta().name.clone().unwrap_or_default();
        let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
        let key = format!("{}/{ns}/{name}", K::kind(&()));
        let hash = sha(obj);
        if let Some(current) = current {
            let rv = current.resource_version().unwrap_or_default();
            let cached = self.applied.lock().ok().and_then(|m| m.get(&key).cloned());
            if cached == Some((hash.clone(), rv)) {
                return Ok(current);
            }
        }
        // `force` takes over fields other managers set on an object that is ours
        // (check_owned above): someone's `kubectl edit` of a Broker's Service is put back.
        let out = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(obj),
            )
            .await?;
        if let Ok(mut m) = self.applied.lock() {
            m.insert(key, (hash, out.resource_version().unwrap_or_default()));
        }
        Ok(out)
    }

    pub(super) async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, "could not publish an Event");
        }
    }

    /// Writes `obj`'s Ready condition (`ready`, reason, message) into its typed status
    /// `fields`, through [`Context::write_status`].
    pub(super) async fn set_ready<K, S>(
        &self,
        obj: &K,
        ready: (bool, &str, String),
        fields: S,
    ) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
        S: Conditions,
    {
        let previous = super::status::previous_ready(status_of(obj).as_ref());
        let status = with_ready(
            fields,
            ready,
            obj.meta().generation,
            previous.as_ref(),
            &now_rfc3339(),
        );
        self.write_status(obj, &status).await
    }

    /// The status sink of a cluster, the one way the controller writes status: the
    /// controller's fields of `obj` (typed, `api::*Status`) when they differ from what
    /// it shows, and an Event when Ready's reason changed.
    pub(super) async fn write_status<K, S>(&self, obj: &K, status: &S) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
        S: Serialize,
    {
        let status = serde_json::to_value(status).unwrap_or_default();
        let current = serde_json::to_value(obj)
            .ok()
            .and_then(|v| v.get("status").cloned());
        let after = super::status::previous_ready(Some(&status));
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let name = obj.meta().name.clone().unwrap_or_default();
        if let Some(a) = &after {
            self.metrics
                .resource_ready(&K::kind(&()), &ns, &name, a.status == "True");
        }
        if shows(current.as_ref(), &status) {
            return Ok(());
        }
        let before = super::status::previous_ready(current.as_ref());
        let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
        let patch = json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        self.metrics.status_writes.inc();
        if let Some(a) = after {
            if before.as_ref().map(|b| (&b.status, &b.reason)) != Some((&a.status, &a.reason)) {
                // Waiting is normal progress; a mistake or a failure is a warning.
                let warning = a.status != "True" && !PROGRESS_REASONS.contains(&a.reason.as_str());
                self.event(obj, warning, &a.reason, a.message.clone()).await;
            }
        }
        Ok(())
    }
}

/// Refuses to write `desired` over `current` when `current` belongs to someone else
/// (see [`ownership`]). An empty Secret counts as new: it was made to be filled (for
/// example to hold a Certificate's pair under a name chosen in advance).
pub(super) fn check_owned<K>(desired: &K, current: Option<&K>) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Serialize,
{
    let Some(current) = current else {
        return Ok(());
    };
    let kind = K::kind(&());
    if kind == "Secret" {
        let v = serde_json::to_value(current).unwrap_or_default();
        let empty = |k: &str| {
            v.get(k)
                .and_then(|d| d.as_object())
                .is_none_or(|d| d.is_empty())
        };
        if empty("data") && empty("stringData") {
            return Ok(());
        }
    }
    match ownership::conflict(&kind, current.meta(), desired.meta()) {
        Some(c) => Err(Error::Conflict(c)),
        None => Ok(()),
    }
}

/// The `status` of an object as JSON, if it has one.
pub(super) fn status_of<K: Serialize>(o: &K) -> Option<Value> {
    serde_json::to_value(o)
        .ok()
        .and_then(|v| v.get("status").cloned())
}

/// `Api::get_opt` with the read's `resourceVersion` (kube has `get_with` but no
/// optional form of it).
async fn get_opt_with<K>(api: &Api<K>, name: &str, gp: &GetParams) -> kube::Result<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.get_with(name, gp).await {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_waiter_wakes_once_the_watches_have_listed() {
        let kinds = ["Broker", "MqttUser", "Bridge", "Certificate", "Secret"];
        let (senders, listed): (Vec<_>, Vec<_>) = kinds
            .iter()
            .map(|k| {
                let (tx, rx) = tokio::sync::watch::channel(false);
                (tx, (*k, rx))
            })
            .unzip();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let synced = Synced::spawn(listed, move || {
            let _ = tx.send(());
        });
        // Many tasks wait at once, as reconciles of several controllers do.
        let waiters: Vec<_> = (0..16)
            .map(|_| {
                let s = synced.clone();
                tokio::spawn(async move { s.wait().await.is_ok() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        for tx in &senders {
            tx.send_replace(true);
        }
        for w in waiters {
            let ok = tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("a waiter was never woken")
                .unwrap();
            assert!(ok);
        }
        rx.await.expect("the readiness callback ran");
        assert!(synced.wait().await.is_ok(), "later waiters pass at once");
    }

    #[tokio::test]
    async fn a_watch_that_ends_before_listing_says_which() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let synced = Synced::spawn(vec![("Secret", rx)], || panic!("not ready"));
        drop(tx);
        let e = synced.wait().await.unwrap_err().to_string();
        assert!(
            e.contains("Secret: the watch ended before its first list"),
            "{e}"
        );
    }
}
