//! CONNECT: reading it within the handshake timeout, the client id, authentication
//! (client certificate, or user name and password), and the CONNACK, refusals
//! included.

use std::sync::Arc;

use bytes::BytesMut;
use rumqttd::protocol::{self, ConnAck, ConnAckProperties, ConnectReturnCode, Packet};

use super::super::alias::TOPIC_ALIAS_MAXIMUM;
use super::super::client_cert::{self, PeerCertificate};
use super::super::codec::{self, ConnectPacket, FrameError, Version};
use super::super::transport::{Reader, Writer};
use super::super::types::INTERNAL_CLIENT_PREFIX;
use super::super::{AuthConfig, Shared};
use super::End;
use crate::api::broker::Limits;

/// Keep alive given to an MQTT 5 client that asks for none, announced as Server Keep
/// Alive: Mosquitto's `max_keepalive` default. It is also the largest a client can
/// ask for, so a client asking for 1 to 65535 seconds keeps its own.
const MAX_KEEPALIVE: u16 = u16::MAX;

/// The keep alive a connection runs with, and the Server Keep Alive to announce when
/// it differs from what the client asked (MQTT 5 only; MQTT 3.1 and 3.1.1 keep 0 as
/// none, as Mosquitto does).
pub(super) fn keep_alive(version: Version, asked: u16) -> (u16, Option<u16>) {
    if version == Version::V5 && asked == 0 {
        (MAX_KEEPALIVE, Some(MAX_KEEPALIVE))
    } else {
        (asked, None)
    }
}

/// Reads the CONNECT by `deadline`. `None` when the socket is done with: closed, too
/// large a CONNECT, no CONNECT in time, or an unsupported protocol level (answered
/// with the CONNACK that says so).
#[allow(clippy::too_many_arguments)]
pub(super) async fn first_connect(
    reader: &mut Reader,
    buf: &mut BytesMut,
    writer: &mut Writer,
    shared: &Shared,
    limits: &Limits,
    deadline: tokio::time::Instant,
    peer: &str,
    listener: &str,
) -> Option<ConnectPacket> {
    let connect = tokio::time::timeout_at(deadline, read_connect(reader, buf, shared)).await;
    match connect {
        Ok(Ok(v)) => Some(v),
        Ok(Err(End::Frame(FrameError::UnsupportedVersion(raw)))) => {
            tracing::info!(%peer, %listener, level = raw, "connection refused: unsupported protocol level");
            let _ = writer
                .write_all(codec::unsupported_version_connack(raw))
                .await;
            writer.shutdown().await;
            None
        }
        Ok(Err(End::Frame(FrameError::TooLarge(n)))) => {
            shared.metrics.refused.connect_bytes.inc();
            tracing::info!(%peer, %listener, size = n, max_connect_bytes = limits.max_connect_bytes,
                "connection closed: CONNECT larger than maxConnectBytes");
            None
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, %listener, error = %e, "connection closed before CONNECT");
            None
        }
        Err(_) => {
            shared.metrics.refused.handshake_timeout.inc();
            tracing::debug!(%peer, %listener, "no CONNECT within the handshake timeout");
            None
        }
    }
}

async fn read_connect(
    reader: &mut Reader,
    buf: &mut BytesMut,
    shared: &Shared,
) -> Result<ConnectPacket, End> {
    // Before authentication only `maxConnectBytes`: a larger CONNECT is refused from
    // its header, before the rest is read.
    let max = shared.limits.load().max_connect_bytes as usize;
    loop {
        if let Some(head) = codec::peek_connect(buf, max)? {
            return Ok(codec::read_connect(head, buf, max)?);
        }
        let n = reader.read_into(buf).await?;
        if n == 0 {
            return Err(End::Eof);
        }
        shared.metrics.bytes_in.inc_by(n as u64);
    }
}

/// Who a CONNECT authenticated as.
pub(super) struct Identity {
    /// The client id the session runs under.
    pub client_id: Arc<str>,
    /// The user: the certificate's identity, or the CONNECT's user name.
    pub username: Option<Arc<str>>,
    /// A client id the broker assigned, announced in the CONNACK (MQTT 5).
    pub assigned: Option<String>,
}

/// Authenticates a CONNECT and settles its client id; a refusal is logged and
/// counted here and answered by the caller with [`refuse`].
pub(super) async fn identify(
    shared: &Shared,
    packet: &ConnectPacket,
    certificate: Option<&PeerCertificate>,
    peer: &str,
    listener: &str,
) -> Result<Identity, Refusal> {
    let (mut client_id, mut assigned) = client_id_of(packet, peer)?;

    // Authentication. A client certificate wins over the CONNECT's credentials, as
    // with Mosquitto's `use_identity_as_username`.
    let auth = shared.auth.load_full();
    let username: Option<Arc<str>> = match certificate {
        Some(cert) => Some(certificate_user(
            shared,
            &auth,
            cert,
            (&mut client_id, &mut assigned),
            peer,
            listener,
        )?),
        None => packet
            .username
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(Arc::from),
    };
    let authenticated = match (&username, &packet.password) {
        _ if certificate.is_some() => true,
        (None, _) => auth.allow_anonymous,
        // Off the async workers: a PBKDF2 or argon2 check can take tens of milliseconds.
        (Some(u), Some(p)) => match auth.users.get(&**u).cloned() {
            Some(h) => {
                let p = p.clone();
                tokio::task::spawn_blocking(move || h.verify(&p))
                    .await
                    .unwrap_or(false)
            }
            None => false,
        },
        (Some(_), None) => false,
    };
    if !authenticated {
        shared.metrics.auth_failures.inc();
        tracing::info!(%peer, %listener, client_id = %client_id, username = username.as_deref().unwrap_or(""),
            "connection refused: not authorized");
        return Err(Refusal::NotAuthorized);
    }
    // An empty client id of a user is assigned from the Broker's `clientIdPattern`.
    let client_id: Arc<str> = match (&assigned, &auth.client_ids, &username) {
        (Some(_), Some(pattern), Some(u)) => {
            let id = pattern.assign(u, &format!("{:016x}", rand::random::<u64>()));
            assigned = Some(id.clone());
            id.into()
        }
        _ => client_id,
    };
    if !auth.client_id_allowed(username.as_deref(), &client_id) {
        shared.metrics.auth_failures.inc();
        tracing::info!(%peer, %listener, client_id = %client_id, username = username.as_deref().unwrap_or(""),
            "connection refused: the client id belongs to another user (clientIdPattern)");
        return Err(Refusal::ClientId);
    }
    // A username or client id with `+` or `#` is not refused here: as in Mosquitto,
    // the ACL denies it the pattern rules (acl::Acl::check) and its own rules apply.
    Ok(Identity {
        client_id,
        username,
        assigned,
    })
}

/// The client id a CONNECT asks for, and the id assigned when it asks for none: an
/// empty one gets a generated id when the session is clean. MQTT 3.1 allows 1 to 23
/// characters and no generated id (return code 2).
fn client_id_of(packet: &ConnectPacket, peer: &str) -> Result<(Arc<str>, Option<String>), Refusal> {
    let connect = &packet.connect;
    if packet.head.level == 3
        && (connect.client_id.is_empty() || connect.client_id.chars().count() > 23)
    {
        tracing::info!(%peer, client_id = %connect.client_id, "refused: an MQTT 3.1 client id has 1 to 23 characters");
        Err(Refusal::ClientId)
    } else if connect.client_id.is_empty() {
        if !connect.clean_session {
            return Err(Refusal::ClientId);
        }
        let id = format!("edgemq-{:016x}", rand::random::<u64>());
        Ok((id.clone().into(), Some(id)))
    } else if connect.client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
        tracing::info!(%peer, client_id = %connect.client_id, "refused: client ids starting with `$edgemq/` are reserved");
        Err(Refusal::ClientId)
    } else {
        Ok((connect.client_id.as_str().into(), None))
    }
}

/// The user a client certificate logs in as. With `identityAsClientId` the identity
/// is also the client id: assigned when the client asked for none, else it must match.
fn certificate_user(
    shared: &Shared,
    auth: &AuthConfig,
    cert: &PeerCertificate,
    (client_id, assigned): (&mut Arc<str>, &mut Option<String>),
    peer: &str,
    listener: &str,
) -> Result<Arc<str>, Refusal> {
    match client_cert::login(auth, cert) {
        Ok(identity) => {
            if cert.policy.plan.identity_as_client_id {
                if assigned.is_some() {
                    *assigned = Some(identity.to_string());
                    *client_id = identity.clone();
                } else if **client_id != *identity {
                    shared.metrics.certificate_refused("client_id");
                    tracing::info!(%peer, %listener, client_id = %client_id, identity = %identity,
                        "connection refused: the client id is not the certificate's identity (identityAsClientId)");
                    return Err(Refusal::ClientId);
                }
            }
            Ok(identity)
        }
        Err((reason, why)) => {
            shared.metrics.auth_failures.inc();
            shared.metrics.certificate_refused(reason);
            tracing::info!(%peer, %listener, client_id = %client_id, reason, "connection refused: {why}");
            Err(Refusal::NotAuthorized)
        }
    }
}

/// Why a CONNECT is refused.
pub(super) enum Refusal {
    NotAuthorized,
    ClientId,
    /// A limit of the broker: MQTT 3.1.1 return code 3, MQTT 5 reason 0x97.
    Quota,
}

/// Answers a refused CONNECT with its CONNACK and closes the socket.
pub(super) async fn refuse(writer: &mut Writer, version: Version, why: Refusal) {
    // MQTT 3.1.1 return code 5 / MQTT 5 reason 0x87, as Mosquitto answers.
    let code = match why {
        Refusal::NotAuthorized => ConnectReturnCode::NotAuthorized,
        Refusal::ClientId => ConnectReturnCode::ClientIdentifierNotValid,
        Refusal::Quota if version == Version::V5 => ConnectReturnCode::QuotaExceeded,
        Refusal::Quota => ConnectReturnCode::ServiceUnavailable,
    };
    let mut out = BytesMut::new();
    let props = (version == Version::V5).then(ConnAckProperties::default);
    let ack = ConnAck {
        session_present: false,
        code,
    };
    if codec::write(version, Packet::ConnAck(ack, props), &mut out).is_ok() {
        let _ = writer.write_all(&out).await;
    }
    writer.shutdown().await;
}

/// What an accepted CONNECT's CONNACK says besides success.
pub(super) struct Accepted {
    pub session_present: bool,
    /// Session expiry the client asked for, and the one granted.
    pub expiry: (u32, u32),
    /// A client id the broker assigned.
    pub assigned: Option<String>,
    /// Server Keep Alive, when it differs from the client's.
    pub server_keep_alive: Option<u16>,
}

/// The CONNACK of an accepted CONNECT, encoded. MQTT 5: what edgemq supports,
/// announced exactly: QoS 2 and retain are available (not limited, so Maximum QoS is
/// absent).
pub(super) fn connack(
    version: Version,
    limits: &Limits,
    max_packet: usize,
    accepted: Accepted,
) -> Result<BytesMut, protocol::Error> {
    let Accepted {
        session_present,
        expiry: (expiry, granted_expiry),
        assigned,
        server_keep_alive,
    } = accepted;
    let connack_props = (version == Version::V5).then(|| ConnAckProperties {
        session_expiry_interval: (granted_expiry != expiry).then_some(granted_expiry),
        receive_max: Some(limits.max_inflight),
        retain_available: Some(1),
        max_packet_size: Some(max_packet as u32),
        assigned_client_identifier: assigned,
        topic_alias_max: Some(TOPIC_ALIAS_MAXIMUM),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(1),
        shared_subscription_available: Some(1),
        server_keep_alive,
        ..ConnAckProperties::default()
    });
    let mut out = BytesMut::new();
    let ack = ConnAck {
        session_present,
        code: ConnectReturnCode::Success,
    };
    codec::write(version, Packet::ConnAck(ack, connack_props), &mut out)?;
    Ok(out)
}
