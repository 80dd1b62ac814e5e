//! Background AWS IoT work for standalone mode, so a reload never waits on the network.
//!
//! Each reload calls [`AwsIotJobs::reconcile`] with the loaded resources. For every
//! `awsIot` Certificate it reads the state directory (no network): the certificate on
//! disk is handed to Bridges at once. When AWS work is due (first issue, a changed
//! policy, a rotation, retiring the certificate a rotation replaced) a task runs
//! `awsiot::ensure` in the background and wakes the standalone loop when done, which
//! reloads and picks up the result. Failures are retried with a doubling backoff (30 s
//! to 10 min), at once when the spec or the Bridges change.
//!
//! A certificate replaced by a rotation is retired only after the new one has been
//! handed out by an earlier reload, so the Bridges have switched over first.
//!
//! Certificates that disappeared from the folder are cleaned up from their record in
//! the state directory, per their `deletionPolicy` (`awsiot::delete`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::awsiot::{self, Issued};
use super::{fleet, CertError};
use crate::api::certificate::DeletionPolicy;
use crate::api::Bridge;
use crate::aws::policy;
use crate::load::Resources;

const MIN_BACKOFF: Duration = Duration::from_secs(30);
/// First retry of a fleet provisioning: AWS IoT answers within seconds, and a device
/// waiting for its identity should not wait long after the network comes back.
const FLEET_MIN_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// Longest one background attempt may take before it counts as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);

/// Why one background attempt of a standalone `awsIot` Certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating, updating or rotating the certificate failed.
    #[error(transparent)]
    Issue(CertError),
    /// That work took longer than the attempt time-out (300 s).
    #[error("AWS IoT work did not finish within {}s", ATTEMPT_TIMEOUT.as_secs())]
    IssueTimeout,
    /// Removing the AWS IoT resources of a deleted Certificate failed.
    #[error(transparent)]
    Cleanup(CertError),
    /// That cleanup took longer than the attempt time-out (300 s).
    #[error("AWS IoT cleanup did not finish in time")]
    CleanupTimeout,
}

/// What status shows for an `awsIot` Certificate.
#[derive(Clone, Debug, Default)]
pub struct AwsIotState {
    /// The certificate Bridges use now.
    pub issued: Option<Issued>,
    /// Background work is running.
    pub working: bool,
    /// The last attempt's error (operation and AWS error code), if it failed.
    pub error: Option<String>,
    /// Seconds until the next attempt after a failure.
    pub retry_in_seconds: Option<u64>,
    /// Provisioned by claim (`fleetProvisioning`).
    pub fleet: bool,
    /// The last attempt was rejected by AWS IoT (not a network failure).
    pub rejected: bool,
    /// Failed attempts since the last success.
    pub failures: u32,
}

/// One Certificate's background attempts: whether one runs, for which spec, the last
/// error and when the next attempt is due (shared with the controller's fleet
/// provisioning).
#[derive(Default)]
pub struct Job {
    /// Whether an attempt runs now.
    pub running: bool,
    /// The spec of the last attempt.
    pub key: String,
    /// The last attempt's error.
    pub error: Option<String>,
    /// Failed attempts since the last success.
    pub failures: u32,
    /// When the next attempt is due after a failure.
    pub retry_at: Option<Instant>,
    /// Whether the last failure was a refusal (not an unreachable service).
    pub rejected: bool,
}

impl Job {
    /// Whether an attempt for `key` may start now.
    pub fn may_start(&self, key: &str, now: Instant) -> bool {
        !self.running && (self.key != key || self.retry_at.is_none_or(|t| now >= t))
    }

    fn finish(&mut self, result: Result<(), Error>) {
        let r = match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(e as _),
        };
        self.finish_from(r, MIN_BACKOFF)
    }

    /// Ends a fleet provisioning attempt: backoff from 5 s, and whether AWS IoT refused
    /// (rather than could not be reached). Returns when the next attempt is due.
    pub fn finish_fleet<T>(&mut self, result: &Result<T, fleet::FleetError>) -> Option<Instant> {
        let r = match result {
            Ok(_) => Ok(()),
            Err(e) => Err(e as _),
        };
        self.finish_from(r, FLEET_MIN_BACKOFF);
        self.rejected = matches!(result, Err(fleet::FleetError::Rejected { .. }));
        self.retry_at
    }

    /// Ends an attempt; a failure keeps its error's text for status and backs off.
    fn finish_from(&mut self, result: Result<(), &dyn std::error::Error>, min_backoff: Duration) {
        self.running = false;
        match result {
            Ok(()) => {
                self.error = None;
                self.failures = 0;
                self.retry_at = None;
            }
            Err(e) => {
                self.failures += 1;
                let backoff =
                    (min_backoff * 2u32.saturating_pow(self.failures - 1)).min(MAX_BACKOFF);
                self.retry_at = Some(Instant::now() + backoff);
                self.error = Some(e.to_string());
            }
        }
    }
}

/// Runs one fleet provisioning attempt, which counts as failed (unreachable) once it
/// takes longer than the attempt timeout.
pub async fn fleet_attempt<T>(
    attempt: impl std::future::Future<Output = Result<T, fleet::FleetError>>,
) -> Result<T, fleet::FleetError> {
    tokio::time::timeout(ATTEMPT_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(fleet::FleetError::Unreachable(format!(
                "provisioning did not finish within {}s",
                ATTEMPT_TIMEOUT.as_secs()
            )))
        })
}

#[derive(Default)]
struct Inner {
    issue: BTreeMap<(String, String), Job>,
    delete: BTreeMap<PathBuf, Job>,
    /// Certificate ids handed out by a reload (Bridges have them).
    handed_out: BTreeSet<String>,
}

/// The background AWS IoT work of one standalone runtime.
#[derive(Clone)]
pub struct AwsIotJobs {
    state: PathBuf,
    inner: Arc<Mutex<Inner>>,
    wake: mpsc::UnboundedSender<()>,
}

impl AwsIotJobs {
    /// Jobs writing into state directory `state`; `wake` asks for a reload when one
    /// ends.
    pub fn new(state: PathBuf, wake: mpsc::UnboundedSender<()>) -> AwsIotJobs {
        AwsIotJobs {
            state,
            inner: Arc::default(),
            wake,
        }
    }

    /// The state of every `awsIot` Certificate of `res`, by (namespace, name);
    /// starts the background work that is due, including the cleanup of Certificates
    /// no longer in `res` — except those `held` says may still exist (declared with a
    /// mistake): a mistake never deletes anything in AWS.
    pub fn reconcile(
        &self,
        res: &Resources,
        held: impl Fn(&(String, String)) -> bool,
    ) -> BTreeMap<(String, String), AwsIotState> {
        let now = time::OffsetDateTime::now_utc();
        let mut out = BTreeMap::new();
        let bridges: Vec<&Bridge> = res.bridges().map(|b| &b.object).collect();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut present = BTreeSet::new();
        for c in res.certificates() {
            let cert = &c.object;
            if cert.spec.issuer.aws_iot.is_none() {
                continue;
            }
            let id = (c.meta.namespace.clone(), c.meta.name.clone());
            present.insert(id.clone());
            if fleet::is_fleet(cert) {
                let secrets = super::Secrets(res.secret_values(&c.meta.namespace));
                let st = self.fleet(&mut inner, id.clone(), cert, secrets, now);
                out.insert(id, st);
                continue;
            }
            let using = policy::bridges_using(cert, bridges.iter().copied());
            let key = serde_json::to_string(&(
                &cert.spec,
                policy::grants(cert, &using).client_ids,
                using.iter().map(|b| &b.spec).collect::<Vec<_>>(),
            ))
            .unwrap_or_default();
            let mut st = AwsIotState::default();
            let mut start = false;
            match awsiot::cached(&self.state, cert, &using, now) {
                Ok(local) => {
                    let only_retiring = local.issued.as_ref().is_some_and(|i| {
                        awsiot::read_record(&super::cert_dir(&self.state, cert))
                            .ok()
                            .flatten()
                            .is_some_and(|r| !r.retiring.is_empty())
                            && i.info
                                .aws_iot
                                .as_ref()
                                .is_some_and(|a| !inner.handed_out.contains(&a.certificate_id))
                    });
                    if let Some(a) = local.issued.as_ref().and_then(|i| i.info.aws_iot.as_ref()) {
                        inner.handed_out.insert(a.certificate_id.clone());
                    }
                    // Retiring waits until the new certificate was handed out before.
                    start = local.needs_aws && !only_retiring;
                    st.issued = local.issued;
                }
                Err(e) => st.error = Some(e.to_string()),
            }
            let job = inner.issue.entry(id.clone()).or_default();
            let at = Instant::now();
            if start && job.may_start(&key, at) {
                job.running = true;
                job.key = key;
                let jobs = self.clone();
                let cert = cert.clone();
                let owned: Vec<Bridge> = using.iter().map(|b| (*b).clone()).collect();
                let credentials = awsiot::credentials(
                    cert.spec
                        .issuer
                        .aws_iot
                        .as_ref()
                        .and_then(|a| a.credentials_secret_ref.as_deref()),
                    &res.secret_values(&c.meta.namespace),
                );
                tokio::spawn(async move {
                    let refs: Vec<&Bridge> = owned.iter().collect();
                    let r = match credentials {
                        Ok(credentials) => {
                            tokio::time::timeout(
                                ATTEMPT_TIMEOUT,
                                awsiot::ensure(
                                    &jobs.state,
                                    &cert,
                                    &refs,
                                    credentials,
                                    time::OffsetDateTime::now_utc(),
                                ),
                            )
                            .await
                        }
                        Err(e) => Ok(Err(e)),
                    };
                    let r = match r {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(Error::Issue(e)),
                        Err(_) => Err(Error::IssueTimeout),
                    };
                    if let Err(e) = &r {
                        tracing::error!(certificate = %id.1, error = %e, "AWS IoT certificate not updated");
                    }
                    jobs.lock().issue.entry(id).or_default().finish(r);
                    let _ = jobs.wake.send(());
                });
            }
            let job = &inner.issue[&(c.meta.namespace.clone(), c.meta.name.clone())];
            st.working = job.running;
            if st.error.is_none() {
                st.error = job.error.clone();
            }
            st.retry_in_seconds = job
                .retry_at
                .filter(|_| job.error.is_some())
                .map(|t| t.saturating_duration_since(at).as_secs());
            out.insert((c.meta.namespace.clone(), c.meta.name.clone()), st);
        }
        // A job still running for a removed Certificate is kept until it ends, so the
        // cleanup below never runs at the same time as an issue.
        inner.issue.retain(|k, j| present.contains(k) || j.running);

        // Certificates gone from the folder: clean up per their deletion policy.
        for (dir, record) in awsiot::recorded(&self.state) {
            let id = (record.namespace.clone(), record.name.clone());
            let still_aws = res
                .certificate(&id.0, &id.1)
                .is_some_and(|c| c.spec.issuer.aws_iot.is_some());
            let issuing = inner.issue.get(&id).is_some_and(|j| j.running);
            if still_aws || issuing || held(&id) || record.deletion_policy == DeletionPolicy::Retain
            {
                continue;
            }
            let job = inner.delete.entry(dir.clone()).or_default();
            if job.may_start("delete", Instant::now()) {
                job.running = true;
                job.key = "delete".into();
                let jobs = self.clone();
                // The access keys the record names, while their Secret is still loaded;
                // else the standard chain.
                let credentials = awsiot::credentials(
                    record.credentials_secret.as_deref(),
                    &res.secret_values(&record.namespace),
                )
                .ok()
                .flatten();
                tokio::spawn(async move {
                    let r =
                        tokio::time::timeout(ATTEMPT_TIMEOUT, awsiot::delete(&dir, credentials))
                            .await;
                    let r = match r {
                        Ok(Ok(d)) => {
                            tracing::info!(
                                certificate = %id.1,
                                actions = d.actions.len(),
                                "AWS IoT resources of a deleted Certificate removed"
                            );
                            Ok(())
                        }
                        Ok(Err(e)) => Err(Error::Cleanup(e)),
                        Err(_) => Err(Error::CleanupTimeout),
                    };
                    if let Err(e) = &r {
                        tracing::error!(certificate = %id.1, error = %e, "AWS IoT cleanup of a deleted Certificate failed; will retry");
                    }
                    let mut inner = jobs.lock();
                    match r {
                        Ok(()) => {
                            inner.delete.remove(&dir);
                        }
                        Err(e) => inner.delete.entry(dir).or_default().finish(Err(e)),
                    }
                });
            }
        }
        out
    }

    /// The state of a `fleetProvisioning` Certificate; provisioning starts in the
    /// background while nothing is on disk, and is retried with backoff (5 s doubling
    /// to 10 min), at once when the spec changes.
    fn fleet(
        &self,
        inner: &mut Inner,
        id: (String, String),
        cert: &crate::api::Certificate,
        secrets: super::Secrets,
        now: time::OffsetDateTime,
    ) -> AwsIotState {
        let mut st = AwsIotState {
            fleet: true,
            ..AwsIotState::default()
        };
        let start = match fleet::cached(&self.state, cert, now) {
            Ok(Some(i)) => {
                st.issued = Some(i);
                false
            }
            Ok(None) => true,
            Err(e) => {
                st.error = Some(e.to_string());
                false
            }
        };
        let key = serde_json::to_string(&cert.spec).unwrap_or_default();
        let job = inner.issue.entry(id.clone()).or_default();
        let at = Instant::now();
        if start && job.may_start(&key, at) {
            job.running = true;
            job.key = key;
            let jobs = self.clone();
            let cert = cert.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let r = fleet_attempt(fleet::ensure(&jobs.state, &cert, &secrets)).await;
                if let Err(e) = &r {
                    tracing::error!(certificate = %id.1, error = %e, "device not provisioned; will retry");
                }
                let retry_at = jobs.lock().issue.entry(id).or_default().finish_fleet(&r);
                let _ = jobs.wake.send(());
                // Reloads come at least once a minute; the retry should not wait for one.
                if let Some(at) = retry_at {
                    tokio::time::sleep_until(at.into()).await;
                    let _ = jobs.wake.send(());
                }
            });
        }
        let job = &inner.issue[&id];
        st.working = job.running;
        st.failures = job.failures;
        if st.error.is_none() && st.issued.is_none() {
            st.error = job.error.clone();
            st.rejected = job.rejected && job.error.is_some();
        }
        st.retry_in_seconds = job
            .retry_at
            .filter(|_| job.error.is_some() && st.issued.is_none())
            .map(|t| t.saturating_duration_since(at).as_secs());
        st
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_doubling_and_a_changed_spec_retries_at_once() {
        let mut j = Job {
            running: true,
            key: "a".into(),
            ..Job::default()
        };
        assert!(!j.may_start("a", Instant::now()), "never twice at once");
        j.finish(Err(Error::Issue(CertError::Invalid("slow down".into()))));
        assert_eq!(j.error.as_deref(), Some("invalid certificate: slow down"));
        let first = j.retry_at.unwrap();
        assert!(!j.may_start("a", Instant::now()));
        assert!(
            j.may_start("b", Instant::now()),
            "a changed spec retries at once"
        );
        assert!(j.may_start("a", first));
        j.running = true;
        j.finish(Err(Error::IssueTimeout));
        let wait = j.retry_at.unwrap() - Instant::now();
        assert!(wait > MIN_BACKOFF && wait <= MIN_BACKOFF * 2, "{wait:?}");
        for _ in 0..10 {
            j.finish(Err(Error::IssueTimeout));
        }
        assert!(j.retry_at.unwrap() - Instant::now() <= MAX_BACKOFF);
        j.finish(Ok(()));
        assert_eq!((j.failures, j.error.clone(), j.retry_at), (0, None, None));
        assert!(j.may_start("a", Instant::now()));
    }
}
