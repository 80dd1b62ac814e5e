//! The broker runtime: listeners, connections and routing for one Broker, driven by
//! its config bundle and changed live by [`BrokerRuntime::apply`].
//!
//! ```text
//!  listener (accept) ──► connection task: handshake, CONNECT, auth, then one loop:
//!                           ├─ packets in, answered ──► router (trie, sessions, retained)
//!                           └─ acks + deliveries out ◄── router wakes it
//! ```
//!
//! Users, ACL, limits and TLS certificates are swapped atomically; only the
//! connections a change concerns are closed (a removed or re-passworded user's, the
//! anonymous ones when anonymous access is withdrawn, those of a removed listener).

pub mod alias;
mod apply;
pub mod check;
pub mod client_cert;
pub mod codec;
pub mod connection;
pub mod listener;
pub mod local;
pub mod persist;
pub mod router;
pub mod shared_subs;
pub mod slots;
pub mod sys;
pub mod transport;
pub mod trie;
pub mod types;
pub mod will_delay;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::api::broker::Limits;
use crate::auth::acl::Acl;
use crate::auth::client_id::ClientIdPattern;
use crate::auth::passwd::PasswordHash;
use crate::metrics::{BrokerMetrics, Metrics};
use crate::plan::BrokerBundle;
use crate::tls::TlsMaterial;
use listener::ListenerHandle;
use router::{Router, RouterLimits, RouterStats};
use types::CloseReason;

/// How long [`BrokerRuntime::drain`] waits, after the last client was told, for the
/// connections to close before the stop goes on without them.
pub const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// What a TLS listener serves: its key pair and, with `clientAuth`, the client CA and
/// revocation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerMaterial {
    /// The listener's key pair.
    pub pair: TlsMaterial,
    /// The client CA, for a listener with `clientAuth`.
    pub client_ca: Option<client_cert::ClientCaMaterial>,
}

impl From<TlsMaterial> for ListenerMaterial {
    fn from(pair: TlsMaterial) -> ListenerMaterial {
        ListenerMaterial {
            pair,
            client_ca: None,
        }
    }
}

/// Who may connect.
pub struct AuthConfig {
    /// Clients without a username may connect.
    pub allow_anonymous: bool,
    /// Password hashes by username.
    pub users: HashMap<String, PasswordHash>,
    /// Certificate users: identities that log in with a client certificate.
    pub certificate_users: HashSet<String>,
    /// The Broker's `clientIdPattern`: which user each client id belongs to.
    pub client_ids: Option<ClientIdPattern>,
}

impl AuthConfig {
    /// Whether a client with `username` may use `client_id` (always, without a
    /// `clientIdPattern`).
    pub fn client_id_allowed(&self, username: Option<&str>, client_id: &str) -> bool {
        self.client_ids
            .as_ref()
            .is_none_or(|p| p.allows(username, client_id, self.users.keys().map(String::as_str)))
    }
}

/// State shared by the listeners and connections of one broker.
pub struct Shared {
    /// `namespace/name`.
    pub key: String,
    /// Routing state.
    pub router: Mutex<Router>,
    /// Users and anonymous access.
    pub auth: ArcSwap<AuthConfig>,
    /// Limits in force.
    pub limits: ArcSwap<Limits>,
    /// Metric handles.
    pub metrics: BrokerMetrics,
    /// Source of connection ids.
    pub next_conn_id: AtomicU64,
    /// Handshake and connection slots (`maxHandshakes`, `maxConnections`).
    pub slots: slots::Slots,
    /// Connections logged in with a client certificate, by connection id: checked
    /// again when their listener's CA or CRL changes.
    pub certificate_connections: Mutex<HashMap<u64, CertificateConnection>>,
}

/// A connection logged in with a client certificate.
pub struct CertificateConnection {
    /// Listener it came through.
    pub listener: Arc<str>,
    /// Its client id.
    pub client_id: Arc<str>,
    /// The chain it presented.
    pub chain: Arc<Vec<rustls::pki_types::CertificateDer<'static>>>,
}

impl Shared {
    /// The router, locked. A panic while holding the lock leaves consistent state
    /// behind (every router method completes its bookkeeping), so a poisoned lock is
    /// taken over rather than propagated.
    pub fn router(&self) -> std::sync::MutexGuard<'_, Router> {
        self.router.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Largest packet accepted: the payload limit plus room for topic and properties.
    pub fn max_packet_size(&self) -> usize {
        self.limits.load().max_payload_bytes as usize + 65_536 + 1024
    }
}

/// A configuration the broker refused; it keeps running on its last good one.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A TLS key pair could not be used.
    #[error("listener {listener}: {message}")]
    Tls {
        /// Listener name.
        listener: String,
        /// What is wrong.
        message: String,
    },
    /// A listener could not bind its address.
    #[error("listener {listener}: cannot listen on {bind}: {source}")]
    Bind {
        /// Listener name.
        listener: String,
        /// Address.
        bind: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A TLS listener has no key pair.
    #[error("listener {0}: its certificate is not available yet")]
    MissingTls(String),
    /// A password hash is malformed.
    #[error("user {0}: malformed password hash")]
    Hash(String),
    /// The `clientIdPattern` is malformed.
    #[error(transparent)]
    ClientIdPattern(#[from] crate::auth::client_id::InvalidPattern),
    /// The retained store could not be opened.
    #[error(transparent)]
    Store(#[from] persist::StoreError),
}

/// Status of one listener.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    /// Listener name.
    pub name: String,
    /// Bound address.
    pub address: String,
    /// `mqtt` or `websockets`.
    pub protocol: crate::api::broker::ListenerProtocol,
    /// Whether it serves TLS.
    pub tls: bool,
}

/// Status of a running broker.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStatus {
    /// Listeners.
    pub listeners: Vec<ListenerStatus>,
    /// Router counters.
    pub router: RouterStats,
    /// Hash of the bundle running now.
    pub config_hash: String,
}

/// One running broker.
pub struct BrokerRuntime {
    shared: Arc<Shared>,
    listeners: BTreeMap<String, ListenerHandle>,
    bundle: BrokerBundle,
    tls: BTreeMap<String, ListenerMaterial>,
    state_dir: Option<PathBuf>,
    persistence: Option<tokio::task::JoinHandle<()>>,
    /// Store and task saving persistent sessions, while persistence is on.
    session_saver: Option<(persist::RetainedStore, tokio::task::JoinHandle<()>)>,
    expiry_task: tokio::task::JoinHandle<()>,
    sys_task: tokio::task::JoinHandle<()>,
}

fn router_limits(l: &Limits) -> RouterLimits {
    RouterLimits {
        max_queued: l.max_queued_messages as usize,
        max_inflight: l.max_inflight.into(),
        max_session_expiry: l.session_expiry_seconds,
        max_retained: l.max_retained_messages as usize,
        max_retained_bytes: usize::try_from(l.max_retained_bytes).unwrap_or(usize::MAX),
        max_sessions: l.max_sessions as usize,
        max_subscriptions: l.max_subscriptions_per_client as usize,
        max_queued_bytes: usize::try_from(l.max_queued_bytes).unwrap_or(usize::MAX),
    }
}

fn auth_config(bundle: &BrokerBundle) -> Result<AuthConfig, ApplyError> {
    let mut users = HashMap::new();
    let mut certificate_users = HashSet::new();
    for (name, u) in &bundle.users {
        if u.certificate {
            certificate_users.insert(name.clone());
            continue;
        }
        let hash =
            PasswordHash::parse(&u.password_hash).map_err(|_| ApplyError::Hash(name.clone()))?;
        users.insert(name.clone(), hash);
    }
    let client_ids = bundle
        .client_id_pattern
        .as_deref()
        .map(ClientIdPattern::parse)
        .transpose()?;
    Ok(AuthConfig {
        allow_anonymous: bundle.allow_anonymous,
        users,
        certificate_users,
        client_ids,
    })
}

/// What a TLS listener serves: its rustls configuration and, with `clientAuth`, the
/// policy its client certificates are checked and mapped with.
pub fn serving(
    l: &crate::plan::ListenerPlan,
    m: &ListenerMaterial,
) -> Result<listener::TlsServing, String> {
    let client = match (&l.client_auth, &m.client_ca) {
        (None, _) => None,
        (Some(plan), Some(ca)) => Some(Arc::new(client_cert::ClientCertPolicy::new(plan, ca)?)),
        (Some(_), None) => return Err("its client CA is not available".into()),
    };
    let config = server_config_with(&m.pair, client.as_ref().map(|c| c.verifier.clone()))?;
    Ok(listener::TlsServing { config, client })
}

/// Builds a rustls server configuration from PEM material.
pub fn server_config(m: &TlsMaterial) -> Result<Arc<rustls::ServerConfig>, String> {
    server_config_with(m, None)
}

/// A rustls server configuration from PEM material, asking for client certificates
/// when a verifier is given.
fn server_config_with(
    m: &TlsMaterial,
    client: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = rustls_pemfile::certs(&mut m.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate found in the PEM".into());
    }
    let key = rustls_pemfile::private_key(&mut m.key_pem.as_bytes())
        .map_err(|e| format!("private key is not valid PEM: {e}"))?
        .ok_or("no private key found in the PEM")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not form a usable pair: {e}"))?;
    Ok(Arc::new(config))
}

impl BrokerRuntime {
    /// Starts a broker: opens persistence, binds every listener.
    pub async fn start(
        bundle: BrokerBundle,
        tls: BTreeMap<String, ListenerMaterial>,
        state_dir: Option<&Path>,
        metrics: &Metrics,
    ) -> Result<BrokerRuntime, ApplyError> {
        let key = format!("{}/{}", bundle.namespace, bundle.name);
        let broker_metrics = BrokerMetrics::new(metrics, &key);
        let acl = Arc::new(Acl::new(&bundle.acl));
        let router = Router::new(
            &key,
            acl,
            router_limits(&bundle.limits),
            broker_metrics.clone(),
        );
        let shared = Arc::new(Shared {
            key,
            router: Mutex::new(router),
            auth: ArcSwap::from_pointee(auth_config(&bundle)?),
            limits: ArcSwap::from_pointee(bundle.limits.clone()),
            metrics: broker_metrics,
            next_conn_id: AtomicU64::new(1),
            slots: slots::Slots::default(),
            certificate_connections: Mutex::new(HashMap::new()),
        });
        let expiry_task = tokio::spawn(expire_sessions(shared.clone()));
        let sys_task = tokio::spawn(sys::run(shared.clone()));
        let mut rt = BrokerRuntime {
            shared,
            listeners: BTreeMap::new(),
            bundle: BrokerBundle::default(),
            tls: BTreeMap::new(),
            state_dir: state_dir.map(Path::to_path_buf),
            persistence: None,
            session_saver: None,
            expiry_task,
            sys_task,
        };
        if let Err(e) = rt.apply(bundle, tls).await {
            rt.shutdown().await;
            return Err(e);
        }
        Ok(rt)
    }

    /// The bundle running now.
    pub fn bundle(&self) -> &BrokerBundle {
        &self.bundle
    }

    /// TLS material in use, by listener name.
    pub fn tls_material(&self) -> &BTreeMap<String, ListenerMaterial> {
        &self.tls
    }

    /// State shared with connections (for tests and the health check).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Runs the health probe: a publish/subscribe round trip through the router.
    pub fn probe(&self) -> bool {
        let nonce = rand::random::<u64>();
        self.shared.router().probe(nonce)
    }

    /// Status for `edgemq status` and the JSON endpoint.
    pub fn status(&self) -> RuntimeStatus {
        RuntimeStatus {
            listeners: self
                .listeners
                .values()
                .map(|h| ListenerStatus {
                    name: h.plan.name.clone(),
                    address: h.local_addr.to_string(),
                    protocol: h.plan.protocol,
                    tls: h.tls.is_some(),
                })
                .collect(),
            router: self.shared.router().stats(),
            config_hash: self.bundle.hash(),
        }
    }

    /// Tells every client to go before a stop: the listeners stop accepting (new
    /// connections are refused, so a client retrying reaches the broker that takes
    /// over), then each client connection is closed with DISCONNECT 0x8B (server
    /// shutting down; MQTT 3.1.1 has no server DISCONNECT, its socket just closes),
    /// `shutdownDisconnectRate` per second. 0x8B rather than 0x9C/0x9D (use another
    /// server / server moved): the client should come back to the same address, which
    /// the Service or the restarted process serves next. Returns how many clients were
    /// told, after their connections ended or [`DRAIN_WAIT`] passed.
    pub async fn drain(&self) -> usize {
        for h in self.listeners.values() {
            h.close();
        }
        let rate = self.shared.limits.load().shutdown_disconnect_rate.max(1);
        let gap = Duration::from_secs(1) / rate;
        let mut next = tokio::time::Instant::now();
        let mut told = 0;
        // Clients whose CONNECT was being handled as accepting stopped show up in the
        // next sweep.
        let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
        loop {
            let links = self.shared.router().client_links();
            let links: Vec<_> = links
                .into_iter()
                .filter(|l| l.close_reason().is_none())
                .collect();
            if links.is_empty() {
                break;
            }
            for link in links {
                tokio::time::sleep_until(next).await;
                link.kick(CloseReason::ServerShuttingDown);
                told += 1;
                next += gap;
            }
        }
        while self.shared.slots.connected() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!(broker = %self.shared.key, clients = told, rate, "clients told to disconnect (server shutting down)");
        told
    }

    /// Stops listeners, closes connections and flushes persistence.
    pub async fn shutdown(mut self) {
        for h in self.listeners.values() {
            h.stop();
        }
        self.expiry_task.abort();
        self.sys_task.abort();
        {
            let mut router = self.shared.router();
            router.set_persistence(None);
        }
        if let Some(task) = self.persistence.take() {
            let _ = task.await;
        }
        if let Some((store, task)) = self.session_saver.take() {
            task.abort();
            let _ = task.await;
            // The last snapshot: nothing a clean stop could keep is lost.
            let saved = self
                .shared
                .router()
                .snapshot_sessions(std::time::Instant::now());
            let n = saved.len();
            match tokio::task::spawn_blocking(move || store.save_sessions(&saved)).await {
                Ok(Ok(())) => {
                    self.shared.metrics.session_saves.inc();
                    tracing::info!(broker = %self.shared.key, sessions = n, "persistent sessions saved");
                }
                Ok(Err(e)) => {
                    tracing::error!(broker = %self.shared.key, error = %e, "could not save persistent sessions")
                }
                Err(e) => {
                    tracing::error!(broker = %self.shared.key, error = %e, "session saver failed")
                }
            }
        }
        tracing::info!(broker = %self.shared.key, "broker stopped");
    }
}

/// Saves the persistent sessions every [`persist::SESSION_SAVE_INTERVAL`] when one
/// changed (and while there are any, or were at the last save).
async fn save_sessions(shared: Arc<Shared>, store: persist::RetainedStore) {
    let mut tick = tokio::time::interval(persist::SESSION_SAVE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut saved_at, mut had_any) = (None, true);
    loop {
        tick.tick().await;
        let snapshot = {
            let router = shared.router();
            let changes = router.changes();
            if saved_at == Some(changes) {
                continue;
            }
            saved_at = Some(changes);
            router.snapshot_sessions_counted(std::time::Instant::now())
        };
        let (snapshot, messages) = snapshot;
        if snapshot.is_empty() && !had_any {
            continue;
        }
        had_any = !snapshot.is_empty();
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.save_sessions(&snapshot)).await {
            Ok(Ok(())) => {
                shared.metrics.session_saves.inc();
                shared.metrics.session_saved_messages.set(messages as i64);
            }
            Ok(Err(e)) => {
                tracing::error!(broker = %shared.key, error = %e, "could not save persistent sessions")
            }
            Err(e) => tracing::error!(broker = %shared.key, error = %e, "session saver failed"),
        }
    }
}

async fn expire_sessions(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = std::time::Instant::now();
        let (n, wills) = {
            let mut router = shared.router();
            (router.expire_sessions(now), router.publish_due_wills(now))
        };
        if wills > 0 {
            tracing::debug!(broker = %shared.key, wills, "delayed wills published");
        }
        if n > 0 {
            tracing::debug!(broker = %shared.key, expired = n, "sessions expired");
        }
    }
}
