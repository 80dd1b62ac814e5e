//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several controller
//! replicas exactly one acts.
//!
//! The holder renews the Lease every `duration / 3`; another replica takes it once
//! `renewTime + leaseDurationSeconds` has passed. Every write carries the
//! resourceVersion it read, so two replicas racing for an expired Lease cannot both
//! win. A holder that cannot renew before the Lease expires reports it lost and the
//! process exits (a restart starts clean); on a clean shutdown the holder releases the
//! Lease so a standby takes over at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease as LeaseObject, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::oneshot;

/// Seconds a Lease stays valid without renewal.
pub const LEASE_SECONDS: i32 = 15;

/// One replica's claim on a Lease.
#[derive(Clone)]
pub struct Lease {
    api: Api<LeaseObject>,
    name: String,
    identity: String,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// Whether a Lease held by someone else has expired at `now_s` (seconds).
pub fn expired(spec: &LeaseSpec, now_s: i64) -> bool {
    let Some(renew) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
    renew.0.as_second() + duration < now_s
}

/// Whether `identity` may take (or keep) the Lease now.
pub fn may_take(spec: Option<&LeaseSpec>, identity: &str, now_s: i64) -> bool {
    match spec {
        None => true,
        Some(s) => match s.holder_identity.as_deref() {
            None | Some("") => true,
            Some(h) if h == identity => true,
            Some(_) => expired(s, now_s),
        },
    }
}

impl Lease {
    /// The Lease `namespace/name`, claimed as `identity`.
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Lease {
        Lease {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
        }
    }

    /// One attempt to take or renew the Lease: `Ok(true)` when this replica holds it.
    async fn try_hold(&self) -> Result<bool, kube::Error> {
        let t = now();
        match self.api.get_opt(&self.name).await? {
            None => {
                let lease = LeaseObject {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(LEASE_SECONDS),
                        acquire_time: Some(t.clone()),
                        renew_time: Some(t),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let now_s = t.0.as_second();
                if !may_take(lease.spec.as_ref(), &self.identity, now_s) {
                    return Ok(false);
                }
                let spec = lease.spec.get_or_insert_with(Default::default);
                if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                    spec.holder_identity = Some(self.identity.clone());
                    spec.acquire_time = Some(t.clone());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(LEASE_SECONDS);
                spec.renew_time = Some(t);
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Waits until this replica holds the Lease, then keeps renewing it in the
    /// background. The returned receiver fires when the Lease is lost.
    pub async fn acquire(&self) -> anyhow::Result<oneshot::Receiver<()>> {
        let retry = Duration::from_secs(2);
        loop {
            match self.try_hold().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "Lease: could not read or write; retrying"),
            }
            tokio::time::sleep(retry).await;
        }
        let (tx, rx) = oneshot::channel();
        let me = self.clone();
        tokio::spawn(async move {
            let every = Duration::from_secs((LEASE_SECONDS / 3).max(1) as u64);
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(every).await;
                match me.try_hold().await {
                    Ok(true) => last_ok = tokio::time::Instant::now(),
                    Ok(false) => {
                        tracing::error!("Lease: another replica holds it now");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Lease: renewal failed");
                        if last_ok.elapsed() >= Duration::from_secs(LEASE_SECONDS as u64) {
                            break;
                        }
                    }
                }
            }
            let _ = tx.send(());
        });
        Ok(rx)
    }

    /// Gives the Lease up (clean shutdown), so a standby takes over without waiting
    /// for it to expire.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            if let Some(spec) = lease.spec.as_mut() {
                if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                    spec.holder_identity = None;
                    spec.renew_time = None;
                    let _ = self
                        .api
                        .replace(&self.name, &PostParams::default(), &lease)
                        .await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(who: &str, renewed_at: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(who.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                k8s_openapi::jiff::Timestamp::from_second(renewed_at).unwrap(),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_held_by_another_replica_is_taken_only_after_it_expires() {
        let spec = held_by("a", 1000);
        assert!(!may_take(Some(&spec), "b", 1010));
        assert!(!may_take(Some(&spec), "b", 1015));
        assert!(may_take(Some(&spec), "b", 1016));
        assert!(
            may_take(Some(&spec), "a", 1010),
            "the holder renews its own"
        );
        assert!(may_take(None, "b", 0), "no Lease yet");
        let released = LeaseSpec::default();
        assert!(
            may_take(Some(&released), "b", 0),
            "a released Lease is free"
        );
    }
}
