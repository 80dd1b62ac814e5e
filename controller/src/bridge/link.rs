//! A bridge's remote side: one MQTT client connection to the remote broker at a time,
//! reconnected with exponential backoff and full jitter.
//!
//! Outbound, messages are read from the on-disk queue in sequence order and sent with
//! a window of unacknowledged publishes; a message leaves the queue only when the
//! remote acknowledged it (PUBACK, or PUBCOMP for QoS 2; QoS 0 once written). After a
//! reconnect the queue is sent again from its head, so order is kept and nothing is
//! skipped (a message whose acknowledgement was lost is sent twice, with DUP set).
//!
//! Inbound, publishes on the remote filters are mapped to local topics and routed into
//! the local broker as the bridge's own session, so its outbound subscriptions (which
//! are no-local) never send them back. Towards the remote, MQTT 5 subscriptions are
//! no-local too; MQTT 3.1.1 has no such option, so the bridge recognizes its own
//! messages echoed back by the remote (same topic and payload, sent within the last
//! minute) and drops them.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{
    Connect, ConnectProperties, Disconnect, DisconnectReasonCode, Filter, Login, Packet, PingReq,
    PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, PubRel, PubRelReason,
    RetainForwardRule, Subscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};

use super::queue::QueuedMessage;
use super::{Bridge, ResolvedBridge};
use crate::api::bridge::MqttVersion;
use crate::broker::codec::{self, FrameError, Incoming, Version};
use crate::broker::transport::BoxIo;

/// Most unacknowledged publishes towards the remote.
const WINDOW: usize = 256;
/// Largest packet accepted from the remote.
const MAX_PACKET: usize = 256 * 1024 * 1024;
/// Time allowed for TCP connect, TLS handshake and CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a sent message is remembered to recognize its echo (MQTT 3.1.1).
const ECHO_WINDOW: Duration = Duration::from_secs(60);

/// Why a session ended.
pub enum Ended {
    /// The bridge is being stopped.
    Stopped,
    /// The connection failed or was lost; `connected` says whether it got as far as a
    /// CONNACK (the backoff restarts then).
    Failed { reason: String, connected: bool },
}

/// Reconnect delays: exponential from 1 s to 60 s, with full jitter.
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new() -> Backoff {
        Backoff { attempt: 0 }
    }

    /// Back to the shortest delay (after a good connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay: uniform in [0.5, 1] × min(60 s, 1 s × 2^attempt).
    pub fn next_delay(&mut self) -> Duration {
        let cap = Duration::from_secs(1u64 << self.attempt.min(6)).min(Duration::from_secs(60));
        self.attempt = self.attempt.saturating_add(1);
        cap.mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

fn version(cfg: &ResolvedBridge) -> Version {
    match cfg.plan.protocol_version {
        MqttVersion::V311 => Version::V4,
        MqttVersion::V5 => Version::V5,
    }
}

/// Connects: TCP (and TLS), CONNECT, CONNACK. Errors say which step failed and why.
async fn connect(
    cfg: &ResolvedBridge,
    tls: Option<&(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
) -> Result<(BoxIo, BytesMut, u16), String> {
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let mut addrs = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host(&addr))
        .await
        .map_err(|_| format!("DNS lookup of {} timed out", cfg.host))?
        .map_err(|e| format!("DNS lookup of {} failed: {e}", cfg.host))?;
    let sock = addrs
        .next()
        .ok_or_else(|| format!("DNS lookup of {} returned no address", cfg.host))?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(sock))
        .await
        .map_err(|_| format!("TCP connect to {addr} timed out"))?
        .map_err(|e| format!("TCP connect to {addr} failed: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut io: BoxIo = match tls {
        Some((config, name)) => {
            let c = tokio_rustls::TlsConnector::from(config.clone());
            let s = tokio::time::timeout(CONNECT_TIMEOUT, c.connect(name.clone(), tcp))
                .await
                .map_err(|_| format!("TLS handshake with {addr} timed out"))?
                .map_err(|e| format!("TLS handshake with {addr} failed: {}", io_reason(&e)))?;
            Box::new(s)
        }
        None => Box::new(tcp),
    };

    let v = version(cfg);
    let p = &cfg.plan;
    let login = cfg.username.as_ref().map(|u| Login {
        username: u.clone(),
        password: cfg.password.clone().unwrap_or_default(),
    });
    let props = (v == Version::V5).then(|| ConnectProperties {
        // A persistent session outlives a week-long outage at most.
        session_expiry_interval: (!p.clean_session).then_some(7 * 24 * 3600),
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: Vec::new(),
        authentication_method: None,
        authentication_data: None,
    });
    let mut out = BytesMut::new();
    codec::write(
        v,
        Packet::Connect(
            Connect {
                keep_alive: p.keep_alive_seconds,
                client_id: p.client_id.clone(),
                clean_session: p.clean_session,
            },
            props,
            None,
            None,
            login,
        ),
        &mut out,
    )
    .map_err(|e| format!("could not encode CONNECT: {e:?}"))?;
    io.write_all(&out)
        .await
        .map_err(|e| format!("sending CONNECT to {addr} failed: {}", io_reason(&e)))?;

    let mut buf = BytesMut::with_capacity(4096);
    let ack = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            match codec::read_connack(v, &mut buf) {
                Ok(a) => return Ok(a),
                Err(FrameError::Incomplete) => {}
                Err(e) => return Err(format!("bad CONNACK from {addr}: {e}")),
            }
            match io.read_buf(&mut buf).await {
                Ok(0) => {
                    return Err(format!(
                        "{addr} closed the connection before CONNACK (wrong protocol version, or the client was refused)"
                    ))
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(format!(
                        "reading CONNACK from {addr} failed: {}",
                        io_reason(&e)
                    ))
                }
            }
        }
    })
    .await
    .map_err(|_| format!("no CONNACK from {addr} within {CONNECT_TIMEOUT:?}"))??;
    if ack.code != 0 {
        return Err(format!(
            "{addr} refused the connection: {}",
            connack_reason(v, ack.code)
        ));
    }
    let window = ack
        .receive_maximum
        .map_or(WINDOW, |m| (m as usize).clamp(1, WINDOW));
    Ok((io, buf, window as u16))
}

/// An I/O error's cause, with TLS alerts spelled out.
fn io_reason(e: &std::io::Error) -> String {
    if let Some(inner) = e.get_ref() {
        if let Some(t) = inner.downcast_ref::<rustls::Error>() {
            let hint = match t {
                rustls::Error::AlertReceived(
                    rustls::AlertDescription::BadCertificate
                    | rustls::AlertDescription::UnknownCA
                    | rustls::AlertDescription::CertificateRequired
                    | rustls::AlertDescription::CertificateUnknown
                    | rustls::AlertDescription::AccessDenied,
                ) => " (the remote refused the client certificate)",
                rustls::Error::InvalidCertificate(_) => {
                    " (the remote's certificate is not trusted)"
                }
                _ => "",
            };
            return format!("TLS error: {t}{hint}");
        }
    }
    e.to_string()
}

/// The meaning of a CONNACK code.
fn connack_reason(v: Version, code: u8) -> String {
    let text = match (v, code) {
        (Version::V4, 1) => "unacceptable protocol version",
        (Version::V4, 2) => "client id rejected",
        (Version::V4, 3) => "server unavailable",
        (Version::V4, 4) => "bad username or password",
        (Version::V4, 5) => "not authorized",
        (Version::V5, 0x80) => "unspecified error",
        (Version::V5, 0x81) => "malformed packet",
        (Version::V5, 0x82) => "protocol error",
        (Version::V5, 0x84) => "unsupported protocol version",
        (Version::V5, 0x85) => "client id not valid",
        (Version::V5, 0x86) => "bad username or password",
        (Version::V5, 0x87) => "not authorized",
        (Version::V5, 0x88) => "server unavailable",
        (Version::V5, 0x89) => "server busy",
        (Version::V5, 0x8A) => "banned",
        (Version::V5, 0x8C) => "bad authentication method",
        (Version::V5, 0x95) => "packet too large",
        (Version::V5, 0x97) => "quota exceeded",
        _ => "refused",
    };
    format!("{text} (code {code:#04x})")
}

/// What the reader tells the session loop.
enum FromRemote {
    /// PUBACK or PUBCOMP: the publish with this packet id is delivered.
    Delivered(u16),
    /// PUBREC: answer with PUBREL.
    Received(u16),
    /// Acknowledge an inbound publish: PUBACK (QoS 1), PUBREC (QoS 2) or PUBCOMP
    /// (after its PUBREL), by packet type and id.
    Ack(u8, u16),
    /// SUBACK return codes.
    SubAck(Vec<u8>),
    /// PINGRESP.
    Pong,
    /// The connection ended, and why (the reader's last message).
    Closed(String),
}

/// Runs one connection until it fails or the bridge stops.
pub async fn session(
    bridge: &Arc<Bridge>,
    tls: Option<&(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let cfg = &bridge.config;
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let connecting = tokio::select! {
        r = connect(cfg, tls) => r,
        _ = stop.changed() => return Ended::Stopped,
    };
    let (io, buf, window) = match connecting {
        Ok(v) => v,
        Err(reason) => {
            return Ended::Failed {
                reason,
                connected: false,
            }
        }
    };
    bridge.set_connected(true, None);
    tracing::info!(bridge = %bridge.key, remote = %addr, client_id = %cfg.plan.client_id, "bridge connected");
    let v = version(cfg);
    let (reader, mut writer) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader_bridge = bridge.clone();
    let read_task = tokio::spawn(async move {
        let reason = read_loop(reader_bridge, reader, buf, &tx).await;
        let _ = tx.send(FromRemote::Closed(reason));
    });
    let result = run(bridge, v, window as usize, &mut writer, &mut rx, stop).await;
    read_task.abort();
    // Wait until it is gone: it holds the bridge (and its queue file) open.
    let _ = read_task.await;
    let reason = match result {
        Ok(()) => {
            let _ = writer.shutdown().await;
            return Ended::Stopped;
        }
        Err(r) => r,
    };
    Ended::Failed {
        reason,
        connected: true,
    }
}

/// Echo recognition for MQTT 3.1.1 (see the module comment).
#[derive(Default)]
pub struct Echoes {
    sent: VecDeque<(Instant, u64)>,
    counts: HashMap<u64, u32>,
}

impl Echoes {
    fn key(topic: &str, payload: &[u8]) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        topic.hash(&mut h);
        payload.hash(&mut h);
        h.finish()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(t, k)) = self.sent.front() {
            if now.duration_since(t) < ECHO_WINDOW {
                break;
            }
            self.sent.pop_front();
            if let Some(c) = self.counts.get_mut(&k) {
                *c -= 1;
                if *c == 0 {
                    self.counts.remove(&k);
                }
            }
        }
    }

    /// Records a message sent to the remote.
    pub fn sent(&mut self, topic: &str, payload: &[u8]) {
        let now = Instant::now();
        self.expire(now);
        let k = Echoes::key(topic, payload);
        self.sent.push_back((now, k));
        *self.counts.entry(k).or_default() += 1;
    }

    /// Whether an inbound message is the echo of one sent (and forgets that one).
    pub fn is_echo(&mut self, topic: &str, payload: &[u8]) -> bool {
        self.expire(Instant::now());
        let k = Echoes::key(topic, payload);
        match self.counts.get_mut(&k) {
            Some(c) => {
                *c -= 1;
                if *c == 0 {
                    self.counts.remove(&k);
                }
                // The queue entry stays until it expires; its count is already spent.
                true
            }
            None => false,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    bridge: &Arc<Bridge>,
    v: Version,
    window: usize,
    writer: &mut WriteHalf<BoxIo>,
    rx: &mut mpsc::UnboundedReceiver<FromRemote>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let cfg = &bridge.config;
    let mut out = BytesMut::with_capacity(64 * 1024);
    let werr = |e: std::io::Error| format!("writing to the remote failed: {}", io_reason(&e));

    // Subscribe to what comes in.
    let filters: Vec<Filter> = cfg
        .plan
        .topics
        .iter()
        .filter(|t| t.inbound())
        .map(|t| Filter {
            path: t.remote_filter.clone(),
            qos: codec::qos_of(t.qos),
            nolocal: v == Version::V5,
            preserve_retain: true,
            retain_forward_rule: RetainForwardRule::OnEverySubscribe,
        })
        .collect();
    let sub_filters: Vec<String> = filters.iter().map(|f| f.path.clone()).collect();
    if !filters.is_empty() {
        codec::write(
            v,
            Packet::Subscribe(Subscribe { pkid: 1, filters }, None),
            &mut out,
        )
        .map_err(|e| format!("could not encode SUBSCRIBE: {e:?}"))?;
    }
    let mut next_pkid: u16 = 1;
    let mut inflight: BTreeMap<u16, (u64, u8)> = BTreeMap::new();
    let mut pending: VecDeque<(u64, QueuedMessage)> = VecDeque::new();
    let mut cursor = 0u64;
    let mut done: Vec<u64> = Vec::new();
    let guard_echoes = bridge.guards_echoes();
    let keepalive = Duration::from_secs(cfg.plan.keep_alive_seconds.max(5) as u64);
    let mut ping = tokio::time::interval(keepalive);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let mut awaiting_pong = false;
    let queue = bridge.queue.clone();

    loop {
        // Fill the window from the queue, in order.
        while inflight.len() < window {
            if pending.is_empty() {
                let q = queue.clone();
                let after = cursor;
                let batch = tokio::task::spawn_blocking(move || q.read_after(after, 512))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                if batch.is_empty() {
                    break;
                }
                pending.extend(batch);
            }
            let Some((seq, m)) = pending.pop_front() else {
                break;
            };
            cursor = seq;
            let dup = seq <= bridge.max_sent.load(Ordering::Relaxed);
            bridge.max_sent.fetch_max(seq, Ordering::Relaxed);
            let topic = Bytes::from(m.topic.clone().into_bytes());
            let pkid = if m.qos == 0 {
                done.push(seq);
                0
            } else {
                loop {
                    next_pkid = next_pkid.wrapping_add(1).max(2);
                    if !inflight.contains_key(&next_pkid) {
                        break;
                    }
                }
                inflight.insert(next_pkid, (seq, m.qos));
                next_pkid
            };
            let p =
                codec::build_publish(&topic, &m.payload, m.qos, pkid, m.retain, dup && pkid != 0);
            codec::write(v, Packet::Publish(p, None), &mut out)
                .map_err(|e| format!("could not encode PUBLISH: {e:?}"))?;
            if guard_echoes {
                bridge.echoes().sent(&m.topic, &m.payload);
            }
        }
        if !out.is_empty() {
            writer.write_all(&out).await.map_err(werr)?;
            out.clear();
        }
        if !done.is_empty() {
            let n = done.len() as u64;
            let q = queue.clone();
            let seqs = std::mem::take(&mut done);
            tokio::task::spawn_blocking(move || q.remove(&seqs))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            bridge.delivered_out(n);
        }

        tokio::select! {
            msg = rx.recv() => {
                let Some(first) = msg else {
                    return Err("the connection reader stopped".into());
                };
                last_heard = Instant::now();
                let mut next = Some(first);
                let mut handled = 0;
                while let Some(m) = next.take() {
                    match m {
                        FromRemote::Delivered(pkid) => {
                            if let Some((seq, _)) = inflight.remove(&pkid) {
                                done.push(seq);
                            }
                        }
                        FromRemote::Received(pkid) => {
                            codec::write(v, Packet::PubRel(PubRel { pkid, reason: PubRelReason::Success }, None), &mut out)
                                .map_err(|e| format!("could not encode PUBREL: {e:?}"))?;
                        }
                        FromRemote::Ack(kind, pkid) => {
                            let p = match kind {
                                4 => Packet::PubAck(PubAck { pkid, reason: PubAckReason::Success }, None),
                                5 => Packet::PubRec(PubRec { pkid, reason: PubRecReason::Success }, None),
                                _ => Packet::PubComp(PubComp { pkid, reason: PubCompReason::Success }, None),
                            };
                            codec::write(v, p, &mut out)
                                .map_err(|e| format!("could not encode an acknowledgement: {e:?}"))?;
                        }
                        FromRemote::SubAck(codes) => {
                            let refused: Vec<&str> = codes
                                .iter()
                                .zip(&sub_filters)
                                .filter(|(c, _)| **c >= 0x80)
                                .map(|(_, f)| f.as_str())
                                .collect();
                            if !refused.is_empty() {
                                let e = format!("the remote refused the subscription to {}", refused.join(", "));
                                tracing::warn!(bridge = %bridge.key, "{e}");
                                bridge.set_error(e);
                            }
                        }
                        FromRemote::Pong => awaiting_pong = false,
                        FromRemote::Closed(reason) => return Err(reason),
                    }
                    handled += 1;
                    if handled < 4096 {
                        next = rx.try_recv().ok();
                    }
                }
            }
            _ = bridge.queued.notified(), if inflight.len() < window => {}
            _ = ping.tick() => {
                if awaiting_pong && last_heard.elapsed() >= keepalive {
                    return Err(format!("no answer from the remote within the keepalive ({}s)", keepalive.as_secs()));
                }
                codec::write(v, Packet::PingReq(PingReq), &mut out)
                    .map_err(|e| format!("could not encode PINGREQ: {e:?}"))?;
                awaiting_pong = true;
            }
            _ = stop.changed() => {
                let _ = codec::write(
                    v,
                    Packet::Disconnect(Disconnect { reason_code: DisconnectReasonCode::NormalDisconnection }, None),
                    &mut out,
                );
                let _ = writer.write_all(&out).await;
                return Ok(());
            }
        }
    }
}

/// Reads packets from the remote until the connection ends; returns why it ended.
async fn read_loop(
    bridge: Arc<Bridge>,
    mut reader: ReadHalf<BoxIo>,
    mut buf: BytesMut,
    tx: &mpsc::UnboundedSender<FromRemote>,
) -> String {
    let v = version(&bridge.config);
    let mut qos2_seen: HashSet<u16> = HashSet::new();
    loop {
        loop {
            let packet = match codec::read(v, &mut buf, MAX_PACKET) {
                Ok(p) => p,
                Err(FrameError::Incomplete) => break,
                Err(e) => return format!("bad packet from the remote: {e}"),
            };
            let msg = match packet {
                Incoming::Publish {
                    publish, qos, pkid, ..
                } => {
                    let first = qos < 2 || qos2_seen.insert(pkid);
                    if first {
                        bridge.inbound(
                            &publish.topic,
                            publish.payload.clone(),
                            qos,
                            publish.retain,
                        );
                    }
                    match qos {
                        0 => continue,
                        1 => FromRemote::Ack(4, pkid),
                        _ => FromRemote::Ack(5, pkid),
                    }
                }
                Incoming::Other(Packet::PubRel(p, _)) => {
                    qos2_seen.remove(&p.pkid);
                    FromRemote::Ack(7, p.pkid)
                }
                Incoming::Other(Packet::PubAck(p, _)) => FromRemote::Delivered(p.pkid),
                Incoming::Other(Packet::PubComp(p, _)) => FromRemote::Delivered(p.pkid),
                Incoming::Other(Packet::PubRec(p, _)) => FromRemote::Received(p.pkid),
                Incoming::Other(Packet::SubAck(s, _)) => {
                    FromRemote::SubAck(s.return_codes.iter().map(|c| suback_code(*c)).collect())
                }
                Incoming::Other(Packet::PingResp(_)) => FromRemote::Pong,
                Incoming::Other(Packet::Disconnect(d, _)) => {
                    return format!("the remote disconnected the bridge: {:?}", d.reason_code)
                }
                // Only the packet's type: its fields come from the remote and end up
                // in status.
                Incoming::Other(other) => {
                    let kind = format!("{other:?}");
                    let kind = kind.split(['(', ' ', '{']).next().unwrap_or_default();
                    return format!("unexpected {kind} packet from the remote");
                }
            };
            if tx.send(msg).is_err() {
                return "session ended".into();
            }
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => return "the remote closed the connection".into(),
            Ok(_) => {}
            Err(e) => return format!("reading from the remote failed: {}", io_reason(&e)),
        }
    }
}

fn suback_code(c: rumqttd::protocol::SubscribeReasonCode) -> u8 {
    use rumqttd::protocol::SubscribeReasonCode as C;
    match c {
        C::Success(q) => codec::qos_num(q),
        C::QoS0 => 0,
        C::QoS1 => 1,
        C::QoS2 => 2,
        C::Unspecified => 0x80,
        C::ImplementationSpecific => 0x83,
        C::NotAuthorized => 0x87,
        C::TopicFilterInvalid => 0x8F,
        C::PkidInUse => 0x91,
        C::QuotaExceeded => 0x97,
        C::SharedSubscriptionsNotSupported => 0x9E,
        C::SubscriptionIdNotSupported => 0xA1,
        C::WildcardSubscriptionsNotSupported => 0xA2,
        C::Failure => 0x80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_minute_with_jitter_and_resets() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(60));
        }
        let late = b.next_delay();
        assert!(
            late >= Duration::from_secs(30),
            "capped at 60 s, jittered down to half"
        );
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn an_echo_is_recognized_once_per_sent_message() {
        let mut e = Echoes::default();
        e.sent("sync/a", b"1");
        e.sent("sync/a", b"1");
        assert!(!e.is_echo("sync/a", b"2"));
        assert!(e.is_echo("sync/a", b"1"));
        assert!(e.is_echo("sync/a", b"1"));
        assert!(!e.is_echo("sync/a", b"1"), "a third copy is a new message");
    }

    #[test]
    fn connack_codes_are_spelled_out() {
        assert_eq!(
            connack_reason(Version::V4, 4),
            "bad username or password (code 0x04)"
        );
        assert_eq!(
            connack_reason(Version::V5, 0x87),
            "not authorized (code 0x87)"
        );
    }

    #[test]
    fn an_mqtt5_connack_gives_its_receive_maximum() {
        // CONNACK, session present, success, properties: receive maximum 10, then a
        // reason string "ok".
        let mut buf = BytesMut::from(&[0x20, 10, 1, 0, 7, 0x21, 0, 10, 0x1F, 0, 2, b'o', b'k'][..]);
        buf[1] = (buf.len() - 2) as u8;
        let ack = codec::read_connack(Version::V5, &mut buf).expect("a CONNACK");
        assert!(ack.session_present);
        assert_eq!((ack.code, ack.receive_maximum), (0, Some(10)));
        assert!(buf.is_empty());
    }
}
