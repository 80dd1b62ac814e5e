//! Sessions: connecting (session takeover, `maxSessions`), disconnecting and expiry,
//! wills held for their delay, and the broker closing connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ConnectRefused, Connected, Router, Session};
use crate::broker::types::{CloseReason, ConnLink, Message};

impl Router {
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
}
