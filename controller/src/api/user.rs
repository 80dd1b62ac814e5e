//! The MqttUser kind: one username on one Broker, its password and its ACL.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{AclRule, CommonStatus, SecretKeyRef};

/// A user allowed to connect to a Broker, with its password and topic permissions.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "edgemq.io",
    version = "v1alpha1",
    kind = "MqttUser",
    namespaced,
    doc = "A user of a Broker: its password (hash or Secret) and its topic permissions.",
    status = "MqttUserStatus",
    shortname = "mqu",
    category = "edgemq",
    printcolumn = r#"{"name":"Broker","type":"string","jsonPath":".spec.brokerRef"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Username","type":"string","priority":1,"jsonPath":".status.username"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("[has(self.passwordSecretRef), has(self.passwordHash), has(self.certificateIdentity)].filter(x, x).size() == 1").message("set exactly one of passwordSecretRef, passwordHash and certificateIdentity"))]
#[x_kube(validation = Rule::new("!has(self.certificateIdentity) || !has(self.username) || self.username == self.certificateIdentity").message("a certificate user's username is its certificateIdentity"))]
pub struct MqttUserSpec {
    /// Name of the Broker this user may connect to.
    #[schemars(length(min = 1, max = 253))]
    pub broker_ref: String,
    /// The MQTT username. Default: the object's name. Must not contain `+` or `#`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65535), regex(pattern = r"^[^+#:]+$"))]
    pub username: Option<String>,
    /// The plain password, from a Secret key; edgemq hashes it (`$7$`, PBKDF2-SHA512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// A Mosquitto-compatible password hash (`$7$...` from `mosquitto_passwd` or
    /// `edgemq passwd`, `$6$...`, or `$argon2id$...`), or mosquitto-go-auth's
    /// `PBKDF2$sha512$...` (the Home Assistant Mosquitto add-on's `pw`), so a committed
    /// folder holds no plain password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(\$(6|7|argon2id)\$|PBKDF2\$(sha512|sha256)\$)"))]
    pub password_hash: Option<String>,
    /// Instead of a password: the identity a client certificate carries (its CN, or
    /// the SAN or subject a listener's `clientAuth.identity` names). A client whose
    /// certificate a `clientAuth` listener accepts with this identity is logged in as
    /// this user, whose username is the identity; it has no password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65535), regex(pattern = r"^[^+#]+$"))]
    pub certificate_identity: Option<String>,
    /// This user's ACL rules, checked before the Broker's `aclPatterns`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acl: Vec<AclRule>,
}

/// Observed state of an MqttUser.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttUserStatus {
    /// observedGeneration and conditions.
    #[serde(flatten)]
    pub common: CommonStatus,
    /// The MQTT username in effect: `spec.username`, else the object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

impl MqttUser {
    /// The MQTT username: `spec.username`, else `spec.certificateIdentity`, else the
    /// object's name.
    pub fn username(&self) -> String {
        self.spec
            .username
            .clone()
            .or_else(|| self.spec.certificate_identity.clone())
            .or_else(|| self.metadata.name.clone())
            .unwrap_or_default()
    }
}
