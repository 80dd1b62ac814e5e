//! The `acme` issuer on a cluster.
//!
//! Issuance runs in one background task per Certificate ([`certs::renewal`], the same
//! loop as `edgemq run`), never inside a reconcile: the reconcile makes sure the task
//! exists and reports how it goes; the task wakes the reconcile (through the
//! controller's `reconcile_on` stream) whenever it stored a pair or failed.
//!
//! What lasts is in Secrets ([`SecretStore`]): the pair in the `kubernetes.io/tls`
//! Secret of `spec.secretName`, owned by the Certificate; the ACME account key in
//! `edgemq-acme-account-<id>` (not owned: every Certificate of the same server, email
//! and EAB key id in the namespace shares it). DNS-01 runs in the controller (RFC 2136,
//! Cloudflare, Route 53; `exec` is refused here). HTTP-01 is answered by a short-lived
//! solver Pod and Service per challenge ([`PodHost`]), with an Ingress when the solver
//! names a class, all owned by the Certificate and deleted when the order ends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use sha2::Digest;

use super::cert_secret::{stored, tls_secret};
use super::context::Context;
use super::desired::{Settings, MANAGED_BY};
use super::trust::{Trust, CREDENTIALS_REQUIRED};
use super::{Error, FIELD_MANAGER};
use edgemq::api::certificate::Http01Solver;
use edgemq::api::{Certificate, CertificateStatus};
use edgemq::certs::acme::{AcmeJob, AcmeStore, Issued};
use edgemq::certs::http01::{Answer, Http01Host, PATH_PREFIX};
use edgemq::certs::{self, cert_info, CertError, Stored};

/// Port the solver container listens on.
pub const SOLVER_PORT: u16 = 8089;
/// Label on every solver object: the uid of the Certificate it answers for.
pub const SOLVER_LABEL: &str = "edgemq.io/acme-solver-for";
/// How long a solver may take to answer its token before the order is given up.
const SOLVER_PATIENCE: Duration = Duration::from_secs(180);

pub use super::tasks::Issuers;

/// Task key: namespace, name and uid, so a Certificate deleted and created again under
/// the same name gets a task of its own (the old one's Secret is garbage).
pub(super) fn task_key(cert: &Certificate) -> String {
    format!(
        "{}/{}@{}",
        cert.namespace().unwrap_or_default(),
        cert.name_any(),
        cert.uid().unwrap_or_default()
    )
}

/// Why an `acme` Certificate cannot be issued on a cluster, if it cannot.
pub fn unsupported(cert: &Certificate) -> Option<String> {
    let acme = cert.spec.issuer.acme.as_ref()?;
    let dns = acme.solver.dns01.as_ref()?;
    dns.exec.as_ref().map(|_| {
        "the exec DNS-01 provider runs only in `edgemq run` (the controller does not run commands); on a cluster use rfc2136, cloudflare or route53".to_string()
    })
}

/// Why a Route 53 DNS-01 solver without access keys may not use the controller's own
/// AWS identity in `cert`'s namespace, if it may not. Pure.
pub fn ambient_refusal(cert: &Certificate, trust: &Trust) -> Option<String> {
    let r53 = cert
        .spec
        .issuer
        .acme
        .as_ref()?
        .solver
        .dns01
        .as_ref()?
        .route53
        .as_ref()?;
    if r53.access_key_id_secret_ref.is_some() || r53.secret_access_key_secret_ref.is_some() {
        return None;
    }
    trust.ambient_aws_refusal(
        &cert.namespace().unwrap_or_else(|| "default".into()),
        "spec.issuer.acme.solver.dns01.route53.accessKeyIdSecretRef and secretAccessKeySecretRef",
    )
}

/// Reconciles an `acme` Certificate: makes sure its task runs and reports it.
/// `existing` is its Secret (already known to be the Certificate's own, or absent).
pub async fn reconcile(
    cert: &Arc<Certificate>,
    ctx: &Arc<Context>,
    secrets: certs::Secrets,
    existing: Option<&Secret>,
) -> Result<Action, Error> {
    let now = time::OffsetDateTime::now_utc();
    if let Some(message) = unsupported(cert) {
        ctx.set_ready(
            cert.as_ref(),
            (false, "IssuerNotSupported", message),
            CertificateStatus::default(),
        )
        .await?;
        return Ok(Action::await_change());
    }
    if let Some(message) = ambient_refusal(cert, &ctx.settings.trust) {
        ctx.acme.tasks.retain(|k| k != task_key(cert));
        ctx.set_ready(
            cert.as_ref(),
            (false, CREDENTIALS_REQUIRED, message),
            CertificateStatus::default(),
        )
        .await?;
        return Ok(Action::await_change());
    }
    let job = AcmeJob::of(cert, secrets).expect("an acme Certificate");
    // Tasks of Certificates that are gone stop here.
    let live = ctx.snapshot().certificates;
    ctx.acme
        .tasks
        .retain(|k| live.iter().any(|c| task_key(c) == k));
    let wake = ctx.acme.wake.clone();
    let me = ObjectRef::from_obj(cert.as_ref());
    let (client, settings, owner) = (ctx.client.clone(), ctx.settings.clone(), cert.clone());
    let progress = ctx.acme.tasks.ensure(
        &task_key(cert),
        &job,
        move || {
            Arc::new(SecretStore {
                client,
                settings,
                cert: owner,
            })
        },
        Arc::new(move || {
            let _ = wake.send(me.clone());
        }),
    );
    let progress = progress.lock().map(|p| p.clone()).unwrap_or_default();
    let result = match existing.and_then(stored) {
        Some(s) => cert_info(&s.material.cert_pem, job.renew_before, now)
            .map(|info| (s.material, info))
            .map_err(|e| e.to_string()),
        None => Err(edgemq::certs::renewal::not_issued_yet(&progress, &job)),
    };
    ctx.metrics.certificate(
        &format!(
            "{}/{}",
            cert.namespace().unwrap_or_default(),
            cert.name_any()
        ),
        result.as_ref().ok().map(|(_, i)| i.not_after.as_str()),
        progress.failures,
    );
    let (ready, reason, mut message, details) =
        edgemq::status::certificate::certificate_status(Some(&result), Some(&progress), now);
    if result.is_ok() {
        message.push_str(&format!("; stored in Secret {}", cert.secret_name()));
    }
    ctx.set_ready(
        cert.as_ref(),
        (ready, reason, message),
        edgemq::status::certificate::fields(&details),
    )
    .await?;
    // The task wakes this reconcile when anything happens; this is a safety net.
    Ok(Action::requeue(Duration::from_secs(600)))
}

/// Name of the Secret holding ACME account `id` ([`edgemq::certs::acme::account_id`]).
pub fn account_secret_name(id: &str) -> String {
    format!("edgemq-acme-account-{id}")
}

/// The Secret holding an account's credentials.
pub fn account_secret(namespace: &str, id: &str, json: &[u8]) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(account_secret_name(id)),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    MANAGED_BY.to_string(),
                ),
                ("edgemq.io/acme-account".to_string(), id.to_string()),
            ])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            "account.json".to_string(),
            ByteString(json.to_vec()),
        )])),
        ..Default::default()
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

fn kube_err(what: &str) -> impl Fn(kube::Error) -> CertError + '_ {
    move |e| CertError::Acme(format!("{what}: {e}"))
}

/// ACME state in Secrets, HTTP-01 through solver Pods.
struct SecretStore {
    client: Client,
    settings: Settings,
    cert: Arc<Certificate>,
}

impl SecretStore {
    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(
            self.client.clone(),
            &self.cert.namespace().unwrap_or_default(),
        )
    }
}

impl AcmeStore for SecretStore {
    fn stored(&self) -> BoxFuture<'_, Option<Stored>> {
        Box::pin(async move {
            let s = self
                .secrets()
                .get_opt(&self.cert.secret_name())
                .await
                .ok()??;
            stored(&s)
        })
    }

    fn store<'a>(
        &'a self,
        issued: &'a Issued,
        request: &'a str,
    ) -> BoxFuture<'a, Result<(), CertError>> {
        Box::pin(async move {
            let secret = tls_secret(&self.cert, &issued.material, &issued.ca_pem, request);
            let name = self.cert.secret_name();
            self.secrets()
                .patch(&name, &apply_params(), &Patch::Apply(&secret))
                .await
                .map_err(kube_err(&format!("writing Secret {name}")))?;
            Ok(())
        })
    }

    fn account<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let s = self
                .secrets()
                .get_opt(&account_secret_name(id))
                .await
                .ok()??;
            s.data?.remove("account.json").map(|v| v.0)
        })
    }

    fn save_account<'a>(
        &'a self,
        id: &'a str,
        json: &'a [u8],
    ) -> BoxFuture<'a, Result<(), CertError>> {
        Box::pin(async move {
            let ns = self.cert.namespace().unwrap_or_default();
            let name = account_secret_name(id);
            self.secrets()
                .patch(
                    &name,
                    &apply_params(),
                    &Patch::Apply(&account_secret(&ns, id, json)),
                )
                .await
                .map_err(kube_err(&format!("writing the ACME account Secret {name}")))?;
            Ok(())
        })
    }

    fn http01(&self, solver: &Http01Solver) -> Box<dyn Http01Host> {
        Box::new(PodHost {
            client: self.client.clone(),
            settings: self.settings.clone(),
            cert: self.cert.clone(),
            solver: solver.clone(),
            created: Mutex::new(Vec::new()),
        })
    }
}

/// The objects answering one HTTP-01 challenge.
#[derive(Clone, Debug, PartialEq)]
pub struct SolverObjects {
    /// The solver Pod.
    pub pod: Pod,
    /// Its Service.
    pub service: Service,
    /// The Ingress, when the solver names a class.
    pub ingress: Option<Ingress>,
}

/// Name of the solver objects of `answer` for `cert`: `edgemq-acme-` and a hash of the
/// Certificate's uid and the token.
pub fn solver_name(cert: &Certificate, answer: &Answer) -> String {
    let h = sha2::Sha256::digest(format!(
        "{}\n{}",
        cert.uid().unwrap_or_default(),
        answer.token
    ));
    let h: String = h[..5].iter().map(|b| format!("{b:02x}")).collect();
    format!("edgemq-acme-{h}")
}

/// The solver Pod, Service and (with a class) Ingress answering `answer`.
pub fn solver_objects(
    cert: &Certificate,
    answer: &Answer,
    solver: &Http01Solver,
    settings: &Settings,
) -> SolverObjects {
    let name = solver_name(cert, answer);
    let ns = cert.namespace().unwrap_or_default();
    let uid = cert.uid().unwrap_or_default();
    let owner = cert.controller_owner_ref(&());
    let labels = json!({
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/name": "edgemq-acme-solver",
        SOLVER_LABEL: uid,
        "edgemq.io/acme-solver": name,
    });
    let meta = json!({"name": name, "namespace": ns, "labels": labels, "ownerReferences": owner.map(|o| vec![o])});
    let mut container = json!({
        "name": "solver",
        "image": settings.image,
        // `--answer=VALUE` in one argument: a token may start with `-` (it is base64url),
        // which as a separate argument would read as an option and stop the solver.
        "args": ["acme-solver", "--listen", format!("0.0.0.0:{SOLVER_PORT}"),
                 format!("--answer={}={}", answer.token, answer.key_authorization)],
        "ports": [{"name": "http", "containerPort": SOLVER_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
            "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
        },
    });
    if let Some(p) = &settings.image_pull_policy {
        container["imagePullPolicy"] = json!(p);
    }
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
        }
    }))
    .expect("well-formed Pod");
    let port = solver.port.unwrap_or(80);
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {
            "type": "ClusterIP",
            "selector": {"edgemq.io/acme-solver": name},
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        }
    }))
    .expect("well-formed Service");
    let ingress = solver.ingress_class_name.as_ref().map(|class| {
        serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta,
            "spec": {
                "ingressClassName": class,
                "rules": [{"host": answer.domain, "http": {"paths": [{
                    "path": format!("{PATH_PREFIX}{}", answer.token),
                    "pathType": "Exact",
                    "backend": {"service": {"name": name, "port": {"number": port}}},
                }]}}],
            }
        }))
        .expect("well-formed Ingress")
    });
    SolverObjects {
        pod,
        service,
        ingress,
    }
}

/// Answers HTTP-01 challenges with solver Pods; remembers what it created.
struct PodHost {
    client: Client,
    settings: Settings,
    cert: Arc<Certificate>,
    solver: Http01Solver,
    created: Mutex<Vec<String>>,
}

impl PodHost {
    fn ns(&self) -> String {
        self.cert.namespace().unwrap_or_default()
    }

    /// Deletes solver objects of this Certificate: those named, or all of them.
    async fn delete(&self, names: Option<&[String]>) {
        let ns = self.ns();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let services: Api<Service> = Api::namespaced(self.client.clone(), &ns);
        let ingresses: Api<Ingress> = Api::namespaced(self.client.clone(), &ns);
        let names: Vec<String> = match names {
            Some(n) => n.to_vec(),
            None => {
                let lp = ListParams::default().labels(&format!(
                    "{SOLVER_LABEL}={}",
                    self.cert.uid().unwrap_or_default()
                ));
                let mut all: Vec<String> = Vec::new();
                if let Ok(l) = services.list(&lp).await {
                    all.extend(l.items.iter().map(|s| s.name_any()));
                }
                if let Ok(l) = pods.list(&lp).await {
                    all.extend(l.items.iter().map(|p| p.name_any()));
                }
                all.sort();
                all.dedup();
                all
            }
        };
        let dp = DeleteParams::background();
        for n in &names {
            let _ = pods.delete(n, &dp).await;
            let _ = services.delete(n, &dp).await;
            if self.solver.ingress_class_name.is_some() {
                let _ = ingresses.delete(n, &dp).await;
            }
            tracing::info!(certificate = %format!("{ns}/{}", self.cert.name_any()), solver = %n, "HTTP-01 solver removed");
        }
    }

    /// Why the solver Pod is not answering, as its status says.
    async fn pod_state(&self, name: &str) -> String {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns());
        let Ok(Some(p)) = pods.get_opt(name).await else {
            return "the Pod does not exist".into();
        };
        let st = p.status.unwrap_or_default();
        let waiting = st
            .container_statuses
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.state?.waiting)
            .map(|w| {
                format!(
                    "{}: {}",
                    w.reason.unwrap_or_default(),
                    w.message.unwrap_or_default()
                )
            })
            .next();
        format!(
            "Pod phase {}{}",
            st.phase.unwrap_or_else(|| "Unknown".into()),
            waiting
                .map(|w| format!(", container waiting ({w})"))
                .unwrap_or_default()
        )
    }
}

impl Http01Host for PodHost {
    fn present<'a>(&'a self, answer: &'a Answer) -> BoxFuture<'a, Result<(), CertError>> {
        Box::pin(async move {
            let first = self.created.lock().map(|c| c.is_empty()).unwrap_or(true);
            if first {
                // Solvers left by an order that never ended (a controller restarted
                // in the middle) go first.
                self.delete(None).await;
            }
            let objs = solver_objects(&self.cert, answer, &self.solver, &self.settings);
            let name = objs.service.name_any();
            let ns = self.ns();
            if let Ok(mut c) = self.created.lock() {
                c.push(name.clone());
            }
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            let services: Api<Service> = Api::namespaced(self.client.clone(), &ns);
            pods.patch(&name, &apply_params(), &Patch::Apply(&objs.pod))
                .await
                .map_err(kube_err(&format!("creating the HTTP-01 solver Pod {name}")))?;
            let svc = services
                .patch(&name, &apply_params(), &Patch::Apply(&objs.service))
                .await
                .map_err(kube_err(&format!(
                    "creating the HTTP-01 solver Service {name}"
                )))?;
            if let Some(ing) = &objs.ingress {
                let ingresses: Api<Ingress> = Api::namespaced(self.client.clone(), &ns);
                ingresses
                    .patch(&name, &apply_params(), &Patch::Apply(ing))
                    .await
                    .map_err(kube_err(&format!(
                        "creating the HTTP-01 solver Ingress {name}"
                    )))?;
            }
            let ip = svc
                .spec
                .and_then(|s| s.cluster_ip)
                .ok_or_else(|| CertError::Acme(format!("Service {name} has no cluster IP")))?;
            let port = self.solver.port.unwrap_or(80);
            tracing::info!(certificate = %format!("{ns}/{}", self.cert.name_any()), domain = %answer.domain, solver = %name, service = %format!("{ip}:{port}"), "HTTP-01 solver created");
            // Self-check: the CA is told to look only once the Service answers.
            let addr = join_host_port(&ip, port);
            let path = format!("{PATH_PREFIX}{}", answer.token);
            let deadline = tokio::time::Instant::now() + SOLVER_PATIENCE;
            loop {
                match http_get(&addr, &answer.domain, &path).await {
                    Ok(t) if t.trim() == answer.key_authorization => return Ok(()),
                    Ok(t) => {
                        return Err(CertError::Acme(format!(
                            "the HTTP-01 solver Service {name} answers http://{addr}{path} with `{}`, not the key authorization",
                            t.chars().take(100).collect::<String>()
                        )))
                    }
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        return Err(CertError::Acme(format!(
                            "the HTTP-01 solver {name} did not answer at http://{addr}{path} within {}s: {e} ({})",
                            SOLVER_PATIENCE.as_secs(),
                            self.pod_state(&name).await
                        )))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        })
    }

    fn cleanup(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let names = self.created.lock().map(|c| c.clone()).unwrap_or_default();
            self.delete(Some(&names)).await;
        })
    }
}

/// The body of `GET path` at `addr` with `Host: host` (HTTP/1.0, no redirects), or why
/// not: what the CA's validation request would get from the solver Service.
async fn http_get(addr: &str, host: &str, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: edgemq\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&out).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(3), exchange)
        .await
        .map_err(|_| "no answer within 3s".to_string())??;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "not an HTTP answer".to_string())?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status == "200" {
        Ok(body.to_string())
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// `host:port`, with an IPv6 address in brackets.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(yaml_issuer: &str) -> Certificate {
        let mut c: Certificate = serde_yaml::from_str(&format!(
            "apiVersion: edgemq.io/v1alpha1\nkind: Certificate\nmetadata: {{name: site, namespace: ns}}\n\
             spec:\n  dnsNames: [site.example]\n  issuer:\n    acme:\n      server: https://ca.example/dir\n      solver: {yaml_issuer}\n"
        ))
        .unwrap();
        c.metadata.uid = Some("uid-1".into());
        c
    }

    fn answer() -> Answer {
        Answer {
            domain: "site.example".into(),
            token: "tok".into(),
            key_authorization: "tok.thumb".into(),
        }
    }

    fn settings() -> Settings {
        Settings {
            image: "edgemq:1".into(),
            image_pull_policy: Some("Never".into()),
            trust: Default::default(),
        }
    }

    #[test]
    fn route53_without_keys_uses_the_controllers_identity_only_where_allowed() {
        let ambient = cert("{dns01: {route53: {hostedZoneId: Z1}}}");
        let e = ambient_refusal(&ambient, &Trust::default()).unwrap();
        assert!(
            e.contains("accessKeyIdSecretRef") && e.contains("ambientAwsNamespaces"),
            "{e}"
        );
        let ns = ambient.namespace().unwrap_or_else(|| "default".into());
        let open = Trust {
            ambient_aws_namespaces: vec![ns],
            ..Trust::default()
        };
        assert_eq!(ambient_refusal(&ambient, &open), None);
        let keys = cert("{dns01: {route53: {hostedZoneId: Z1, accessKeyIdSecretRef: {name: k, key: id}, secretAccessKeySecretRef: {name: k, key: secret}}}}");
        assert_eq!(ambient_refusal(&keys, &Trust::default()), None);
        let cf = cert("{dns01: {cloudflare: {apiTokenSecretRef: {name: cf, key: token}}}}");
        assert_eq!(ambient_refusal(&cf, &Trust::default()), None);
    }

    #[test]
    fn the_exec_dns_provider_is_refused_on_a_cluster_and_the_others_are_not() {
        let exec = cert("{dns01: {exec: {command: [/bin/true]}}}");
        assert!(unsupported(&exec).unwrap().contains("only in `edgemq run`"));
        let rfc = cert("{dns01: {rfc2136: {nameserver: '127.0.0.1:53', tsigKeyName: k, tsigAlgorithm: hmac-sha256, tsigSecretRef: {name: s, key: k}}}}");
        assert_eq!(unsupported(&rfc), None);
        assert_eq!(unsupported(&cert("{http01: {}}")), None);
    }

    #[test]
    fn a_solver_is_a_pod_and_a_service_owned_by_the_certificate() {
        let c = cert("{http01: {}}");
        let o = solver_objects(&c, &answer(), &Http01Solver::default(), &settings());
        let name = solver_name(&c, &answer());
        assert!(name.starts_with("edgemq-acme-") && name.len() <= 63);
        assert_eq!(
            o.pod.metadata.owner_references.as_ref().unwrap()[0].kind,
            "Certificate"
        );
        assert_eq!(o.pod.labels().get(SOLVER_LABEL).unwrap(), "uid-1");
        let spec = o.pod.spec.as_ref().unwrap();
        let args = spec.containers[0].args.clone().unwrap();
        assert_eq!(args[0], "acme-solver");
        assert!(args.contains(&"--answer=tok=tok.thumb".to_string()));
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("Never")
        );
        let sc = spec.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let svc = o.service.spec.as_ref().unwrap();
        assert_eq!(svc.ports.as_ref().unwrap()[0].port, 80);
        assert_eq!(
            svc.selector.as_ref().unwrap().get("edgemq.io/acme-solver"),
            Some(&name)
        );
        assert!(o.ingress.is_none());
    }

    #[test]
    fn a_class_in_the_solver_adds_an_ingress_for_the_token_path_only() {
        let c = cert("{http01: {}}");
        let solver = Http01Solver {
            port: Some(8080),
            ingress_class_name: Some("traefik".into()),
            ..Default::default()
        };
        let o = solver_objects(&c, &answer(), &solver, &settings());
        let ing = o.ingress.unwrap().spec.unwrap();
        assert_eq!(ing.ingress_class_name.as_deref(), Some("traefik"));
        let rule = &ing.rules.unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("site.example"));
        let path = &rule.http.as_ref().unwrap().paths[0];
        assert_eq!(
            path.path.as_deref(),
            Some("/.well-known/acme-challenge/tok")
        );
        assert_eq!(path.path_type, "Exact");
        let backend = path.backend.service.as_ref().unwrap();
        assert_eq!(backend.port.as_ref().unwrap().number, Some(8080));
    }

    #[test]
    fn the_account_secret_is_shared_not_owned() {
        let s = account_secret("ns", "0123456789abcdef", b"{}");
        assert_eq!(
            s.metadata.name.as_deref(),
            Some("edgemq-acme-account-0123456789abcdef")
        );
        assert!(s.metadata.owner_references.is_none());
        assert_eq!(s.data.unwrap()["account.json"].0, b"{}");
    }
}
