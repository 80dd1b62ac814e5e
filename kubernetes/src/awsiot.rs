//! The `awsIot` issuer on a cluster: the same steps as standalone (`certs::awsiot`),
//! with the record of what edgemq made in AWS kept in the Certificate's status
//! (`awsIotRecord`) and the key pair, the Amazon root CAs and the endpoint host in the
//! `kubernetes.io/tls` Secret named by `spec.secretName`, owned by the Certificate.
//!
//! ```text
//!  reconcile ─► finalizer (added only for deletionPolicy: Delete)
//!     │        ─► record (status) + pair (Secret) + Bridges naming the Certificate
//!     │        ─► up to date? ──yes──► Ready=True, requeue at the renewal time
//!     │no
//!     ▼
//!  certs::awsiot::reconcile ── each step that made something ─► record into status
//!     (bounded by a timeout)    the new pair ─► Secret (after its record)
//!     │ failed: Ready=False with AWS's operation and code, retry with backoff
//!  deleted ─► finalizer: remove from AWS what the record names ─► finalizer removed
//! ```
//!
//! The record is saved into status before the next AWS step relies on it, so a
//! controller killed at any point resumes from it and leaves nothing in AWS that the
//! record does not name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};

use super::cert_secret::ours;
use super::context::{status_of, Context};
use super::trust::{Trust, CREDENTIALS_REQUIRED};
use super::{Error, FIELD_MANAGER};
use edgemq::api::certificate::DeletionPolicy;
use edgemq::api::{Bridge, Certificate, CertificateStatus};
use edgemq::aws::{policy, Clients, Credentials};
use edgemq::certs::awsiot::{self, Record, Store, AMAZON_ROOT_CAS};
use edgemq::certs::awsiot_jobs::AwsIotState;
use edgemq::certs::{self, CertError};
use edgemq::status::{self, kinds::with_ready};
use edgemq::tls::TlsMaterial;

/// Finalizer of `awsIot` Certificates with `deletionPolicy: Delete`: AWS is cleaned up
/// before the Certificate goes away.
pub const FINALIZER: &str = "edgemq.io/aws-iot-cleanup";
/// Status field holding the record (JSON).
pub const RECORD_FIELD: &str = "awsIotRecord";
/// Key of the Secret holding the endpoint host Bridges connect to.
pub const ENDPOINT_KEY: &str = "endpoint";
/// Longest one issuance or cleanup may take (every AWS call has its own, shorter,
/// timeout too); what was done is in the record, and the next attempt resumes.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);
const MIN_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// What the finalizer needs now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalizerStep {
    /// Add it: an `awsIot` Certificate with `Delete`.
    Add,
    /// Remove it: the Certificate no longer asks for cleanup (`Retain`, or another
    /// issuer).
    Remove,
    /// The Certificate is being deleted: clean up AWS (per its deletion policy), then
    /// remove it.
    Cleanup,
    /// Nothing.
    Nothing,
}

/// Whether the finalizer is due to be added, removed or acted on. Pure.
pub fn finalizer_step(cert: &Certificate) -> FinalizerStep {
    let has = cert.finalizers().iter().any(|f| f == FINALIZER);
    let deleting = cert.meta().deletion_timestamp.is_some();
    let wants = cert.spec.issuer.aws_iot.is_some()
        && cert.spec.deletion_policy.unwrap_or_default() == DeletionPolicy::Delete;
    match (deleting, has, wants) {
        (true, true, _) => FinalizerStep::Cleanup,
        (false, false, true) => FinalizerStep::Add,
        (false, true, false) => FinalizerStep::Remove,
        _ => FinalizerStep::Nothing,
    }
}

/// The record a status holds, if any.
pub fn record_in(status: Option<&Value>) -> Result<Option<Record>, String> {
    match status
        .and_then(|s| s.get(RECORD_FIELD))
        .and_then(Value::as_str)
    {
        None => Ok(None),
        Some(text) => serde_json::from_str(text)
            .map(Some)
            .map_err(|e| format!("status.{RECORD_FIELD} is not a record: {e}")),
    }
}

/// `status` with `record` in it (or without one for `None`).
pub fn with_record(status: Value, record: Option<&Record>) -> Value {
    let mut map = match status {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    match record.and_then(|r| serde_json::to_string(r).ok()) {
        Some(text) => {
            map.insert(RECORD_FIELD.into(), Value::String(text));
        }
        None => {
            map.remove(RECORD_FIELD);
        }
    }
    Value::Object(map)
}

/// How long to wait after the `failures`th failure in a row.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    (MIN_BACKOFF * 2u32.pow(exp)).min(MAX_BACKOFF)
}

/// How long to wait before the next attempt announced in `status` (`nextAttempt`,
/// written with a failure of the same `generation`); `None`: go ahead now. Pure.
pub fn waiting(
    status: &Value,
    generation: Option<i64>,
    now: time::OffsetDateTime,
) -> Option<Duration> {
    status.get("lastFailure")?;
    if status.get("observedGeneration").and_then(Value::as_i64) != generation {
        return None;
    }
    let at = certs::parse_rfc3339(status.get("nextAttempt")?.as_str()?)?;
    Duration::try_from(at - now).ok().filter(|d| !d.is_zero())
}

/// The record and key material kept on the cluster.
struct ClusterStore<'a> {
    ctx: &'a Context,
    cert: &'a Certificate,
    /// The status as last written (the record is saved into it).
    status: Value,
    material: Option<TlsMaterial>,
    endpoint: Option<String>,
}

impl ClusterStore<'_> {
    async fn patch_status(&mut self, status: Value) -> Result<(), CertError> {
        if status == self.status {
            return Ok(());
        }
        let api: Api<Certificate> = Api::namespaced(
            self.ctx.client.clone(),
            &self.cert.namespace().unwrap_or_default(),
        );
        let patch = json!({
            "apiVersion": Certificate::api_version(&()),
            "kind": Certificate::kind(&()),
            "status": status,
        });
        api.patch_status(
            &self.cert.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|e| CertError::Invalid(format!("saving the record into status: {e}")))?;
        self.status = status;
        Ok(())
    }

    /// Writes the reported status (Ready and the fields around it) like every other
    /// reconciler: only when it differs, with an Event when Ready's reason changes.
    async fn report(
        &mut self,
        ready: (bool, &str, String),
        fields: CertificateStatus,
    ) -> Result<(), Error> {
        let previous = super::status::previous_ready(Some(&self.status));
        let now = certs::rfc3339(time::OffsetDateTime::now_utc());
        let status = with_ready(
            fields,
            ready,
            self.cert.meta().generation,
            previous.as_ref(),
            &now,
        );
        let mut shown = self.cert.clone();
        shown.status = serde_json::from_value(self.status.clone()).ok();
        self.ctx.write_status(&shown, &status).await?;
        self.status = serde_json::to_value(&status).unwrap_or_default();
        Ok(())
    }

    /// The fields a status keeps across attempts: the record, and what AWS holds.
    fn kept(&self) -> CertificateStatus {
        CertificateStatus {
            aws_iot_record: self
                .status
                .get(RECORD_FIELD)
                .and_then(Value::as_str)
                .map(str::to_string),
            aws_iot: self
                .status
                .get("awsIot")
                .and_then(|v| serde_json::from_value(v.clone()).ok()),
            ..Default::default()
        }
    }

    async fn write_secret(&mut self) -> Result<(), CertError> {
        let Some(m) = &self.material else {
            return Ok(());
        };
        let secret = secret_for(self.cert, m, self.endpoint.as_deref());
        self.ctx
            .ensure(&secret)
            .await
            .map_err(|e| CertError::Invalid(format!("writing Secret: {e}")))?;
        Ok(())
    }
}

impl Store for ClusterStore<'_> {
    async fn save_record(&mut self, r: &Record) -> Result<(), CertError> {
        let status = with_record(self.status.clone(), Some(r));
        self.patch_status(status).await
    }
    async fn save_material(&mut self, m: &TlsMaterial) -> Result<(), CertError> {
        self.material = Some(m.clone());
        self.write_secret().await
    }
    async fn save_endpoint(&mut self, endpoint: &str) -> Result<(), CertError> {
        self.endpoint = Some(endpoint.to_string());
        self.write_secret().await
    }
}

/// The Secret of an `awsIot` Certificate: the pair, the Amazon root CAs as `ca.crt`,
/// and the endpoint host once known.
pub fn secret_for(cert: &Certificate, m: &TlsMaterial, endpoint: Option<&str>) -> Secret {
    let issued = certs::Issued {
        material: m.clone(),
        ca_pem: AMAZON_ROOT_CAS.to_string(),
        request: "awsIot".into(),
        info: Default::default(),
        new: true,
    };
    let mut secret = super::cert_secret::secret_for(cert, &issued);
    if let (Some(data), Some(e)) = (secret.data.as_mut(), endpoint) {
        data.insert(ENDPOINT_KEY.into(), ByteString(e.as_bytes().to_vec()));
    }
    secret
}

fn material_of(secret: &Secret) -> Option<TlsMaterial> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    Some(TlsMaterial {
        cert_pem: text("tls.crt")?,
        key_pem: text("tls.key")?,
    })
}

/// The access keys of `credentialsSecretRef`-style Secret `name`, read through the API.
async fn credentials(
    ctx: &Context,
    ns: &str,
    name: Option<&str>,
) -> Result<Option<Credentials>, String> {
    let Some(name) = name else {
        return Ok(None);
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading Secret {name}: {e}"))?
        .ok_or_else(|| format!("Secret {name} (credentialsSecretRef) not found"))?;
    let mut values = BTreeMap::new();
    for (k, v) in secret.data.iter().flatten() {
        values.insert((name.to_string(), k.clone()), v.0.clone());
    }
    for (k, v) in secret.string_data.iter().flatten() {
        values.insert((name.to_string(), k.clone()), v.as_bytes().to_vec());
    }
    edgemq::aws::credentials_from(name, &values).map(Some)
}

async fn set_finalizer(cert: &Certificate, ctx: &Context, on: bool) -> Result<Certificate, Error> {
    let mut list: Vec<String> = cert
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if on {
        list.push(FINALIZER.into());
    }
    let api: Api<Certificate> =
        Api::namespaced(ctx.client.clone(), &cert.namespace().unwrap_or_default());
    // resourceVersion makes this a compare-and-swap: a concurrent change of the list
    // fails with a conflict and is retried, never overwritten.
    let patch = json!({"metadata": {
        "finalizers": list,
        "resourceVersion": cert.resource_version(),
    }});
    Ok(api
        .patch(
            &cert.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?)
}

/// Ready=False with `reason` and `message`, the record kept, the failure counted;
/// requeued with backoff.
async fn failed(
    store: &mut ClusterStore<'_>,
    reason: &str,
    message: String,
) -> Result<Action, Error> {
    let cert = store.cert;
    let failures = store
        .status
        .get("failures")
        .and_then(Value::as_u64)
        .unwrap_or(0) as u32
        + 1;
    let wait = backoff(failures);
    let now = time::OffsetDateTime::now_utc();
    let fields = CertificateStatus {
        failures: Some(failures),
        last_failure: Some(message.clone()),
        last_failure_time: Some(certs::rfc3339(now)),
        next_attempt: Some(certs::rfc3339(
            now + time::Duration::seconds(wait.as_secs() as i64),
        )),
        ..store.kept()
    };
    tracing::warn!(certificate = %cert.name_any(), reason, error = %message, retry_in_seconds = wait.as_secs(), "AWS IoT certificate not issued");
    store.report((false, reason, message), fields).await?;
    Ok(Action::requeue(wait))
}

/// Why `cert` may not call AWS with the controller's own credentials, if it names none
/// and its namespace is not one the installer opened them to. Fleet provisioning calls
/// no AWS API (the claim certificate is its credential). Pure.
pub fn ambient_refusal(cert: &Certificate, ns: &str, trust: &Trust) -> Option<String> {
    let aws = cert.spec.issuer.aws_iot.as_ref()?;
    if aws.credentials_secret_ref.is_some() || aws.fleet_provisioning.is_some() {
        return None;
    }
    trust.ambient_aws_refusal(ns, "spec.issuer.awsIot.credentialsSecretRef")
}

/// Ready=False with reason `CredentialsRequired`, the record kept; nothing is retried
/// until the Certificate changes.
async fn refused(store: &mut ClusterStore<'_>, message: String) -> Result<Action, Error> {
    let cert = store.cert;
    let fields = CertificateStatus {
        aws_iot: None,
        ..store.kept()
    };
    tracing::warn!(certificate = %cert.name_any(), "{message}");
    store
        .report((false, CREDENTIALS_REQUIRED, message), fields)
        .await?;
    Ok(Action::await_change())
}

/// Issues or updates an `awsIot` Certificate and reports it.
pub async fn reconcile(cert: Arc<Certificate>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cert.namespace().unwrap_or_else(|| "default".into());
    let name = cert.name_any();
    // The record must be the latest one saved: the store's copy may lag behind
    // the status this controller just wrote.
    let certs_api: Api<Certificate> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(mut cert) = certs_api.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    match finalizer_step(&cert) {
        FinalizerStep::Add => cert = set_finalizer(&cert, &ctx, true).await?,
        FinalizerStep::Remove => cert = set_finalizer(&cert, &ctx, false).await?,
        FinalizerStep::Cleanup => return finalize(Arc::new(cert), ctx).await,
        FinalizerStep::Nothing => {}
    }
    let cert = &cert;
    let Some(aws) = cert.spec.issuer.aws_iot.as_ref() else {
        return Ok(Action::await_change());
    };
    let mut store = ClusterStore {
        ctx: &ctx,
        cert,
        status: status_of(cert).unwrap_or_else(|| json!({})),
        material: None,
        endpoint: None,
    };
    // The controller's own AWS identity serves only the namespaces the installer lists:
    // elsewhere nothing is sent to AWS without the Certificate's own credentials.
    if let Some(message) = ambient_refusal(cert, &ns, &ctx.settings.trust) {
        return refused(&mut store, message).await;
    }
    // After a failure, wait for the attempt status announced (our own status write
    // wakes this reconcile at once); a changed spec tries again at once.
    if let Some(wait) = waiting(
        &store.status,
        cert.meta().generation,
        time::OffsetDateTime::now_utc(),
    ) {
        return Ok(Action::requeue(wait));
    }
    let mut record = match record_in(Some(&store.status)) {
        Ok(r) => r,
        Err(e) => return failed(&mut store, "InvalidRecord", e).await,
    };

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret_name = cert.secret_name();
    let existing = secrets.get_opt(&secret_name).await?;
    if existing.as_ref().is_some_and(|s| !ours(s, cert)) {
        let message = format!("Secret {secret_name} exists and does not belong to this Certificate; choose another spec.secretName or delete the Secret");
        return failed(&mut store, "SecretConflict", message).await;
    }
    let mut material = existing.as_ref().and_then(material_of);
    store.material = material.clone();
    store.endpoint = existing
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get(ENDPOINT_KEY))
        .and_then(|v| String::from_utf8(v.0.clone()).ok());

    // The Bridges presenting this certificate, read now: the policy follows them.
    let bridges: Vec<Bridge> = Api::<Bridge>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items;
    let using = policy::bridges_using(cert, bridges.iter());

    let creds = match credentials(&ctx, &ns, aws.credentials_secret_ref.as_deref()).await {
        Ok(c) => c,
        Err(e) => return failed(&mut store, "IssueFailed", e).await,
    };

    // Another thing, region or account: the old certificate is not this one's.
    if let Some(old) = record.clone().filter(|r| !awsiot::same_target(cert, r)) {
        if cert.spec.deletion_policy.unwrap_or_default() == DeletionPolicy::Delete {
            tracing::info!(certificate = %name, old_thing = %old.thing_name, "thing or region changed; removing the old AWS IoT certificate");
            let r = async {
                let c = Clients::new(&old.target, creds.clone())
                    .await
                    .map_err(CertError::Generate)?;
                awsiot::remove_from_aws(&c, &mut store, old).await
            };
            match tokio::time::timeout(ATTEMPT_TIMEOUT, r).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return failed(&mut store, "IssueFailed", e.to_string()).await,
                Err(_) => return failed(&mut store, "IssueFailed", timeout_message()).await,
            }
        }
        record = None;
        material = None;
        let status = with_record(store.status.clone(), None);
        if let Err(e) = store.patch_status(status).await {
            return failed(&mut store, "IssueFailed", e.to_string()).await;
        }
    }

    let now = time::OffsetDateTime::now_utc();
    let local = match awsiot::assess(cert, &using, record.as_ref(), material.clone(), now) {
        Ok(l) => l,
        Err(e) => return failed(&mut store, "IssueFailed", e.to_string()).await,
    };
    let issued = match local {
        awsiot::Local {
            issued: Some(i),
            needs_aws: false,
        } => i,
        _ => {
            let work = async {
                let c = Clients::new(&awsiot::target(aws), creds)
                    .await
                    .map_err(CertError::Generate)?;
                awsiot::reconcile(&c, &mut store, cert, &using, record, material, now, false).await
            };
            match tokio::time::timeout(ATTEMPT_TIMEOUT, work).await {
                Ok(Ok(i)) => i,
                Ok(Err(e)) => return failed(&mut store, "IssueFailed", e.to_string()).await,
                Err(_) => return failed(&mut store, "IssueFailed", timeout_message()).await,
            }
        }
    };
    // The pair in the Secret (also when only the Secret was lost).
    store.material = Some(issued.material.clone());
    if store.endpoint.is_none() {
        store.endpoint = issued.info.aws_iot.as_ref().map(|a| a.endpoint.clone());
    }
    if let Err(e) = store.write_secret().await {
        return failed(&mut store, "IssueFailed", e.to_string()).await;
    }

    // The same words as `edgemq run` (status::certificate::aws_iot_status).
    let shown = AwsIotState {
        issued: Some(issued.clone()),
        ..Default::default()
    };
    let (ready, reason, mut message, details) = status::certificate::aws_iot_status(&shown);
    message.push_str(&format!("; stored in Secret {secret_name}"));
    let fields = CertificateStatus {
        aws_iot_record: store.kept().aws_iot_record,
        ..status::certificate::fields(&details)
    };
    store.report((ready, reason, message), fields).await?;
    let info = &issued.info;
    // Come back at the renewal time (and at least hourly, to notice a lost Secret).
    let wait = certs::parse_rfc3339(&info.renewal_time)
        .map(|t| t - now)
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(Duration::ZERO)
        .clamp(Duration::from_secs(1), Duration::from_secs(3600));
    Ok(Action::requeue(wait))
}

fn timeout_message() -> String {
    format!(
        "AWS IoT work did not finish within {}s; what was done is recorded and the next attempt resumes",
        ATTEMPT_TIMEOUT.as_secs()
    )
}

/// A Certificate being deleted: with our finalizer and `deletionPolicy: Delete`,
/// removes from AWS what the record in its status names, then the finalizer. Without a
/// record (issuance never ran) only the finalizer goes.
pub async fn finalize(cert: Arc<Certificate>, ctx: Arc<Context>) -> Result<Action, Error> {
    if finalizer_step(&cert) != FinalizerStep::Cleanup {
        return Ok(Action::await_change());
    }
    let ns = cert.namespace().unwrap_or_else(|| "default".into());
    let name = cert.name_any();
    let api: Api<Certificate> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(cert) = api.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    if finalizer_step(&cert) != FinalizerStep::Cleanup {
        return Ok(Action::await_change());
    }
    let mut store = ClusterStore {
        ctx: &ctx,
        cert: &cert,
        status: status_of(&cert).unwrap_or_else(|| json!({})),
        material: None,
        endpoint: None,
    };
    if let Some(wait) = waiting(
        &store.status,
        cert.meta().generation,
        time::OffsetDateTime::now_utc(),
    ) {
        return Ok(Action::requeue(wait));
    }
    let delete = cert.spec.deletion_policy.unwrap_or_default() == DeletionPolicy::Delete;
    let record = match record_in(Some(&store.status)) {
        Ok(r) => r,
        Err(e) => return failed(&mut store, "CleanupFailed", e).await,
    };
    if let (true, Some(r)) = (delete, record) {
        let secret = r.credentials_secret.clone().or_else(|| {
            cert.spec
                .issuer
                .aws_iot
                .as_ref()
                .and_then(|a| a.credentials_secret_ref.clone())
        });
        if secret.is_none() {
            if let Some(m) = ctx
                .settings
                .trust
                .ambient_aws_refusal(&ns, "spec.issuer.awsIot.credentialsSecretRef")
            {
                return failed(&mut store, CREDENTIALS_REQUIRED, m).await;
            }
        }
        let creds = match credentials(&ctx, &ns, secret.as_deref()).await {
            Ok(c) => c,
            Err(e) => return failed(&mut store, "CleanupFailed", e).await,
        };
        let work = async {
            let c = Clients::new(&r.target, creds)
                .await
                .map_err(CertError::Generate)?;
            awsiot::remove_from_aws(&c, &mut store, r).await
        };
        match tokio::time::timeout(ATTEMPT_TIMEOUT, work).await {
            Ok(Ok(actions)) => {
                tracing::info!(certificate = %format!("{ns}/{name}"), actions = actions.len(), "AWS IoT resources of a deleted Certificate removed");
            }
            Ok(Err(e)) => return failed(&mut store, "CleanupFailed", e.to_string()).await,
            Err(_) => return failed(&mut store, "CleanupFailed", timeout_message()).await,
        }
    }
    set_finalizer(&cert, &ctx, false).await?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgemq::api::certificate::{AwsIotIssuer, CertificateSpec};

    fn aws_cert(policy: Option<DeletionPolicy>) -> Certificate {
        let mut c = Certificate::new(
            "aws-home",
            CertificateSpec {
                deletion_policy: policy,
                ..Default::default()
            },
        );
        c.spec.issuer.aws_iot = Some(AwsIotIssuer {
            thing_name: "home-gw".into(),
            ..Default::default()
        });
        c
    }

    #[test]
    fn the_controllers_aws_identity_serves_only_listed_namespaces() {
        let trust = Trust {
            ambient_aws_namespaces: vec!["iot".into()],
            ..Trust::default()
        };
        let c = aws_cert(None);
        let e = ambient_refusal(&c, "other", &trust).unwrap();
        assert!(
            e.contains("spec.issuer.awsIot.credentialsSecretRef")
                && e.contains("namespace other")
                && e.contains("ambientAwsNamespaces"),
            "{e}"
        );
        assert_eq!(ambient_refusal(&c, "iot", &trust), None);
        assert!(ambient_refusal(&c, "iot", &Trust::default()).is_some());
        // Its own credentials, or a claim certificate, are never refused.
        let mut own = aws_cert(None);
        own.spec
            .issuer
            .aws_iot
            .as_mut()
            .unwrap()
            .credentials_secret_ref = Some("keys".into());
        assert_eq!(ambient_refusal(&own, "other", &Trust::default()), None);
        let mut fleet = aws_cert(None);
        fleet
            .spec
            .issuer
            .aws_iot
            .as_mut()
            .unwrap()
            .fleet_provisioning = Some(Default::default());
        assert_eq!(ambient_refusal(&fleet, "other", &Trust::default()), None);
    }

    fn with_finalizer(mut c: Certificate) -> Certificate {
        c.metadata.finalizers = Some(vec!["other.example/keep".into(), FINALIZER.into()]);
        c
    }

    fn deleting(mut c: Certificate) -> Certificate {
        c.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        c
    }

    #[test]
    fn the_finalizer_is_added_only_to_aws_iot_certificates_with_delete() {
        use FinalizerStep::*;
        assert_eq!(finalizer_step(&aws_cert(Some(DeletionPolicy::Delete))), Add);
        assert_eq!(
            finalizer_step(&aws_cert(Some(DeletionPolicy::Retain))),
            Nothing
        );
        assert_eq!(
            finalizer_step(&aws_cert(None)),
            Nothing,
            "Retain is the default"
        );
        let mut other = aws_cert(Some(DeletionPolicy::Delete));
        other.spec.issuer.aws_iot = None;
        assert_eq!(finalizer_step(&other), Nothing);
        assert_eq!(
            finalizer_step(&with_finalizer(aws_cert(Some(DeletionPolicy::Delete)))),
            Nothing
        );
    }

    #[test]
    fn the_finalizer_goes_when_the_policy_turns_to_retain_and_acts_on_deletion() {
        use FinalizerStep::*;
        assert_eq!(
            finalizer_step(&with_finalizer(aws_cert(Some(DeletionPolicy::Retain)))),
            Remove
        );
        assert_eq!(
            finalizer_step(&deleting(with_finalizer(aws_cert(Some(
                DeletionPolicy::Delete
            ))))),
            Cleanup
        );
        // Deleted without our finalizer (Retain): nothing to do.
        assert_eq!(
            finalizer_step(&deleting(aws_cert(Some(DeletionPolicy::Retain)))),
            Nothing
        );
    }

    #[test]
    fn the_record_round_trips_through_status_and_leaves_other_fields_alone() {
        let r = Record {
            namespace: "iot".into(),
            name: "aws-home".into(),
            thing_name: "home-gw".into(),
            thing_created: true,
            certificate: Some(awsiot::CertRef {
                certificate_id: "abc".into(),
                certificate_arn: "arn:aws:iot:eu-west-1:123456789012:cert/abc".into(),
                imported: false,
            }),
            policy_name: "edgemq-home-gw-aws-home".into(),
            policy_generated: true,
            retiring: vec![awsiot::CertRef {
                certificate_id: "old".into(),
                ..Default::default()
            }],
            credentials_secret: Some("aws-keys".into()),
            deletion_policy: DeletionPolicy::Delete,
            ..Default::default()
        };
        let status = json!({"observedGeneration": 3, "conditions": []});
        let saved = with_record(status.clone(), Some(&r));
        assert_eq!(saved["observedGeneration"], 3);
        assert!(saved[RECORD_FIELD].is_string());
        assert_eq!(record_in(Some(&saved)), Ok(Some(r)));
        assert_eq!(with_record(saved, None), status);
        assert_eq!(record_in(Some(&status)), Ok(None));
        assert_eq!(record_in(None), Ok(None));
        assert!(record_in(Some(&json!({RECORD_FIELD: "{"})))
            .unwrap_err()
            .contains(RECORD_FIELD));
    }

    #[test]
    fn after_a_failure_the_next_attempt_waits_unless_the_spec_changed() {
        let now = certs::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        let failed = json!({
            "observedGeneration": 2,
            "lastFailure": "AWS IoT CreateThing failed",
            "nextAttempt": "2026-01-01T00:00:20Z",
        });
        assert_eq!(
            waiting(&failed, Some(2), now),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            waiting(&failed, Some(3), now),
            None,
            "a new spec goes at once"
        );
        let later = now + time::Duration::seconds(20);
        assert_eq!(waiting(&failed, Some(2), later), None);
        assert_eq!(
            waiting(&json!({"observedGeneration": 2}), Some(2), now),
            None
        );
    }

    #[test]
    fn failures_back_off_doubling_up_to_ten_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(4), Duration::from_secs(80));
        assert_eq!(backoff(7), Duration::from_secs(600));
        assert_eq!(backoff(1000), Duration::from_secs(600));
    }

    #[test]
    fn the_secret_holds_the_pair_the_amazon_roots_and_the_endpoint() {
        let mut c = aws_cert(Some(DeletionPolicy::Delete));
        c.metadata.namespace = Some("iot".into());
        let m = TlsMaterial {
            cert_pem: "C".into(),
            key_pem: "K".into(),
        };
        let s = secret_for(&c, &m, Some("abc-ats.iot.eu-west-1.amazonaws.com"));
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        let d = s.data.unwrap();
        assert_eq!(d["tls.crt"].0, b"C");
        assert_eq!(d["tls.key"].0, b"K");
        assert_eq!(d["ca.crt"].0, AMAZON_ROOT_CAS.as_bytes());
        assert_eq!(d[ENDPOINT_KEY].0, b"abc-ats.iot.eu-west-1.amazonaws.com");
        let s = secret_for(&c, &m, None);
        assert!(!s.data.unwrap().contains_key(ENDPOINT_KEY));
    }
}
