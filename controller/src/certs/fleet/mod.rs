//! AWS IoT fleet provisioning by claim: a device exchanges the fleet's shared claim
//! certificate for its own certificate and thing, over MQTT, with no AWS credentials.
//!
//! ```text
//!  claim pair ─► mutual TLS to the data endpoint ─► CONNECT
//!     ─► SUBSCRIBE  $aws/certificates/create-from-csr/json/{accepted,rejected}
//!                   $aws/provisioning-templates/<template>/provision/json/{accepted,rejected}
//!     ─► PUBLISH    $aws/certificates/create-from-csr/json  {certificateSigningRequest}
//!                   (keyOrigin AWS: $aws/certificates/create/json  {})
//!     ◄─ accepted   {certificateId, certificatePem, certificateOwnershipToken[, privateKey]}
//!     ─► PUBLISH    $aws/provisioning-templates/<template>/provision/json
//!                   {certificateOwnershipToken, parameters}
//!     ◄─ accepted   {thingName, deviceConfiguration}
//!  rejected (either step): {statusCode, errorCode, errorMessage} ─► [`FleetError::Rejected`]
//! ```
//!
//! [`provision`] is the store-agnostic core (endpoint, claim pair, CA, template,
//! resolved parameters, key origin in; the device's pair, certificate id and thing name
//! out), so Kubernetes mode can call it as standalone mode does. Standalone mode keeps
//! the result in the Certificate's state directory ([`cached`], [`ensure`]): `tls.key`,
//! `tls.crt`, `ca.crt` (the endpoint's CA), `endpoint` and, written last,
//! `fleet.json`. Once `fleet.json` exists the claim is never used again, also after a
//! restart; a failed attempt stores nothing.
//!
//! The client speaks MQTT 3.1.1 through the same rumqttd codecs as the bridges.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::awsiot::{Issued, AMAZON_ROOT_CAS, ENDPOINT_FILE};
use super::{cert_dir, cert_info, write_private, CertError, Secrets};
use crate::api::certificate::{
    AwsIotCertificateStatus, FleetProvisioning, KeyAlgorithm, KeyOrigin, TemplateParameter,
};
use crate::api::Certificate;
use crate::tls::TlsMaterial;

mod session;

pub use crate::aws::fleet_provisioning::{
    create_request, csr_request, parse_rejection, provision_request, CertificateAccepted,
    FleetError, ProvisionAccepted, Rejection, Step, Topics,
};
pub use session::provision;

/// The record of a provisioned identity, written last (`fleet.json`).
pub const RECORD_FILE: &str = "fleet.json";

/// What [`provision`] needs; nothing here depends on where it is stored.
#[derive(Clone)]
pub struct FleetRequest {
    /// Data endpoint, `host` or `host:port` (default port 8883).
    pub endpoint: String,
    /// The claim certificate and key.
    pub claim: TlsMaterial,
    /// PEM CA certificates the endpoint's certificate is checked against.
    pub ca_pem: String,
    /// Provisioning template name.
    pub template_name: String,
    /// Template parameters, resolved ([`resolve_parameters`]).
    pub parameters: BTreeMap<String, String>,
    /// Where the device key is made.
    pub key_origin: KeyOrigin,
    /// MQTT client id of the provisioning connection.
    pub client_id: String,
}

impl std::fmt::Debug for FleetRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetRequest")
            .field("endpoint", &self.endpoint)
            .field("template_name", &self.template_name)
            .field("parameters", &self.parameters)
            .field("key_origin", &self.key_origin)
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// The device's own identity.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetIdentity {
    /// The device's certificate and key.
    pub material: TlsMaterial,
    /// Certificate id in AWS IoT.
    pub certificate_id: String,
    /// The thing the template made.
    pub thing_name: String,
    /// The template's `DeviceConfiguration`, as AWS IoT returned it.
    pub device_configuration: BTreeMap<String, serde_json::Value>,
}

impl std::fmt::Debug for FleetIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetIdentity")
            .field("certificate_id", &self.certificate_id)
            .field("thing_name", &self.thing_name)
            .finish()
    }
}

/// Why a value could not be read from the machine.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// Neither the kernel nor the environment gives the host name.
    #[error("the host name could not be read")]
    NoHostname,
    /// A file could not be read.
    #[error("{path}: {source}")]
    File {
        /// As the parameter names it.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The value is not available where edgemq runs (on a cluster: no node name, or a
    /// file the installer does not allow or did not mount); the text says why and
    /// what to do.
    #[error("{0}")]
    Unavailable(String),
}

/// Why the template parameters could not be resolved; each names the parameter.
#[derive(Debug, thiserror::Error)]
pub enum ParameterError {
    /// Reading its machine value failed.
    #[error("parameter {name}: {source}")]
    Read {
        /// The parameter.
        name: String,
        /// Cause.
        #[source]
        source: MachineError,
    },
    /// `valueFrom` names no source.
    #[error("parameter {0}: valueFrom sets no source")]
    NoSource(String),
    /// The machine value is empty once trimmed.
    #[error("parameter {0}: the value read is empty")]
    Empty(String),
    /// Neither `value` nor `valueFrom` is set.
    #[error("parameter {0}: no value")]
    NoValue(String),
}

/// What parameters read from the machine.
pub trait Machine {
    /// The host name.
    fn hostname(&self) -> Result<String, MachineError>;
    /// A file's contents.
    fn read_file(&self, path: &str) -> Result<String, MachineError>;
}

/// The machine edgemq runs on.
pub struct ThisMachine;

impl Machine for ThisMachine {
    fn hostname(&self) -> Result<String, MachineError> {
        ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .ok_or(MachineError::NoHostname)
    }
    fn read_file(&self, path: &str) -> Result<String, MachineError> {
        std::fs::read(path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(|source| MachineError::File {
                path: path.to_string(),
                source,
            })
    }
}

/// The values of the template parameters: literals as written, machine values with
/// surrounding whitespace (and NUL bytes, as device-tree files end) removed. An empty
/// or unreadable machine value is an error naming the parameter.
pub fn resolve_parameters(
    params: &[TemplateParameter],
    machine: &impl Machine,
) -> Result<BTreeMap<String, String>, ParameterError> {
    let mut out = BTreeMap::new();
    for p in params {
        let v = match (&p.value, &p.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => {
                let raw = match (&from.hostname, &from.file) {
                    (Some(_), _) => machine.hostname(),
                    (None, Some(path)) => machine.read_file(path),
                    (None, None) => return Err(ParameterError::NoSource(p.name.clone())),
                }
                .map_err(|source| ParameterError::Read {
                    name: p.name.clone(),
                    source,
                })?;
                let v = raw
                    .trim_matches(|c: char| c.is_whitespace() || c == '\0')
                    .to_string();
                if v.is_empty() {
                    return Err(ParameterError::Empty(p.name.clone()));
                }
                v
            }
            (None, None) => return Err(ParameterError::NoValue(p.name.clone())),
        };
        out.insert(p.name.clone(), v);
    }
    Ok(out)
}

/// What a standalone state directory records of a provisioned identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Namespace of the Certificate.
    pub namespace: String,
    /// Name of the Certificate.
    pub name: String,
    /// The template that provisioned it.
    pub template_name: String,
    /// The thing.
    pub thing_name: String,
    /// Certificate id in AWS IoT.
    pub certificate_id: String,
    /// The data endpoint.
    pub endpoint: String,
    /// When (RFC 3339).
    pub provisioned_at: String,
}

impl Record {
    /// The record of `id`, provisioned for `cert` through `req` at `now`.
    pub fn of(
        cert: &Certificate,
        req: &FleetRequest,
        id: &FleetIdentity,
        now: time::OffsetDateTime,
    ) -> Record {
        Record {
            namespace: cert
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: cert.metadata.name.clone().unwrap_or_default(),
            template_name: req.template_name.clone(),
            thing_name: id.thing_name.clone(),
            certificate_id: id.certificate_id.clone(),
            endpoint: req.endpoint.clone(),
            provisioned_at: super::rfc3339(now),
        }
    }
}

/// The `fleetProvisioning` settings of `cert`.
pub fn spec(cert: &Certificate) -> Result<&FleetProvisioning, CertError> {
    cert.spec
        .issuer
        .aws_iot
        .as_ref()
        .and_then(|a| a.fleet_provisioning.as_ref())
        .ok_or_else(|| CertError::Invalid("not a fleetProvisioning Certificate".into()))
}

/// Whether `cert` is provisioned by claim.
pub fn is_fleet(cert: &Certificate) -> bool {
    spec(cert).is_ok()
}

/// Reads the record of a Certificate's directory, if provisioned.
pub fn read_record(dir: &Path) -> Option<Record> {
    serde_json::from_slice(&std::fs::read(dir.join(RECORD_FILE)).ok()?).ok()
}

/// The identity on disk, without any network call. A provisioned identity is never
/// rotated (that would need the claim again); it is kept as long as the Certificate.
pub fn cached(
    state: &Path,
    cert: &Certificate,
    now: time::OffsetDateTime,
) -> Result<Option<Issued>, CertError> {
    let fp = spec(cert)?;
    let dir = cert_dir(state, cert);
    let Some(r) = read_record(&dir) else {
        return Ok(None);
    };
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f)).map_err(|source| CertError::Io {
            path: dir.join(f).display().to_string(),
            source,
        })
    };
    let material = TlsMaterial {
        cert_pem: read("tls.crt")?,
        key_pem: read("tls.key")?,
    };
    identity(fp, r, material, now).map(Some)
}

/// A provisioned identity as status shows it: the certificate's validity (never
/// renewed: that would need the claim again) and the AWS side from its record.
pub fn identity(
    fp: &FleetProvisioning,
    r: Record,
    material: TlsMaterial,
    now: time::OffsetDateTime,
) -> Result<Issued, CertError> {
    let mut info = cert_info(&material.cert_pem, None, now)?;
    info.renewal_time = info.not_after.clone();
    info.aws_iot = Some(AwsIotCertificateStatus {
        certificate_arn: String::new(),
        certificate_id: r.certificate_id,
        thing_name: r.thing_name,
        endpoint: r.endpoint,
        policy_name: String::new(),
        policy_document: None,
        provisioning_template: Some(if r.template_name.is_empty() {
            fp.template_name.clone()
        } else {
            r.template_name
        }),
    });
    Ok(Issued { material, info })
}

/// The thing name of a provisioned Certificate's directory.
pub fn thing_name(dir: &Path) -> Option<String> {
    read_record(dir).map(|r| r.thing_name)
}

/// The request of a Certificate from its spec and its namespace's Secrets. A claim
/// given as a Certificate is read with `claim_certificate` (standalone: the state
/// directory; on a cluster: that Certificate's Secret).
pub fn request_of(
    cert: &Certificate,
    secrets: &Secrets,
    claim_certificate: &dyn Fn(&str) -> Result<TlsMaterial, CertError>,
    machine: &impl Machine,
) -> Result<FleetRequest, CertError> {
    let fp = spec(cert)?;
    let aws = cert
        .spec
        .issuer
        .aws_iot
        .as_ref()
        .ok_or_else(|| CertError::Invalid("not an awsIot Certificate".into()))?;
    let endpoint = aws
        .data_endpoint
        .clone()
        .ok_or_else(|| CertError::Invalid("fleetProvisioning needs dataEndpoint".into()))?;
    let claim = match (&fp.claim.secret_ref, &fp.claim.certificate_ref) {
        (Some(s), _) => TlsMaterial {
            cert_pem: secrets.text(s, "tls.crt")?,
            key_pem: secrets.text(s, "tls.key")?,
        },
        (None, Some(c)) => claim_certificate(c)?,
        (None, None) => return Err(CertError::Invalid("claim sets no certificate".into())),
    };
    let ca_pem = match &fp.ca_secret_ref {
        Some(r) => secrets.text(&r.name, &r.key)?,
        None => AMAZON_ROOT_CAS.to_string(),
    };
    let key_origin = aws.key_origin.unwrap_or_default();
    if key_origin == KeyOrigin::Local && cert.spec.private_key.algorithm == KeyAlgorithm::Rsa {
        return Err(CertError::Invalid(
            "local keys are ECDSA P-256; remove privateKey.algorithm: RSA or set keyOrigin: AWS"
                .into(),
        ));
    }
    let parameters = resolve_parameters(&fp.parameters, machine)?;
    Ok(FleetRequest {
        endpoint,
        claim,
        ca_pem,
        template_name: fp.template_name.clone(),
        parameters,
        key_origin,
        client_id: client_id(),
    })
}

/// A client id of the provisioning connection, unique per attempt (the claim is
/// shared by the fleet, and AWS IoT drops a connection whose id connects again).
fn client_id() -> String {
    let mut b = [0u8; 8];
    rand::Rng::fill(&mut rand::rng(), &mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("edgemq-provision-{hex}")
}

/// Provisions a standalone Certificate unless its identity is already on disk, and
/// stores the result: key, certificate, CA, endpoint, then the record. Nothing is
/// stored when provisioning fails.
pub async fn ensure(
    state: &Path,
    cert: &Certificate,
    secrets: &Secrets,
) -> Result<Issued, FleetError> {
    let invalid = |e: CertError| FleetError::Invalid(e.to_string());
    let now = time::OffsetDateTime::now_utc();
    if let Some(i) = cached(state, cert, now).map_err(invalid)? {
        return Ok(i);
    }
    let ns = cert.metadata.namespace.as_deref().unwrap_or("default");
    let claim_dir = |c: &str| {
        let dir: PathBuf = state.join("certs").join(format!("{ns}_{c}"));
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f)).map_err(|_| {
                CertError::Pending(format!("the claim Certificate {c} is not issued yet"))
            })
        };
        Ok(TlsMaterial {
            cert_pem: read("tls.crt")?,
            key_pem: read("tls.key")?,
        })
    };
    let req = request_of(cert, secrets, &claim_dir, &ThisMachine).map_err(invalid)?;
    let name = cert.metadata.name.clone().unwrap_or_default();
    tracing::info!(certificate = %name, endpoint = %req.endpoint, template = %req.template_name,
        "provisioning the device with the claim certificate");
    let id = provision(&req).await?;
    let dir = cert_dir(state, cert);
    let record = Record::of(cert, &req, &id, now);
    let json =
        serde_json::to_vec_pretty(&record).map_err(|e| FleetError::Invalid(e.to_string()))?;
    write_private(&dir.join("tls.key"), id.material.key_pem.as_bytes())
        .and_then(|()| write_private(&dir.join("tls.crt"), id.material.cert_pem.as_bytes()))
        .and_then(|()| write_private(&dir.join("ca.crt"), req.ca_pem.as_bytes()))
        .and_then(|()| write_private(&dir.join(ENDPOINT_FILE), req.endpoint.as_bytes()))
        .and_then(|()| write_private(&dir.join(RECORD_FILE), &json))
        .map_err(invalid)?;
    tracing::info!(certificate = %name, thing = %id.thing_name, certificate_id = %id.certificate_id,
        "device provisioned; the claim certificate is no longer used");
    cached(state, cert, now).map_err(invalid)?.ok_or_else(|| {
        FleetError::Invalid("the provisioned identity could not be read back".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::certificate::{HostnameSource, ParameterSource};

    struct Fake;
    impl Machine for Fake {
        fn hostname(&self) -> Result<String, MachineError> {
            Ok("pi-kitchen\n".into())
        }
        fn read_file(&self, path: &str) -> Result<String, MachineError> {
            match path {
                "/serial" => Ok("  10000000abcdef\0\n".into()),
                "/empty" => Ok("\n".into()),
                _ => Err(MachineError::File {
                    path: path.into(),
                    source: std::io::ErrorKind::NotFound.into(),
                }),
            }
        }
    }

    fn literal(name: &str, v: &str) -> TemplateParameter {
        TemplateParameter {
            name: name.into(),
            value: Some(v.into()),
            value_from: None,
        }
    }

    fn from(name: &str, src: ParameterSource) -> TemplateParameter {
        TemplateParameter {
            name: name.into(),
            value: None,
            value_from: Some(src),
        }
    }

    fn file(path: &str) -> ParameterSource {
        ParameterSource {
            hostname: None,
            file: Some(path.into()),
        }
    }

    #[test]
    fn parameters_come_from_literals_the_host_name_and_files_trimmed() {
        let params = vec![
            literal("Site", " shed "),
            from(
                "DeviceName",
                ParameterSource {
                    hostname: Some(HostnameSource {}),
                    file: None,
                },
            ),
            from("SerialNumber", file("/serial")),
        ];
        let got = resolve_parameters(&params, &Fake).unwrap();
        let want: BTreeMap<String, String> = [
            ("DeviceName", "pi-kitchen"),
            ("SerialNumber", "10000000abcdef"),
            ("Site", " shed "),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_missing_or_empty_file_names_the_parameter() {
        let e = resolve_parameters(&[from("SerialNumber", file("/nope"))], &Fake).unwrap_err();
        assert!(
            matches!(&e, ParameterError::Read { name, source: MachineError::File { .. } } if name == "SerialNumber"),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with("parameter SerialNumber: /nope"),
            "{e}"
        );
        let e = resolve_parameters(&[from("SerialNumber", file("/empty"))], &Fake).unwrap_err();
        assert_eq!(
            e.to_string(),
            "parameter SerialNumber: the value read is empty"
        );
    }
}
