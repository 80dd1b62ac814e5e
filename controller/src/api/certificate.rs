//! The Certificate kind: a key pair for TLS listeners and bridge clients, issued by
//! one of several issuers. `selfSigned` is implemented; `ca`, `acme` and `awsIot` are
//! part of the contract and implemented in later steps.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{CommonStatus, SecretKeyRef};

/// A certificate and private key, issued and renewed by edgemq.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "edgemq.io",
    version = "v1alpha1",
    kind = "Certificate",
    namespaced,
    doc = "A certificate and private key for TLS listeners and bridge clients, issued and renewed by edgemq.",
    status = "CertificateStatus",
    shortname = "mqcert",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"NotAfter","type":"date","jsonPath":".status.notAfter"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateSpec {
    /// Secret the issued key pair is written to (`tls.crt`, `tls.key`, `ca.crt`).
    /// Default: the Certificate's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// Common name. Default: the first DNS name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    /// DNS subject alternative names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    /// IP address subject alternative names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    /// Requested lifetime, as a Go duration (`2160h`). Default: `2160h` (90 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(h|m|s))+$"))]
    pub duration: Option<String>,
    /// Renew this long before expiry, as a Go duration. Default: one third of the lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(h|m|s))+$"))]
    pub renew_before: Option<String>,
    /// Key algorithm. Default: `ECDSA` (P-256).
    #[serde(default)]
    pub private_key: PrivateKey,
    /// Who signs the certificate. Exactly one issuer.
    pub issuer: Issuer,
}

/// Private key settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrivateKey {
    /// `ECDSA` (P-256, default) or `RSA` (2048 bits).
    #[serde(default)]
    pub algorithm: KeyAlgorithm,
}

/// Key algorithm.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum KeyAlgorithm {
    /// ECDSA with P-256.
    #[default]
    #[serde(rename = "ECDSA")]
    Ecdsa,
    /// RSA, 2048 bits.
    #[serde(rename = "RSA")]
    Rsa,
}

/// The issuer of a Certificate. Set exactly one field.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("[has(self.selfSigned), has(self.ca), has(self.acme), has(self.awsIot)].filter(x, x).size() == 1").message("set exactly one issuer"))]
pub struct Issuer {
    /// A self-signed certificate, for LAN brokers and tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signed: Option<SelfSignedIssuer>,
    /// Signed by a private CA whose key pair is in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaIssuer>,
    /// Issued by an ACME server such as Let's Encrypt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeIssuer>,
    /// An AWS IoT Core device certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_iot: Option<AwsIotIssuer>,
}

/// Self-signed issuer; no settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelfSignedIssuer {}

/// Private CA issuer.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaIssuer {
    /// `kubernetes.io/tls` Secret holding the CA certificate and key.
    #[schemars(length(min = 1, max = 253))]
    pub secret_ref: String,
}

/// ACME issuer.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AcmeIssuer {
    /// Directory URL of the ACME server.
    #[schemars(url)]
    pub server: String,
    /// Contact email for the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(email)]
    pub email: Option<String>,
    /// External account binding key id and HMAC key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_account_binding: Option<ExternalAccountBinding>,
    /// How challenges are solved.
    pub solver: serde_json::Value,
}

/// External account binding for ACME.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalAccountBinding {
    /// Key id given by the CA.
    pub key_id: String,
    /// The HMAC key (base64url), from a Secret key.
    pub key_secret_ref: SecretKeyRef,
}

/// AWS IoT Core issuer.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsIotIssuer {
    /// AWS region. Default: from the AWS configuration chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// IoT thing the certificate is attached to (created when absent).
    #[schemars(length(min = 1, max = 128))]
    pub thing_name: String,
    /// Name of an existing IoT policy to attach. Default: a least-privilege policy
    /// generated from the Bridges using this certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_name: Option<String>,
}

/// Observed state of a Certificate.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// observedGeneration and conditions.
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Start of validity of the current certificate (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// End of validity of the current certificate (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// Serial number of the current certificate (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// When the certificate will be renewed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
}

impl Certificate {
    /// Name of the Secret holding the issued key pair.
    pub fn secret_name(&self) -> String {
        self.spec
            .secret_name
            .clone()
            .or_else(|| self.metadata.name.clone())
            .unwrap_or_default()
    }
}
