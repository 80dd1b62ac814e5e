//! The Certificate kind: a key pair for TLS listeners and bridge clients, issued by
//! one of several issuers: `selfSigned`, `ca` (a private CA kept in a Secret), `acme`
//! (Let's Encrypt or any RFC 8555 server) and `awsIot`.

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
    category = "edgemq",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"NotAfter","type":"date","jsonPath":".status.notAfter"}"#,
    printcolumn = r#"{"name":"Renewal","type":"date","priority":1,"jsonPath":".status.renewalTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
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
    /// What happens outside edgemq (in AWS IoT) when the Certificate is deleted:
    /// `Retain` (default) or `Delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
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

/// Private CA issuer. Certificates it signs are valid for both server and client
/// authentication, so the same issuer serves LAN listeners and device or bridge client
/// certificates.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaIssuer {
    /// `kubernetes.io/tls` Secret holding the CA certificate and key (`tls.crt`,
    /// `tls.key`, PEM).
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
    /// PEM CA certificates trusted for the ACME server's HTTPS, from a Secret key: for a
    /// private ACME server whose certificate is not signed by a public CA. Default: the
    /// system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_secret_ref: Option<SecretKeyRef>,
    /// How challenges are solved.
    pub solver: AcmeSolver,
}

/// How an ACME challenge is answered. Set exactly one field.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.dns01) != has(self.http01)").message("set exactly one of dns01 and http01"))]
pub struct AcmeSolver {
    /// DNS-01: a TXT record `_acme-challenge.<name>` is set through a DNS provider.
    /// Works for names that are not reachable from the internet and for wildcards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns01: Option<Dns01Solver>,
    /// HTTP-01: edgemq answers `/.well-known/acme-challenge/` itself on a port the CA
    /// can reach (80, or one forwarded to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http01: Option<Http01Solver>,
}

/// HTTP-01 solver settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Http01Solver {
    /// Port the challenge server listens on while a challenge is pending. Default: 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Address it binds. Default: every interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_address: Option<String>,
    /// Kubernetes mode: also create an Ingress of this class for the solver, for
    /// clusters where the CA reaches HTTP services through an ingress controller.
    /// Without it the CA must reach the solver's Service (`port` is the Service's
    /// port there). Ignored by `edgemq run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,
}

/// DNS-01 solver: one provider, and how to check the record is visible before the CA
/// is asked to look.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("[has(self.rfc2136), has(self.cloudflare), has(self.route53), has(self.exec)].filter(x, x).size() == 1").message("set exactly one DNS provider: rfc2136, cloudflare, route53 or exec"))]
pub struct Dns01Solver {
    /// RFC 2136 dynamic update signed with TSIG (BIND, Knot, PowerDNS, many routers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rfc2136: Option<Rfc2136Provider>,
    /// Cloudflare's DNS API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudflare: Option<CloudflareProvider>,
    /// AWS Route 53.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route53: Option<Route53Provider>,
    /// A command that sets and clears the record (like manual hooks of other ACME
    /// clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProvider>,
    /// How the TXT record is checked before validation is requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<DnsPropagation>,
}

impl Dns01Solver {
    /// Whether exactly one DNS provider is set, as its CEL rule asks (checked again by
    /// validation for clusters without CEL, and by the solver itself).
    pub fn has_one_provider(&self) -> bool {
        [
            self.rfc2136.is_some(),
            self.cloudflare.is_some(),
            self.route53.is_some(),
            self.exec.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count()
            == 1
    }
}

/// RFC 2136 provider.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rfc2136Provider {
    /// `host:port` of the primary name server that accepts updates.
    #[schemars(length(min = 3, max = 1024))]
    pub nameserver: String,
    /// Zone to update. Default: found with an SOA query for the record name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Name of the TSIG key.
    #[schemars(length(min = 1, max = 253))]
    pub tsig_key_name: String,
    /// TSIG algorithm. Default: `hmac-sha256`.
    #[serde(default)]
    pub tsig_algorithm: TsigAlgorithm,
    /// The TSIG secret (base64, as in the server's key file), from a Secret key.
    pub tsig_secret_ref: SecretKeyRef,
}

/// TSIG algorithm.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum TsigAlgorithm {
    /// HMAC-SHA256.
    #[default]
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    /// HMAC-SHA384.
    #[serde(rename = "hmac-sha384")]
    HmacSha384,
    /// HMAC-SHA512.
    #[serde(rename = "hmac-sha512")]
    HmacSha512,
}

/// Cloudflare provider.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudflareProvider {
    /// API token with `Zone:DNS:Edit` on the zone, from a Secret key.
    pub api_token_secret_ref: SecretKeyRef,
    /// Zone id. Default: looked up by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_id: Option<String>,
    /// API base URL. Default: Cloudflare's v4 API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(url)]
    pub api_url: Option<String>,
}

/// Route 53 provider. Credentials come from the standard AWS chain unless given here.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route53Provider {
    /// Hosted zone id. Default: looked up by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosted_zone_id: Option<String>,
    /// AWS region. Default: from the AWS configuration chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Access key id, from a Secret key. Default: the AWS credential chain (on a cluster
    /// only in the namespaces of the chart value `ambientAwsNamespaces`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id_secret_ref: Option<SecretKeyRef>,
    /// Secret access key, from a Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_secret_ref: Option<SecretKeyRef>,
    /// API endpoint URL. Default: the AWS endpoint of the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(url)]
    pub endpoint_url: Option<String>,
}

/// Exec provider: runs `command` with the action and record in its environment:
/// `EDGEMQ_ACME_ACTION` (`set` or `clear`), `EDGEMQ_ACME_DOMAIN`,
/// `EDGEMQ_ACME_RECORD` (`_acme-challenge.<domain>`) and `EDGEMQ_ACME_VALUE`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecProvider {
    /// Program and arguments; not run through a shell.
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
    /// Seconds the command may run. Default: 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<u32>,
}

/// Check that the TXT record is visible before asking the CA to validate.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsPropagation {
    /// Name servers asked directly (`host:port`); every one must answer with the
    /// value. Default: for `rfc2136`, its `nameserver`; otherwise the zone's
    /// authoritative name servers (its NS records, found through the system resolver).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Seconds to wait for the record to appear. Default: 120.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<u32>,
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

/// AWS IoT Core issuer: a device certificate registered in AWS IoT, attached to a
/// thing and to a policy. Credentials come from the standard AWS chain (environment,
/// profile, web identity, ECS task role, instance metadata).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!(has(self.importFrom) && has(self.keyOrigin) && self.keyOrigin == 'AWS')").message("importFrom takes the key from the secret; do not set keyOrigin: AWS"))]
#[x_kube(validation = Rule::new("has(self.thingName) != has(self.fleetProvisioning)").message("set thingName, or fleetProvisioning (its template names the thing)"))]
pub struct AwsIotIssuer {
    /// AWS region. Default: from the AWS configuration chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// IoT thing the certificate is attached to (created when absent). Required unless
    /// `fleetProvisioning` is set, where the provisioning template names the thing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(min = 1, max = 128))]
    pub thing_name: String,
    /// Thing type given to the thing when edgemq creates it; must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub thing_type_name: Option<String>,
    /// Static thing group the thing is added to; must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub thing_group_name: Option<String>,
    /// Name of an existing IoT policy to attach. Default: a least-privilege policy
    /// generated from the Bridges using this certificate (connect as their client ids,
    /// publish and receive only on the remote topics they map, subscribe only to the
    /// filters they map in), named `edgemq-<thingName>-<certificate>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub policy_name: Option<String>,
    /// Where the private key is made. `Local` (default): on this machine, and AWS IoT
    /// signs a certificate request, so the key never leaves the machine. `AWS`: AWS IoT
    /// makes the key and the certificate (`CreateKeysAndCertificate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_origin: Option<KeyOrigin>,
    /// Also store the issued key and certificate in this AWS Secrets Manager secret (a
    /// JSON object with `certificatePem`, `privateKey`, `certificateArn`,
    /// `certificateId`), created or updated on every issue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_in_secret: Option<SecretsManagerRef>,
    /// Use a certificate already registered in AWS IoT (made by Terraform or by hand)
    /// whose key and certificate are in this Secrets Manager secret, instead of creating
    /// one. The secret holds JSON with `certificatePem` and `privateKey` (or
    /// `keyPair.PrivateKey`, as `create-keys-and-certificate` prints), and optionally
    /// `certificateArn` or `certificateId`. It is attached to the thing and policy;
    /// it is never rotated, deactivated or deleted by edgemq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_from: Option<SecretsManagerRef>,
    /// Where Bridges connect (`host`, or `host:port`) instead of the account's
    /// discovered `iot:Data-ATS` endpoint: for compatible services and local stand-ins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub data_endpoint: Option<String>,
    /// AWS API endpoint URL for IoT and Secrets Manager, for compatible services and
    /// tests. Default: the AWS endpoints of the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(url)]
    pub endpoint_url: Option<String>,
    /// Secret (in the Certificate's namespace; standalone: a `Secret` manifest) holding
    /// the access keys edgemq calls AWS with: `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN`. Default: the
    /// standard AWS credential chain of the process (environment, profile, web identity,
    /// container or instance role) — on a cluster only in the namespaces the installer
    /// lists (chart value `ambientAwsNamespaces`); elsewhere it is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret_ref: Option<String>,
    /// Fleet provisioning by claim: no AWS credentials on the machine. edgemq connects
    /// to `dataEndpoint` with the fleet's claim certificate, exchanges it over MQTT for
    /// the device's own certificate and thing (made by the provisioning template), and
    /// never uses the claim again once the device has its identity. `dataEndpoint` is
    /// required; `thingName`, `region`, `endpointUrl`, `importFrom` and `storeInSecret`
    /// do not apply. `thingTypeName`, `thingGroupName` and `policyName` are only read by
    /// `edgemq aws fleet-template`, which renders the template and policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_provisioning: Option<FleetProvisioning>,
}

/// AWS IoT fleet provisioning by claim.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetProvisioning {
    /// Name of the provisioning template in AWS IoT.
    #[schemars(length(min = 1, max = 36), regex(pattern = r"^[0-9A-Za-z_-]+$"))]
    pub template_name: String,
    /// The claim certificate every device of the fleet ships with.
    pub claim: ClaimCertificate,
    /// Values of the template's parameters, sent with the request (`SerialNumber`...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<TemplateParameter>,
    /// PEM CA certificates the data endpoint's certificate is checked against, from a
    /// Secret key; also written as the device certificate's `ca.crt`. Default: the
    /// Amazon root CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// Where the claim certificate and key are. Set exactly one field.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.secretRef) != has(self.certificateRef)").message("set exactly one of secretRef and certificateRef"))]
pub struct ClaimCertificate {
    /// `kubernetes.io/tls` Secret holding the claim certificate and key (`tls.crt`,
    /// `tls.key`, PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_ref: Option<String>,
    /// Another Certificate whose key pair is the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub certificate_ref: Option<String>,
}

/// One template parameter. Set exactly one of `value` and `valueFrom`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.value) != has(self.valueFrom)").message("set exactly one of value and valueFrom"))]
pub struct TemplateParameter {
    /// Parameter name, as the template declares it.
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// A literal value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A value read from the machine when provisioning starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ParameterSource>,
}

/// A value read from the machine. Set exactly one field. On a cluster the controller
/// provisions, so "the machine" is the controller's: `hostname` is the name of its node
/// and `file` a file in its container (mounted with the chart's `extraVolumes`), read
/// only under the folders the installer allows (chart value `fleetFileRoots`, default
/// none) and never under `/var/run/secrets` or `/proc`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.hostname) != has(self.file)").message("set exactly one of hostname and file"))]
pub struct ParameterSource {
    /// The machine's host name (on a cluster: the controller's node name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<HostnameSource>,
    /// The contents of a file, surrounding whitespace removed (a serial number such as
    /// `/sys/firmware/devicetree/base/serial-number` or `/etc/machine-id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub file: Option<String>,
}

/// The host name; no settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostnameSource {}

/// Where an AWS IoT certificate's private key is made.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum KeyOrigin {
    /// On this machine; AWS IoT signs a certificate request.
    #[default]
    Local,
    /// By AWS IoT (`CreateKeysAndCertificate`); the key crosses the network once.
    #[serde(rename = "AWS")]
    Aws,
}

/// A secret in AWS Secrets Manager.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretsManagerRef {
    /// Name or ARN of the secret.
    #[schemars(length(min = 1, max = 2048))]
    pub secret_id: String,
}

/// What happens outside edgemq when a Certificate is deleted.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// Leave everything in place (default): a Certificate that disappears by mistake (a
    /// bad checkout, a rename) must not revoke a device's identity, which cannot be
    /// undone. The local key is kept, so the Certificate comes back as it was.
    #[default]
    Retain,
    /// Remove what edgemq made: for `awsIot`, the certificate is detached from its
    /// policy and thing, set INACTIVE and deleted; the generated policy is deleted when
    /// no other certificate uses it, the thing when edgemq created it, and the
    /// `storeInSecret` secret is scheduled for deletion.
    Delete,
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
    /// Failed issuance or renewal attempts since the last success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// Why the last attempt failed (cleared on success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// When the last attempt failed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<String>,
    /// When the next attempt starts (RFC 3339), while retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
    /// What AWS IoT holds for an `awsIot` certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_iot: Option<AwsIotCertificateStatus>,
    /// On a cluster, for an `awsIot` certificate: edgemq's record of everything it made
    /// in AWS (JSON), saved after each step so a restarted controller resumes and a
    /// deleted Certificate is cleaned up from it. Written by the controller only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_iot_record: Option<String>,
}

/// The AWS IoT side of an `awsIot` certificate.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsIotCertificateStatus {
    /// ARN of the certificate in AWS IoT (not shown for `fleetProvisioning`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub certificate_arn: String,
    /// Certificate id in AWS IoT.
    pub certificate_id: String,
    /// The thing it is attached to.
    pub thing_name: String,
    /// Host of the account's `iot:Data-ATS` endpoint.
    pub endpoint: String,
    /// The attached policy (not shown for `fleetProvisioning`: the template's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy_name: String,
    /// The generated policy document (JSON), when edgemq generated the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_document: Option<String>,
    /// The provisioning template that made the thing and certificate, for
    /// `fleetProvisioning` (then the ARN and policy are the template's, not shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_template: Option<String>,
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
