//! The pure plan: validated resources → one deterministic config bundle per Broker.
//!
//! No I/O, no clock, no randomness: the same resources give a byte-identical bundle,
//! and the bundle's hash says whether anything changed. Certificate *material* is not
//! part of the plan; listeners reference it by name and the runtime resolves it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::broker::{Limits, ListenerProtocol};
use crate::api::AclRule;

/// Everything one broker needs to run, derived from the resources.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BrokerBundle {
    /// `namespace/name` of the Broker (standalone: namespace `default` unless set).
    pub namespace: String,
    /// Name of the Broker.
    pub name: String,
    /// `metadata.generation` of the Broker, when known.
    pub generation: Option<i64>,
    /// Listeners, sorted by name.
    pub listeners: Vec<ListenerPlan>,
    /// Whether clients without a username may connect.
    pub allow_anonymous: bool,
    /// Users by username: password hash and source object.
    pub users: BTreeMap<String, UserPlan>,
    /// The ACL, with Mosquitto's semantics.
    pub acl: AclPlan,
    /// Limits.
    pub limits: Limits,
    /// Keep retained messages across restarts.
    pub persistence: bool,
}

/// One listener.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ListenerPlan {
    /// Listener name.
    pub name: String,
    /// Address to bind, `host:port`.
    pub bind: String,
    /// `mqtt` or `websockets`.
    pub protocol: ListenerProtocol,
    /// Where the TLS key pair comes from; `None` for plain text.
    pub tls: Option<TlsSource>,
}

/// Where a TLS key pair comes from. The runtime resolves it to PEM material.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum TlsSource {
    /// Issued for a Certificate resource (by name).
    Certificate(String),
    /// Already present in a `kubernetes.io/tls` Secret (by name).
    Secret(String),
}

/// One user of a broker.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UserPlan {
    /// Mosquitto-compatible password hash (`$7$`, `$6$` or `$argon2id$`).
    pub password_hash: String,
    /// The MqttUser object it came from, for status and logs.
    pub source: String,
}

/// The ACL of a broker, in Mosquitto's terms.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AclPlan {
    /// When false, every connected client may publish and receive anywhere.
    pub enabled: bool,
    /// Rules for clients without a username (Mosquitto: `topic` lines before any `user`).
    pub anonymous: Vec<AclRule>,
    /// Each user's own rules (Mosquitto: `user NAME` blocks).
    pub users: BTreeMap<String, Vec<AclRule>>,
    /// Rules for every client, with `%u` and `%c` (Mosquitto: `pattern` lines).
    pub patterns: Vec<AclRule>,
}

impl BrokerBundle {
    /// SHA-256 (hex) of the bundle's canonical JSON: equal bundles, equal hashes.
    pub fn hash(&self) -> String {
        use sha2::Digest;
        let json = serde_json::to_vec(self).unwrap_or_default();
        sha2::Sha256::digest(&json)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}
