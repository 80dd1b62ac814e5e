//! One MQTT 3.1.1 connection to AWS IoT's provisioning API, made with the claim pair,
//! and [`provision`], the exchange over it.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{
    Connect, Disconnect, DisconnectReasonCode, Filter, Packet, PubAck, PubAckReason,
    RetainForwardRule, Subscribe, SubscribeReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{FleetError, FleetIdentity, FleetRequest};
use crate::api::certificate::KeyOrigin;
use crate::aws::fleet_provisioning::{
    create_request, csr_request, parse, parse_rejection, provision_request, CertificateAccepted,
    ProvisionAccepted, Step, Topics,
};
use crate::bridge::tls::{client_config, ClientTls};
use crate::broker::codec::{self, FrameError, Incoming, Version};
use crate::broker::transport::BoxIo;
use crate::certs::awsiot::keys_match;
use crate::tls::TlsMaterial;

/// Default port of the data endpoint (MQTT over TLS).
const DEFAULT_PORT: u16 = 8883;
/// Longest wait for the connection, and then for each reply.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_PACKET: usize = 256 * 1024;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_default_to_port_8883() {
        assert_eq!(
            host_port("a-ats.iot.eu-west-1.amazonaws.com"),
            ("a-ats.iot.eu-west-1.amazonaws.com".into(), 8883)
        );
        assert_eq!(host_port("localhost:18883"), ("localhost".into(), 18883));
    }
}
