//! [`BrokerRuntime::apply`]: a new bundle and TLS material, checked whole, then
//! committed live — users, ACL and limits swapped, listeners bound, restarted or
//! re-keyed, persistence switched — closing only the connections a change concerns.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::listener::{self, ListenerHandle, TlsServing};
use super::types::CloseReason;
use super::{
    auth_config, client_cert, persist, router_limits, save_sessions, serving, ApplyError,
    AuthConfig, BrokerRuntime, ListenerMaterial,
};
use crate::auth::acl::Acl;
use crate::plan::{BrokerBundle, ListenerPlan};

/// What a new bundle asks of the listeners before anything is committed: those bound
/// already (new ones, not yet accepting) and those to restart (changed, same port).
struct Bound {
    started: BTreeMap<String, ListenerHandle>,
    restart: Vec<ListenerPlan>,
}

impl Bound {
    /// Gives the ports back: an apply that fails leaves nothing behind.
    fn abandon(&self) {
        for h in self.started.values() {
            h.stop();
        }
    }
}

impl BrokerRuntime {
    /// Applies a new bundle and TLS material live. Everything is checked before
    /// anything changes: on error the broker keeps running on its previous config.
    /// Returns a description of each change made.
    pub async fn apply(
        &mut self,
        bundle: BrokerBundle,
        tls: BTreeMap<String, ListenerMaterial>,
    ) -> Result<Vec<String>, ApplyError> {
        let mut changes = Vec::new();
        // 1. Check: hashes and TLS material.
        let auth = auth_config(&bundle)?;
        let tls_configs = serving_configs(&bundle, &tls)?;
        // 2. Bind new listeners; 3. switch persistence. Either undoes the binds if it
        //    fails.
        let bound = self.bind_new(&bundle, &tls_configs).await?;
        if let Err(e) = self.switch_persistence(&bundle, &mut changes) {
            bound.abandon();
            return Err(e);
        }
        // 4. Commit. Nothing below fails.
        self.commit_auth(&bundle, auth, &mut changes);
        if self.bundle.acl != bundle.acl {
            self.shared
                .router()
                .set_acl(Arc::new(Acl::new(&bundle.acl)));
            changes.push("ACL replaced".into());
        }
        if self.bundle.limits != bundle.limits {
            self.shared
                .router()
                .set_limits(router_limits(&bundle.limits));
            self.shared.limits.store(Arc::new(bundle.limits.clone()));
            changes.push("limits changed".into());
        }
        self.commit_listeners(&bundle, bound, &tls_configs, &mut changes)
            .await;
        self.swap_tls(&bundle, &tls, &tls_configs, &mut changes);
        self.bundle = bundle;
        self.tls = tls;
        Ok(changes)
    }

    /// Binds the listeners `bundle` adds (not accepting yet). A changed listener on
    /// the same port must release its port first, so those are only listed, to be
    /// restarted after the others.
    async fn bind_new(
        &self,
        bundle: &BrokerBundle,
        tls_configs: &BTreeMap<String, Arc<TlsServing>>,
    ) -> Result<Bound, ApplyError> {
        let mut bound = Bound {
            started: BTreeMap::new(),
            restart: Vec::new(),
        };
        for l in &bundle.listeners {
            match self.listeners.get(&l.name) {
                Some(h)
                    if h.plan.bind == l.bind
                        && h.plan.protocol == l.protocol
                        && h.plan.tls.is_some() == l.tls.is_some() => {}
                Some(_) => bound.restart.push(l.clone()),
                None => {
                    let cfg = tls_configs.get(&l.name).cloned();
                    match listener::start(l.clone(), cfg, self.shared.clone()).await {
                        Ok(h) => {
                            bound.started.insert(l.name.clone(), h);
                        }
                        Err(source) => {
                            bound.abandon();
                            return Err(ApplyError::Bind {
                                listener: l.name.clone(),
                                bind: l.bind.clone(),
                                source,
                            });
                        }
                    }
                }
            }
        }
        Ok(bound)
    }

    /// Turns persistence on (opening the store and restoring retained messages and
    /// sessions from it) or off, as `bundle` asks.
    fn switch_persistence(
        &mut self,
        bundle: &BrokerBundle,
        changes: &mut Vec<String>,
    ) -> Result<(), ApplyError> {
        if bundle.persistence && self.persistence.is_none() {
            let Some(dir) = &self.state_dir else {
                tracing::warn!(broker = %self.shared.key, "persistence asked for but no state directory given; retained messages are kept in memory only");
                return Ok(());
            };
            let path = dir
                .join("brokers")
                .join(format!("{}_{}", bundle.namespace, bundle.name))
                .join("retained.redb");
            let store = persist::RetainedStore::open(&path)?;
            let msgs = store.load()?;
            let sessions = store.load_sessions()?;
            let (tx, task) = store.spawn_writer();
            let mut router = self.shared.router();
            let n = msgs.len();
            router.restore_retained(msgs);
            let (ns, nm) = router.restore_sessions(sessions);
            router.set_persistence(Some(tx));
            drop(router);
            self.persistence = Some(task);
            let saver = tokio::spawn(save_sessions(self.shared.clone(), store.clone()));
            self.session_saver = Some((store, saver));
            changes.push(format!(
                "persistence on ({n} retained messages, {ns} sessions holding {nm} messages restored from {})",
                path.display()
            ));
        } else if !bundle.persistence && self.persistence.is_some() {
            self.shared.router().set_persistence(None);
            self.persistence = None;
            if let Some((_, task)) = self.session_saver.take() {
                task.abort();
            }
            changes.push("persistence off".into());
        }
        Ok(())
    }

    /// Swaps in `auth`, first closing the connections it no longer admits: removed or
    /// re-passworded users, removed certificate users, anonymous clients when
    /// anonymous access is withdrawn, and client ids now bound to another user.
    fn commit_auth(&mut self, bundle: &BrokerBundle, auth: AuthConfig, changes: &mut Vec<String>) {
        let old_auth = self.shared.auth.load_full();
        for name in old_auth.users.keys() {
            let gone = !bundle.users.contains_key(name);
            let changed = self.bundle.users.get(name).map(|u| &u.password_hash)
                != bundle.users.get(name).map(|u| &u.password_hash);
            if gone || changed {
                let n = self
                    .shared
                    .router()
                    .kick_user(Some(name), CloseReason::CredentialsChanged);
                changes.push(format!(
                    "user {name} {} ({n} connection(s) closed)",
                    if gone { "removed" } else { "password changed" }
                ));
            }
        }
        for name in &old_auth.certificate_users {
            if !auth.certificate_users.contains(name) {
                let n = self
                    .shared
                    .router()
                    .kick_user(Some(name), CloseReason::CredentialsChanged);
                changes.push(format!(
                    "certificate user {name} removed ({n} connection(s) closed)"
                ));
            }
        }
        for name in bundle.users.keys() {
            if !old_auth.users.contains_key(name) && !old_auth.certificate_users.contains(name) {
                changes.push(format!("user {name} added"));
            }
        }
        if old_auth.allow_anonymous && !bundle.allow_anonymous {
            let n = self
                .shared
                .router()
                .kick_user(None, CloseReason::CredentialsChanged);
            changes.push(format!(
                "anonymous access withdrawn ({n} connection(s) closed)"
            ));
        }
        // Client ids now bound to another user (a pattern set or changed, a user added
        // whose name owns them): their connections close, as a changed user's do.
        if auth.client_ids.is_some()
            && (auth.client_ids != old_auth.client_ids
                || !bundle.users.keys().eq(self.bundle.users.keys()))
        {
            let n = self.shared.router().kick_where(
                |username, client_id| !auth.client_id_allowed(username, client_id),
                CloseReason::CredentialsChanged,
            );
            changes.push(format!(
                "clientIdPattern {} ({n} connection(s) on client ids of another user closed)",
                bundle.client_id_pattern.as_deref().unwrap_or("")
            ));
        }
        self.shared.auth.store(Arc::new(auth));
    }

    /// Stops removed listeners, opens the new ones (only now, with the restored
    /// sessions in place) and restarts the changed ones.
    async fn commit_listeners(
        &mut self,
        bundle: &BrokerBundle,
        bound: Bound,
        tls_configs: &BTreeMap<String, Arc<TlsServing>>,
        changes: &mut Vec<String>,
    ) {
        let wanted: Vec<&str> = bundle.listeners.iter().map(|l| l.name.as_str()).collect();
        let removed: Vec<String> = self
            .listeners
            .keys()
            .filter(|n| !wanted.contains(&n.as_str()))
            .cloned()
            .collect();
        for name in removed {
            if let Some(h) = self.listeners.remove(&name) {
                h.stop();
                changes.push(format!("listener {name} removed"));
            }
        }
        // New listeners accept only now, with the restored sessions in place.
        for (name, h) in bound.started {
            h.open();
            changes.push(format!("listener {name} added on {}", h.local_addr));
            self.listeners.insert(name, h);
        }
        for l in bound.restart {
            if let Some(h) = self.listeners.remove(&l.name) {
                h.stop();
            }
            // The old socket closes when its accept loop sees the stop; retry briefly.
            let cfg = tls_configs.get(&l.name).cloned();
            let mut last = None;
            for _ in 0..50 {
                match listener::start(l.clone(), cfg.clone(), self.shared.clone()).await {
                    Ok(h) => {
                        h.open();
                        changes.push(format!("listener {} restarted on {}", l.name, h.local_addr));
                        self.listeners.insert(l.name.clone(), h);
                        last = None;
                        break;
                    }
                    Err(e) => {
                        last = Some(e);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            if let Some(e) = last {
                tracing::error!(listener = %l.name, bind = %l.bind, error = %e, "listener could not be restarted");
            }
        }
    }

    /// Serves each TLS listener's new key pair or client policy to new handshakes
    /// (the socket stays), closing the connections a replaced client CA or CRL no
    /// longer accepts.
    fn swap_tls(
        &mut self,
        bundle: &BrokerBundle,
        tls: &BTreeMap<String, ListenerMaterial>,
        tls_configs: &BTreeMap<String, Arc<TlsServing>>,
        changes: &mut Vec<String>,
    ) {
        for (name, cfg) in tls_configs {
            let plan = bundle.listeners.iter().find(|l| &l.name == name);
            if let Some(h) = self.listeners.get_mut(name) {
                // A changed `clientAuth` (mode, identity, ...) is served to new
                // handshakes like a new certificate; the socket stays.
                let policy_changed = plan.is_some_and(|p| p.client_auth != h.plan.client_auth);
                if let Some(p) = plan {
                    h.plan = p.clone();
                }
                if policy_changed {
                    if let Some(slot) = &h.tls {
                        slot.store(cfg.clone());
                    }
                    changes.push(format!("listener {name}: clientAuth changed"));
                }
                if self.tls.get(name) != tls.get(name) {
                    if let Some(slot) = &h.tls {
                        slot.store(cfg.clone());
                        let old = self.tls.get(name);
                        if old.map(|m| &m.pair) != tls.get(name).map(|m| &m.pair) && old.is_some() {
                            changes.push(format!("listener {name}: certificate replaced"));
                        }
                        if old.is_some_and(|o| {
                            o.client_ca != tls.get(name).and_then(|m| m.client_ca.clone())
                        }) {
                            let n = self.recheck_client_certificates(name, cfg.client.as_deref());
                            changes.push(format!(
                                "listener {name}: client CA or CRL replaced ({n} connection(s) whose certificate it no longer accepts closed)"
                            ));
                        }
                    }
                }
            }
        }
    }

    /// Checks the certificates of the connections that came through `listener` against
    /// its new client policy (none: the listener stopped asking for certificates, and
    /// they stay); closes those it refuses. Returns how many were closed.
    fn recheck_client_certificates(
        &self,
        listener: &str,
        policy: Option<&client_cert::ClientCertPolicy>,
    ) -> usize {
        let Some(policy) = policy else { return 0 };
        let refused: Vec<(u64, Arc<str>, &'static str)> = {
            let conns = self
                .shared
                .certificate_connections
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            conns
                .iter()
                .filter(|(_, c)| &*c.listener == listener)
                .filter_map(|(id, c)| {
                    policy
                        .recheck(&c.chain)
                        .err()
                        .map(|why| (*id, c.client_id.clone(), why))
                })
                .collect()
        };
        let mut closed = 0;
        for (conn_id, client_id, why) in refused {
            self.shared.metrics.certificate_refused(why);
            tracing::info!(%listener, client_id = %client_id, reason = why,
                "client certificate no longer accepted (client CA or CRL replaced); connection closed");
            if self.shared.router().kick_connection(
                &client_id,
                conn_id,
                CloseReason::CredentialsChanged,
            ) {
                closed += 1;
            }
        }
        closed
    }
}

/// The TLS server configuration of each TLS listener of `bundle`, from `tls`: the
/// check that a key pair or client CA is usable, before anything changes.
fn serving_configs(
    bundle: &BrokerBundle,
    tls: &BTreeMap<String, ListenerMaterial>,
) -> Result<BTreeMap<String, Arc<TlsServing>>, ApplyError> {
    let mut configs = BTreeMap::new();
    for l in bundle.listeners.iter().filter(|l| l.tls.is_some()) {
        let m = tls
            .get(&l.name)
            .ok_or_else(|| ApplyError::MissingTls(l.name.clone()))?;
        let cfg = serving(l, m)
            .map(Arc::new)
            .map_err(|message| ApplyError::Tls {
                listener: l.name.clone(),
                message,
            })?;
        configs.insert(l.name.clone(), cfg);
    }
    Ok(configs)
}
