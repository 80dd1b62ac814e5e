//! Standalone mode: a folder of YAML runs brokers in this process and every later
//! edit of the folder is applied live.
//!
//! ```text
//!  folder change ──► load + validate ──► plan ──► resolve certificates ──► apply
//!        (watch)        │ errors: logged with file:line, counted; the last good
//!                       ▼ config keeps running; the fix is applied when it comes
//!                    status report (state/status.json, /status)
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::Watcher;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, Mutex, RwLock};

use crate::api::SecretKeyRef;
use crate::bridge::tls::ClientTls;
use crate::bridge::{BridgeRuntime, ResolvedBridge};
use crate::broker::{BrokerRuntime, TlsMaterial};
use crate::certs::awsiot_jobs::AwsIotState;
use crate::certs::{self, CertInfo};
use crate::load::{self, Resources};
use crate::metrics::Metrics;
use crate::plan::{self, BridgePlan, BrokerBundle, CaSource, RemoteAddress, TlsSource};
use crate::status::{ready_condition, ConfigStatus, ResourceStatus, StatusReport};

/// Options of `edgemq run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Folder of YAML manifests (usually a git checkout).
    pub config_dir: PathBuf,
    /// Optional folder of Secret manifests kept out of git.
    pub secrets_dir: Option<PathBuf>,
    /// State directory: issued certificates, retained messages, status.json.
    pub state_dir: PathBuf,
    /// Address of the operations endpoint.
    pub http: SocketAddr,
}

/// Loads a folder and plans its brokers; every error, as `file:line: Kind/name: message`.
pub fn load_and_plan(
    config_dir: &Path,
    secrets_dir: Option<&Path>,
) -> Result<(Resources, BTreeMap<String, BrokerBundle>), Vec<String>> {
    let res = load::load(config_dir, secrets_dir)
        .map_err(|e| e.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    let bundles =
        plan::plan(&res).map_err(|e| e.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    Ok((res, bundles))
}

/// The values of every Secret of a namespace, for issuers that need them.
fn secrets_of(res: &Resources, namespace: &str) -> certs::Secrets {
    let mut out = BTreeMap::new();
    for s in res.secrets().filter(|s| s.meta.namespace == namespace) {
        let name = &s.meta.name;
        for (k, v) in s.object.data.iter().flatten() {
            out.insert((name.clone(), k.clone()), v.0.clone());
        }
        for (k, v) in s.object.string_data.iter().flatten() {
            out.insert((name.clone(), k.clone()), v.as_bytes().to_vec());
        }
    }
    certs::Secrets(out)
}

/// Certificates resolved during one reload, by (namespace, name): each is issued or
/// read once per reload however many listeners and bridges use it. ACME certificates
/// are never waited for: the stored pair is returned and issuance runs in the
/// background (see [`certs::Manager`]).
struct CertResolver<'a> {
    res: &'a Resources,
    manager: &'a certs::Manager,
    now: time::OffsetDateTime,
    seen: BTreeMap<(String, String), Result<(TlsMaterial, CertInfo), String>>,
}

impl<'a> CertResolver<'a> {
    fn new(res: &'a Resources, manager: &'a certs::Manager, now: time::OffsetDateTime) -> Self {
        CertResolver {
            res,
            manager,
            now,
            seen: BTreeMap::new(),
        }
    }

    /// The key pair of Certificate `namespace/name`: issued or renewed in place when
    /// due (selfSigned, ca), or the stored one (acme).
    fn material(&mut self, namespace: &str, name: &str) -> Result<TlsMaterial, String> {
        let key = (namespace.to_string(), name.to_string());
        if !self.seen.contains_key(&key) {
            let r = match self.res.certificate(namespace, name) {
                Some(cert) => {
                    self.manager
                        .material(cert, &secrets_of(self.res, namespace), self.now)
                }
                None => Err(format!("Certificate {name} not found")),
            };
            if let Err(e) = &r {
                tracing::warn!(certificate = %name, error = %e, "certificate not available");
            }
            self.seen.insert(key.clone(), r);
        }
        match &self.seen[&key] {
            Ok((m, _)) => Ok(m.clone()),
            Err(e) => Err(e.clone()),
        }
    }

    /// Sets the result of a Certificate obtained elsewhere (AWS IoT, in the background).
    fn preset(&mut self, namespace: &str, name: &str, r: Result<(TlsMaterial, CertInfo), String>) {
        self.seen
            .insert((namespace.to_string(), name.to_string()), r);
    }

    /// What status shows for a Certificate: `None` when nothing used it.
    fn result(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<&Result<(TlsMaterial, CertInfo), String>> {
        self.seen.get(&(namespace.to_string(), name.to_string()))
    }
}

/// Name of the status file in the state directory, read by `edgemq status`.
pub const STATUS_FILE: &str = "status.json";

/// The brokers of this process and their status.
pub struct Runtime {
    opts: RunOptions,
    brokers: Mutex<BTreeMap<String, BrokerRuntime>>,
    bridges: Mutex<BTreeMap<String, BridgeRuntime>>,
    report: RwLock<StatusReport>,
    metrics: Arc<Metrics>,
    applied_once: AtomicBool,
    certs: certs::Manager,
    /// Earliest renewal time of the certificates issued in place (selfSigned, ca);
    /// ACME certificates have their own timers.
    next_renewal: std::sync::Mutex<Option<time::OffsetDateTime>>,
}

/// Outcome of one reload, for logs and tests.
#[derive(Debug, Default)]
pub struct ReloadOutcome {
    /// The folder was valid.
    pub valid: bool,
    /// Changes applied, one line each.
    pub changes: Vec<String>,
    /// Errors (validation or apply).
    pub errors: Vec<String>,
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Runtime {
    /// A runtime with no broker started yet. `reload` is signalled when a certificate
    /// issued in the background is ready to be applied.
    pub fn new(
        opts: RunOptions,
        metrics: Arc<Metrics>,
        reload: mpsc::UnboundedSender<()>,
    ) -> Runtime {
        Runtime {
            certs: certs::Manager::new(&opts.state_dir, reload),
            opts,
            brokers: Mutex::new(BTreeMap::new()),
            bridges: Mutex::new(BTreeMap::new()),
            report: RwLock::new(StatusReport::default()),
            metrics,
            applied_once: AtomicBool::new(false),
            next_renewal: std::sync::Mutex::new(None),
        }
    }

    /// Keys of brokers whose publish/subscribe round trip failed (empty: healthy).
    pub async fn probe(&self) -> Vec<String> {
        let brokers = self.brokers.lock().await;
        brokers
            .iter()
            .filter(|(_, b)| !b.probe())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Why the process is not ready, or `None` when every broker runs its config.
    pub async fn not_ready(&self) -> Option<String> {
        if !self.applied_once.load(Ordering::Acquire) {
            return Some("no valid configuration applied yet".into());
        }
        let report = self.report.read().await;
        let failing: Vec<String> = report
            .resources
            .iter()
            .filter(|r| r.kind == "Broker" && r.ready().is_some_and(|c| c.status != "True"))
            .map(|r| format!("{}/{}", r.namespace, r.name))
            .collect();
        (!failing.is_empty()).then(|| format!("brokers not ready: {}", failing.join(", ")))
    }

    /// The current status report, with each running broker's live counters.
    pub async fn report(&self) -> StatusReport {
        let mut report = self.report.read().await.clone();
        let brokers = self.brokers.lock().await;
        for r in report.resources.iter_mut().filter(|r| r.kind == "Broker") {
            if let Some(rt) = brokers.get(&format!("{}/{}", r.namespace, r.name)) {
                r.details = serde_json::to_value(rt.status()).unwrap_or_default();
            }
        }
        drop(brokers);
        let bridges = self.bridges.lock().await;
        for r in report.resources.iter_mut().filter(|r| r.kind == "Bridge") {
            if let Some(rt) = bridges.get(&format!("{}/{}", r.namespace, r.name)) {
                let st = rt.status();
                let (ready, reason, message) = bridge_condition(&st);
                if let Some(c) = r.conditions.iter_mut().find(|c| c.type_ == "Ready") {
                    let status = if ready { "True" } else { "False" };
                    if c.status != status {
                        c.last_transition_time = st.since.clone();
                    }
                    c.status = status.into();
                    c.reason = reason.into();
                    c.message = message;
                }
                r.details = serde_json::to_value(st).unwrap_or_default();
            }
        }
        report
    }

    /// Reads the folder and applies it. Invalid content changes nothing that runs.
    pub async fn reload(&self) -> ReloadOutcome {
        let started = Instant::now();
        let mut outcome = ReloadOutcome::default();
        let (res, bundles) =
            match load_and_plan(&self.opts.config_dir, self.opts.secrets_dir.as_deref()) {
                Ok(v) => v,
                Err(errors) => {
                    outcome.errors = errors;
                    return self.refuse(outcome).await;
                }
            };
        outcome.valid = true;

        // Certificates: issue or reuse every one a listener needs. AWS IoT work runs in
        // the background; what is on disk is used now.
        let now = time::OffsetDateTime::now_utc();
        let mut certs = CertResolver::new(&res, &self.certs, now);
        let aws_states = self.certs.aws_iot(&res);
        for ((ns, name), st) in &aws_states {
            let r = match (&st.issued, &st.error) {
                (Some(i), _) => Ok((i.material.clone(), i.info.clone())),
                (None, Some(e)) => Err(e.clone()),
                (None, None) => {
                    Err("the AWS IoT certificate is being created in the background".into())
                }
            };
            certs.preset(ns, name, r);
        }
        let mut broker_results: BTreeMap<String, Result<String, String>> = BTreeMap::new();
        let mut brokers = self.brokers.lock().await;
        for (key, bundle) in &bundles {
            let tls = match resolve_tls(bundle, &res, &mut certs) {
                Ok(t) => t,
                Err(e) => {
                    outcome.errors.push(format!("Broker/{key}: {e}"));
                    broker_results.insert(key.clone(), Err(e));
                    continue;
                }
            };
            let result = match brokers.get_mut(key) {
                Some(rt) => {
                    if rt.bundle() == bundle && rt.tls_material() == &tls {
                        Ok(Vec::new())
                    } else {
                        rt.apply(bundle.clone(), tls).await
                    }
                }
                None => match BrokerRuntime::start(
                    bundle.clone(),
                    tls,
                    Some(&self.opts.state_dir),
                    &self.metrics,
                )
                .await
                {
                    Ok(rt) => {
                        brokers.insert(key.clone(), rt);
                        Ok(vec!["started".to_string()])
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(changes) => {
                    for c in changes {
                        tracing::info!(broker = %key, "{c}");
                        outcome.changes.push(format!("Broker/{key}: {c}"));
                    }
                    broker_results.insert(key.clone(), Ok(bundle.hash()));
                }
                Err(e) => {
                    tracing::error!(broker = %key, error = %e, "change not applied; the broker keeps its last good configuration");
                    outcome.errors.push(format!("Broker/{key}: {e}"));
                    broker_results.insert(key.clone(), Err(e.to_string()));
                }
            }
        }
        let removed: Vec<String> = brokers
            .keys()
            .filter(|k| !bundles.contains_key(*k))
            .cloned()
            .collect();
        for key in removed {
            if let Some(rt) = brokers.remove(&key) {
                rt.shutdown().await;
                outcome.changes.push(format!("Broker/{key}: removed"));
            }
        }

        // Bridges: each one is compared on what it runs (plan plus resolved secrets,
        // address and TLS material) and restarted only when that changed.
        let mut bridge_results: BTreeMap<String, Result<(), String>> = BTreeMap::new();
        let mut bridges = self.bridges.lock().await;
        let mut wanted = BTreeMap::new();
        for (bkey, bundle) in &bundles {
            for plan in bundle.bridges.values() {
                let key = format!("{}/{}", plan.namespace, plan.name);
                let Some(broker) = brokers
                    .get(bkey)
                    .filter(|_| broker_results.get(bkey).is_some_and(|r| r.is_ok()))
                else {
                    bridge_results
                        .insert(key, Err(format!("Broker {} is not running", bundle.name)));
                    continue;
                };
                match resolve_bridge(plan, &res, &mut certs, &self.opts.state_dir) {
                    Ok(cfg) => {
                        wanted.insert(key, (cfg, broker.shared().clone()));
                    }
                    Err(e) => {
                        tracing::error!(bridge = %key, error = %e, "bridge not started");
                        outcome.errors.push(format!("Bridge/{key}: {e}"));
                        bridge_results.insert(key, Err(e));
                    }
                }
            }
        }
        let keys: Vec<String> = bridges.keys().cloned().collect();
        for key in keys {
            let keep = wanted.get(&key).is_some_and(|(cfg, shared)| {
                bridges[&key].config() == cfg && bridges[&key].serves(shared)
            });
            if !keep {
                if let Some(rt) = bridges.remove(&key) {
                    rt.stop().await;
                }
                let (ns, name) = key.split_once('/').unwrap_or(("default", &key));
                if res.bridge(ns, name).is_none() {
                    // The Bridge is gone from the folder: so is its queue.
                    let path = crate::bridge::queue_path(&self.opts.state_dir, ns, name);
                    if std::fs::remove_file(&path).is_ok() {
                        tracing::info!(bridge = %key, "bridge removed with its queue");
                    }
                    crate::metrics::BridgeMetrics::forget(&self.metrics, &key);
                    outcome.changes.push(format!("Bridge/{key}: removed"));
                }
            }
        }
        for (key, (cfg, shared)) in wanted {
            if bridges.contains_key(&key) {
                bridge_results.insert(key, Ok(()));
                continue;
            }
            match BridgeRuntime::start(cfg, shared, &self.opts.state_dir, &self.metrics) {
                Ok(rt) => {
                    bridges.insert(key.clone(), rt);
                    outcome.changes.push(format!("Bridge/{key}: started"));
                    bridge_results.insert(key, Ok(()));
                }
                Err(e) => {
                    tracing::error!(bridge = %key, error = %e, "bridge not started");
                    outcome.errors.push(format!("Bridge/{key}: {e}"));
                    bridge_results.insert(key, Err(e));
                }
            }
        }

        // Status of every resource.
        let previous = self.report.read().await.previous();
        let stamp = now_rfc3339();
        let mut resources = Vec::new();
        for b in res.brokers() {
            let key = format!("{}/{}", b.meta.namespace, b.meta.name);
            let (ready, reason, message, details) =
                match (broker_results.get(&key), brokers.get(&key)) {
                    (Some(Ok(_)), Some(rt)) => {
                        let st = rt.status();
                        (
                            true,
                            "Running",
                            format!(
                                "{} listener(s), config {}",
                                st.listeners.len(),
                                &st.config_hash[..12]
                            ),
                            serde_json::to_value(st).unwrap_or_default(),
                        )
                    }
                    (Some(Err(e)), Some(rt)) => (
                        false,
                        "ApplyFailed",
                        format!("{e}; running the previous configuration"),
                        serde_json::to_value(rt.status()).unwrap_or_default(),
                    ),
                    (Some(Err(e)), None) => {
                        (false, "StartFailed", e.clone(), serde_json::Value::Null)
                    }
                    _ => (false, "Unknown", String::new(), serde_json::Value::Null),
                };
            resources.push(status_of(
                "Broker", &b.meta, ready, reason, &message, details, &previous, &stamp,
            ));
        }
        for u in res.users() {
            let broker = &u.object.spec.broker_ref;
            let key = format!("{}/{}", u.meta.namespace, broker);
            let (ready, reason, message) = match broker_results.get(&key) {
                Some(Ok(_)) => (true, "Active", format!("can log in to Broker {broker}")),
                Some(Err(_)) => (
                    false,
                    "BrokerNotReady",
                    format!("Broker {broker} did not apply its configuration"),
                ),
                None => (
                    false,
                    "BrokerNotFound",
                    format!("Broker {broker} not found"),
                ),
            };
            resources.push(status_of(
                "MqttUser",
                &u.meta,
                ready,
                reason,
                &message,
                serde_json::Value::Null,
                &previous,
                &stamp,
            ));
        }
        for br in res.bridges() {
            let key = format!("{}/{}", br.meta.namespace, br.meta.name);
            let (ready, reason, message, details) =
                match (bridge_results.get(&key), bridges.get(&key)) {
                    (Some(Ok(())), Some(rt)) => {
                        let st = rt.status();
                        let (ready, reason, message) = bridge_condition(&st);
                        (
                            ready,
                            reason,
                            message,
                            serde_json::to_value(st).unwrap_or_default(),
                        )
                    }
                    (Some(Err(e)), _) => (false, "ConfigError", e.clone(), serde_json::Value::Null),
                    _ => (false, "Unknown", String::new(), serde_json::Value::Null),
                };
            resources.push(status_of(
                "Bridge", &br.meta, ready, reason, &message, details, &previous, &stamp,
            ));
        }
        // Every Certificate is kept issued, used by a listener or not (device and
        // bridge client certificates are read from the state directory).
        for c in res.certificates() {
            if c.object.spec.issuer.aws_iot.is_none() {
                let _ = certs.material(&c.meta.namespace, &c.meta.name);
            }
        }
        let next_renewal = res
            .certificates()
            .filter(|c| c.object.spec.issuer.acme.is_none())
            .filter_map(|c| match certs.result(&c.meta.namespace, &c.meta.name) {
                Some(Ok((_, info))) => certs::parse_rfc3339(&info.renewal_time),
                _ => None,
            })
            .min();
        if let Ok(mut n) = self.next_renewal.lock() {
            *n = next_renewal;
        }
        let cert_keys: Vec<String> = res
            .certificates()
            .map(|c| format!("{}/{}", c.meta.namespace, c.meta.name))
            .collect();
        self.certs.retain(&cert_keys);
        for c in res.certificates() {
            let key = format!("{}/{}", c.meta.namespace, c.meta.name);
            let progress = self.certs.progress(&key);
            let (ready, reason, message, details) =
                match aws_states.get(&(c.meta.namespace.clone(), c.meta.name.clone())) {
                    Some(st) => aws_iot_status(st),
                    None => certificate_status(
                        certs.result(&c.meta.namespace, &c.meta.name),
                        progress.as_ref(),
                        now,
                    ),
                };
            let label = crate::metrics::CertificateLabel {
                certificate: key.clone(),
            };
            match certs.result(&c.meta.namespace, &c.meta.name) {
                Some(Ok((_, info))) => {
                    if let Some(t) = certs::parse_rfc3339(&info.not_after) {
                        self.metrics
                            .certificate_expiration
                            .get_or_create(&label)
                            .set(t.unix_timestamp());
                    }
                }
                _ => {
                    self.metrics.certificate_expiration.remove(&label);
                }
            }
            self.metrics
                .certificate_renewal_failures
                .get_or_create(&label)
                .set(progress.map(|p| p.failures as i64).unwrap_or(0));
            resources.push(status_of(
                "Certificate",
                &c.meta,
                ready,
                reason,
                &message,
                details,
                &previous,
                &stamp,
            ));
        }
        drop(brokers);
        let elapsed = started.elapsed();
        let config = ConfigStatus {
            valid: true,
            errors: outcome.errors.clone(),
            applied_at: Some(stamp),
            last_apply_millis: Some(elapsed.as_millis() as u64),
        };
        self.publish_report(StatusReport { config, resources })
            .await;
        self.applied_once.store(true, Ordering::Release);
        if !outcome.changes.is_empty() {
            self.metrics.config_reloads.inc();
            tracing::info!(
                changes = outcome.changes.len(),
                millis = elapsed.as_millis() as u64,
                "configuration applied"
            );
        }
        if !outcome.errors.is_empty() {
            self.metrics.config_reload_errors.inc();
        }
        outcome
    }

    async fn refuse(&self, outcome: ReloadOutcome) -> ReloadOutcome {
        self.metrics.config_reload_errors.inc();
        for e in &outcome.errors {
            tracing::error!("{e}");
        }
        tracing::error!(
            errors = outcome.errors.len(),
            "configuration refused; the last good configuration keeps running"
        );
        let mut report = self.report.read().await.clone();
        report.config.valid = false;
        report.config.errors = outcome.errors.clone();
        self.publish_report(report).await;
        outcome
    }

    /// Rewrites the status file with live counters (bridge links go up and down
    /// between reloads), so `edgemq status` is never more than a few seconds old.
    pub async fn refresh_status_file(&self) {
        let report = self.report().await;
        self.write_status_file(&report);
    }

    fn write_status_file(&self, report: &StatusReport) {
        let path = self.opts.state_dir.join(STATUS_FILE);
        match serde_json::to_vec_pretty(report) {
            Ok(json) => {
                let tmp = path.with_extension("tmp");
                if let Err(e) =
                    std::fs::write(&tmp, json).and_then(|_| std::fs::rename(&tmp, &path))
                {
                    tracing::warn!(path = %path.display(), error = %e, "could not write the status file");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not encode the status"),
        }
    }

    async fn publish_report(&self, report: StatusReport) {
        self.write_status_file(&report);
        *self.report.write().await = report;
    }

    /// How long until the next reload is due: the earliest renewal time of a
    /// certificate issued in place, and at most a minute (status stays fresh).
    pub fn next_reload_in(&self) -> Duration {
        let minute = Duration::from_secs(60);
        let Some(at) = self.next_renewal.lock().ok().and_then(|n| *n) else {
            return minute;
        };
        let wait = at - time::OffsetDateTime::now_utc();
        Duration::try_from(wait)
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1))
            .min(minute)
    }

    /// Stops every bridge, then every broker.
    pub async fn shutdown(&self) {
        let mut bridges = self.bridges.lock().await;
        for (_, rt) in std::mem::take(&mut *bridges) {
            rt.stop().await;
        }
        drop(bridges);
        let mut brokers = self.brokers.lock().await;
        for (_, rt) in std::mem::take(&mut *brokers) {
            rt.shutdown().await;
        }
    }
}

/// Ready, reason, message and details of an `awsIot` Certificate.
fn aws_iot_status(st: &AwsIotState) -> (bool, &'static str, String, serde_json::Value) {
    let retry = st
        .retry_in_seconds
        .map(|s| format!("; retrying in {s}s"))
        .unwrap_or_default();
    match (&st.issued, &st.error) {
        (Some(i), err) => {
            let a = i.info.aws_iot.clone().unwrap_or_default();
            let mut message = format!(
                "AWS IoT certificate {} attached to thing {} and policy {}; endpoint {}",
                a.certificate_id, a.thing_name, a.policy_name, a.endpoint
            );
            if st.working {
                message.push_str("; updating in AWS");
            }
            if let Some(e) = err {
                message.push_str(&format!("; last AWS update failed: {e}{retry}"));
            }
            (
                true,
                "Issued",
                message,
                serde_json::to_value(&i.info).unwrap_or_default(),
            )
        }
        (None, Some(e)) => (
            false,
            "IssueFailed",
            format!("{e}{retry}"),
            serde_json::Value::Null,
        ),
        (None, None) => (
            false,
            "Issuing",
            "creating the AWS IoT certificate in the background".into(),
            serde_json::Value::Null,
        ),
    }
}

/// Ready, reason, message and details of a Certificate's status.
fn certificate_status(
    result: Option<&Result<(TlsMaterial, CertInfo), String>>,
    progress: Option<&certs::manager::Progress>,
    now: time::OffsetDateTime,
) -> (bool, &'static str, String, serde_json::Value) {
    let failing = progress.filter(|p| p.failures > 0);
    let details = |info: Option<&CertInfo>| {
        let mut v = serde_json::to_value(info).unwrap_or_default();
        if let (Some(p), serde_json::Value::Object(m)) = (progress, &mut v) {
            if let Ok(serde_json::Value::Object(pm)) = serde_json::to_value(p) {
                m.extend(pm);
            }
        }
        if info.is_none() {
            v = serde_json::to_value(progress).unwrap_or_default();
        }
        v
    };
    match result {
        Some(Ok((_, info))) if info.expires_in_seconds <= 0 => (
            false,
            "Expired",
            format!(
                "expired at {}{}",
                info.not_after,
                failing
                    .and_then(|p| p.last_failure.as_deref())
                    .map(|f| format!("; renewal failing: {f}"))
                    .unwrap_or_default()
            ),
            details(Some(info)),
        ),
        Some(Ok((_, info))) => match failing {
            Some(p) if info.due(now) => (
                true,
                "RenewalFailing",
                format!(
                    "renewal failing ({} attempt(s)), the current certificate expires at {} and keeps serving: {}",
                    p.failures,
                    info.not_after,
                    p.last_failure.as_deref().unwrap_or("")
                ),
                details(Some(info)),
            ),
            Some(p) => (
                true,
                "ReissueFailing",
                format!(
                    "a new certificate could not be issued, the current one (valid until {}) keeps serving: {}",
                    info.not_after,
                    p.last_failure.as_deref().unwrap_or("")
                ),
                details(Some(info)),
            ),
            None if progress.is_some_and(|p| p.issuing) => (
                true,
                "Renewing",
                format!(
                    "valid until {}; a new certificate is being requested",
                    info.not_after
                ),
                details(Some(info)),
            ),
            None => (
                true,
                "Issued",
                format!("valid until {}", info.not_after),
                details(Some(info)),
            ),
        },
        Some(Err(e)) => (
            false,
            if progress.is_some() && failing.is_none() {
                "Issuing"
            } else {
                "IssueFailed"
            },
            e.clone(),
            details(None),
        ),
        None => (
            false,
            "NotIssued",
            "this issuer is not handled by standalone mode yet".to_string(),
            serde_json::Value::Null,
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn status_of(
    kind: &str,
    obj: &load::ObjectRef,
    ready: bool,
    reason: &str,
    message: &str,
    details: serde_json::Value,
    previous: &BTreeMap<String, crate::api::Condition>,
    now: &str,
) -> ResourceStatus {
    let key = format!("{kind}/{}/{}", obj.namespace, obj.name);
    let cond = ready_condition(
        ready,
        reason,
        message,
        obj.generation,
        previous.get(&key),
        now,
    );
    ResourceStatus {
        kind: kind.into(),
        namespace: obj.namespace.clone(),
        name: obj.name.clone(),
        origin: obj.location.as_ref().map(|l| l.to_string()),
        observed_generation: obj.generation,
        conditions: vec![cond],
        details,
    }
}

/// The Ready condition of a running bridge.
fn bridge_condition(st: &crate::bridge::BridgeRuntimeStatus) -> (bool, &'static str, String) {
    if st.connected {
        (
            true,
            "Connected",
            format!("connected to {}; {} queued", st.remote, st.queue_depth),
        )
    } else {
        match &st.last_error {
            Some(e) => (
                false,
                "Disconnected",
                format!("{e}; {} message(s) queued, retrying", st.queue_depth),
            ),
            None => (false, "Connecting", format!("connecting to {}", st.remote)),
        }
    }
}

/// Resolves what a bridge runs: the address (also from an awsIot Certificate's
/// endpoint), credentials from Secrets, and TLS material.
fn resolve_bridge(
    plan: &BridgePlan,
    res: &Resources,
    certs: &mut CertResolver<'_>,
    state: &Path,
) -> Result<ResolvedBridge, String> {
    let ns = plan.namespace.as_str();
    let (host, port) = match &plan.address {
        RemoteAddress::HostPort(a) => {
            let (h, p) = a
                .rsplit_once(':')
                .ok_or_else(|| format!("address `{a}` must be host:port"))?;
            let p: u16 = p.parse().map_err(|_| format!("address `{a}`: bad port"))?;
            (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p,
            )
        }
        RemoteAddress::AwsIotEndpoint { certificate, port } => {
            let cert = res
                .certificate(ns, certificate)
                .ok_or_else(|| format!("Certificate {certificate} not found"))?;
            let path = certs::cert_dir(state, cert).join("endpoint");
            let host = std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .ok()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    format!("Certificate {certificate} has no AWS IoT endpoint yet (its awsIot issuer has not run)")
                })?;
            // `host`, or `host:port` when the issuer's `dataEndpoint` names a port.
            match host
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            {
                Some((h, p)) => (h.to_string(), p),
                None => (host, *port),
            }
        }
    };
    let secret = |r: &SecretKeyRef, what: &str| {
        res.secret_value(ns, &r.name, &r.key)
            .ok_or_else(|| format!("{what}: Secret {} has no key {}", r.name, r.key))
            .and_then(|v| {
                String::from_utf8(v)
                    .map_err(|_| format!("{what}: Secret {} key {} is not UTF-8", r.name, r.key))
            })
    };
    let username = plan
        .username
        .as_ref()
        .map(|r| secret(r, "username"))
        .transpose()?;
    let password = plan
        .password
        .as_ref()
        .map(|r| secret(r, "password"))
        .transpose()?;
    let tls = match &plan.tls {
        None => None,
        Some(t) => {
            let roots_pem = match &t.ca {
                CaSource::System => None,
                CaSource::Secret(r) => Some(secret(r, "caSecretRef")?),
                CaSource::Certificate(name) => {
                    let m = certs
                        .material(ns, name)
                        .map_err(|e| format!("caCertificateRef: Certificate {name}: {e}"))?;
                    let ca = res
                        .certificate(ns, name)
                        .map(|c| certs::cert_dir(state, c).join("ca.crt"))
                        .and_then(|p| std::fs::read_to_string(p).ok());
                    Some(ca.unwrap_or(m.cert_pem))
                }
            };
            let client = match &t.client {
                None => None,
                Some(TlsSource::Certificate(name)) => Some(
                    certs
                        .material(ns, name)
                        .map_err(|e| format!("clientCertificateRef: Certificate {name}: {e}"))?,
                ),
                Some(TlsSource::Secret(name)) => Some(
                    secret_key_pair(res, ns, name).map_err(|e| format!("clientSecretRef: {e}"))?,
                ),
            };
            Some(ClientTls {
                roots_pem,
                client,
                alpn: t.alpn.clone(),
                server_name: t.server_name.clone().unwrap_or_else(|| host.clone()),
            })
        }
    };
    Ok(ResolvedBridge {
        plan: plan.clone(),
        host,
        port,
        username,
        password,
        tls,
    })
}

/// The key pair in a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`).
fn secret_key_pair(res: &Resources, namespace: &str, name: &str) -> Result<TlsMaterial, String> {
    let get = |k: &str| {
        res.secret_value(namespace, name, k)
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or_else(|| format!("Secret {name} has no key {k}"))
    };
    Ok(TlsMaterial {
        cert_pem: get("tls.crt")?,
        key_pem: get("tls.key")?,
    })
}

/// Resolves the TLS key pair of every TLS listener of a bundle.
fn resolve_tls(
    bundle: &BrokerBundle,
    res: &Resources,
    certs: &mut CertResolver<'_>,
) -> Result<BTreeMap<String, TlsMaterial>, String> {
    let mut out = BTreeMap::new();
    for l in &bundle.listeners {
        let Some(src) = &l.tls else { continue };
        let material = match src {
            TlsSource::Secret(name) => secret_key_pair(res, &bundle.namespace, name)
                .map_err(|e| format!("listener {}: {e}", l.name))?,
            TlsSource::Certificate(name) => certs
                .material(&bundle.namespace, name)
                .map_err(|e| format!("listener {}: Certificate {name}: {e}", l.name))?,
        };
        out.insert(l.name.clone(), material);
    }
    Ok(out)
}

/// `edgemq run`: starts the brokers of the folder, watches it, serves the
/// operations endpoint, and stops cleanly on SIGTERM or Ctrl-C.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    if !opts.config_dir.is_dir() {
        anyhow::bail!("{}: not a directory", opts.config_dir.display());
    }
    std::fs::create_dir_all(&opts.state_dir)
        .map_err(|e| anyhow::anyhow!("state directory {}: {e}", opts.state_dir.display()))?;
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    // Folder edits and certificates issued in the background both ask for a reload.
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let runtime = Arc::new(Runtime::new(opts.clone(), metrics, tx.clone()));

    // Watch before the first load, so no edit falls between the two.
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if !matches!(ev.kind, notify::EventKind::Access(_)) {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(&opts.config_dir, notify::RecursiveMode::Recursive)?;
    if let Some(s) = &opts.secrets_dir {
        watcher.watch(s, notify::RecursiveMode::Recursive)?;
    }

    let first = runtime.reload().await;
    if !first.valid {
        tracing::error!("the configuration folder is invalid; waiting for a fix");
    }
    crate::http::serve(
        opts.http,
        crate::http::Ops {
            runtime: runtime.clone(),
            registry: Arc::new(registry),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("operations endpoint {}: {e}", opts.http))?;

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Certificates issued in place are renewed at their renewal time without edits
    // (and status refreshed at least every minute); ACME renewals ask for a reload
    // through `tx` when their new pair is stored.
    let mut status_tick = tokio::time::interval(Duration::from_secs(5));
    status_tick.tick().await;
    let mut next_reload = tokio::time::Instant::now() + runtime.next_reload_in();
    loop {
        tokio::select! {
            Some(()) = rx.recv() => {
                // Let a burst of writes (a git pull) settle, then apply once.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while rx.try_recv().is_ok() {}
                let seen = Instant::now();
                let out = runtime.reload().await;
                if out.valid && !out.changes.is_empty() {
                    tracing::info!(millis = seen.elapsed().as_millis() as u64, "folder change applied");
                }
                next_reload = tokio::time::Instant::now() + runtime.next_reload_in();
            }
            _ = tokio::time::sleep_until(next_reload) => {
                runtime.reload().await;
                next_reload = tokio::time::Instant::now() + runtime.next_reload_in();
            }
            _ = status_tick.tick() => { runtime.refresh_status_file().await; }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    tracing::info!("shutting down");
    drop(watcher);
    runtime.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use certs::manager::Progress;

    fn info(now: time::OffsetDateTime, renew_in: i64, expire_in: i64) -> CertInfo {
        CertInfo {
            not_before: certs::rfc3339(now - time::Duration::hours(1)),
            not_after: certs::rfc3339(now + time::Duration::seconds(expire_in)),
            serial: "0a".into(),
            renewal_time: certs::rfc3339(now + time::Duration::seconds(renew_in)),
            expires_in_seconds: expire_in,
            aws_iot: None,
        }
    }

    fn pair(i: CertInfo) -> Result<(TlsMaterial, CertInfo), String> {
        Ok((
            TlsMaterial {
                cert_pem: String::new(),
                key_pem: String::new(),
            },
            i,
        ))
    }

    fn failing(n: u32) -> Progress {
        Progress {
            failures: n,
            last_failure: Some("ACME: server down".into()),
            ..Progress::default()
        }
    }

    #[test]
    fn certificate_status_says_where_issuance_stands() {
        let now = time::OffsetDateTime::now_utc();
        let reason = |r: &Result<(TlsMaterial, CertInfo), String>, p: Option<Progress>| {
            let (ready, reason, message, details) = certificate_status(Some(r), p.as_ref(), now);
            (ready, reason, message, details)
        };
        let good = pair(info(now, 3600, 7200));
        assert_eq!(reason(&good, None).1, "Issued");
        let issuing = Progress {
            issuing: true,
            ..Progress::default()
        };
        assert_eq!(reason(&good, Some(issuing.clone())).1, "Renewing");
        let (ready, r, m, d) = reason(&good, Some(failing(2)));
        assert!(ready);
        assert_eq!(r, "ReissueFailing");
        assert!(m.contains("ACME: server down"), "{m}");
        assert_eq!(d["failures"], 2);
        assert_eq!(d["serial"], "0a");

        let due = pair(info(now, -60, 600));
        let (ready, r, m, _) = reason(&due, Some(failing(3)));
        assert!(ready, "the current certificate still serves");
        assert_eq!(r, "RenewalFailing");
        assert!(
            m.contains("3 attempt(s)") && m.contains("server down"),
            "{m}"
        );

        let expired = pair(info(now, -600, -1));
        let (ready, r, _, _) = reason(&expired, Some(failing(9)));
        assert!(!ready);
        assert_eq!(r, "Expired");

        let none: Result<(TlsMaterial, CertInfo), String> = Err("being issued".into());
        assert_eq!(reason(&none, Some(issuing)).1, "Issuing");
        let (ready, r, _, d) = reason(&none, Some(failing(1)));
        assert!(!ready);
        assert_eq!(r, "IssueFailed");
        assert_eq!(d["lastFailure"], "ACME: server down");
    }
}
