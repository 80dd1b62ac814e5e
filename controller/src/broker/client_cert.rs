//! Client certificates on a listener: the rustls verifier that checks them (the CA a
//! listener's `clientAuth` names, its revocation list), the identity a certificate
//! logs in with, and why a handshake was refused, for metrics and logs.
//!
//! ```text
//!  TLS handshake ── WebPkiClientVerifier (CA, CRL) ──► refused: reason counted + logged
//!        │ accepted
//!        ▼
//!  identity (CN / SAN / subject) ──► CONNECT: username (and client id) of the client
//!        │
//!  CA or CRL replaced ──► every connection's chain checked again; failures closed
//! ```
//!
//! Certificates are checked by rustls' own verifier (webpki); nothing here re-implements
//! path building or revocation. No key material is logged: a refusal names the reason,
//! the peer address and the listener.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};

use crate::api::broker::CertificateIdentity;
use crate::plan::ClientAuthPlan;

/// The client CA (and revocation list) of a listener, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCaMaterial {
    /// CA bundle, PEM.
    pub ca_pem: String,
    /// Certificate revocation list, PEM or DER.
    pub crl: Option<Vec<u8>>,
}

/// A listener's client certificate policy: its verifier and what a certificate it
/// accepts logs in as.
pub struct ClientCertPolicy {
    /// The listener's `clientAuth`.
    pub plan: ClientAuthPlan,
    /// The verifier rustls runs in the handshake (also used to re-check connected
    /// clients when the CA or CRL changes).
    pub verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for ClientCertPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertPolicy")
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

impl ClientCertPolicy {
    /// Builds the verifier: certificates must chain to a CA of `m.ca_pem`; with a CRL,
    /// the client's own certificate must not be on it (and the CRL must be the one of
    /// its issuer, as OpenSSL's CRL check in Mosquitto asks).
    pub fn new(plan: &ClientAuthPlan, m: &ClientCaMaterial) -> Result<ClientCertPolicy, String> {
        let cas = rustls_pemfile::certs(&mut m.ca_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("client CA is not valid PEM: {e}"))?;
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(cas);
        if added == 0 {
            return Err("no usable CA certificate found in the client CA".into());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        if let Some(crl) = &m.crl {
            builder = builder
                .with_crls(parse_crls(crl)?)
                .only_check_end_entity_revocation();
        }
        if !plan.required {
            builder = builder.allow_unauthenticated();
        }
        let verifier = builder
            .build()
            .map_err(|e| format!("client CA or CRL not usable: {e}"))?;
        Ok(ClientCertPolicy {
            plan: plan.clone(),
            verifier,
        })
    }

    /// Checks a connected client's chain again (after the CA or CRL changed):
    /// `Err(reason)` when the new policy would refuse it now.
    pub fn recheck(&self, chain: &[CertificateDer<'static>]) -> Result<(), &'static str> {
        let Some((end, rest)) = chain.split_first() else {
            return Err("no_certificate");
        };
        self.verifier
            .verify_client_cert(end, rest, UnixTime::now())
            .map(|_| ())
            .map_err(|e| refusal_reason(&e))
    }
}

/// A CRL file: one or more PEM `X509 CRL` blocks, or one DER CRL.
fn parse_crls(bytes: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let pem = rustls_pemfile::crls(&mut &bytes[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("CRL is not valid PEM: {e}"))?;
    if !pem.is_empty() {
        return Ok(pem);
    }
    if bytes.first() == Some(&0x30) {
        return Ok(vec![CertificateRevocationListDer::from(bytes.to_vec())]);
    }
    Err("no CRL found (expected PEM `X509 CRL` blocks or DER)".into())
}

/// Why a client certificate was refused, as a metric label: `unknown_ca`, `expired`,
/// `not_yet_valid`, `revoked`, `revocation_unknown` (no CRL of its issuer),
/// `no_certificate`, `bad_certificate`.
pub fn refusal_reason(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::NoCertificatesPresented => "no_certificate",
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::Revoked => "revoked",
            CertificateError::UnknownRevocationStatus
            | CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => "revocation_unknown",
            _ => "bad_certificate",
        },
        _ => "bad_certificate",
    }
}

/// The refusal reason of a failed TLS accept, when a client certificate caused it.
pub fn handshake_refusal(e: &std::io::Error) -> Option<&'static str> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    matches!(
        tls,
        rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)
    )
    .then(|| refusal_reason(tls))
}

/// The identity a certificate logs in with, or why it has none.
pub fn identity(der: &[u8], which: CertificateIdentity) -> Result<String, &'static str> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| "certificate does not parse")?;
    let san = |pick: fn(&GeneralName<'_>) -> Option<String>| -> Option<String> {
        let ext = cert.subject_alternative_name().ok()??;
        ext.value.general_names.iter().find_map(pick)
    };
    let found = match which {
        CertificateIdentity::CommonName => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        CertificateIdentity::DnsName => san(|g| match g {
            GeneralName::DNSName(s) => Some(s.to_string()),
            _ => None,
        }),
        CertificateIdentity::Uri => san(|g| match g {
            GeneralName::URI(s) => Some(s.to_string()),
            _ => None,
        }),
        CertificateIdentity::Email => san(|g| match g {
            GeneralName::RFC822Name(s) => Some(s.to_string()),
            _ => None,
        }),
        CertificateIdentity::Subject => Some(rfc2253(cert.subject())),
    };
    found
        .filter(|s| !s.is_empty() && !super::check::refused_in_connect(s) && !s.contains('\0'))
        .ok_or("certificate has no usable identity")
}

/// A name as RFC 2253 writes it (and OpenSSL's `XN_FLAG_RFC2253`, which Mosquitto's
/// `use_subject_as_username` uses): the last RDN first, `,` between RDNs, `+` inside
/// one, special characters escaped.
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let all: Vec<_> = name.iter().collect();
    let rdns: Vec<String> = all
        .into_iter()
        .rev()
        .map(|rdn| {
            rdn.iter()
                .map(|a| {
                    let key = x509_parser::objects::oid2abbrev(a.attr_type(), registry)
                        .map(str::to_string)
                        .unwrap_or_else(|_| a.attr_type().to_id_string());
                    let value = a.as_str().map(escape_rfc2253).unwrap_or_default();
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.join(",")
}

fn escape_rfc2253(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The certificate a connection logged in with, kept so that a new CA or CRL can be
/// checked against it.
#[derive(Clone, Debug)]
pub struct PeerCertificate {
    /// The chain the client sent, end entity first.
    pub chain: Arc<Vec<CertificateDer<'static>>>,
    /// Its identity, or why it has none.
    pub identity: Result<String, &'static str>,
    /// The policy of the listener that accepted it.
    pub policy: Arc<ClientCertPolicy>,
}

/// Keeps a certificate connection in [`super::Shared::certificate_connections`] while it
/// lives.
pub(super) struct Registration<'a> {
    pub(super) shared: &'a super::Shared,
    pub(super) conn_id: u64,
}
impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.shared
            .certificate_connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.conn_id);
    }
}

/// Who a client certificate logs in as: its identity, when a certificate user has it
/// or (unless `unknownIdentity: refuse`) no user does. A certificate never logs in as
/// a password user. `Err` is the metric reason and the log text.
pub(super) fn login(
    auth: &super::AuthConfig,
    cert: &PeerCertificate,
) -> Result<Arc<str>, (&'static str, &'static str)> {
    let identity = cert.identity.as_ref().map_err(|e| ("no_identity", *e))?;
    if auth.certificate_users.contains(identity) {
        return Ok(identity.as_str().into());
    }
    if auth.users.contains_key(identity) {
        return Err((
            "unknown_identity",
            "the certificate's identity is a password user's name",
        ));
    }
    if cert.policy.plan.refuse_unknown {
        return Err((
            "unknown_identity",
            "no MqttUser has the certificate's identity (unknownIdentity: refuse)",
        ));
    }
    Ok(identity.as_str().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(params: rcgen::CertificateParams) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_identity_is_the_cn_a_san_or_the_whole_subject() {
        let mut p = rcgen::CertificateParams::new(vec![
            "dev-1.example.com".to_string(),
            "dev-1b.example.com".to_string(),
        ])
        .unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CountryName, "GB");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme, Ltd");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "device-1");
        p.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://home/device-1".try_into().unwrap(),
        ));
        p.subject_alt_names.push(rcgen::SanType::Rfc822Name(
            "d1@example.com".try_into().unwrap(),
        ));
        let der = cert_with(p);
        assert_eq!(
            identity(&der, CertificateIdentity::CommonName).unwrap(),
            "device-1"
        );
        assert_eq!(
            identity(&der, CertificateIdentity::DnsName).unwrap(),
            "dev-1.example.com"
        );
        assert_eq!(
            identity(&der, CertificateIdentity::Uri).unwrap(),
            "spiffe://home/device-1"
        );
        assert_eq!(
            identity(&der, CertificateIdentity::Email).unwrap(),
            "d1@example.com"
        );
        assert_eq!(
            identity(&der, CertificateIdentity::Subject).unwrap(),
            "CN=device-1,O=Acme\\, Ltd,C=GB"
        );
    }

    #[test]
    fn a_certificate_without_the_asked_field_or_with_control_characters_has_no_identity() {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme");
        let der = cert_with(p);
        assert!(identity(&der, CertificateIdentity::CommonName).is_err());
        assert!(identity(&der, CertificateIdentity::DnsName).is_err());
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "bad\u{1}name");
        assert!(identity(&cert_with(p), CertificateIdentity::CommonName).is_err());
        assert!(identity(b"not a certificate", CertificateIdentity::CommonName).is_err());
    }

    #[test]
    fn refusals_are_named_by_their_reason() {
        use rustls::Error;
        let cases = [
            (Error::NoCertificatesPresented, "no_certificate"),
            (
                Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "unknown_ca",
            ),
            (
                Error::InvalidCertificate(CertificateError::Expired),
                "expired",
            ),
            (
                Error::InvalidCertificate(CertificateError::Revoked),
                "revoked",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(refusal_reason(&e), want);
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
            assert_eq!(handshake_refusal(&io), Some(want));
        }
        let other = std::io::Error::new(std::io::ErrorKind::InvalidData, Error::DecryptError);
        assert_eq!(handshake_refusal(&other), None);
    }
}
