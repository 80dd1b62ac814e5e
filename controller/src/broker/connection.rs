//! One client connection: CONNECT and authentication, then a reader (packets from
//! the client) and a writer (acks and deliveries to the client) running side by side.
//!
//! Protocol hygiene lives here: MQTT 3.1 client ids have 1 to 23 characters, a
//! bridge (protocol level bit 0x80) gets no echo of its own messages, keepalive 0 is
//! accepted, a PUBLISH to an invalid topic or a second CONNECT closes the connection,
//! as does any packet [`super::check`] refuses (MQTT 5: after a DISCONNECT saying why),
//! a denied PUBLISH is acknowledged (MQTT 5: reason 0x87) and dropped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill,
    LastWillProperties, Packet, PingResp, PubAck, PubAckReason, PubComp, PubCompReason, PubRec,
    PubRecReason, PubRel, PubRelReason, PublishProperties, RetainForwardRule, SubAck,
    SubscribeReasonCode, UnsubAck, UnsubAckReason,
};
use tokio::sync::mpsc;

use super::alias::{TopicAliases, TOPIC_ALIAS_MAXIMUM};
use super::codec::{self, FrameError, Incoming, Version};
use super::shared_subs;
use super::transport::{Reader, Transport, Writer};
use super::types::{CloseReason, ConnLink, Message, Outgoing, SubOptions, INTERNAL_CLIENT_PREFIX};
use super::Shared;
use crate::auth::acl::{valid_topic_filter, valid_topic_name, Op};

/// Largest batch of deliveries encoded per write.
const WRITE_BATCH: usize = 64;

/// Keep alive given to an MQTT 5 client that asks for none, announced as Server Keep
/// Alive: Mosquitto's `max_keepalive` default. It is also the largest a client can
/// ask for, so a client asking for 1 to 65535 seconds keeps its own.
const MAX_KEEPALIVE: u16 = u16::MAX;

/// Why a connection ended, for logs.
#[derive(Debug, thiserror::Error)]
enum End {
    /// DISCONNECT, with the session expiry an MQTT 5 client may set in it.
    #[error("client disconnected")]
    Normal { expiry: Option<u32> },
    #[error("client disconnected and asked for its will")]
    NormalWithWill { expiry: Option<u32> },
    #[error("connection closed by the client")]
    Eof,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("keepalive timeout")]
    KeepAlive,
    #[error("closed by the broker: {0:?}")]
    Kicked(CloseReason),
}

struct Client {
    id: Arc<str>,
    username: Option<Arc<str>>,
    version: Version,
    /// Connected with Mosquitto's bridge bit: its subscriptions are no-local and
    /// retain-as-published, as Mosquitto treats a bridge, so its own messages are not
    /// echoed back and retained flags cross unchanged.
    bridge: bool,
    /// A refused publish was logged for this connection already.
    denial_logged: std::sync::atomic::AtomicBool,
    /// A refused subscription was logged for this connection already.
    sub_denial_logged: std::sync::atomic::AtomicBool,
    will: Option<(LastWill, Option<LastWillProperties>)>,
}

/// The keep alive a connection runs with, and the Server Keep Alive to announce when
/// it differs from what the client asked (MQTT 5 only; MQTT 3.1 and 3.1.1 keep 0 as
/// none, as Mosquitto does).
fn keep_alive(version: Version, asked: u16) -> (u16, Option<u16>) {
    if version == Version::V5 && asked == 0 {
        (MAX_KEEPALIVE, Some(MAX_KEEPALIVE))
    } else {
        (asked, None)
    }
}

/// A socket that has not authenticated yet: its handshake slot, and when its
/// handshake timeout (counted from the accept) runs out.
pub struct Handshake {
    /// Freed when the CONNECT is authenticated or the socket closes.
    pub slot: super::slots::HandshakeSlot,
    /// The CONNECT must be read by then.
    pub deadline: tokio::time::Instant,
    /// The client certificate a `clientAuth` listener accepted, if one was presented.
    pub certificate: Option<super::client_cert::PeerCertificate>,
}

/// Serves one accepted connection until it ends.
pub async fn serve(
    transport: Transport,
    shared: Arc<Shared>,
    listener: Arc<str>,
    peer: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
    handshake: Handshake,
) {
    let (mut reader, mut writer) = transport.split();
    let mut buf = BytesMut::new();
    let limits = shared.limits.load_full();
    let connect = tokio::time::timeout_at(
        handshake.deadline,
        read_connect(&mut reader, &mut buf, &shared),
    )
    .await;
    let packet = match connect {
        Ok(Ok(v)) => v,
        Ok(Err(End::Frame(FrameError::UnsupportedVersion(raw)))) => {
            tracing::info!(%peer, %listener, level = raw, "connection refused: unsupported protocol level");
            let _ = writer
                .write_all(codec::unsupported_version_connack(raw))
                .await;
            writer.shutdown().await;
            return;
        }
        Ok(Err(End::Frame(FrameError::TooLarge(n)))) => {
            shared.metrics.refused.connect_bytes.inc();
            tracing::info!(%peer, %listener, size = n, max_connect_bytes = limits.max_connect_bytes,
                "connection closed: CONNECT larger than maxConnectBytes");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, %listener, error = %e, "connection closed before CONNECT");
            return;
        }
        Err(_) => {
            shared.metrics.refused.handshake_timeout.inc();
            tracing::debug!(%peer, %listener, "no CONNECT within the handshake timeout");
            return;
        }
    };
    let codec::ConnectPacket {
        head,
        connect,
        properties: props,
        will,
        will_properties: will_props,
        username,
        password,
    } = packet;
    let version = head.version;

    // Client id: an empty one gets a generated id when the session is clean. MQTT 3.1
    // allows 1 to 23 characters and no generated id (return code 2).
    let mut assigned = None;
    let client_id: Arc<str> = if head.level == 3
        && (connect.client_id.is_empty() || connect.client_id.chars().count() > 23)
    {
        tracing::info!(%peer, client_id = %connect.client_id, "refused: an MQTT 3.1 client id has 1 to 23 characters");
        refuse(&mut writer, version, Refusal::ClientId).await;
        return;
    } else if connect.client_id.is_empty() {
        if !connect.clean_session {
            refuse(&mut writer, version, Refusal::ClientId).await;
            return;
        }
        let id = format!("edgemq-{:016x}", rand::random::<u64>());
        assigned = Some(id.clone());
        id.into()
    } else if connect.client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
        tracing::info!(%peer, client_id = %connect.client_id, "refused: client ids starting with `$edgemq/` are reserved");
        refuse(&mut writer, version, Refusal::ClientId).await;
        return;
    } else {
        connect.client_id.as_str().into()
    };

    // Authentication. A client certificate wins over the CONNECT's credentials, as
    // with Mosquitto's `use_identity_as_username`.
    let auth = shared.auth.load_full();
    let mut client_id = client_id;
    let username: Option<Arc<str>> = match &handshake.certificate {
        Some(cert) => match super::client_cert::login(&auth, cert) {
            Ok(identity) => {
                if cert.policy.plan.identity_as_client_id {
                    if assigned.is_some() {
                        assigned = Some(identity.to_string());
                        client_id = identity.clone();
                    } else if *client_id != *identity {
                        shared.metrics.certificate_refused("client_id");
                        tracing::info!(%peer, %listener, client_id = %client_id, identity = %identity,
                            "connection refused: the client id is not the certificate's identity (identityAsClientId)");
                        refuse(&mut writer, version, Refusal::ClientId).await;
                        return;
                    }
                }
                Some(identity)
            }
            Err((reason, why)) => {
                shared.metrics.auth_failures.inc();
                shared.metrics.certificate_refused(reason);
                tracing::info!(%peer, %listener, client_id = %client_id, reason, "connection refused: {why}");
                refuse(&mut writer, version, Refusal::NotAuthorized).await;
                return;
            }
        },
        None => username
            .filter(|u| !u.is_empty())
            .map(|u| Arc::from(u.as_str())),
    };
    let authenticated = match (&username, &password) {
        _ if handshake.certificate.is_some() => true,
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
        refuse(&mut writer, version, Refusal::NotAuthorized).await;
        return;
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
        refuse(&mut writer, version, Refusal::ClientId).await;
        return;
    }
    // A username or client id with `+` or `#` is not refused here: as in Mosquitto,
    // the ACL denies it the pattern rules (acl::Acl::check) and its own rules apply.

    // Authenticated: the handshake slot becomes a connection slot.
    let _slot = match super::slots::connection(handshake.slot) {
        Ok(slot) => slot,
        Err(e) => {
            tracing::warn!(%peer, %listener, client_id = %client_id, "connection refused: {e}");
            refuse(&mut writer, version, Refusal::Quota).await;
            return;
        }
    };

    let link = ConnLink::new(shared.next_conn_id.fetch_add(1, Ordering::Relaxed));
    let _registration = handshake.certificate.as_ref().map(|cert| {
        shared
            .certificate_connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                link.id,
                super::CertificateConnection {
                    listener: listener.clone(),
                    client_id: client_id.clone(),
                    chain: cert.chain.clone(),
                },
            );
        super::client_cert::Registration {
            shared: &shared,
            conn_id: link.id,
        }
    });
    let mut close_rx = link.close.subscribe();
    let expiry = match version {
        Version::V4 if connect.clean_session => 0,
        Version::V4 => limits.session_expiry_seconds,
        Version::V5 => props
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
            .unwrap_or(0),
    };
    let granted_expiry = expiry.min(limits.session_expiry_seconds);
    let receive_max = props
        .as_ref()
        .and_then(|p| p.receive_maximum)
        .map_or(usize::from(limits.max_inflight), usize::from);
    let connected = {
        let mut router = shared.router();
        router.connect(
            &client_id,
            username.clone(),
            connect.clean_session,
            granted_expiry,
            receive_max,
            link.clone(),
        )
    };
    let connected = match connected {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%peer, %listener, client_id = %client_id, "connection refused: {e} (counted in edgemq_limit_refusals_total)");
            refuse(&mut writer, version, Refusal::Quota).await;
            return;
        }
    };
    let max_packet = shared.max_packet_size();
    let (keepalive, server_keep_alive) = keep_alive(version, connect.keep_alive);
    // What edgemq supports, announced exactly: QoS 2 and retain are available (not
    // limited, so Maximum QoS is absent).
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
    // [MQTT-3.1.2-24]: nothing larger than the client's Maximum Packet Size is sent.
    let client_max_packet = props
        .as_ref()
        .and_then(|p| p.max_packet_size)
        .map_or(usize::MAX, |m| m as usize);
    let mut out = BytesMut::new();
    let ack = ConnAck {
        session_present: connected.session_present,
        code: ConnectReturnCode::Success,
    };
    if codec::write(version, Packet::ConnAck(ack, connack_props), &mut out).is_err()
        || writer.write_all(&out).await.is_err()
    {
        disconnect(&shared, &client_id, link.id, None);
        return;
    }
    shared.metrics.connections.inc();
    tracing::info!(%peer, %listener, client_id = %client_id, username = username.as_deref().unwrap_or(""),
        level = head.level, bridge = head.bridge, session_present = connected.session_present, "client connected");

    let client = Client {
        id: client_id.clone(),
        username,
        version,
        bridge: head.bridge,
        denial_logged: Default::default(),
        sub_denial_logged: Default::default(),
        will: will.map(|w| (w, will_props)),
    };
    // Boxed: a channel allocates its slots up front, and an unboxed `Packet` would
    // cost every idle connection about 10 KB.
    let (ctrl_tx, ctrl_rx) = mpsc::channel::<Box<Packet>>(256);
    let writer_task = tokio::spawn(write_loop(
        writer,
        shared.clone(),
        client_id.clone(),
        version,
        link.clone(),
        ctrl_rx,
        client_max_packet,
    ));
    let end = read_loop(
        &mut reader,
        &mut buf,
        &shared,
        &client,
        &ctrl_tx,
        keepalive,
        &mut close_rx,
        &mut stop,
    )
    .await;
    drop(ctrl_tx);

    let expiry_override = match end {
        End::Normal { expiry } | End::NormalWithWill { expiry } => expiry,
        _ => None,
    };
    {
        let mut router = shared.router();
        router.disconnect(&client_id, link.id, expiry_override);
        // The will is published unless the client said a plain DISCONNECT; an MQTT 5
        // Will Delay Interval holds it (see `will_delay`).
        if !matches!(end, End::Normal { .. }) {
            publish_will(&mut router, &shared, &client);
        }
    }
    let _ = writer_task.await;
    shared.metrics.connections.dec();
    match end {
        End::Normal { .. } | End::NormalWithWill { .. } | End::Eof => {
            tracing::info!(client_id = %client_id, reason = %end, "client disconnected")
        }
        _ => tracing::info!(client_id = %client_id, reason = %end, "client connection closed"),
    }
}

fn disconnect(shared: &Shared, client_id: &str, conn_id: u64, expiry: Option<u32>) {
    let mut router = shared.router();
    router.disconnect(client_id, conn_id, expiry);
}

async fn read_connect(
    reader: &mut Reader,
    buf: &mut BytesMut,
    shared: &Shared,
) -> Result<codec::ConnectPacket, End> {
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

enum Refusal {
    NotAuthorized,
    ClientId,
    /// A limit of the broker: MQTT 3.1.1 return code 3, MQTT 5 reason 0x97.
    Quota,
}

async fn refuse(writer: &mut Writer, version: Version, why: Refusal) {
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

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    reader: &mut Reader,
    buf: &mut BytesMut,
    shared: &Arc<Shared>,
    client: &Client,
    ctrl: &mpsc::Sender<Box<Packet>>,
    keepalive: u16,
    close_rx: &mut tokio::sync::watch::Receiver<Option<CloseReason>>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> End {
    let timeout = (keepalive > 0).then(|| Duration::from_millis(u64::from(keepalive) * 1500));
    let max = shared.max_packet_size();
    let mut aliases = TopicAliases::default();
    // One keepalive timer for the whole connection, and one registration with each
    // watch: a read only notes when it happened, and the timer, once due, moves on to
    // one keepalive after the last read. (A timer armed per read, and the watches
    // polled anew per read, cost a lock and a list insertion each, per message.)
    let mut last_read = tokio::time::Instant::now();
    let far = Duration::from_secs(86_400 * 365);
    let keepalive_due = tokio::time::sleep(timeout.unwrap_or(far));
    let mut close_watch = close_rx.clone();
    let closed = close_watch.changed();
    let stopped = stop.wait_for(|s| *s);
    tokio::pin!(keepalive_due, closed, stopped);
    loop {
        // Handle every complete frame already buffered.
        loop {
            match codec::read_client(client.version, buf, max) {
                Ok(incoming) => {
                    let handled = handle(incoming, shared, client, ctrl, &mut aliases);
                    if let Err(end) = Box::pin(handled).await {
                        return end;
                    }
                }
                Err(FrameError::Incomplete) => break,
                Err(FrameError::Violation(v)) => {
                    // MQTT 5: say why before closing [MQTT-4.13.2-1].
                    if client.version == Version::V5 {
                        let reason_code = if v.reason_code() == 0x81 {
                            DisconnectReasonCode::MalformedPacket
                        } else {
                            DisconnectReasonCode::ProtocolError
                        };
                        let _ =
                            send(ctrl, Packet::Disconnect(Disconnect { reason_code }, None)).await;
                    }
                    return End::Frame(FrameError::Violation(v));
                }
                Err(FrameError::TooLarge(n)) => {
                    shared.metrics.refused.payload_bytes.inc();
                    return End::Frame(FrameError::TooLarge(n));
                }
                Err(e) => return End::Frame(e),
            }
        }
        let n = tokio::select! {
            biased;
            _ = &mut closed => {
                let reason = (*close_rx.borrow()).unwrap_or(CloseReason::ServerShuttingDown);
                return End::Kicked(reason);
            }
            _ = &mut stopped => return End::Kicked(CloseReason::ListenerRemoved),
            () = &mut keepalive_due, if timeout.is_some() => {
                let t = timeout.unwrap_or(far);
                if last_read.elapsed() >= t {
                    return End::KeepAlive;
                }
                keepalive_due.as_mut().reset(last_read + t);
                continue;
            }
            r = reader.read_into(buf) => r,
        };
        match n {
            Ok(0) => return End::Eof,
            Ok(n) => {
                last_read = tokio::time::Instant::now();
                shared.metrics.bytes_in.inc_by(n as u64);
            }
            Err(e) => return End::Io(e),
        }
    }
}

async fn send(ctrl: &mpsc::Sender<Box<Packet>>, p: Packet) -> Result<(), End> {
    ctrl.send(Box::new(p)).await.map_err(|_| End::Eof)
}

async fn handle(
    incoming: Incoming,
    shared: &Arc<Shared>,
    client: &Client,
    ctrl: &mpsc::Sender<Box<Packet>>,
    aliases: &mut TopicAliases,
) -> Result<(), End> {
    let v5 = client.version == Version::V5;
    match incoming {
        Incoming::Publish {
            publish,
            properties,
            qos,
            pkid,
        } => {
            shared.metrics.messages_in.inc();
            let topic_bytes = if v5 {
                let alias = properties.as_ref().and_then(|p| p.topic_alias);
                match aliases.resolve(&publish.topic, alias) {
                    Ok(t) => t,
                    Err(e) => {
                        let reason_code = e.reason_code();
                        send(ctrl, Packet::Disconnect(Disconnect { reason_code }, None)).await?;
                        return Err(End::Protocol(match e {
                            super::alias::AliasError::Invalid => "invalid topic alias",
                            super::alias::AliasError::Unknown => "empty topic, no known alias",
                        }));
                    }
                }
            } else {
                publish.topic.clone()
            };
            let Ok(topic) = std::str::from_utf8(&topic_bytes) else {
                return Err(End::Protocol("topic is not UTF-8"));
            };
            if !valid_topic_name(topic) {
                return Err(End::Protocol("PUBLISH to an invalid topic"));
            }
            let limits = shared.limits.load();
            if publish.payload.len() > limits.max_payload_bytes as usize {
                return Err(End::Protocol("payload larger than maxPayloadBytes"));
            }
            let msg = Message {
                topic: topic_bytes.clone(),
                payload: publish.payload.clone(),
                qos,
                retain: publish.retain,
                expires_at: expiry_deadline(
                    properties.as_ref().and_then(|p| p.message_expiry_interval),
                ),
                properties: properties.map(forwardable),
                origin: Some(client.id.clone()),
            };
            // One lock for the ACL check, the QoS 2 duplicate check and the routing.
            let allowed = {
                let mut router = shared.router();
                let allowed =
                    router
                        .acl()
                        .check(client.username.as_deref(), &client.id, topic, Op::Write);
                // A QoS 2 packet id is remembered even when denied, so its PUBREL is known.
                let fresh = qos < 2 || router.qos2_received(&client.id, pkid);
                if allowed && fresh {
                    router.publish(msg);
                }
                allowed
            };
            if !allowed {
                shared.metrics.acl_denials.inc();
                if !client.denial_logged.swap(true, Ordering::Relaxed) {
                    tracing::info!(client_id = %client.id, username = client.username.as_deref().unwrap_or(""), topic,
                        reason = %super::router::denial_reason(client.username.as_deref(), Op::Write),
                        "publish refused by the ACL (logged once per connection; later refusals are counted in edgemq_acl_denials_total)");
                } else {
                    tracing::debug!(client_id = %client.id, topic, "publish denied by the ACL");
                }
            }
            match qos {
                1 => {
                    let reason = if allowed || !v5 {
                        PubAckReason::Success
                    } else {
                        PubAckReason::NotAuthorized
                    };
                    send(ctrl, Packet::PubAck(PubAck { pkid, reason }, None)).await?;
                }
                2 => {
                    let reason = if allowed || !v5 {
                        PubRecReason::Success
                    } else {
                        PubRecReason::NotAuthorized
                    };
                    send(ctrl, Packet::PubRec(PubRec { pkid, reason }, None)).await?;
                }
                _ => {}
            }
            Ok(())
        }
        Incoming::Other(packet) => match packet {
            Packet::Connect(..) => Err(End::Protocol("second CONNECT")),
            Packet::PingReq(_) => send(ctrl, Packet::PingResp(PingResp)).await,
            Packet::PubAck(ack, _) => {
                let mut router = shared.router();
                router.puback(&client.id, ack.pkid);
                Ok(())
            }
            Packet::PubRec(rec, _) => {
                let known = {
                    let mut router = shared.router();
                    router.pubrec(&client.id, rec.pkid)
                };
                let reason = if known || !v5 {
                    PubRelReason::Success
                } else {
                    PubRelReason::PacketIdentifierNotFound
                };
                send(
                    ctrl,
                    Packet::PubRel(
                        PubRel {
                            pkid: rec.pkid,
                            reason,
                        },
                        None,
                    ),
                )
                .await
            }
            Packet::PubComp(comp, _) => {
                let mut router = shared.router();
                router.pubcomp(&client.id, comp.pkid);
                Ok(())
            }
            Packet::PubRel(rel, _) => {
                let known = {
                    let mut router = shared.router();
                    router.qos2_released(&client.id, rel.pkid)
                };
                let reason = if known || !v5 {
                    PubCompReason::Success
                } else {
                    PubCompReason::PacketIdentifierNotFound
                };
                send(
                    ctrl,
                    Packet::PubComp(
                        PubComp {
                            pkid: rel.pkid,
                            reason,
                        },
                        None,
                    ),
                )
                .await
            }
            Packet::Subscribe(sub, sub_props) => {
                let id = sub_props.and_then(|p| p.id).map(|id| id as u32);
                let mut codes = Vec::with_capacity(sub.filters.len());
                let mut accepted = Vec::new();
                // Each filter: malformed (None), or whether the ACL lets its user read
                // some topic of it. Only valid, readable filters ask for room under
                // maxSubscriptionsPerClient.
                let acl = shared.router().acl().clone();
                let judged: Vec<Option<bool>> = sub
                    .filters
                    .iter()
                    .map(|f| match shared_subs::parse(&f.path) {
                        Ok(shared_sub) if valid_topic_filter(&f.path) => {
                            let filter = match shared_sub {
                                Some((_, filter)) => filter,
                                None => &f.path,
                            };
                            Some(acl.may_subscribe(client.username.as_deref(), &client.id, filter))
                        }
                        _ => None,
                    })
                    .collect();
                let fits = shared.router().admit_subscriptions(
                    &client.id,
                    sub.filters
                        .iter()
                        .zip(&judged)
                        .map(|(f, j)| (*j == Some(true)).then_some(f.path.as_str())),
                );
                for ((f, judged), fits) in sub.filters.iter().zip(judged).zip(fits) {
                    let code = if judged.is_none() {
                        if v5 {
                            SubscribeReasonCode::TopicFilterInvalid
                        } else {
                            SubscribeReasonCode::Failure
                        }
                    } else if judged == Some(false) {
                        // No topic of the filter may be read: refused, as a share group
                        // must not hand messages to a member that may not receive them.
                        subscribe_denied(shared, client, &f.path);
                        if v5 {
                            SubscribeReasonCode::NotAuthorized
                        } else {
                            SubscribeReasonCode::Failure
                        }
                    } else if !fits {
                        // maxSubscriptionsPerClient, counted by the router.
                        if v5 {
                            SubscribeReasonCode::QuotaExceeded
                        } else {
                            SubscribeReasonCode::Failure
                        }
                    } else {
                        let qos = codec::qos_num(f.qos).min(2);
                        accepted.push((
                            f.path.clone(),
                            SubOptions {
                                qos,
                                no_local: (v5 && f.nolocal) || client.bridge,
                                // MQTT 3.1.1: live messages are forwarded with retain 0.
                                retain_as_published: (v5 && f.preserve_retain) || client.bridge,
                                retain_handling: match f.retain_forward_rule {
                                    RetainForwardRule::OnEverySubscribe => 0,
                                    RetainForwardRule::OnNewSubscribe => 1,
                                    RetainForwardRule::Never => 2,
                                },
                                id,
                            },
                        ));
                        if v5 {
                            match qos {
                                0 => SubscribeReasonCode::QoS0,
                                1 => SubscribeReasonCode::QoS1,
                                _ => SubscribeReasonCode::QoS2,
                            }
                        } else {
                            SubscribeReasonCode::Success(codec::qos_of(qos))
                        }
                    };
                    codes.push(code);
                }
                send(
                    ctrl,
                    Packet::SubAck(
                        SubAck {
                            pkid: sub.pkid,
                            return_codes: codes,
                        },
                        None,
                    ),
                )
                .await?;
                let mut router = shared.router();
                for (filter, opts) in accepted {
                    router.subscribe(&client.id, &filter, opts);
                }
                Ok(())
            }
            Packet::Unsubscribe(unsub, _) => {
                let reasons = {
                    let mut router = shared.router();
                    unsub
                        .filters
                        .iter()
                        .map(|f| {
                            if router.unsubscribe(&client.id, f) {
                                UnsubAckReason::Success
                            } else {
                                UnsubAckReason::NoSubscriptionExisted
                            }
                        })
                        .collect()
                };
                send(
                    ctrl,
                    Packet::UnsubAck(
                        UnsubAck {
                            pkid: unsub.pkid,
                            reasons,
                        },
                        None,
                    ),
                )
                .await
            }
            Packet::Disconnect(d, props) => {
                let expiry = props.and_then(|p| p.session_expiry_interval);
                if d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage {
                    Err(End::NormalWithWill { expiry })
                } else {
                    Err(End::Normal { expiry })
                }
            }
            _ => Err(End::Protocol("unexpected packet type from a client")),
        },
    }
}

/// Counts a SUBSCRIBE the ACL refused; the first refusal of a connection is logged
/// with the reason.
fn subscribe_denied(shared: &Shared, client: &Client, filter: &str) {
    shared.metrics.acl_denials.inc();
    if !client.sub_denial_logged.swap(true, Ordering::Relaxed) {
        tracing::info!(client_id = %client.id, username = client.username.as_deref().unwrap_or(""), filter,
            reason = %super::router::denial_reason(client.username.as_deref(), Op::Read),
            "subscription refused by the ACL: no topic of the filter may be read (logged once per connection; later refusals are counted in edgemq_acl_denials_total)");
    } else {
        tracing::debug!(client_id = %client.id, filter, "subscription refused by the ACL");
    }
}

fn expiry_deadline(seconds: Option<u32>) -> Option<std::time::Instant> {
    seconds.map(|s| std::time::Instant::now() + Duration::from_secs(s.into()))
}

/// MQTT 5 properties forwarded to subscribers (topic alias and subscription ids are
/// per connection and are not forwarded).
fn forwardable(mut p: PublishProperties) -> PublishProperties {
    p.topic_alias = None;
    p.subscription_identifiers.clear();
    p
}

fn publish_will(router: &mut super::router::Router, shared: &Shared, client: &Client) {
    let Some((will, props)) = &client.will else {
        return;
    };
    let Ok(topic) = std::str::from_utf8(&will.topic) else {
        return;
    };
    if !valid_topic_name(topic) {
        return;
    }
    if !router
        .acl()
        .check(client.username.as_deref(), &client.id, topic, Op::Write)
    {
        shared.metrics.acl_denials.inc();
        return;
    }
    let properties = props.as_ref().map(|p| PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
        ..PublishProperties::default()
    });
    let msg = Message {
        topic: will.topic.clone(),
        payload: will.message.clone(),
        qos: codec::qos_num(will.qos),
        retain: will.retain,
        expires_at: None,
        properties,
        origin: Some(client.id.clone()),
    };
    let expiry = props.as_ref().and_then(|p| p.message_expiry_interval);
    let delay = props.as_ref().and_then(|p| p.delay_interval).unwrap_or(0);
    router.will(&client.id, msg, delay, expiry);
    tracing::debug!(client_id = %client.id, topic, "will published");
}

async fn write_loop(
    mut writer: Writer,
    shared: Arc<Shared>,
    client_id: Arc<str>,
    version: Version,
    link: ConnLink,
    mut ctrl: mpsc::Receiver<Box<Packet>>,
    max_packet: usize,
) {
    // Buffers grow on first use: an idle connection holds none.
    let mut out = BytesMut::new();
    let mut batch = Vec::new();
    let close_rx = link.close.subscribe();
    // Registered once, not per packet (see `read_loop`); a wake-up re-arms its own.
    let mut close_watch = close_rx.clone();
    let closed = close_watch.changed();
    let woken = link.wake.notified();
    tokio::pin!(closed, woken);
    loop {
        tokio::select! {
            biased;
            p = ctrl.recv() => {
                let Some(p) = p else {
                    // The reader saw the close first and ended: the client is still
                    // owed the DISCONNECT that says why.
                    let reason = *close_rx.borrow();
                    if let Some(reason) = reason {
                        goodbye(version, reason, &mut writer, &mut out).await;
                        return;
                    }
                    break;
                };
                if codec::write(version, *p, &mut out).is_err() {
                    break;
                }
                while let Ok(p) = ctrl.try_recv() {
                    if codec::write(version, *p, &mut out).is_err() {
                        break;
                    }
                }
            }
            _ = &mut closed => {
                let reason = (*close_rx.borrow()).unwrap_or(CloseReason::ServerShuttingDown);
                goodbye(version, reason, &mut writer, &mut out).await;
                // Keep draining control packets until the reader ends.
                while ctrl.recv().await.is_some() {}
                return;
            }
            () = &mut woken => woken.set(link.wake.notified()),
        }
        // Deliveries, as many batches as are ready.
        loop {
            batch.clear();
            {
                let mut router = shared.router();
                router.next_outgoing(&client_id, link.id, WRITE_BATCH, &mut batch);
            }
            if batch.is_empty() {
                break;
            }
            for item in batch.drain(..) {
                let packet = match item {
                    Outgoing::Publish {
                        delivery,
                        pkid,
                        dup,
                    } => {
                        let m = &delivery.msg;
                        let p = codec::build_publish(
                            &m.topic,
                            &m.payload,
                            delivery.qos,
                            pkid,
                            delivery.retain,
                            dup,
                        );
                        let mut props = m.properties.clone();
                        // [MQTT-3.3.2-6]: the expiry interval sent is what is left of it.
                        if let (Some(p), Some(at)) = (props.as_mut(), m.expires_at) {
                            let left = at.saturating_duration_since(std::time::Instant::now());
                            p.message_expiry_interval =
                                Some(left.as_secs_f64().ceil().max(1.0) as u32);
                        }
                        // [MQTT-3.3.4-3]: the identifiers of every matching subscription.
                        if !delivery.sub_ids.is_empty() {
                            props
                                .get_or_insert_with(PublishProperties::default)
                                .subscription_identifiers =
                                delivery.sub_ids.iter().map(|&i| i as usize).collect();
                        }
                        let before = out.len();
                        let written = codec::write(version, Packet::Publish(p, props), &mut out);
                        if written.is_ok() && out.len() - before > max_packet {
                            // [MQTT-3.1.2-25]: dropped for this client as if sent.
                            out.truncate(before);
                            shared.metrics.dropped_too_large.inc();
                            if pkid != 0 {
                                shared.router().drop_inflight(&client_id, pkid);
                            }
                            continue;
                        }
                        shared.metrics.messages_out.inc();
                        if written.is_err() {
                            tracing::warn!(client_id = %client_id, "could not encode a packet");
                        }
                        continue;
                    }
                    Outgoing::PubRel(pkid) => Packet::PubRel(
                        PubRel {
                            pkid,
                            reason: PubRelReason::Success,
                        },
                        None,
                    ),
                };
                if codec::write(version, packet, &mut out).is_err() {
                    tracing::warn!(client_id = %client_id, "could not encode a packet");
                }
            }
            if out.len() >= 64 * 1024 && flush(&mut writer, &mut out, &shared).await.is_err() {
                link.kick(CloseReason::ServerShuttingDown);
                while ctrl.recv().await.is_some() {}
                return;
            }
        }
        if flush(&mut writer, &mut out, &shared).await.is_err() {
            break;
        }
    }
    // The reader ended or the socket failed: make sure the reader stops too.
    link.kick(CloseReason::ServerShuttingDown);
    while ctrl.recv().await.is_some() {}
}

/// Sends what is pending, then (MQTT 5) the DISCONNECT saying why the broker closes
/// the connection, and closes the socket. The DISCONNECT is the reason code alone
/// (remaining length 1, the property length omitted as [MQTT-3.14.2.2.1] allows).
async fn goodbye(version: Version, reason: CloseReason, writer: &mut Writer, out: &mut BytesMut) {
    if version == Version::V5 {
        let code = match reason {
            CloseReason::SessionTakenOver => 0x8E,
            CloseReason::CredentialsChanged => 0x87,
            CloseReason::ListenerRemoved | CloseReason::ServerShuttingDown => 0x8B,
        };
        out.extend_from_slice(&[0xE0, 0x01, code]);
    }
    let _ = writer.write_all(out).await;
    writer.shutdown().await;
}

async fn flush(writer: &mut Writer, out: &mut BytesMut, shared: &Shared) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    writer.write_all(out).await?;
    shared.metrics.bytes_out.inc_by(out.len() as u64);
    out.clear();
    Ok(())
}
