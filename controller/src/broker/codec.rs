//! MQTT framing on rumqttd's protocol codecs (`rumqttd::protocol::{v4, v5}`).
//!
//! rumqttd keeps a PUBLISH's QoS, packet id and DUP flag crate-private. This module is
//! the one place that works around it: incoming PUBLISH flags and packet ids are read
//! from the raw frame before decoding, and outgoing PUBLISH packets are built through
//! rumqttd's public storage format (`Publish::deserialize`).

use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::protocol::{self, Packet, Protocol, Publish, PublishProperties, QoS};

mod outgoing;
pub use outgoing::write_publish;

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
    /// A known protocol name with a level this broker does not speak (the byte as
    /// sent, bridge bit included).
    #[error("unsupported protocol level {0:#04x}")]
    UnsupportedVersion(u8),
    /// A client's packet broke a rule of the specification.
    #[error(transparent)]
    Violation(#[from] super::check::Violation),
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

/// What a CONNECT's variable header says about the protocol: the version its packets
/// use, the protocol level as sent (3 is MQTT 3.1, `MQIsdp`) and Mosquitto's bridge
/// bit (0x80 on the level, set by bridges with `try_private`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectHead {
    /// Packet format after CONNECT (MQTT 3.1 uses 3.1.1's).
    pub version: Version,
    /// Protocol level without the bridge bit: 3, 4 or 5.
    pub level: u8,
    /// The client is a bridge (level 3 or 4 with bit 0x80).
    pub bridge: bool,
}

/// A decoded CONNECT.
#[derive(Debug)]
pub struct ConnectPacket {
    /// Protocol version, level and bridge bit.
    pub head: ConnectHead,
    /// Client id, keep alive, clean session / clean start.
    pub connect: protocol::Connect,
    /// MQTT 5 properties.
    pub properties: Option<protocol::ConnectProperties>,
    /// Will message.
    pub will: Option<protocol::LastWill>,
    /// MQTT 5 will properties.
    pub will_properties: Option<protocol::LastWillProperties>,
    /// User name, when the user name flag is set.
    pub username: Option<String>,
    /// Password (binary data), when the password flag is set.
    pub password: Option<Bytes>,
}

/// Reads the protocol head of a complete CONNECT frame at the start of `buf`.
/// Returns `Ok(None)` when more bytes are needed. An unknown protocol name is
/// malformed (closed without CONNACK, as MQTT 3.1.1 allows); a known name with a
/// level this broker does not speak is [`FrameError::UnsupportedVersion`].
pub fn peek_connect(buf: &[u8], max_size: usize) -> Result<Option<ConnectHead>, FrameError> {
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
    let end = header.frame_length();
    // Variable header: protocol name (u16 length + bytes), then the level.
    let start = header.fixed_header_len;
    let name_len = buf
        .get(start..start + 2)
        .filter(|_| start + 2 <= end)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        .ok_or(FrameError::Malformed(protocol::Error::MalformedPacket))?;
    let name = buf
        .get(start + 2..start + 2 + name_len)
        .filter(|_| start + 2 + name_len < end)
        .ok_or(FrameError::Malformed(protocol::Error::MalformedPacket))?;
    let raw = buf[start + 2 + name_len];
    let (level, bridge) = (raw & 0x7f, raw & 0x80 != 0);
    let head = |version| ConnectHead {
        version,
        level,
        bridge,
    };
    match (name, level, bridge) {
        (b"MQIsdp", 3, _) => Ok(Some(head(Version::V4))),
        (b"MQTT", 4, _) => Ok(Some(head(Version::V4))),
        (b"MQTT", 5, false) => Ok(Some(head(Version::V5))),
        (b"MQIsdp" | b"MQTT", _, _) => Err(FrameError::UnsupportedVersion(raw)),
        _ => Err(FrameError::Malformed(protocol::Error::InvalidProtocol)),
    }
}

/// The CONNACK refusing an unsupported protocol level `raw` (as sent, bridge bit
/// included): 3.1.1's format and return code 1 (`20 02 00 01`), as Mosquitto 2.0
/// answers and every 3.1.1 client can parse, also for levels above 5 (an MQTT 5
/// client reads it as a CONNACK with reason 0x01 and gives up too). Only MQTT 5 with
/// the bridge bit, which no client sends but a client speaking MQTT 5 could, gets
/// MQTT 5's format and reason 0x84 (Mosquitto closes without a CONNACK there).
pub fn unsupported_version_connack(raw: u8) -> &'static [u8] {
    if raw & 0x7f == 5 {
        &[0x20, 3, 0, 0x84, 0]
    } else {
        &[0x20, 2, 0, 1]
    }
}

/// Reads a complete CONNECT from the front of `buf` (check [`peek_connect`] first).
/// MQTT 3.1 and 3.1.1 are decoded here (rumqttd knows neither `MQIsdp` nor the
/// bridge bit), MQTT 5 by rumqttd.
pub fn read_connect(
    head: ConnectHead,
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<ConnectPacket, FrameError> {
    if head.version == Version::V5 {
        let header = protocol::v4::check(buf.iter(), max_size).map_err(FrameError::Malformed)?;
        super::check::check_connect_v5(
            header.byte1,
            &buf[header.fixed_header_len..header.frame_length()],
        )?;
        return match protocol::v5::V5.read_mut(buf, max_size) {
            Ok(Packet::Connect(connect, properties, will, will_properties, login)) => {
                let (username, password) = match login {
                    Some(l) => (
                        (!l.username.is_empty()).then_some(l.username),
                        (!l.password.is_empty()).then(|| Bytes::from(l.password)),
                    ),
                    None => (None, None),
                };
                Ok(ConnectPacket {
                    head,
                    connect,
                    properties,
                    will,
                    will_properties,
                    username,
                    password,
                })
            }
            Ok(_) => Err(FrameError::Malformed(protocol::Error::InvalidPacketType(1))),
            Err(e) => Err(FrameError::Malformed(e)),
        };
    }
    let header = protocol::v4::check(buf.iter(), max_size).map_err(FrameError::Malformed)?;
    let frame = buf.split_to(header.frame_length()).freeze();
    decode_connect_v4(head, header.byte1, frame.slice(header.fixed_header_len..))
        .map_err(FrameError::Malformed)
}

fn decode_connect_v4(
    head: ConnectHead,
    byte1: u8,
    mut body: Bytes,
) -> Result<ConnectPacket, protocol::Error> {
    use bytes::Buf;
    use protocol::Error::{IncorrectPacketFormat, MalformedPacket};
    fn take(body: &mut Bytes, n: usize) -> Result<Bytes, protocol::Error> {
        if body.len() < n {
            return Err(MalformedPacket);
        }
        Ok(body.split_to(n))
    }
    fn field(body: &mut Bytes) -> Result<Bytes, protocol::Error> {
        let n = take(body, 2)?.get_u16() as usize;
        take(body, n)
    }
    // Client id and user name: UTF-8 without U+0000, control characters or
    // non-characters (closed as Mosquitto 2.0 does).
    fn text(body: &mut Bytes) -> Result<String, protocol::Error> {
        let b = field(body)?;
        let s = std::str::from_utf8(&b).map_err(|_| MalformedPacket)?;
        if s.contains('\0') || super::check::refused_in_connect(s) {
            return Err(MalformedPacket);
        }
        Ok(s.to_owned())
    }
    // [MQTT-2.2.2-2]: CONNECT's fixed-header flags are reserved (0).
    if byte1 != 0x10 {
        return Err(IncorrectPacketFormat);
    }
    let _name = field(&mut body)?;
    let _level = take(&mut body, 1)?;
    let flags = take(&mut body, 1)?[0];
    let keep_alive = take(&mut body, 2)?.get_u16();
    // [MQTT-3.1.2-3]: the reserved connect flag is 0.
    if flags & 0x01 != 0 {
        return Err(IncorrectPacketFormat);
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    // [MQTT-3.1.2-11], [MQTT-3.1.2-13], [MQTT-3.1.2-15]: no will, no will QoS or retain;
    // [MQTT-3.1.2-14]: will QoS 3 is malformed.
    if (!will_flag && (will_qos != 0 || will_retain)) || will_qos == 3 {
        return Err(IncorrectPacketFormat);
    }
    let (user_flag, pass_flag) = (flags & 0x80 != 0, flags & 0x40 != 0);
    // [MQTT-3.1.2-22]: a password needs a user name.
    if pass_flag && !user_flag {
        return Err(IncorrectPacketFormat);
    }
    let client_id = text(&mut body)?;
    let will = if will_flag {
        let topic = field(&mut body)?;
        let valid = std::str::from_utf8(&topic).is_ok_and(|t| {
            !t.contains('\0')
                && !super::check::refused_in_connect(t)
                && crate::auth::acl::valid_topic_name(t)
        });
        if !valid {
            return Err(MalformedPacket);
        }
        let message = field(&mut body)?;
        Some(protocol::LastWill {
            topic,
            message,
            qos: qos_of(will_qos),
            retain: will_retain,
        })
    } else {
        None
    };
    let username = if user_flag {
        Some(text(&mut body)?)
    } else {
        None
    };
    let password = if pass_flag {
        Some(field(&mut body)?)
    } else {
        None
    };
    if !body.is_empty() {
        return Err(MalformedPacket);
    }
    Ok(ConnectPacket {
        head,
        connect: protocol::Connect {
            keep_alive,
            client_id,
            clean_session: flags & 0x02 != 0,
        },
        properties: None,
        will,
        will_properties: None,
        username,
        password,
    })
}

/// Decodes one packet a client sent after its CONNECT, checked against the
/// specification's rules first ([`super::check`]).
pub fn read_client(
    version: Version,
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<Incoming, FrameError> {
    let header = fixed_header(buf, max_size)?;
    let (byte1, fixed_header_len, frame_length) = header;
    super::check::check(
        version == Version::V5,
        byte1,
        &buf[fixed_header_len..frame_length],
    )?;
    read_frame(version, buf, max_size, header)
}

/// Decodes one packet from the front of `buf`, if a whole frame is there.
pub fn read(version: Version, buf: &mut BytesMut, max_size: usize) -> Result<Incoming, FrameError> {
    let header = fixed_header(buf, max_size)?;
    read_frame(version, buf, max_size, header)
}

/// The fixed header at the front of `buf`: its first byte, its length and the whole
/// frame's length, once the whole frame is there. It is the same in MQTT 3.1.1 and 5
/// (rumqttd's v5 header keeps its fields private, so the v4 parser reads both).
fn fixed_header(buf: &BytesMut, max_size: usize) -> Result<(u8, usize, usize), FrameError> {
    match protocol::v4::check(buf.iter(), max_size) {
        Ok(h) => Ok((h.byte1, h.fixed_header_len, h.frame_length())),
        Err(protocol::Error::InsufficientBytes(_)) => Err(FrameError::Incomplete),
        Err(protocol::Error::PayloadSizeLimitExceeded(n)) => Err(FrameError::TooLarge(n)),
        Err(e) => Err(FrameError::Malformed(e)),
    }
}

/// Decodes the frame whose [`fixed_header`] was read.
fn read_frame(
    version: Version,
    buf: &mut BytesMut,
    max_size: usize,
    (byte1, fixed_header_len, frame_length): (u8, usize, usize),
) -> Result<Incoming, FrameError> {
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
    // rumqttd's MQTT 5 reader wants a property length after a DISCONNECT's reason
    // code, which MQTT 5 lets a sender omit (§3.14.2.2.1) and Mosquitto and its
    // clients do omit (`E0 01 rc`): such a frame is read with the empty length added.
    if version == Version::V5 && byte1 == 0xE0 && frame_length == fixed_header_len + 1 {
        let frame = buf.split_to(frame_length);
        let mut full = BytesMut::from(&[0xE0, 2, frame[fixed_header_len], 0][..]);
        return protocol::v5::V5
            .read_mut(&mut full, max_size)
            .map(Incoming::Other)
            .map_err(FrameError::Malformed);
    }
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
        Version::V5 => {
            // The bytes written, counted here: rumqttd's count for a DISCONNECT with
            // a reason code is off too.
            let start = out.len();
            protocol::v5::V5.write(packet, out)?;
            shorten_v5_reason_only(out, start);
            Ok(out.len() - start)
        }
    }
}

/// Rewrites an MQTT 5 DISCONNECT, PUBACK, PUBREC, PUBREL or PUBCOMP that rumqttd
/// wrote at `out[start..]` with a reason code and no properties into the short form
/// Mosquitto sends (MQTT 5 §3.14.2.2.1, §3.4.2.2.1: the property length may be
/// omitted when nothing follows the reason code). For DISCONNECT this is a fix, not
/// a style: rumqttd 0.20 writes `E0 01 rc 00`, a remaining length of 1 followed by
/// 2 bytes, so a client reading the stream meets a stray byte.
fn shorten_v5_reason_only(out: &mut BytesMut, start: usize) {
    let frame = &out[start..];
    match frame {
        // DISCONNECT: remaining length 1, reason code, then the stray 0.
        [0xE0, 1, _, 0] => out.truncate(start + 3),
        // Acks: packet id, reason code, empty property length.
        [0x40 | 0x50 | 0x62 | 0x70, 4, _, _, _, 0] => {
            out[start + 1] = 3;
            out.truncate(start + 5);
        }
        _ => {}
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
        let head = peek_connect(&frame, 1024).unwrap().unwrap();
        assert_eq!(
            (head.version, head.level, head.bridge),
            (Version::V4, 4, false)
        );
        assert_eq!(peek_connect(&frame[..5], 1024).unwrap(), None);
    }

    fn connect_frame(name: &[u8], level: u8, flags: u8, payload: &[u8]) -> BytesMut {
        let mut body = vec![0, name.len() as u8];
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, flags, 0, 60]);
        body.extend_from_slice(payload);
        let mut f = BytesMut::from(&[0x10, body.len() as u8][..]);
        f.extend_from_slice(&body);
        f
    }

    #[test]
    fn mqtt31_and_the_bridge_bit_are_read_and_other_levels_are_unsupported() {
        let ok = [
            (&b"MQIsdp"[..], 3, 3, false),
            (b"MQIsdp", 0x83, 3, true),
            (b"MQTT", 0x84, 4, true),
            (b"MQTT", 5, 5, false),
        ];
        for (name, raw, level, bridge) in ok {
            let f = connect_frame(name, raw, 2, b"\0\x01c");
            let head = peek_connect(&f, 1024).unwrap().unwrap();
            assert_eq!((head.level, head.bridge), (level, bridge), "{raw:#x}");
        }
        for (name, raw) in [
            (&b"MQTT"[..], 3),
            (b"MQTT", 6),
            (b"MQIsdp", 4),
            (b"MQTT", 0x85),
        ] {
            let f = connect_frame(name, raw, 2, b"\0\x01c");
            assert!(
                matches!(peek_connect(&f, 1024), Err(FrameError::UnsupportedVersion(r)) if r == raw),
                "{raw:#x}"
            );
        }
        assert_eq!(unsupported_version_connack(3), &[0x20, 2, 0, 1]);
        assert_eq!(unsupported_version_connack(6), &[0x20, 2, 0, 1]);
        assert_eq!(unsupported_version_connack(0xff), &[0x20, 2, 0, 1]);
        assert_eq!(unsupported_version_connack(0x85), &[0x20, 3, 0, 0x84, 0]);
        let f = connect_frame(b"MQTX", 4, 2, b"\0\x01c");
        assert!(matches!(
            peek_connect(&f, 1024),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn mqtt5_reason_only_packets_are_framed_as_mosquitto_frames_them() {
        use protocol::{
            Disconnect, DisconnectReasonCode, PubAck, PubAckReason, PubComp, PubCompReason, PubRel,
            PubRelReason,
        };
        let cases: Vec<(Packet, &[u8])> = vec![
            (
                Packet::Disconnect(
                    Disconnect {
                        reason_code: DisconnectReasonCode::MalformedPacket,
                    },
                    None,
                ),
                &[0xE0, 1, 0x81],
            ),
            (
                Packet::Disconnect(
                    Disconnect {
                        reason_code: DisconnectReasonCode::NormalDisconnection,
                    },
                    None,
                ),
                &[0xE0, 0],
            ),
            (
                Packet::PubRel(
                    PubRel {
                        pkid: 7,
                        reason: PubRelReason::PacketIdentifierNotFound,
                    },
                    None,
                ),
                &[0x62, 3, 0, 7, 0x92],
            ),
            (
                Packet::PubComp(
                    PubComp {
                        pkid: 7,
                        reason: PubCompReason::PacketIdentifierNotFound,
                    },
                    None,
                ),
                &[0x70, 3, 0, 7, 0x92],
            ),
            (
                Packet::PubAck(
                    PubAck {
                        pkid: 258,
                        reason: PubAckReason::NotAuthorized,
                    },
                    None,
                ),
                &[0x40, 3, 1, 2, 0x87],
            ),
            (
                Packet::PubAck(
                    PubAck {
                        pkid: 1,
                        reason: PubAckReason::Success,
                    },
                    None,
                ),
                &[0x40, 2, 0, 1],
            ),
        ];
        for (packet, want) in cases {
            // After other bytes in the buffer, as the writer batches packets.
            let mut out = BytesMut::from(&b"xy"[..]);
            let n = write(Version::V5, packet, &mut out).unwrap();
            assert_eq!(&out[2..], want);
            assert_eq!(n, want.len());
            // edgemq's reader reads back what was written.
            let mut back = out.split_off(2);
            assert!(read(Version::V5, &mut back, 1024).is_ok(), "{want:x?}");
            assert!(back.is_empty());
        }
    }

    #[test]
    fn connect_strings_with_control_characters_or_non_characters_are_malformed() {
        for bad in [
            "a\u{1}b",
            "a\u{1f}",
            "\u{7f}",
            "a\u{85}",
            "\u{9f}",
            "\u{fdd0}",
            "\u{fffe}",
            "\u{1ffff}",
        ] {
            // As client id, as user name, as will topic.
            let id = [&[0, bad.len() as u8][..], bad.as_bytes()].concat();
            let mut f = connect_frame(b"MQTT", 4, 2, &id);
            let head = peek_connect(&f, 1024).unwrap().unwrap();
            assert!(
                read_connect(head, &mut f, 1024).is_err(),
                "client id {bad:?}"
            );
            let user = [&b"\0\x01c"[..], &[0, bad.len() as u8], bad.as_bytes()].concat();
            let mut f = connect_frame(b"MQTT", 4, 0x82, &user);
            assert!(
                read_connect(head, &mut f, 1024).is_err(),
                "user name {bad:?}"
            );
            let will = [
                &b"\0\x01c"[..],
                &[0, bad.len() as u8],
                bad.as_bytes(),
                b"\0\x01m",
            ]
            .concat();
            let mut f = connect_frame(b"MQTT", 4, 0x06, &will);
            assert!(
                read_connect(head, &mut f, 1024).is_err(),
                "will topic {bad:?}"
            );
        }
        // U+00A0 and other printable characters stay allowed.
        let id = "a\u{a0}\u{e9}\u{1f600}".as_bytes();
        let mut f = connect_frame(b"MQTT", 4, 2, &[&[0, id.len() as u8][..], id].concat());
        let head = peek_connect(&f, 1024).unwrap().unwrap();
        assert!(read_connect(head, &mut f, 1024).is_ok());
    }

    #[test]
    fn an_mqtt31_connect_decodes_with_will_and_credentials() {
        // will flag, will QoS 1, user name and password.
        let mut payload = b"\0\x03abc\0\x03w/t\0\x02hi\0\x01u".to_vec();
        payload.extend_from_slice(b"\0\x02\xff\x00");
        let mut f = connect_frame(b"MQIsdp", 0x83, 0b1100_1110, &payload);
        let head = peek_connect(&f, 1024).unwrap().unwrap();
        let c = read_connect(head, &mut f, 1024).unwrap();
        assert_eq!(c.connect.client_id, "abc");
        assert!(c.connect.clean_session);
        let will = c.will.unwrap();
        assert_eq!(
            (&will.topic[..], &will.message[..]),
            (&b"w/t"[..], &b"hi"[..])
        );
        assert_eq!(qos_num(will.qos), 1);
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password.as_deref(), Some(&b"\xff\x00"[..]));
        assert!(f.is_empty());
    }
}
