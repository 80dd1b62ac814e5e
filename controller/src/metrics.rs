//! Prometheus metrics, shared by the broker runtime and the standalone loop.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels naming a broker.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabel {
    /// `namespace/name` of the Broker.
    pub broker: String,
}

/// Labels of a dropped-message counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `namespace/name` of the Broker.
    pub broker: String,
    /// `queue_full` (a client's queue hit `maxQueuedMessages`) or `offline_qos0`
    /// (QoS 0 messages are not queued for disconnected sessions).
    pub reason: String,
}

/// Labels naming a Certificate.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabel {
    /// `namespace/name` of the Certificate.
    pub certificate: String,
}

/// Every metric edgemq exports.
#[derive(Default)]
pub struct Metrics {
    /// Clients connected now.
    pub connections: Family<BrokerLabel, Gauge>,
    /// Sessions kept (connected and disconnected persistent ones).
    pub sessions: Family<BrokerLabel, Gauge>,
    /// Retained messages kept.
    pub retained: Family<BrokerLabel, Gauge>,
    /// PUBLISH packets received from clients.
    pub messages_in: Family<BrokerLabel, Counter>,
    /// PUBLISH packets sent to clients.
    pub messages_out: Family<BrokerLabel, Counter>,
    /// Bytes read from clients.
    pub bytes_in: Family<BrokerLabel, Counter>,
    /// Bytes written to clients.
    pub bytes_out: Family<BrokerLabel, Counter>,
    /// CONNECTs refused for bad or missing credentials.
    pub auth_failures: Family<BrokerLabel, Counter>,
    /// Publishes or deliveries refused by the ACL.
    pub acl_denials: Family<BrokerLabel, Counter>,
    /// Messages dropped, by reason.
    pub dropped: Family<DropLabels, Counter>,
    /// Configuration changes applied.
    pub config_reloads: Counter,
    /// Configuration changes refused (the last good config kept running).
    pub config_reload_errors: Counter,
    /// Expiry of each Certificate's current certificate, Unix time in seconds.
    pub certificate_expiration: Family<CertificateLabel, Gauge>,
    /// Failed issuance or renewal attempts of each Certificate since its last success.
    pub certificate_renewal_failures: Family<CertificateLabel, Gauge>,
}

impl Metrics {
    /// Registers every metric under the `edgemq_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("edgemq");
        r.register(
            "connections",
            "Clients connected now",
            self.connections.clone(),
        );
        r.register(
            "sessions",
            "Sessions kept, connected or not",
            self.sessions.clone(),
        );
        r.register(
            "retained_messages",
            "Retained messages kept",
            self.retained.clone(),
        );
        r.register(
            "messages_received",
            "PUBLISH packets received from clients",
            self.messages_in.clone(),
        );
        r.register(
            "messages_sent",
            "PUBLISH packets sent to clients",
            self.messages_out.clone(),
        );
        r.register(
            "bytes_received",
            "Bytes read from clients",
            self.bytes_in.clone(),
        );
        r.register(
            "bytes_sent",
            "Bytes written to clients",
            self.bytes_out.clone(),
        );
        r.register(
            "auth_failures",
            "CONNECTs refused for bad or missing credentials",
            self.auth_failures.clone(),
        );
        r.register(
            "acl_denials",
            "Publishes and deliveries refused by the ACL",
            self.acl_denials.clone(),
        );
        r.register(
            "messages_dropped",
            "Messages dropped, by reason",
            self.dropped.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration changes applied",
            self.config_reloads.clone(),
        );
        r.register(
            "config_reload_errors",
            "Configuration changes refused; the last good config kept running",
            self.config_reload_errors.clone(),
        );
        r.register(
            "certificate_expiration_timestamp_seconds",
            "Expiry of the certificate a Certificate serves now, Unix time in seconds",
            self.certificate_expiration.clone(),
        );
        r.register(
            "certificate_renewal_failures",
            "Failed issuance or renewal attempts of a Certificate since its last success",
            self.certificate_renewal_failures.clone(),
        );
    }
}

/// Handles to one broker's metrics, resolved once so the hot path does no label lookups.
#[derive(Clone)]
pub struct BrokerMetrics {
    /// See [`Metrics::connections`].
    pub connections: Gauge,
    /// See [`Metrics::sessions`].
    pub sessions: Gauge,
    /// See [`Metrics::retained`].
    pub retained: Gauge,
    /// See [`Metrics::messages_in`].
    pub messages_in: Counter,
    /// See [`Metrics::messages_out`].
    pub messages_out: Counter,
    /// See [`Metrics::bytes_in`].
    pub bytes_in: Counter,
    /// See [`Metrics::bytes_out`].
    pub bytes_out: Counter,
    /// See [`Metrics::auth_failures`].
    pub auth_failures: Counter,
    /// See [`Metrics::acl_denials`].
    pub acl_denials: Counter,
    /// Dropped because a client's queue was full.
    pub dropped_queue_full: Counter,
    /// QoS 0 messages not queued for a disconnected session.
    pub dropped_offline_qos0: Counter,
}

impl BrokerMetrics {
    /// Resolves the handles of broker `key` (`namespace/name`).
    pub fn new(m: &Metrics, key: &str) -> BrokerMetrics {
        let l = BrokerLabel {
            broker: key.to_string(),
        };
        let drop = |reason: &str| {
            m.dropped
                .get_or_create(&DropLabels {
                    broker: key.to_string(),
                    reason: reason.to_string(),
                })
                .clone()
        };
        BrokerMetrics {
            connections: m.connections.get_or_create(&l).clone(),
            sessions: m.sessions.get_or_create(&l).clone(),
            retained: m.retained.get_or_create(&l).clone(),
            messages_in: m.messages_in.get_or_create(&l).clone(),
            messages_out: m.messages_out.get_or_create(&l).clone(),
            bytes_in: m.bytes_in.get_or_create(&l).clone(),
            bytes_out: m.bytes_out.get_or_create(&l).clone(),
            auth_failures: m.auth_failures.get_or_create(&l).clone(),
            acl_denials: m.acl_denials.get_or_create(&l).clone(),
            dropped_queue_full: drop("queue_full"),
            dropped_offline_qos0: drop("offline_qos0"),
        }
    }

    /// Handles not registered anywhere, for unit tests.
    pub fn detached() -> BrokerMetrics {
        BrokerMetrics::new(&Metrics::default(), "test/test")
    }
}
