//! `edgemq controller`: kube-rs Controllers for the four kinds.
//!
//! ```text
//!  watchers (Broker, MqttUser, Bridge, Certificate, Secret) ──► stores ──► index (one namespace)
//!                                                                  │ validate + plan (pure, shared)
//!  Broker      ─► desired objects (pure) ─► server-side apply ─► status if changed, Events on flips
//!  MqttUser    ─► accepted by its Broker, or why not
//!  Bridge      ─► only its mistakes (the broker pod reports the link)
//!  Certificate ─► selfSigned / ca issued into its Secret, renewed when due
//! ```
//!
//! Every reconcile observes, computes what should be, writes only what differs, and
//! asks to be called again later; nothing in it blocks on the network outside the
//! Kubernetes API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use super::bundle::PodBundle;
use super::desired::{self, Settings};
use super::index::{self, Snapshot};
use super::status::{broker_ready, controller_status, shows, BrokerState};
use super::{Error, Metrics, FIELD_MANAGER};
use crate::api::{Bridge, Broker, Certificate, MqttUser};
use crate::load::Kind;

/// Ready=False reasons that only say work is under way (Events of type Normal).
const PROGRESS_REASONS: &[&str] = &["PodNotReady", "Applying", "Pending"];

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
    stores: Stores,
    /// Per applied object: hash of what was applied and the resourceVersion it gave,
    /// so an unchanged object is not applied again.
    applied: Mutex<HashMap<String, (String, String)>>,
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
    /// Secrets.
    pub secrets: Store<Secret>,
}

impl Stores {
    /// Waits until every store has its first complete list.
    async fn ready(&self) -> Result<(), Error> {
        let e =
            |kind: &str, e: reflector::store::WriterDropped| Error::Watch(format!("{kind}: {e}"));
        self.brokers
            .wait_until_ready()
            .await
            .map_err(|x| e("Broker", x))?;
        self.users
            .wait_until_ready()
            .await
            .map_err(|x| e("MqttUser", x))?;
        self.bridges
            .wait_until_ready()
            .await
            .map_err(|x| e("Bridge", x))?;
        self.certificates
            .wait_until_ready()
            .await
            .map_err(|x| e("Certificate", x))?;
        self.secrets
            .wait_until_ready()
            .await
            .map_err(|x| e("Secret", x))?;
        Ok(())
    }

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

fn now_rfc3339() -> String {
    crate::certs::rfc3339(time::OffsetDateTime::now_utc())
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
        self.stores.ready().await
    }

    /// What the watchers hold now.
    pub(super) fn snapshot(&self) -> Snapshot {
        self.stores.snapshot()
    }

    /// Applies `obj` with server-side apply unless the same content was applied before
    /// and nobody changed the object since. Returns the object as the server has it.
    pub(super) async fn ensure<K>(&self, obj: &K) -> Result<K, Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let name = obj.meta().name.clone().unwrap_or_default();
        let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
        let key = format!("{}/{ns}/{name}", K::kind(&()));
        let hash = sha(obj);
        if let Some(current) = api.get_opt(&name).await? {
            let rv = current.resource_version().unwrap_or_default();
            let cached = self.applied.lock().ok().and_then(|m| m.get(&key).cloned());
            if cached == Some((hash.clone(), rv)) {
                return Ok(current);
            }
        }
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

    async fn event<K: Resource<DynamicType = ()>>(
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

    /// Writes the controller's status fields of `obj` when they differ from what it
    /// shows, and an Event when Ready's reason changed.
    pub(super) async fn write_status<K>(&self, obj: &K, status: Value) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let current = serde_json::to_value(obj)
            .ok()
            .and_then(|v| v.get("status").cloned());
        if shows(current.as_ref(), &status) {
            return Ok(());
        }
        let before = super::status::previous_ready(current.as_ref());
        let after = super::status::previous_ready(Some(&status));
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let name = obj.meta().name.clone().unwrap_or_default();
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

fn namespace_of<K: Resource>(o: &K) -> String {
    o.meta()
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

/// Broker: its objects and status.
async fn reconcile_broker(b: Arc<Broker>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _t = ctx.metrics.timer("Broker");
    if b.meta().deletion_timestamp.is_some() {
        // Children carry owner references: the garbage collector removes them.
        return Ok(Action::await_change());
    }
    let ns = namespace_of(b.as_ref());
    let name = b.name_any();
    ctx.ready().await?;
    let mut res = index::namespace(&ctx.snapshot(), &ns);
    // The object that triggered this pass is newer than the store's copy.
    res.apply(
        crate::load::Object::Broker(Box::new(index::without_status(&b))),
        None,
    );
    let errors = index::errors(&res);
    let parts = index::parts_of(&res, &ns, &name);
    let mine: Vec<String> = index::concerning(&errors, &parts)
        .iter()
        .map(|e| e.to_string())
        .collect();
    let current = serde_json::to_value(b.as_ref())
        .ok()
        .and_then(|v| v.get("status").cloned());
    let running = current
        .as_ref()
        .and_then(|s| s.get("configHash"))
        .and_then(|h| h.as_str())
        .map(str::to_string);
    let planned = match (mine.is_empty(), res.broker(&ns, &name)) {
        (true, Some(l)) => crate::plan::plan_broker(&res, l).map_err(|e| {
            e.iter()
                .map(|e| format!("Broker/{name}: {e}"))
                .collect::<Vec<_>>()
        }),
        (true, None) => Err(vec![format!("Broker/{name}: not found")]),
        (false, _) => Err(mine),
    };
    let mut extra = serde_json::Map::new();
    let state = match planned {
        Err(errors) => {
            for e in &errors {
                tracing::warn!(broker = %format!("{ns}/{name}"), "{e}");
            }
            BrokerState::InvalidSpec {
                errors,
                running: running.clone(),
            }
        }
        Ok(bundle) => {
            let pod_bundle = PodBundle::new(bundle, &res);
            let hash = pod_bundle.bundle.hash();
            extra.insert("desiredConfigHash".into(), json!(hash));
            let objects = desired::broker_objects(&b, &pod_bundle, &ctx.settings);
            match apply_broker_objects(&ctx, &objects).await {
                Err(e) => BrokerState::ApplyFailed(e.to_string()),
                Ok((deployment, service)) => {
                    let ready = deployment
                        .status
                        .as_ref()
                        .and_then(|s| s.ready_replicas)
                        .unwrap_or(0);
                    extra.insert("readyReplicas".into(), json!(ready));
                    extra.insert("address".into(), json!(address(&service)));
                    if ready < 1 {
                        BrokerState::PodNotReady
                    } else if running.as_deref() != Some(hash.as_str()) {
                        BrokerState::Applying {
                            running: running.clone(),
                        }
                    } else {
                        BrokerState::Running
                    }
                }
            }
        }
    };
    let desired_hash = extra
        .get("desiredConfigHash")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let ready = broker_ready(&state, desired_hash.as_deref());
    let status = controller_status(
        current.as_ref(),
        b.meta().generation,
        ready,
        extra,
        &now_rfc3339(),
    );
    ctx.write_status(b.as_ref(), status).await?;
    Ok(match state {
        BrokerState::Running | BrokerState::InvalidSpec { .. } => {
            Action::requeue(Duration::from_secs(600))
        }
        _ => Action::requeue(Duration::from_secs(30)),
    })
}

/// Where clients reach a Broker: the LoadBalancer's address when it has one, else
/// the Service's DNS name.
fn address(svc: &Service) -> String {
    let lb = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .and_then(|i| i.first())
        .and_then(|i| i.ip.clone().or_else(|| i.hostname.clone()));
    lb.unwrap_or_else(|| {
        format!(
            "{}.{}.svc",
            svc.metadata.name.clone().unwrap_or_default(),
            svc.metadata.namespace.clone().unwrap_or_default()
        )
    })
}

async fn apply_broker_objects(
    ctx: &Context,
    o: &desired::BrokerObjects,
) -> Result<(Deployment, Service), Error> {
    ctx.ensure::<ServiceAccount>(&o.service_account).await?;
    ctx.ensure::<Role>(&o.role).await?;
    ctx.ensure::<RoleBinding>(&o.role_binding).await?;
    ctx.ensure::<Secret>(&o.bundle).await?;
    if let Some(v) = &o.volume {
        ctx.ensure::<PersistentVolumeClaim>(v).await?;
    }
    let service = ctx.ensure::<Service>(&o.service).await?;
    let deployment = ctx.ensure::<Deployment>(&o.deployment).await?;
    Ok((deployment, service))
}

/// MqttUser: accepted by its Broker, or why not.
async fn reconcile_user(u: Arc<MqttUser>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _t = ctx.metrics.timer("MqttUser");
    if u.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = namespace_of(u.as_ref());
    let name = u.name_any();
    let broker = &u.spec.broker_ref;
    ctx.ready().await?;
    let mut res = index::namespace(&ctx.snapshot(), &ns);
    // The object that triggered this pass is newer than the store's copy.
    res.apply(crate::load::Object::MqttUser(Box::new((*u).clone())), None);
    let errors = index::errors(&res);
    let own = index::concerning(&errors, &[format!("{}/{name}", Kind::MqttUser)].into());
    let ready = if !own.is_empty() {
        (
            false,
            "InvalidSpec",
            own.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        )
    } else {
        let parts = index::parts_of(&res, &ns, broker);
        let blocking = index::concerning(&errors, &parts);
        let status = ctx
            .stores
            .brokers
            .get(&ObjectRef::new(broker).within(&ns))
            .and_then(|b| serde_json::to_value(b.as_ref()).ok())
            .and_then(|v| v.get("status").cloned());
        let applied = status.as_ref().is_some_and(|s| {
            s.get("configHash").is_some() && s.get("configHash") == s.get("desiredConfigHash")
        });
        if !blocking.is_empty() {
            (
                false,
                "BrokerConfigInvalid",
                format!(
                    "Broker {broker} cannot apply its configuration: {}",
                    blocking
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            )
        } else if applied {
            (true, "Active", format!("can log in to Broker {broker}"))
        } else {
            (
                false,
                "Pending",
                format!("waiting for Broker {broker} to apply it"),
            )
        }
    };
    let waiting = ready.1 == "Pending";
    let current = serde_json::to_value(u.as_ref())
        .ok()
        .and_then(|v| v.get("status").cloned());
    let mut extra = serde_json::Map::new();
    extra.insert("username".into(), json!(u.username()));
    let status = controller_status(
        current.as_ref(),
        u.meta().generation,
        ready,
        extra,
        &now_rfc3339(),
    );
    ctx.write_status(u.as_ref(), status).await?;
    // The Broker's status reaches this controller through its own watch: look again
    // soon while waiting for it.
    Ok(Action::requeue(Duration::from_secs(if waiting {
        5
    } else {
        600
    })))
}

/// Bridge: only its mistakes; the broker pod that runs it reports the link.
async fn reconcile_bridge(b: Arc<Bridge>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _t = ctx.metrics.timer("Bridge");
    if b.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = namespace_of(b.as_ref());
    let name = b.name_any();
    ctx.ready().await?;
    let mut res = index::namespace(&ctx.snapshot(), &ns);
    // The object that triggered this pass is newer than the store's copy.
    res.apply(crate::load::Object::Bridge(Box::new((*b).clone())), None);
    let errors = index::errors(&res);
    let own = index::concerning(&errors, &[format!("{}/{name}", Kind::Bridge)].into());
    if own.is_empty() {
        return Ok(Action::requeue(Duration::from_secs(600)));
    }
    let current = serde_json::to_value(b.as_ref())
        .ok()
        .and_then(|v| v.get("status").cloned());
    let message = own
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    let status = controller_status(
        current.as_ref(),
        b.meta().generation,
        (false, "InvalidSpec", message),
        Default::default(),
        &now_rfc3339(),
    );
    ctx.write_status(b.as_ref(), status).await?;
    Ok(Action::requeue(Duration::from_secs(600)))
}

fn error_policy<K>(_obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %error, "reconcile failed; retrying");
    ctx.metrics.failure(error);
    Action::requeue(Duration::from_secs(5))
}

/// A store of `api` and the stream that fills it: an item comes out of the stream only
/// after the store holds it, so a reconcile it triggers never reads an older copy.
/// Deleted objects come out too (their Broker must forget them).
fn reflect<K>(
    api: Api<K>,
) -> (
    Store<K>,
    impl futures_util::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic()),
    )
    .default_backoff()
    .touched_objects();
    (reader, stream)
}

/// Starts a reflector for `api` and returns its store.
fn store_of<K>(api: Api<K>) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic()),
    )
    .default_backoff()
    .applied_objects();
    tokio::spawn(async move {
        futures_util::pin_mut!(stream);
        while let Some(r) = stream.next().await {
            if let Err(e) = r {
                tracing::warn!(error = %e, "watch failed; retrying");
            }
        }
    });
    reader
}

fn api_for<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs every controller for `namespace` (all namespaces when `None`) until a
/// shutdown signal.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    settings: Settings,
    identity: String,
    metrics: Arc<Metrics>,
) -> Result<(), Error> {
    let ns = namespace.as_deref();
    let (users, users_changed) = reflect(api_for::<MqttUser>(&client, ns));
    let (bridges, bridges_changed) = reflect(api_for::<Bridge>(&client, ns));
    let (certificates, certificates_changed) = reflect(api_for::<Certificate>(&client, ns));
    let (secrets, secrets_changed) = reflect(api_for::<Secret>(&client, ns));
    let stores = Stores {
        brokers: store_of(api_for::<Broker>(&client, ns)),
        users,
        bridges,
        certificates,
        secrets,
    };
    {
        let stores = stores.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            match stores.ready().await {
                Ok(()) => metrics.set_ready(true),
                Err(e) => tracing::error!(error = %e, "watches did not start"),
            }
        });
    }
    tracing::info!(namespace = ns.unwrap_or("(all)"), "watching; reconciling");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "edgemq-controller".into(),
            instance: Some(identity),
        },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings,
        recorder,
        metrics,
        stores: stores.clone(),
        applied: Mutex::new(HashMap::new()),
    });
    let managed = watcher::Config::default().labels("app.kubernetes.io/managed-by=edgemq");

    let brokers_by_ns = stores.brokers.clone();
    let brokers_in = move |ns: Option<String>| {
        let ns = ns.unwrap_or_default();
        brokers_by_ns
            .state()
            .into_iter()
            .filter(|b| b.meta().namespace.as_deref() == Some(ns.as_str()))
            .map(|b| ObjectRef::from_obj(b.as_ref()))
            .collect::<Vec<_>>()
    };
    let brokers_in_2 = brokers_in.clone();
    let brokers_in_3 = brokers_in.clone();
    let broker_ctl = Controller::new(
        api_for::<Broker>(&client, ns),
        watcher::Config::default().any_semantic(),
    )
    .owns(api_for::<Deployment>(&client, ns), managed.clone())
    .owns(api_for::<Service>(&client, ns), managed.clone())
    .watches_stream(users_changed, |u| {
        Some(ObjectRef::<Broker>::new(&u.spec.broker_ref).within(&namespace_of(&u)))
    })
    .watches_stream(bridges_changed, |b| {
        Some(ObjectRef::<Broker>::new(&b.spec.broker_ref).within(&namespace_of(&b)))
    })
    .watches_stream(certificates_changed, move |c| {
        brokers_in_2(c.meta().namespace.clone())
    })
    .watches_stream(secrets_changed, move |s| {
        // The bundle Secrets are the controller's own output.
        if s.type_.as_deref() == Some("edgemq.io/bundle") {
            return Vec::new();
        }
        brokers_in_3(s.meta().namespace.clone())
    })
    .shutdown_on_signal()
    .run(reconcile_broker, error_policy, ctx.clone())
    .for_each(|_| futures_util::future::ready(()));

    let users_store = stores.users.clone();
    let user_ctl = Controller::new(
        api_for::<MqttUser>(&client, ns),
        watcher::Config::default().any_semantic(),
    )
    .watches(
        api_for::<Broker>(&client, ns),
        watcher::Config::default(),
        move |b| {
            let ns = namespace_of(&b);
            let name = b.name_any();
            users_store
                .state()
                .into_iter()
                .filter(|u| namespace_of(u.as_ref()) == ns && u.spec.broker_ref == name)
                .map(|u| ObjectRef::from_obj(u.as_ref()))
                .collect::<Vec<_>>()
        },
    )
    .shutdown_on_signal()
    .run(reconcile_user, error_policy, ctx.clone())
    .for_each(|_| futures_util::future::ready(()));

    let bridge_ctl = Controller::new(api_for::<Bridge>(&client, ns), watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile_bridge, error_policy, ctx.clone())
        .for_each(|_| futures_util::future::ready(()));

    let cert_ctl = Controller::new(
        api_for::<Certificate>(&client, ns),
        watcher::Config::default(),
    )
    .owns(api_for::<Secret>(&client, ns), watcher::Config::default())
    .shutdown_on_signal()
    .run(super::certificates::reconcile, error_policy, ctx.clone())
    .for_each(|_| futures_util::future::ready(()));

    let started = Instant::now();
    tokio::join!(broker_ctl, user_ctl, bridge_ctl, cert_ctl);
    tracing::info!(seconds = started.elapsed().as_secs(), "controllers stopped");
    Ok(())
}
