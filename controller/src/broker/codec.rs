//! MQTT framing on rumqttd's protocol codecs (`rumqttd::protocol::{v4, v5}`).
//!
//! rumqttd keeps a PUBLISH's QoS, packet id and DUP flag crate-private. This module is
//! the one place that works around it: incoming PUBLISH flags and packet ids are read
//! from the raw frame before decoding, and outgoing PUBLISH packets are built through
//! rumqttd's public storage format (`Publish::deserialize`).

use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::protocol::{self, Packet, Protocol, Publish, PublishProperties, QoS};

/// MQTT protocol version of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// More bytes are needed.
    #[error("incomplete frame")]
    Incomplete,
    /// The packet is larger than allowed.
    #[error("packet of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The bytes are not valid MQTT.
    #[error("malformed packet: {0}")]
    Malformed(protocol::Error),
    /// The protocol level is not 4 or 5.
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
}

/// A decoded incoming packet. PUBLISH carries what rumqttd hides.
#[derive(Debug)]
pub enum Incoming {
    /// A PUBLISH with its QoS, packet id and DUP flag.
    Publish {
        /// The decoded PUBLISH (topic, payload, retain).
        publish: Publish,
        /// MQTT 5 properties.
        properties: Option<PublishProperties>,
        /// QoS from the fixed header.
        qos: u8,
        /// Packet id (0 for QoS 0).
        pkid: u16,
    },
    /// Any other packet.
    Other(Packet),
}

/// Reads the protocol level of a complete CONNECT frame at the start of `buf`.
/// Returns `Ok(None)` when more bytes are needed.
pub fn peek_connect_version(buf: &[u8], max_size: usize) -> Result<Option<Version>, FrameError> {
    let header = match protocol::v4::check(buf.iter(), max_size) {
        Ok(h) => h,
        Err(protocol::Error::InsufficientBytes(_)) => return Ok(None),
        Err(protocol::Error::PayloadSizeLimitExceeded(n)) => return Err(FrameError::TooLarge(n)),
        Err(e) => return Err(FrameError::Malformed(e)),
    };
    if header.byte1 >> 4 != 1 {
        return Err(FrameError::Malformed(protocol::Error::InvalidPacketType(
            header.byte1 >> 4,
        )));
    }
    // Variable header: protocol name (u16 length + bytes), then the level.
    let start = header.fixed_header_len;
    let name_len = buf
        .get(start..start + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        .ok_or(FrameError::Malformed(protocol::Error::MalformedPacket))?;
    let level = *buf
        .get(start + 2 + name_len)
        .ok_or(FrameError::Malformed(protocol::Error::MalformedPacket))?;
    match level {
        4 => Ok(Some(Version::V4)),
        5 => Ok(Some(Version::V5)),
        other => Err(FrameError::UnsupportedVersion(other)),
    }
}

/// Decodes one packet from the front of `buf`, if a whole frame is there.
pub fn read(version: Version, buf: &mut BytesMut, max_size: usize) -> Result<Incoming, FrameError> {
    // The fixed header is the same in MQTT 3.1.1 and 5 (rumqttd's v5 header keeps
    // its fields private, so the v4 parser reads both).
    let header = protocol::v4::check(buf.iter(), max_size)
        .map(|h| (h.byte1, h.fixed_header_len, h.frame_length()));
    let (byte1, fixed_header_len, frame_length) = match header {
        Ok(h) => h,
        Err(protocol::Error::InsufficientBytes(_)) => return Err(FrameError::Incomplete),
        Err(protocol::Error::PayloadSizeLimitExceeded(n)) => return Err(FrameError::TooLarge(n)),
        Err(e) => return Err(FrameError::Malformed(e)),
    };
    // rumqttd's MQTT 5 reader has no CONNACK or UNSUBACK decoder (it panics on them);
    // neither is valid where `read` is used (a broker reading a client, a bridge after
    // its CONNACK), so they are refused here.
    if version == Version::V5 && matches!(byte1 >> 4, 2 | 11) {
        return Err(FrameError::Malformed(protocol::Error::InvalidPacketType(
            byte1 >> 4,
        )));
    }
    let is_publish = byte1 >> 4 == 3;
    let (qos, pkid) = if is_publish {
        let qos = (byte1 >> 1) & 0b11;
        if qos == 3 {
            return Err(FrameError::Malformed(protocol::Error::InvalidQoS(3)));
        }
        let start = fixed_header_len;
        let topic_len = buf
            .get(start..start + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
            .ok_or(FrameError::Malformed(protocol::Error::MalformedPacket))?;
        let pkid = if qos > 0 {
            let at = start + 2 + topic_len;
            if at + 2 > frame_length {
                return Err(FrameError::Malformed(protocol::Error::MalformedPacket));
            }
            u16::from_be_bytes([buf[at], buf[at + 1]])
        } else {
            0
        };
        (qos, pkid)
    } else {
        (0, 0)
    };
    let packet = match version {
        Version::V4 => protocol::v4::V4.read_mut(buf, max_size),
        Version::V5 => protocol::v5::V5.read_mut(buf, max_size),
    }
    .map_err(FrameError::Malformed)?;
    Ok(match packet {
        Packet::Publish(publish, properties) => {
            if qos > 0 && pkid == 0 {
                return Err(FrameError::Malformed(protocol::Error::PacketIdZero));
            }
            Incoming::Publish {
                publish,
                properties,
                qos,
                pkid,
            }
        }
        other => Incoming::Other(other),
    })
}

/// A CONNACK as a client reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnAck {
    /// The server kept a session for this client.
    pub session_present: bool,
    /// Return code (3.1.1) or reason code (5); 0 is success.
    pub code: u8,
    /// MQTT 5 Receive Maximum: how many QoS > 0 publishes may be in flight.
    pub receive_maximum: Option<u16>,
}

/// Decodes a CONNACK from the front of `buf` (rumqttd has no MQTT 5 CONNACK reader).
pub fn read_connack(version: Version, buf: &mut BytesMut) -> Result<ConnAck, FrameError> {
    let header = match protocol::v4::check(buf.iter(), 65_536) {
        Ok(h) => h,
        Err(protocol::Error::InsufficientBytes(_)) => return Err(FrameError::Incomplete),
        Err(e) => return Err(FrameError::Malformed(e)),
    };
    if header.byte1 >> 4 != 2 {
        return Err(FrameError::Malformed(protocol::Error::InvalidPacketType(
            header.byte1 >> 4,
        )));
    }
    let frame = buf.split_to(header.frame_length());
    let body = &frame[header.fixed_header_len..];
    if body.len() < 2 {
        return Err(FrameError::Malformed(protocol::Error::MalformedPacket));
    }
    let mut ack = ConnAck {
        session_present: body[0] & 1 == 1,
        code: body[1],
        receive_maximum: None,
    };
    if version == Version::V5 && body.len() > 2 {
        // Properties: variable-length total, then (id, value) pairs.
        let mut i = 2;
        let (mut len, mut shift) = (0usize, 0);
        while i < body.len() {
            let b = body[i];
            i += 1;
            len |= ((b & 0x7f) as usize) << shift;
            shift += 7;
            if b & 0x80 == 0 || shift > 21 {
                break;
            }
        }
        let end = (i + len).min(body.len());
        while i < end {
            let id = body[i];
            i += 1;
            let skip = match id {
                // Receive Maximum.
                0x21 if i + 2 <= end => {
                    ack.receive_maximum = Some(u16::from_be_bytes([body[i], body[i + 1]]));
                    2
                }
                // Byte properties.
                0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
                // Two-byte integers.
                0x13 | 0x22 => 2,
                // Four-byte integers.
                0x11 | 0x27 => 4,
                // Strings and binary data.
                0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F if i + 2 <= end => {
                    2 + u16::from_be_bytes([body[i], body[i + 1]]) as usize
                }
                // User property: two strings.
                0x26 if i + 2 <= end => {
                    let a = u16::from_be_bytes([body[i], body[i + 1]]) as usize;
                    let j = i + 2 + a;
                    if j + 2 > end {
                        break;
                    }
                    2 + a + 2 + u16::from_be_bytes([body[j], body[j + 1]]) as usize
                }
                _ => break,
            };
            i += skip;
        }
    }
    Ok(ack)
}

/// Encodes a packet. Properties are dropped for MQTT 3.1.1.
pub fn write(
    version: Version,
    packet: Packet,
    out: &mut BytesMut,
) -> Result<usize, protocol::Error> {
    match version {
        Version::V4 => protocol::v4::V4.write(strip_properties(packet), out),
        Version::V5 => protocol::v5::V5.write(packet, out),
    }
}

fn strip_properties(packet: Packet) -> Packet {
    match packet {
        Packet::ConnAck(p, _) => Packet::ConnAck(p, None),
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(p, _) => Packet::PubAck(p, None),
        Packet::PubRec(p, _) => Packet::PubRec(p, None),
        Packet::PubRel(p, _) => Packet::PubRel(p, None),
        Packet::PubComp(p, _) => Packet::PubComp(p, None),
        Packet::SubAck(p, _) => Packet::SubAck(p, None),
        Packet::UnsubAck(p, _) => Packet::UnsubAck(p, None),
        Packet::Disconnect(p, _) => Packet::Disconnect(p, None),
        other => other,
    }
}

/// Builds an outgoing PUBLISH with the given QoS, packet id and flags, through
/// rumqttd's public storage format.
pub fn build_publish(
    topic: &Bytes,
    payload: &Bytes,
    qos: u8,
    pkid: u16,
    retain: bool,
    dup: bool,
) -> Publish {
    let mut o = BytesMut::with_capacity(5 + topic.len() + payload.len());
    o.put_u8(0b0011_0000 | retain as u8 | (qos << 1) | ((dup as u8) << 3));
    o.put_u16(pkid);
    o.put_u16(topic.len() as u16);
    o.extend_from_slice(topic);
    o.extend_from_slice(payload);
    Publish::deserialize(o.freeze())
}

/// QoS as a number.
pub fn qos_num(q: QoS) -> u8 {
    q as u8
}

/// QoS from a number (0..=2).
pub fn qos_of(n: u8) -> QoS {
    protocol::qos(n).unwrap_or(QoS::AtMostOnce)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_publish_round_trips_qos_pkid_and_flags() {
        let p = build_publish(
            &Bytes::from_static(b"a/b"),
            &Bytes::from_static(b"hi"),
            2,
            7,
            true,
            true,
        );
        let mut out = BytesMut::new();
        write(Version::V4, Packet::Publish(p, None), &mut out).unwrap();
        match read(Version::V4, &mut out, 1024).unwrap() {
            Incoming::Publish {
                publish, qos, pkid, ..
            } => {
                assert_eq!((qos, pkid), (2, 7));
                assert!(publish.retain);
                assert_eq!(&publish.topic[..], b"a/b");
                assert_eq!(&publish.payload[..], b"hi");
            }
            other => panic!("expected a publish, got {other:?}"),
        }
    }

    #[test]
    fn connect_version_is_read_from_the_protocol_level() {
        // CONNECT, MQTT 3.1.1, clean session, keepalive 60, client id "c".
        let frame = [
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'c',
        ];
        assert_eq!(
            peek_connect_version(&frame, 1024).unwrap(),
            Some(Version::V4)
        );
        assert_eq!(peek_connect_version(&frame[..5], 1024).unwrap(), None);
    }
}
