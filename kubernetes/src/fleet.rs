//! `awsIot.fleetProvisioning` on a cluster: the controller exchanges the fleet's claim
//! certificate for the device's own certificate and thing ([`fleet::provision`], the
//! same MQTT exchange as `edgemq run`) in one background task per Certificate, never
//! inside a reconcile, and stores the result in the Certificate's `kubernetes.io/tls`
//! Secret: the pair, `ca.crt` (the endpoint's CA), `endpoint` and `thingName` (read by
//! broker pods for the Bridges that present it), with the record standalone mode keeps
//! in `fleet.json` in an annotation.
//!
//! Once that Secret exists the claim is never used again, also after a controller
//! restart. A failed attempt stores nothing and is retried with backoff (5 s doubling to
//! 10 min), at once when the spec changes. An identity whose Secret could not be written
//! is kept in memory and only the write is retried, so a failed write never costs a
//! second provisioning.
//!
//! Template parameters read from the machine mean, on a cluster: `hostname` the name of
//! the node the controller runs on (`EDGEMQ_NODE_NAME`, which the chart sets from the
//! downward API), `file` a file in the controller's container (the chart's
//! `extraVolumes` and `extraVolumeMounts` mount host files there).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use super::acme::task_key;
use super::cert_secret::tls_secret;
use super::context::Context;
use super::trust::{FileError, Trust, FILE_NOT_ALLOWED};
use super::Error;
use edgemq::api::certificate::FleetProvisioning;
use edgemq::api::Certificate;
use edgemq::certs::awsiot::Issued;
use edgemq::certs::awsiot_jobs::{fleet_attempt, AwsIotState};
use edgemq::certs::fleet::{
    self, FleetError, FleetIdentity, FleetRequest, Machine, MachineError, Record,
};
use edgemq::certs::{self, CertError};
use edgemq::tls::TlsMaterial;

/// Annotation of the Secret holding the provisioning record (`fleet.json` standalone).
pub const RECORD_ANNOTATION: &str = "edgemq.io/fleet-record";
/// Key of the Secret holding the thing name (a Bridge's client id).
pub const THING_NAME_KEY: &str = "thingName";
/// Environment variable naming the node the controller runs on.
pub const NODE_NAME_ENV: &str = "EDGEMQ_NODE_NAME";

pub use super::tasks::Provisioners;
use super::tasks::Unsaved;

/// What template parameters read from the machine on a cluster.
pub struct ClusterMachine {
    /// The controller's node, when known.
    pub node_name: Option<String>,
    /// The folders the installer lets parameters read.
    pub trust: Trust,
}

impl ClusterMachine {
    /// The controller's own machine, from its environment, under `trust`.
    pub fn from_env(trust: &Trust) -> ClusterMachine {
        ClusterMachine {
            node_name: std::env::var(NODE_NAME_ENV).ok().filter(|n| !n.is_empty()),
            trust: trust.clone(),
        }
    }
}

impl Machine for ClusterMachine {
    fn hostname(&self) -> Result<String, MachineError> {
        self.node_name.clone().ok_or_else(|| {
            MachineError::Unavailable(format!("on a cluster the host name is the controller's node name, and {NODE_NAME_ENV} is not set (the chart sets it from spec.nodeName)"))
        })
    }
    fn read_file(&self, path: &str) -> Result<String, MachineError> {
        let hint = |e: &dyn std::fmt::Display| {
            MachineError::Unavailable(format!("{e} (the file is read in the controller's container: mount it with the chart's extraVolumes and extraVolumeMounts)"))
        };
        let real = match self.trust.fleet_file(path) {
            Ok(real) => real,
            Err(FileError::Refused(e)) => return Err(MachineError::Unavailable(e)),
            Err(FileError::Unreadable(e)) => return Err(hint(&e)),
        };
        fleet::ThisMachine
            .read_file(&real.to_string_lossy())
            .map_err(|e| hint(&e))
    }
}

/// Why the installer does not let `fp` read its parameter files, if it does not: the
/// first file outside the allowed folders. Checked before anything is read or sent.
pub fn file_refusal(fp: &FleetProvisioning, trust: &Trust) -> Option<String> {
    fp.parameters.iter().find_map(|p| {
        let path = p.value_from.as_ref()?.file.as_deref()?;
        if p.value.is_some() {
            return None;
        }
        match trust.fleet_file(path) {
            Err(FileError::Refused(e)) => {
                Some(format!("parameter {}: {e}; nothing was sent", p.name))
            }
            _ => None,
        }
    })
}

/// The `kubernetes.io/tls` Secret of a provisioned identity: the pair, the endpoint's CA
/// as `ca.crt`, the endpoint, the thing name, and the record as an annotation.
pub fn identity_secret(
    cert: &Certificate,
    record: &Record,
    identity: &FleetIdentity,
    ca_pem: &str,
) -> Secret {
    let mut secret = tls_secret(
        cert,
        &identity.material,
        ca_pem,
        &format!("fleetProvisioning:{}", record.template_name),
    );
    if let Some(data) = secret.data.as_mut() {
        data.insert(
            super::awsiot::ENDPOINT_KEY.into(),
            ByteString(record.endpoint.clone().into_bytes()),
        );
        data.insert(
            THING_NAME_KEY.into(),
            ByteString(record.thing_name.clone().into_bytes()),
        );
    }
    secret.metadata.annotations.get_or_insert_default().insert(
        RECORD_ANNOTATION.into(),
        serde_json::to_string(record).unwrap_or_default(),
    );
    secret
}

/// The identity a Secret holds, if it holds a complete one.
pub fn provisioned(
    fp: &FleetProvisioning,
    secret: &Secret,
    now: time::OffsetDateTime,
) -> Option<Result<Issued, CertError>> {
    let record: Record = serde_json::from_str(secret.annotations().get(RECORD_ANNOTATION)?).ok()?;
    let data = secret.data.as_ref()?;
    let text = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
    let material = TlsMaterial {
        cert_pem: text("tls.crt")?,
        key_pem: text("tls.key")?,
    };
    Some(fleet::identity(fp, record, material, now))
}

/// Reconciles a `fleetProvisioning` Certificate: reports the identity in its Secret,
/// or makes sure a provisioning task runs and reports how it goes. `existing` is its
/// Secret (already known to be the Certificate's own, or absent); `secrets` its
/// namespace's Secret values, which hold the claim (directly, or as the Secret of the
/// claim Certificate).
pub async fn reconcile(
    cert: &Arc<Certificate>,
    ctx: &Arc<Context>,
    secrets: certs::Secrets,
    existing: Option<&Secret>,
) -> Result<Action, Error> {
    let now = time::OffsetDateTime::now_utc();
    let key = task_key(cert);
    let Ok(fp) = fleet::spec(cert) else {
        return Ok(Action::await_change());
    };
    let metric = format!(
        "{}/{}",
        cert.namespace().unwrap_or_default(),
        cert.name_any()
    );
    // Tasks of Certificates that are gone stop counting here.
    let live = ctx.snapshot().certificates;
    {
        let mut inner = ctx.fleet.lock();
        let live = |k: &String| live.iter().any(|c| task_key(c) == *k);
        inner.jobs.retain(|k, j| j.running || live(k));
        inner.unsaved.retain(|k, _| live(k));
    }

    let mut st = AwsIotState {
        fleet: true,
        ..AwsIotState::default()
    };
    match existing.and_then(|s| provisioned(fp, s, now)) {
        Some(Ok(issued)) => {
            ctx.fleet.lock().jobs.remove(&key);
            ctx.metrics
                .certificate(&metric, Some(&issued.info.not_after), 0);
            st.issued = Some(issued);
            return report(cert, ctx, &st).await.map(|()| {
                // Nothing to renew (that would need the claim); come back to notice a
                // lost Secret.
                Action::requeue(Duration::from_secs(3600))
            });
        }
        Some(Err(e)) => st.error = Some(format!("the Secret's identity cannot be read: {e}")),
        None => {}
    }

    if st.error.is_none() {
        if let Some(message) = file_refusal(fp, &ctx.settings.trust) {
            ctx.fleet.lock().jobs.remove(&key);
            ctx.metrics.certificate(&metric, None, 1);
            tracing::warn!(certificate = %key, "{message}");
            ctx.set_ready(
                cert.as_ref(),
                (false, FILE_NOT_ALLOWED, message),
                edgemq::api::CertificateStatus::default(),
            )
            .await?;
            return Ok(Action::await_change());
        }
        let claim_certificate = |name: &str| claim_of(ctx, cert, name, &secrets);
        match fleet::request_of(
            cert,
            &secrets,
            &claim_certificate,
            &ClusterMachine::from_env(&ctx.settings.trust),
        ) {
            Ok(req) => start(ctx, cert, &key, req),
            Err(e) => st.error = Some(e.to_string()),
        }
    }
    {
        let inner = ctx.fleet.lock();
        if let Some(job) = inner.jobs.get(&key) {
            st.working = job.running;
            st.failures = job.failures;
            if st.error.is_none() {
                st.error = job.error.clone();
                st.rejected = job.rejected && job.error.is_some();
            }
            st.retry_in_seconds = job
                .retry_at
                .filter(|_| job.error.is_some())
                .map(|t| t.saturating_duration_since(Instant::now()).as_secs());
        }
    }
    ctx.metrics.certificate(
        &metric,
        None,
        st.failures.max(u32::from(st.error.is_some())),
    );
    report(cert, ctx, &st).await?;
    // A task wakes this reconcile when it ends; a spec that cannot be used yet (a claim
    // Certificate not issued) is looked at again soon.
    Ok(Action::requeue(Duration::from_secs(if st.working {
        600
    } else {
        30
    })))
}

/// The claim pair of claim Certificate `name`, from its Secret.
fn claim_of(
    ctx: &Context,
    cert: &Certificate,
    name: &str,
    secrets: &certs::Secrets,
) -> Result<TlsMaterial, CertError> {
    let ns = cert.namespace();
    let claim = ctx
        .snapshot()
        .certificates
        .into_iter()
        .find(|c| c.name_any() == name && c.namespace() == ns)
        .ok_or_else(|| {
            CertError::Pending(format!("the claim Certificate {name} does not exist"))
        })?;
    let secret = claim.secret_name();
    let pending = |_| CertError::Pending(format!("the claim Certificate {name} is not issued yet"));
    Ok(TlsMaterial {
        cert_pem: secrets.text(&secret, "tls.crt").map_err(pending)?,
        key_pem: secrets.text(&secret, "tls.key").map_err(pending)?,
    })
}

/// Starts the provisioning task of `cert` if none runs and one is due.
fn start(ctx: &Arc<Context>, cert: &Arc<Certificate>, key: &str, req: FleetRequest) {
    let spec = serde_json::to_string(&cert.spec).unwrap_or_default();
    {
        let mut inner = ctx.fleet.lock();
        let job = inner.jobs.entry(key.to_string()).or_default();
        if !job.may_start(&spec, Instant::now()) {
            return;
        }
        job.running = true;
        job.key = spec;
    }
    let (ctx, cert, key) = (ctx.clone(), cert.clone(), key.to_string());
    tokio::spawn(async move {
        let r = attempt(&ctx, &cert, &key, req).await;
        if let Err(e) = &r {
            tracing::error!(certificate = %key, error = %e, "device not provisioned; will retry");
        }
        let retry_at = ctx
            .fleet
            .lock()
            .jobs
            .entry(key)
            .or_default()
            .finish_fleet(&r);
        let me = ObjectRef::from_obj(cert.as_ref());
        let _ = ctx.fleet.wake.send(me.clone());
        if let Some(at) = retry_at {
            tokio::time::sleep_until(at.into()).await;
            let _ = ctx.fleet.wake.send(me);
        }
    });
}

/// One attempt: provisions (unless an identity is waiting to be saved) and writes the
/// Secret.
async fn attempt(
    ctx: &Context,
    cert: &Certificate,
    key: &str,
    req: FleetRequest,
) -> Result<(), FleetError> {
    let waiting = ctx.fleet.lock().unsaved.remove(key);
    let unsaved = match waiting {
        Some(u) => u,
        None => {
            tracing::info!(certificate = %key, endpoint = %req.endpoint, template = %req.template_name,
                "provisioning the device with the claim certificate");
            let identity = fleet_attempt(fleet::provision(&req)).await?;
            let now = time::OffsetDateTime::now_utc();
            Unsaved {
                record: Record::of(cert, &req, &identity, now),
                identity,
                ca_pem: req.ca_pem.clone(),
            }
        }
    };
    let secret = identity_secret(cert, &unsaved.record, &unsaved.identity, &unsaved.ca_pem);
    match ctx.ensure(&secret).await {
        Ok(_) => {
            tracing::info!(certificate = %key, thing = %unsaved.record.thing_name,
                certificate_id = %unsaved.record.certificate_id,
                "device provisioned into Secret {}; the claim certificate is no longer used",
                cert.secret_name());
            Ok(())
        }
        Err(e) => {
            let thing = unsaved.record.thing_name.clone();
            ctx.fleet.lock().unsaved.insert(key.to_string(), unsaved);
            Err(FleetError::Unreachable(format!(
                "provisioned as thing {thing}, but Secret {} could not be written ({e}); retrying the write, not the provisioning",
                cert.secret_name()
            )))
        }
    }
}

/// Writes the Ready condition and fields of `st`, as standalone mode reports them.
async fn report(cert: &Certificate, ctx: &Context, st: &AwsIotState) -> Result<(), Error> {
    let (ready, reason, mut message, details) = edgemq::status::certificate::fleet_status(st);
    if ready {
        message.push_str(&format!("; stored in Secret {}", cert.secret_name()));
    }
    ctx.set_ready(
        cert,
        (ready, reason, message),
        edgemq::status::certificate::fields(&details),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> Certificate {
        let mut c: Certificate = serde_yaml::from_str(
            r#"
apiVersion: edgemq.io/v1alpha1
kind: Certificate
metadata: {name: device, namespace: edge, uid: "u-1"}
spec:
  secretName: device-tls
  issuer:
    awsIot:
      dataEndpoint: iot.example:8883
      fleetProvisioning:
        templateName: edge-fleet
        claim: {secretRef: fleet-claim}
"#,
        )
        .unwrap();
        c.metadata.uid = Some("u-1".into());
        c
    }

    fn identity() -> (Record, FleetIdentity) {
        let key = rcgen::KeyPair::generate().unwrap();
        let crt = rcgen::CertificateParams::new(vec!["device".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let identity = FleetIdentity {
            material: TlsMaterial {
                cert_pem: crt.pem(),
                key_pem: key.serialize_pem(),
            },
            certificate_id: "abc123".into(),
            thing_name: "edge-SN-1".into(),
            device_configuration: Default::default(),
        };
        let record = Record {
            namespace: "edge".into(),
            name: "device".into(),
            template_name: "edge-fleet".into(),
            thing_name: "edge-SN-1".into(),
            certificate_id: "abc123".into(),
            endpoint: "iot.example:8883".into(),
            provisioned_at: "2026-12-01T00:00:00Z".into(),
        };
        (record, identity)
    }

    #[test]
    fn the_secret_holds_the_pair_the_ca_the_endpoint_and_the_thing_name_and_reads_back() {
        let c = cert();
        let (record, id) = identity();
        let s = identity_secret(&c, &record, &id, "CA PEM");
        assert_eq!(s.metadata.name.as_deref(), Some("device-tls"));
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Certificate", "u-1")
        );
        let d = s.data.as_ref().unwrap();
        assert_eq!(d["ca.crt"].0, b"CA PEM");
        assert_eq!(d["endpoint"].0, b"iot.example:8883");
        assert_eq!(d[THING_NAME_KEY].0, b"edge-SN-1");

        let fp = fleet::spec(&c).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let issued = provisioned(fp, &s, now).unwrap().unwrap();
        assert_eq!(issued.material, id.material);
        let aws = issued.info.aws_iot.unwrap();
        assert_eq!(
            (aws.thing_name.as_str(), aws.certificate_id.as_str()),
            ("edge-SN-1", "abc123")
        );
        assert_eq!(aws.provisioning_template.as_deref(), Some("edge-fleet"));

        // A Secret without the record (say, written by someone else) is no identity.
        let mut bare = s.clone();
        bare.metadata.annotations = None;
        assert!(provisioned(fp, &bare, now).is_none());
    }

    #[test]
    fn on_a_cluster_the_host_name_is_the_node_and_files_are_the_controllers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("serial"), "10000000abcdef\n").unwrap();
        let m = ClusterMachine {
            node_name: Some("pi-kitchen".into()),
            trust: Trust {
                fleet_file_roots: vec![dir.path().to_path_buf()],
                ..Trust::default()
            },
        };
        assert_eq!(m.hostname().unwrap(), "pi-kitchen");
        let e = ClusterMachine {
            node_name: None,
            trust: Trust::default(),
        }
        .hostname()
        .unwrap_err()
        .to_string();
        assert!(e.contains(NODE_NAME_ENV), "{e}");
        let serial = dir.path().join("serial");
        assert_eq!(
            m.read_file(serial.to_str().unwrap()).unwrap(),
            "10000000abcdef\n"
        );
        let e = m
            .read_file(dir.path().join("nope").to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("extraVolumes"), "{e}");
        let e = m.read_file("/etc/hostname").unwrap_err().to_string();
        assert!(e.contains("outside the folders"), "{e}");
    }

    #[test]
    fn a_parameter_file_outside_the_allowed_folders_refuses_the_certificate() {
        let c: Certificate = serde_yaml::from_str(
            "apiVersion: edgemq.io/v1alpha1\nkind: Certificate\nmetadata: {name: dev, namespace: iot}\nspec:\n  secretName: dev\n  issuer:\n    awsIot:\n      dataEndpoint: x.example:8883\n      fleetProvisioning:\n        templateName: t\n        claim: {secretRef: claim}\n        parameters:\n          - {name: Serial, value: fixed}\n          - {name: Token, valueFrom: {file: /var/run/secrets/kubernetes.io/serviceaccount/token}}\n",
        )
        .unwrap();
        let fp = fleet::spec(&c).unwrap();
        let e = file_refusal(fp, &Trust::default()).unwrap();
        assert!(e.starts_with("parameter Token: /var/run/secrets/"), "{e}");
        assert!(
            e.contains("never read") && e.contains("nothing was sent"),
            "{e}"
        );
        let all = Trust {
            fleet_file_roots: vec!["/".into()],
            ..Trust::default()
        };
        assert!(file_refusal(fp, &all).unwrap().contains("never read"));
    }
}
