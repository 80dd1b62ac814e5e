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
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{
    Connect, Disconnect, DisconnectReasonCode, Filter, Packet, PubAck, PubAckReason,
    RetainForwardRule, Subscribe, SubscribeReasonCode,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::awsiot::{keys_match, Issued, AMAZON_ROOT_CAS, ENDPOINT_FILE};
use super::{cert_dir, cert_info, write_private, CertError, Secrets};
use crate::api::certificate::{
    AwsIotCertificateStatus, FleetProvisioning, KeyAlgorithm, KeyOrigin, TemplateParameter,
};
use crate::api::Certificate;
use crate::bridge::tls::{client_config, ClientTls};
use crate::broker::codec::{self, FrameError, Incoming, Version};
use crate::broker::transport::BoxIo;
use crate::broker::TlsMaterial;

/// The record of a provisioned identity, written last (`fleet.json`).
pub const RECORD_FILE: &str = "fleet.json";
/// Default port of the data endpoint (MQTT over TLS).
const DEFAULT_PORT: u16 = 8883;
/// Longest wait for the connection, and then for each reply.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_PACKET: usize = 256 * 1024;

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

/// Which provisioning call answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// `$aws/certificates/create-from-csr`.
    CreateCertificateFromCsr,
    /// `$aws/certificates/create`.
    CreateKeysAndCertificate,
    /// `$aws/provisioning-templates/<name>/provision`.
    RegisterThing,
}

/// AWS IoT's `rejected` reply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    /// HTTP-like status code.
    #[serde(default)]
    pub status_code: Option<u16>,
    /// AWS's error code (`InvalidParameters`, `Throttling`...).
    #[serde(default)]
    pub error_code: String,
    /// AWS's explanation.
    #[serde(default)]
    pub error_message: String,
}

impl Rejection {
    /// A refusal by the template's pre-provisioning hook: AWS IoT answers RegisterThing
    /// with a rejection naming the hook.
    pub fn by_hook(&self) -> bool {
        let m = self.error_message.to_ascii_lowercase();
        m.contains("hook") || m.contains("provisioning denied")
    }
}

/// Why provisioning did not give an identity.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// AWS IoT answered on a `rejected` topic.
    #[error("{}", rejected_text(*.step, .rejection))]
    Rejected {
        /// The call that was rejected.
        step: Step,
        /// What AWS IoT said.
        rejection: Rejection,
    },
    /// The endpoint could not be reached, or the connection was refused or lost.
    #[error("{0}")]
    Unreachable(String),
    /// The endpoint answered something that does not follow the API.
    #[error("unexpected answer from the provisioning API: {0}")]
    Protocol(String),
    /// The spec or local material cannot be used.
    #[error("{0}")]
    Invalid(String),
}

fn rejected_text(step: Step, r: &Rejection) -> String {
    let status = r.status_code.map(|c| format!(" ({c})")).unwrap_or_default();
    let who = if step == Step::RegisterThing && r.by_hook() {
        "the provisioning template's pre-provisioning hook refused this device"
    } else {
        "AWS IoT rejected the request"
    };
    format!(
        "{step:?} rejected: {who}: {}{status}: {}",
        r.error_code, r.error_message
    )
}

/// The request and reply topics of one provisioning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    /// Certificate request topic.
    pub create: String,
    /// Provision (RegisterThing) request topic.
    pub provision: String,
}

impl Topics {
    /// Topics for `template` and `origin`, JSON payload format.
    pub fn new(template: &str, origin: KeyOrigin) -> Topics {
        Topics {
            create: match origin {
                KeyOrigin::Local => "$aws/certificates/create-from-csr/json",
                KeyOrigin::Aws => "$aws/certificates/create/json",
            }
            .to_string(),
            provision: format!("$aws/provisioning-templates/{template}/provision/json"),
        }
    }

    /// The reply filters, subscribed before anything is published.
    pub fn replies(&self) -> Vec<String> {
        [&self.create, &self.provision]
            .iter()
            .flat_map(|t| [format!("{t}/accepted"), format!("{t}/rejected")])
            .collect()
    }
}

/// The CreateCertificateFromCsr request payload.
pub fn csr_request(csr_pem: &str) -> Vec<u8> {
    serde_json::json!({ "certificateSigningRequest": csr_pem })
        .to_string()
        .into_bytes()
}

/// The CreateKeysAndCertificate request payload (empty object).
pub fn create_request() -> Vec<u8> {
    b"{}".to_vec()
}

/// The RegisterThing request payload.
pub fn provision_request(token: &str, parameters: &BTreeMap<String, String>) -> Vec<u8> {
    serde_json::json!({ "certificateOwnershipToken": token, "parameters": parameters })
        .to_string()
        .into_bytes()
}

/// The `accepted` reply of either certificate call.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateAccepted {
    /// Certificate id.
    pub certificate_id: String,
    /// The certificate, PEM.
    pub certificate_pem: String,
    /// The token RegisterThing takes.
    pub certificate_ownership_token: String,
    /// The key, from CreateKeysAndCertificate only.
    #[serde(default)]
    pub private_key: Option<String>,
}

/// The `accepted` reply of RegisterThing.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionAccepted {
    /// The thing the template made (or found).
    pub thing_name: String,
    /// `DeviceConfiguration` of the template.
    #[serde(default)]
    pub device_configuration: BTreeMap<String, serde_json::Value>,
}

/// Parses a reply payload of `step`.
fn parse<T: for<'de> Deserialize<'de>>(step: Step, payload: &[u8]) -> Result<T, FleetError> {
    serde_json::from_slice(payload)
        .map_err(|e| FleetError::Protocol(format!("{step:?} accepted reply: {e}")))
}

/// Parses a `rejected` payload; anything unreadable still counts as a rejection.
pub fn parse_rejection(payload: &[u8]) -> Rejection {
    serde_json::from_slice(payload).unwrap_or_else(|_| Rejection {
        status_code: None,
        error_code: "Unknown".into(),
        error_message: String::from_utf8_lossy(payload).chars().take(200).collect(),
    })
}

/// What parameters read from the machine.
pub trait Machine {
    /// The host name.
    fn hostname(&self) -> Result<String, String>;
    /// A file's contents.
    fn read_file(&self, path: &str) -> Result<String, String>;
}

/// The machine edgemq runs on.
pub struct ThisMachine;

impl Machine for ThisMachine {
    fn hostname(&self) -> Result<String, String> {
        ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .ok_or_else(|| "the host name could not be read".to_string())
    }
    fn read_file(&self, path: &str) -> Result<String, String> {
        std::fs::read(path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(|e| format!("{path}: {e}"))
    }
}

/// The values of the template parameters: literals as written, machine values with
/// surrounding whitespace (and NUL bytes, as device-tree files end) removed. An empty
/// or unreadable machine value is an error naming the parameter.
pub fn resolve_parameters(
    params: &[TemplateParameter],
    machine: &impl Machine,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for p in params {
        let v = match (&p.value, &p.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => {
                let raw = match (&from.hostname, &from.file) {
                    (Some(_), _) => machine.hostname(),
                    (None, Some(path)) => machine.read_file(path),
                    (None, None) => Err("valueFrom sets no source".into()),
                }
                .map_err(|e| format!("parameter {}: {e}", p.name))?;
                let v = raw
                    .trim_matches(|c: char| c.is_whitespace() || c == '\0')
                    .to_string();
                if v.is_empty() {
                    return Err(format!("parameter {}: the value read is empty", p.name));
                }
                v
            }
            (None, None) => return Err(format!("parameter {}: no value", p.name)),
        };
        out.insert(p.name.clone(), v);
    }
    Ok(out)
}

/// Splits `host[:port]`.
fn host_port(endpoint: &str) -> (String, u16) {
    match endpoint
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
    {
        Some((h, p)) => (h.to_string(), p),
        None => (endpoint.to_string(), DEFAULT_PORT),
    }
}

/// One MQTT 3.1.1 connection to the provisioning API.
struct Session {
    io: BoxIo,
    buf: BytesMut,
    next_pkid: u16,
    addr: String,
}

impl Session {
    async fn open(req: &FleetRequest) -> Result<Session, FleetError> {
        let (host, port) = host_port(&req.endpoint);
        let addr = format!("{host}:{port}");
        let at = addr.clone();
        let down = move |what: String| FleetError::Unreachable(format!("{at}: {what}"));
        let tls = ClientTls {
            roots_pem: Some(req.ca_pem.clone()),
            client: Some(req.claim.clone()),
            // AWS IoT Core takes MQTT with a client certificate on 443 only with ALPN.
            alpn: if port == 443 {
                vec!["x-amzn-mqtt-ca".into()]
            } else {
                Vec::new()
            },
            server_name: host.clone(),
        };
        let (config, name) = client_config(&tls).map_err(FleetError::Invalid)?;
        let tcp = tokio::time::timeout(STEP_TIMEOUT, tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| down("TCP connect timed out".into()))?
            .map_err(|e| down(format!("TCP connect failed: {e}")))?;
        let tls = tokio::time::timeout(
            STEP_TIMEOUT,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| down("TLS handshake timed out".into()))?
        .map_err(|e| {
            down(format!(
                "TLS handshake with the claim certificate failed: {e}"
            ))
        })?;
        let mut s = Session {
            io: Box::new(tls),
            buf: BytesMut::with_capacity(8192),
            next_pkid: 1,
            addr,
        };
        s.send(Packet::Connect(
            Connect {
                keep_alive: 60,
                client_id: req.client_id.clone(),
                clean_session: true,
            },
            None,
            None,
            None,
            None,
        ))
        .await?;
        let ack = tokio::time::timeout(STEP_TIMEOUT, async {
            loop {
                match codec::read_connack(Version::V4, &mut s.buf) {
                    Ok(a) => return Ok(a),
                    Err(FrameError::Incomplete) => s.fill().await?,
                    Err(e) => return Err(FleetError::Protocol(format!("bad CONNACK: {e}"))),
                }
            }
        })
        .await
        .map_err(|_| down("no CONNACK".into()))??;
        if ack.code != 0 {
            return Err(down(format!(
                "the claim certificate's connection was refused (CONNACK code {})",
                ack.code
            )));
        }
        Ok(s)
    }

    async fn send(&mut self, p: Packet) -> Result<(), FleetError> {
        let mut out = BytesMut::new();
        codec::write(Version::V4, p, &mut out)
            .map_err(|e| FleetError::Invalid(format!("could not encode a packet: {e:?}")))?;
        self.io
            .write_all(&out)
            .await
            .map_err(|e| FleetError::Unreachable(format!("{}: write failed: {e}", self.addr)))
    }

    async fn fill(&mut self) -> Result<(), FleetError> {
        match self.io.read_buf(&mut self.buf).await {
            Ok(0) => Err(FleetError::Unreachable(format!(
                "{} closed the connection (the claim policy may not allow this client id or topic)",
                self.addr
            ))),
            Ok(_) => Ok(()),
            Err(e) => Err(FleetError::Unreachable(format!(
                "{}: read failed: {e}",
                self.addr
            ))),
        }
    }

    /// The next packet; QoS 1 publishes are acknowledged.
    async fn next(&mut self) -> Result<Incoming, FleetError> {
        loop {
            match codec::read(Version::V4, &mut self.buf, MAX_PACKET) {
                Ok(p) => {
                    if let Incoming::Publish { qos: 1, pkid, .. } = &p {
                        let ack = PubAck {
                            pkid: *pkid,
                            reason: PubAckReason::Success,
                        };
                        self.send(Packet::PubAck(ack, None)).await?;
                    }
                    return Ok(p);
                }
                Err(FrameError::Incomplete) => self.fill().await?,
                Err(e) => return Err(FleetError::Protocol(e.to_string())),
            }
        }
    }

    fn pkid(&mut self) -> u16 {
        let p = self.next_pkid;
        self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
        p
    }

    async fn subscribe(&mut self, filters: &[String]) -> Result<(), FleetError> {
        let pkid = self.pkid();
        let filters = filters
            .iter()
            .map(|f| Filter {
                path: f.clone(),
                qos: codec::qos_of(1),
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::OnEverySubscribe,
            })
            .collect();
        self.send(Packet::Subscribe(Subscribe { pkid, filters }, None))
            .await?;
        let addr = self.addr.clone();
        tokio::time::timeout(STEP_TIMEOUT, async {
            loop {
                if let Incoming::Other(Packet::SubAck(s, _)) = self.next().await? {
                    if s.pkid != pkid {
                        continue;
                    }
                    let refused = s.return_codes.iter().any(|c| {
                        matches!(
                            c,
                            SubscribeReasonCode::Failure
                                | SubscribeReasonCode::Unspecified
                                | SubscribeReasonCode::NotAuthorized
                                | SubscribeReasonCode::ImplementationSpecific
                                | SubscribeReasonCode::TopicFilterInvalid
                        )
                    });
                    return if refused {
                        Err(FleetError::Unreachable(format!(
                            "{addr} refused the subscription to the reply topics (check the claim policy)"
                        )))
                    } else {
                        Ok(())
                    };
                }
            }
        })
        .await
        .map_err(|_| FleetError::Unreachable(format!("{addr}: no SUBACK")))?
    }

    /// Publishes a request (QoS 1) and waits for its `accepted` or `rejected` reply.
    async fn request(
        &mut self,
        step: Step,
        topic: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, FleetError> {
        let pkid = self.pkid();
        let publish = codec::build_publish(
            &Bytes::from(topic.to_string()),
            &Bytes::from(payload),
            1,
            pkid,
            false,
            false,
        );
        self.send(Packet::Publish(publish, None)).await?;
        let accepted = format!("{topic}/accepted");
        let rejected = format!("{topic}/rejected");
        let addr = self.addr.clone();
        tokio::time::timeout(STEP_TIMEOUT, async {
            loop {
                if let Incoming::Publish { publish, .. } = self.next().await? {
                    if publish.topic == accepted.as_bytes() {
                        return Ok(publish.payload.to_vec());
                    }
                    if publish.topic == rejected.as_bytes() {
                        return Err(FleetError::Rejected {
                            step,
                            rejection: parse_rejection(&publish.payload),
                        });
                    }
                }
            }
        })
        .await
        .map_err(|_| {
            FleetError::Unreachable(format!(
                "{addr}: no reply to {step:?} within {}s",
                STEP_TIMEOUT.as_secs()
            ))
        })?
    }
}

/// Provisions a device: the certificate call for `key_origin`, then RegisterThing with
/// the ownership token and parameters, over one connection made with the claim pair.
pub async fn provision(req: &FleetRequest) -> Result<FleetIdentity, FleetError> {
    let topics = Topics::new(&req.template_name, req.key_origin);
    let local_key = match req.key_origin {
        KeyOrigin::Local => {
            Some(rcgen::KeyPair::generate().map_err(|e| FleetError::Invalid(e.to_string()))?)
        }
        KeyOrigin::Aws => None,
    };
    let mut s = Session::open(req).await?;
    s.subscribe(&topics.replies()).await?;
    let (step, payload) = match &local_key {
        Some(key) => {
            // AWS IoT sets the subject itself; the CSR only carries the public key.
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
                .map_err(|e| FleetError::Invalid(e.to_string()))?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "AWS IoT Certificate");
            let csr = params
                .serialize_request(key)
                .and_then(|r| r.pem())
                .map_err(|e| FleetError::Invalid(e.to_string()))?;
            (Step::CreateCertificateFromCsr, csr_request(&csr))
        }
        None => (Step::CreateKeysAndCertificate, create_request()),
    };
    let reply = s.request(step, &topics.create, payload).await?;
    let cert: CertificateAccepted = parse(step, &reply)?;
    let key_pem = match (&local_key, &cert.private_key) {
        (Some(k), _) => k.serialize_pem(),
        (None, Some(k)) => k.clone(),
        (None, None) => {
            return Err(FleetError::Protocol(
                "CreateKeysAndCertificate returned no privateKey".into(),
            ))
        }
    };
    let material = TlsMaterial {
        cert_pem: cert.certificate_pem.clone(),
        key_pem,
    };
    keys_match(&material).map_err(|e| {
        FleetError::Protocol(format!(
            "certificate {} does not match the key: {e}",
            cert.certificate_id
        ))
    })?;
    let reply = s
        .request(
            Step::RegisterThing,
            &topics.provision,
            provision_request(&cert.certificate_ownership_token, &req.parameters),
        )
        .await?;
    let done: ProvisionAccepted = parse(Step::RegisterThing, &reply)?;
    let _ = s
        .send(Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            },
            None,
        ))
        .await;
    Ok(FleetIdentity {
        material,
        certificate_id: cert.certificate_id,
        thing_name: done.thing_name,
        device_configuration: done.device_configuration,
    })
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
    let parameters = resolve_parameters(&fp.parameters, machine).map_err(CertError::Invalid)?;
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
        fn hostname(&self) -> Result<String, String> {
            Ok("pi-kitchen\n".into())
        }
        fn read_file(&self, path: &str) -> Result<String, String> {
            match path {
                "/serial" => Ok("  10000000abcdef\0\n".into()),
                "/empty" => Ok("\n".into()),
                _ => Err(format!("{path}: No such file or directory")),
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
        assert!(e.starts_with("parameter SerialNumber: /nope"), "{e}");
        let e = resolve_parameters(&[from("SerialNumber", file("/empty"))], &Fake).unwrap_err();
        assert_eq!(e, "parameter SerialNumber: the value read is empty");
    }

    #[test]
    fn topics_follow_the_documented_api() {
        let t = Topics::new("edge-fleet", KeyOrigin::Local);
        assert_eq!(t.create, "$aws/certificates/create-from-csr/json");
        assert_eq!(
            t.provision,
            "$aws/provisioning-templates/edge-fleet/provision/json"
        );
        assert_eq!(
            t.replies(),
            [
                "$aws/certificates/create-from-csr/json/accepted",
                "$aws/certificates/create-from-csr/json/rejected",
                "$aws/provisioning-templates/edge-fleet/provision/json/accepted",
                "$aws/provisioning-templates/edge-fleet/provision/json/rejected",
            ]
        );
        assert_eq!(
            Topics::new("x", KeyOrigin::Aws).create,
            "$aws/certificates/create/json"
        );
    }

    #[test]
    fn request_payloads_are_the_documented_json() {
        let v: serde_json::Value = serde_json::from_slice(&csr_request("PEM")).unwrap();
        assert_eq!(v, serde_json::json!({"certificateSigningRequest": "PEM"}));
        assert_eq!(create_request(), b"{}");
        let params: BTreeMap<String, String> =
            [("SerialNumber".to_string(), "123".to_string())].into();
        let v: serde_json::Value =
            serde_json::from_slice(&provision_request("tok", &params)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"certificateOwnershipToken": "tok",
                               "parameters": {"SerialNumber": "123"}})
        );
    }

    #[test]
    fn replies_parse_and_a_hook_refusal_is_told_apart() {
        let a: CertificateAccepted = parse(
            Step::CreateKeysAndCertificate,
            br#"{"certificateId":"abc","certificatePem":"C","certificateOwnershipToken":"t","privateKey":"K"}"#,
        )
        .unwrap();
        assert_eq!(
            (a.certificate_id.as_str(), a.private_key.as_deref()),
            ("abc", Some("K"))
        );
        let p: ProvisionAccepted = parse(
            Step::RegisterThing,
            br#"{"thingName":"edge-123","deviceConfiguration":{"Site":"shed"}}"#,
        )
        .unwrap();
        assert_eq!(p.thing_name, "edge-123");
        assert!(parse::<ProvisionAccepted>(Step::RegisterThing, b"{}").is_err());

        let r = parse_rejection(
            br#"{"statusCode":403,"errorCode":"AccessDenied","errorMessage":"Pre-provisioning hook denied the request: serial 999 unknown"}"#,
        );
        assert!(r.by_hook());
        let e = FleetError::Rejected {
            step: Step::RegisterThing,
            rejection: r,
        }
        .to_string();
        assert_eq!(e, "RegisterThing rejected: the provisioning template's pre-provisioning hook refused this device: AccessDenied (403): Pre-provisioning hook denied the request: serial 999 unknown");
        let r = parse_rejection(
            br#"{"statusCode":400,"errorCode":"InvalidParameters","errorMessage":"Missing parameter SerialNumber"}"#,
        );
        assert!(!r.by_hook());
        assert_eq!(parse_rejection(b"oops").error_code, "Unknown");
    }

    #[test]
    fn endpoints_default_to_port_8883() {
        assert_eq!(
            host_port("a-ats.iot.eu-west-1.amazonaws.com"),
            ("a-ats.iot.eu-west-1.amazonaws.com".into(), 8883)
        );
        assert_eq!(host_port("localhost:18883"), ("localhost".into(), 18883));
    }
}
