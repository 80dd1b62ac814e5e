//! The Broker kind: one MQTT broker with its listeners, anonymous access, ACL patterns,
//! limits and persistence.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{AclRule, CommonStatus};

/// A secure MQTT broker. Users (MqttUser), bridges (Bridge) and certificates
/// (Certificate) refer to it by name.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "edgemq.io",
    version = "v1alpha1",
    kind = "Broker",
    namespaced,
    doc = "A secure MQTT broker: listeners, anonymous access, ACL patterns, limits and persistence.",
    status = "BrokerStatus",
    shortname = "mqb",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Connections","type":"integer","jsonPath":".status.connections"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.listeners.all(l, self.listeners.exists_one(m, m.port == l.port))").message("two listeners use the same port"))]
#[x_kube(validation = Rule::new("self.listeners.all(l, self.listeners.exists_one(m, m.name == l.name))").message("listener names must be unique"))]
pub struct BrokerSpec {
    /// Network listeners. At least one.
    #[schemars(length(min = 1, max = 32))]
    pub listeners: Vec<Listener>,
    /// Let clients connect without a username. Default: `false` (secure by default).
    #[serde(default)]
    pub allow_anonymous: bool,
    /// ACL rules for clients connected without a username (Mosquitto: `topic` lines
    /// before any `user` line). Only used when `allowAnonymous` is true.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anonymous_acl: Vec<AclRule>,
    /// ACL rules applied to every client after its own rules (Mosquitto: `pattern`
    /// lines); `%u` is the username and `%c` the client id, each a whole topic level.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acl_patterns: Vec<AclRule>,
    /// Check topics against ACL rules. Default: `true`. When false, every authenticated
    /// client may publish and subscribe anywhere (Mosquitto without an `acl_file`).
    #[serde(default = "default_true")]
    pub acl_enabled: bool,
    /// Retained messages and persistent sessions kept across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Persistence>,
    /// Resource limits; each has an edge-sized default.
    #[serde(default)]
    pub limits: Limits,
}

fn default_true() -> bool {
    true
}

/// Transport of a listener.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// MQTT over TCP (or TLS when `tls` is set).
    #[default]
    Mqtt,
    /// MQTT over WebSocket (or secure WebSocket when `tls` is set), subprotocol `mqtt`.
    Websockets,
}

/// One network listener.
#[derive(
    Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Name of the listener, unique in the Broker (used in status and metrics).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// TCP port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Address to bind. Default: `0.0.0.0` (all IPv4 interfaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_address: Option<String>,
    /// `mqtt` (default) or `websockets`.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Serve TLS with this certificate. Without it the listener is plain text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
}

/// Where a TLS listener takes its certificate and key from.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.certificateRef) != has(self.secretRef)").message("set exactly one of certificateRef and secretRef"))]
pub struct ListenerTls {
    /// Name of a Certificate resource whose issued key pair is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_ref: Option<String>,
    /// Name of a Secret of type `kubernetes.io/tls` (keys `tls.crt`, `tls.key`) already
    /// holding the key pair, for certificates made elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
}

/// Persistence of retained messages.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Persistence {
    /// Keep retained messages across restarts (standalone: in the state directory).
    /// Default: `false`.
    #[serde(default)]
    pub enabled: bool,
}

/// Limits. The defaults are sized for an edge device.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Most clients connected at once; further connections are refused. Default: 1000.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: u32,
    /// Largest PUBLISH payload in bytes; a larger one closes the connection. Default: 1 MiB.
    #[serde(default = "default_max_payload")]
    #[schemars(range(min = 1, max = 268435455))]
    pub max_payload_bytes: u32,
    /// QoS 1 and 2 messages in flight to one client at once. Default: 20.
    #[serde(default = "default_max_inflight")]
    #[schemars(range(min = 1, max = 65535))]
    pub max_inflight: u16,
    /// Messages queued for one client beyond the in-flight window (Mosquitto's
    /// `max_queued_messages`); past it new messages for that client are dropped and
    /// counted. Retained messages sent on SUBSCRIBE do not count against it (they are
    /// paced by the in-flight window). Default: 8192, what the Home Assistant Mosquitto
    /// add-on sets for the burst of state messages at Home Assistant's start-up.
    #[serde(default = "default_max_queued")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_queued_messages: u32,
    /// Seconds a disconnected persistent session is kept (MQTT 3.1.1 clean-session false,
    /// or an MQTT 5 client asking for longer). Default: 86400 (one day).
    #[serde(default = "default_session_expiry")]
    #[schemars(range(min = 0, max = 4294967295u32))]
    pub session_expiry_seconds: u32,
    /// Seconds a client has to finish the TLS or WebSocket handshake and send CONNECT.
    /// Default: 10.
    #[serde(default = "default_handshake_timeout")]
    #[schemars(range(min = 1, max = 300))]
    pub handshake_timeout_seconds: u32,
    /// Most retained messages kept; past it new retained topics are refused and counted.
    /// Default: 10000.
    #[serde(default = "default_max_retained")]
    #[schemars(range(min = 0, max = 10000000))]
    pub max_retained_messages: u32,
    /// Seconds between updates of the `$SYS/broker/…` statistics topics (Mosquitto's
    /// `sys_interval`); 0 turns them off. Default: 10.
    #[serde(default = "default_sys_interval")]
    #[schemars(range(min = 0, max = 86400))]
    pub sys_interval_seconds: u32,
}

fn default_max_connections() -> u32 {
    1000
}
fn default_max_payload() -> u32 {
    1024 * 1024
}
fn default_max_inflight() -> u16 {
    20
}
fn default_max_queued() -> u32 {
    8192
}
fn default_session_expiry() -> u32 {
    86400
}
fn default_handshake_timeout() -> u32 {
    10
}
fn default_max_retained() -> u32 {
    10000
}
fn default_sys_interval() -> u32 {
    10
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: default_max_connections(),
            max_payload_bytes: default_max_payload(),
            max_inflight: default_max_inflight(),
            max_queued_messages: default_max_queued(),
            session_expiry_seconds: default_session_expiry(),
            handshake_timeout_seconds: default_handshake_timeout(),
            max_retained_messages: default_max_retained(),
            sys_interval_seconds: default_sys_interval(),
        }
    }
}

/// Observed state of a Broker.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerStatus {
    /// observedGeneration and conditions.
    #[serde(flatten)]
    pub common: super::common::CommonStatus,
    /// Clients connected now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    /// Hash of the config bundle running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
}

impl BrokerStatus {
    /// Shared status fields.
    pub fn common(&self) -> &CommonStatus {
        &self.common
    }
}
