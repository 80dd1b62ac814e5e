//! The certificate manager: what a reload asks for a Certificate's key pair.
//!
//! `selfSigned` and `ca` certificates are made in place (local and fast). ACME
//! certificates never block a reload: the reload gets the stored pair at once, and one
//! background task per Certificate issues it when it is missing, renews it at its
//! renewal time, and retries failures with backoff while the stored pair keeps
//! serving. When a new pair is stored the task asks for a reload, which swaps it under
//! the live listeners.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::acme::{self, AcmeJob};
use super::awsiot_jobs::{AwsIotJobs, AwsIotState};
use super::{cert_dir, cert_info, read_stored, rfc3339, write_stored, CertInfo, Secrets};
use crate::api::Certificate;
use crate::broker::TlsMaterial;
use crate::load::Resources;

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

/// Owns the background issuers of one process.
pub struct Manager {
    state: PathBuf,
    reload: mpsc::UnboundedSender<()>,
    tasks: Mutex<BTreeMap<String, Task>>,
    aws: AwsIotJobs,
}

/// `namespace/name` of a Certificate.
pub fn key_of(cert: &Certificate) -> String {
    format!(
        "{}/{}",
        cert.metadata.namespace.as_deref().unwrap_or("default"),
        cert.metadata.name.as_deref().unwrap_or("")
    )
}

impl Manager {
    /// A manager storing pairs under `state`; `reload` is signalled when a background
    /// task stored a new pair.
    pub fn new(state: &Path, reload: mpsc::UnboundedSender<()>) -> Manager {
        Manager {
            state: state.to_path_buf(),
            aws: AwsIotJobs::new(state.to_path_buf(), reload.clone()),
            reload,
            tasks: Mutex::new(BTreeMap::new()),
        }
    }

    /// The state of every `awsIot` Certificate of `res` (the certificate on disk, and
    /// how the background AWS work goes), starting the AWS work that is due: issuing,
    /// policy updates from the Bridges, rotation, and the cleanup of Certificates no
    /// longer in `res` per their deletion policy. Never waits on the network.
    pub fn aws_iot(&self, res: &Resources) -> BTreeMap<(String, String), AwsIotState> {
        self.aws.reconcile(res)
    }

    /// The current key pair of a Certificate and what status shows about it.
    /// `secrets` are the values of the Secrets of its namespace.
    ///
    /// For ACME this never waits on the network: it returns the stored pair (even one
    /// being renewed, or whose renewal fails) and makes sure a background task issues
    /// or renews it. With nothing stored yet it returns why.
    pub fn material(
        &self,
        cert: &Certificate,
        secrets: &Secrets,
        now: time::OffsetDateTime,
    ) -> Result<(TlsMaterial, CertInfo), String> {
        let Some(job) = AcmeJob::of(cert, secrets.clone(), &self.state) else {
            return super::ensure(&self.state, cert, secrets, now).map_err(|e| e.to_string());
        };
        let key = key_of(cert);
        let progress = self.watch(&key, job.clone());
        let dir = cert_dir(&self.state, cert);
        match read_stored(&dir) {
            Some(stored) => {
                let info = cert_info(&stored.material.cert_pem, job.renew_before, now)
                    .map_err(|e| e.to_string())?;
                Ok((stored.material, info))
            }
            None => {
                let p = progress.lock().map(|p| p.clone()).unwrap_or_default();
                Err(match p.last_failure {
                    Some(f) => format!(
                        "not issued yet: {f} (attempt {}, next at {})",
                        p.failures,
                        p.next_attempt.unwrap_or_default()
                    ),
                    None => format!("being issued by the ACME server {}", job.issuer.server),
                })
            }
        }
    }

    /// Progress of the background issuer of `namespace/name`, if it has one.
    pub fn progress(&self, key: &str) -> Option<Progress> {
        let tasks = self.tasks.lock().ok()?;
        let t = tasks.get(key)?;
        t.progress.lock().ok().map(|p| p.clone())
    }

    /// Stops the background issuers of Certificates that are gone from the config.
    pub fn retain(&self, keys: &[String]) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.retain(|k, _| keys.contains(k));
        }
    }

    /// Starts the task of `key`, or restarts it when its job changed.
    fn watch(&self, key: &str, job: AcmeJob) -> Arc<Mutex<Progress>> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tasks.get(key) {
            if t.job == job && !t.handle.is_finished() {
                return t.progress.clone();
            }
        }
        let progress: Arc<Mutex<Progress>> = Arc::default();
        let handle = tokio::spawn(run(
            job.clone(),
            cert_dir_of(&self.state, key),
            progress.clone(),
            self.reload.clone(),
        ));
        tasks.insert(
            key.to_string(),
            Task {
                job,
                progress: progress.clone(),
                handle,
            },
        );
        progress
    }
}

fn cert_dir_of(state: &Path, key: &str) -> PathBuf {
    let (ns, name) = key.split_once('/').unwrap_or(("default", key));
    state.join("certs").join(format!("{ns}_{name}"))
}

fn set(progress: &Mutex<Progress>, f: impl FnOnce(&mut Progress)) {
    if let Ok(mut p) = progress.lock() {
        f(&mut p);
    }
}

/// The life of one ACME Certificate: issue when missing or changed, sleep until the
/// renewal time, renew; after a failure wait (10 s, doubling up to 1 h) and retry.
async fn run(
    job: AcmeJob,
    dir: PathBuf,
    progress: Arc<Mutex<Progress>>,
    reload: mpsc::UnboundedSender<()>,
) {
    let request = job.request();
    loop {
        let now = time::OffsetDateTime::now_utc();
        let stored = read_stored(&dir).and_then(|s| {
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
        let outcome = match acme::issue(&job).await {
            Ok(issued) => write_stored(&dir, &issued.material, &issued.ca_pem, &request)
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
                let _ = reload.send(());
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
                // The reload refreshes status with the failure.
                let _ = reload.send(());
                tokio::time::sleep(delay).await;
            }
        }
    }
}
