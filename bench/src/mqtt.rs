//! A minimal MQTT 3.1.1 client for load generation: CONNECT, PUBLISH (QoS 0/1),
//! PUBACK, SUBSCRIBE. It sets TCP_NODELAY and batches writes, so the load generator
//! adds as little latency and CPU as it can (a general-purpose client without
//! TCP_NODELAY added tens of milliseconds at QoS 0 through Nagle's algorithm).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const SUBACK: u8 = 9;

fn put_len(buf: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        buf.push(b);
        if n == 0 {
            break;
        }
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// A clean-session CONNECT packet.
pub fn connect_packet(client_id: &str, keep_alive: u16) -> Vec<u8> {
    connect_packet_session(client_id, keep_alive, true)
}

/// A CONNECT packet; `clean` false asks for a persistent session (clean session 0).
pub fn connect_packet_session(client_id: &str, keep_alive: u16, clean: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + client_id.len());
    put_str(&mut body, "MQTT");
    body.push(4);
    body.push(if clean { 0x02 } else { 0x00 });
    body.extend_from_slice(&keep_alive.to_be_bytes());
    put_str(&mut body, client_id);
    let mut p = vec![0x10];
    put_len(&mut p, body.len());
    p.extend_from_slice(&body);
    p
}

/// Appends a PUBLISH packet (packet id used only when qos > 0).
pub fn put_publish(buf: &mut Vec<u8>, topic: &str, qos: u8, pkid: u16, payload: &[u8]) {
    buf.push(0x30 | (qos << 1));
    let len = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len();
    put_len(buf, len);
    put_str(buf, topic);
    if qos > 0 {
        buf.extend_from_slice(&pkid.to_be_bytes());
    }
    buf.extend_from_slice(payload);
}

pub fn put_puback(buf: &mut Vec<u8>, pkid: u16) {
    buf.extend_from_slice(&[0x40, 2]);
    buf.extend_from_slice(&pkid.to_be_bytes());
}

pub fn subscribe_packet(topic: &str, qos: u8) -> Vec<u8> {
    let mut body = vec![0, 1];
    put_str(&mut body, topic);
    body.push(qos);
    let mut p = vec![0x82];
    put_len(&mut p, body.len());
    p.extend_from_slice(&body);
    p
}

/// One parsed packet: type, flags and body.
pub struct Packet<'a> {
    pub kind: u8,
    pub flags: u8,
    pub body: &'a [u8],
}

/// Reads packets from a socket through a growable buffer.
pub struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for Reader {
    fn default() -> Self {
        Reader {
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        }
    }
}

impl Reader {
    /// Reads more bytes; returns false at end of stream. Cancel-safe.
    pub async fn fill(&mut self, s: &mut (impl AsyncReadExt + Unpin)) -> Result<bool> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let n = self.buf.len() * 2;
            if n > 16 * 1024 * 1024 {
                bail!("packet larger than 16 MiB");
            }
            self.buf.resize(n, 0);
        }
        let n = s.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// Next complete packet in the buffer, if any.
    pub fn next(&mut self) -> Result<Option<Packet<'_>>> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < 2 {
            return Ok(None);
        }
        let mut len = 0usize;
        let mut mult = 1usize;
        let mut i = 1;
        loop {
            let Some(&b) = avail.get(i) else {
                return Ok(None);
            };
            len += (b & 0x7f) as usize * mult;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            mult *= 128;
            if i > 4 {
                bail!("malformed remaining length");
            }
        }
        if avail.len() < i + len {
            return Ok(None);
        }
        let head = avail[0];
        let s = self.start;
        self.start += i + len;
        Ok(Some(Packet {
            kind: head >> 4,
            flags: head & 0x0f,
            body: &self.buf[s + i..s + i + len],
        }))
    }
}

/// A PUBLISH body split into packet id (0 for QoS 0) and payload.
pub fn parse_publish(flags: u8, body: &[u8]) -> Option<(u16, &[u8])> {
    let tl = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let mut off = 2 + tl;
    let qos = (flags >> 1) & 3;
    let mut pkid = 0;
    if qos > 0 {
        pkid = u16::from_be_bytes([*body.get(off)?, *body.get(off + 1)?]);
        off += 2;
    }
    Some((pkid, body.get(off..)?))
}

/// Connects with TCP_NODELAY, sends a clean-session CONNECT and waits for a
/// successful CONNACK.
pub async fn connect(port: u16, id: &str, until: Instant) -> Result<(TcpStream, Reader)> {
    connect_session(port, id, until, true).await
}

/// [`connect`], with a persistent session when `clean` is false.
pub async fn connect_session(
    port: u16,
    id: &str,
    until: Instant,
    clean: bool,
) -> Result<(TcpStream, Reader)> {
    let left = until.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        s.set_nodelay(true)?;
        // Keep-alive 0: phases are bounded, and no PINGREQ traffic disturbs them.
        s.write_all(&connect_packet_session(id, 0, clean)).await?;
        let mut r = Reader::default();
        loop {
            if let Some(p) = r.next()? {
                if p.kind != CONNACK || p.body.len() < 2 || p.body[1] != 0 {
                    bail!("connection refused (packet type {}, {:?})", p.kind, p.body);
                }
                break;
            }
            if !r.fill(&mut s).await? {
                bail!("connection closed before CONNACK");
            }
        }
        Ok((s, r))
    })
    .await
    .map_err(|_| anyhow::anyhow!("timed out waiting for CONNACK"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_roundtrip_and_lengths() {
        let mut b = Vec::new();
        let payload = vec![7u8; 200];
        put_publish(&mut b, "a/b", 1, 513, &payload);
        put_puback(&mut b, 9);
        let mut r = Reader::default();
        r.buf[..b.len()].copy_from_slice(&b);
        r.end = b.len();
        let p = r.next().unwrap().unwrap();
        assert_eq!(p.kind, PUBLISH);
        let (pkid, pl) = parse_publish(p.flags, p.body).unwrap();
        assert_eq!((pkid, pl.len()), (513, 200));
        let p = r.next().unwrap().unwrap();
        assert_eq!((p.kind, p.body), (PUBACK, &[0u8, 9][..]));
        assert!(r.next().unwrap().is_none());
    }

    #[test]
    fn connect_packet_layout() {
        let p = connect_packet("ab", 300);
        assert_eq!(p[1] as usize, p.len() - 2);
        assert_eq!(&p[10..12], &300u16.to_be_bytes());
        assert_eq!(&p[12..], &[0, 2, b'a', b'b']);
        assert_eq!(p[9], 0x02);
        assert_eq!(connect_packet_session("ab", 300, false)[9], 0x00);
    }
}
