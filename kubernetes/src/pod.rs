//! `edgemq broker`: the process of a Broker's pod.
//!
//! It reads its bundle Secret and every Secret the bundle names **through the API**
//! (one watch per Secret, by name), so a change is applied within a second instead of
//! after the kubelet's volume sync, and it needs a Role that names just those Secrets.
//! The bundle runs on the same [`Engine`] as `edgemq run`; everything is applied live.
//!
//! ```text
//!  watch bundle Secret ──┐
//!  watch Secret A, B… ───┴─► (settle 50 ms) ─► resolve ─► Engine::apply
//!                                                     └─► status: Broker configHash,
//!                                                         connections; each Bridge
//! ```
//!
//! An apply that failed is tried again with backoff (5 s doubling to 60 s) even when
//! nothing changes: a pod that replaces a deleted one starts while the old pod may still
//! hold the volume's stores (retained messages, bridge queues), which then cannot be
//! opened for a moment.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use kube::Client;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tokio::sync::{mpsc, RwLock};
use tokio::task::JoinHandle;

use super::bundle::{PodBundle, BUNDLE_KEY};
use super::desired::bundle_secret_name;
use super::status::shows;
use super::POD_FIELD_MANAGER;
use edgemq::api::{Bridge, Broker};
use edgemq::metrics::Metrics;
use edgemq::runtime::{self, Engine, Materials};
use edgemq::status::kinds;
use edgemq::tls::TlsMaterial;

/// Options of `edgemq broker`.
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    /// Namespace of the Broker.
    pub namespace: String,
    /// Name of the Broker.
    pub broker: String,
    /// Where retained messages and bridge queues live (the pod's volume).
    pub state_dir: PathBuf,
    /// Operations endpoint (probes, metrics).
    pub http: SocketAddr,
}

/// Values of the Secrets the pod has read, by Secret name then key.
type SecretValues = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// The pod's material: Secrets read through the API; a Certificate's pair is in the
/// Secret the bundle maps it to.
struct PodMaterials<'a> {
    secrets: &'a SecretValues,
    certificate_secrets: &'a BTreeMap<String, String>,
}

impl PodMaterials<'_> {
    fn text(&self, secret: &str, key: &str) -> Option<String> {
        self.secrets
            .get(secret)
            .and_then(|s| s.get(key))
            .and_then(|v| String::from_utf8(v.clone()).ok())
    }
    fn certificate_secret(&self, name: &str) -> String {
        self.certificate_secrets
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_string())
    }
}

impl Materials for PodMaterials<'_> {
    fn secret_value(&mut self, _namespace: &str, name: &str, key: &str) -> Option<Vec<u8>> {
        self.secrets.get(name).and_then(|s| s.get(key)).cloned()
    }
    fn certificate(&mut self, _namespace: &str, name: &str) -> Result<TlsMaterial, String> {
        let secret = self.certificate_secret(name);
        match (self.text(&secret, "tls.crt"), self.text(&secret, "tls.key")) {
            (Some(cert_pem), Some(key_pem)) => Ok(TlsMaterial { cert_pem, key_pem }),
            _ => Err(format!(
                "not issued yet (Secret {secret} has no tls.crt and tls.key)"
            )),
        }
    }
    fn certificate_ca(&mut self, _namespace: &str, name: &str) -> Option<String> {
        self.text(&self.certificate_secret(name), "ca.crt")
    }
    fn certificate_endpoint(&mut self, _namespace: &str, name: &str) -> Option<String> {
        self.text(&self.certificate_secret(name), super::awsiot::ENDPOINT_KEY)
    }
    fn certificate_thing_name(&mut self, _namespace: &str, name: &str) -> Option<String> {
        self.text(&self.certificate_secret(name), super::fleet::THING_NAME_KEY)
    }
}

/// What the pod knows.
#[derive(Default)]
struct State {
    bundle: Option<PodBundle>,
    /// A bundle Secret that could not be read, and why.
    bundle_error: Option<String>,
    secrets: SecretValues,
    /// Secrets whose watch has reported at least once (present or not).
    seen: BTreeSet<String>,
    /// Hash of the bundle running now.
    applied: Option<String>,
    /// Why the current bundle is not running, if it is not.
    apply_error: Option<String>,
    /// When to try again after an apply that failed in part.
    retry: Retry,
    /// Bridges of the bundle that are not running, and why (by `namespace/name`).
    bridge_errors: BTreeMap<String, String>,
    /// The pod this one handed its stores to: it serves nothing more and is not ready.
    handed_over_to: Option<String>,
}

/// When an apply that failed (in whole or in part) is tried again.
#[derive(Debug, Default)]
struct Retry {
    at: Option<std::time::Instant>,
    delay: Duration,
}

impl Retry {
    const FIRST: Duration = Duration::from_secs(5);
    const MAX: Duration = Duration::from_secs(60);

    /// Records the outcome of an apply at `now`.
    fn after(&mut self, failed: bool, now: std::time::Instant) {
        if failed {
            self.delay = if self.delay.is_zero() {
                Self::FIRST
            } else {
                (self.delay * 2).min(Self::MAX)
            };
            self.at = Some(now + self.delay);
        } else {
            *self = Retry::default();
        }
    }

    /// Whether a retry is due at `now`.
    fn due(&self, now: std::time::Instant) -> bool {
        self.at.is_some_and(|t| now >= t)
    }
}

struct Pod {
    /// This pod's name, as a hand-over request names it.
    name: String,
    opts: BrokerOptions,
    client: Client,
    engine: Engine,
    state: RwLock<State>,
}

impl edgemq::http::Health for Pod {
    async fn probe(&self) -> Vec<String> {
        self.engine.probe().await
    }
    async fn not_ready(&self) -> Option<String> {
        let s = self.state.read().await;
        if let Some(to) = &s.handed_over_to {
            return Some(format!("handed its stores over to pod {to}"));
        }
        match (&s.applied, &s.bundle_error, &s.apply_error) {
            (Some(_), _, _) => None,
            (None, Some(e), _) | (None, None, Some(e)) => Some(e.clone()),
            (None, None, None) => Some("no configuration applied yet".into()),
        }
    }
    async fn report(&self) -> Value {
        let s = self.state.read().await;
        json!({
            "broker": format!("{}/{}", self.opts.namespace, self.opts.broker),
            "configHash": s.applied,
            "desiredConfigHash": s.bundle.as_ref().map(|b| b.bundle.hash()),
            "bundleError": s.bundle_error,
            "applyError": s.apply_error,
            "brokers": self.engine.broker_status().await,
            "bridges": self.engine.bridge_status().await,
        })
    }
}

/// Parses a bundle Secret.
pub fn parse_bundle(secret: &Secret) -> Result<PodBundle, String> {
    let raw = secret
        .data
        .as_ref()
        .and_then(|d| d.get(BUNDLE_KEY))
        .map(|v| v.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(BUNDLE_KEY))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| format!("the bundle Secret has no key {BUNDLE_KEY}"))?;
    serde_json::from_slice(&raw).map_err(|e| format!("the bundle Secret cannot be read: {e}"))
}

fn values_of(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

/// Watches one Secret by name; each change updates the state and wakes the apply loop.
fn watch_secret(pod: Arc<Pod>, name: String, wake: mpsc::UnboundedSender<()>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<Secret> = Api::namespaced(pod.client.clone(), &pod.opts.namespace);
        let bundle_name = bundle_secret_name(&pod.opts.broker);
        let stream = watcher::watch_object(api, &name);
        futures_util::pin_mut!(stream);
        let mut backoff = Duration::from_millis(500);
        loop {
            match stream.next().await {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(secret = %name, error = %e, "watch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Some(Ok(obj)) => {
                    backoff = Duration::from_millis(500);
                    let mut s = pod.state.write().await;
                    if name == bundle_name {
                        match obj.as_ref().map(parse_bundle) {
                            Some(Ok(b)) => {
                                s.bundle = Some(b);
                                s.bundle_error = None;
                            }
                            Some(Err(e)) => {
                                tracing::error!("{e}; keeping the running configuration");
                                s.bundle_error = Some(e);
                            }
                            None => s.bundle_error = Some(format!("Secret {name} not found")),
                        }
                    } else {
                        match obj {
                            Some(o) => {
                                s.secrets.insert(name.clone(), values_of(&o));
                            }
                            None => {
                                s.secrets.remove(&name);
                            }
                        }
                        s.seen.insert(name.clone());
                    }
                    drop(s);
                    let _ = wake.send(());
                }
            }
        }
    })
}

impl Pod {
    async fn handed_over(&self) -> bool {
        self.state.read().await.handed_over_to.is_some()
    }

    /// One step of the hand-over between an old and a new pod on one volume (see
    /// [`super::handover`]): the holder of the stores lets go when another pod asks;
    /// a pod that finds them held asks, and tries again every 100 ms.
    async fn handover_step(&self, requested: &mut Option<std::time::Instant>) {
        use super::handover;
        let dir = &self.opts.state_dir;
        let (running, held) = {
            let s = self.state.read().await;
            if s.handed_over_to.is_some() {
                return;
            }
            let held = s.apply_error.as_deref().is_some_and(handover::store_held);
            (s.applied.is_some(), held)
        };
        if running {
            if requested.take().is_some() {
                handover::clear(dir);
                tracing::info!("stores taken over from the previous pod");
            }
            let Some(to) = handover::requested_by(dir, &self.name, std::time::SystemTime::now())
            else {
                return;
            };
            tracing::info!(to = %to, "pod {to} asks for the stores: handing them over");
            self.engine.shutdown().await;
            let mut s = self.state.write().await;
            s.applied = None;
            s.handed_over_to = Some(to.clone());
            tracing::info!(to = %to, "stores saved and closed; this pod is no longer ready and waits for its end");
        } else if held || requested.is_some() {
            // Until the stores open here, every 100 ms (a try may also fail on a
            // listener port the previous try has not released yet).
            if requested.is_none_or(|t| t.elapsed() >= handover::RENEW) {
                match handover::request(dir, &self.name) {
                    Ok(()) if requested.is_none() => {
                        tracing::info!(
                            "the stores are held by the previous pod: asked it to hand them over"
                        )
                    }
                    Ok(()) => {}
                    Err(e) => tracing::warn!(error = %e, "could not ask for the stores"),
                }
                *requested = Some(std::time::Instant::now());
            }
            self.apply().await;
        }
    }

    /// Applies the current bundle with the Secrets read so far.
    async fn apply(&self) {
        let s = self.state.read().await;
        let Some(bundle) = s.bundle.clone() else {
            return;
        };
        let missing: Vec<&String> = bundle
            .secrets
            .iter()
            .filter(|n| !s.seen.contains(*n))
            .collect();
        if !missing.is_empty() {
            // Wait for every watch's first answer, or a half-read set would be applied.
            return;
        }
        let hash = bundle.bundle.hash();
        let key = format!("{}/{}", bundle.bundle.namespace, bundle.bundle.name);
        let desired = {
            let mut m = PodMaterials {
                secrets: &s.secrets,
                certificate_secrets: &bundle.certificate_secrets,
            };
            runtime::resolve_all(
                &BTreeMap::from([(key.clone(), bundle.bundle.clone())]),
                &mut m,
            )
        };
        drop(s);
        let started = std::time::Instant::now();
        let applied = self.engine.apply(desired).await;
        let mut s = self.state.write().await;
        s.retry
            .after(!applied.errors.is_empty(), std::time::Instant::now());
        s.bridge_errors = applied
            .bridges
            .iter()
            .filter_map(|(k, r)| r.as_ref().err().map(|e| (k.clone(), e.clone())))
            .collect();
        match applied.brokers.get(&key) {
            Some(Ok(_)) => {
                if s.applied.as_deref() != Some(hash.as_str()) || !applied.changes.is_empty() {
                    tracing::info!(config = %&hash[..12], millis = started.elapsed().as_millis() as u64, changes = applied.changes.len(), "configuration applied");
                }
                s.applied = Some(hash);
                s.apply_error = None;
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "configuration not applied; the broker keeps its last good configuration");
                s.apply_error = Some(e.clone());
            }
            None => {}
        }
    }

    /// Writes the pod's part of the Broker's and Bridges' status when it changed.
    async fn report(&self, last: &mut Option<Value>) {
        let (applied, bundle, bridge_errors) = {
            let s = self.state.read().await;
            (s.applied.clone(), s.bundle.clone(), s.bridge_errors.clone())
        };
        let brokers = self.engine.broker_status().await;
        let connections = brokers
            .values()
            .map(|b| b.router.connected as u64)
            .sum::<u64>();
        let mine = json!({"configHash": applied, "connections": connections});
        if last.as_ref() != Some(&mine) {
            let api: Api<Broker> = Api::namespaced(self.client.clone(), &self.opts.namespace);
            let patch = json!({
                "apiVersion": edgemq::api::API_VERSION,
                "kind": "Broker",
                "status": mine,
            });
            match api
                .patch_status(
                    &self.opts.broker,
                    &PatchParams::apply(POD_FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                Ok(_) => *last = Some(mine),
                Err(e) => tracing::warn!(error = %e, "could not report the Broker's status"),
            }
        }
        let Some(bundle) = bundle else { return };
        let statuses = self.engine.bridge_status().await;
        let api: Api<Bridge> = Api::namespaced(self.client.clone(), &self.opts.namespace);
        for (key, plan) in &bundle.bundle.bridges {
            let full = format!("{}/{}", plan.namespace, key);
            let (st, error) = (statuses.get(&full), bridge_errors.get(&full));
            if st.is_none() && error.is_none() {
                continue;
            }
            let current = match api.get_status(key).await {
                Ok(b) => serde_json::to_value(&b)
                    .ok()
                    .and_then(|v| v.get("status").cloned()),
                Err(e) => {
                    tracing::debug!(bridge = %key, error = %e, "could not read the Bridge's status");
                    continue;
                }
            };
            let wanted = match (st, error) {
                (Some(st), _) => bridge_status(st, plan.generation, current.as_ref()),
                (None, Some(e)) => bridge_error_status(e, plan.generation, current.as_ref()),
                (None, None) => continue,
            };
            if shows(current.as_ref(), &wanted) {
                continue;
            }
            let patch =
                json!({"apiVersion": edgemq::api::API_VERSION, "kind": "Bridge", "status": wanted});
            if let Err(e) = api
                .patch_status(
                    key,
                    &PatchParams::apply(POD_FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                tracing::warn!(bridge = %key, error = %e, "could not report the Bridge's status");
            }
        }
    }
}

/// A Bridge's status as the pod that runs it sees it ([`kinds::bridge_status`]).
pub fn bridge_status(
    st: &edgemq::bridge::BridgeRuntimeStatus,
    generation: Option<i64>,
    current: Option<&Value>,
) -> Value {
    let previous = super::status::previous_ready(current);
    let now = edgemq::certs::rfc3339(time::OffsetDateTime::now_utc());
    let status = kinds::bridge_status(st, generation, previous.as_ref(), &now);
    serde_json::to_value(status).unwrap_or_default()
}

/// The status of a Bridge this pod cannot run (its queue cannot be opened, its TLS
/// material is unusable), with the reason `edgemq run` gives.
pub fn bridge_error_status(error: &str, generation: Option<i64>, current: Option<&Value>) -> Value {
    let previous = super::status::previous_ready(current);
    let now = edgemq::certs::rfc3339(time::OffsetDateTime::now_utc());
    let status = kinds::bridge_error_status(error, generation, previous.as_ref(), &now);
    serde_json::to_value(status).unwrap_or_default()
}

/// `edgemq broker`: runs one Broker from its bundle Secret until SIGTERM.
pub async fn run_broker(opts: BrokerOptions) -> anyhow::Result<()> {
    edgemq::private_fs::prepare_state_dir(&opts.state_dir)
        .map_err(|e| anyhow::anyhow!("state directory {}: {e}", opts.state_dir.display()))?;
    let client = super::kubeconfig::client().await?;
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let pod = Arc::new(Pod {
        name: super::handover::pod_name(),
        engine: Engine::new(&opts.state_dir, metrics),
        client,
        opts: opts.clone(),
        state: RwLock::new(State::default()),
    });
    edgemq::http::serve(
        opts.http,
        edgemq::http::Ops {
            runtime: pod.clone(),
            registry: Arc::new(registry),
        },
    )
    .await?;
    tracing::info!(broker = %format!("{}/{}", opts.namespace, opts.broker), "reading the bundle Secret {}", bundle_secret_name(&opts.broker));

    let (wake, mut woken) = mpsc::unbounded_channel::<()>();
    let mut watches: BTreeMap<String, JoinHandle<()>> = BTreeMap::new();
    let bundle_name = bundle_secret_name(&opts.broker);
    watches.insert(
        bundle_name.clone(),
        watch_secret(pod.clone(), bundle_name.clone(), wake.clone()),
    );
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut last_report = None;
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    let mut handover_tick = tokio::time::interval(Duration::from_millis(100));
    handover_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut requested: Option<std::time::Instant> = None;
    loop {
        let handed_over = pod.handed_over().await;
        tokio::select! {
            _ = handover_tick.tick() => pod.handover_step(&mut requested).await,
            Some(()) = woken.recv(), if !handed_over => {
                // Let a burst of updates settle, then apply once.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while woken.try_recv().is_ok() {}
                let wanted: BTreeSet<String> = pod.state.read().await.bundle.as_ref().map(|b| b.secrets.clone()).unwrap_or_default();
                watches.retain(|name, h| {
                    let keep = *name == bundle_name || wanted.contains(name);
                    if !keep { h.abort(); }
                    keep
                });
                let mut added = false;
                for name in &wanted {
                    if !watches.contains_key(name) {
                        watches.insert(name.clone(), watch_secret(pod.clone(), name.clone(), wake.clone()));
                        added = true;
                    }
                }
                if added {
                    let mut s = pod.state.write().await;
                    let known: BTreeSet<String> = watches.keys().cloned().collect();
                    s.seen.retain(|n| known.contains(n));
                    s.secrets.retain(|n, _| known.contains(n));
                }
                pod.apply().await;
                pod.report(&mut last_report).await;
            }
            _ = tick.tick(), if !handed_over => {
                if pod.state.read().await.retry.due(std::time::Instant::now()) {
                    tracing::info!("trying the configuration again");
                    pod.apply().await;
                }
                pod.report(&mut last_report).await;
            }
            _ = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down");
    for (_, h) in watches {
        h.abort();
    }
    pod.engine.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_failed_apply_is_retried_with_backoff_and_success_stops_retrying() {
        let t0 = Instant::now();
        let mut r = Retry::default();
        assert!(!r.due(t0), "nothing to retry before anything failed");
        r.after(true, t0);
        assert!(!r.due(t0 + Duration::from_secs(4)));
        assert!(r.due(t0 + Duration::from_secs(5)));
        let mut delays = vec![];
        for _ in 0..6 {
            r.after(true, t0);
            delays.push(r.delay.as_secs());
        }
        assert_eq!(delays, [10, 20, 40, 60, 60, 60]);
        r.after(false, t0);
        assert!(!r.due(t0 + Duration::from_secs(3600)));
        r.after(true, t0);
        assert_eq!(r.delay, Duration::from_secs(5), "backoff starts over");
    }

    #[test]
    fn a_bridge_that_cannot_start_says_why_and_keeps_its_transition_time() {
        let first = bridge_error_status("Database already open", Some(2), None);
        let cond = &first["conditions"][0];
        assert_eq!(cond["status"], "False");
        assert_eq!(cond["reason"], "ConfigError");
        assert_eq!(cond["message"], "Database already open");
        assert_eq!(first["connected"], false);
        assert_eq!(first["observedGeneration"], 2);
        let again = bridge_error_status("Database already open", Some(2), Some(&first));
        assert_eq!(
            again["conditions"][0]["lastTransitionTime"],
            cond["lastTransitionTime"]
        );
        assert!(super::super::status::shows(Some(&first), &again));
    }
}
