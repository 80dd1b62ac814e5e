//! edgemq's router: subscriptions, sessions, QoS state and retained messages.
//!
//! The router is synchronous state behind one mutex; connection tasks call into it
//! and are woken through their [`ConnLink`] when something is queued for them. It
//! holds the properties DESIGN.md asks of routing, which rumqttd 0.20's router does
//! not: a message is delivered at the lower of the publish and subscription QoS;
//! every message a session cannot take is counted (per session and in metrics),
//! never skipped silently; the per-session queue is bounded by `maxQueuedMessages`;
//! subscription trie nodes are freed when their last subscriber leaves and
//! disconnected sessions expire, so memory follows the live state under churn.
//!
//! This file holds the state and the routing (subscriptions, publish, queues); the
//! rest is by concern: `session` (connect, disconnect, expiry, wills, kicks),
//! `delivery` (what a connection sends next, QoS acknowledgements), `retained` (the
//! retained store and `$SYS`), `saved` (session snapshots for persistence).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::shared_subs::{self, SharedSubs};
use super::trie::{Matched, TrieNode};
use super::types::{
    ConnLink, Delivery, Message, Outgoing, RetainedChange, SubOptions, INTERNAL_CLIENT_PREFIX,
};
use super::will_delay::PendingWills;
use crate::auth::acl::{Acl, Op};
use crate::metrics::BrokerMetrics;

mod delivery;
#[cfg(test)]
mod limits_tests;
mod retained;
mod saved;
mod session;
#[cfg(test)]
mod tests;

/// Matches of one message whose room is kept for the next (entries of 56 bytes).
const MATCHED_ROOM: usize = 256;

#[derive(Debug)]
enum Inflight {
    /// Sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent(Delivery),
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Debug)]
struct Session {
    username: Option<Arc<str>>,
    subscriptions: HashMap<String, SubOptions>,
    queue: VecDeque<Delivery>,
    /// Retained messages owed after a SUBSCRIBE: sent before `queue`, paced by the
    /// in-flight window like it, but not bounded by `maxQueuedMessages` (a new
    /// subscriber to `homeassistant/#` is owed every retained discovery message), only
    /// by `maxRetainedMessages`.
    retained_backlog: VecDeque<Delivery>,
    inflight: BTreeMap<u16, Inflight>,
    /// In-flight packets to send again (DUP) after a reconnect.
    resend: VecDeque<u16>,
    incoming_qos2: HashSet<u16>,
    next_pkid: u16,
    conn: Option<ConnLink>,
    /// Seconds to keep the session after disconnect; 0 removes it at once.
    expiry: u32,
    disconnected_at: Option<Instant>,
    max_inflight: usize,
    dropped: u64,
    /// edgemq's own sessions (health probe, bridges): not subject to the ACL.
    trusted: bool,
    /// Queue bound of an internal session, instead of the broker's `maxQueuedMessages`.
    max_queued: Option<usize>,
    /// A message the ACL kept from this session was logged already.
    denial_logged: bool,
    /// Messages whose expiry interval ran out before they could be sent.
    dropped_expired: u64,
    /// Bytes (topics and payloads) in `queue`, bounded by `maxQueuedBytes`.
    queued_bytes: usize,
}

impl Session {
    fn new(username: Option<Arc<str>>) -> Session {
        Session {
            username,
            subscriptions: HashMap::new(),
            queue: VecDeque::new(),
            retained_backlog: VecDeque::new(),
            inflight: BTreeMap::new(),
            resend: VecDeque::new(),
            incoming_qos2: HashSet::new(),
            next_pkid: 0,
            conn: None,
            expiry: 0,
            disconnected_at: None,
            max_inflight: 20,
            dropped: 0,
            trusted: false,
            max_queued: None,
            denial_logged: false,
            dropped_expired: 0,
            queued_bytes: 0,
        }
    }

    /// Something is waiting to be sent (beyond retransmissions).
    fn has_pending(&self) -> bool {
        !self.queue.is_empty() || !self.retained_backlog.is_empty()
    }

    fn alloc_pkid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid == 0 {
                self.next_pkid = 1;
            }
            if !self.inflight.contains_key(&self.next_pkid) {
                return Some(self.next_pkid);
            }
        }
        None
    }
}

/// Why the ACL refused `op` to a client, for the once-per-client log line.
pub fn denial_reason(username: Option<&str>, op: Op) -> String {
    let what = match op {
        Op::Read => "read",
        Op::Write => "write",
    };
    match username {
        None => format!(
            "anonymous client: no anonymousAcl rule (or aclPatterns rule) lets it {what} this topic"
        ),
        Some(u) => {
            format!("no ACL rule of user `{u}` (or aclPatterns rule) lets it {what} this topic")
        }
    }
}

/// Router limits, from the Broker's `limits`.
#[derive(Clone, Copy, Debug)]
pub struct RouterLimits {
    /// Per-session queue bound.
    pub max_queued: usize,
    /// Upper bound of a session's in-flight window.
    pub max_inflight: usize,
    /// Upper bound of a session's expiry, seconds.
    pub max_session_expiry: u32,
    /// Most retained messages.
    pub max_retained: usize,
    /// Most bytes of retained messages (topics and payloads).
    pub max_retained_bytes: usize,
    /// Most persistent sessions (expiry above 0).
    pub max_sessions: usize,
    /// Most subscriptions of one client.
    pub max_subscriptions: usize,
    /// Per-session queue bound in bytes (topics and payloads).
    pub max_queued_bytes: usize,
}

/// The bytes a message holds: what `maxQueuedBytes` and `maxRetainedBytes` count.
fn message_bytes(m: &Message) -> usize {
    m.topic.len() + m.payload.len()
}

/// Counts a message the ACL keeps from `client_id` (session `s`); the first one per
/// session is logged with the reason.
fn note_read_denied(
    metrics: &BrokerMetrics,
    broker: &str,
    s: &mut Session,
    client_id: &str,
    topic: &str,
) {
    metrics.acl_denials.inc();
    if !std::mem::replace(&mut s.denial_logged, true) {
        tracing::info!(broker = %broker, client_id = %client_id, username = s.username.as_deref().unwrap_or(""), topic,
            reason = %denial_reason(s.username.as_deref(), Op::Read),
            "message not delivered: the ACL does not let this client read it (logged once per session; later ones are counted in edgemq_acl_denials_total)");
    }
}

/// Queues a delivery in session `s`, applying the queue bound, and wakes its
/// connection. Returns whether it was queued.
fn push(
    s: &mut Session,
    client_id: &str,
    d: Delivery,
    limits: &RouterLimits,
    metrics: &BrokerMetrics,
    broker: &str,
) -> bool {
    let max_queued = s.max_queued.unwrap_or(limits.max_queued);
    if s.conn.is_none() && d.qos == 0 {
        metrics.dropped_offline_qos0.inc();
        return false;
    }
    let bytes = message_bytes(&d.msg);
    let by_count = s.queue.len() >= max_queued;
    // edgemq's own sessions (bridges) keep their own bounds.
    let by_bytes =
        !s.trusted && !s.queue.is_empty() && s.queued_bytes + bytes > limits.max_queued_bytes;
    if by_count || by_bytes {
        s.dropped += 1;
        metrics.dropped_queue_full.inc();
        if by_count {
            metrics.refused.queued_messages.inc();
        } else {
            metrics.refused.queued_bytes.inc();
        }
        if s.dropped == 1 || s.dropped.is_power_of_two() || s.dropped % 10_000 == 0 {
            tracing::warn!(
                broker = %broker,
                client_id = %client_id,
                dropped = s.dropped,
                max_queued_messages = max_queued,
                max_queued_bytes = limits.max_queued_bytes,
                queued_bytes = s.queued_bytes,
                "client queue full: dropping new messages for this client"
            );
        }
        return false;
    }
    s.queued_bytes += bytes;
    s.queue.push_back(d);
    if let Some(c) = &s.conn {
        c.wake.notify_one();
    }
    true
}

/// A CONNECT the router refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectRefused {
    /// It asked for a new persistent session and `maxSessions` are kept.
    #[error("maxSessions ({0}) persistent sessions are kept")]
    MaxSessions(usize),
}

impl Default for RouterLimits {
    fn default() -> Self {
        RouterLimits {
            max_queued: 8192,
            max_inflight: 20,
            max_session_expiry: 86400,
            max_retained: 10000,
            max_retained_bytes: 64 << 20,
            max_sessions: 10000,
            max_subscriptions: 10000,
            max_queued_bytes: 16 << 20,
        }
    }
}

/// Result of [`Router::connect`].
#[derive(Debug)]
pub struct Connected {
    /// An existing session was resumed.
    pub session_present: bool,
}

/// Counters a router reports in status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouterStats {
    /// Sessions, connected or not.
    pub sessions: usize,
    /// Connected sessions.
    pub connected: usize,
    /// Subscriptions.
    pub subscriptions: usize,
    /// Nodes of the subscription trie (memory follows this).
    pub trie_nodes: usize,
    /// Retained messages.
    pub retained: usize,
    /// Messages queued across sessions.
    pub queued: usize,
}

/// The routing state of one broker.
pub struct Router {
    sessions: HashMap<Arc<str>, Session>,
    trie: TrieNode,
    shared: SharedSubs,
    /// Wills held for their MQTT 5 Will Delay Interval.
    wills: PendingWills,
    retained: HashMap<Bytes, Arc<Message>>,
    /// The subscribers a message matched, kept between messages for its room.
    matched: Vec<(Arc<str>, Matched)>,
    /// Bytes of `retained` (topics and payloads), bounded by `maxRetainedBytes`.
    retained_bytes: usize,
    /// A retained message refused by a limit was logged; logged again at powers of two.
    retained_refused: u64,
    /// The latest `$SYS` statistics, sent to new `$SYS` subscribers like retained ones.
    sys_retained: HashMap<Bytes, Arc<Message>>,
    acl: Arc<Acl>,
    limits: RouterLimits,
    metrics: BrokerMetrics,
    persist: Option<tokio::sync::mpsc::UnboundedSender<RetainedChange>>,
    /// Bumped by every call that may change a session, so the session snapshot task
    /// writes only when something changed.
    changes: u64,
    name: String,
}

impl Router {
    /// An empty router for broker `name`.
    pub fn new(name: &str, acl: Arc<Acl>, limits: RouterLimits, metrics: BrokerMetrics) -> Router {
        Router {
            sessions: HashMap::new(),
            trie: TrieNode::default(),
            shared: SharedSubs::default(),
            wills: PendingWills::default(),
            retained: HashMap::new(),
            matched: Vec::new(),
            retained_bytes: 0,
            retained_refused: 0,
            sys_retained: HashMap::new(),
            acl,
            limits,
            metrics,
            persist: None,
            changes: 0,
            name: name.to_string(),
        }
    }

    /// Replaces the ACL; connected clients stay connected.
    pub fn set_acl(&mut self, acl: Arc<Acl>) {
        self.acl = acl;
    }

    /// The ACL in force.
    pub fn acl(&self) -> &Arc<Acl> {
        &self.acl
    }

    /// Replaces the limits; they apply to later messages and connections.
    pub fn set_limits(&mut self, limits: RouterLimits) {
        self.limits = limits;
    }

    /// Which of `filters` client `client_id` may add under `maxSubscriptionsPerClient`:
    /// one it holds already is replaced and always fits; new ones fit while room is
    /// left; `None` (a filter refused for another reason) takes no room. Refusals are
    /// counted.
    pub fn admit_subscriptions<'a>(
        &self,
        client_id: &str,
        filters: impl IntoIterator<Item = Option<&'a str>>,
    ) -> Vec<bool> {
        let Some(s) = self.sessions.get(client_id) else {
            return filters.into_iter().map(|_| true).collect();
        };
        let mut held = s.subscriptions.len();
        let mut added = HashSet::new();
        filters
            .into_iter()
            .map(|f| {
                let Some(f) = f else { return true };
                if s.trusted || s.subscriptions.contains_key(f) || added.contains(f) {
                    return true;
                }
                if held >= self.limits.max_subscriptions {
                    self.metrics.refused.subscriptions.inc();
                    return false;
                }
                held += 1;
                added.insert(f);
                true
            })
            .collect()
    }

    /// Adds a subscription to the trie, or to its share group for `$share/` filters.
    fn index_insert(&mut self, filter: &str, client_id: &Arc<str>, opts: SubOptions) {
        if filter.starts_with(shared_subs::PREFIX) {
            self.shared.insert(filter, client_id.clone(), opts);
        } else {
            self.trie.insert(filter, client_id.clone(), opts);
        }
    }

    fn index_remove(&mut self, filter: &str, client_id: &str) {
        if filter.starts_with(shared_subs::PREFIX) {
            self.shared.remove(filter, client_id);
        } else {
            self.trie.remove(filter, client_id);
        }
    }

    /// Adds or replaces a subscription and queues the retained messages it asks for.
    /// Returns whether it replaced an existing one.
    pub fn subscribe(&mut self, client_id: &Arc<str>, filter: &str, opts: SubOptions) -> bool {
        self.changes = self.changes.wrapping_add(1);
        let Some(s) = self.sessions.get_mut(client_id) else {
            return false;
        };
        let existed = s.subscriptions.insert(filter.to_string(), opts).is_some();
        self.index_insert(filter, client_id, opts);
        let send_retained = match opts.retain_handling {
            0 => true,
            1 => !existed,
            _ => false,
        };
        // Mosquitto sends no retained messages on a shared subscribe.
        if send_retained && !filter.starts_with(shared_subs::PREFIX) {
            self.queue_retained(client_id, filter, opts);
        }
        self.update_gauges();
        existed
    }

    /// Removes a subscription. Returns whether it existed.
    pub fn unsubscribe(&mut self, client_id: &Arc<str>, filter: &str) -> bool {
        self.changes = self.changes.wrapping_add(1);
        let Some(s) = self.sessions.get_mut(client_id) else {
            return false;
        };
        if s.subscriptions.remove(filter).is_none() {
            return false;
        }
        self.index_remove(filter, client_id);
        true
    }

    /// Routes a message: updates the retained store and queues it for every matching
    /// session the ACL lets read it. Returns the number of sessions it was queued for.
    pub fn publish(&mut self, msg: Message) -> usize {
        let topic = msg.topic.clone();
        self.publish_as(std::str::from_utf8(&topic).unwrap_or(""), msg)
    }

    /// [`Router::publish`] for a caller that holds the message's topic as text already
    /// (a client's PUBLISH, whose topic was checked on arrival), so that it is not
    /// checked again per message: `topic` must be `msg.topic`.
    pub fn publish_as(&mut self, topic: &str, msg: Message) -> usize {
        debug_assert_eq!(topic.as_bytes(), &msg.topic[..]);
        let msg = Arc::new(msg);
        if msg.retain {
            self.retain(&msg);
        }
        let mut matched = std::mem::take(&mut self.matched);
        self.trie.matches_into(topic, &mut matched);
        let (sessions, acl) = (&self.sessions, &self.acl);
        let may_receive = |client: &str| {
            sessions.get(client).is_some_and(|s| {
                s.trusted || acl.check(s.username.as_deref(), client, topic, Op::Read)
            })
        };
        let shared = self
            .shared
            .pick(topic, may_receive)
            .into_iter()
            .map(|(client, opts)| {
                let ids = opts.id.into_iter().collect();
                (client, Matched { opts, ids })
            });
        let mut delivered = 0;
        for (client, Matched { opts, ids }) in matched.drain(..).chain(shared) {
            if opts.no_local && msg.origin.as_deref() == Some(&*client) {
                continue;
            }
            // One lookup per delivery: the ACL check and the queue use the same entry.
            let Some(s) = self.sessions.get_mut(&client) else {
                continue;
            };
            if !s.trusted
                && !self
                    .acl
                    .check(s.username.as_deref(), &client, topic, Op::Read)
            {
                note_read_denied(&self.metrics, &self.name, s, &client, topic);
                continue;
            }
            let qos = msg.qos.min(opts.qos);
            let retain = msg.retain && opts.retain_as_published;
            let d = Delivery {
                msg: msg.clone(),
                qos,
                retain,
                sub_ids: ids,
            };
            self.changes = self.changes.wrapping_add(1);
            if push(s, &client, d, &self.limits, &self.metrics, &self.name) {
                delivered += 1;
            }
        }
        // The room of a usual fan-out is kept, not that of a rare large one.
        matched.shrink_to(MATCHED_ROOM);
        self.matched = matched;
        delivered
    }

    /// Counts a message the ACL keeps from `client_id`; the first one per session is
    /// logged with the reason, so a client that receives nothing can be explained.
    fn read_denied(&mut self, client_id: &str, topic: &str) {
        let Some(s) = self.sessions.get_mut(client_id) else {
            self.metrics.acl_denials.inc();
            return;
        };
        note_read_denied(&self.metrics, &self.name, s, client_id, topic);
    }

    /// A publish/subscribe round trip through the trie and a session queue, as
    /// `/healthz` reports it: an internal session subscribes to a `$edgemq/` topic,
    /// a message with a fresh nonce is published and must come out of its queue.
    pub fn probe(&mut self, nonce: u64) -> bool {
        let id: Arc<str> = format!("{INTERNAL_CLIENT_PREFIX}health").into();
        let topic = "$edgemq/health";
        let link = ConnLink::new(u64::MAX);
        self.connect_internal(&id, link, 1, 16);
        self.subscribe(
            &id,
            topic,
            SubOptions {
                qos: 0,
                retain_handling: 2,
                ..SubOptions::default()
            },
        );
        let payload = Bytes::from(nonce.to_be_bytes().to_vec());
        self.publish(Message {
            topic: Bytes::from_static(topic.as_bytes()),
            payload: payload.clone(),
            qos: 0,
            retain: false,
            properties: None,
            origin: None,
            expires_at: None,
        });
        let mut out = Vec::new();
        self.next_outgoing(&id, u64::MAX, 16, &mut out);
        self.disconnect(&id, u64::MAX, Some(0));
        out.iter().any(
            |o| matches!(o, Outgoing::Publish { delivery, .. } if delivery.msg.payload == payload),
        )
    }

    /// Messages dropped for a session because its queue was full.
    pub fn dropped(&self, client_id: &str) -> u64 {
        self.sessions.get(client_id).map_or(0, |s| s.dropped)
    }

    /// Counters for status.
    pub fn stats(&self) -> RouterStats {
        RouterStats {
            sessions: self.sessions.len(),
            connected: self.sessions.values().filter(|s| s.conn.is_some()).count(),
            subscriptions: self.sessions.values().map(|s| s.subscriptions.len()).sum(),
            trie_nodes: self.trie.count() + self.shared.trie_nodes() - 1,
            retained: self.retained.len(),
            queued: self
                .sessions
                .values()
                .map(|s| s.queue.len() + s.retained_backlog.len())
                .sum(),
        }
    }

    fn update_gauges(&self) {
        self.metrics.sessions.set(self.sessions.len() as i64);
    }
}
