//! Kubernetes mode: the second front door, feeding the same load → plan path as the
//! folder, and the second status sink (the status subresource).
//!
//! ```text
//!  edgemq controller (one leader)                 edgemq broker (one pod per Broker)
//!  ─────────────────────────────                  ──────────────────────────────────
//!  watch Broker, MqttUser, Bridge,                watch its bundle Secret and the
//!    Certificate, Secret                            Secrets it names, by name
//!  index → validate → plan (pure, shared)         resolve → runtime::Engine (shared with
//!  desired objects (pure) → server-side apply        `edgemq run`): applied live
//!    bundle Secret, SA, Role, Deployment,         status: configHash, connections,
//!    Service, PVC                                   each Bridge's link
//!  status + Events; Certificates into Secrets
//! ```

pub mod acme;
pub mod awsiot;
pub mod bundle;
pub mod cert_secret;
pub mod certificates;
pub mod context;
pub mod controller;
pub mod desired;
pub mod fleet;
mod frame;
pub mod handover;
pub mod index;
mod kubeconfig;
pub mod leader;
pub mod ownership;
pub mod pod;
pub mod recover;
pub mod status;
pub mod streams;
pub mod tasks;
pub mod trust;
pub mod volume;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "edgemq-controller";
/// The field manager of what a broker pod writes (its part of status).
pub const POD_FIELD_MANAGER: &str = "edgemq-broker";

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A watch could not start.
    #[error("watch: {0}")]
    Watch(String),
    /// An object of the name the controller would write belongs to someone else.
    #[error(transparent)]
    Conflict(#[from] ownership::Conflict),
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(s)) => format!("api_{}", s.code),
            Error::Kube(_) => "kube".into(),
            Error::Watch(_) => "watch".into(),
            Error::Conflict(_) => "name_conflict".into(),
        }
    }
}

/// Labels naming a kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Broker, MqttUser, Bridge or Certificate.
    pub kind: String,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// What failed (`api_409`, `kube`...).
    pub error: String,
}

/// Labels of `edgemq_resource_ready`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// Broker, MqttUser, Bridge or Certificate.
    pub kind: String,
    /// `namespace/name` of the object, like the `broker` and `certificate` labels (a
    /// label called `namespace` would clash with the one Prometheus gives the
    /// controller's own target).
    pub object: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
}

/// The controller's metrics.
pub struct Metrics {
    /// Reconciles run, by kind.
    pub reconciles: Family<KindLabel, Counter>,
    /// Reconcile failures, by error.
    pub failures: Family<FailureLabels, Counter>,
    /// Reconcile durations in seconds, by kind.
    pub durations: Family<KindLabel, Histogram, fn() -> Histogram>,
    /// Status subresource writes.
    pub status_writes: Counter,
    /// Expiry and failed attempts of each Certificate (the same metrics `edgemq run`
    /// exports).
    pub certificates: edgemq::metrics::CertificateMetrics,
    /// 1 while an object's `Ready` condition (as the controller last wrote it) is True,
    /// 0 while it is False.
    pub resource_ready: Family<ResourceLabels, Gauge>,
    /// The series of `resource_ready`, so those of deleted objects can be removed.
    ready_series: Mutex<HashSet<ResourceLabels>>,
    ready: AtomicBool,
}

impl Default for Metrics {
    /// The per-kind series and the failure classes that need no object start at 0, so a
    /// scrape (and the dashboard's and alerts' `rate()`) sees them before the first
    /// reconcile or failure, as Prometheus' instrumentation guide asks.
    fn default() -> Self {
        let m = Metrics {
            reconciles: Family::default(),
            failures: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
            status_writes: Counter::default(),
            certificates: Default::default(),
            resource_ready: Family::default(),
            ready_series: Mutex::new(HashSet::new()),
            ready: AtomicBool::new(false),
        };
        for kind in ["Broker", "MqttUser", "Bridge", "Certificate"] {
            let label = KindLabel { kind: kind.into() };
            let _ = m.reconciles.get_or_create(&label);
            let _ = m.durations.get_or_create(&label);
        }
        for error in ["kube", "watch"] {
            let _ = m.failures.get_or_create(&FailureLabels {
                error: error.into(),
            });
        }
        m
    }
}

/// Records one reconcile's duration when dropped.
pub struct Timer<'a> {
    metrics: &'a Metrics,
    kind: &'static str,
    started: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        let label = KindLabel {
            kind: self.kind.into(),
        };
        self.metrics.reconciles.get_or_create(&label).inc();
        self.metrics
            .durations
            .get_or_create(&label)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Registers every metric under `edgemq_controller_`.
    pub fn register(&self, r: &mut Registry) {
        edgemq::metrics::register_build_info(r);
        // The Certificate metrics carry the names `edgemq run` gives them, so one
        // dashboard or alert serves both modes.
        let shared = r.sub_registry_with_prefix("edgemq");
        self.certificates.register(shared);
        shared.register(
            "resource_ready",
            "1 while the object's Ready condition is True, 0 while it is False, by kind and namespace/name",
            self.resource_ready.clone(),
        );
        let r = r.sub_registry_with_prefix("edgemq_controller");
        r.register(
            "reconciles",
            "Reconciles run, by kind",
            self.reconciles.clone(),
        );
        r.register(
            "reconcile_failures",
            "Failed reconciles, by error",
            self.failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Reconcile durations, by kind",
            self.durations.clone(),
        );
        r.register(
            "status_writes",
            "Status subresource writes",
            self.status_writes.clone(),
        );
    }

    /// Starts timing a reconcile of `kind`.
    pub fn timer(&self, kind: &'static str) -> Timer<'_> {
        Timer {
            metrics: self,
            kind,
            started: Instant::now(),
        }
    }

    /// Records a Certificate's current expiry and failed attempts
    /// ([`edgemq::metrics::CertificateMetrics::observe`]).
    pub fn certificate(&self, key: &str, not_after: Option<&str>, failures: u32) {
        self.certificates.observe(key, not_after, failures);
    }

    /// Records the `Ready` condition the controller holds for an object.
    pub fn resource_ready(&self, kind: &str, namespace: &str, name: &str, ready: bool) {
        let label = ResourceLabels {
            kind: kind.into(),
            object: format!("{namespace}/{name}"),
        };
        self.resource_ready
            .get_or_create(&label)
            .set(i64::from(ready));
        self.ready_series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(label);
    }

    /// Removes the `resource_ready` series of objects that no longer exist, so a
    /// deleted object that was not Ready does not page forever.
    pub fn forget_deleted(&self, exists: impl Fn(&ResourceLabels) -> bool) {
        let mut series = self.ready_series.lock().unwrap_or_else(|e| e.into_inner());
        series.retain(|l| {
            let keep = exists(l);
            if !keep {
                self.resource_ready.remove(l);
            }
            keep
        });
    }

    /// Counts a failed reconcile.
    pub fn failure(&self, e: &Error) {
        self.failures
            .get_or_create(&FailureLabels {
                error: e.metric_label(),
            })
            .inc();
    }

    /// Whether the watches are synced.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the watches are synced.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Options of `edgemq controller`.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// Namespaces to watch; empty: all.
    pub namespaces: Vec<String>,
    /// Broker pod image and pull policy.
    pub settings: desired::Settings,
    /// Operations endpoint.
    pub http: std::net::SocketAddr,
    /// Take a Lease before acting, so only one replica acts.
    pub leader_election: bool,
    /// Namespace of the Lease.
    pub lease_namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
}

/// The controller process's health.
struct ControllerHealth {
    metrics: Arc<Metrics>,
    leader: Arc<AtomicBool>,
    leader_election: bool,
}

impl edgemq::http::Health for ControllerHealth {
    async fn probe(&self) -> Vec<String> {
        Vec::new()
    }
    async fn not_ready(&self) -> Option<String> {
        // A standby replica is ready: it is waiting for the Lease, as it should.
        if self.leader.load(Ordering::Acquire) && !self.metrics.is_ready() {
            Some("watches not synced yet".into())
        } else {
            None
        }
    }
    async fn report(&self) -> serde_json::Value {
        serde_json::json!({
            "leader": self.leader.load(Ordering::Acquire),
            "leaderElection": self.leader_election,
            "synced": self.metrics.is_ready(),
        })
    }
}

/// `edgemq controller`: waits for the Lease (when leader election is on), then runs
/// the controllers until SIGTERM; losing the Lease ends the process so a restart
/// starts clean.
pub async fn run_controller(opts: ControllerOptions) -> anyhow::Result<()> {
    let client = kubeconfig::client().await?;
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let leader = Arc::new(AtomicBool::new(!opts.leader_election));
    edgemq::http::serve(
        opts.http,
        edgemq::http::Ops {
            runtime: Arc::new(ControllerHealth {
                metrics: metrics.clone(),
                leader: leader.clone(),
                leader_election: opts.leader_election,
            }),
            registry: Arc::new(registry),
        },
    )
    .await?;

    let lease = opts.leader_election.then(|| {
        leader::Lease::new(
            client.clone(),
            &opts.lease_namespace,
            &opts.lease_name,
            &opts.identity,
        )
    });
    let lost = match &lease {
        Some(lease) => {
            tracing::info!(lease = %format!("{}/{}", opts.lease_namespace, opts.lease_name), identity = %opts.identity, "waiting to lead");
            let lost = tokio::select! {
                r = lease.acquire() => r?,
                _ = shutdown_signal() => return Ok(()),
            };
            leader.store(true, Ordering::Release);
            tracing::info!(identity = %opts.identity, "leading");
            Some(lost)
        }
        None => None,
    };

    let scopes: Vec<Option<String>> = if opts.namespaces.is_empty() {
        vec![None]
    } else {
        opts.namespaces.iter().cloned().map(Some).collect()
    };
    let runs = scopes.into_iter().map(|ns| {
        controller::run(
            client.clone(),
            ns,
            opts.settings.clone(),
            opts.identity.clone(),
            metrics.clone(),
        )
    });
    let all = futures_util::future::join_all(runs);
    let results = match lost {
        Some(lost) => tokio::select! {
            results = all => results,
            _ = lost => anyhow::bail!("lost the leader Lease; exiting so a restart starts clean"),
        },
        None => all.await,
    };
    // A clean stop hands the Lease over at once instead of after it expires.
    if let Some(lease) = &lease {
        lease.release().await;
    }
    for r in results {
        r?;
    }
    Ok(())
}

pub use edgemq::process::shutdown_signal;

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    /// The sample names a registry serves (`name{...} value` lines).
    fn sample_names(r: &Registry) -> HashSet<String> {
        let mut text = String::new();
        encode(&mut text, r).expect("encode");
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
            .collect()
    }

    /// The controller's registry with one series in every family.
    fn controller_registry() -> Registry {
        let m = Metrics::default();
        drop(m.timer("Broker"));
        m.failure(&Error::Watch("x".into()));
        m.status_writes.inc();
        m.certificate("iot/tls", Some("2030-01-01T00:00:00Z"), 1);
        m.resource_ready("Broker", "iot", "home", false);
        let mut r = Registry::default();
        m.register(&mut r);
        r
    }

    /// `edgemq run`'s (and a broker pod's) registry with one broker, bridge,
    /// certificate and git follower.
    fn run_registry() -> Registry {
        let m = edgemq::metrics::Metrics::default();
        let _ = edgemq::metrics::BrokerMetrics::new(&m, "iot/home");
        let _ = edgemq::metrics::BridgeMetrics::new(&m, "iot/aws");
        m.certificates
            .observe("iot/tls", Some("2030-01-01T00:00:00Z"), 0);
        m.config_reloads.inc();
        m.config_reload_errors.inc();
        let mut r = Registry::default();
        m.register(&mut r);
        edgemq::source::follow::GitMetrics::default().register(&mut r);
        r
    }

    /// Every `edgemq_...` word of a text.
    fn edgemq_names(text: &str) -> HashSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("edgemq_"))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_metric_the_alert_rules_and_dashboard_use_is_exported() {
        let mut exported = sample_names(&controller_registry());
        exported.extend(sample_names(&run_registry()));
        for (file, text) in [
            (
                "monitoring/rules.yaml",
                include_str!("../../monitoring/rules.yaml"),
            ),
            (
                "monitoring/dashboard.json",
                include_str!("../../monitoring/dashboard.json"),
            ),
        ] {
            let used = edgemq_names(text);
            assert!(used.len() > 5, "{file}: no metric names found");
            let mut missing: Vec<_> = used.difference(&exported).collect();
            missing.sort();
            assert!(
                missing.is_empty(),
                "{file} uses metrics no edgemq registry exports: {missing:?}"
            );
        }
    }

    #[test]
    fn a_fresh_controller_exports_its_per_kind_and_failure_series_at_zero() {
        let mut r = Registry::default();
        Metrics::default().register(&mut r);
        let mut text = String::new();
        encode(&mut text, &r).expect("encode");
        for line in [
            "edgemq_controller_reconcile_failures_total{error=\"kube\"} 0",
            "edgemq_controller_reconcile_failures_total{error=\"watch\"} 0",
            "edgemq_controller_reconciles_total{kind=\"Certificate\"} 0",
            "edgemq_controller_reconcile_duration_seconds_count{kind=\"MqttUser\"} 0",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        let buckets = text
            .lines()
            .filter(|l| l.starts_with("edgemq_controller_reconcile_duration_seconds_bucket{"))
            .count();
        assert_eq!(buckets, 4 * 11, "{text}");
    }

    #[test]
    fn the_controller_exports_its_build_and_each_objects_ready_condition() {
        let names = sample_names(&controller_registry());
        for n in [
            "edgemq_build_info",
            "edgemq_resource_ready",
            "edgemq_controller_reconcile_failures_total",
            "edgemq_controller_reconcile_duration_seconds_bucket",
            "edgemq_certificate_expiration_timestamp_seconds",
        ] {
            assert!(names.contains(n), "{n} not in {names:?}");
        }
        let mut text = String::new();
        encode(&mut text, &controller_registry()).expect("encode");
        let info = format!(
            "edgemq_build_info{{version=\"{}\",commit=\"{}\",target=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            edgemq::metrics::GIT_COMMIT,
            edgemq::metrics::TARGET
        );
        assert!(text.contains(&info), "{info} not in\n{text}");
        assert!(
            text.contains("edgemq_resource_ready{kind=\"Broker\",object=\"iot/home\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn a_deleted_objects_ready_series_is_forgotten_and_a_live_ones_kept() {
        let m = Metrics::default();
        m.resource_ready("Broker", "iot", "gone", false);
        m.resource_ready("Certificate", "iot", "tls", true);
        m.resource_ready("Certificate", "iot", "tls", false);
        let mut r = Registry::default();
        m.register(&mut r);
        m.forget_deleted(|l| l.object != "iot/gone");
        let mut text = String::new();
        encode(&mut text, &r).expect("encode");
        let ready: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("edgemq_resource_ready{"))
            .collect();
        assert_eq!(
            ready,
            vec!["edgemq_resource_ready{kind=\"Certificate\",object=\"iot/tls\"} 0"]
        );
    }
}
