//! The broker's plain data types: a routed message, subscription options, what a
//! connection sends, and the link through which the router wakes or closes
//! a connection. A leaf: nothing here imports the rest of `broker/`, so the router,
//! the subscription trie, shared subscriptions, held wills, persistence, `$SYS` and
//! bridges all build on it without importing one another.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use rumqttd::protocol::PublishProperties;

/// Client ids of edgemq's own sessions start with this; MQTT clients may not use it.
pub const INTERNAL_CLIENT_PREFIX: &str = "$edgemq/";

/// A message as routed: shared by every session it is delivered to.
#[derive(Debug)]
pub struct Message {
    /// Topic name (valid UTF-8, checked at ingress).
    pub topic: Bytes,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: u8,
    /// Retain flag it was published with.
    pub retain: bool,
    /// MQTT 5 properties forwarded to subscribers; boxed, as most messages have none
    /// and a message is moved whole a few times on its way in.
    pub properties: Option<Box<PublishProperties>>,
    /// Client id of the publisher, for MQTT 5 no-local subscriptions.
    pub origin: Option<Arc<str>>,
    /// When its MQTT 5 Message Expiry Interval runs out: not delivered after that.
    pub expires_at: Option<Instant>,
}

impl Message {
    /// Whether its message expiry interval has run out at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// The topic as text.
    pub fn topic_str(&self) -> &str {
        std::str::from_utf8(&self.topic).unwrap_or("")
    }
}

/// Options of one subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubOptions {
    /// Maximum QoS granted.
    pub qos: u8,
    /// MQTT 5: do not deliver the client's own messages.
    pub no_local: bool,
    /// MQTT 5: keep the retain flag on forwarded messages.
    pub retain_as_published: bool,
    /// MQTT 5 retain handling: 0 send retained on subscribe, 1 only for a new
    /// subscription, 2 never.
    pub retain_handling: u8,
    /// MQTT 5 Subscription Identifier, sent with every message it matches.
    pub id: Option<u32>,
}

/// One message waiting for, or in flight to, a session.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The message.
    pub msg: Arc<Message>,
    /// QoS it is delivered at.
    pub qos: u8,
    /// Retain flag it is delivered with.
    pub retain: bool,
    /// MQTT 5 identifiers of the subscriptions it matched.
    pub sub_ids: Vec<u32>,
}

/// Why a connection is being closed by the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Another connection took over the session (same client id).
    SessionTakenOver,
    /// The user was removed, its password changed, or anonymous access withdrawn.
    CredentialsChanged,
    /// The listener was removed.
    ListenerRemoved,
    /// The broker is shutting down.
    ServerShuttingDown,
}

/// The router's handle on a connection: a wake-up for queued messages and a close
/// signal.
#[derive(Clone, Debug)]
pub struct ConnLink {
    /// Unique id of the connection.
    pub id: u64,
    /// Woken when the session has something to send, and when the connection must
    /// close.
    pub wake: Arc<Wake>,
    /// Why the connection must close: set once, by the first [`ConnLink::kick`].
    close: Arc<OnceLock<CloseReason>>,
}

impl ConnLink {
    /// A new link with id `id`.
    pub fn new(id: u64) -> ConnLink {
        ConnLink {
            id,
            wake: Arc::new(Wake::default()),
            close: Arc::new(OnceLock::new()),
        }
    }

    /// Asks the connection to close. The first reason given is the one its client is
    /// told; the connection sees it at its next wake-up.
    pub fn kick(&self, reason: CloseReason) {
        let _ = self.close.set(reason);
        self.wake.notify_one();
    }

    /// Why the connection was asked to close, if it was.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close.get().copied()
    }
}

/// The wake-up of one waiting task (a connection's loop), kept until it is taken.
///
/// Cheaper than tokio's `Notify` where it is polled on every pass of a connection's
/// loop: a poll while nothing is pending is an atomic load and a waker registration,
/// where a waiting `Notified` takes the `Notify`'s lock on every poll. Only one task
/// may wait at a time.
#[derive(Debug, Default)]
pub struct Wake {
    set: AtomicBool,
    waker: AtomicWaker,
}

impl Wake {
    /// Wakes the waiting task, or the next one to wait.
    pub fn notify_one(&self) {
        self.set.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once after each [`Wake::notify_one`] (several before a poll count as one).
    pub fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.take() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A notify between the check and the registration woke nobody: check again.
        if self.take() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Waits for [`Wake::notify_one`].
    pub async fn notified(&self) {
        std::future::poll_fn(|cx| self.poll_notified(cx)).await
    }

    fn take(&self) -> bool {
        self.set.load(Ordering::Relaxed) && self.set.swap(false, Ordering::Acquire)
    }
}

/// Something a connection must send.
#[derive(Debug)]
pub enum Outgoing {
    /// A PUBLISH (`pkid` 0 for QoS 0).
    Publish {
        /// What to send.
        delivery: Delivery,
        /// Packet id.
        pkid: u16,
        /// Whether this is a retransmission.
        dup: bool,
    },
    /// A PUBREL retransmitted after reconnect.
    PubRel(u16),
}

/// A change to the retained store, for persistence.
#[derive(Debug, Clone)]
pub enum RetainedChange {
    /// A retained message was set.
    Set(Arc<Message>),
    /// The retained message of a topic was cleared.
    Clear(Bytes),
}
