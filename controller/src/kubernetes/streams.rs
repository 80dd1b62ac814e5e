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

/// What a follower passes on to a controller that reads only the spec: an object whose
/// spec changed (a new `metadata.generation`, or one not seen yet) or that was deleted.
/// Status writes do not change what a Broker runs; without this, each MqttUser's own
/// status write (and each Bridge status the broker pod writes) reconciled its Broker
/// again.
pub struct SpecChanges<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    seen: Mutex<HashMap<ObjectRef<K>, Option<i64>>>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> SpecChanges<K> {
    /// A filter for the objects of `store`, the store the follower's watch fills.
    pub fn new(store: Store<K>) -> SpecChanges<K> {
        SpecChanges {
            store,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `obj`, just out of the watch, is a spec change or a deletion. A deleted
    /// object is no longer in the store: the watch puts an object out only after the
    /// store holds what it says.
    pub fn changed(&self, obj: &K) -> bool {
        let r = ObjectRef::from_obj(obj);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if self.store.get(&r).is_none() {
            seen.remove(&r);
            return true;
        }
        let generation = obj.meta().generation;
        seen.insert(r, generation) != Some(generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, generation: i64, status: &str) -> crate::api::MqttUser {
        let mut u = crate::api::MqttUser::new(
            name,
            crate::api::MqttUserSpec {
                broker_ref: "b".into(),
                ..Default::default()
            },
        );
        u.metadata.namespace = Some("ns".into());
        u.metadata.generation = Some(generation);
        u.status = Some(crate::api::MqttUserStatus {
            username: Some(status.into()),
            ..Default::default()
        });
        u
    }

    #[test]
    fn spec_changes_pass_status_writes_do_not_and_deletions_always_do() {
        use kube::runtime::reflector::store;
        use kube::runtime::watcher::Event;
        let (reader, mut writer) = store::<crate::api::MqttUser>();
        let f = SpecChanges::new(reader);
        let v1 = user("u", 1, "a");
        writer.apply_watcher_event(&Event::Apply(v1.clone()));
        assert!(f.changed(&v1), "first seen");
        let status_only = user("u", 1, "b");
        writer.apply_watcher_event(&Event::Apply(status_only.clone()));
        assert!(!f.changed(&status_only), "a status write");
        let v2 = user("u", 2, "b");
        writer.apply_watcher_event(&Event::Apply(v2.clone()));
        assert!(f.changed(&v2), "a spec change");
        writer.apply_watcher_event(&Event::Delete(v2.clone()));
        assert!(f.changed(&v2), "a deletion, same generation");
        let again = user("u", 2, "b");
        writer.apply_watcher_event(&Event::Apply(again.clone()));
        assert!(f.changed(&again), "created again after the deletion");
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
