//! Strict checks of what a client sends, on the raw frame before rumqttd decodes it
//! (rumqttd accepts much that the specifications forbid). Each rule cites the MQTT
//! 3.1.1 or MQTT 5 conformance statement it enforces. A violation closes the
//! connection; an MQTT 5 client gets a DISCONNECT with [`Violation::reason_code`] first.

use crate::auth::acl::valid_topic_filter;

/// A rule a client's packet broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The bytes do not form the packet (MQTT 5 reason 0x81).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Well-formed, but not allowed here (MQTT 5 reason 0x82).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

impl Violation {
    /// The MQTT 5 DISCONNECT reason code.
    pub fn reason_code(self) -> u8 {
        match self {
            Violation::Malformed(_) => 0x81,
            Violation::Protocol(_) => 0x82,
        }
    }
}

use Violation::{Malformed, Protocol};

type Res<T> = Result<T, Violation>;

struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.i
    }
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        if self.left() < n {
            return Err(Malformed("a field runs past the end of the packet"));
        }
        let s = &self.b[self.i..self.i + n];
        self.i += n;
        Ok(s)
    }
    fn u8(&mut self) -> Res<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Res<u16> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Res<u32> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn varint(&mut self) -> Res<u32> {
        let mut v = 0u32;
        for shift in [0, 7, 14, 21] {
            let b = self.u8()?;
            v |= u32::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Malformed("variable byte integer longer than 4 bytes"))
    }
    fn binary(&mut self) -> Res<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    /// A UTF-8 string: well-formed (so no surrogates) and without U+0000
    /// ([MQTT-1.5.3-1], [MQTT-1.5.3-2]; MQTT 5 [MQTT-1.5.4-1], [MQTT-1.5.4-2]).
    fn string(&mut self) -> Res<&'a str> {
        let b = self.binary()?;
        let s = std::str::from_utf8(b).map_err(|_| Malformed("a string is not valid UTF-8"))?;
        if s.contains('\0') {
            return Err(Malformed("a string contains U+0000"));
        }
        Ok(s)
    }
    /// A CONNECT string (client id, will topic, user name): also without the code
    /// points [`refused_in_connect`] names.
    fn connect_string(&mut self) -> Res<&'a str> {
        let s = self.string()?;
        if refused_in_connect(s) {
            return Err(Malformed(
                "a CONNECT string holds a control character or a non-character",
            ));
        }
        Ok(s)
    }
    fn end(&self) -> Res<()> {
        if self.left() > 0 {
            return Err(Malformed("bytes left over at the end of the packet"));
        }
        Ok(())
    }
}

/// Property sets a client may send, per packet (MQTT 5 section 2.2.2.2).
mod allowed {
    pub const CONNECT: &[u8] = &[0x11, 0x21, 0x27, 0x22, 0x19, 0x17, 0x26, 0x15, 0x16];
    pub const WILL: &[u8] = &[0x18, 0x01, 0x02, 0x03, 0x08, 0x09, 0x26];
    // No 0x0B: a client's PUBLISH MUST NOT carry a subscription identifier [MQTT-3.3.4-6].
    pub const PUBLISH: &[u8] = &[0x01, 0x02, 0x23, 0x08, 0x09, 0x26, 0x03];
    pub const ACK: &[u8] = &[0x1F, 0x26];
    pub const SUBSCRIBE: &[u8] = &[0x0B, 0x26];
    pub const UNSUBSCRIBE: &[u8] = &[0x26];
    pub const DISCONNECT: &[u8] = &[0x11, 0x1F, 0x26, 0x1C];
}

/// MQTT 5 properties: an identifier not allowed on this packet or a value of the wrong
/// type is malformed; a repeated property (but User Property) or a forbidden value
/// (Receive Maximum 0, Maximum Packet Size 0, Subscription Identifier 0, a boolean
/// other than 0 or 1) is a protocol error.
fn properties(c: &mut Cur<'_>, allowed: &[u8]) -> Res<()> {
    let len = c.varint()? as usize;
    let mut p = Cur {
        b: c.take(len)?,
        i: 0,
    };
    let mut seen = [false; 0x30];
    while p.left() > 0 {
        let id = p.varint()?;
        let Ok(id) = u8::try_from(id) else {
            return Err(Malformed("unknown property identifier"));
        };
        if !allowed.contains(&id) {
            return Err(Malformed("property not allowed on this packet"));
        }
        if id != 0x26 {
            if seen[id as usize] {
                return Err(Protocol("property included twice"));
            }
            seen[id as usize] = true;
        }
        match id {
            0x01 | 0x17 | 0x19 => {
                if p.u8()? > 1 {
                    return Err(Protocol("a boolean property other than 0 or 1"));
                }
            }
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                p.u8()?;
            }
            0x21 => {
                if p.u16()? == 0 {
                    return Err(Protocol("Receive Maximum 0"));
                }
            }
            0x13 | 0x22 | 0x23 => {
                p.u16()?;
            }
            0x27 => {
                if p.u32()? == 0 {
                    return Err(Protocol("Maximum Packet Size 0"));
                }
            }
            0x02 | 0x11 | 0x18 => {
                p.u32()?;
            }
            0x0B => {
                if p.varint()? == 0 {
                    return Err(Protocol("Subscription Identifier 0"));
                }
            }
            0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => {
                p.string()?;
            }
            0x09 | 0x16 => {
                p.binary()?;
            }
            0x26 => {
                p.string()?;
                p.string()?;
            }
            _ => return Err(Malformed("unknown property identifier")),
        }
    }
    Ok(())
}

fn packet_id(c: &mut Cur<'_>) -> Res<u16> {
    match c.u16()? {
        // [MQTT-2.3.1-1]: packets that need one carry a non-zero packet identifier.
        0 => Err(Protocol("packet identifier 0")),
        id => Ok(id),
    }
}

/// Checks one complete packet from a client after CONNECT: `byte1` is its first byte,
/// `body` the bytes after the remaining length.
pub fn check(v5: bool, byte1: u8, body: &[u8]) -> Res<()> {
    let (kind, flags) = (byte1 >> 4, byte1 & 0x0f);
    let mut c = Cur { b: body, i: 0 };
    // [MQTT-2.2.2-1], [MQTT-2.2.2-2]: reserved fixed-header flags.
    let want_flags = match kind {
        3 => None,
        6 | 8 | 10 => Some(0b0010),
        _ => Some(0),
    };
    if want_flags.is_some_and(|f| f != flags) {
        return Err(Malformed(
            "reserved fixed-header flags are not as specified",
        ));
    }
    match kind {
        1 => return Err(Protocol("second CONNECT")),
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(Malformed("PUBLISH with QoS 3")); // [MQTT-3.3.1-4]
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(Malformed("QoS 0 PUBLISH with DUP set")); // [MQTT-3.3.1-2]
            }
            c.string()?;
            if qos > 0 {
                packet_id(&mut c)?;
            }
            if v5 {
                properties(&mut c, allowed::PUBLISH)?;
            }
            // The payload is the rest.
        }
        4..=7 => {
            packet_id(&mut c)?;
            if v5 {
                if c.left() > 0 {
                    c.u8()?;
                }
                if c.left() > 0 {
                    properties(&mut c, allowed::ACK)?;
                }
            }
            c.end()?;
        }
        8 => {
            packet_id(&mut c)?;
            if v5 {
                properties(&mut c, allowed::SUBSCRIBE)?;
            }
            if c.left() == 0 {
                return Err(Protocol("SUBSCRIBE without a topic filter")); // [MQTT-3.8.3-3]
            }
            while c.left() > 0 {
                filter(&mut c)?;
                let opts = c.u8()?;
                if opts & 0b11 == 3 {
                    return Err(Malformed("subscription QoS 3"));
                }
                if v5 {
                    if opts & 0xC0 != 0 {
                        return Err(Malformed("reserved subscription option bits set"));
                    }
                    if (opts >> 4) & 0b11 == 3 {
                        return Err(Protocol("retain handling 3"));
                    }
                } else if opts & 0xFC != 0 {
                    return Err(Malformed("reserved subscription option bits set"));
                    // [MQTT-3.8.3-4]
                }
            }
        }
        10 => {
            packet_id(&mut c)?;
            if v5 {
                properties(&mut c, allowed::UNSUBSCRIBE)?;
            }
            if c.left() == 0 {
                return Err(Protocol("UNSUBSCRIBE without a topic filter")); // [MQTT-3.10.3-2]
            }
            while c.left() > 0 {
                filter(&mut c)?;
            }
        }
        12 => c.end()?,
        14 => {
            if v5 {
                if c.left() > 0 {
                    c.u8()?;
                }
                if c.left() > 0 {
                    properties(&mut c, allowed::DISCONNECT)?;
                }
            }
            c.end()?;
        }
        15 if v5 => return Err(Protocol("AUTH without an authentication method")),
        _ => return Err(Malformed("packet type a client may not send")),
    }
    Ok(())
}

/// A topic filter: at least one character [MQTT-4.7.3-1], wildcards used as the
/// specifications allow [MQTT-4.7.1-2], [MQTT-4.7.1-3].
fn filter(c: &mut Cur<'_>) -> Res<()> {
    let f = c.string()?;
    if f.is_empty() {
        return Err(Malformed("empty topic filter"));
    }
    if !valid_topic_filter(f) {
        return Err(Protocol("invalid topic filter"));
    }
    Ok(())
}

/// Whether a CONNECT string (client id, will topic, user name) holds a code point
/// Mosquitto 2.0 closes the connection for: a control character U+0001–U+001F or
/// U+007F–U+009F (3.1.1 §1.5.3 lets a server refuse them, MQTT 5 §1.5.4 says it
/// may treat them as malformed) or a Unicode non-character (U+FDD0–U+FDEF, U+xFFFE,
/// U+xFFFF). U+0000 is refused everywhere by the string rules.
pub fn refused_in_connect(s: &str) -> bool {
    s.chars().any(|c| {
        let n = u32::from(c);
        (0x01..=0x1F).contains(&n)
            || (0x7F..=0x9F).contains(&n)
            || (0xFDD0..=0xFDEF).contains(&n)
            || n & 0xFFFE == 0xFFFE
    })
}

/// Checks an MQTT 5 CONNECT body (the bytes after the remaining length), which
/// rumqttd decodes without these rules.
pub fn check_connect_v5(byte1: u8, body: &[u8]) -> Res<()> {
    if byte1 != 0x10 {
        return Err(Malformed(
            "reserved fixed-header flags are not as specified",
        ));
    }
    let mut c = Cur { b: body, i: 0 };
    c.binary()?; // protocol name, checked by the caller
    c.u8()?; // level
    let flags = c.u8()?;
    if flags & 1 != 0 {
        return Err(Malformed("reserved CONNECT flag set")); // [MQTT-3.1.2-3]
    }
    let (will, will_qos, will_retain) = (flags & 0x04 != 0, (flags >> 3) & 0b11, flags & 0x20 != 0);
    if will_qos == 3 || (!will && (will_qos != 0 || will_retain)) {
        return Err(Malformed(
            "will QoS or retain without a will, or will QoS 3",
        ));
    }
    c.u16()?;
    properties(&mut c, allowed::CONNECT)?;
    c.connect_string()?;
    if will {
        properties(&mut c, allowed::WILL)?;
        let topic = c.connect_string()?;
        if !crate::auth::acl::valid_topic_name(topic) {
            return Err(Protocol("invalid will topic"));
        }
        c.binary()?;
    }
    if flags & 0x80 != 0 {
        c.connect_string()?;
    }
    if flags & 0x40 != 0 {
        c.binary()?;
    }
    c.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, MQTT 5?, first byte, body, expected result). One row per rule.
    #[allow(clippy::type_complexity)]
    const CASES: &[(&str, bool, u8, &[u8], Option<u8>)] = &[
        ("subscribe ok", false, 0x82, b"\0\x01\0\x01a\x01", None),
        (
            "subscribe reserved flags",
            false,
            0x80,
            b"\0\x01\0\x01a\x01",
            Some(0x81),
        ),
        (
            "subscribe empty filter",
            false,
            0x82,
            b"\0\x01\0\0\x01",
            Some(0x81),
        ),
        (
            "subscribe qos 3",
            false,
            0x82,
            b"\0\x01\0\x01a\x03",
            Some(0x81),
        ),
        (
            "subscribe v4 option bits",
            false,
            0x82,
            b"\0\x01\0\x01a\x05",
            Some(0x81),
        ),
        (
            "subscribe packet id 0",
            false,
            0x82,
            b"\0\0\0\x01a\x01",
            Some(0x82),
        ),
        ("subscribe no filter", false, 0x82, b"\0\x01", Some(0x82)),
        (
            "subscribe invalid filter",
            false,
            0x82,
            b"\0\x01\0\x05a/#/b\x01",
            Some(0x82),
        ),
        (
            "subscribe nul in filter",
            false,
            0x82,
            b"\0\x01\0\x03a\0b\x01",
            Some(0x81),
        ),
        (
            "subscribe surrogate",
            false,
            0x82,
            b"\0\x01\0\x03\xed\xa0\x80\x01",
            Some(0x81),
        ),
        (
            "subscribe filter past end",
            false,
            0x82,
            b"\0\x01\0\x09ab\x01",
            Some(0x81),
        ),
        ("subscribe v5 ok", true, 0x82, b"\0\x01\0\0\x01a\x01", None),
        (
            "subscribe v5 reserved flags",
            true,
            0x8A,
            b"\0\x01\0\0\x01a\x01",
            Some(0x81),
        ),
        (
            "subscribe v5 option bits",
            true,
            0x82,
            b"\0\x01\0\0\x01a\x41",
            Some(0x81),
        ),
        (
            "subscribe v5 retain handling 3",
            true,
            0x82,
            b"\0\x01\0\0\x01a\x31",
            Some(0x82),
        ),
        (
            "subscribe v5 sub id 0",
            true,
            0x82,
            b"\0\x01\x02\x0b\0\0\x01a\x01",
            Some(0x82),
        ),
        (
            "subscribe v5 sub id twice",
            true,
            0x82,
            b"\0\x01\x04\x0b\x01\x0b\x02\0\x01a\x01",
            Some(0x82),
        ),
        (
            "subscribe v5 property not allowed",
            true,
            0x82,
            b"\0\x01\x05\x02\0\0\0\x01\0\x01a\x01",
            Some(0x81),
        ),
        (
            "subscribe v5 user properties repeat",
            true,
            0x82,
            b"\0\x01\x0e\x26\0\x01k\0\x01v\x26\0\x01k\0\x01w\0\x01a\x01",
            None,
        ),
        ("unsubscribe ok", false, 0xA2, b"\0\x01\0\x01a", None),
        (
            "unsubscribe reserved flags",
            false,
            0xA0,
            b"\0\x01\0\x01a",
            Some(0x81),
        ),
        ("unsubscribe no filter", false, 0xA2, b"\0\x01", Some(0x82)),
        (
            "unsubscribe empty filter",
            false,
            0xA2,
            b"\0\x01\0\0",
            Some(0x81),
        ),
        ("publish qos0 dup", false, 0x38, b"\0\x01ax", Some(0x81)),
        ("publish qos 3", false, 0x36, b"\0\x01a\0\x01x", Some(0x81)),
        (
            "publish packet id 0",
            false,
            0x32,
            b"\0\x01a\0\0x",
            Some(0x82),
        ),
        (
            "publish topic not utf-8",
            false,
            0x30,
            b"\0\x01\xffx",
            Some(0x81),
        ),
        (
            "publish v5 ok",
            true,
            0x32,
            b"\0\x01a\0\x01\x02\x01\x01x",
            None,
        ),
        (
            "publish v5 subscription id",
            true,
            0x30,
            b"\0\x01a\x02\x0b\x01x",
            Some(0x81),
        ),
        (
            "publish v5 property twice",
            true,
            0x30,
            b"\0\x01a\x04\x01\x01\x01\x01x",
            Some(0x82),
        ),
        (
            "publish v5 payload format 2",
            true,
            0x30,
            b"\0\x01a\x02\x01\x02x",
            Some(0x82),
        ),
        (
            "publish v5 properties past end",
            true,
            0x30,
            b"\0\x01a\x09\x01\x01",
            Some(0x81),
        ),
        ("puback ok", false, 0x40, b"\0\x01", None),
        (
            "puback trailing bytes",
            false,
            0x40,
            b"\0\x01\0",
            Some(0x81),
        ),
        ("puback flags", false, 0x42, b"\0\x01", Some(0x81)),
        ("pubrel flags", false, 0x60, b"\0\x01", Some(0x81)),
        ("pubrel ok", false, 0x62, b"\0\x01", None),
        ("pubcomp packet id 0", false, 0x70, b"\0\0", Some(0x82)),
        (
            "puback v5 reason and properties",
            true,
            0x40,
            b"\0\x01\x10\x03\x1f\0\0",
            None,
        ),
        (
            "puback v5 property not allowed",
            true,
            0x40,
            b"\0\x01\x10\x05\x11\0\0\0\x01",
            Some(0x81),
        ),
        ("pingreq with body", false, 0xC0, b"\0", Some(0x81)),
        ("disconnect with body v4", false, 0xE0, b"\0", Some(0x81)),
        (
            "disconnect v5 session expiry",
            true,
            0xE0,
            b"\0\x05\x11\0\0\0\x0a",
            None,
        ),
        ("disconnect v5 flags", true, 0xE1, b"", Some(0x81)),
        ("suback from a client", false, 0x90, b"\0\x01\0", Some(0x81)),
        ("auth v5", true, 0xF0, b"", Some(0x82)),
        ("auth v4", false, 0xF0, b"", Some(0x81)),
        ("second connect", false, 0x10, b"", Some(0x82)),
    ];

    #[test]
    fn every_rule_of_the_table() {
        for (name, v5, byte1, body, want) in CASES {
            let got = check(*v5, *byte1, body).err().map(Violation::reason_code);
            assert_eq!(got, *want, "{name}: {:?}", check(*v5, *byte1, body));
        }
    }

    #[test]
    fn mqtt5_connect_rules() {
        // name, level, flags, keepalive, props, client id [, will props, topic, payload] ...
        let base = |flags: u8, props: &[u8], rest: &[u8]| {
            let mut b = b"\0\x04MQTT\x05".to_vec();
            b.push(flags);
            b.extend_from_slice(&[0, 30]);
            b.extend_from_slice(props);
            b.extend_from_slice(b"\0\x01c");
            b.extend_from_slice(rest);
            b
        };
        let ok = base(0x02, b"\0", b"");
        assert_eq!(check_connect_v5(0x10, &ok), Ok(()));
        assert!(check_connect_v5(0x11, &ok).is_err());
        let code = |b: Vec<u8>| check_connect_v5(0x10, &b).err().map(Violation::reason_code);
        assert_eq!(code(base(0x03, b"\0", b"")), Some(0x81), "reserved flag");
        assert_eq!(
            code(base(0x12, b"\0", b"")),
            Some(0x81),
            "will QoS without will"
        );
        assert_eq!(
            code(base(0x02, b"\x03\x21\0\0", b"")),
            Some(0x82),
            "receive max 0"
        );
        assert_eq!(
            code(base(0x02, b"\x02\x01\x01", b"")),
            Some(0x81),
            "property not allowed"
        );
        assert_eq!(code(base(0x02, b"\0", b"x")), Some(0x81), "trailing bytes");
        assert_eq!(
            code(base(0x06, b"\0", b"\0\0\x01#\0\0")),
            Some(0x82),
            "will topic with #"
        );
        assert_eq!(code(base(0x06, b"\0", b"\0\0\x01t\0\x01p")), None, "will");
        // MQTT 5 allows a password without a user name.
        assert_eq!(code(base(0x42, b"\0", b"\0\x02pw")), None);
        // Control characters in the will topic or the user name, as Mosquitto 2.0.
        assert_eq!(
            code(base(0x06, b"\0", b"\0\0\x02t\x01\0\0")),
            Some(0x81),
            "will topic with U+0001"
        );
        assert_eq!(
            code(base(0x82, b"\0", b"\0\x02u\xc2\x85")),
            Some(0x81),
            "user name with U+0085"
        );
        let mut ctl = b"\0\x04MQTT\x05\x02\0\x1e\0\0\x02c\x7f".to_vec();
        assert_eq!(code(ctl.clone()), Some(0x81), "client id with U+007F");
        ctl.truncate(ctl.len() - 1);
        ctl[12] = 1;
        assert_eq!(code(ctl), None, "client id c");
    }
}
