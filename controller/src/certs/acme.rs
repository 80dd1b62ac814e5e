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
//! Issuing is network work that can take minutes: it runs in the background tasks of
//! the [`Manager`](super::Manager), never inside a reload. The account key stays in
//! the state directory (`acme/accounts/<id>/account.json`, owner-only) and is reused
//! for every Certificate of the same server, email and EAB key id.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use sha2::{Digest, Sha256};

use super::{write_private, CertError, Secrets};
use crate::api::certificate::{AcmeIssuer, Dns01Solver, Http01Solver, KeyAlgorithm};
use crate::api::Certificate;
use crate::broker::TlsMaterial;

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
    /// Secret values of the Certificate's namespace (EAB key, CA bundle, DNS credentials).
    pub secrets: Secrets,
    /// The state directory (accounts are kept under `acme/accounts/`).
    pub state: PathBuf,
    /// Renew this long before expiry (default: a third of the lifetime).
    pub renew_before: Option<Duration>,
}

impl AcmeJob {
    /// The job of an `acme` Certificate, or `None` for other issuers.
    pub fn of(cert: &Certificate, secrets: Secrets, state: &Path) -> Option<AcmeJob> {
        let issuer = cert.spec.issuer.acme.clone()?;
        let mut dns_names = cert.spec.dns_names.clone();
        // The common name must be one of the names; put it first when set.
        if let Some(cn) = &cert.spec.common_name {
            dns_names.retain(|n| n != cn);
            dns_names.insert(0, cn.clone());
        }
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
            state: state.to_path_buf(),
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

/// A certificate obtained from the ACME server.
#[derive(Debug)]
pub struct Issued {
    /// Leaf and chain, and the new key.
    pub material: TlsMaterial,
    /// The certificates after the leaf (the issuing CA chain), PEM.
    pub ca_pem: String,
}

/// An ACME error with the server it came from and every cause (a refused connection
/// reads "client error (Connect): tcp connect error: Connection refused").
fn acme_err<'a>(job: &'a AcmeJob, what: &'a str) -> impl Fn(instant_acme::Error) -> CertError + 'a {
    move |e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let t = s.to_string();
            if !text.contains(&t) {
                text.push_str(": ");
                text.push_str(&t);
            }
            source = s.source();
        }
        CertError::Acme(format!("server {}: {what}: {text}", job.issuer.server))
    }
}

/// HTTP client for the ACME server: the system's roots, or the CA bundle of
/// `caBundleSecretRef` for a private ACME server.
fn http_client(job: &AcmeJob) -> Result<Box<dyn HttpClient>, CertError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match &job.issuer.ca_bundle_secret_ref {
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
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| CertError::Acme(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
        None => builder
            .with_provider_and_platform_verifier(provider)
            .map_err(|e| CertError::Acme(format!("system trust store: {e}")))?,
    };
    let connector = builder.https_or_http().enable_http1().build();
    let client: hyper_util::client::legacy::Client<_, instant_acme::BodyWrapper<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    Ok(Box::new(client))
}

/// Where the account of this server, email and EAB key id is kept.
fn account_path(job: &AcmeJob) -> PathBuf {
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
    let id: String = id[..8].iter().map(|b| format!("{b:02x}")).collect();
    job.state
        .join("acme")
        .join("accounts")
        .join(id)
        .join("account.json")
}

/// Registers a new account (agreeing to the server's terms) and stores its key.
async fn create_account(job: &AcmeJob) -> Result<Account, CertError> {
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
    let json = serde_json::to_vec(&credentials).map_err(|e| CertError::Acme(e.to_string()))?;
    write_private(&account_path(job), &json)?;
    tracing::info!(certificate = %job.certificate, account = %account.id(), "ACME account registered");
    Ok(account)
}

/// The stored account, or a new one.
async fn account(job: &AcmeJob, fresh: bool) -> Result<Account, CertError> {
    if !fresh {
        if let Ok(json) = std::fs::read(account_path(job)) {
            if let Ok(creds) = serde_json::from_slice::<AccountCredentials>(&json) {
                return Account::builder_with_http(http_client(job)?)
                    .from_credentials(creds)
                    .await
                    .map_err(acme_err(job, "directory"));
            }
        }
    }
    create_account(job).await
}

/// One HTTP-01 challenge server per port at a time: issuances that use it take turns.
static HTTP01_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Serves `/.well-known/acme-challenge/<token>` while a challenge is pending; stops
/// when dropped.
struct Http01Server {
    tokens: Arc<Mutex<HashMap<String, String>>>,
    task: tokio::task::JoinHandle<()>,
    addr: SocketAddr,
}

impl Http01Server {
    async fn start(solver: &Http01Solver) -> Result<Http01Server, CertError> {
        let port = solver.port.unwrap_or(80);
        let ips: Vec<IpAddr> = match &solver.bind_address {
            Some(a) => vec![a.parse().map_err(|_| {
                CertError::Invalid(format!("http01 bindAddress `{a}` is not an IP address"))
            })?],
            None => vec![
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ],
        };
        let mut last = None;
        let mut listener = None;
        for ip in ips {
            match tokio::net::TcpListener::bind(SocketAddr::new(ip, port)).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(e) => last = Some((ip, e)),
            }
        }
        let listener = match (listener, last) {
            (Some(l), _) => l,
            (None, Some((ip, e))) => {
                return Err(CertError::Acme(format!(
                    "HTTP-01 challenge server on {}: {e}",
                    SocketAddr::new(ip, port)
                )))
            }
            (None, None) => unreachable!("at least one address is tried"),
        };
        let addr = listener.local_addr().map_err(|e| CertError::Io {
            path: "HTTP-01 listener".into(),
            source: e,
        })?;
        let tokens: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let served = tokens.clone();
        let app = axum::Router::new().route(
            "/.well-known/acme-challenge/{token}",
            axum::routing::get(
                move |axum::extract::Path(token): axum::extract::Path<String>| {
                    let served = served.clone();
                    async move {
                        let answer = served.lock().ok().and_then(|t| t.get(&token).cloned());
                        match answer {
                            Some(a) => Ok(a),
                            None => Err(axum::http::StatusCode::NOT_FOUND),
                        }
                    }
                },
            ),
        );
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "HTTP-01 challenge server stopped");
            }
        });
        tracing::info!(%addr, "HTTP-01 challenge server listening");
        Ok(Http01Server { tokens, task, addr })
    }

    fn answer(&self, token: &str, key_authorization: &str) {
        if let Ok(mut t) = self.tokens.lock() {
            t.insert(token.to_string(), key_authorization.to_string());
        }
    }
}

impl Drop for Http01Server {
    fn drop(&mut self) {
        self.task.abort();
        tracing::info!(addr = %self.addr, "HTTP-01 challenge server stopped");
    }
}

/// DNS-01: sets the TXT record `_acme-challenge.<domain>` to `value` through the
/// solver's provider and waits until it is visible.
async fn present_dns01(
    solver: &Dns01Solver,
    secrets: &Secrets,
    domain: &str,
    value: &str,
) -> Result<(), String> {
    let _ = (solver, secrets, domain, value);
    Err("dns01 solver: not wired yet".into())
}

/// DNS-01: removes the TXT record set by [`present_dns01`].
async fn cleanup_dns01(
    solver: &Dns01Solver,
    secrets: &Secrets,
    domain: &str,
    value: &str,
) -> Result<(), String> {
    let _ = (solver, secrets, domain, value);
    Err("dns01 solver: not wired yet".into())
}

/// Issues a certificate: one complete order against the ACME server.
pub async fn issue(job: &AcmeJob) -> Result<Issued, CertError> {
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
    let mut acct = account(job, false).await?;
    let mut order = match acct.new_order(&NewOrder::new(&ids)).await {
        Err(instant_acme::Error::Api(p))
            if p.r#type
                .as_deref()
                .is_some_and(|t| t.ends_with("accountDoesNotExist")) =>
        {
            tracing::warn!(certificate = %job.certificate, "the ACME server no longer knows the stored account; registering a new one");
            acct = account(job, true).await?;
            acct.new_order(&NewOrder::new(&ids))
                .await
                .map_err(acme_err(job, "new order"))?
        }
        r => r.map_err(acme_err(job, "new order"))?,
    };

    // Answer every pending authorization.
    let _turn;
    let mut http01 = None;
    if let Some(h) = &solver.http01 {
        _turn = HTTP01_TURN.lock().await;
        http01 = Some(Http01Server::start(h).await?);
    }
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
                other => {
                    result = Err(CertError::Acme(format!(
                        "authorization for {} is {other:?}",
                        authz.identifier()
                    )));
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
                result = Err(CertError::Acme(format!(
                    "the ACME server offers no {kind:?} challenge for {domain}"
                )));
                break;
            };
            let ka = challenge.key_authorization();
            if let Some(server) = &http01 {
                server.answer(&challenge.token, ka.as_str());
            } else if let Some(d) = &solver.dns01 {
                let value = ka.dns_value();
                if let Err(e) = present_dns01(d, &job.secrets, &domain, &value).await {
                    result = Err(CertError::Acme(format!("DNS-01 for {domain}: {e}")));
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
    drop(http01);
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
        return Err(CertError::Acme(format!(
            "validation failed: {}",
            challenge_errors(order).await
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
    fn the_issuer_chain_is_what_follows_the_leaf() {
        let leaf = "-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n";
        let ca = "-----BEGIN CERTIFICATE-----\nBB\n-----END CERTIFICATE-----\n";
        assert_eq!(split_chain(&format!("{leaf}{ca}")), ca);
        assert_eq!(split_chain(leaf), "");
    }
}
