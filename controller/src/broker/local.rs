//! A session inside the broker for edgemq's own code (a bridge's local side): it
//! subscribes, takes what the router delivers, acknowledges it once it is safe
//! elsewhere, publishes, and leaves — with no socket, and without reaching into the
//! router.

use std::sync::Arc;

use bytes::Bytes;

use super::types::{ConnLink, Delivery, Message, Outgoing, SubOptions, INTERNAL_CLIENT_PREFIX};
use super::Shared;

/// Messages the router may hold for a local session before it drops the oldest.
const MAX_QUEUED: usize = 100_000;

/// One of edgemq's own sessions in a broker.
pub struct LocalSession {
    shared: Arc<Shared>,
    client_id: Arc<str>,
    link: ConnLink,
    filters: Vec<String>,
}

/// What one [`LocalSession::take`] took: the deliveries, in order, and what
/// acknowledges them.
pub struct Taken {
    /// What the router delivered.
    pub deliveries: Vec<Delivery>,
    acks: Vec<Ack>,
}

impl Taken {
    /// Whether nothing was taken: no delivery and nothing to acknowledge.
    pub fn is_empty(&self) -> bool {
        self.deliveries.is_empty() && self.acks.is_empty()
    }
}

/// How a delivery is acknowledged: what a client would answer.
enum Ack {
    /// QoS 1: PUBACK.
    Puback(u16),
    /// QoS 2: PUBREC and, as its PUBREL is implied, PUBCOMP.
    Exactly(u16),
    /// A PUBREL retransmitted after a restart: PUBCOMP.
    Pubcomp(u16),
}

impl LocalSession {
    /// Opens `$edgemq/{name}` in `shared`'s broker, subscribed to each `(filter, qos)`.
    /// It is trusted (the ACL does not apply), never receives its own publishes, and
    /// takes retained messages only from the router's normal flow (not on subscribe).
    /// `window` is how many deliveries may await acknowledgement at once.
    pub fn open(
        shared: &Arc<Shared>,
        name: &str,
        filters: &[(String, u8)],
        window: usize,
    ) -> LocalSession {
        let client_id: Arc<str> = format!("{INTERNAL_CLIENT_PREFIX}{name}").into();
        let link = ConnLink::new(rand::random::<u64>() >> 1);
        let mut r = shared.router();
        r.connect_internal(&client_id, link.clone(), window, MAX_QUEUED);
        for (filter, qos) in filters {
            r.subscribe(
                &client_id,
                filter,
                SubOptions {
                    qos: *qos,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: 2,
                    id: None,
                },
            );
        }
        drop(r);
        LocalSession {
            shared: shared.clone(),
            client_id,
            link,
            filters: filters.iter().map(|(f, _)| f.clone()).collect(),
        }
    }

    /// Its client id.
    pub fn client_id(&self) -> &Arc<str> {
        &self.client_id
    }

    /// Whether it lives in `shared`'s broker.
    pub fn serves(&self, shared: &Arc<Shared>) -> bool {
        Arc::ptr_eq(&self.shared, shared)
    }

    /// Up to `max` deliveries the router holds for it (none: wait with
    /// [`LocalSession::delivered`]). They stay the router's until
    /// [`LocalSession::acknowledge`].
    pub fn take(&self, max: usize) -> Taken {
        let mut out = Vec::new();
        self.shared
            .router()
            .next_outgoing(&self.client_id, self.link.id, max, &mut out);
        let mut taken = Taken {
            deliveries: Vec::with_capacity(out.len()),
            acks: Vec::new(),
        };
        for o in out {
            match o {
                Outgoing::Publish { delivery, pkid, .. } => {
                    match (pkid, delivery.qos) {
                        (0, _) => {}
                        (p, 1) => taken.acks.push(Ack::Puback(p)),
                        (p, 2) => taken.acks.push(Ack::Exactly(p)),
                        (p, _) => taken.acks.push(Ack::Pubcomp(p)),
                    }
                    taken.deliveries.push(delivery);
                }
                Outgoing::PubRel(pkid) => taken.acks.push(Ack::Pubcomp(pkid)),
            }
        }
        taken
    }

    /// Hands what `taken` took over from the router: it will not be delivered again.
    pub fn acknowledge(&self, taken: Taken) {
        let mut r = self.shared.router();
        for ack in taken.acks {
            match ack {
                Ack::Puback(p) => {
                    r.puback(&self.client_id, p);
                }
                Ack::Exactly(p) => {
                    r.pubrec(&self.client_id, p);
                    r.pubcomp(&self.client_id, p);
                }
                Ack::Pubcomp(p) => {
                    r.pubcomp(&self.client_id, p);
                }
            }
        }
    }

    /// Returns when the router may hold something new for it.
    pub async fn delivered(&self) {
        self.link.wake.notified().await
    }

    /// Publishes into the broker as this session: its own subscriptions never get it
    /// back.
    pub fn publish(&self, topic: String, payload: Bytes, qos: u8, retain: bool) {
        self.shared.router().publish(Message {
            topic: Bytes::from(topic.into_bytes()),
            payload,
            qos,
            retain,
            properties: None,
            origin: Some(self.client_id.clone()),
            expires_at: None,
        });
    }

    /// Stops new deliveries; what the router already holds can still be taken.
    pub fn unsubscribe_all(&self) {
        let mut r = self.shared.router();
        for f in &self.filters {
            r.unsubscribe(&self.client_id, f);
        }
    }

    /// Leaves the broker; the session and whatever it still holds are removed.
    pub fn close(&self) {
        self.shared
            .router()
            .disconnect(&self.client_id, self.link.id, Some(0));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::atomic::AtomicU64;
    use std::sync::Mutex;

    use arc_swap::ArcSwap;

    use super::*;
    use crate::api::broker::Limits;
    use crate::auth::acl::Acl;
    use crate::broker::router::{Router, RouterLimits};
    use crate::broker::AuthConfig;
    use crate::metrics::BrokerMetrics;
    use crate::plan::AclPlan;

    fn shared() -> Arc<Shared> {
        let acl = Arc::new(Acl::new(&AclPlan::default()));
        Arc::new(Shared {
            key: "test/b".into(),
            router: Mutex::new(Router::new(
                "test/b",
                acl,
                RouterLimits::default(),
                BrokerMetrics::detached(),
            )),
            auth: ArcSwap::from_pointee(AuthConfig {
                allow_anonymous: true,
                users: HashMap::new(),
                certificate_users: HashSet::new(),
                client_ids: None,
            }),
            limits: ArcSwap::from_pointee(Limits::default()),
            metrics: BrokerMetrics::detached(),
            next_conn_id: AtomicU64::new(1),
            slots: Default::default(),
            certificate_connections: Mutex::new(HashMap::new()),
        })
    }

    fn publish(shared: &Shared, topic: &str, qos: u8) {
        shared.router().publish(Message {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::from_static(b"p"),
            qos,
            retain: false,
            properties: None,
            origin: None,
            expires_at: None,
        });
    }

    fn topics(t: &Taken) -> Vec<(&str, u8)> {
        t.deliveries
            .iter()
            .map(|d| (d.msg.topic_str(), d.qos))
            .collect()
    }

    #[test]
    fn what_is_taken_stays_the_routers_until_acknowledged() {
        let shared = shared();
        let s = LocalSession::open(&shared, "bridge/ns/b", &[("a/#".into(), 1)], 16);
        assert_eq!(&**s.client_id(), "$edgemq/bridge/ns/b");
        publish(&shared, "a/1", 1);
        publish(&shared, "b/1", 1);
        let first = s.take(16);
        assert_eq!(topics(&first), [("a/1", 1)]);
        // Not acknowledged: it is still the router's, and is not taken twice.
        assert!(s.take(16).is_empty());
        s.acknowledge(first);
        publish(&shared, "a/2", 2);
        let second = s.take(16);
        assert_eq!(
            topics(&second),
            [("a/2", 1)],
            "capped at the subscription's QoS"
        );
        s.acknowledge(second);
        assert!(s.take(16).is_empty());
    }

    #[test]
    fn its_own_publishes_do_not_come_back_and_others_get_them() {
        let shared = shared();
        let s = LocalSession::open(&shared, "bridge/ns/b", &[("a/#".into(), 2)], 16);
        let other = LocalSession::open(&shared, "other", &[("a/#".into(), 2)], 16);
        s.publish("a/x".into(), Bytes::from_static(b"in"), 2, false);
        assert!(s.take(16).is_empty());
        let got = other.take(16);
        assert_eq!(topics(&got), [("a/x", 2)]);
        assert_eq!(&got.deliveries[0].msg.payload[..], b"in");
        other.acknowledge(got);
        assert!(other.take(16).is_empty(), "QoS 2 completed in one step");
    }

    #[test]
    fn unsubscribe_all_keeps_what_was_held_and_close_removes_the_session() {
        let shared = shared();
        let s = LocalSession::open(&shared, "bridge/ns/b", &[("a/#".into(), 1)], 16);
        publish(&shared, "a/1", 1);
        s.unsubscribe_all();
        publish(&shared, "a/2", 1);
        let held = s.take(16);
        assert_eq!(topics(&held), [("a/1", 1)]);
        s.acknowledge(held);
        assert_eq!(shared.router().stats().subscriptions, 0);
        assert_eq!(shared.router().stats().sessions, 1);
        s.close();
        assert_eq!(shared.router().stats().sessions, 0);
    }
}
