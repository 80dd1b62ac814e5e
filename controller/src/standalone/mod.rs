//! Standalone mode: a folder of YAML runs brokers in this process and every later
//! edit of the folder is applied live. Beside it: its certificate drivers
//! ([`certificates`], the state directory) and its status sink (`sink`,
//! `status.json`); the folder itself is read by `crate::source`.
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

use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, RwLock};

use crate::certs::awsiot_jobs::AwsIotState;
use crate::certs::{self, CertInfo};
use crate::load::{self, Resources};
use crate::metrics::Metrics;
use crate::plan::{self, BrokerBundle};
use crate::runtime::{self, Engine, Materials};
use crate::source::follow::{Follower, GitMetrics, GitOptions, GitStatus};
use crate::source::watch::FolderWatch;
use crate::status::kinds::{self, reason};
use crate::status::{self, ConfigStatus, StatusReport};
use crate::tls::TlsMaterial;
use certificates::Manager;

pub mod certificates;
mod sink;

impl crate::http::Health for Runtime {
    async fn probe(&self) -> Vec<String> {
        self.engine.probe().await
    }
    async fn not_ready(&self) -> Option<String> {
        Runtime::not_ready(self).await
    }
    async fn report(&self) -> serde_json::Value {
        serde_json::to_value(Runtime::report(self).await).unwrap_or_default()
    }
    fn request_sync(&self) -> bool {
        match self.sync_now.get() {
            Some(n) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }
}

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
    /// Follow a git repository into the state directory (`config_dir` is then its
    /// checkout of the applied commit).
    pub git: Option<GitOptions>,
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
/// read once per reload however many listeners and bridges use it. ACME certificates
/// are never waited for: the stored pair is returned and issuance runs in the
/// background (see [`Manager`]).
struct CertResolver<'a> {
    res: &'a Resources,
    manager: &'a Manager,
    now: time::OffsetDateTime,
    seen: BTreeMap<(String, String), Result<(TlsMaterial, CertInfo), String>>,
}

impl<'a> CertResolver<'a> {
    fn new(res: &'a Resources, manager: &'a Manager, now: time::OffsetDateTime) -> Self {
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
                Some(cert) => self.manager.material(
                    cert,
                    &certs::Secrets(self.res.secret_values(namespace)),
                    self.now,
                ),
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

/// The material of a folder: Secret manifests and certificates kept in the state
/// directory (issued or renewed when due, through [`CertResolver`]).
struct FolderMaterials<'a, 'r> {
    res: &'a Resources,
    certs: &'a mut CertResolver<'r>,
    state: &'a Path,
}

impl Materials for FolderMaterials<'_, '_> {
    fn secret_value(&mut self, namespace: &str, name: &str, key: &str) -> Option<Vec<u8>> {
        self.res.secret_value(namespace, name, key)
    }
    fn certificate(&mut self, namespace: &str, name: &str) -> Result<TlsMaterial, String> {
        self.certs.material(namespace, name)
    }
    fn certificate_ca(&mut self, namespace: &str, name: &str) -> Option<String> {
        let cert = self.res.certificate(namespace, name)?;
        std::fs::read_to_string(certs::cert_dir(self.state, cert).join("ca.crt")).ok()
    }
    fn certificate_endpoint(&mut self, namespace: &str, name: &str) -> Option<String> {
        let cert = self.res.certificate(namespace, name)?;
        std::fs::read_to_string(certs::cert_dir(self.state, cert).join("endpoint")).ok()
    }
    fn certificate_thing_name(&mut self, namespace: &str, name: &str) -> Option<String> {
        let cert = self.res.certificate(namespace, name)?;
        certs::fleet::thing_name(&certs::cert_dir(self.state, cert))
    }
}

pub use sink::STATUS_FILE;

/// The brokers of this process and their status.
pub struct Runtime {
    opts: RunOptions,
    engine: Engine,
    report: RwLock<StatusReport>,
    metrics: Arc<Metrics>,
    applied_once: AtomicBool,
    certs: Manager,
    /// The objects that ran last time, each at its last good version: what an object
    /// with a mistake falls back to.
    last_good: std::sync::Mutex<Resources>,
    /// Earliest renewal time of the certificates issued in place (selfSigned, ca);
    /// ACME certificates have their own timers.
    next_renewal: std::sync::Mutex<Option<time::OffsetDateTime>>,
    /// The followed repository, with `--git`.
    git: std::sync::OnceLock<Arc<std::sync::Mutex<GitStatus>>>,
    /// Wakes the follower for a fetch now (`POST /sync`), with `--git`.
    sync_now: std::sync::OnceLock<Arc<tokio::sync::Notify>>,
    /// The folder the last reload read, symlinks resolved (which git tree runs).
    loaded_from: std::sync::Mutex<Option<PathBuf>>,
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
            certs: Manager::new(&opts.state_dir, reload),
            engine: Engine::new(&opts.state_dir, metrics.clone()),
            opts,
            report: RwLock::new(StatusReport::default()),
            metrics,
            applied_once: AtomicBool::new(false),
            last_good: std::sync::Mutex::new(Resources::default()),
            next_renewal: std::sync::Mutex::new(None),
            git: std::sync::OnceLock::new(),
            sync_now: std::sync::OnceLock::new(),
            loaded_from: std::sync::Mutex::new(None),
        }
    }

    /// Keys of brokers whose publish/subscribe round trip failed (empty: healthy).
    pub async fn probe(&self) -> Vec<String> {
        self.engine.probe().await
    }

    /// Why the process is not ready, or `None` when every broker runs its config.
    pub async fn not_ready(&self) -> Option<String> {
        if let Some(g) = self.git_status() {
            let Some(a) = g.applied else {
                return Some("no git revision applied yet".into());
            };
            let loaded = self.loaded_from.lock().ok().and_then(|l| l.clone());
            if !loaded.is_some_and(|l| l.components().any(|c| c.as_os_str() == a.commit.as_str())) {
                return Some(format!("git revision {} not loaded yet", a.commit));
            }
        }
        if !self.applied_once.load(Ordering::Acquire) {
            return Some("no valid configuration applied yet".into());
        }
        let report = self.report.read().await;
        let running = self.engine.broker_status().await;
        let failing: Vec<String> = report
            .resources
            .iter()
            .filter(|r| r.kind == "Broker" && r.ready().is_some_and(|c| c.status != "True"))
            // A Broker whose edit has a mistake runs its last good version.
            .filter(|r| {
                !(r.ready().is_some_and(|c| c.reason == reason::INVALID_SPEC)
                    && running.contains_key(&format!("{}/{}", r.namespace, r.name)))
            })
            .map(|r| format!("{}/{}", r.namespace, r.name))
            .collect();
        (!failing.is_empty()).then(|| format!("brokers not ready: {}", failing.join(", ")))
    }

    /// The status of the followed repository, with `--git`.
    fn git_status(&self) -> Option<GitStatus> {
        self.git
            .get()
            .and_then(|g| g.lock().ok().map(|g| g.clone()))
    }

    /// The current status report, with each running broker's live counters.
    pub async fn report(&self) -> StatusReport {
        let mut report = self.report.read().await.clone();
        report.git = self.git_status();
        let brokers = self.engine.broker_status().await;
        for r in report.resources.iter_mut().filter(|r| r.kind == "Broker") {
            if let Some(st) = brokers.get(&format!("{}/{}", r.namespace, r.name)) {
                r.details = serde_json::to_value(st).unwrap_or_default();
            }
        }
        let bridges = self.engine.bridge_status().await;
        for r in report.resources.iter_mut().filter(|r| r.kind == "Bridge") {
            if let Some(st) = bridges.get(&format!("{}/{}", r.namespace, r.name)) {
                let st = st.clone();
                let (ready, reason, message) = kinds::bridge_ready(&st);
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

    /// Reads the folder and applies it. An object with a mistake keeps its last good
    /// version (or stays out if it never had one) and its status says why; everything
    /// else applies, deletions always.
    pub async fn reload(&self) -> ReloadOutcome {
        // Which tree this reload reads, recorded once it has run (readiness of a git
        // revision means its brokers run, not that reading it began).
        let from = std::fs::canonicalize(&self.opts.config_dir).ok();
        let outcome = self.reload_folder().await;
        if let Ok(mut l) = self.loaded_from.lock() {
            *l = from;
        }
        outcome
    }

    async fn reload_folder(&self) -> ReloadOutcome {
        let started = Instant::now();
        let mut outcome = ReloadOutcome::default();
        let folder = load::read_folder(&self.opts.config_dir, self.opts.secrets_dir.as_deref());
        if folder.unreadable {
            // Not a mistake in an object: nobody can say what the folder holds.
            outcome.errors = folder.errors.iter().map(|e| e.to_string()).collect();
            return self.refuse(outcome).await;
        }
        let Some((effective, bundles)) = self.judge(&folder, &mut outcome) else {
            return self.refuse(outcome).await;
        };
        let held = &effective.held;
        let res = effective.res.clone();

        // Certificates: issue or reuse every one a listener needs. AWS IoT work runs in
        // the background; what is on disk is used now.
        let now = time::OffsetDateTime::now_utc();
        let mut certs = CertResolver::new(&res, &self.certs, now);
        // A Certificate left out for a mistake, or one that may be in a document that
        // cannot be read, is not deleted from AWS: only a deletion deletes.
        let unreadable_document = folder.errors.iter().any(|e| e.subject.is_none());
        let aws_states = self.certs.aws_iot(&res, |(ns, name)| {
            unreadable_document
                || held.contains_key(&(load::Kind::Certificate, ns.clone(), name.clone()))
        });
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
        let desired = {
            let mut m = FolderMaterials {
                res: &res,
                certs: &mut certs,
                state: &self.opts.state_dir,
            };
            runtime::resolve_all(&bundles, &mut m)
        };
        let applied = self.engine.apply(desired).await;
        outcome.changes.extend(applied.changes);
        outcome.errors.extend(applied.errors);
        let brokers = self.engine.broker_status().await;
        let bridges = self.engine.bridge_status().await;

        // Status of every resource.
        let previous = self.report.read().await.previous();
        let stamp = now_rfc3339();
        let mut resources = sink::runtime_records(
            &res,
            held,
            &sink::Running {
                broker_results: &applied.brokers,
                bridge_results: &applied.bridges,
                brokers: &brokers,
                bridges: &bridges,
            },
            &previous,
            &stamp,
        );
        resources.extend(self.certificate_records(
            &res,
            held,
            &mut certs,
            &aws_states,
            (&previous, &stamp),
        ));
        resources.extend(sink::left_out(held, &previous, &stamp));
        self.finish(
            outcome,
            started,
            stamp,
            resources,
            effective.errors.is_empty(),
        )
        .await
    }

    /// The folder judged against the last good set: what runs (each object with a
    /// mistake at its last good version, or left out) and its plan. `None` when
    /// nothing that runs may change; `outcome` says why.
    fn judge(
        &self,
        folder: &load::Folder,
        outcome: &mut ReloadOutcome,
    ) -> Option<(load::Effective, BTreeMap<String, BrokerBundle>)> {
        outcome.valid = folder.errors.is_empty();
        let last_good = self.last_good.lock().map(|l| l.clone()).unwrap_or_default();
        let effective =
            load::effective(&folder.res, &folder.errors, &last_good, load::check_folder);
        let bundles = match plan::plan(&effective.res) {
            Ok(b) => b,
            Err(e) => {
                // The effective set checks clean, so this is not expected; if it happens,
                // nothing that runs changes.
                outcome.valid = false;
                outcome.errors = e.iter().map(|e| e.to_string()).collect();
                return None;
            }
        };
        if let Ok(mut l) = self.last_good.lock() {
            *l = effective.res.clone();
        }
        outcome.errors = effective.errors.iter().map(|e| e.to_string()).collect();
        for e in &outcome.errors {
            tracing::error!("{e}");
        }
        if !outcome.errors.is_empty() {
            tracing::error!(
                errors = outcome.errors.len(),
                held = effective.held.len(),
                "objects with errors keep their last good version or stay out; everything else applies"
            );
        }
        Some((effective, bundles))
    }

    /// The status of every Certificate, each kept issued (used by a listener or not:
    /// device and bridge client certificates are read from the state directory), with
    /// its metrics and the time of the next renewal.
    fn certificate_records(
        &self,
        res: &Resources,
        held: &BTreeMap<load::ObjectKey, load::Held>,
        certs: &mut CertResolver<'_>,
        aws_states: &BTreeMap<(String, String), AwsIotState>,
        (previous, stamp): (&BTreeMap<String, crate::api::Condition>, &str),
    ) -> Vec<status::ResourceStatus> {
        let now = certs.now;
        let mut resources = Vec::new();
        for c in res.certificates() {
            if c.object.spec.issuer.aws_iot.is_none() {
                let _ = certs.material(&c.meta.namespace, &c.meta.name);
            }
        }
        let next_renewal = res
            .certificates()
            .filter(|c| c.object.spec.issuer.acme.is_none())
            // A failing one is tried again on the minute tick, not in a loop.
            .filter(|c| {
                self.certs
                    .progress(&format!("{}/{}", c.meta.namespace, c.meta.name))
                    .is_none_or(|p| p.failures == 0)
            })
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
                    Some(st) => status::certificate::aws_iot_status(st),
                    None => status::certificate::certificate_status(
                        certs.result(&c.meta.namespace, &c.meta.name),
                        progress.as_ref(),
                        now,
                    ),
                };
            let aws_failures = aws_states
                .get(&(c.meta.namespace.clone(), c.meta.name.clone()))
                .map(|st| st.failures);
            let not_after = match certs.result(&c.meta.namespace, &c.meta.name) {
                Some(Ok((_, info))) => Some(info.not_after.as_str()),
                _ => None,
            };
            self.metrics.certificates.observe(
                &key,
                not_after,
                progress.map(|p| p.failures).or(aws_failures).unwrap_or(0),
            );
            let ready = match held.get(&c.meta.key()) {
                Some(h) => (false, reason::INVALID_SPEC, h.message()),
                None => (ready, reason, message),
            };
            resources.push(sink::status_of(
                "Certificate",
                &c.meta,
                ready,
                details,
                previous,
                stamp,
            ));
        }
        resources
    }

    /// Publishes the report of a reload that ran, counts it and logs it.
    async fn finish(
        &self,
        outcome: ReloadOutcome,
        started: Instant,
        stamp: String,
        resources: Vec<status::ResourceStatus>,
        whole_folder_applied: bool,
    ) -> ReloadOutcome {
        let elapsed = started.elapsed();
        let config = ConfigStatus {
            valid: outcome.errors.is_empty(),
            errors: outcome.errors.clone(),
            applied_at: Some(stamp),
            last_apply_millis: Some(elapsed.as_millis() as u64),
        };
        self.publish_report(StatusReport {
            config,
            resources,
            git: None,
        })
        .await;
        // Ready once the whole folder has applied once; later mistakes only hold back
        // the objects they concern.
        if whole_folder_applied {
            self.applied_once.store(true, Ordering::Release);
        }
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
        let mut report = report.clone();
        report.git = self.git_status();
        sink::write(&self.opts.state_dir, &report);
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
        self.engine.shutdown().await;
    }
}

/// How often the configuration paths are resolved again (a swap above the folder).
const PATH_CHECK: Duration = Duration::from_secs(1);

/// Waits until no change arrived for 100 ms (at most 2 s), so a checkout that writes
/// many files is read once, after its last write.
async fn settle(rx: &mut mpsc::UnboundedReceiver<()>) {
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut more = false;
        while rx.try_recv().is_ok() {
            more = true;
        }
        if !more || tokio::time::Instant::now() >= until {
            return;
        }
    }
}

/// `edgemq run`: starts the brokers of the folder, watches it, serves the
/// operations endpoint, and stops cleanly on SIGTERM or Ctrl-C.
pub async fn run(mut opts: RunOptions) -> anyhow::Result<()> {
    crate::private_fs::prepare_state_dir(&opts.state_dir)
        .map_err(|e| anyhow::anyhow!("state directory {}: {e}", opts.state_dir.display()))?;
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    // With --git, the folder is the applied commit's tree in the state directory,
    // restored without the network.
    let follower = match &opts.git {
        Some(g) => {
            let git_metrics = Arc::new(GitMetrics::default());
            git_metrics.register(&mut registry);
            let f = Follower::open(&opts.state_dir, g.clone(), git_metrics).await?;
            opts.config_dir = f.config_dir();
            Some(f)
        }
        None => None,
    };
    if !opts.config_dir.is_dir() {
        anyhow::bail!("{}: not a directory", opts.config_dir.display());
    }
    // Folder edits, new git revisions and certificates issued in the background all
    // ask for a reload.
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let runtime = Arc::new(Runtime::new(opts.clone(), metrics, tx.clone()));
    let sync_now = Arc::new(tokio::sync::Notify::new());
    if let Some(f) = follower {
        let _ = runtime.git.set(f.status());
        let _ = runtime.sync_now.set(sync_now.clone());
        tokio::spawn(f.run(sync_now.clone(), tx.clone()));
    }

    // Watch before the first load, so no edit falls between the two. The watch follows
    // a path swapped atomically (a symlink or a parent directory replaced).
    let mut roots = vec![opts.config_dir.clone()];
    roots.extend(opts.secrets_dir.clone());
    let mut watch = FolderWatch::new(&roots, tx.clone())?;

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
    .await?;

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // SIGHUP: fetch the repository now (with --git).
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    // Certificates issued in place are renewed at their renewal time without edits
    // (and status refreshed at least every minute); ACME renewals ask for a reload
    // through `tx` when their new pair is stored.
    let mut status_tick = tokio::time::interval(Duration::from_secs(5));
    status_tick.tick().await;
    let mut next_reload = tokio::time::Instant::now() + runtime.next_reload_in();
    // A swap of a folder above the watched one raises no event there: the paths are
    // resolved again on this tick.
    let mut path_check = tokio::time::interval(PATH_CHECK);
    path_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(()) = rx.recv() => {
                // Let a burst of writes (a git checkout) settle, then apply once.
                settle(&mut rx).await;
                watch.refresh();
                let seen = Instant::now();
                let out = runtime.reload().await;
                if out.valid && !out.changes.is_empty() {
                    tracing::info!(millis = seen.elapsed().as_millis() as u64, "folder change applied");
                }
                next_reload = tokio::time::Instant::now() + runtime.next_reload_in();
            }
            _ = path_check.tick() => {
                if watch.refresh() {
                    let _ = tx.send(());
                }
            }
            _ = tokio::time::sleep_until(next_reload) => {
                runtime.reload().await;
                next_reload = tokio::time::Instant::now() + runtime.next_reload_in();
            }
            _ = status_tick.tick() => { runtime.refresh_status_file().await; }
            _ = sighup.recv() => { sync_now.notify_one(); }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    tracing::info!("shutting down");
    drop(watch);
    runtime.shutdown().await;
    Ok(())
}
