//! The life of one ACME Certificate, the same in both modes: issue when missing or
//! changed, sleep until the renewal time, renew; after a failure wait (10 s, doubling
//! up to 1 h) and retry, while the stored pair keeps serving. [`Tasks`] holds one such
//! task per Certificate and restarts it when its job changes.
//!
//! Where the pair and the account live is the [`AcmeStore`]'s business; `notify` is
//! called after every stored pair and every failure, so the caller refreshes status
//! (standalone: a reload; on a cluster: a reconcile of the Certificate).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::acme::{self, AcmeJob, AcmeStore};
use super::{cert_info, rfc3339};

/// First retry delay after a failed ACME issuance; it doubles with each failure.
const FIRST_RETRY: Duration = Duration::from_secs(10);
/// Longest delay between retries.
const LAST_RETRY: Duration = Duration::from_secs(3600);
/// A sleeping task wakes at least this often to look at the clock again.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// Progress of a background issuer, for status.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// An issuance is running now.
    pub issuing: bool,
    /// Failed attempts since the last success.
    pub failures: u32,
    /// Why the last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// When it failed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<String>,
    /// When the next attempt starts (RFC 3339), while retrying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
}

/// Called after a pair was stored or an attempt failed.
pub type Notify = Arc<dyn Fn() + Send + Sync>;

struct Task {
    job: AcmeJob,
    progress: Arc<Mutex<Progress>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for Task {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// One background task per Certificate, by key (`namespace/name`, or whatever the
/// caller uses to tell Certificates apart).
#[derive(Default)]
pub struct Tasks {
    tasks: Mutex<BTreeMap<String, Task>>,
}

impl Tasks {
    /// Makes sure `key` has a task for `job`, starting it (with `store`, made only
    /// then) or restarting it when the job changed. Returns its progress.
    pub fn ensure(
        &self,
        key: &str,
        job: &AcmeJob,
        store: impl FnOnce() -> Arc<dyn AcmeStore>,
        notify: Notify,
    ) -> Arc<Mutex<Progress>> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tasks.get(key) {
            if t.job == *job && !t.handle.is_finished() {
                return t.progress.clone();
            }
        }
        let progress: Arc<Mutex<Progress>> = Arc::default();
        let handle = tokio::spawn(run(job.clone(), store(), progress.clone(), notify));
        tasks.insert(
            key.to_string(),
            Task {
                job: job.clone(),
                progress: progress.clone(),
                handle,
            },
        );
        progress
    }

    /// Progress of the task of `key`, if it has one.
    pub fn progress(&self, key: &str) -> Option<Progress> {
        let tasks = self.tasks.lock().ok()?;
        let t = tasks.get(key)?;
        t.progress.lock().ok().map(|p| p.clone())
    }

    /// Stops the tasks whose key `keep` refuses.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.retain(|k, _| keep(k));
        }
    }
}

fn set(progress: &Mutex<Progress>, f: impl FnOnce(&mut Progress)) {
    if let Ok(mut p) = progress.lock() {
        f(&mut p);
    }
}

/// The task's loop (see the module's text).
async fn run(
    job: AcmeJob,
    store: Arc<dyn AcmeStore>,
    progress: Arc<Mutex<Progress>>,
    notify: Notify,
) {
    let request = job.request();
    loop {
        let now = time::OffsetDateTime::now_utc();
        let stored = store.stored().await.and_then(|s| {
            let info = cert_info(&s.material.cert_pem, job.renew_before, now).ok()?;
            Some((s.request == request, info))
        });
        if let Some((true, info)) = &stored {
            if !info.due(now) {
                let at = super::parse_rfc3339(&info.renewal_time).unwrap_or(now);
                let wait = Duration::try_from(at - now).unwrap_or_default();
                tokio::time::sleep(wait.min(MAX_SLEEP) + Duration::from_millis(10)).await;
                continue;
            }
        }
        set(&progress, |p| {
            p.issuing = true;
            p.next_attempt = None;
        });
        tracing::info!(certificate = %job.certificate, server = %job.issuer.server,
            reason = match &stored { None => "none stored", Some((false, _)) => "names or issuer changed", Some((true, _)) => "renewal time reached" },
            "requesting a certificate from the ACME server");
        let outcome = match acme::issue(&job, store.as_ref()).await {
            Ok(issued) => store
                .store(&issued, &request)
                .await
                .map(|()| issued)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(issued) => {
                let info = cert_info(&issued.material.cert_pem, job.renew_before, now);
                set(&progress, |p| *p = Progress::default());
                match info {
                    Ok(info) => {
                        tracing::info!(certificate = %job.certificate, serial = %info.serial,
                        not_after = %info.not_after, renewal_time = %info.renewal_time, "ACME certificate issued")
                    }
                    Err(e) => {
                        tracing::warn!(certificate = %job.certificate, error = %e, "ACME certificate issued but unreadable")
                    }
                }
                notify();
            }
            Err(e) => {
                let failures = progress.lock().map(|p| p.failures + 1).unwrap_or(1);
                let delay = FIRST_RETRY
                    .saturating_mul(1 << (failures - 1).min(20))
                    .min(LAST_RETRY);
                let next = time::OffsetDateTime::now_utc() + delay;
                set(&progress, |p| {
                    p.issuing = false;
                    p.failures = failures;
                    p.last_failure = Some(e.clone());
                    p.last_failure_time = Some(rfc3339(time::OffsetDateTime::now_utc()));
                    p.next_attempt = Some(rfc3339(next));
                });
                match &stored {
                    Some((_, info)) if info.due(now) => tracing::error!(
                        certificate = %job.certificate, error = %e, failures,
                        not_after = %info.not_after, expires_in_seconds = info.expires_in_seconds,
                        retry_in_seconds = delay.as_secs(),
                        "certificate renewal is failing and the certificate nears expiry; the current one keeps serving"),
                    Some(_) => {
                        tracing::error!(certificate = %job.certificate, error = %e, failures,
                        retry_in_seconds = delay.as_secs(),
                        "certificate could not be reissued; the current one keeps serving")
                    }
                    None => tracing::error!(certificate = %job.certificate, error = %e, failures,
                        retry_in_seconds = delay.as_secs(), "certificate could not be issued"),
                }
                notify();
                tokio::time::sleep(delay).await;
            }
        }
    }
}
/// Why an ACME Certificate has no pair yet.
pub fn not_issued_yet(p: &Progress, job: &AcmeJob) -> String {
    match &p.last_failure {
        Some(f) => format!(
            "not issued yet: {f} (attempt {}, next at {})",
            p.failures,
            p.next_attempt.as_deref().unwrap_or_default()
        ),
        None => format!("being issued by the ACME server {}", job.issuer.server),
    }
}
