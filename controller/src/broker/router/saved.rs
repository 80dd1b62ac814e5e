//! Persistence of sessions: snapshots of the persistent sessions for the store, and
//! their restore after a restart. The stored form of a session: a version byte, then
//! length-prefixed fields in a fixed order. Version 2 added the subscription
//! identifier of each subscription; version 1 is still read.

use super::*;

const VERSION: u8 = 2;

impl Router {
    /// A counter that moves whenever a session may have changed.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Every persistent session (expiry above 0, not edgemq's own), encoded for the
    /// store: subscriptions, retained backlog and queue, in-flight messages (QoS 1/2
    /// sent, QoS 2 released), the QoS 2 packet ids received, and the expiry left
    /// (counted from `now` for a disconnected session).
    pub fn snapshot_sessions(&self, now: Instant) -> Vec<(String, Vec<u8>)> {
        self.snapshot_sessions_counted(now).0
    }

    /// [`Router::snapshot_sessions`], also counting the messages the sessions hold.
    pub fn snapshot_sessions_counted(&self, now: Instant) -> (Vec<(String, Vec<u8>)>, usize) {
        let mut out = Vec::new();
        let mut messages = 0;
        for (id, s) in &self.sessions {
            if s.trusted || s.expiry == 0 || id.starts_with(INTERNAL_CLIENT_PREFIX) {
                continue;
            }
            let left = match s.disconnected_at {
                Some(at) => {
                    let gone = now.duration_since(at).as_secs();
                    u64::from(s.expiry).saturating_sub(gone) as u32
                }
                None => s.expiry,
            };
            if left == 0 {
                continue;
            }
            messages += s.queue.len() + s.retained_backlog.len() + s.inflight.len();
            out.push((id.to_string(), encode(s, left)));
        }
        (out, messages)
    }

    /// Restores sessions saved by [`Router::snapshot_sessions`] as disconnected ones
    /// (their expiry counts from now). Returns how many, and how many messages they
    /// hold. Entries that do not decode are skipped with a warning.
    pub fn restore_sessions(&mut self, saved: Vec<(String, Vec<u8>)>) -> (usize, usize) {
        let now = Instant::now();
        let (mut n, mut msgs) = (0, 0);
        for (id, bytes) in saved {
            let Some(mut s) = decode(&bytes) else {
                tracing::warn!(broker = %self.name, client_id = %id, "a saved session could not be read; it is dropped");
                continue;
            };
            s.disconnected_at = Some(now);
            s.queued_bytes = s.queue.iter().map(|d| message_bytes(&d.msg)).sum();
            let id: Arc<str> = id.into();
            for (filter, opts) in s.subscriptions.clone() {
                self.index_insert(&filter, &id, opts);
            }
            msgs += s.queue.len() + s.retained_backlog.len() + s.inflight.len();
            self.sessions.insert(id, s);
            n += 1;
        }
        self.update_gauges();
        (n, msgs)
    }
}

fn put_bytes(o: &mut Vec<u8>, b: &[u8]) {
    o.extend_from_slice(&(b.len() as u32).to_be_bytes());
    o.extend_from_slice(b);
}

fn put_delivery(o: &mut Vec<u8>, kind: u8, pkid: u16, d: Option<&Delivery>) {
    o.push(kind);
    o.extend_from_slice(&pkid.to_be_bytes());
    if let Some(d) = d {
        o.push(d.qos);
        o.push(u8::from(d.retain) | (d.msg.qos << 1));
        put_bytes(o, &d.msg.topic);
        put_bytes(o, &d.msg.payload);
    }
}

pub(super) fn encode(s: &Session, expiry_left: u32) -> Vec<u8> {
    let mut o = vec![VERSION];
    match &s.username {
        Some(u) => {
            o.push(1);
            put_bytes(&mut o, u.as_bytes());
        }
        None => o.push(0),
    }
    o.extend_from_slice(&expiry_left.to_be_bytes());
    o.extend_from_slice(&(s.max_inflight as u32).to_be_bytes());
    o.extend_from_slice(&s.next_pkid.to_be_bytes());
    o.extend_from_slice(&(s.subscriptions.len() as u32).to_be_bytes());
    for (filter, opts) in &s.subscriptions {
        put_bytes(&mut o, filter.as_bytes());
        o.push(opts.qos);
        o.push(u8::from(opts.no_local) | (u8::from(opts.retain_as_published) << 1));
        o.push(opts.retain_handling);
        o.extend_from_slice(&opts.id.unwrap_or(0).to_be_bytes());
    }
    let n = s.retained_backlog.len() + s.queue.len() + s.inflight.len();
    o.extend_from_slice(&(n as u32).to_be_bytes());
    for (pkid, f) in &s.inflight {
        match f {
            Inflight::Sent(d) => put_delivery(&mut o, 1, *pkid, Some(d)),
            Inflight::Released => put_delivery(&mut o, 2, *pkid, None),
        }
    }
    for d in s.retained_backlog.iter() {
        put_delivery(&mut o, 3, 0, Some(d));
    }
    for d in s.queue.iter() {
        put_delivery(&mut o, 0, 0, Some(d));
    }
    o.extend_from_slice(&(s.incoming_qos2.len() as u32).to_be_bytes());
    for p in &s.incoming_qos2 {
        o.extend_from_slice(&p.to_be_bytes());
    }
    o
}

struct Rd<'a>(&'a [u8]);

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

pub(super) fn decode(b: &[u8]) -> Option<Session> {
    let mut r = Rd(b);
    let version = r.u8()?;
    if version != 1 && version != VERSION {
        return None;
    }
    let username = match r.u8()? {
        0 => None,
        _ => Some(Arc::from(std::str::from_utf8(r.bytes()?).ok()?)),
    };
    let mut s = Session::new(username);
    s.expiry = r.u32()?;
    s.max_inflight = (r.u32()? as usize).max(1);
    s.next_pkid = r.u16()?;
    for _ in 0..r.u32()? {
        let filter = std::str::from_utf8(r.bytes()?).ok()?.to_string();
        let (qos, flags, retain_handling) = (r.u8()?, r.u8()?, r.u8()?);
        let id = if version >= 2 { r.u32()? } else { 0 };
        s.subscriptions.insert(
            filter,
            SubOptions {
                qos: qos.min(2),
                no_local: flags & 1 != 0,
                retain_as_published: flags & 2 != 0,
                retain_handling,
                id: (id != 0).then_some(id),
            },
        );
    }
    for _ in 0..r.u32()? {
        let kind = r.u8()?;
        let pkid = r.u16()?;
        if kind == 2 {
            s.inflight.insert(pkid, Inflight::Released);
            continue;
        }
        let qos = r.u8()?.min(2);
        let flags = r.u8()?;
        let topic = r.bytes()?;
        std::str::from_utf8(topic).ok()?;
        let d = Delivery {
            msg: Arc::new(Message {
                topic: Bytes::copy_from_slice(topic),
                payload: Bytes::copy_from_slice(r.bytes()?),
                qos: (flags >> 1).min(2),
                retain: flags & 1 != 0,
                properties: None,
                origin: None,
                expires_at: None,
            }),
            qos,
            retain: flags & 1 != 0,
            sub_ids: Vec::new(),
        };
        match kind {
            1 => {
                s.inflight.insert(pkid, Inflight::Sent(d));
            }
            3 => s.retained_backlog.push_back(d),
            _ => s.queue.push_back(d),
        }
    }
    for _ in 0..r.u32()? {
        s.incoming_qos2.insert(r.u16()?);
    }
    Some(s)
}
