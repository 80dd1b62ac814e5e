//! Delivery to a connection: what it sends next within the in-flight window,
//! and the QoS 1 and 2 acknowledgements in both directions.

use std::time::Instant;

use super::{message_bytes, Inflight, Router};
use crate::broker::types::Outgoing;

impl Router {
    /// Takes what connection `conn_id` of `client_id` should send next: retransmissions
    /// first, then queued messages while the in-flight window allows (QoS 0 messages
    /// do not use the window). At most `batch` items.
    pub fn next_outgoing(
        &mut self,
        client_id: &str,
        conn_id: u64,
        batch: usize,
        out: &mut Vec<Outgoing>,
    ) {
        let Some(s) = self.sessions.get_mut(client_id) else {
            return;
        };
        if s.conn.as_ref().map(|c| c.id) != Some(conn_id) {
            return;
        }
        if s.has_pending() || !s.resend.is_empty() {
            self.changes = self.changes.wrapping_add(1);
        }
        // Read the clock only for a message that has an expiry: most have none, and
        // this runs at least once per wake-up of a connection.
        let mut now = None;
        let mut expired = 0u64;
        while out.len() < batch {
            let Some(pkid) = s.resend.pop_front() else {
                break;
            };
            match s.inflight.get(&pkid) {
                Some(Inflight::Sent(d)) => out.push(Outgoing::Publish {
                    delivery: d.clone(),
                    pkid,
                    dup: true,
                }),
                Some(Inflight::Released) => out.push(Outgoing::PubRel(pkid)),
                None => {}
            }
        }
        while out.len() < batch {
            // Retained messages owed to a new subscription go first: they are older
            // than anything queued after the SUBSCRIBE.
            let backlog = !s.retained_backlog.is_empty();
            let q = if backlog {
                &mut s.retained_backlog
            } else {
                &mut s.queue
            };
            let Some(front) = q.front() else { break };
            if front.qos > 0 && s.inflight.len() >= s.max_inflight {
                break;
            }
            let Some(d) = q.pop_front() else { break };
            if !backlog {
                s.queued_bytes -= message_bytes(&d.msg);
            }
            // [MQTT-3.3.2-5]: an expired message is not delivered.
            if d.msg.expires_at.is_some() && d.msg.expired(*now.get_or_insert_with(Instant::now)) {
                s.dropped_expired += 1;
                expired += 1;
                continue;
            }
            if d.qos == 0 {
                out.push(Outgoing::Publish {
                    delivery: d,
                    pkid: 0,
                    dup: false,
                });
                continue;
            }
            let Some(pkid) = s.alloc_pkid() else {
                if backlog {
                    s.retained_backlog.push_front(d);
                } else {
                    s.queued_bytes += message_bytes(&d.msg);
                    s.queue.push_front(d);
                }
                break;
            };
            s.inflight.insert(pkid, Inflight::Sent(d.clone()));
            out.push(Outgoing::Publish {
                delivery: d,
                pkid,
                dup: false,
            });
        }
        if expired > 0 {
            self.metrics.dropped_expired.inc_by(expired);
        }
    }

    /// PUBACK from the client: frees the in-flight slot.
    pub fn puback(&mut self, client_id: &str, pkid: u16) -> bool {
        self.complete(client_id, pkid, false)
    }

    /// Frees the in-flight slot of a message the connection did not send (larger than
    /// the client's Maximum Packet Size): it counts as delivered [MQTT-3.1.2-25].
    pub fn drop_inflight(&mut self, client_id: &str, pkid: u16) {
        self.changes = self.changes.wrapping_add(1);
        if let Some(s) = self.sessions.get_mut(client_id) {
            s.inflight.remove(&pkid);
        }
    }

    /// PUBREC from the client: the message moves to awaiting PUBCOMP. Returns whether
    /// the packet id was known.
    pub fn pubrec(&mut self, client_id: &str, pkid: u16) -> bool {
        self.changes = self.changes.wrapping_add(1);
        let Some(s) = self.sessions.get_mut(client_id) else {
            return false;
        };
        match s.inflight.get_mut(&pkid) {
            Some(slot) => {
                *slot = Inflight::Released;
                true
            }
            None => false,
        }
    }

    /// PUBCOMP from the client: frees the in-flight slot.
    pub fn pubcomp(&mut self, client_id: &str, pkid: u16) -> bool {
        self.complete(client_id, pkid, true)
    }

    fn complete(&mut self, client_id: &str, pkid: u16, released: bool) -> bool {
        self.changes = self.changes.wrapping_add(1);
        let Some(s) = self.sessions.get_mut(client_id) else {
            return false;
        };
        let known = match s.inflight.get(&pkid) {
            Some(Inflight::Released) => released,
            Some(Inflight::Sent(_)) => !released,
            None => false,
        };
        if known {
            s.inflight.remove(&pkid);
            if s.has_pending() {
                if let Some(c) = &s.conn {
                    c.wake.notify_one();
                }
            }
        }
        known
    }

    /// An incoming QoS 2 PUBLISH: returns true the first time a packet id is seen
    /// (the message must be routed), false for a retransmission.
    pub fn qos2_received(&mut self, client_id: &str, pkid: u16) -> bool {
        self.changes = self.changes.wrapping_add(1);
        self.sessions
            .get_mut(client_id)
            .is_some_and(|s| s.incoming_qos2.insert(pkid))
    }

    /// PUBREL from the client: forgets the packet id. Returns whether it was known.
    pub fn qos2_released(&mut self, client_id: &str, pkid: u16) -> bool {
        self.changes = self.changes.wrapping_add(1);
        self.sessions
            .get_mut(client_id)
            .is_some_and(|s| s.incoming_qos2.remove(&pkid))
    }
}
