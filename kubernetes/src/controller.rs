//! `edgemq controller`: kube-rs Controllers for the four kinds.
//!
//! ```text
//!  watchers (Broker, MqttUser, Bridge, Certificate, Secret) ──► stores ──► index (one namespace)
//!     (each store's stream also wakes the controllers that follow that kind)
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

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Secret, Service};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::bundle::PodBundle;
use super::context::{check_owned, Context, Stores};
use super::desired::{self, Settings};
use super::frame::{namespace_of, Begun};
use super::index;
use super::streams;
use super::volume;
use super::{Error, Metrics};
use edgemq::api::broker::UpdateStrategy;
use edgemq::api::{
    Bridge, BridgeStatus, Broker, BrokerStatus, Certificate, MqttUser, MqttUserStatus,
};
use edgemq::load::Kind;
use edgemq::status::kinds::{self, broker_ready, reason, BrokerState, UserState};

/// Broker: its objects and status.
async fn reconcile_broker(b: Arc<Broker>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Begun::Live(frame) = ctx.begin(b.as_ref()).await? else {
        // Children carry owner references: the garbage collector removes them.
        return Ok(Action::await_change());
    };
    let (ns, name) = (&frame.ns.clone(), &frame.name.clone());
    // Each object with a mistake runs at its last good version or stays out; the
    // rest of the Broker's changes apply, deletions always.
    let eff = &frame.view.effective.res;
    let own = frame.held().map(|h| h.message());
    let running = b.status.as_ref().and_then(|s| s.config_hash.clone());
    let planned = match eff.broker(ns, name) {
        Some(l) => edgemq::plan::plan_broker(eff, l)
            .map(|bundle| (PodBundle::new(bundle, eff), l.object.clone()))
            .map_err(|e| {
                e.iter()
                    .map(|e| format!("Broker/{name}: {e}"))
                    .collect::<Vec<_>>()
            }),
        None => Err(match &own {
            Some(message) => vec![message.clone()],
            None => vec![format!("Broker/{name}: not found")],
        }),
    };
    // The namespace's view is let go before the API calls: during a burst each view
    // is soon replaced, and reconciles waiting on the API server kept one each.
    let _timer = frame.into_timer();
    let mut fields = BrokerStatus::default();
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
        Ok((pod_bundle, effective_broker)) => {
            let hash = pod_bundle.bundle.hash();
            fields.desired_config_hash = Some(hash.clone());
            // The pod follows the Broker's last good version while its edit has a
            // mistake.
            let mut effective_broker = effective_broker;
            desired::carry_restart(b.as_ref(), &mut effective_broker);
            fields.update_strategy = Some(desired::update_strategy(&effective_broker).to_string());
            let asked = effective_broker
                .spec
                .persistence
                .as_ref()
                .map(|p| p.update_strategy)
                .unwrap_or_default();
            let objects = desired::broker_objects(&effective_broker, &pod_bundle, &ctx.settings);
            // An image the installer did not allow: the pod (if any) keeps running what
            // it runs; only the bundle is written, so that user deletions and ACL changes
            // still reach a running pod (a revocation is never held back).
            let refused = desired::image_refusal(&effective_broker, &ctx.settings);
            let applied = match refused {
                Some(message) => {
                    tracing::warn!(broker = %format!("{ns}/{name}"), "{message}");
                    apply_bundle_only(&ctx, &objects)
                        .await
                        .map(|()| Err(message))
                }
                None => apply_broker_objects(&ctx, &objects, asked).await.map(Ok),
            };
            match applied {
                Ok(Err(message)) => BrokerState::ImageNotAllowed(message),
                Err(Error::Conflict(c)) => BrokerState::NameConflict(c.to_string()),
                Err(e) => BrokerState::ApplyFailed(e.to_string()),
                Ok(Ok(Applied {
                    deployment,
                    service,
                    replacing,
                    volume,
                })) => {
                    let mut how = desired::update_strategy(&effective_broker);
                    if let Some(decision) = volume {
                        how = decision.strategy.as_str();
                        let before = b.status.as_ref().and_then(|s| s.update_strategy.as_deref());
                        if decision.fell_back && before != Some(how) {
                            tracing::warn!(broker = %format!("{ns}/{name}"), "{}", decision.reason);
                            ctx.event(
                                b.as_ref(),
                                true,
                                "UpdateStrategyFallback",
                                decision.reason.clone(),
                            )
                            .await;
                        }
                        fields.update_strategy = Some(how.to_string());
                        fields.update_strategy_reason = Some(decision.reason);
                    }
                    if replacing {
                        ctx.event(
                            b.as_ref(),
                            false,
                            "ReplacingPod",
                            format!(
                                "the pod template changed: the broker pod is replaced by {how}"
                            ),
                        )
                        .await;
                    }
                    let ready = deployment
                        .status
                        .as_ref()
                        .and_then(|s| s.ready_replicas)
                        .unwrap_or(0);
                    fields.ready_replicas = Some(ready);
                    fields.address = Some(address(&service));
                    if let Some(message) = own {
                        BrokerState::InvalidSpec {
                            errors: vec![message],
                            running: running.clone(),
                        }
                    } else if ready < 1 {
                        BrokerState::PodNotReady
                    } else if running.as_deref() != Some(hash.as_str()) {
                        BrokerState::Applying {
                            running: running.clone(),
                        }
                    } else {
                        BrokerState::Running { listeners: None }
                    }
                }
            }
        }
    };
    let ready = broker_ready(&state, fields.desired_config_hash.as_deref());
    ctx.set_ready(b.as_ref(), ready, fields).await?;
    Ok(match state {
        BrokerState::Running { .. }
        | BrokerState::InvalidSpec { .. }
        | BrokerState::ImageNotAllowed(_) => Action::requeue(Duration::from_secs(600)),
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

/// What applying a Broker's objects gave.
struct Applied {
    deployment: Deployment,
    service: Service,
    /// Whether the pod template of an existing Deployment changed, so that its pod is
    /// being replaced.
    replacing: bool,
    /// With a volume: how a pod-template change replaces the pod, and why.
    volume: Option<volume::Decision>,
}

/// Applies every object of a Broker, the Deployment with the update strategy its volume
/// allows (`asked` unless the volume cannot be shared, see [`volume`]).
async fn apply_broker_objects(
    ctx: &Context,
    o: &desired::BrokerObjects,
    asked: UpdateStrategy,
) -> Result<Applied, Error> {
    // Observe everything first: one object of the name that belongs to someone else
    // stops the Broker before any of its objects is written.
    let sa = ctx.observe(&o.service_account).await?;
    let role = ctx.observe(&o.role).await?;
    let binding = ctx.observe(&o.role_binding).await?;
    let bundle = ctx.observe(&o.bundle).await?;
    let volume = match &o.volume {
        Some(v) => Some((v, ctx.observe(v).await?)),
        None => None,
    };
    let service = ctx.observe(&o.service).await?;
    let deployment = ctx.observe(&o.deployment).await?;
    check_owned(&o.service_account, sa.as_ref())?;
    check_owned(&o.role, role.as_ref())?;
    check_owned(&o.role_binding, binding.as_ref())?;
    check_owned(&o.bundle, bundle.as_ref())?;
    if let Some((v, current)) = &volume {
        check_owned(*v, current.as_ref())?;
    }
    check_owned(&o.service, service.as_ref())?;
    check_owned(&o.deployment, deployment.as_ref())?;

    ctx.ensure_over(&o.service_account, sa).await?;
    ctx.ensure_over(&o.role, role).await?;
    ctx.ensure_over(&o.role_binding, binding).await?;
    ctx.ensure_over(&o.bundle, bundle).await?;
    let mut decision = None;
    if let Some((v, current)) = volume {
        let claim = ctx.ensure_over(v, current).await?;
        decision = Some(volume::decide(asked, &volume_sharing(ctx, &claim).await));
    }
    let service = ctx.ensure_over(&o.service, service).await?;
    let before = deployment.as_ref().map(|d| d.spec.template.clone());
    let mut wanted = o.deployment.clone();
    if let Some(d) = &decision {
        desired::set_update_strategy(&mut wanted, d.strategy);
    }
    desired::first_hand_over(&mut wanted, deployment.as_ref());
    let deployment = ctx.ensure_over(&wanted, deployment).await?;
    // A new strategy alone moves the generation but replaces no pod.
    let replacing = before.is_some_and(|t| t != deployment.spec.template);
    Ok(Applied {
        deployment,
        service,
        replacing,
        volume: decision,
    })
}

/// What the volume `claim` is bound to allows, read from the PersistentVolume (a
/// cluster-scoped read: the chart grants `get` on PersistentVolumes and nothing more).
async fn volume_sharing(ctx: &Context, claim: &PersistentVolumeClaim) -> volume::Sharing {
    let bound = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref());
    let read = match bound {
        Some(pv) => Api::<PersistentVolume>::all(ctx.client.clone())
            .get_opt(pv)
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 403 => {
                    "forbidden (the controller may not get PersistentVolumes)".to_string()
                }
                e => e.to_string(),
            }),
        None => Ok(None),
    };
    volume::assess(
        claim,
        read.as_ref().map(Option::as_ref).map_err(String::as_str),
    )
}

/// For a Broker whose pod may not be changed: when a pod runs, writes only its bundle
/// Secret and its Role (after the same ownership check), so that it keeps applying
/// user and ACL changes; when none runs, nothing.
async fn apply_bundle_only(ctx: &Context, o: &desired::BrokerObjects) -> Result<(), Error> {
    // No pod runs: nothing to keep up to date.
    if ctx.observe(&o.deployment).await?.is_none() {
        return Ok(());
    }
    // The Role too: a bundle naming a Secret the running pod may not read would stop
    // it applying any later bundle, deletions included.
    ctx.ensure(&o.role).await?;
    ctx.ensure(&o.role_binding).await?;
    ctx.ensure(&o.bundle).await?;
    Ok(())
}

/// What an MqttUser's status follows of its Broker: its spec (through the view), and
/// whether its pod runs the configuration it was given or refused it. The MqttUser
/// controller is woken by a Broker only when these change (`streams::OnChange`), not by
/// every status write of the Broker.
#[derive(Clone, PartialEq)]
struct BrokerFacts {
    generation: Option<i64>,
    deleting: bool,
    /// The pod runs the configuration last given to it.
    applied: bool,
    /// The pod refused it, or its name is taken.
    failed: bool,
    /// The Broker's Ready condition (status, reason, message): a Broker held back by a
    /// mistake, however it came to be (a Secret it names deleted, say), says so here.
    ready: Option<(String, String, String)>,
}

impl BrokerFacts {
    fn of(b: &Broker) -> BrokerFacts {
        let status = b.status.as_ref();
        let ready = status.and_then(|s| s.common.conditions.iter().find(|c| c.type_ == "Ready"));
        BrokerFacts {
            generation: b.metadata.generation,
            deleting: b.metadata.deletion_timestamp.is_some(),
            applied: status
                .is_some_and(|s| s.config_hash.is_some() && s.config_hash == s.desired_config_hash),
            failed: ready.is_some_and(|c| {
                [reason::APPLY_FAILED, reason::NAME_CONFLICT].contains(&c.reason.as_str())
            }),
            ready: ready.map(|c| (c.status.clone(), c.reason.clone(), c.message.clone())),
        }
    }
}

/// What a Broker's reconcile reads of the Broker itself beyond its spec: its deletion,
/// a restart asked of it, and the configuration its pod reports running. Its other
/// status fields are the reconcile's own output, and its pod's count of connections
/// concerns nothing here: every status write of the controller woke its Broker once
/// more, and every change of the pod's count of connections did.
#[derive(Clone, PartialEq)]
struct BrokerInputs {
    generation: Option<i64>,
    deleting: bool,
    restart: Option<String>,
    running: Option<String>,
}

impl BrokerInputs {
    fn of(b: &Broker) -> BrokerInputs {
        BrokerInputs {
            generation: b.metadata.generation,
            deleting: b.metadata.deletion_timestamp.is_some(),
            restart: b
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(desired::RESTARTED_AT))
                .cloned(),
            running: b.status.as_ref().and_then(|s| s.config_hash.clone()),
        }
    }
}

/// What a Broker's reconcile reads of its Deployment: its spec (someone's edit is put
/// back), who owns it, its ready pods, and its deletion. Its other status fields
/// (conditions, observed generation, replica counts on the way) move several times per
/// rollout.
#[derive(Clone, PartialEq)]
struct DeploymentInputs {
    uid: Option<String>,
    generation: Option<i64>,
    deleting: bool,
    owners: Vec<String>,
    labels: Option<std::collections::BTreeMap<String, String>>,
    annotations: Option<std::collections::BTreeMap<String, String>>,
    ready: Option<i32>,
}

impl DeploymentInputs {
    fn of(d: &Deployment) -> DeploymentInputs {
        DeploymentInputs {
            uid: d.metadata.uid.clone(),
            generation: d.metadata.generation,
            deleting: d.metadata.deletion_timestamp.is_some(),
            owners: d.owner_references().iter().map(|o| o.uid.clone()).collect(),
            labels: d.metadata.labels.clone(),
            annotations: d.metadata.annotations.clone(),
            ready: d.status.as_ref().and_then(|s| s.ready_replicas),
        }
    }
}

/// MqttUser: accepted by its Broker, or why not.
async fn reconcile_user(u: Arc<MqttUser>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Begun::Live(frame) = ctx.begin(u.as_ref()).await? else {
        return Ok(Action::await_change());
    };
    let (ns, view) = (&frame.ns, &frame.view);
    let broker = &u.spec.broker_ref;
    let state = if let Some(h) = frame.held() {
        UserState::InvalidSpec(h.message())
    } else if view.effective.res.broker(ns, broker).is_none() {
        match view.held(Kind::Broker, ns, broker) {
            Some(h) => UserState::BrokerInvalid(h.message()),
            None => UserState::BrokerNotFound,
        }
    } else {
        // From the shared store: a Broker comes out of its one watch only after the
        // store holds it (see `streams`), so a pass its status change triggers reads
        // that status; a later change triggers another pass.
        let facts = ctx
            .stores
            .brokers
            .get(&ObjectRef::new(broker).within(ns))
            .map(|b| BrokerFacts::of(&b));
        let (applied, failed) = facts.map_or((false, false), |f| (f.applied, f.failed));
        if applied {
            UserState::Active
        } else if failed {
            UserState::BrokerNotReady
        } else {
            UserState::Pending
        }
    };
    let fields = MqttUserStatus {
        username: Some(u.username()),
        ..Default::default()
    };
    let _timer = frame.into_timer();
    ctx.set_ready(u.as_ref(), kinds::user_ready(&state, broker), fields)
        .await?;
    Ok(Action::requeue(Duration::from_secs(600)))
}

/// Bridge: only its mistakes; the broker pod that runs it reports the link.
async fn reconcile_bridge(b: Arc<Bridge>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Begun::Live(frame) = ctx.begin(b.as_ref()).await? else {
        return Ok(Action::await_change());
    };
    let Some(held) = frame.held() else {
        return Ok(Action::requeue(Duration::from_secs(600)));
    };
    ctx.set_ready(
        b.as_ref(),
        (false, reason::INVALID_SPEC, held.message()),
        BridgeStatus::default(),
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(600)))
}

/// The Certificates a Bridge names: its client certificate and the one whose AWS IoT
/// endpoint it connects to.
fn certificates_named_by(b: &Bridge) -> Vec<ObjectRef<Certificate>> {
    let ns = namespace_of(b);
    let remote = &b.spec.remote;
    let mut names: Vec<&str> = remote
        .tls
        .as_ref()
        .and_then(|t| t.client_certificate_ref.as_deref())
        .into_iter()
        .collect();
    if let Some(e) = &remote.aws_iot_endpoint {
        names.push(e.certificate_ref.as_str());
    }
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|n| ObjectRef::new(n).within(&ns))
        .collect()
}

fn error_policy<K>(_obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %error, "reconcile failed; retrying");
    ctx.metrics.failure(error);
    Action::requeue(Duration::from_secs(5))
}

/// A store of `api`, the stream that fills it, and the signal that it has listed once
/// (for [`super::context::Synced`]): an item comes out of the stream only after the
/// store holds it, so a reconcile it triggers never reads an older copy. Deleted
/// objects come out too (their Broker must forget them).
fn reflect<K>(
    kind: &'static str,
    api: Api<K>,
) -> (
    Store<K>,
    impl futures_util::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    super::context::Listed,
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
    // managedFields are of no use here and are most of a stored object's size; kubectl's
    // last-applied annotation is a copy of the object (of a Secret: its values).
    let objects = watcher(api, watcher::Config::default().any_semantic()).modify(|o| {
        o.managed_fields_mut().clear();
        o.annotations_mut()
            .remove("kubectl.kubernetes.io/last-applied-configuration");
    });
    let (listed, listed_rx) = tokio::sync::watch::channel(false);
    let stream = reflector::reflector(writer, objects)
        .inspect(move |event| {
            if let Ok(watcher::Event::InitDone) = event {
                listed.send_replace(true);
            }
        })
        .default_backoff()
        .touched_objects();
    (reader, stream, (kind, listed_rx))
}

/// At most a few reconciles at once: an edge controller shares its node with brokers,
/// and memory stays bounded however many objects change together.
fn controller_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(4)
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
/// Every 30 s, once the watches are synced, drops the Ready series of objects that are
/// gone (a deletion is not reconciled, so nothing else would).
async fn forget_deleted_objects(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        if !ctx.metrics.is_ready() {
            continue;
        }
        let s = &ctx.stores;
        ctx.metrics.forget_deleted(|l| {
            let Some((ns, n)) = l.object.split_once('/') else {
                return false;
            };
            match l.kind.as_str() {
                "Broker" => s.brokers.get(&ObjectRef::new(n).within(ns)).is_some(),
                "MqttUser" => s.users.get(&ObjectRef::new(n).within(ns)).is_some(),
                "Bridge" => s.bridges.get(&ObjectRef::new(n).within(ns)).is_some(),
                "Certificate" => s.certificates.get(&ObjectRef::new(n).within(ns)).is_some(),
                _ => true,
            }
        });
    }
}

pub async fn run(
    client: Client,
    namespace: Option<String>,
    settings: Settings,
    identity: String,
    metrics: Arc<Metrics>,
) -> Result<(), Error> {
    let ns = namespace.as_deref();
    // Each kind is watched once, into one store, and its changes (deletions included)
    // go to every controller that follows it (`streams::fan_out`): seven watches in
    // all, the Deployments and Services the Broker controller owns included.
    let (users, users_changed, l1) = reflect("MqttUser", api_for::<MqttUser>(&client, ns));
    let ([users_for_brokers, users_for_users, users_for_siblings], t1) =
        streams::fan_out("MqttUser", users_changed);
    let (bridges, bridges_changed, l2) = reflect("Bridge", api_for::<Bridge>(&client, ns));
    let ([bridges_for_brokers, bridges_for_bridges, bridges_for_certificates], t2) =
        streams::fan_out("Bridge", bridges_changed);
    let (certificates, certificates_changed, l3) =
        reflect("Certificate", api_for::<Certificate>(&client, ns));
    let ([certificates_for_brokers, certificates_for_certificates], t3) =
        streams::fan_out("Certificate", certificates_changed);
    // Secrets by metadata only: which exist and when they change. Values are read by
    // name, and only of the Secrets some edgemq object names (Context::view).
    let (secrets, secrets_changed, l4) =
        reflect("Secret", api_for::<PartialObjectMeta<Secret>>(&client, ns));
    let ([secrets_for_brokers, secrets_for_certificates], t4) =
        streams::fan_out("Secret", secrets_changed);
    // The MqttUser controller follows the Brokers too (their users' status follows the
    // Broker's).
    let (brokers, brokers_changed, l5) = reflect("Broker", api_for::<Broker>(&client, ns));
    let ([brokers_for_brokers, brokers_for_users], t5) =
        streams::fan_out("Broker", brokers_changed);
    let watches = [t1, t2, t3, t4, t5];
    let stores = Stores {
        brokers,
        users,
        bridges,
        certificates,
        secrets,
    };
    let synced = {
        let metrics = metrics.clone();
        super::context::Synced::spawn(vec![l1, l2, l3, l4, l5], move || metrics.set_ready(true))
    };
    tracing::info!(namespace = ns.unwrap_or("(all)"), "watching; reconciling");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "edgemq-controller".into(),
            instance: Some(identity),
        },
    );
    // ACME and fleet provisioning tasks wake their Certificate's reconcile through this.
    let (acme_wake, acme_woken) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings,
        recorder,
        metrics,
        stores: stores.clone(),
        applied: Mutex::new(HashMap::new()),
        views: Mutex::new(HashMap::new()),
        last_good: tokio::sync::Mutex::new(HashMap::new()),
        fleet: super::fleet::Provisioners::new(acme_wake.clone()),
        acme: super::acme::Issuers::new(acme_wake),
        synced,
        secret_values: Mutex::new(HashMap::new()),
        named: Mutex::new(HashMap::new()),
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
    let secrets_ctx = ctx.clone();
    let user_brokers = super::streams::BrokerTriggers::new(stores.users.clone());
    let bridge_brokers = super::streams::BrokerTriggers::new(stores.bridges.clone());
    // A Broker's own status writes do not wake it again, nor do its Deployment's
    // status changes that say nothing it reads (see `BrokerInputs`, `DeploymentInputs`).
    let broker_inputs = streams::OnChange::new(stores.brokers.clone(), BrokerInputs::of);
    let brokers_for_brokers = brokers_for_brokers
        .try_filter(move |b| futures_util::future::ready(broker_inputs.changed(b)));
    let deployments_changed = streams::Changes::new(DeploymentInputs::of)
        .filter(watcher(api_for::<Deployment>(&client, ns), managed.clone()).default_backoff());
    let broker_ctl = Controller::for_stream(brokers_for_brokers, stores.brokers.clone())
        .owns_stream(deployments_changed)
        .owns(api_for::<Service>(&client, ns), managed.clone())
        // Spec changes and deletions of MqttUsers and Bridges concern their Broker (and
        // the one they left), not their status writes.
        .watches_stream(users_for_brokers, move |u| {
            user_brokers.refs(&u, &u.spec.broker_ref)
        })
        .watches_stream(bridges_for_brokers, move |b| {
            bridge_brokers.refs(&b, &b.spec.broker_ref)
        })
        .watches_stream(certificates_for_brokers, move |c| {
            brokers_in_2(c.meta().namespace.clone())
        })
        .watches_stream(secrets_for_brokers, move |s| {
            // The bundle Secrets are the controller's own output.
            if s.owner_references().iter().any(|o| o.kind == "Broker") {
                return Vec::new();
            }
            let ns = s.meta().namespace.clone().unwrap_or_default();
            if !secrets_ctx.names_secret(&ns, &s.name_any()) {
                return Vec::new();
            }
            brokers_in_3(Some(ns))
        })
        .with_config(controller_config())
        .shutdown_on_signal()
        .run(reconcile_broker, error_policy, ctx.clone())
        .for_each(|_| futures_util::future::ready(()));

    let users_store = stores.users.clone();
    let siblings_store = stores.users.clone();
    let broker_facts = streams::OnChange::new(stores.brokers.clone(), BrokerFacts::of);
    // An MqttUser's status is the controller's own output: its writes do not wake it.
    let user_specs = streams::OnChange::new(stores.users.clone(), |u: &MqttUser| {
        (
            u.metadata.generation,
            u.metadata.deletion_timestamp.is_some(),
        )
    });
    let users_for_users =
        users_for_users.try_filter(move |u| futures_util::future::ready(user_specs.changed(u)));
    let user_ctl = Controller::for_stream(users_for_users, stores.users.clone())
        .watches_stream(brokers_for_users, move |b| {
            if !broker_facts.changed(&b) {
                return Vec::new();
            }
            let ns = namespace_of(&b);
            let name = b.name_any();
            users_store
                .state()
                .into_iter()
                .filter(|u| namespace_of(u.as_ref()) == ns && u.spec.broker_ref == name)
                .map(|u| ObjectRef::from_obj(u.as_ref()))
                .collect::<Vec<_>>()
        })
        // Two MqttUsers claiming one username are both in conflict: a change of either
        // (or its deletion) changes the other's status.
        .watches_stream(users_for_siblings, move |u| {
            let ns = namespace_of(&u);
            let name = u.name_any();
            let username = u.username();
            siblings_store
                .state()
                .into_iter()
                .filter(|o| {
                    namespace_of(o.as_ref()) == ns
                        && o.spec.broker_ref == u.spec.broker_ref
                        && o.username() == username
                        && o.name_any() != name
                })
                .map(|o| ObjectRef::from_obj(o.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(controller_config())
        .shutdown_on_signal()
        .run(reconcile_user, error_policy, ctx.clone())
        .for_each(|_| futures_util::future::ready(()));

    let bridge_ctl = Controller::for_stream(bridges_for_bridges, stores.bridges.clone())
        .with_config(controller_config())
        .shutdown_on_signal()
        .run(reconcile_bridge, error_policy, ctx.clone())
        .for_each(|_| futures_util::future::ready(()));

    let certificates_store = stores.certificates.clone();
    let cert_ctl =
        Controller::for_stream(certificates_for_certificates, stores.certificates.clone())
            // Secrets by metadata: a Certificate's own (a deleted or changed pair is issued
            // again) and those its spec names (a private CA replaced is used at once, as a
            // folder edit is in `edgemq run`).
            .watches_stream(secrets_for_certificates, move |s| {
                let ns = s.namespace().unwrap_or_default();
                let name = s.name_any();
                certificates_store
                    .state()
                    .into_iter()
                    .filter(|c| namespace_of(c.as_ref()) == ns)
                    .filter(|c| index::secrets_of_certificate(c).contains(&name))
                    .map(|c| ObjectRef::from_obj(c.as_ref()))
                    .collect::<Vec<_>>()
            })
            // A Bridge presenting a Certificate shapes its generated AWS IoT policy.
            .watches_stream(bridges_for_certificates, |b| certificates_named_by(&b))
            // ACME tasks say when they stored a pair or failed.
            .reconcile_on(futures_util::stream::unfold(
                acme_woken,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            ))
            .with_config(controller_config())
            .shutdown_on_signal()
            .run(super::certificates::reconcile, error_policy, ctx.clone())
            .for_each(|_| futures_util::future::ready(()));

    let sweeper = tokio::spawn(forget_deleted_objects(ctx.clone()));
    let started = Instant::now();
    tokio::join!(broker_ctl, user_ctl, bridge_ctl, cert_ctl);
    sweeper.abort();
    for w in watches {
        w.abort();
    }
    tracing::info!(seconds = started.elapsed().as_secs(), "controllers stopped");
    Ok(())
}
