//! The Bridge kind: a store-and-forward link from a local Broker to a remote MQTT
//! broker (AWS IoT Core or another broker). The runtime is in `crate::bridge`.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{CommonStatus, SecretKeyRef};

/// A link from a local Broker to a remote broker, with topic mapping and an on-disk
/// queue so nothing is lost while the remote is unreachable.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "edgemq.io",
    version = "v1alpha1",
    kind = "Bridge",
    namespaced,
    doc = "A store-and-forward link from a local Broker to a remote MQTT broker.",
    status = "BridgeStatus",
    shortname = "mqbr",
    category = "edgemq",
    printcolumn = r#"{"name":"Broker","type":"string","jsonPath":".spec.brokerRef"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Connected","type":"string","jsonPath":".status.connected"}"#,
    printcolumn = r#"{"name":"Queued","type":"integer","jsonPath":".status.queueDepth"}"#,
    printcolumn = r#"{"name":"Dropped","type":"integer","priority":1,"jsonPath":".status.dropped"}"#,
    printcolumn = r#"{"name":"Remote","type":"string","priority":1,"jsonPath":".status.remote"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BridgeSpec {
    /// Name of the local Broker.
    #[schemars(length(min = 1, max = 253))]
    pub broker_ref: String,
    /// The remote broker.
    pub remote: BridgeRemote,
    /// Topic rules; at least one.
    #[schemars(length(min = 1, max = 256))]
    pub topics: Vec<BridgeTopic>,
    /// Bounds of the outbound store-and-forward queue.
    #[serde(default)]
    pub queue: BridgeQueue,
}

/// MQTT protocol version spoken to the remote.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum MqttVersion {
    /// MQTT 3.1.1.
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.
    #[serde(rename = "5")]
    V5,
}

/// How to reach and log in to the remote broker.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.address) != has(self.awsIotEndpoint)").message("set exactly one of address and awsIotEndpoint"))]
pub struct BridgeRemote {
    /// `host:port` of the remote broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 1024), regex(pattern = r"^[^\s:]+:[0-9]{1,5}$"))]
    pub address: Option<String>,
    /// Take the address from AWS IoT Core: the `iot:Data-ATS` endpoint of the account
    /// of an `awsIot` Certificate, port 8883 (443 when ALPN is set). Instead of `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_iot_endpoint: Option<AwsIotEndpoint>,
    /// Client id used on the remote. Default: `<broker>-<bridge>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub client_id: Option<String>,
    /// MQTT version. Default: `3.1.1`.
    #[serde(default)]
    pub protocol_version: MqttVersion,
    /// Keepalive in seconds. Default: 60.
    #[serde(default = "default_keepalive")]
    #[schemars(range(min = 5, max = 65535))]
    pub keep_alive_seconds: u16,
    /// Start a clean session on every connect. Default: `false` (persistent session,
    /// so the remote keeps QoS 1 messages for `in` topics while the link is down).
    #[serde(default)]
    pub clean_session: bool,
    /// Username on the remote, from a Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_secret_ref: Option<SecretKeyRef>,
    /// Password on the remote, from a Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// TLS towards the remote. Without it the link is plain text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BridgeTls>,
    /// Send the username and password of `usernameSecretRef` and `passwordSecretRef`
    /// without `tls` to a remote that is not loopback (`127.0.0.0/8` or `localhost`),
    /// where anyone on the path can read them. Refused unless set.
    /// Default: `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_plaintext_credentials: bool,
}

/// The AWS IoT Core endpoint of the account an `awsIot` Certificate belongs to.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsIotEndpoint {
    /// Name of a Certificate with the `awsIot` issuer, in the Bridge's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub certificate_ref: String,
}

fn default_keepalive() -> u16 {
    60
}

/// TLS settings of a bridge.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!(has(self.caCertificateRef) && has(self.caSecretRef))").message("set at most one of caCertificateRef and caSecretRef"))]
#[x_kube(validation = Rule::new("!(has(self.clientCertificateRef) && has(self.clientSecretRef))").message("set at most one of clientCertificateRef and clientSecretRef"))]
pub struct BridgeTls {
    /// Verify the remote against the CA of this Certificate. Default: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate_ref: Option<String>,
    /// Verify the remote against the CA in this Secret key (PEM). Default: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Present the key pair of this Certificate (mutual TLS, as AWS IoT Core requires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_ref: Option<String>,
    /// Present the key pair in this `kubernetes.io/tls` Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<String>,
    /// ALPN protocols offered, for example `x-amzn-mqtt-ca` for AWS IoT Core on port 443.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    /// Server name checked against the remote's certificate. Default: the address host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// Direction a topic rule bridges.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum BridgeDirection {
    /// Local to remote.
    #[default]
    Out,
    /// Remote to local.
    In,
    /// Both ways; a message bridged one way never comes back.
    Both,
}

/// One topic rule, with Mosquitto's `topic` bridge meaning.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BridgeTopic {
    /// Topic filter, relative to the prefixes.
    #[schemars(length(min = 1, max = 65535))]
    pub pattern: String,
    /// `out` (default), `in` or `both`.
    #[serde(default)]
    pub direction: BridgeDirection,
    /// QoS used on the link. Default: 1.
    #[serde(default = "default_qos")]
    #[schemars(range(min = 0, max = 2))]
    pub qos: u8,
    /// Prefix added to the pattern on the local side.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_prefix: String,
    /// Prefix added to the pattern on the remote side.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_prefix: String,
}

fn default_qos() -> u8 {
    1
}

/// Bounds of the store-and-forward queue. When full, the oldest message is dropped and
/// counted.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BridgeQueue {
    /// Most messages kept. Default: 100000.
    #[serde(default = "default_queue_messages")]
    #[schemars(range(min = 1, max = 100000000))]
    pub max_messages: u64,
    /// Most payload bytes kept. Default: 268435456 (256 MiB).
    #[serde(default = "default_queue_bytes")]
    #[schemars(range(min = 1024))]
    pub max_bytes: u64,
}

fn default_queue_messages() -> u64 {
    100_000
}
fn default_queue_bytes() -> u64 {
    256 * 1024 * 1024
}

impl Default for BridgeQueue {
    fn default() -> Self {
        BridgeQueue {
            max_messages: default_queue_messages(),
            max_bytes: default_queue_bytes(),
        }
    }
}

/// Observed state of a Bridge.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BridgeStatus {
    /// observedGeneration and conditions.
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Whether the link to the remote is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
    /// Messages waiting in the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u64>,
    /// Payload bytes waiting in the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_bytes: Option<u64>,
    /// When `connected` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// `host:port` the bridge connects to: `spec.remote.address`, or the AWS IoT
    /// endpoint it resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Why the last connection attempt or the link failed (kept after a reconnect, with
    /// `lastErrorTime` saying when).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When `lastError` happened (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_time: Option<String>,
    /// Messages delivered to the remote since the bridge started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_out: Option<u64>,
    /// Messages received from the remote and published locally since the bridge started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_in: Option<u64>,
    /// Messages dropped because the queue was full (the oldest go first), since the
    /// bridge started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
}
