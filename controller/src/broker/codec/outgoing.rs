//! Outgoing PUBLISH packets: written straight into the connection's buffer when they
//! carry no properties, through rumqttd's writer when they do.

use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::protocol::{self, Packet, PublishProperties};

use super::{build_publish, write, Version};

/// Writes an outgoing PUBLISH (`qos_pkid`: QoS and packet id; `retain_dup`: the
/// flags) with its properties. MQTT 3.1.1 has none; without any, the packet is
/// written straight from topic and payload ([`write_plain_publish`]), else through
/// rumqttd's writer.
pub fn write_publish(
    version: Version,
    topic: &Bytes,
    payload: &Bytes,
    (qos, pkid): (u8, u16),
    (retain, dup): (bool, bool),
    properties: Option<PublishProperties>,
    out: &mut BytesMut,
) -> Result<usize, protocol::Error> {
    if version == Version::V4 || properties.is_none() {
        write_plain_publish(version, topic, payload, qos, pkid, retain, dup, out)
    } else {
        let p = build_publish(topic, payload, qos, pkid, retain, dup);
        write(version, Packet::Publish(p, properties), out)
    }
}

/// Writes an outgoing PUBLISH without properties (any MQTT 3.1.1 PUBLISH; an MQTT 5
/// one with an empty property list) straight into `out`: the same bytes as
/// [`build_publish`] and [`write`] give, without building rumqttd's packet first
/// (which costs an allocation and a copy of topic and payload per delivery). Returns
/// the bytes written; an error, with nothing written, for QoS 1 or 2 with packet id 0
/// or a packet longer than MQTT allows, as rumqttd refuses them.
#[allow(clippy::too_many_arguments)]
fn write_plain_publish(
    version: Version,
    topic: &[u8],
    payload: &[u8],
    qos: u8,
    pkid: u16,
    retain: bool,
    dup: bool,
    out: &mut BytesMut,
) -> Result<usize, protocol::Error> {
    if qos > 0 && pkid == 0 {
        return Err(protocol::Error::PacketIdZero);
    }
    let remaining = 2
        + topic.len()
        + if qos > 0 { 2 } else { 0 }
        + usize::from(version == Version::V5)
        + payload.len();
    if topic.len() > usize::from(u16::MAX) {
        return Err(protocol::Error::PayloadTooLong);
    }
    // What precedes the topic and what follows it, each assembled on the stack and
    // copied in one piece into room reserved once: a few byte-sized writes into the
    // buffer, each checking its room, cost as much as the rest of the packet.
    let mut head = [0u8; 7];
    head[0] = 0b0011_0000 | u8::from(retain) | (qos << 1) | (u8::from(dup) << 3);
    let n = 1 + remaining_length(remaining, &mut head[1..5])?;
    head[n..n + 2].copy_from_slice(&(topic.len() as u16).to_be_bytes());
    let mut mid = [0u8; 3];
    let mut m = 0;
    if qos > 0 {
        mid[..2].copy_from_slice(&pkid.to_be_bytes());
        m = 2;
    }
    if version == Version::V5 {
        mid[m] = 0; // no properties
        m += 1;
    }
    out.reserve(n + remaining);
    out.put_slice(&head[..n + 2]);
    out.put_slice(topic);
    out.put_slice(&mid[..m]);
    out.put_slice(payload);
    Ok(n + remaining)
}

/// MQTT's Remaining Length (a variable byte integer of at most four bytes) written
/// into `to`; the number of bytes written, or rumqttd's error for a length MQTT
/// cannot state.
fn remaining_length(mut len: usize, to: &mut [u8]) -> Result<usize, protocol::Error> {
    if len > 268_435_455 {
        return Err(protocol::Error::PayloadTooLong);
    }
    let mut i = 0;
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        to[i] = if len > 0 { byte | 128 } else { byte };
        i += 1;
        if len == 0 {
            return Ok(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_publish_is_written_as_rumqttd_writes_it() {
        let payloads = [
            Vec::new(),
            b"hello".to_vec(),
            vec![7u8; 200],
            vec![1u8; 20_000],
        ];
        for version in [Version::V4, Version::V5] {
            for payload in &payloads {
                for (qos, pkid) in [(0, 0), (1, 1), (2, 65_535)] {
                    for (retain, dup) in [(false, false), (true, false), (false, true)] {
                        let (topic, payload) =
                            (Bytes::from_static(b"a/b/c"), Bytes::from(payload.clone()));
                        let mut expected = BytesMut::new();
                        let p = build_publish(&topic, &payload, qos, pkid, retain, dup);
                        let n = write(version, Packet::Publish(p, None), &mut expected).unwrap();
                        let mut got = BytesMut::from(&b"before"[..]);
                        let m = write_plain_publish(
                            version, &topic, &payload, qos, pkid, retain, dup, &mut got,
                        )
                        .unwrap();
                        assert_eq!(&got[..6], b"before");
                        assert_eq!(
                            &got[6..],
                            &expected[..],
                            "{version:?} QoS {qos} retain {retain} dup {dup} {} bytes",
                            payload.len()
                        );
                        assert_eq!((m, n), (expected.len(), expected.len()));
                    }
                }
            }
        }
        // QoS 1 without a packet id is refused, and nothing is written.
        let mut out = BytesMut::new();
        assert!(matches!(
            write_plain_publish(Version::V4, b"t", b"", 1, 0, false, false, &mut out),
            Err(protocol::Error::PacketIdZero)
        ));
        assert!(out.is_empty());
    }
}
