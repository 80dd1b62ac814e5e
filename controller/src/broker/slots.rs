//! Slots for sockets: a socket holds a handshake slot from its accept until its CONNECT
//! is authenticated (`maxHandshakes` in total, never more than `maxConnections`, and
//! `maxHandshakesPerAddress` from one IP address), then a connection slot
//! (`maxConnections`) until it closes. Unauthenticated sockets therefore never take the
//! slots of authenticated clients, and one address cannot take every handshake slot.
//! Slots are guards: dropping one frees it. Every refusal is counted in
//! `edgemq_limit_refusals_total`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::Shared;

/// Slot counters of one broker.
#[derive(Default)]
pub struct Slots {
    /// Authenticated connections.
    connections: AtomicUsize,
    handshakes: Mutex<Handshakes>,
}

#[derive(Default)]
struct Handshakes {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

impl Slots {
    /// Authenticated connections open now.
    pub fn connected(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    fn handshakes(&self) -> std::sync::MutexGuard<'_, Handshakes> {
        self.handshakes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a socket got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `maxConnections` clients are connected.
    #[error("maxConnections ({0}) reached")]
    Connections(usize),
    /// `maxHandshakes` sockets are unauthenticated.
    #[error("maxHandshakes ({0}) unauthenticated sockets reached")]
    Handshakes(usize),
    /// `maxHandshakesPerAddress` sockets from this address are unauthenticated.
    #[error("maxHandshakesPerAddress ({0}) unauthenticated sockets from this address reached")]
    HandshakesPerAddress(usize),
}

/// A socket that has not authenticated yet.
pub struct HandshakeSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut h = self.shared.slots.handshakes();
        h.total = h.total.saturating_sub(1);
        if let Some(n) = h.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                h.by_address.remove(&self.ip);
            }
        }
    }
}

/// An authenticated connection.
pub struct ConnectionSlot {
    shared: Arc<Shared>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.shared.slots.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes a handshake slot for a socket just accepted from `ip`. Refused also when
/// `maxConnections` clients are connected: such a socket could not log in anyway.
pub fn handshake(shared: &Arc<Shared>, ip: IpAddr) -> Result<HandshakeSlot, Refused> {
    let limits = shared.limits.load();
    let refused = &shared.metrics.refused;
    let max_connections = limits.max_connections as usize;
    if shared.slots.connections.load(Ordering::Acquire) >= max_connections {
        refused.connections.inc();
        return Err(Refused::Connections(max_connections));
    }
    let max_total = (limits.max_handshakes as usize).min(max_connections);
    let max_per_address = limits.max_handshakes_per_address as usize;
    let ip = ip.to_canonical();
    let mut h = shared.slots.handshakes();
    if h.total >= max_total {
        refused.handshakes.inc();
        return Err(Refused::Handshakes(max_total));
    }
    let from_ip = h.by_address.entry(ip).or_default();
    if *from_ip >= max_per_address {
        refused.handshakes_per_address.inc();
        return Err(Refused::HandshakesPerAddress(max_per_address));
    }
    *from_ip += 1;
    h.total += 1;
    drop(h);
    Ok(HandshakeSlot {
        shared: shared.clone(),
        ip,
    })
}

/// Trades a handshake slot for a connection slot once the CONNECT is authenticated.
pub fn connection(handshake: HandshakeSlot) -> Result<ConnectionSlot, Refused> {
    let shared = handshake.shared.clone();
    drop(handshake);
    let max = shared.limits.load().max_connections as usize;
    if shared.slots.connections.fetch_add(1, Ordering::AcqRel) >= max {
        shared.slots.connections.fetch_sub(1, Ordering::AcqRel);
        shared.metrics.refused.connections.inc();
        return Err(Refused::Connections(max));
    }
    Ok(ConnectionSlot { shared })
}
