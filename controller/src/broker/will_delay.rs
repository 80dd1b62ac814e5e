//! MQTT 5 Will Delay Interval (§3.1.3.2.2): a will with a delay is held after its
//! connection ends and published when the delay runs out or the session ends,
//! whichever comes first; a new connection to the session within the delay cancels
//! it [MQTT-3.1.3-9].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::types::Message;

#[derive(Debug)]
struct Pending {
    due: Instant,
    will: Message,
    /// Message Expiry Interval of the will, counted from its publication.
    expiry: Option<u32>,
}

/// Wills waiting for their delay, by client id.
#[derive(Debug, Default)]
pub struct PendingWills {
    by_client: HashMap<Arc<str>, Pending>,
}

impl PendingWills {
    /// Holds `will` of `client` until `due`. `expiry` is its Message Expiry Interval.
    pub fn schedule(&mut self, client: Arc<str>, due: Instant, will: Message, expiry: Option<u32>) {
        self.by_client.insert(client, Pending { due, will, expiry });
    }

    /// Drops the will held for `client` (it reconnected). Returns whether there was one.
    pub fn cancel(&mut self, client: &str) -> bool {
        self.by_client.remove(client).is_some()
    }

    /// Takes the will held for `client` at once (its session ended), ready to publish.
    pub fn take(&mut self, client: &str, now: Instant) -> Option<Message> {
        self.by_client.remove(client).map(|p| ready(p, now))
    }

    /// Takes every will whose delay has run out at `now`, ready to publish.
    pub fn take_due(&mut self, now: Instant) -> Vec<Message> {
        let due: Vec<Arc<str>> = self
            .by_client
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(c, _)| c.clone())
            .collect();
        due.iter().filter_map(|c| self.take(c, now)).collect()
    }

    /// No will is held.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }
}

fn ready(p: Pending, now: Instant) -> Message {
    let mut will = p.will;
    will.expires_at = p.expiry.map(|s| now + Duration::from_secs(s.into()));
    will
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn will(topic: &'static str) -> Message {
        Message {
            topic: Bytes::from_static(topic.as_bytes()),
            payload: Bytes::from_static(b"gone"),
            qos: 1,
            retain: false,
            properties: None,
            origin: None,
            expires_at: None,
        }
    }

    #[test]
    fn a_will_is_due_only_once_its_delay_has_run_out() {
        let mut w = PendingWills::default();
        let t0 = Instant::now();
        w.schedule(
            "a".into(),
            t0 + Duration::from_secs(5),
            will("a/will"),
            Some(60),
        );
        assert!(w.take_due(t0 + Duration::from_secs(4)).is_empty());
        let due = w.take_due(t0 + Duration::from_secs(5));
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].expires_at,
            Some(t0 + Duration::from_secs(65)),
            "the will's expiry counts from its publication"
        );
        assert!(w.is_empty());
    }

    #[test]
    fn a_reconnect_cancels_the_held_will() {
        let mut w = PendingWills::default();
        let t0 = Instant::now();
        w.schedule(
            "a".into(),
            t0 + Duration::from_secs(5),
            will("a/will"),
            None,
        );
        assert!(w.cancel("a"));
        assert!(w.take_due(t0 + Duration::from_secs(10)).is_empty());
    }
}
