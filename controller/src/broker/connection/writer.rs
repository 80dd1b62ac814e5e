//! The writer of a connection: the reader's answers (acks, PINGRESP, DISCONNECT) and
//! the router's deliveries, batched into few writes, and the goodbye when the broker
//! closes the connection.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rumqttd::protocol::{Packet, PubRel, PubRelReason, PublishProperties};
use tokio::sync::mpsc;

use super::super::codec::{self, Version};
use super::super::transport::Writer;
use super::super::types::{CloseReason, ConnLink, Outgoing};
use super::super::Shared;

/// Largest batch of deliveries encoded per write.
const WRITE_BATCH: usize = 64;

pub(super) async fn write_loop(
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
                encode(item, version, max_packet, &shared, &client_id, &mut out);
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

/// Encodes one delivery into `out`. A PUBLISH larger than the client's Maximum Packet
/// Size is left out and its in-flight slot freed [MQTT-3.1.2-25].
fn encode(
    item: Outgoing,
    version: Version,
    max_packet: usize,
    shared: &Shared,
    client_id: &str,
    out: &mut BytesMut,
) {
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
            let written = codec::write(version, Packet::Publish(p, props), out);
            if written.is_ok() && out.len() - before > max_packet {
                // [MQTT-3.1.2-25]: dropped for this client as if sent.
                out.truncate(before);
                shared.metrics.dropped_too_large.inc();
                if pkid != 0 {
                    shared.router().drop_inflight(client_id, pkid);
                }
                return;
            }
            shared.metrics.messages_out.inc();
            if written.is_err() {
                tracing::warn!(client_id = %client_id, "could not encode a packet");
            }
            return;
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
