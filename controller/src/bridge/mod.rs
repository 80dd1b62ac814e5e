//! Bridges: store-and-forward links from a local broker to a remote MQTT broker.
//!
//! ```text
//!  local clients ──► router ──► bridge session ($edgemq/bridge/…, no-local subscriptions
//!                                  │            on the outbound local filters)
//!                                  ▼ local side: map topic, append to the disk queue
//!                            queue (redb, fsync per batch, bounded, drop-oldest)
//!                                  │ remote side: send in order, window of 256,
//!                                  ▼ remove on PUBACK/PUBCOMP
//!                               remote broker ──► inbound publishes ──► router
//! ```
//!
//! A bridge's local session is one of edgemq's own sessions in the local router; the
//! remote side is edgemq's own MQTT client (3.1.1 or 5) on the same rumqttd codec the
//! broker uses, reconnecting with exponential backoff and jitter. Each bridge runs
//! independently: changing or removing one never touches the broker or other bridges.

pub mod link;
pub mod queue;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::broker::local::{LocalSession, Taken};
use crate::broker::Shared;
use crate::metrics::{BridgeMetrics, Metrics};
use crate::plan::BridgePlan;
use link::{Backoff, Echoes, Ended};
use queue::{Queue, QueuedMessage};
use tls::ClientTls;

/// A bridge as it runs: the plan with secrets, address and TLS material resolved.
#[derive(Clone, PartialEq, Eq)]
pub struct ResolvedBridge {
    /// The plan.
    pub plan: BridgePlan,
    /// Remote host.
    pub host: String,
    /// Remote port.
    pub port: u16,
    /// Username on the remote.
    pub username: Option<String>,
    /// Password on the remote.
    pub password: Option<String>,
    /// TLS; `None` for plain text.
    pub tls: Option<ClientTls>,
}

impl std::fmt::Debug for ResolvedBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedBridge")
            .field(
                "bridge",
                &format!("{}/{}", self.plan.namespace, self.plan.name),
            )
            .field("remote", &format!("{}:{}", self.host, self.port))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// What status shows about a bridge.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeRuntimeStatus {
    /// `host:port` of the remote.
    pub remote: String,
    /// Client id used on the remote.
    pub client_id: String,
    /// Whether the link is up.
    pub connected: bool,
    /// When the link last went up or down (RFC 3339).
    pub since: Option<String>,
    /// Why the last connection failed or ended.
    pub last_error: Option<String>,
    /// When that happened (RFC 3339).
    pub last_error_time: Option<String>,
    /// Messages waiting in the outbound queue.
    pub queue_depth: u64,
    /// Bytes waiting in the outbound queue.
    pub queue_bytes: u64,
    /// Messages delivered to the remote (acknowledged) since start.
    pub forwarded_out: u64,
    /// Messages from the remote published locally since start.
    pub forwarded_in: u64,
    /// Messages dropped at the queue bound since start (the oldest go first).
    pub dropped: u64,
    /// Failed or ended connections since start.
    pub disconnects: u64,
}

#[derive(Default)]
struct LinkState {
    since: Option<String>,
    last_error: Option<String>,
    last_error_time: Option<String>,
}

/// The shared state of a running bridge.
pub struct Bridge {
    /// `namespace/name`.
    pub key: String,
    /// What it runs.
    pub config: ResolvedBridge,
    /// Its outbound queue.
    pub queue: Arc<Queue>,
    /// Woken when messages were queued.
    pub queued: Notify,
    /// Highest sequence number sent so far (later sends of it carry DUP).
    pub max_sent: AtomicU64,
    /// Its session in the local broker.
    local: LocalSession,
    echoes: Mutex<Echoes>,
    guard_echoes: bool,
    connected: AtomicBool,
    link: Mutex<LinkState>,
    out: AtomicU64,
    inbound: AtomicU64,
    dropped: AtomicU64,
    disconnects: AtomicU64,
    metrics: BridgeMetrics,
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Bridge {
    fn link(&self) -> MutexGuard<'_, LinkState> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the link going up or down (with why, when it went down).
    pub fn set_connected(&self, up: bool, reason: Option<String>) {
        let was = self.connected.swap(up, Ordering::AcqRel);
        self.metrics.connected.set(up as i64);
        let mut l = self.link();
        if was != up {
            l.since = Some(now_rfc3339());
        }
        if let Some(r) = reason {
            l.last_error = Some(r);
            l.last_error_time = Some(now_rfc3339());
        }
    }

    /// Records a problem that did not end the connection.
    pub fn set_error(&self, e: String) {
        let mut l = self.link();
        l.last_error = Some(e);
        l.last_error_time = Some(now_rfc3339());
    }

    /// `n` messages were delivered to the remote and left the queue.
    pub fn delivered_out(&self, n: u64) {
        self.out.fetch_add(n, Ordering::Relaxed);
        self.metrics.out.inc_by(n);
        self.update_queue_gauges();
    }

    fn update_queue_gauges(&self) {
        self.metrics.queue_messages.set(self.queue.len() as i64);
        self.metrics.queue_bytes.set(self.queue.bytes() as i64);
    }

    /// Whether echoes of sent messages must be recognized (MQTT 3.1.1 with both
    /// inbound and outbound rules).
    pub fn guards_echoes(&self) -> bool {
        self.guard_echoes
    }

    /// The fingerprints of recently sent messages.
    pub fn echoes(&self) -> MutexGuard<'_, Echoes> {
        self.echoes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A publish from the remote: mapped to its local topic and routed locally as the
    /// bridge's own message (so it never goes back out).
    pub fn inbound(&self, topic: &[u8], payload: Bytes, qos: u8, retain: bool) {
        let Ok(topic) = std::str::from_utf8(topic) else {
            return;
        };
        if self.guard_echoes && self.echoes().is_echo(topic, &payload) {
            return;
        }
        let Some(local) = self
            .config
            .plan
            .topics
            .iter()
            .find_map(|r| r.to_local(topic))
        else {
            return;
        };
        self.local.publish(local, payload, qos, retain);
        self.inbound.fetch_add(1, Ordering::Relaxed);
        self.metrics.inbound.inc();
    }

    /// The status as shown by `edgemq status` and `/status`.
    pub fn status(&self) -> BridgeRuntimeStatus {
        let l = self.link();
        BridgeRuntimeStatus {
            remote: format!("{}:{}", self.config.host, self.config.port),
            client_id: self.config.plan.client_id.clone(),
            connected: self.connected.load(Ordering::Acquire),
            since: l.since.clone(),
            last_error: l.last_error.clone(),
            last_error_time: l.last_error_time.clone(),
            queue_depth: self.queue.len(),
            queue_bytes: self.queue.bytes(),
            forwarded_out: self.out.load(Ordering::Relaxed),
            forwarded_in: self.inbound.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            disconnects: self.disconnects.load(Ordering::Relaxed),
        }
    }
}

/// A running bridge and its two tasks.
pub struct BridgeRuntime {
    bridge: Arc<Bridge>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Where a bridge keeps its queue in the state directory.
pub fn queue_path(state_dir: &Path, namespace: &str, name: &str) -> PathBuf {
    state_dir
        .join("bridges")
        .join(format!("{namespace}_{name}.redb"))
}

impl BridgeRuntime {
    /// Starts a bridge of the broker whose shared state is `shared`. Fails only on
    /// local problems (unusable TLS material, queue store not writable); an unreachable
    /// remote is retried in the background and shown in status.
    pub fn start(
        config: ResolvedBridge,
        shared: Arc<Shared>,
        state_dir: &Path,
        metrics: &Metrics,
    ) -> Result<BridgeRuntime, String> {
        let plan = &config.plan;
        let key = format!("{}/{}", plan.namespace, plan.name);
        let tls = match &config.tls {
            Some(t) => Some(tls::client_config(t)?),
            None => None,
        };
        let queue = Queue::open(
            &queue_path(state_dir, &plan.namespace, &plan.name),
            plan.queue_max_messages,
            plan.queue_max_bytes,
        )
        .map_err(|e| e.to_string())?;
        // The local session: subscribed to every outbound local filter.
        let outbound: Vec<(String, u8)> = plan
            .topics
            .iter()
            .filter(|t| t.outbound())
            .map(|t| (t.local_filter.clone(), t.qos))
            .collect();
        let local = LocalSession::open(
            &shared,
            &format!("bridge/{}/{}", plan.namespace, plan.name),
            &outbound,
            4096,
        );
        let guard_echoes = plan.protocol_version == crate::api::bridge::MqttVersion::V311
            && plan.topics.iter().any(|t| t.inbound())
            && plan.topics.iter().any(|t| t.outbound());
        let bridge = Arc::new(Bridge {
            key: key.clone(),
            config,
            queue: Arc::new(queue),
            queued: Notify::new(),
            max_sent: AtomicU64::new(0),
            local,
            echoes: Mutex::new(Echoes::default()),
            guard_echoes,
            connected: AtomicBool::new(false),
            link: Mutex::new(LinkState::default()),
            out: AtomicU64::new(0),
            inbound: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            metrics: BridgeMetrics::new(metrics, &key),
        });
        bridge.update_queue_gauges();
        let bound = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        bridge
            .metrics
            .queue_max_messages
            .set(bound(bridge.config.plan.queue_max_messages));
        bridge
            .metrics
            .queue_max_bytes
            .set(bound(bridge.config.plan.queue_max_bytes));
        bridge.metrics.connected.set(0);
        if !bridge.queue.is_empty() {
            tracing::info!(bridge = %key, queued = bridge.queue.len(), "bridge queue holds messages from before; they are sent first");
        }

        let (stop, stop_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(local_side(bridge.clone(), stop_rx.clone())),
            tokio::spawn(remote_side(bridge.clone(), tls, stop_rx)),
        ];
        tracing::info!(bridge = %key, remote = %format!("{}:{}", bridge.config.host, bridge.config.port), "bridge started");
        Ok(BridgeRuntime {
            bridge,
            stop,
            tasks,
        })
    }

    /// What it runs.
    pub fn config(&self) -> &ResolvedBridge {
        &self.bridge.config
    }

    /// Whether it belongs to this broker instance.
    pub fn serves(&self, shared: &Arc<Shared>) -> bool {
        self.bridge.local.serves(shared)
    }

    /// Status for `edgemq status` and `/status`.
    pub fn status(&self) -> BridgeRuntimeStatus {
        self.bridge.status()
    }

    /// Stops both sides: messages already taken from the local broker are in the
    /// queue on disk when this returns; the remote gets a DISCONNECT.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.bridge.metrics.connected.set(0);
        tracing::info!(bridge = %self.bridge.key, queued = self.bridge.queue.len(), "bridge stopped");
    }
}

/// Moves messages from the local session into the disk queue, then acknowledges them
/// to the router. A failed write is retried; the router holds the messages meanwhile.
async fn local_side(bridge: Arc<Bridge>, mut stop: watch::Receiver<bool>) {
    let mut stopping = false;
    loop {
        let taken = bridge.local.take(4096);
        if !taken.is_empty() {
            queue_taken(&bridge, taken).await;
            continue;
        }
        if stopping {
            break;
        }
        tokio::select! {
            _ = bridge.local.delivered() => {}
            _ = stop.changed() => {
                // No new messages; what the router holds is drained above, then we go.
                bridge.local.unsubscribe_all();
                stopping = true;
            }
        }
    }
    bridge.local.close();
    tracing::debug!(bridge = %bridge.key, "local side stopped");
}

/// Appends what the local session delivered, mapped to remote topics, to the disk
/// queue (retrying a failed write), then acknowledges it to the router.
async fn queue_taken(bridge: &Bridge, taken: Taken) {
    let msgs: Vec<QueuedMessage> = taken
        .deliveries
        .iter()
        .filter_map(|d| {
            let remote = bridge
                .config
                .plan
                .topics
                .iter()
                .find_map(|r| r.to_remote(d.msg.topic_str()))?;
            Some(QueuedMessage {
                topic: remote,
                payload: d.msg.payload.clone(),
                qos: d.qos,
                retain: d.retain,
            })
        })
        .collect();
    let msgs = Arc::new(msgs);
    loop {
        let q = bridge.queue.clone();
        let m = msgs.clone();
        match tokio::task::spawn_blocking(move || q.push(&m)).await {
            Ok(Ok(pushed)) => {
                if pushed.dropped > 0 {
                    bridge.dropped.fetch_add(pushed.dropped, Ordering::Relaxed);
                    bridge.metrics.dropped_queue_full.inc_by(pushed.dropped);
                    let total = bridge.dropped.load(Ordering::Relaxed);
                    if total == pushed.dropped
                        || total / 10_000 != (total - pushed.dropped) / 10_000
                    {
                        tracing::warn!(bridge = %bridge.key, dropped = total,
                            max_messages = bridge.config.plan.queue_max_messages,
                            max_bytes = bridge.config.plan.queue_max_bytes,
                            "bridge queue full: dropping the oldest messages");
                    }
                }
                break;
            }
            Ok(Err(e)) => {
                tracing::error!(bridge = %bridge.key, error = %e, "could not queue messages; retrying");
                bridge.set_error(format!("queue store: {e}"));
            }
            Err(e) => {
                tracing::error!(bridge = %bridge.key, error = %e, "queue writer failed; retrying");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bridge.local.acknowledge(taken);
    bridge.update_queue_gauges();
    bridge.queued.notify_one();
}

/// Keeps a connection to the remote, reconnecting with backoff.
async fn remote_side(
    bridge: Arc<Bridge>,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new();
    loop {
        if *stop.borrow() {
            break;
        }
        let started = Instant::now();
        // A bug in a session must not end the bridge: it counts as a failed connection.
        let ended = std::panic::AssertUnwindSafe(link::session(&bridge, tls.as_ref(), &mut stop))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Ended::Failed {
                reason: "internal error in the bridge session (see the log)".into(),
                connected: false,
            });
        match ended {
            Ended::Stopped => break,
            Ended::Failed { reason, connected } => {
                bridge.set_connected(false, Some(reason.clone()));
                bridge.disconnects.fetch_add(1, Ordering::Relaxed);
                bridge.metrics.disconnects.inc();
                if connected && started.elapsed() > Duration::from_secs(30) {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(bridge = %bridge.key, reason = %reason, retry_in_ms = delay.as_millis() as u64,
                    "bridge link down; messages for the remote stay queued");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
    bridge.set_connected(false, None);
}
