//! Types shared by several kinds: references, ACL rules, status conditions.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A reference to one key of a Secret in the same namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Name of the Secret (in standalone mode: a `Secret` manifest in the config or secrets folder).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's `data` or `stringData`.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A reference to a whole object by name, in the same namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalObjectRef {
    /// Name of the referenced object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What an ACL rule grants, with Mosquitto's meaning.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    Deserialize,
    Serialize,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Receive messages published on matching topics.
    Read,
    /// Publish on matching topics.
    Write,
    /// Both read and write (Mosquitto's default when no access word is given).
    #[default]
    Readwrite,
    /// Neither; deny rules are checked before the others and the first match decides.
    Deny,
}

/// One ACL rule: a topic filter and the access it grants, as in Mosquitto's ACL file.
#[derive(
    Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AclRule {
    /// Topic filter, MQTT wildcards `+` and `#` allowed. In `aclPatterns`, a whole level of
    /// `%u` stands for the client's username and `%c` for its client id. A topic starting
    /// with `$` is only matched by rules that also start with `$`.
    #[schemars(length(min = 1, max = 65535))]
    pub topic: String,
    /// Access granted on matching topics. Default: `readwrite`.
    #[serde(default)]
    pub access: Access,
}

/// The Ready condition type, reported by every kind.
pub const CONDITION_READY: &str = "Ready";

/// A status condition, with the fields of Kubernetes' `metav1.Condition`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, for example `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase word saying why the condition has this status.
    pub reason: String,
    /// A human-readable explanation.
    // The schemars-only `skip_serializing_if` keeps `default: ''` out of the schema (a
    // Kubernetes 1.20 apiserver refuses a CRD with an empty-string default); serde
    // still defaults and always writes the field.
    #[serde(default)]
    #[schemars(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When the status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Status fields shared by every kind.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommonStatus {
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions; `Ready` at least.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
