//! The `acme` issuer: certificates from Let's Encrypt or any RFC 8555 server, through
//! instant-acme.
//!
//! ```text
//!  account (state dir, reused) ─► new order ─► per name: answer the challenge
//!     HTTP-01: edgemq serves /.well-known/acme-challenge/<token> on the solver's port
//!     DNS-01:  a TXT record _acme-challenge.<name>, checked visible, removed after
//!  ─► wait until ready ─► CSR with a fresh key ─► download the chain
//! ```
//!
//! Issuing is network work that can take minutes: it runs in a background task per
//! Certificate ([`super::renewal`]), never inside a reload or a reconcile. What lasts
//! is kept by an [`AcmeStore`]: the issued pair, and the account key, reused for every
//! Certificate of the same server, email and EAB key id. Standalone mode keeps both in
//! the state directory (`acme/accounts/<id>/account.json`, owner-only); on a cluster
//! they are Secrets. HTTP-01 answers are served by the store's [`Http01Host`].

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures_util::future::BoxFuture;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use sha2::{Digest, Sha256};

use super::http01::{Answer, Http01Host};
use super::{CertError, Secrets, Stored};
use crate::api::certificate::{AcmeIssuer, Dns01Solver, Http01Solver, KeyAlgorithm};
use crate::api::Certificate;
use crate::tls::TlsMaterial;

/// Everything one issuance needs, owned, so it can run in a background task.
#[derive(Clone, Debug, PartialEq)]
pub struct AcmeJob {
    /// `namespace/name` of the Certificate, for logs and errors.
    pub certificate: String,
    /// The issuer settings.
    pub issuer: AcmeIssuer,
    /// DNS names to put in the certificate (the first is the common name).
    pub dns_names: Vec<String>,
    /// Key algorithm of the certificate's key.
    pub algorithm: KeyAlgorithm,
    /// The Secret values the issuer refers to (EAB key, CA bundle, DNS credentials).
    pub secrets: Secrets,
    /// Renew this long before expiry (default: a third of the lifetime).
    pub renew_before: Option<Duration>,
}

impl AcmeJob {
    /// The job of an `acme` Certificate, or `None` for other issuers.
    pub fn of(cert: &Certificate, secrets: Secrets) -> Option<AcmeJob> {
        let issuer = cert.spec.issuer.acme.clone()?;
        let mut dns_names = cert.spec.dns_names.clone();
        // The common name must be one of the names; put it first when set.
        if let Some(cn) = &cert.spec.common_name {
            dns_names.retain(|n| n != cn);
            dns_names.insert(0, cn.clone());
        }
        let secrets = referenced(&issuer, &secrets);
        Some(AcmeJob {
            certificate: format!(
                "{}/{}",
                cert.metadata.namespace.as_deref().unwrap_or("default"),
                cert.metadata.name.as_deref().unwrap_or("")
            ),
            issuer,
            dns_names,
            algorithm: cert.spec.private_key.algorithm,
            secrets,
            renew_before: cert
                .spec
                .renew_before
                .as_deref()
                .and_then(super::parse_duration),
        })
    }

    /// What a stored pair must match to be reused: server, names and key algorithm.
    /// Solver or account changes do not need a new certificate.
    pub fn request(&self) -> String {
        format!(
            "acme\nserver={}\nnames={}\nalgorithm={:?}\n",
            self.issuer.server,
            self.dns_names.join(","),
            self.algorithm
        )
    }
}

/// Where an ACME issuer keeps what lasts, and how it answers HTTP-01: the state
/// directory and this process standalone, Secrets and a solver Pod on a cluster.
pub trait AcmeStore: Send + Sync {
    /// The stored pair and the request it answers, if any.
    fn stored(&self) -> BoxFuture<'_, Option<Stored>>;
    /// Stores a new pair with its CA chain and the request it answers.
    fn store<'a>(
        &'a self,
        issued: &'a Issued,
        request: &'a str,
    ) -> BoxFuture<'a, Result<(), CertError>>;
    /// The stored credentials (JSON) of account `id` ([`account_id`]).
    fn account<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Option<Vec<u8>>>;
    /// Stores the credentials of account `id`.
    fn save_account<'a>(
        &'a self,
        id: &'a str,
        json: &'a [u8],
    ) -> BoxFuture<'a, Result<(), CertError>>;
    /// A host for the HTTP-01 answers of one order.
    fn http01(&self, solver: &Http01Solver) -> Box<dyn Http01Host>;
}

/// The Secret values the issuer refers to (every `{name, key}` reference in its
/// settings: EAB key, CA bundle, DNS provider credentials), so that editing an
/// unrelated Secret of the namespace does not restart the issuer and its backoff.
fn referenced(issuer: &AcmeIssuer, all: &Secrets) -> Secrets {
    fn walk(v: &serde_json::Value, all: &Secrets, out: &mut Secrets) {
        match v {
            serde_json::Value::Object(m) => {
                if let (Some(serde_json::Value::String(n)), Some(serde_json::Value::String(k))) =
                    (m.get("name"), m.get("key"))
                {
                    if let Some(val) = all.get(n, k) {
                        out.0.insert((n.clone(), k.clone()), val.to_vec());
                    }
                }
                m.values().for_each(|v| walk(v, all, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, all, out)),
            _ => {}
        }
    }
    let mut out = Secrets::default();
    if let Ok(v) = serde_json::to_value(issuer) {
        walk(&v, all, &mut out);
    }
    out
}

/// A certificate obtained from the ACME server.
#[derive(Debug)]
pub struct Issued {
    /// Leaf and chain, and the new key.
    pub material: TlsMaterial,
    /// The certificates after the leaf (the issuing CA chain), PEM.
    pub ca_pem: String,
}

/// Why the ACME server did not give a certificate ([`CertError::Issuer`] shows it
/// after `ACME: `).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the server failed or was refused, at `step` (`new order`,
    /// `validation`...).
    #[error("server {server}: {step}: {}", cause_chain(.source))]
    Server {
        /// The directory URL.
        server: String,
        /// What was asked.
        step: &'static str,
        /// The client's error (the server's problem document, or why it could not be
        /// reached).
        #[source]
        source: instant_acme::Error,
    },
    /// An authorization is neither pending nor valid (invalid, expired, revoked...).
    #[error("authorization for {identifier} is {status:?}")]
    Authorization {
        /// The name it is for.
        identifier: String,
        /// Its status.
        status: AuthorizationStatus,
    },
    /// The server offers no challenge of the solver's type for a name.
    #[error("the ACME server offers no {kind:?} challenge for {domain}")]
    NoChallenge {
        /// The solver's challenge type.
        kind: ChallengeType,
        /// The name.
        domain: String,
    },
    /// The order became invalid; the server's reasons per name.
    #[error("validation failed: {0}")]
    ValidationFailed(String),
    /// The HTTP-01 challenge server could not listen.
    #[error(transparent)]
    ChallengeServer(super::http01::BindError),
    /// TLS settings for a private CA bundle could not be made.
    #[error("{0}")]
    Tls(#[source] rustls::Error),
    /// The system's trust store could not be read.
    #[error("system trust store: {0}")]
    TrustStore(#[source] std::io::Error),
    /// The new account's credentials could not be serialized.
    #[error("{0}")]
    Credentials(#[source] serde_json::Error),
}

impl From<super::http01::BindError> for CertError {
    fn from(e: super::http01::BindError) -> CertError {
        CertError::Issuer(Error::ChallengeServer(e))
    }
}

/// An error and every cause not already in its text (a refused connection reads
/// "client error (Connect): tcp connect error: Connection refused").
fn cause_chain(e: &instant_acme::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

/// An ACME error with the server it came from, at `step`.
fn acme_err<'a>(
    job: &'a AcmeJob,
    step: &'static str,
) -> impl Fn(instant_acme::Error) -> CertError + 'a {
    move |source| {
        CertError::Issuer(Error::Server {
            server: job.issuer.server.clone(),
            step,
            source,
        })
    }
}

/// HTTP client for the ACME server: the system's roots, or the CA bundle of
/// `caBundleSecretRef` for a private ACME server.
fn http_client(job: &AcmeJob) -> Result<Box<dyn HttpClient>, CertError> {
    let tls = match &job.issuer.ca_bundle_secret_ref {
        Some(r) => {
            let pem = job.secrets.text(&r.name, &r.key)?;
            let mut roots = rustls::RootCertStore::empty();
            let mut n = 0;
            for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
                let c = c.map_err(|e| {
                    CertError::Invalid(format!("CA bundle in Secret {}: {e}", r.name))
                })?;
                roots.add(c).map_err(|e| {
                    CertError::Invalid(format!("CA bundle in Secret {}: {e}", r.name))
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(CertError::Invalid(format!(
                    "CA bundle in Secret {} key {} holds no PEM certificate",
                    r.name, r.key
                )));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| CertError::Issuer(Error::Tls(e)))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(config)
        }
        None => None,
    };
    let connector =
        super::https_connector(tls).map_err(|e| CertError::Issuer(Error::TrustStore(e)))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector);
    Ok(Box::new(Patient(client)))
}

/// How long one request to the ACME server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The ACME client's HTTP/1.1 client, whose requests give up after
/// [`REQUEST_TIMEOUT`]: a server that accepts connections and never answers would
/// otherwise stall the issuer forever instead of failing and retrying. Our own rather
/// than instant-acme's, which would link an HTTP/2 client (1.2 MB of code) that no
/// ACME server needs.
struct Patient(
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        instant_acme::BodyWrapper<bytes::Bytes>,
    >,
);

#[derive(Debug, thiserror::Error)]
#[error("no answer within {0:?}")]
struct NoAnswer(Duration);

impl HttpClient for Patient {
    fn request(
        &self,
        req: axum::http::Request<instant_acme::BodyWrapper<bytes::Bytes>>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<instant_acme::BytesResponse, instant_acme::Error>,
                > + Send,
        >,
    > {
        let fut = self.0.request(req);
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
                Ok(Ok(response)) => Ok(instant_acme::BytesResponse::from(response)),
                Ok(Err(e)) => Err(instant_acme::Error::Other(Box::new(e))),
                Err(_) => Err(instant_acme::Error::Other(Box::new(NoAnswer(
                    REQUEST_TIMEOUT,
                )))),
            }
        })
    }
}

/// The id of the account of this server, email and EAB key id: 16 hex digits.
pub fn account_id(job: &AcmeJob) -> String {
    let id = Sha256::digest(
        format!(
            "{}\n{}\n{}",
            job.issuer.server,
            job.issuer.email.as_deref().unwrap_or(""),
            job.issuer
                .external_account_binding
                .as_ref()
                .map(|e| e.key_id.as_str())
                .unwrap_or("")
        )
        .as_bytes(),
    );
    id[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Registers a new account (agreeing to the server's terms) and stores its key.
async fn create_account(job: &AcmeJob, store: &dyn AcmeStore) -> Result<Account, CertError> {
    let contact = job.issuer.email.as_ref().map(|e| format!("mailto:{e}"));
    let contact: Vec<&str> = contact.iter().map(|s| s.as_str()).collect();
    let eab = match &job.issuer.external_account_binding {
        Some(b) => {
            let raw = job
                .secrets
                .text(&b.key_secret_ref.name, &b.key_secret_ref.key)?;
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(raw.trim().trim_end_matches('='))
                .map_err(|e| {
                    CertError::Invalid(format!(
                        "external account binding key in Secret {} is not base64url: {e}",
                        b.key_secret_ref.name
                    ))
                })?;
            Some(ExternalAccountKey::new(b.key_id.clone(), &key))
        }
        None => None,
    };
    let (account, credentials) = Account::builder_with_http(http_client(job)?)
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            job.issuer.server.clone(),
            eab.as_ref(),
        )
        .await
        .map_err(acme_err(job, "account registration"))?;
    let json =
        serde_json::to_vec(&credentials).map_err(|e| CertError::Issuer(Error::Credentials(e)))?;
    store.save_account(&account_id(job), &json).await?;
    tracing::info!(certificate = %job.certificate, account = %account.id(), "ACME account registered");
    Ok(account)
}

/// The stored account, or a new one.
async fn account(job: &AcmeJob, store: &dyn AcmeStore, fresh: bool) -> Result<Account, CertError> {
    if !fresh {
        if let Some(json) = store.account(&account_id(job)).await {
            if let Ok(creds) = serde_json::from_slice::<AccountCredentials>(&json) {
                return Account::builder_with_http(http_client(job)?)
                    .from_credentials(creds)
                    .await
                    .map_err(acme_err(job, "directory"));
            }
        }
    }
    create_account(job, store).await
}

/// DNS-01: sets the TXT record `_acme-challenge.<domain>` to `value` through the
/// solver's provider and waits until it is visible.
async fn present_dns01(
    solver: &Dns01Solver,
    secrets: &Secrets,
    domain: &str,
    value: &str,
) -> Result<(), super::dns01::Error> {
    dns01_of(solver, secrets)?.set(domain, value).await
}

/// The configured DNS-01 provider, with its Secrets resolved.
fn dns01_of(
    solver: &Dns01Solver,
    secrets: &Secrets,
) -> Result<super::dns01::Dns01, super::dns01::Error> {
    super::dns01::Dns01::new(solver, &|r| {
        secrets.get(&r.name, &r.key).map(<[u8]>::to_vec)
    })
}

/// DNS-01: removes the TXT record set by [`present_dns01`].
async fn cleanup_dns01(
    solver: &Dns01Solver,
    secrets: &Secrets,
    domain: &str,
    value: &str,
) -> Result<(), super::dns01::Error> {
    dns01_of(solver, secrets)?.clear(domain, value).await
}

/// Issues a certificate: one complete order against the ACME server.
pub async fn issue(job: &AcmeJob, store: &dyn AcmeStore) -> Result<Issued, CertError> {
    let solver = &job.issuer.solver;
    if job.dns_names.is_empty() {
        return Err(CertError::Invalid(
            "an ACME certificate needs at least one DNS name".into(),
        ));
    }
    let key = super::new_key(job.algorithm)?;
    let ids: Vec<Identifier> = job
        .dns_names
        .iter()
        .map(|n| Identifier::Dns(n.clone()))
        .collect();
    let mut acct = account(job, store, false).await?;
    let mut order = match acct.new_order(&NewOrder::new(&ids)).await {
        Err(instant_acme::Error::Api(p))
            if p.r#type
                .as_deref()
                .is_some_and(|t| t.ends_with("accountDoesNotExist")) =>
        {
            tracing::warn!(certificate = %job.certificate, "the ACME server no longer knows the stored account; registering a new one");
            acct = account(job, store, true).await?;
            acct.new_order(&NewOrder::new(&ids))
                .await
                .map_err(acme_err(job, "new order"))?
        }
        r => r.map_err(acme_err(job, "new order"))?,
    };

    // Answer every pending authorization.
    let http01 = solver.http01.as_ref().map(|h| store.http01(h));
    let mut dns_records: Vec<(String, String)> = Vec::new();
    let mut result: Result<(), CertError> = Ok(());
    {
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut authz = match a {
                Ok(a) => a,
                Err(e) => {
                    result = Err(acme_err(job, "authorization")(e));
                    break;
                }
            };
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                status => {
                    result = Err(CertError::Issuer(Error::Authorization {
                        identifier: authz.identifier().to_string(),
                        status,
                    }));
                    break;
                }
            }
            let domain = authz.identifier().identifier.to_string_lossy();
            let kind = if http01.is_some() {
                ChallengeType::Http01
            } else {
                ChallengeType::Dns01
            };
            let Some(mut challenge) = authz.challenge(kind.clone()) else {
                result = Err(CertError::Issuer(Error::NoChallenge { kind, domain }));
                break;
            };
            let ka = challenge.key_authorization();
            if let Some(host) = &http01 {
                let answer = Answer {
                    domain: domain.clone(),
                    token: challenge.token.clone(),
                    key_authorization: ka.as_str().to_string(),
                };
                if let Err(e) = host.present(&answer).await {
                    result = Err(e);
                    break;
                }
            } else if let Some(d) = &solver.dns01 {
                let value = ka.dns_value();
                if let Err(source) = present_dns01(d, &job.secrets, &domain, &value).await {
                    result = Err(CertError::Dns01 {
                        domain: domain.clone(),
                        source: Box::new(source),
                    });
                    break;
                }
                dns_records.push((domain.clone(), value));
            } else {
                result = Err(CertError::Invalid("no ACME solver set".into()));
                break;
            }
            if let Err(e) = challenge.set_ready().await {
                result = Err(acme_err(job, "challenge")(e));
                break;
            }
        }
    }
    let result = match result {
        Ok(()) => finish(&mut order, job, &key).await,
        Err(e) => Err(e),
    };
    if let Some(host) = &http01 {
        host.cleanup().await;
    }
    if let Some(d) = &solver.dns01 {
        for (domain, value) in &dns_records {
            if let Err(e) = cleanup_dns01(d, &job.secrets, domain, value).await {
                tracing::warn!(certificate = %job.certificate, %domain, error = %e, "could not remove the DNS-01 record");
            }
        }
    }
    result
}

trait IdentifierText {
    fn to_string_lossy(&self) -> String;
}

impl IdentifierText for Identifier {
    fn to_string_lossy(&self) -> String {
        match self {
            Identifier::Dns(d) => d.clone(),
            Identifier::Ip(ip) => ip.to_string(),
            other => format!("{other:?}"),
        }
    }
}

/// Waits for the order to be ready, sends the CSR and downloads the chain.
async fn finish(
    order: &mut instant_acme::Order,
    job: &AcmeJob,
    key: &rcgen::KeyPair,
) -> Result<Issued, CertError> {
    let patience = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(180));
    let status = order
        .poll_ready(&patience)
        .await
        .map_err(acme_err(job, "validation"))?;
    if status != OrderStatus::Ready {
        return Err(CertError::Issuer(Error::ValidationFailed(
            challenge_errors(order).await,
        )));
    }
    let mut params = rcgen::CertificateParams::new(job.dns_names.clone())
        .map_err(|e| CertError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, job.dns_names[0].clone());
    let csr = params
        .serialize_request(key)
        .map_err(|e| CertError::Generate(e.to_string()))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(acme_err(job, "finalize"))?;
    let chain = order
        .poll_certificate(&patience)
        .await
        .map_err(acme_err(job, "certificate download"))?;
    let ca_pem = split_chain(&chain);
    Ok(Issued {
        material: TlsMaterial {
            cert_pem: chain,
            key_pem: key.serialize_pem(),
        },
        ca_pem,
    })
}

/// Why the challenges of an invalid order failed, as the server says.
async fn challenge_errors(order: &mut instant_acme::Order) -> String {
    let mut out = Vec::new();
    let mut authzs = order.authorizations();
    while let Some(Ok(a)) = authzs.next().await {
        for c in &a.challenges {
            if let Some(e) = &c.error {
                out.push(format!("{}: {e}", a.identifier()));
            }
        }
    }
    if out.is_empty() {
        "the order is invalid".into()
    } else {
        out.join("; ")
    }
}

/// The certificates of a PEM chain after the first (the issuer's chain).
fn split_chain(chain: &str) -> String {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    let mut starts = chain.match_indices(BEGIN).map(|(i, _)| i);
    starts.next();
    match starts.next() {
        Some(i) => chain[i..].to_string(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_keeps_only_the_secrets_its_issuer_refers_to() {
        let cert: Certificate = serde_yaml::from_str(
            "apiVersion: edgemq.io/v1alpha1\nkind: Certificate\nmetadata: {name: c, namespace: default}\n\
             spec:\n  dnsNames: [a.example]\n  issuer:\n    acme:\n      server: https://ca.example/dir\n      \
             caBundleSecretRef: {name: acme, key: ca.crt}\n      \
             externalAccountBinding: {keyId: k, keySecretRef: {name: eab, key: hmac}}\n      \
             solver: {http01: {}}\n",
        )
        .unwrap();
        let mut all = Secrets::default();
        for (n, k) in [
            ("acme", "ca.crt"),
            ("eab", "hmac"),
            ("eab", "other"),
            ("pw", "alice"),
        ] {
            all.0.insert((n.into(), k.into()), b"v".to_vec());
        }
        let job = AcmeJob::of(&cert, all).unwrap();
        let kept: Vec<_> = job.secrets.0.keys().cloned().collect();
        assert_eq!(
            kept,
            vec![
                ("acme".to_string(), "ca.crt".to_string()),
                ("eab".to_string(), "hmac".to_string())
            ]
        );
    }

    #[test]
    fn the_issuer_chain_is_what_follows_the_leaf() {
        let leaf = "-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n";
        let ca = "-----BEGIN CERTIFICATE-----\nBB\n-----END CERTIFICATE-----\n";
        assert_eq!(split_chain(&format!("{leaf}{ca}")), ca);
        assert_eq!(split_chain(leaf), "");
    }
}
