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
use tokio::sync::{mpsc, Mutex, Notify, RwLock};

use crate::broker::{BrokerRuntime, TlsMaterial};
use crate::certs::awsiot_jobs::{AwsIotJobs, AwsIotState};
use crate::certs::{self, CertInfo};
use crate::load::{self, Resources};
use crate::metrics::Metrics;
use crate::plan::{self, BrokerBundle, TlsSource};
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

/// Certificates resolved during one reload, by (namespace, name): each is issued or
/// read once per reload however many listeners and bridges use it.
struct CertResolver<'a> {
    res: &'a Resources,
    state: &'a Path,
    now: time::OffsetDateTime,
    seen: BTreeMap<(String, String), Result<(TlsMaterial, CertInfo), String>>,
}

impl<'a> CertResolver<'a> {
    fn new(res: &'a Resources, state: &'a Path, now: time::OffsetDateTime) -> Self {
        CertResolver {
            res,
            state,
            now,
            seen: BTreeMap::new(),
        }
    }

    /// The key pair of Certificate `namespace/name`, issuing or renewing it when due.
    fn material(&mut self, namespace: &str, name: &str) -> Result<TlsMaterial, String> {
        let key = (namespace.to_string(), name.to_string());
        if !self.seen.contains_key(&key) {
            let r = match self.res.certificate(namespace, name) {
                Some(cert) => certs::ensure(self.state, cert, self.now).map_err(|e| e.to_string()),
                None => Err(format!("Certificate {name} not found")),
            };
            if let Err(e) = &r {
                tracing::error!(certificate = %name, error = %e, "certificate not available");
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
    report: RwLock<StatusReport>,
    metrics: Arc<Metrics>,
    applied_once: AtomicBool,
    /// Notified when background work (AWS IoT) finished and a reload should pick it up.
    wake: Arc<Notify>,
    aws: AwsIotJobs,
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
    /// A runtime with no broker started yet.
    pub fn new(opts: RunOptions, metrics: Arc<Metrics>) -> Runtime {
        let wake = Arc::new(Notify::new());
        Runtime {
            aws: AwsIotJobs::new(opts.state_dir.clone(), wake.clone()),
            wake,
            opts,
            brokers: Mutex::new(BTreeMap::new()),
            report: RwLock::new(StatusReport::default()),
            metrics,
            applied_once: AtomicBool::new(false),
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
        let mut certs = CertResolver::new(&res, &self.opts.state_dir, now);
        let aws_states = self.aws.reconcile(&res);
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
            resources.push(status_of(
                "Bridge",
                &br.meta,
                false,
                "NotSupported",
                "bridges are not implemented in this version; the Bridge is validated but not started",
                serde_json::Value::Null,
                &previous,
                &stamp,
            ));
        }
        for c in res.certificates() {
            if let Some(st) = aws_states.get(&(c.meta.namespace.clone(), c.meta.name.clone())) {
                let (ready, reason, message, details) = aws_iot_status(st);
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
                continue;
            }
            let (ready, reason, message, details) =
                match certs.result(&c.meta.namespace, &c.meta.name) {
                    Some(Ok((_, info))) => (
                        true,
                        "Issued",
                        format!("valid until {}", info.not_after),
                        serde_json::to_value(info).unwrap_or_default(),
                    ),
                    Some(Err(e)) => (false, "IssueFailed", e.clone(), serde_json::Value::Null),
                    None => (
                        false,
                        "Unused",
                        "no listener uses this certificate".to_string(),
                        serde_json::Value::Null,
                    ),
                };
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

    async fn publish_report(&self, report: StatusReport) {
        let path = self.opts.state_dir.join(STATUS_FILE);
        match serde_json::to_vec_pretty(&report) {
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
        *self.report.write().await = report;
    }

    /// Stops every broker.
    pub async fn shutdown(&self) {
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
            TlsSource::Secret(name) => {
                let get = |k: &str| {
                    res.secret_value(&bundle.namespace, name, k)
                        .and_then(|v| String::from_utf8(v).ok())
                        .ok_or_else(|| format!("listener {}: Secret {name} has no key {k}", l.name))
                };
                TlsMaterial {
                    cert_pem: get("tls.crt")?,
                    key_pem: get("tls.key")?,
                }
            }
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
    let runtime = Arc::new(Runtime::new(opts.clone(), metrics));

    // Watch before the first load, so no edit falls between the two.
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
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
    // Certificates are re-checked periodically so renewals happen without edits.
    let mut renew = tokio::time::interval(Duration::from_secs(60));
    renew.tick().await;
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
            }
            _ = renew.tick() => { runtime.reload().await; }
            _ = runtime.wake.notified() => { runtime.reload().await; }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    tracing::info!("shutting down");
    drop(watcher);
    runtime.shutdown().await;
    Ok(())
}
