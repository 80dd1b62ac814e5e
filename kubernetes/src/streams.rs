//! One watch per kind, shared by every controller that follows that kind.
//!
//! kube-runtime's own shared streams (`reflect_shared` and its subscribers) pass on
//! changes but not deletions, and a deleted MqttUser or Secret must reach its Broker
//! at once (a revocation is never held back). So each kind is watched once into its
//! store (`controller::reflect`: an object comes out only after the store holds it,
//! deletions included), and that one stream is copied here to each follower.

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::{Stream, StreamExt};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::Resource;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Changes a follower may be behind by before the watch waits for it: memory stays
/// bounded however many objects change at once.
const BUFFER: usize = 256;

/// Copies each object of `stream` to `N` followers, in order. Watch errors are logged
/// here (the reflector retries with backoff) and not copied. The task ends when the
/// watch ends or every follower is gone; the handle lets the caller stop it.
pub fn fan_out<K, const N: usize>(
    kind: &'static str,
    stream: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
) -> (
    [impl Stream<Item = Result<K, watcher::Error>> + Send + 'static; N],
    JoinHandle<()>,
)
where
    K: Clone + Send + 'static,
{
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..N).map(|_| mpsc::channel(BUFFER)).unzip();
    let task = tokio::spawn(copy(kind, stream, senders));
    let mut receivers = receivers.into_iter();
    let followers = std::array::from_fn(|_| follower(receivers.next().expect("N receivers")));
    (followers, task)
}

async fn copy<K: Clone>(
    kind: &'static str,
    stream: impl Stream<Item = Result<K, watcher::Error>>,
    senders: Vec<mpsc::Sender<Result<K, watcher::Error>>>,
) {
    futures_util::pin_mut!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(obj) => {
                let mut open = 0;
                for tx in &senders {
                    if tx.send(Ok(obj.clone())).await.is_ok() {
                        open += 1;
                    }
                }
                if open == 0 {
                    return;
                }
            }
            Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying"),
        }
    }
}

fn follower<K>(
    rx: mpsc::Receiver<Result<K, watcher::Error>>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Send + 'static,
{
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

/// Which Brokers an MqttUser or Bridge coming out of its watch concerns. A Broker reads
/// only their specs, so a status write concerns none (without this, each MqttUser's
/// own status write, and each Bridge status the broker pod writes, reconciled its
/// Broker again). A new spec (a new `metadata.generation`, or one not seen yet)
/// concerns the Broker it names and, when it moved, the one it named before, which
/// must drop it at once; a deletion concerns the Broker it named.
pub struct BrokerTriggers<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    /// Per object: the generation last passed on and the Broker it named.
    seen: Mutex<HashMap<ObjectRef<K>, Named>>,
}

/// An object's generation last passed on, and the Broker it named.
type Named = (Option<i64>, String);

impl<K: Resource<DynamicType = ()> + Clone + 'static> BrokerTriggers<K> {
    /// Triggers for the objects of `store`, the store the follower's watch fills.
    pub fn new(store: Store<K>) -> BrokerTriggers<K> {
        BrokerTriggers {
            store,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The names of the Brokers (in `obj`'s namespace) to reconcile for `obj`, which
    /// names `broker` and just came out of the watch. A deleted object is no longer in
    /// the store: the watch puts an object out only after the store holds what it
    /// says.
    pub fn brokers(&self, obj: &K, broker: &str) -> Vec<String> {
        let r = ObjectRef::from_obj(obj);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if self.store.get(&r).is_none() {
            let before = seen.remove(&r).map(|(_, b)| b);
            return std::iter::once(broker.to_string())
                .chain(before.filter(|b| b != broker))
                .collect();
        }
        let generation = obj.meta().generation;
        match seen.insert(r, (generation, broker.to_string())) {
            Some((g, _)) if g == generation => Vec::new(),
            Some((_, before)) if before != broker => vec![broker.to_string(), before],
            _ => vec![broker.to_string()],
        }
    }

    /// [`BrokerTriggers::brokers`] as references to reconcile.
    pub fn refs(&self, obj: &K, broker: &str) -> Vec<ObjectRef<edgemq::api::Broker>> {
        let ns = super::frame::namespace_of(obj);
        self.brokers(obj, broker)
            .iter()
            .map(|b| ObjectRef::new(b).within(&ns))
            .collect()
    }
}

/// Passes an object coming out of its watch on only when what a follower reads of it
/// (`read`) differs from what was last passed on, or when it is deleted: the MqttUser
/// controller reads a few facts of each Broker's status, and the Broker controller
/// writes that status many more times than those facts change (at 100 Brokers / 1,000
/// users each write reconciled all of a Broker's users again).
pub struct OnChange<K: Resource<DynamicType = ()> + 'static, T> {
    store: Store<K>,
    read: fn(&K) -> T,
    /// Per object: what was last passed on.
    seen: Mutex<HashMap<ObjectRef<K>, T>>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static, T: PartialEq> OnChange<K, T> {
    /// Changes of the objects of `store` (the store the follower's watch fills) that
    /// `read` tells apart.
    pub fn new(store: Store<K>, read: fn(&K) -> T) -> OnChange<K, T> {
        OnChange {
            store,
            read,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `obj`, which just came out of the watch, is to be passed on.
    pub fn changed(&self, obj: &K) -> bool {
        let r = ObjectRef::from_obj(obj);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if self.store.get(&r).is_none() {
            seen.remove(&r);
            return true;
        }
        let now = (self.read)(obj);
        let changed = seen.get(&r) != Some(&now);
        seen.insert(r, now);
        changed
    }
}

/// [`OnChange`] for a watch without a store (the Deployments a controller owns): the
/// objects of a watch's events whose `read` differs from what was last passed on, and
/// every deletion. After the watch lists again, only what the new list holds is
/// remembered.
pub struct Changes<K: Resource<DynamicType = ()> + 'static, T> {
    read: fn(&K) -> T,
    seen: HashMap<ObjectRef<K>, T>,
    /// While the watch lists again: what the new list holds so far.
    relisting: Option<HashMap<ObjectRef<K>, T>>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static, T: PartialEq> Changes<K, T> {
    pub fn new(read: fn(&K) -> T) -> Changes<K, T> {
        Changes {
            read,
            seen: HashMap::new(),
            relisting: None,
        }
    }

    /// The object of `event` to pass on, if any.
    pub fn pass(&mut self, event: watcher::Event<K>) -> Option<K> {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(HashMap::new());
                None
            }
            watcher::Event::InitDone => {
                if let Some(listed) = self.relisting.take() {
                    self.seen = listed;
                }
                None
            }
            watcher::Event::Delete(obj) => {
                self.seen.remove(&ObjectRef::from_obj(&obj));
                Some(obj)
            }
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                let r = ObjectRef::from_obj(&obj);
                let now = (self.read)(&obj);
                let changed = self.seen.get(&r) != Some(&now);
                match &mut self.relisting {
                    Some(listed) => {
                        listed.insert(r, now);
                    }
                    None => {
                        self.seen.insert(r, now);
                    }
                }
                changed.then_some(obj)
            }
        }
    }

    /// The objects of `events` to pass on.
    pub fn filter(
        mut self,
        events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    ) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
    where
        K: Send,
        T: Send + 'static,
    {
        events.filter_map(move |e| {
            futures_util::future::ready(match e {
                Ok(e) => self.pass(e).map(Ok),
                Err(e) => Some(Err(e)),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, generation: i64, status: &str, broker: &str) -> edgemq::api::MqttUser {
        let mut u = edgemq::api::MqttUser::new(
            name,
            edgemq::api::MqttUserSpec {
                broker_ref: broker.into(),
                ..Default::default()
            },
        );
        u.metadata.namespace = Some("ns".into());
        u.metadata.generation = Some(generation);
        u.status = Some(edgemq::api::MqttUserStatus {
            username: Some(status.into()),
            ..Default::default()
        });
        u
    }

    #[test]
    fn a_broker_follows_specs_and_deletions_of_its_users_not_their_status_writes() {
        use kube::runtime::reflector::store;
        use kube::runtime::watcher::Event;
        let (reader, mut writer) = store::<edgemq::api::MqttUser>();
        let t = BrokerTriggers::new(reader);
        let mut seen = |u: &edgemq::api::MqttUser| {
            writer.apply_watcher_event(&Event::Apply(u.clone()));
            t.brokers(u, &u.spec.broker_ref)
        };
        assert_eq!(seen(&user("u", 1, "a", "b")), ["b"], "first seen");
        assert!(seen(&user("u", 1, "z", "b")).is_empty(), "a status write");
        assert_eq!(seen(&user("u", 2, "z", "b")), ["b"], "a spec change");
        assert_eq!(
            seen(&user("u", 3, "z", "c")),
            ["c", "b"],
            "moved: the Broker it left must drop it"
        );
        let gone = user("u", 3, "z", "c");
        writer.apply_watcher_event(&Event::Delete(gone.clone()));
        assert_eq!(t.brokers(&gone, "c"), ["c"], "a deletion, same generation");
        let again = user("u", 3, "z", "c");
        writer.apply_watcher_event(&Event::Apply(again.clone()));
        assert_eq!(
            t.brokers(&again, "c"),
            ["c"],
            "created again after the deletion"
        );
    }

    #[test]
    fn only_a_change_of_what_is_read_or_a_deletion_is_passed_on() {
        use kube::runtime::reflector::store;
        use kube::runtime::watcher::Event;
        let (reader, mut writer) = store::<edgemq::api::MqttUser>();
        let t = OnChange::new(reader, |u: &edgemq::api::MqttUser| {
            u.spec.broker_ref.clone()
        });
        let mut seen = |u: &edgemq::api::MqttUser| {
            writer.apply_watcher_event(&Event::Apply(u.clone()));
            t.changed(u)
        };
        assert!(seen(&user("u", 1, "a", "b")), "first seen");
        assert!(!seen(&user("u", 1, "z", "b")), "what is read is unchanged");
        assert!(!seen(&user("u", 2, "z", "b")), "still unchanged");
        assert!(seen(&user("u", 3, "z", "c")), "what is read changed");
        let gone = user("u", 3, "z", "c");
        writer.apply_watcher_event(&Event::Delete(gone.clone()));
        assert!(t.changed(&gone), "a deletion");
        let again = user("u", 3, "z", "c");
        writer.apply_watcher_event(&Event::Apply(again.clone()));
        assert!(t.changed(&again), "created again after the deletion");
    }

    #[test]
    fn a_watch_without_a_store_passes_on_changes_of_what_is_read_and_deletions() {
        use kube::runtime::watcher::Event;
        let mut t = Changes::new(|u: &edgemq::api::MqttUser| u.spec.broker_ref.clone());
        let name = |o: Option<edgemq::api::MqttUser>| o.map(|u| u.spec.broker_ref);
        assert_eq!(
            name(t.pass(Event::Apply(user("u", 1, "a", "b")))),
            Some("b".into())
        );
        assert_eq!(
            name(t.pass(Event::Apply(user("u", 2, "z", "b")))),
            None,
            "unchanged"
        );
        assert_eq!(
            name(t.pass(Event::Apply(user("u", 3, "z", "c")))),
            Some("c".into())
        );
        assert_eq!(
            name(t.pass(Event::Delete(user("u", 3, "z", "c")))),
            Some("c".into()),
            "a deletion"
        );
        assert_eq!(
            name(t.pass(Event::Apply(user("u", 3, "z", "c")))),
            Some("c".into()),
            "created again after the deletion"
        );
        // Listed again: an unchanged object is not passed on, one changed while the
        // watch was down is, and what the list no longer holds is forgotten.
        t.pass(Event::Apply(user("v", 1, "a", "b")));
        assert!(t.pass(Event::Init).is_none());
        assert!(t.pass(Event::InitApply(user("u", 3, "z", "c"))).is_none());
        assert_eq!(
            name(t.pass(Event::InitApply(user("w", 1, "z", "d")))),
            Some("d".into())
        );
        assert!(t.pass(Event::InitDone).is_none());
        assert_eq!(
            t.seen.len(),
            2,
            "v, gone while the watch was down, is forgotten"
        );
        assert_eq!(
            name(t.pass(Event::Apply(user("v", 1, "a", "b")))),
            Some("b".into()),
            "v created again is new"
        );
    }

    #[tokio::test]
    async fn every_follower_gets_every_object_in_order_and_errors_stay_here() {
        let items: Vec<Result<u32, watcher::Error>> =
            vec![Ok(1), Err(watcher::Error::NoResourceVersion), Ok(2), Ok(3)];
        let ([a, b], task) = fan_out::<u32, 2>("Test", futures_util::stream::iter(items));
        let (a, b) = tokio::join!(a.collect::<Vec<_>>(), b.collect::<Vec<_>>());
        let ok = |v: Vec<Result<u32, watcher::Error>>| {
            v.into_iter().map(|r| r.unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(ok(a), [1, 2, 3]);
        assert_eq!(ok(b), [1, 2, 3]);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_follower_that_is_gone_does_not_stop_the_others() {
        let ([a, b], _task) =
            fan_out::<u32, 2>("Test", futures_util::stream::iter((0..1000).map(Ok)));
        drop(a);
        assert_eq!(b.map(|r| r.unwrap()).collect::<Vec<_>>().await.len(), 1000);
    }
}
