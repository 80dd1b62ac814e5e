//! The broker-and-bridge runtime shared by both front doors: `edgemq run` (a folder)
//! and `edgemq broker` (a pod reading its bundle through the Kubernetes API).
//!
//! ```text
//!  bundles (plan) ──► resolve (TLS pairs, bridge credentials via Materials)
//!                        │
//!                        ▼
//!                  Engine::apply ──► BrokerRuntime (listeners, router) per Broker
//!                        │       └─► BridgeRuntime (disk queue, remote link) per Bridge
//!                        ▼
//!                  Applied: per-broker and per-bridge results, for a status sink
//! ```
//!
//! Everything is applied live: a broker whose bundle or key pairs changed gets
//! `BrokerRuntime::apply` (clients not concerned stay connected); a bridge is
//! restarted only when what it runs changed. A change that fails leaves the broker on
//! its previous configuration.

pub mod resolve;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::bridge::{BridgeRuntime, BridgeRuntimeStatus, ResolvedBridge};
use crate::broker::{BrokerRuntime, ListenerMaterial, RuntimeStatus};
use crate::metrics::Metrics;
use crate::plan::BrokerBundle;

pub use resolve::Materials;

/// What one Broker should run: its bundle with the material resolved.
#[derive(Debug)]
pub struct Desired {
    /// The plan's bundle.
    pub bundle: BrokerBundle,
    /// Key pairs (and client CAs) by listener name, or why they could not be resolved.
    pub tls: Result<BTreeMap<String, ListenerMaterial>, String>,
    /// Every Bridge of the Broker by `namespace/name`: what it runs, or why it cannot.
    pub bridges: BTreeMap<String, Result<ResolvedBridge, String>>,
}

/// Resolves every bundle's material. Bridges are resolved even when the listeners'
/// key pairs are missing, so their errors show on their own.
pub fn resolve_all(
    bundles: &BTreeMap<String, BrokerBundle>,
    m: &mut impl Materials,
) -> BTreeMap<String, Desired> {
    bundles
        .iter()
        .map(|(key, bundle)| {
            let tls = resolve::resolve_tls(bundle, m);
            let bridges = bundle
                .bridges
                .values()
                .map(|p| {
                    (
                        format!("{}/{}", p.namespace, p.name),
                        resolve::resolve_bridge(p, m),
                    )
                })
                .collect();
            (
                key.clone(),
                Desired {
                    bundle: bundle.clone(),
                    tls,
                    bridges,
                },
            )
        })
        .collect()
}

/// The outcome of one [`Engine::apply`].
#[derive(Debug, Default)]
pub struct Applied {
    /// Per Broker key: `Ok(hash)` of the bundle it runs now, or why the desired one is
    /// not running (the broker may still run its previous configuration).
    pub brokers: BTreeMap<String, Result<String, String>>,
    /// Per Bridge key: running as desired, or why not.
    pub bridges: BTreeMap<String, Result<(), String>>,
    /// Changes made, one line each (`Broker/ns/name: ...`).
    pub changes: Vec<String>,
    /// Errors, one line each.
    pub errors: Vec<String>,
}

/// The running brokers and bridges of this process.
pub struct Engine {
    state_dir: PathBuf,
    metrics: Arc<Metrics>,
    brokers: Mutex<BTreeMap<String, BrokerRuntime>>,
    bridges: Mutex<BTreeMap<String, BridgeRuntime>>,
}

impl Engine {
    /// An engine with nothing running. `state_dir` holds retained messages (when a
    /// Broker asks for persistence) and bridge queues.
    pub fn new(state_dir: &Path, metrics: Arc<Metrics>) -> Engine {
        Engine {
            state_dir: state_dir.to_path_buf(),
            metrics,
            brokers: Mutex::new(BTreeMap::new()),
            bridges: Mutex::new(BTreeMap::new()),
        }
    }

    /// Makes the running brokers and bridges what `desired` says. Brokers not in
    /// `desired` are stopped; Bridges not in any desired Broker are stopped and their
    /// queues removed (a Bridge that is declared but cannot run keeps its queue).
    pub async fn apply(&self, desired: BTreeMap<String, Desired>) -> Applied {
        let mut out = Applied::default();
        let mut brokers = self.brokers.lock().await;
        for (key, d) in &desired {
            let tls = match &d.tls {
                Ok(t) => t.clone(),
                Err(e) => {
                    out.errors.push(format!("Broker/{key}: {e}"));
                    out.brokers.insert(key.clone(), Err(e.clone()));
                    continue;
                }
            };
            let result = match brokers.get_mut(key) {
                Some(rt) if rt.bundle() == &d.bundle && rt.tls_material() == &tls => Ok(Vec::new()),
                Some(rt) => rt.apply(d.bundle.clone(), tls).await,
                None => match BrokerRuntime::start(
                    d.bundle.clone(),
                    tls,
                    Some(&self.state_dir),
                    &self.metrics,
                )
                .await
                {
                    Ok(rt) => {
                        brokers.insert(key.clone(), rt);
                        Ok(vec!["started".to_string()])
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(changes) => {
                    for c in changes {
                        tracing::info!(broker = %key, "{c}");
                        out.changes.push(format!("Broker/{key}: {c}"));
                    }
                    out.brokers.insert(key.clone(), Ok(d.bundle.hash()));
                }
                Err(e) => {
                    tracing::error!(broker = %key, error = %e, "change not applied; the broker keeps its last good configuration");
                    out.errors.push(format!("Broker/{key}: {e}"));
                    out.brokers.insert(key.clone(), Err(e.to_string()));
                }
            }
        }
        let removed: Vec<String> = brokers
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for key in removed {
            if let Some(rt) = brokers.remove(&key) {
                rt.shutdown().await;
                out.changes.push(format!("Broker/{key}: removed"));
            }
        }

        // Bridges: each one is compared on what it runs (plan plus resolved secrets,
        // address and TLS material) and restarted only when that changed.
        let mut bridges = self.bridges.lock().await;
        let mut wanted = BTreeMap::new();
        let mut declared = std::collections::BTreeSet::new();
        for (bkey, d) in &desired {
            for (key, r) in &d.bridges {
                declared.insert(key.clone());
                let Some(broker) = brokers
                    .get(bkey)
                    .filter(|_| out.brokers.get(bkey).is_some_and(|r| r.is_ok()))
                else {
                    out.bridges.insert(
                        key.clone(),
                        Err(format!("Broker {} is not running", d.bundle.name)),
                    );
                    continue;
                };
                match r {
                    Ok(cfg) => {
                        wanted.insert(key.clone(), (cfg.clone(), broker.shared().clone()));
                    }
                    Err(e) => {
                        tracing::error!(bridge = %key, error = %e, "bridge not started");
                        out.errors.push(format!("Bridge/{key}: {e}"));
                        out.bridges.insert(key.clone(), Err(e.clone()));
                    }
                }
            }
        }
        let keys: Vec<String> = bridges.keys().cloned().collect();
        for key in keys {
            let keep = wanted.get(&key).is_some_and(|(cfg, shared)| {
                bridges[&key].config() == cfg && bridges[&key].serves(shared)
            });
            if keep {
                continue;
            }
            if let Some(rt) = bridges.remove(&key) {
                rt.stop().await;
            }
            if !declared.contains(&key) {
                // The Bridge is gone from the configuration: so is its queue.
                let (ns, name) = key.split_once('/').unwrap_or(("default", &key));
                let path = crate::bridge::queue_path(&self.state_dir, ns, name);
                if std::fs::remove_file(&path).is_ok() {
                    tracing::info!(bridge = %key, "bridge removed with its queue");
                }
                crate::metrics::BridgeMetrics::forget(&self.metrics, &key);
                out.changes.push(format!("Bridge/{key}: removed"));
            }
        }
        for (key, (cfg, shared)) in wanted {
            if bridges.contains_key(&key) {
                out.bridges.insert(key, Ok(()));
                continue;
            }
            match BridgeRuntime::start(cfg, shared, &self.state_dir, &self.metrics) {
                Ok(rt) => {
                    bridges.insert(key.clone(), rt);
                    out.changes.push(format!("Bridge/{key}: started"));
                    out.bridges.insert(key, Ok(()));
                }
                Err(e) => {
                    tracing::error!(bridge = %key, error = %e, "bridge not started");
                    out.errors.push(format!("Bridge/{key}: {e}"));
                    out.bridges.insert(key, Err(e));
                }
            }
        }
        out
    }

    /// Keys of brokers whose publish/subscribe round trip failed (empty: healthy).
    pub async fn probe(&self) -> Vec<String> {
        let brokers = self.brokers.lock().await;
        brokers
            .iter()
            .filter(|(_, b)| !b.probe())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Live status of each running broker, by key.
    pub async fn broker_status(&self) -> BTreeMap<String, RuntimeStatus> {
        let brokers = self.brokers.lock().await;
        brokers
            .iter()
            .map(|(k, b)| (k.clone(), b.status()))
            .collect()
    }

    /// Live status of each running bridge, by key.
    pub async fn bridge_status(&self) -> BTreeMap<String, BridgeRuntimeStatus> {
        let bridges = self.bridges.lock().await;
        bridges
            .iter()
            .map(|(k, b)| (k.clone(), b.status()))
            .collect()
    }

    /// Tells every broker's clients to go (paced, see [`BrokerRuntime::drain`]), then
    /// stops every bridge (their queues hold what the clients published last), then
    /// every broker (saving sessions and retained messages).
    pub async fn shutdown(&self) {
        {
            let brokers = self.brokers.lock().await;
            futures_util::future::join_all(brokers.values().map(BrokerRuntime::drain)).await;
        }
        let mut bridges = self.bridges.lock().await;
        for (_, rt) in std::mem::take(&mut *bridges) {
            rt.stop().await;
        }
        drop(bridges);
        let mut brokers = self.brokers.lock().await;
        for (_, rt) in std::mem::take(&mut *brokers) {
            rt.shutdown().await;
        }
    }
}
