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
    /// `queue_full` (a client's queue hit `maxQueuedMessages`), `offline_qos0`
    /// (QoS 0 messages are not queued for disconnected sessions) or `expired` (an MQTT 5
    /// message expiry interval ran out before it was sent).
    pub reason: String,
}

/// Labels of a limit refusal counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// `namespace/name` of the Broker.
    pub broker: String,
    /// The Broker setting that refused: `maxConnections`, `maxHandshakes`,
    /// `maxHandshakesPerAddress`, `maxConnectBytes`, `handshakeTimeoutSeconds`,
    /// `maxPayloadBytes`, `maxSessions`, `maxSubscriptionsPerClient`,
    /// `maxQueuedMessages`, `maxQueuedBytes`, `maxRetainedMessages` or
    /// `maxRetainedBytes`.
    pub limit: String,
}

/// Labels naming a bridge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BridgeLabel {
    /// `namespace/name` of the Bridge.
    pub bridge: String,
}

/// Labels of a bridge's message counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BridgeDirectionLabels {
    /// `namespace/name` of the Bridge.
    pub bridge: String,
    /// `out` (delivered to the remote) or `in` (delivered to the local broker).
    pub direction: String,
}

/// Labels of a bridge's drop counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BridgeDropLabels {
    /// `namespace/name` of the Bridge.
    pub bridge: String,
    /// `queue_full` (the on-disk queue hit maxMessages or maxBytes; the oldest went).
    pub reason: String,
}

/// Labels naming a Certificate.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabel {
    /// `namespace/name` of the Certificate.
    pub certificate: String,
}

/// What this binary is: its version, the git commit it was built from ("unknown" when
/// built outside a repository) and its target triple.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// See [`VERSION`].
pub const GIT_COMMIT: &str = env!("EDGEMQ_GIT_COMMIT");
/// See [`VERSION`].
pub const TARGET: &str = env!("EDGEMQ_BUILD_TARGET");

/// Labels of `edgemq_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// The release version (`Cargo.toml`).
    pub version: String,
    /// The git commit built, or `unknown`.
    pub commit: String,
    /// The target triple, e.g. `aarch64-unknown-linux-gnu`.
    pub target: String,
}

/// Registers `edgemq_build_info{version,commit,target} 1`, so a dashboard shows which
/// build each process runs (every edgemq process registry calls this once).
pub fn register_build_info(registry: &mut Registry) {
    let info = Family::<BuildLabels, Gauge>::default();
    info.get_or_create(&BuildLabels {
        version: VERSION.into(),
        commit: GIT_COMMIT.into(),
        target: TARGET.into(),
    })
    .set(1);
    registry.register(
        "edgemq_build_info",
        "The running build: version, git commit and target triple; always 1",
        info,
    );
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
    /// Client certificates refused (in the handshake, at CONNECT, or closed when a new
    /// CA or CRL no longer accepts them), by reason.
    pub client_certificate_refusals: Family<DropLabels, Counter>,
    /// Publishes or deliveries refused by the ACL.
    pub acl_denials: Family<BrokerLabel, Counter>,
    /// Messages dropped, by reason.
    pub dropped: Family<DropLabels, Counter>,
    /// Refusals by a limit of the Broker, by the setting that refused.
    pub limit_refusals: Family<LimitLabels, Counter>,
    /// Snapshots of the persistent sessions written to the state directory.
    pub session_saves: Family<BrokerLabel, Counter>,
    /// Messages held by the persistent sessions in the last snapshot written.
    pub session_saved_messages: Family<BrokerLabel, Gauge>,
    /// 1 while a bridge is connected to its remote.
    pub bridge_connected: Family<BridgeLabel, Gauge>,
    /// Messages in a bridge's outbound queue.
    pub bridge_queue_messages: Family<BridgeLabel, Gauge>,
    /// Bytes in a bridge's outbound queue.
    pub bridge_queue_bytes: Family<BridgeLabel, Gauge>,
    /// A bridge's `queue.maxMessages`: the count at which it starts dropping the oldest.
    pub bridge_queue_max_messages: Family<BridgeLabel, Gauge>,
    /// A bridge's `queue.maxBytes`.
    pub bridge_queue_max_bytes: Family<BridgeLabel, Gauge>,
    /// Messages a bridge delivered, by direction.
    pub bridge_messages: Family<BridgeDirectionLabels, Counter>,
    /// Messages a bridge dropped, by reason.
    pub bridge_dropped: Family<BridgeDropLabels, Counter>,
    /// Connection attempts of a bridge that failed or ended.
    pub bridge_disconnects: Family<BridgeLabel, Counter>,
    /// Configuration changes applied.
    pub config_reloads: Counter,
    /// Configuration changes refused (the last good config kept running).
    pub config_reload_errors: Counter,
    /// Expiry and failed attempts of each Certificate.
    pub certificates: CertificateMetrics,
}

/// The Certificate metrics, the same set (and names) in `edgemq run` and the
/// controller, so one dashboard or alert serves both modes.
#[derive(Clone, Debug, Default)]
pub struct CertificateMetrics {
    /// Expiry of each Certificate's current certificate, Unix time in seconds.
    pub expiration: Family<CertificateLabel, Gauge>,
    /// Failed issuance or renewal attempts of each Certificate since its last success.
    pub renewal_failures: Family<CertificateLabel, Gauge>,
}

impl CertificateMetrics {
    /// Registers both under `r`'s prefix (`edgemq_`).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "certificate_expiration_timestamp_seconds",
            "Expiry of the certificate a Certificate serves now, Unix time in seconds",
            self.expiration.clone(),
        );
        r.register(
            "certificate_renewal_failures",
            "Failed issuance or renewal attempts of a Certificate since its last success",
            self.renewal_failures.clone(),
        );
    }

    /// Records a Certificate's current expiry (`None`: it serves nothing) and its
    /// failed attempts since the last success.
    pub fn observe(&self, key: &str, not_after: Option<&str>, failures: u32) {
        let label = CertificateLabel {
            certificate: key.to_string(),
        };
        let parse = |t: &str| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        };
        match not_after.and_then(parse) {
            Some(t) => {
                self.expiration
                    .get_or_create(&label)
                    .set(t.unix_timestamp());
            }
            None => {
                self.expiration.remove(&label);
            }
        }
        self.renewal_failures
            .get_or_create(&label)
            .set(failures as i64);
    }
}

impl Metrics {
    /// Registers every metric under the `edgemq_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        register_build_info(registry);
        let r = registry.sub_registry_with_prefix("edgemq");
        r.register(
            "bridge_connected",
            "1 while the bridge is connected to its remote",
            self.bridge_connected.clone(),
        );
        r.register(
            "bridge_queue_messages",
            "Messages in the bridge's outbound store-and-forward queue",
            self.bridge_queue_messages.clone(),
        );
        r.register(
            "bridge_queue_bytes",
            "Bytes (topics and payloads) in the bridge's outbound queue",
            self.bridge_queue_bytes.clone(),
        );
        r.register(
            "bridge_queue_max_messages",
            "The bridge's queue.maxMessages: at this many queued messages the oldest is dropped",
            self.bridge_queue_max_messages.clone(),
        );
        r.register(
            "bridge_queue_max_bytes",
            "The bridge's queue.maxBytes: at this many queued bytes the oldest is dropped",
            self.bridge_queue_max_bytes.clone(),
        );
        r.register(
            "bridge_messages",
            "Messages the bridge delivered, by direction (out: acknowledged by the remote; in: published locally)",
            self.bridge_messages.clone(),
        );
        r.register(
            "bridge_dropped",
            "Messages the bridge dropped, by reason",
            self.bridge_dropped.clone(),
        );
        r.register(
            "bridge_disconnects",
            "Failed or ended connections of the bridge to its remote",
            self.bridge_disconnects.clone(),
        );
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
            "CONNECTs refused for bad or missing credentials, or for a client id of another user (clientIdPattern)",
            self.auth_failures.clone(),
        );
        r.register(
            "client_certificate_refusals",
            "Client certificates refused in the TLS handshake or at CONNECT, or closed when a new client CA or CRL no longer accepts them, by reason (unknown_ca, expired, not_yet_valid, revoked, revocation_unknown, no_certificate, bad_certificate, no_identity, unknown_identity, client_id)",
            self.client_certificate_refusals.clone(),
        );
        r.register(
            "session_saves",
            "Snapshots of the persistent sessions written to disk (persistence on)",
            self.session_saves.clone(),
        );
        r.register(
            "session_saved_messages",
            "Messages held by the persistent sessions in the last snapshot written",
            self.session_saved_messages.clone(),
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
            "limit_refusals",
            "Sockets, CONNECTs, subscriptions, queued and retained messages refused by a limit of the Broker, by the setting that refused",
            self.limit_refusals.clone(),
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
        self.certificates.register(r);
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
    /// Messages whose MQTT 5 expiry interval ran out before they were sent.
    pub dropped_expired: Counter,
    /// Messages larger than the Maximum Packet Size an MQTT 5 client asked for.
    pub dropped_too_large: Counter,
    /// See [`Metrics::session_saves`].
    pub session_saves: Counter,
    /// See [`Metrics::session_saved_messages`].
    pub session_saved_messages: Gauge,
    /// See [`Metrics::limit_refusals`].
    pub refused: LimitRefusals,
    /// See [`Metrics::client_certificate_refusals`], by reason.
    pub certificate_refusals: std::sync::Arc<std::collections::BTreeMap<&'static str, Counter>>,
}

/// One counter per limit, see [`Metrics::limit_refusals`].
#[derive(Clone)]
pub struct LimitRefusals {
    /// A socket found `maxConnections` authenticated clients, at accept or after its
    /// CONNECT.
    pub connections: Counter,
    /// A socket found `maxHandshakes` unauthenticated sockets.
    pub handshakes: Counter,
    /// A socket found `maxHandshakesPerAddress` unauthenticated sockets from its address.
    pub handshakes_per_address: Counter,
    /// A CONNECT announced more than `maxConnectBytes`.
    pub connect_bytes: Counter,
    /// No CONNECT within `handshakeTimeoutSeconds` of the accept.
    pub handshake_timeout: Counter,
    /// A packet announced more than `maxPayloadBytes` allows.
    pub payload_bytes: Counter,
    /// A new persistent session found `maxSessions`.
    pub sessions: Counter,
    /// A subscription found `maxSubscriptionsPerClient`.
    pub subscriptions: Counter,
    /// A message found its client's queue at `maxQueuedMessages`.
    pub queued_messages: Counter,
    /// A message found its client's queue at `maxQueuedBytes`.
    pub queued_bytes: Counter,
    /// A new retained topic found `maxRetainedMessages`.
    pub retained_messages: Counter,
    /// A retained message found `maxRetainedBytes`.
    pub retained_bytes: Counter,
}

impl LimitRefusals {
    fn new(m: &Metrics, key: &str) -> LimitRefusals {
        let c = |limit: &str| {
            m.limit_refusals
                .get_or_create(&LimitLabels {
                    broker: key.to_string(),
                    limit: limit.to_string(),
                })
                .clone()
        };
        LimitRefusals {
            connections: c("maxConnections"),
            handshakes: c("maxHandshakes"),
            handshakes_per_address: c("maxHandshakesPerAddress"),
            connect_bytes: c("maxConnectBytes"),
            handshake_timeout: c("handshakeTimeoutSeconds"),
            payload_bytes: c("maxPayloadBytes"),
            sessions: c("maxSessions"),
            subscriptions: c("maxSubscriptionsPerClient"),
            queued_messages: c("maxQueuedMessages"),
            queued_bytes: c("maxQueuedBytes"),
            retained_messages: c("maxRetainedMessages"),
            retained_bytes: c("maxRetainedBytes"),
        }
    }
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
            session_saves: m.session_saves.get_or_create(&l).clone(),
            session_saved_messages: m.session_saved_messages.get_or_create(&l).clone(),
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
            dropped_expired: drop("expired"),
            dropped_too_large: drop("packet_too_large"),
            refused: LimitRefusals::new(m, key),
            certificate_refusals: std::sync::Arc::new(
                CERTIFICATE_REFUSAL_REASONS
                    .iter()
                    .map(|r| {
                        let c = m
                            .client_certificate_refusals
                            .get_or_create(&DropLabels {
                                broker: key.to_string(),
                                reason: r.to_string(),
                            })
                            .clone();
                        (*r, c)
                    })
                    .collect(),
            ),
        }
    }

    /// Counts a client certificate refused for `reason` (one of
    /// [`CERTIFICATE_REFUSAL_REASONS`]).
    pub fn certificate_refused(&self, reason: &str) {
        if let Some(c) = self.certificate_refusals.get(reason) {
            c.inc();
        }
    }

    /// Handles not registered anywhere, for unit tests.
    pub fn detached() -> BrokerMetrics {
        BrokerMetrics::new(&Metrics::default(), "test/test")
    }
}

/// Handles to one bridge's metrics.
#[derive(Clone)]
pub struct BridgeMetrics {
    /// See [`Metrics::bridge_connected`].
    pub connected: Gauge,
    /// See [`Metrics::bridge_queue_messages`].
    pub queue_messages: Gauge,
    /// See [`Metrics::bridge_queue_bytes`].
    pub queue_bytes: Gauge,
    /// See [`Metrics::bridge_queue_max_messages`].
    pub queue_max_messages: Gauge,
    /// See [`Metrics::bridge_queue_max_bytes`].
    pub queue_max_bytes: Gauge,
    /// Delivered to the remote.
    pub out: Counter,
    /// Delivered to the local broker.
    pub inbound: Counter,
    /// Dropped at the queue bound.
    pub dropped_queue_full: Counter,
    /// See [`Metrics::bridge_disconnects`].
    pub disconnects: Counter,
}

impl BridgeMetrics {
    /// Resolves the handles of bridge `key` (`namespace/name`).
    pub fn new(m: &Metrics, key: &str) -> BridgeMetrics {
        let l = BridgeLabel {
            bridge: key.to_string(),
        };
        let dir = |d: &str| {
            m.bridge_messages
                .get_or_create(&BridgeDirectionLabels {
                    bridge: key.to_string(),
                    direction: d.to_string(),
                })
                .clone()
        };
        BridgeMetrics {
            connected: m.bridge_connected.get_or_create(&l).clone(),
            queue_messages: m.bridge_queue_messages.get_or_create(&l).clone(),
            queue_bytes: m.bridge_queue_bytes.get_or_create(&l).clone(),
            queue_max_messages: m.bridge_queue_max_messages.get_or_create(&l).clone(),
            queue_max_bytes: m.bridge_queue_max_bytes.get_or_create(&l).clone(),
            out: dir("out"),
            inbound: dir("in"),
            dropped_queue_full: m
                .bridge_dropped
                .get_or_create(&BridgeDropLabels {
                    bridge: key.to_string(),
                    reason: "queue_full".to_string(),
                })
                .clone(),
            disconnects: m.bridge_disconnects.get_or_create(&l).clone(),
        }
    }

    /// Removes a removed bridge's series, so `/metrics` shows only bridges that exist.
    pub fn forget(m: &Metrics, key: &str) {
        let l = BridgeLabel {
            bridge: key.to_string(),
        };
        m.bridge_connected.remove(&l);
        m.bridge_queue_messages.remove(&l);
        m.bridge_queue_bytes.remove(&l);
        m.bridge_queue_max_messages.remove(&l);
        m.bridge_queue_max_bytes.remove(&l);
        m.bridge_disconnects.remove(&l);
        for d in ["out", "in"] {
            m.bridge_messages.remove(&BridgeDirectionLabels {
                bridge: key.to_string(),
                direction: d.to_string(),
            });
        }
        m.bridge_dropped.remove(&BridgeDropLabels {
            bridge: key.to_string(),
            reason: "queue_full".to_string(),
        });
    }
}

/// Every reason a client certificate is refused (`broker::client_cert` names them),
/// for the series of `edgemq_client_certificate_refusals_total`: kept here so that
/// metrics does not import the broker.
pub const CERTIFICATE_REFUSAL_REASONS: &[&str] = &[
    "unknown_ca",
    "expired",
    "not_yet_valid",
    "revoked",
    "revocation_unknown",
    "no_certificate",
    "bad_certificate",
    "no_identity",
    "unknown_identity",
    "client_id",
];
