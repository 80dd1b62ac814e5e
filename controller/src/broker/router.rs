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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::shared_subs::{self, SharedSubs};
use super::trie::{Matched, TrieNode};
use super::types::{
    CloseReason, ConnLink, Delivery, Message, Outgoing, RetainedChange, SubOptions,
    INTERNAL_CLIENT_PREFIX,
};
use super::will_delay::PendingWills;
use crate::auth::acl::{topic_matches, Acl, Op};
use crate::metrics::BrokerMetrics;

#[cfg(test)]
mod limits_tests;
mod saved;
#[cfg(test)]
mod tests;

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

    /// Sends every later retained change to `tx` (persistence).
    pub fn set_persistence(
        &mut self,
        tx: Option<tokio::sync::mpsc::UnboundedSender<RetainedChange>>,
    ) {
        self.persist = tx;
    }

    /// Loads retained messages (from persistence) without emitting changes.
    pub fn restore_retained(&mut self, msgs: Vec<Arc<Message>>) {
        for m in msgs {
            self.retained_bytes += message_bytes(&m);
            if let Some(old) = self.retained.insert(m.topic.clone(), m) {
                self.retained_bytes -= message_bytes(&old);
            }
        }
        self.metrics.retained.set(self.retained.len() as i64);
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

    /// Attaches a connection to the session `client_id`, creating or resuming it.
    /// An existing connection with the same client id is kicked (session takeover).
    /// A new persistent session past `maxSessions` is refused, and nothing changes.
    pub fn connect(
        &mut self,
        client_id: &Arc<str>,
        username: Option<Arc<str>>,
        clean_start: bool,
        expiry: u32,
        receive_max: usize,
        conn: ConnLink,
    ) -> Result<Connected, ConnectRefused> {
        let expiry = expiry.min(self.limits.max_session_expiry);
        let adds_persistent =
            expiry > 0 && self.sessions.get(client_id).is_none_or(|s| s.expiry == 0);
        if adds_persistent && self.persistent_sessions() >= self.limits.max_sessions {
            self.metrics.refused.sessions.inc();
            return Err(ConnectRefused::MaxSessions(self.limits.max_sessions));
        }
        self.changes = self.changes.wrapping_add(1);
        let mut session_present = false;
        // [MQTT-3.1.3-9]: a new connection within the will delay cancels the will.
        self.wills.cancel(client_id);
        if let Some(old) = self.sessions.get_mut(client_id) {
            if let Some(prev) = old.conn.take() {
                prev.kick(CloseReason::SessionTakenOver);
            }
            if clean_start || old.username != username {
                self.remove_session(client_id);
            } else {
                session_present = true;
            }
        }
        let max_inflight = receive_max.clamp(1, self.limits.max_inflight.max(1));
        let session = self
            .sessions
            .entry(client_id.clone())
            .or_insert_with(|| Session::new(username.clone()));
        session.username = username;
        session.expiry = expiry;
        session.disconnected_at = None;
        session.max_inflight = max_inflight;
        session.resend = session.inflight.keys().copied().collect();
        session.conn = Some(conn.clone());
        if session.has_pending() || !session.resend.is_empty() {
            conn.wake.notify_one();
        }
        self.update_gauges();
        Ok(Connected { session_present })
    }

    /// Persistent sessions kept (expiry above 0), connected or not; edgemq's own are
    /// not counted.
    fn persistent_sessions(&self) -> usize {
        self.sessions
            .values()
            .filter(|s| s.expiry > 0 && !s.trusted)
            .count()
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

    /// Attaches one of edgemq's own sessions (a bridge's local side): trusted (the ACL
    /// does not apply), kept until it disconnects, with its own in-flight window and
    /// queue bound rather than the broker's client limits.
    pub fn connect_internal(
        &mut self,
        client_id: &Arc<str>,
        conn: ConnLink,
        window: usize,
        max_queued: usize,
    ) {
        // Expiry 0: never refused by maxSessions.
        let _ = self.connect(client_id, None, true, 0, 1, conn);
        if let Some(s) = self.sessions.get_mut(client_id) {
            s.trusted = true;
            s.max_inflight = window.max(1);
            s.max_queued = Some(max_queued.max(1));
        }
    }

    /// Detaches connection `conn_id` from its session; a session with expiry 0 is removed.
    pub fn disconnect(&mut self, client_id: &str, conn_id: u64, expiry_override: Option<u32>) {
        self.changes = self.changes.wrapping_add(1);
        let Some(s) = self.sessions.get_mut(client_id) else {
            return;
        };
        if s.conn.as_ref().map(|c| c.id) != Some(conn_id) {
            return;
        }
        s.conn = None;
        // A session that was to end with its connection stays that way: MQTT 5 forbids
        // a DISCONNECT that turns expiry 0 into more ([MQTT-3.14.2-2]), and honouring it
        // would keep sessions `maxSessions` never counted.
        if let Some(e) = expiry_override.filter(|_| s.expiry > 0) {
            s.expiry = e.min(self.limits.max_session_expiry);
        }
        if s.expiry == 0 {
            self.remove_session(client_id);
        } else {
            s.disconnected_at = Some(Instant::now());
        }
        self.update_gauges();
    }

    fn remove_session(&mut self, client_id: &str) {
        if let Some(s) = self.sessions.remove(client_id) {
            for filter in s.subscriptions.keys() {
                self.index_remove(filter, client_id);
            }
        }
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

    /// The will of a connection of `client_id` that has ended (call after
    /// [`Router::disconnect`]): published now when it has no delay or the session is
    /// gone, held until the delay or the session's expiry runs out otherwise, and
    /// dropped when another connection has taken the session over meanwhile.
    /// `expiry` is the will's Message Expiry Interval.
    pub fn will(&mut self, client_id: &Arc<str>, will: Message, delay: u32, expiry: Option<u32>) {
        let now = Instant::now();
        let session = self.sessions.get(client_id);
        if delay > 0 && session.is_some_and(|s| s.conn.is_some()) {
            return;
        }
        match session.filter(|s| delay > 0 && s.expiry > 0) {
            Some(s) => {
                let due = now + Duration::from_secs(delay.min(s.expiry).into());
                self.wills.schedule(client_id.clone(), due, will, expiry);
            }
            None => {
                let mut will = will;
                will.expires_at = expiry.map(|e| now + Duration::from_secs(e.into()));
                self.publish(will);
            }
        }
    }

    /// Publishes the held wills whose delay has run out. Returns how many.
    pub fn publish_due_wills(&mut self, now: Instant) -> usize {
        let due = self.wills.take_due(now);
        let n = due.len();
        for w in due {
            self.publish(w);
        }
        n
    }

    /// Removes disconnected sessions whose expiry has passed. Returns how many.
    pub fn expire_sessions(&mut self, now: Instant) -> usize {
        let expired: Vec<Arc<str>> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.conn.is_none()
                    && s.disconnected_at.is_some_and(|at| {
                        now.duration_since(at) >= Duration::from_secs(s.expiry.into())
                    })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &expired {
            self.remove_session(k);
            // The session ended before the will delay: the will goes now.
            if let Some(w) = self.wills.take(k, now) {
                self.publish(w);
            }
        }
        if !expired.is_empty() {
            self.changes = self.changes.wrapping_add(1);
        }
        if !expired.is_empty() {
            self.update_gauges();
        }
        expired.len()
    }

    /// The connections of clients (not edgemq's own sessions), to tell them to go.
    pub fn client_links(&self) -> Vec<ConnLink> {
        self.sessions
            .values()
            .filter(|s| !s.trusted)
            .filter_map(|s| s.conn.clone())
            .collect()
    }

    /// Kicks every connection of `username` (`None`: anonymous clients).
    pub fn kick_user(&mut self, username: Option<&str>, reason: CloseReason) -> usize {
        let mut n = 0;
        for s in self.sessions.values_mut() {
            if s.username.as_deref() == username {
                if let Some(c) = s.conn.take() {
                    c.kick(reason);
                    n += 1;
                    s.disconnected_at = Some(Instant::now());
                }
            }
        }
        n
    }

    /// Kicks every client connection (not edgemq's own) for which `refuse(username,
    /// client id)` is true. Returns how many.
    pub fn kick_where(
        &mut self,
        refuse: impl Fn(Option<&str>, &str) -> bool,
        reason: CloseReason,
    ) -> usize {
        let mut n = 0;
        for (id, s) in self.sessions.iter_mut() {
            if s.trusted || !refuse(s.username.as_deref(), id) {
                continue;
            }
            if let Some(c) = s.conn.take() {
                c.kick(reason);
                n += 1;
                s.disconnected_at = Some(Instant::now());
            }
        }
        n
    }

    /// Kicks connection `conn_id` of `client_id`, if it is still the session's.
    pub fn kick_connection(&mut self, client_id: &str, conn_id: u64, reason: CloseReason) -> bool {
        let Some(s) = self.sessions.get_mut(client_id) else {
            return false;
        };
        if s.conn.as_ref().is_none_or(|c| c.id != conn_id) {
            return false;
        }
        if let Some(c) = s.conn.take() {
            c.kick(reason);
            s.disconnected_at = Some(Instant::now());
        }
        true
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
            let matching: Vec<Arc<Message>> = self
                .retained
                .values()
                .chain(self.sys_retained.values())
                .filter(|m| topic_matches(filter, m.topic_str()) && !m.expired(Instant::now()))
                .cloned()
                .collect();
            for m in matching {
                let allowed = {
                    let s = &self.sessions[client_id];
                    self.acl
                        .check(s.username.as_deref(), client_id, m.topic_str(), Op::Read)
                };
                if !allowed {
                    self.read_denied(client_id, m.topic_str());
                    continue;
                }
                let qos = m.qos.min(opts.qos);
                let max_backlog = self.limits.max_retained.max(1);
                let Some(s) = self.sessions.get_mut(client_id) else {
                    break;
                };
                if s.retained_backlog.len() >= max_backlog {
                    // Only a client re-subscribing faster than it reads gets here.
                    s.dropped += 1;
                    self.metrics.dropped_queue_full.inc();
                    continue;
                }
                s.retained_backlog.push_back(Delivery {
                    msg: m,
                    qos,
                    retain: true,
                    sub_ids: opts.id.into_iter().collect(),
                });
                if let Some(c) = &s.conn {
                    c.wake.notify_one();
                }
            }
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
        let msg = Arc::new(msg);
        if msg.retain {
            self.retain(&msg);
        }
        let topic = msg.topic_str();
        let matched = self.trie.matches(topic);
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
        for (client, Matched { opts, ids }) in matched.into_iter().chain(shared) {
            if opts.no_local && msg.origin.as_deref() == Some(&*client) {
                continue;
            }
            let Some(s) = self.sessions.get(&client) else {
                continue;
            };
            if !s.trusted
                && !self
                    .acl
                    .check(s.username.as_deref(), &client, topic, Op::Read)
            {
                self.read_denied(&client, topic);
                continue;
            }
            let qos = msg.qos.min(opts.qos);
            let retain = msg.retain && opts.retain_as_published;
            if self.enqueue(
                &client,
                Delivery {
                    msg: msg.clone(),
                    qos,
                    retain,
                    sub_ids: ids,
                },
            ) {
                delivered += 1;
            }
        }
        delivered
    }

    fn retain(&mut self, msg: &Arc<Message>) {
        // `$SYS` statistics are edgemq's own: kept apart from the retained store (not
        // persisted, not counted against maxRetainedMessages or in the metric).
        if msg.origin.is_none() && msg.topic.starts_with(b"$SYS/") {
            self.sys_retained.insert(msg.topic.clone(), msg.clone());
            return;
        }
        if msg.payload.is_empty() {
            if let Some(old) = self.retained.remove(&msg.topic) {
                self.retained_bytes -= message_bytes(&old);
                if let Some(p) = &self.persist {
                    let _ = p.send(RetainedChange::Clear(msg.topic.clone()));
                }
            }
        } else {
            let old = self.retained.get(&msg.topic).map(|m| message_bytes(m));
            let bytes = self.retained_bytes - old.unwrap_or(0) + message_bytes(msg);
            let refused = if old.is_none() && self.retained.len() >= self.limits.max_retained {
                self.metrics.refused.retained_messages.inc();
                Some(("maxRetainedMessages", self.limits.max_retained))
            } else if bytes > self.limits.max_retained_bytes {
                self.metrics.refused.retained_bytes.inc();
                Some(("maxRetainedBytes", self.limits.max_retained_bytes))
            } else {
                None
            };
            match refused {
                None => {
                    self.retained_bytes = bytes;
                    self.retained.insert(msg.topic.clone(), msg.clone());
                    if let Some(p) = &self.persist {
                        let _ = p.send(RetainedChange::Set(msg.clone()));
                    }
                }
                Some((setting, limit)) => {
                    self.retained_refused += 1;
                    let n = self.retained_refused;
                    if n.is_power_of_two() || n % 10_000 == 0 {
                        tracing::warn!(broker = %self.name, topic = %msg.topic_str(), limit, refused = n,
                            "retained message not kept: {setting} reached (delivered to the subscribers connected now; counted in edgemq_limit_refusals_total)");
                    }
                }
            }
        }
        self.metrics.retained.set(self.retained.len() as i64);
    }

    /// Counts a message the ACL keeps from `client_id`; the first one per session is
    /// logged with the reason, so a client that receives nothing can be explained.
    fn read_denied(&mut self, client_id: &str, topic: &str) {
        self.metrics.acl_denials.inc();
        let Some(s) = self.sessions.get_mut(client_id) else {
            return;
        };
        if !std::mem::replace(&mut s.denial_logged, true) {
            tracing::info!(broker = %self.name, client_id = %client_id, username = s.username.as_deref().unwrap_or(""), topic,
                reason = %denial_reason(s.username.as_deref(), Op::Read),
                "message not delivered: the ACL does not let this client read it (logged once per session; later ones are counted in edgemq_acl_denials_total)");
        }
    }

    /// Queues a delivery for a session, applying the queue bound. Returns whether it
    /// was queued.
    fn enqueue(&mut self, client_id: &Arc<str>, d: Delivery) -> bool {
        self.changes = self.changes.wrapping_add(1);
        let Some(s) = self.sessions.get_mut(client_id) else {
            return false;
        };
        let max_queued = s.max_queued.unwrap_or(self.limits.max_queued);
        if s.conn.is_none() && d.qos == 0 {
            self.metrics.dropped_offline_qos0.inc();
            return false;
        }
        let bytes = message_bytes(&d.msg);
        let by_count = s.queue.len() >= max_queued;
        // edgemq's own sessions (bridges) keep their own bounds.
        let by_bytes = !s.trusted
            && !s.queue.is_empty()
            && s.queued_bytes + bytes > self.limits.max_queued_bytes;
        if by_count || by_bytes {
            s.dropped += 1;
            self.metrics.dropped_queue_full.inc();
            if by_count {
                self.metrics.refused.queued_messages.inc();
            } else {
                self.metrics.refused.queued_bytes.inc();
            }
            if s.dropped == 1 || s.dropped.is_power_of_two() || s.dropped % 10_000 == 0 {
                tracing::warn!(
                    broker = %self.name,
                    client_id = %client_id,
                    dropped = s.dropped,
                    max_queued_messages = max_queued,
                    max_queued_bytes = self.limits.max_queued_bytes,
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
        let now = Instant::now();
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
            if d.msg.expired(now) {
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

    /// Every retained message (for persistence snapshots).
    pub fn retained_messages(&self) -> Vec<Arc<Message>> {
        self.retained.values().cloned().collect()
    }

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
            out.push((id.to_string(), saved::encode(s, left)));
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
            let Some(mut s) = saved::decode(&bytes) else {
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

    fn update_gauges(&self) {
        self.metrics.sessions.set(self.sessions.len() as i64);
    }
}
