//! One client connection: CONNECT and authentication, then one loop that answers the
//! client's packets and delivers what the router queued for its session.
//!
//! Protocol hygiene lives here: MQTT 3.1 client ids have 1 to 23 characters, a
//! bridge (protocol level bit 0x80) gets no echo of its own messages, keepalive 0 is
//! accepted, a PUBLISH to an invalid topic or a second CONNECT closes the connection,
//! as does any packet [`super::check`] refuses (MQTT 5: after a DISCONNECT saying why),
//! a denied PUBLISH is acknowledged (MQTT 5: reason 0x87) and dropped.
//!
//! ```text
//!  serve ── connect: CONNECT, client id, authentication, CONNACK
//!    └── run: read, write, deliver, the goodbye DISCONNECT
//!          └── Handler::handle ── publish: PUBLISH, PUBACK/PUBREC/PUBREL/PUBCOMP
//!                               └─ subscribe: SUBSCRIBE, UNSUBSCRIBE
//! ```

mod connect;
mod publish;
mod run;
mod subscribe;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use rumqttd::protocol::{
    Connect, ConnectProperties, Disconnect, DisconnectProperties, DisconnectReasonCode, LastWill,
    LastWillProperties, Packet, PingResp,
};
use tokio::sync::watch;

use super::alias::TopicAliases;
use super::client_cert::{PeerCertificate, Registration};
use super::codec::{self, FrameError, Incoming, Version};
use super::transport::Transport;
use super::types::{CloseReason, ConnLink};
use super::Shared;
use crate::api::broker::Limits;
use connect::{refuse, Refusal};

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
    /// An answer the codec could not encode: the broker's fault, not the client's.
    #[error("could not encode an answer")]
    Encode,
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

/// A socket that has not authenticated yet: its handshake slot, and when its
/// handshake timeout (counted from the accept) runs out.
pub struct Handshake {
    /// Freed when the CONNECT is authenticated or the socket closes.
    pub slot: super::slots::HandshakeSlot,
    /// The CONNECT must be read by then.
    pub deadline: tokio::time::Instant,
    /// The client certificate a `clientAuth` listener accepted, if one was presented.
    pub certificate: Option<PeerCertificate>,
}

/// Serves one accepted connection until it ends.
pub async fn serve(
    transport: Transport,
    shared: Arc<Shared>,
    listener: Arc<str>,
    peer: String,
    stop: watch::Receiver<bool>,
    handshake: Handshake,
) {
    let (mut reader, mut writer) = transport.split();
    let mut buf = BytesMut::new();
    let limits = shared.limits.load_full();
    let Some(packet) = connect::first_connect(
        &mut reader,
        &mut buf,
        &mut writer,
        &shared,
        &limits,
        handshake.deadline,
        &peer,
        &listener,
    )
    .await
    else {
        return;
    };
    let version = packet.head.version;
    let identity = connect::identify(
        &shared,
        &packet,
        handshake.certificate.as_ref(),
        &peer,
        &listener,
    )
    .await;
    let connect::Identity {
        client_id,
        username,
        assigned,
    } = match identity {
        Ok(identity) => identity,
        Err(why) => {
            refuse(&mut writer, version, why).await;
            return;
        }
    };
    let codec::ConnectPacket {
        head,
        connect,
        properties: props,
        will,
        will_properties: will_props,
        ..
    } = packet;

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
    let _stop_watch = watch_stop(stop, link.clone());
    let _registration = handshake
        .certificate
        .as_ref()
        .map(|cert| register_certificate(&shared, cert, link.id, &listener, &client_id));
    let (expiry, granted_expiry) = session_expiry(version, &connect, props.as_ref(), &limits);
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
    let (keepalive, server_keep_alive) = connect::keep_alive(version, connect.keep_alive);
    // [MQTT-3.1.2-24]: nothing larger than the client's Maximum Packet Size is sent.
    let client_max_packet = props
        .as_ref()
        .and_then(|p| p.max_packet_size)
        .map_or(usize::MAX, |m| m as usize);
    let accepted = connect::Accepted {
        session_present: connected.session_present,
        expiry: (expiry, granted_expiry),
        assigned,
        server_keep_alive,
    };
    let sent = match connect::connack(version, &limits, max_packet, accepted) {
        Ok(out) => writer.write_all(&out).await.is_ok(),
        Err(_) => false,
    };
    if !sent {
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
    let mut handler = Handler {
        shared: &shared,
        client: &client,
        out: BytesMut::new(),
        aliases: TopicAliases::default(),
    };
    let signals = run::Signals {
        link: &link,
        keepalive,
        client_max_packet,
    };
    let Err(end) = run::run(&mut reader, &mut writer, &mut buf, &mut handler, signals).await;
    // The session and the will first: a client that does not read must not delay them.
    leave(&shared, &client, link.id, &end);
    run::close(&mut writer, handler.out, version, &end).await;
    shared.metrics.connections.dec();
    match end {
        End::Normal { .. } | End::NormalWithWill { .. } | End::Eof => {
            tracing::info!(client_id = %client_id, reason = %end, "client disconnected")
        }
        _ => tracing::info!(client_id = %client_id, reason = %end, "client connection closed"),
    }
}

/// Closes the connection when its listener stops (or the listener's handle is
/// dropped), through the link as a takeover would: a task of its own, so that the
/// connection's loop polls nothing for it per message. It ends with the connection.
fn watch_stop(mut stop: watch::Receiver<bool>, link: ConnLink) -> StopWatch {
    StopWatch(tokio::spawn(async move {
        let _ = stop.wait_for(|s| *s).await;
        link.kick(CloseReason::ListenerRemoved);
    }))
}

/// The task of [`watch_stop`], aborted when dropped.
struct StopWatch(tokio::task::JoinHandle<()>);

impl Drop for StopWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The session expiry a CONNECT asks for (MQTT 3.1.1: the Broker's
/// `sessionExpirySeconds` unless the session is clean), and the one granted.
fn session_expiry(
    version: Version,
    connect: &Connect,
    props: Option<&ConnectProperties>,
    limits: &Limits,
) -> (u32, u32) {
    let expiry = match version {
        Version::V4 if connect.clean_session => 0,
        Version::V4 => limits.session_expiry_seconds,
        Version::V5 => props.and_then(|p| p.session_expiry_interval).unwrap_or(0),
    };
    (expiry, expiry.min(limits.session_expiry_seconds))
}

/// The session's connection is gone: the router keeps or drops the session, and the
/// will is published unless the client said a plain DISCONNECT; an MQTT 5 Will Delay
/// Interval holds it (see `will_delay`).
fn leave(shared: &Shared, client: &Client, conn_id: u64, end: &End) {
    let expiry_override = match end {
        End::Normal { expiry } | End::NormalWithWill { expiry } => *expiry,
        _ => None,
    };
    let mut router = shared.router();
    router.disconnect(&client.id, conn_id, expiry_override);
    if !matches!(end, End::Normal { .. }) {
        publish::publish_will(&mut router, shared, client);
    }
}

/// Notes a connection that logged in with a client certificate, so a change of the
/// listener's CA or CRL checks it again; the note goes when the registration drops.
fn register_certificate<'a>(
    shared: &'a Shared,
    cert: &PeerCertificate,
    conn_id: u64,
    listener: &Arc<str>,
    client_id: &Arc<str>,
) -> Registration<'a> {
    shared
        .certificate_connections
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            conn_id,
            super::CertificateConnection {
                listener: listener.clone(),
                client_id: client_id.clone(),
                chain: cert.chain.clone(),
            },
        );
    Registration { shared, conn_id }
}

fn disconnect(shared: &Shared, client_id: &str, conn_id: u64, expiry: Option<u32>) {
    let mut router = shared.router();
    router.disconnect(client_id, conn_id, expiry);
}

/// What a connection needs to answer a client's packets, one method per packet type
/// (in `publish` and `subscribe`): plain calls on the connection's own state, no
/// trait objects, nothing allocated by the dispatch itself. Answers are encoded into
/// `out`, which [`run`] writes.
struct Handler<'a> {
    shared: &'a Arc<Shared>,
    client: &'a Client,
    /// Encoded packets waiting to be written: answers and deliveries. It grows on
    /// first use; an idle connection holds none.
    out: BytesMut,
    aliases: TopicAliases,
}

impl Handler<'_> {
    fn v5(&self) -> bool {
        self.client.version == Version::V5
    }

    /// Encodes a packet for the client after what is already waiting.
    fn send(&mut self, p: Packet) -> Result<(), End> {
        match codec::write(self.client.version, p, &mut self.out) {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(client_id = %self.client.id, "could not encode a packet: {e:?}");
                Err(End::Encode)
            }
        }
    }

    /// Answers one packet from the client; `Err` ends the connection.
    fn handle(&mut self, incoming: Incoming) -> Result<(), End> {
        let packet = match incoming {
            Incoming::Publish {
                publish,
                properties,
                qos,
                pkid,
            } => return self.publish(publish, properties, qos, pkid),
            Incoming::Other(packet) => packet,
        };
        match packet {
            Packet::Connect(..) => Err(End::Protocol("second CONNECT")),
            Packet::PingReq(_) => self.send(Packet::PingResp(PingResp)),
            Packet::PubAck(ack, _) => {
                self.puback(ack.pkid);
                Ok(())
            }
            Packet::PubRec(rec, _) => self.pubrec(rec.pkid),
            Packet::PubComp(comp, _) => {
                self.pubcomp(comp.pkid);
                Ok(())
            }
            Packet::PubRel(rel, _) => self.pubrel(rel.pkid),
            Packet::Subscribe(sub, props) => self.subscribe(sub, props),
            Packet::Unsubscribe(unsub, _) => self.unsubscribe(unsub),
            Packet::Disconnect(d, props) => Err(disconnected(d, props)),
            _ => Err(End::Protocol("unexpected packet type from a client")),
        }
    }
}

/// How a DISCONNECT from the client ends the connection: with or without its will,
/// and the session expiry an MQTT 5 client may set in it.
fn disconnected(d: Disconnect, props: Option<DisconnectProperties>) -> End {
    let expiry = props.and_then(|p| p.session_expiry_interval);
    if d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage {
        End::NormalWithWill { expiry }
    } else {
        End::Normal { expiry }
    }
}
