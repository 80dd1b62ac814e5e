//! The certificate drivers of standalone mode: what a reload asks for a Certificate's
//! key pair, kept in the state directory.
//!
//! `selfSigned` and `ca` certificates are made in place (local and fast, through
//! [`certs::ensure`]). ACME certificates never block a reload: the reload gets the
//! stored pair at once, and one background task per Certificate
//! ([`certs::renewal`]) issues it when it is missing, renews it at its renewal time,
//! and retries failures with backoff while the stored pair keeps serving. When a new
//! pair is stored the task asks for a reload, which swaps it under the live listeners.
//! ACME state lives in the state directory ([`DirStore`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::api::certificate::Http01Solver;
use crate::api::Certificate;
use crate::certs::acme::{AcmeJob, AcmeStore, Issued};
use crate::certs::awsiot_jobs::{AwsIotJobs, AwsIotState};
use crate::certs::http01::{Http01Host, LocalHost};
use crate::certs::renewal::{not_issued_yet, Progress, Tasks};
use crate::certs::{
    self, cert_dir, cert_info, read_stored, write_private, write_stored, CertError, CertInfo,
    Secrets, Stored,
};
use crate::load::Resources;
use crate::tls::TlsMaterial;

/// Owns the background issuers of one process.
pub struct Manager {
    state: PathBuf,
    reload: mpsc::UnboundedSender<()>,
    tasks: Tasks,
    aws: AwsIotJobs,
    /// Failed attempts of the Certificates issued in place (selfSigned, ca), by key.
    in_place: std::sync::Mutex<BTreeMap<String, Progress>>,
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
            tasks: Tasks::default(),
            in_place: Default::default(),
        }
    }

    /// The state of every `awsIot` Certificate of `res` (the certificate on disk, and
    /// how the background AWS work goes), starting the AWS work that is due: issuing,
    /// policy updates from the Bridges, rotation, and the cleanup of Certificates no
    /// longer in `res` per their deletion policy, unless `held` says they may still
    /// exist (declared with a mistake). Never waits on the network.
    pub fn aws_iot(
        &self,
        res: &Resources,
        held: impl Fn(&(String, String)) -> bool,
    ) -> BTreeMap<(String, String), AwsIotState> {
        self.aws.reconcile(res, held)
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
        let Some(job) = AcmeJob::of(cert, secrets.clone()) else {
            let attempt = certs::ensure(&self.state, cert, secrets, now).map_err(|e| e.to_string());
            let issuer = &cert.spec.issuer;
            if issuer.self_signed.is_none() && issuer.ca.is_none() {
                return attempt;
            }
            let key = key_of(cert);
            let Ok(mut in_place) = self.in_place.lock() else {
                return attempt;
            };
            let stored = attempt
                .is_err()
                .then(|| read_stored(&cert_dir(&self.state, cert)))
                .flatten();
            let (result, progress) = certs::keep_serving(
                cert,
                attempt,
                stored.as_ref().map(|s| &s.material),
                in_place.get(&key),
                now,
            );
            match progress {
                Some(p) => in_place.insert(key, p),
                None => in_place.remove(&key),
            };
            return result;
        };
        let dir = cert_dir(&self.state, cert);
        let store = || -> Arc<dyn AcmeStore> {
            Arc::new(DirStore {
                dir: dir.clone(),
                state: self.state.clone(),
            })
        };
        let reload = self.reload.clone();
        let progress = self.tasks.ensure(
            &key_of(cert),
            &job,
            store,
            Arc::new(move || {
                let _ = reload.send(());
            }),
        );
        match read_stored(&dir) {
            Some(stored) => {
                let info = cert_info(&stored.material.cert_pem, job.renew_before, now)
                    .map_err(|e| e.to_string())?;
                Ok((stored.material, info))
            }
            None => {
                let p = progress.lock().map(|p| p.clone()).unwrap_or_default();
                Err(not_issued_yet(&p, &job))
            }
        }
    }

    /// Progress of the background issuer of `namespace/name`, if it has one.
    pub fn progress(&self, key: &str) -> Option<Progress> {
        self.tasks
            .progress(key)
            .or_else(|| self.in_place.lock().ok().and_then(|p| p.get(key).cloned()))
    }

    /// Stops the background issuers of Certificates that are gone from the config.
    pub fn retain(&self, keys: &[String]) {
        self.tasks.retain(|k| keys.iter().any(|x| x == k));
        if let Ok(mut p) = self.in_place.lock() {
            p.retain(|k, _| keys.iter().any(|x| x == k));
        }
    }
}

/// ACME state in the state directory: the pair in the Certificate's directory, the
/// account under `acme/accounts/<id>/account.json`; HTTP-01 answered by this process.
struct DirStore {
    dir: PathBuf,
    state: PathBuf,
}

impl DirStore {
    fn account_path(&self, id: &str) -> PathBuf {
        self.state
            .join("acme")
            .join("accounts")
            .join(id)
            .join("account.json")
    }
}

impl AcmeStore for DirStore {
    fn stored(&self) -> BoxFuture<'_, Option<Stored>> {
        Box::pin(async move { read_stored(&self.dir) })
    }

    fn store<'a>(
        &'a self,
        issued: &'a Issued,
        request: &'a str,
    ) -> BoxFuture<'a, Result<(), CertError>> {
        Box::pin(async move { write_stored(&self.dir, &issued.material, &issued.ca_pem, request) })
    }

    fn account<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { std::fs::read(self.account_path(id)).ok() })
    }

    fn save_account<'a>(
        &'a self,
        id: &'a str,
        json: &'a [u8],
    ) -> BoxFuture<'a, Result<(), CertError>> {
        Box::pin(async move { write_private(&self.account_path(id), json) })
    }

    fn http01(&self, solver: &Http01Solver) -> Box<dyn Http01Host> {
        Box::new(LocalHost::new(solver))
    }
}
