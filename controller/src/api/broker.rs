//! The Broker kind: one MQTT broker with its listeners, anonymous access, ACL patterns,
//! limits and persistence.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{AclRule, CommonStatus, SecretKeyRef};

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
    category = "edgemq",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Connections","type":"integer","jsonPath":".status.connections"}"#,
    printcolumn = r#"{"name":"Address","type":"string","priority":1,"jsonPath":".status.address"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.listeners.all(l, self.listeners.exists_one(m, m.port == l.port))").message("two listeners use the same port"))]
#[x_kube(validation = Rule::new("self.listeners.all(l, self.listeners.exists_one(m, m.name == l.name))").message("listener names must be unique"))]
#[x_kube(validation = Rule::new("!has(self.service) || !has(self.service.nodePorts) || self.service.nodePorts.all(k, self.listeners.exists(l, l.name == k))").message("service.nodePorts names a listener the Broker does not have"))]
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
    /// Bind client ids to users, so that one user cannot take over (and end) another
    /// user's session by connecting with its client id. A pattern holds `%u` (the
    /// username) once and may end in `*` (any characters), for example `%u` or `%u-*`.
    /// A client with a username may then use only client ids matching the pattern with
    /// its own name (when several users' patterns match, the longest username owns the
    /// id); a client without a username only ids no user owns. Any other CONNECT is
    /// refused with "client identifier not valid" (MQTT 3.1.1 return code 2, MQTT 5
    /// 0x85) and the owner's session is left as it was; an empty client id is assigned
    /// the pattern with `%u` put in (and random hex for `*`). Default: unset, any
    /// client may use any client id and a new connection takes that session over
    /// (Mosquitto's behaviour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 256), regex(pattern = r"^[^*%]*%u[^*%]*\*?$"))]
    pub client_id_pattern: Option<String>,
    /// Retained messages and persistent sessions kept across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Persistence>,
    /// Resource limits; each has an edge-sized default.
    #[serde(default)]
    pub limits: Limits,
    /// The Service in front of the broker pod: its type, node ports, annotations and
    /// labels. Default: a `ClusterIP` Service exposing every listener.
    /// Kubernetes only; `edgemq run` ignores it.
    #[serde(default, skip_serializing_if = "BrokerService::is_default")]
    pub service: BrokerService,
    /// The broker pod: image, resources, scheduling, annotations and labels.
    /// Default: the controller's image, no resource requests, scheduled anywhere.
    /// Kubernetes only; `edgemq run` ignores it.
    #[serde(default, skip_serializing_if = "BrokerPod::is_default")]
    pub pod: BrokerPod,
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
    /// Ask clients for a certificate signed by a CA of yours (mutual TLS), and log a
    /// client in as the identity its certificate carries (Mosquitto's
    /// `require_certificate` with `use_identity_as_username`). Default: no client
    /// certificates asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
}

/// Client certificates on a TLS or secure WebSocket listener.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.caCertificateRef) != has(self.caSecretRef)").message("set exactly one of caCertificateRef and caSecretRef"))]
pub struct ClientAuth {
    /// `required` (default): a client without a valid certificate is refused during the
    /// TLS handshake. `optional`: a client may also come without a certificate and log
    /// in with a password; a certificate it does present must be valid.
    #[serde(default)]
    pub mode: ClientAuthMode,
    /// The CA that signs device certificates: an edgemq Certificate (a `ca` or
    /// `selfSigned` one; its `ca.crt`, else its certificate). Replaced live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate_ref: Option<String>,
    /// The CA bundle (PEM) that signs device certificates, from a Secret key, usually
    /// `ca.crt`. Replaced live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// A certificate revocation list (PEM or DER) of that CA, from a Secret key. A
    /// revoked certificate is refused, and a connected client whose certificate a new
    /// list revokes is disconnected. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_secret_ref: Option<SecretKeyRef>,
    /// Which part of the certificate becomes the username: `commonName` (default, the
    /// subject's CN, as Mosquitto's `use_identity_as_username`), the first `dnsName`,
    /// `uri` or `email` subject alternative name, or the whole `subject` as an RFC 2253
    /// string (Mosquitto's `use_subject_as_username`).
    #[serde(default)]
    pub identity: CertificateIdentity,
    /// Also bind the client id to the identity: a CONNECT with another client id is
    /// refused (3.1.1 return code 2, MQTT 5 reason 0x85); an empty one is given the
    /// identity. Default: `false`.
    #[serde(default)]
    pub identity_as_client_id: bool,
    /// A certificate whose identity no MqttUser names (`certificateIdentity`): logged in
    /// under its identity with the Broker's `aclPatterns` only (`aclPatterns`, default,
    /// as Mosquitto), or refused (`refuse`, 3.1.1 return code 5, MQTT 5 reason 0x87).
    #[serde(default)]
    pub unknown_identity: UnknownIdentity,
}

/// Whether a listener requires client certificates.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum ClientAuthMode {
    /// No connection without a valid certificate.
    #[default]
    Required,
    /// A certificate, or a password.
    Optional,
}

/// The part of a client certificate that becomes the username.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum CertificateIdentity {
    /// The subject's common name (CN).
    #[default]
    CommonName,
    /// The first DNS subject alternative name.
    DnsName,
    /// The first URI subject alternative name.
    Uri,
    /// The first email (rfc822Name) subject alternative name.
    Email,
    /// The whole subject, RFC 2253 (`CN=device-1,O=Example`).
    Subject,
}

/// What a certificate whose identity no MqttUser names gets.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum UnknownIdentity {
    /// Logged in under its identity, with the Broker's `aclPatterns` only.
    #[default]
    AclPatterns,
    /// Refused as not authorized.
    Refuse,
}

/// Persistence of retained messages.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Persistence {
    /// Keep retained messages across restarts (standalone: in the state directory;
    /// Kubernetes: on a PersistentVolumeClaim). Default: `false`.
    #[serde(default)]
    pub enabled: bool,
    /// Size requested for the PersistentVolumeClaim, as a Kubernetes quantity (`1Gi`,
    /// `500Mi`). Default: `1Gi`. Kubernetes only; `edgemq run` ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[kMGTPE]|[eE][+-]?[0-9]+)?$"
    ))]
    pub size: Option<String>,
    /// StorageClass of the PersistentVolumeClaim. Default: the cluster's default
    /// StorageClass. Kubernetes only; `edgemq run` ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// How a pod-template change (image, resources, a restart) replaces the pod.
    /// `HandOver` (default): the new pod starts beside the old one on the same node
    /// and volume, the old pod tells its clients to go, saves and hands the stores
    /// over, and the new one serves at once (for node-local volumes such as k3s'
    /// local-path, where both pods can mount the volume). `Recreate`: the old pod
    /// stops before the new one is created (for volumes one node at a time cannot
    /// share: the new pod of a hand-over would wait for the volume forever).
    /// Kubernetes only.
    #[serde(default, skip_serializing_if = "UpdateStrategy::is_default")]
    pub update_strategy: UpdateStrategy,
}

/// How a broker pod with a volume is replaced.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum UpdateStrategy {
    /// The new pod starts first and takes the stores over from the old one.
    #[default]
    HandOver,
    /// The old pod stops first.
    Recreate,
}

impl UpdateStrategy {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Its name, as written in YAML and in `status.updateStrategy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HandOver => "HandOver",
            Self::Recreate => "Recreate",
        }
    }
}

/// How the broker's Service is exposed, as Kubernetes' Service `type`.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
pub enum ServiceType {
    /// Reachable inside the cluster only (default).
    #[default]
    ClusterIP,
    /// Also on a port of every node (see `nodePorts`).
    NodePort,
    /// Also through the cluster's load balancer (on k3s: ServiceLB, on the node's address).
    LoadBalancer,
}

impl ServiceType {
    /// The Service `type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Whether a `NodePort` or `LoadBalancer` Service keeps the client's source address,
/// as Kubernetes' Service `externalTrafficPolicy`.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
pub enum ExternalTrafficPolicy {
    /// Any node forwards to the pod; the client's address is hidden (Kubernetes' default).
    #[default]
    Cluster,
    /// Only the pod's node answers; the client's address is kept.
    Local,
}

impl ExternalTrafficPolicy {
    /// The Service `externalTrafficPolicy` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ExternalTrafficPolicy::Cluster => "Cluster",
            ExternalTrafficPolicy::Local => "Local",
        }
    }
}

/// The Service in front of a Broker's pod. Kubernetes only; `edgemq run` ignores it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BrokerService {
    /// `ClusterIP` (default), `NodePort` or `LoadBalancer`.
    #[serde(rename = "type", default)]
    pub type_: ServiceType,
    /// Annotations of the Service, for example for a load balancer's settings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Labels of the Service, added to edgemq's own (which win on conflict).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Node port of each listener, by listener name, for `NodePort` and `LoadBalancer`
    /// Services. A cluster accepts 30000-32767 unless its apiserver's
    /// `--service-node-port-range` says otherwise. Default: the cluster picks a free one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "additionalProperties" = {"type": "integer", "format": "int32", "minimum": 1, "maximum": 65535},
        "maxProperties" = 32
    ))]
    pub node_ports: BTreeMap<String, i32>,
    /// `Cluster` (Kubernetes' default) or `Local` (keeps clients' source addresses), for
    /// `NodePort` and `LoadBalancer` Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<ExternalTrafficPolicy>,
}

impl BrokerService {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// When Kubernetes pulls the broker image, as a container's `imagePullPolicy`.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
pub enum ImagePullPolicy {
    /// On every pod start.
    Always,
    /// When the node does not have the image yet.
    #[default]
    IfNotPresent,
    /// Never; the image must be on the node.
    Never,
}

impl ImagePullPolicy {
    /// The container `imagePullPolicy` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// The broker pod's settings. Kubernetes only; `edgemq run` ignores it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BrokerPod {
    /// Container image of the broker. Default: the controller's own image (the broker is
    /// the same binary, `edgemq broker`). Another image runs only if the installer lists
    /// it (chart value `allowedBrokerImages`): the pod reads the Broker's Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub image: Option<String>,
    /// `Always`, `IfNotPresent` or `Never`. Default: Kubernetes' (`Always` for a
    /// `:latest` or untagged image, else `IfNotPresent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// CPU and memory requests and limits of the broker container. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Schedule only on nodes with these labels. Default: any node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations, to schedule on tainted nodes. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node and pod affinity. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Annotations of the pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Labels of the pod, added to edgemq's own (which win on conflict: the Service and
    /// the controller select pods by them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// PriorityClass of the pod. Default: the cluster's default priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Seconds the broker has to close connections and flush its stores when the pod
    /// stops. Default: 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub termination_grace_period_seconds: Option<i64>,
}

impl BrokerPod {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
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
    /// Most bytes (topics and payloads) of retained messages kept, in memory and in the
    /// state directory; past it a new or larger retained message is not kept (it is
    /// still delivered to the subscribers connected now; a topic's previous retained
    /// message stays) and the refusal is counted. Default: 67108864 (64 MiB).
    #[serde(default = "default_max_retained_bytes")]
    #[schemars(range(min = 0, max = 1099511627776u64))]
    pub max_retained_bytes: u64,
    /// Largest CONNECT packet in bytes (client id, will, username, password and
    /// properties), checked from its header before the rest is read: a client that
    /// announces more is closed before it has authenticated, so an unauthenticated
    /// socket holds at most this much memory. Default: 16384 (16 KiB).
    #[serde(default = "default_max_connect_bytes")]
    #[schemars(range(min = 256, max = 268435455))]
    pub max_connect_bytes: u32,
    /// Most sockets that have not yet authenticated (TLS or WebSocket handshake and
    /// CONNECT under way), counted apart from `maxConnections` and never more than it;
    /// past it new sockets are closed at once. A socket gets a connection slot only once
    /// its CONNECT is authenticated, so idle sockets cannot lock out real logins.
    /// Default: 64.
    #[serde(default = "default_max_handshakes")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_handshakes: u32,
    /// Most unauthenticated sockets from one IP address at once; past it new sockets
    /// from that address are closed at once. Clients behind one NAT (or a Kubernetes
    /// Service that rewrites source addresses) share it. Default: 16.
    #[serde(default = "default_max_handshakes_per_address")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_handshakes_per_address: u32,
    /// Most persistent sessions kept (MQTT 3.1.1 clean-session false or an MQTT 5
    /// session expiry above 0), connected or not; past it a CONNECT asking for a new
    /// persistent session is refused (MQTT 3.1.1 return code 3, MQTT 5 reason 0x97).
    /// Default: 10000.
    #[serde(default = "default_max_sessions")]
    #[schemars(range(min = 1, max = 10000000))]
    pub max_sessions: u32,
    /// Most subscriptions one client holds; past it a SUBSCRIBE filter is refused in the
    /// SUBACK (0x80; MQTT 5: 0x97 quota exceeded). Default: 10000 (Home Assistant
    /// subscribes to each entity's topics one by one).
    #[serde(default = "default_max_subscriptions")]
    #[schemars(range(min = 1, max = 10000000))]
    pub max_subscriptions_per_client: u32,
    /// Most bytes (topics and payloads) queued for one client beyond the in-flight
    /// window (Mosquitto's `max_queued_bytes`); past it new messages for that client are
    /// dropped and counted, as at `maxQueuedMessages`. Default: 16777216 (16 MiB).
    #[serde(default = "default_max_queued_bytes")]
    #[schemars(range(min = 1024, max = 1099511627776u64))]
    pub max_queued_bytes: u64,
    /// Clients told to go per second when the broker stops (a pod replaced by an
    /// upgrade, SIGTERM): it stops accepting, then sends MQTT 5 clients DISCONNECT 0x8B
    /// (server shutting down) and closes MQTT 3.1.1 connections at this pace, so a
    /// thousand devices do not reconnect in the same second; then it saves sessions.
    /// Default: 200 (`maxConnections` 1000 are told within 5 s, inside the pod's grace
    /// period).
    // Left out of bundles at its default, so a broker pod of an older release still
    // reads them.
    #[serde(
        default = "default_shutdown_disconnect_rate",
        skip_serializing_if = "is_default_shutdown_disconnect_rate"
    )]
    #[schemars(range(min = 1, max = 1000000))]
    pub shutdown_disconnect_rate: u32,
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
fn default_max_retained_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_max_connect_bytes() -> u32 {
    16 * 1024
}
fn default_max_handshakes() -> u32 {
    64
}
fn default_max_handshakes_per_address() -> u32 {
    16
}
fn default_max_sessions() -> u32 {
    10000
}
fn default_max_subscriptions() -> u32 {
    10000
}
fn default_max_queued_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_shutdown_disconnect_rate() -> u32 {
    200
}
fn is_default_shutdown_disconnect_rate(v: &u32) -> bool {
    *v == default_shutdown_disconnect_rate()
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
            max_retained_bytes: default_max_retained_bytes(),
            max_connect_bytes: default_max_connect_bytes(),
            max_handshakes: default_max_handshakes(),
            max_handshakes_per_address: default_max_handshakes_per_address(),
            max_sessions: default_max_sessions(),
            max_subscriptions_per_client: default_max_subscriptions(),
            max_queued_bytes: default_max_queued_bytes(),
            shutdown_disconnect_rate: default_shutdown_disconnect_rate(),
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
    /// Hash of the config bundle the running broker has applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Hash of the config bundle the controller wrote last; equal to `configHash` once
    /// the broker has applied it. Kubernetes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_config_hash: Option<String>,
    /// Pods of the Broker that are ready (0 or 1: a Broker runs one replica).
    /// Kubernetes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Where clients connect: the Service's `<name>.<namespace>.svc` with its ports, or
    /// the load balancer's IP address or host name. Kubernetes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// How a pod-template change replaces the broker pod: `HandOver` (a volume; the new
    /// pod takes the stores over from the old one), `Recreate` (a volume that
    /// `persistence.updateStrategy` or the bound PersistentVolume says two pods cannot
    /// share) or `RollingUpdate` (no volume: the new pod starts first, sessions are not
    /// carried over). Kubernetes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<String>,
    /// Why `updateStrategy` is what it is, from the volume the Broker's claim is bound
    /// to (node-local, ReadWriteMany, or a fallback to Recreate). Kubernetes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy_reason: Option<String>,
}

impl BrokerStatus {
    /// Shared status fields.
    pub fn common(&self) -> &CommonStatus {
        &self.common
    }
}
