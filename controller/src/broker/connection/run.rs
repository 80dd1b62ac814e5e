//! The loop of an authenticated connection, in one task: what the client sends is
//! read and answered, what the router queued for the session is delivered, and both
//! go out through one buffer.
//!
//! One task rather than a reader and a writer that pass answers over a channel: a
//! device that waits for each PUBACK then costs one wake-up of its connection per
//! message, not two, and its PUBACK is written by the same wake-up that read the
//! PUBLISH. Writes never block reading: the loop waits for the socket to take bytes
//! beside waiting for bytes to read, and stops reading only while [`OUT_HIGH`] bytes
//! wait to be written (as a full channel of answers stopped the old reader).

use std::convert::Infallible;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use rumqttd::protocol::PublishProperties;
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet, PubRel, PubRelReason};
use tokio::io::AsyncWriteExt;

use super::super::codec::{self, FrameError, Version};
use super::super::transport::{Reader, Writer};
use super::super::types::{CloseReason, ConnLink, Outgoing};
use super::super::Shared;
use super::{End, Handler};

/// Largest batch of deliveries taken from the router at once.
const DELIVERY_BATCH: usize = 64;

/// While this many bytes wait to be written, nothing more is read or queued.
const OUT_HIGH: usize = 64 * 1024;

/// How long the last bytes and the goodbye DISCONNECT may take to leave.
const GOODBYE_WAIT: Duration = Duration::from_secs(5);

/// What the loop watches besides the socket.
pub(super) struct Signals<'a> {
    /// The router's link: wake-ups for queued messages and for a close (a close
    /// asked for at once after the CONNACK is kept in the link, so it is not missed).
    pub link: &'a ConnLink,
    /// Keepalive from the CONNECT, in seconds (0: none).
    pub keepalive: u16,
    /// The client's Maximum Packet Size.
    pub client_max_packet: usize,
}

/// Runs the connection until it ends (it returns only an [`End`]); what is still
/// owed to the client is sent by [`close`].
pub(super) async fn run(
    reader: &mut Reader,
    writer: &mut Writer,
    buf: &mut BytesMut,
    handler: &mut Handler<'_>,
    signals: Signals<'_>,
) -> Result<Infallible, End> {
    let Signals {
        link,
        keepalive,
        client_max_packet,
    } = signals;
    let (shared, version) = (handler.shared, handler.client.version);
    let client_id = handler.client.id.clone();
    let timeout = (keepalive > 0).then(|| Duration::from_millis(u64::from(keepalive) * 1500));
    let max = shared.max_packet_size();
    // One keepalive timer for the whole connection, and one registration with each
    // watch: a read only notes when it happened, and the timer, once due, moves on to
    // one keepalive after the last read. (A timer armed per read, and the watches
    // polled anew per read, cost a lock and a list insertion each, per message.)
    let mut last_read = tokio::time::Instant::now();
    let far = Duration::from_secs(86_400 * 365);
    let keepalive_due = tokio::time::sleep(timeout.unwrap_or(far));
    tokio::pin!(keepalive_due);
    let mut batch = Vec::new();
    // A resumed session may have deliveries waiting before any wake-up.
    let mut deliver = true;
    // A TLS or WebSocket writer holds written bytes until flushed: whether some wait.
    let buffered = writer.buffers();
    let mut unflushed = false;
    loop {
        // Answer every complete frame already read, unless too much waits to go out.
        let mut more_frames = true;
        while more_frames && handler.out.len() < OUT_HIGH {
            match codec::read_client(version, buf, max) {
                Ok(incoming) => handler.handle(incoming)?,
                Err(FrameError::Incomplete) => more_frames = false,
                Err(FrameError::Violation(v)) => {
                    // MQTT 5: say why before closing [MQTT-4.13.2-1].
                    if version == Version::V5 {
                        let reason_code = if v.reason_code() == 0x81 {
                            DisconnectReasonCode::MalformedPacket
                        } else {
                            DisconnectReasonCode::ProtocolError
                        };
                        let _ = handler.send(Packet::Disconnect(Disconnect { reason_code }, None));
                    }
                    return Err(End::Frame(FrameError::Violation(v)));
                }
                Err(FrameError::TooLarge(n)) => {
                    shared.metrics.refused.payload_bytes.inc();
                    return Err(End::Frame(FrameError::TooLarge(n)));
                }
                Err(e) => return Err(End::Frame(e)),
            }
        }
        // Deliveries, as many batches as are ready and fit.
        while deliver && handler.out.len() < OUT_HIGH {
            batch.clear();
            shared
                .router()
                .next_outgoing(&client_id, link.id, DELIVERY_BATCH, &mut batch);
            // A full batch may have more behind it; a message left out as too large
            // freed an in-flight slot that the next one may take.
            deliver = batch.len() == DELIVERY_BATCH;
            for item in batch.drain(..) {
                deliver |= !encode(
                    item,
                    version,
                    client_max_packet,
                    shared,
                    &client_id,
                    &mut handler.out,
                );
            }
        }
        // Most answers leave at once, without waiting for the socket.
        if !handler.out.is_empty() {
            if let Some(written) = writer.try_write(&handler.out) {
                wrote(written, &mut handler.out, shared, buffered, &mut unflushed)?;
            }
        }
        let reading = handler.out.len() < OUT_HIGH;
        if reading && (more_frames || deliver) {
            // Room was made: answer and deliver the rest before waiting. (This ends:
            // each round takes frames or deliveries, or finds none and stops.)
            continue;
        }
        let pending = !handler.out.is_empty();
        // In this order: the close first; bytes out before bytes in, so that room is
        // made before more answers are made; reads before deliveries, so that a busy
        // subscription cannot hold back the PUBACKs that open its window (a read
        // gives way after tokio's cooperative budget, a wake-up would not).
        tokio::select! {
            biased;
            // A close (a takeover, changed credentials, the listener's stop) wakes
            // the loop through the link's wake-up, whose waker the last branch
            // registers; it is checked first.
            reason = std::future::poll_fn(|_| link.close_reason().map_or(Poll::Pending, Poll::Ready)) => {
                return Err(End::Kicked(reason));
            }
            () = &mut keepalive_due, if timeout.is_some() && reading => {
                let t = timeout.unwrap_or(far);
                if last_read.elapsed() >= t {
                    return Err(End::KeepAlive);
                }
                keepalive_due.as_mut().reset(last_read + t);
            }
            sent = send_some(writer, &handler.out), if pending || unflushed => {
                if !reading {
                    // Reading resumes now: the wait for the socket is not the
                    // client's silence.
                    last_read = tokio::time::Instant::now();
                }
                if pending {
                    wrote(sent, &mut handler.out, shared, buffered, &mut unflushed)?;
                } else {
                    sent?;
                    unflushed = false;
                }
            }
            read = reader.read_into(buf), if reading => match read {
                Ok(0) => return Err(End::Eof),
                Ok(n) => {
                    last_read = tokio::time::Instant::now();
                    shared.metrics.bytes_in.inc_by(n as u64);
                }
                Err(e) => return Err(End::Io(e)),
            },
            () = std::future::poll_fn(|cx| link.wake.poll_notified(cx)) => deliver = true,
        }
    }
}

/// Sends what the client is still owed after its connection ended (pending answers,
/// and the MQTT 5 DISCONNECT that says why the broker closes it), at most for
/// [`GOODBYE_WAIT`], and closes the socket.
pub(super) async fn close(writer: &mut Writer, mut out: BytesMut, version: Version, end: &End) {
    if matches!(end, End::Io(_)) {
        return;
    }
    if let End::Kicked(reason) = end {
        goodbye(version, *reason, &mut out);
    }
    let sent = async {
        writer.write_all(&out).await?;
        AsyncWriteExt::shutdown(writer).await
    };
    let _ = tokio::time::timeout(GOODBYE_WAIT, sent).await;
}

/// Writes some of `out`, or flushes the writer when `out` is empty. Cancel-safe, as
/// both are.
async fn send_some(writer: &mut Writer, out: &[u8]) -> std::io::Result<usize> {
    if out.is_empty() {
        writer.flush().await.map(|()| 0)
    } else {
        writer.write(out).await
    }
}

/// Accounts for bytes the writer took: they leave the buffer and count as sent.
fn wrote(
    written: std::io::Result<usize>,
    out: &mut BytesMut,
    shared: &Shared,
    buffered: bool,
    unflushed: &mut bool,
) -> Result<(), End> {
    let n = written?;
    if n == 0 {
        return Err(End::Io(std::io::ErrorKind::WriteZero.into()));
    }
    out.advance(n);
    shared.metrics.bytes_out.inc_by(n as u64);
    *unflushed |= buffered;
    Ok(())
}

/// Encodes one delivery into `out`. A PUBLISH larger than the client's Maximum Packet
/// Size is left out and its in-flight slot freed [MQTT-3.1.2-25]: then `false`.
fn encode(
    item: Outgoing,
    version: Version,
    max_packet: usize,
    shared: &Shared,
    client_id: &str,
    out: &mut BytesMut,
) -> bool {
    let packet = match item {
        Outgoing::Publish {
            delivery,
            pkid,
            dup,
        } => {
            let m = &delivery.msg;
            let mut props = m.properties.as_deref().cloned();
            // [MQTT-3.3.2-6]: the expiry interval sent is what is left of it.
            if let (Some(p), Some(at)) = (props.as_mut(), m.expires_at) {
                let left = at.saturating_duration_since(Instant::now());
                p.message_expiry_interval = Some(left.as_secs_f64().ceil().max(1.0) as u32);
            }
            // [MQTT-3.3.4-3]: the identifiers of every matching subscription.
            if !delivery.sub_ids.is_empty() {
                props
                    .get_or_insert_with(PublishProperties::default)
                    .subscription_identifiers =
                    delivery.sub_ids.iter().map(|&i| i as usize).collect();
            }
            let before = out.len();
            let written = codec::write_publish(
                version,
                &m.topic,
                &m.payload,
                (delivery.qos, pkid),
                (delivery.retain, dup),
                props,
                out,
            );
            if written.is_ok() && out.len() - before > max_packet {
                // [MQTT-3.1.2-25]: dropped for this client as if sent.
                out.truncate(before);
                shared.metrics.dropped_too_large.inc();
                if pkid != 0 {
                    shared.router().drop_inflight(client_id, pkid);
                }
                return false;
            }
            shared.metrics.messages_out.inc();
            if written.is_err() {
                tracing::warn!(client_id = %client_id, "could not encode a packet");
            }
            return true;
        }
        Outgoing::PubRel(pkid) => Packet::PubRel(
            PubRel {
                pkid,
                reason: PubRelReason::Success,
            },
            None,
        ),
    };
    if codec::write(version, packet, out).is_err() {
        tracing::warn!(client_id = %client_id, "could not encode a packet");
    }
    true
}

/// MQTT 5: the DISCONNECT saying why the broker closes the connection, after what is
/// pending. It is the reason code alone (remaining length 1, the property length
/// omitted as [MQTT-3.14.2.2.1] allows). MQTT 3.1.1 has no server DISCONNECT.
fn goodbye(version: Version, reason: CloseReason, out: &mut BytesMut) {
    if version == Version::V5 {
        let code = match reason {
            CloseReason::SessionTakenOver => 0x8E,
            CloseReason::CredentialsChanged => 0x87,
            CloseReason::ListenerRemoved | CloseReason::ServerShuttingDown => 0x8B,
        };
        out.extend_from_slice(&[0xE0, 0x01, code]);
    }
}
