//! The `ca` issuer: certificates signed by a private CA whose certificate and key are
//! in a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`). For brokers on a LAN and
//! for device and bridge client certificates: every certificate it signs is valid for
//! both server and client authentication. The CA certificate is stored as `ca.crt`
//! next to the pair, for clients and bridges that must trust it.

use sha2::{Digest, Sha256};

use super::{
    cert_info, common_name, leaf_params, new_key, parse_duration, subject_names, CertError, Issued,
    Secrets, Stored,
};
use crate::api::Certificate;
use crate::tls::TlsMaterial;

/// What a stored pair must match to be reused: names, lifetime, and which CA signed it.
fn request(cert: &Certificate, ca_pem: &str) -> String {
    let ca = Sha256::digest(ca_pem.trim().as_bytes());
    format!(
        "ca\nnames={}\ncn={}\nlifetime={}\nalgorithm={:?}\nca-sha256={}\n",
        subject_names(cert).join(","),
        common_name(cert),
        super::lifetime(cert).as_secs(),
        cert.spec.private_key.algorithm,
        ca.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// The pair `stored` when it answers the current request (same names, same CA) and
/// is not due for renewal, otherwise one newly signed by the CA of Secret
/// `secret_ref`. Stores nothing: the caller keeps what is `new`.
pub fn issue(
    cert: &Certificate,
    secret_ref: &str,
    secrets: &Secrets,
    stored: Option<&Stored>,
    now: time::OffsetDateTime,
) -> Result<Issued, CertError> {
    let ca_pem = secrets.text(secret_ref, "tls.crt")?;
    let ca_key_pem = secrets.text(secret_ref, "tls.key")?;
    let renew_before = cert.spec.renew_before.as_deref().and_then(parse_duration);
    let wanted = request(cert, &ca_pem);
    if let Some(stored) = stored {
        if stored.request == wanted {
            if let Ok(info) = cert_info(&stored.material.cert_pem, renew_before, now) {
                if !info.due(now) {
                    return Ok(Issued {
                        material: stored.material.clone(),
                        ca_pem,
                        request: wanted,
                        info,
                        new: false,
                    });
                }
            }
        }
    }
    // The CA's own validity must cover the certificate, or clients will reject it.
    let ca_info = cert_info(&ca_pem, None, now)
        .map_err(|e| CertError::Invalid(format!("CA certificate in Secret {secret_ref}: {e}")))?;
    let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem).map_err(|e| {
        CertError::Invalid(format!(
            "CA key in Secret {secret_ref} (tls.key) is not a PKCS#8 PEM private key: {e}"
        ))
    })?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(|e| CertError::Invalid(format!("CA certificate in Secret {secret_ref}: {e}")))?;
    let mut params = leaf_params(cert, now)?;
    if let Some(ca_end) = super::parse_rfc3339(&ca_info.not_after) {
        if ca_end <= now {
            return Err(CertError::Invalid(format!(
                "the CA certificate in Secret {secret_ref} expired at {}",
                ca_info.not_after
            )));
        }
        if params.not_after > ca_end {
            params.not_after = ca_end;
        }
    }
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let key = new_key(cert.spec.private_key.algorithm)?;
    let issued = params
        .signed_by(&key, &issuer)
        .map_err(|e| CertError::Generate(e.to_string()))?;
    let material = TlsMaterial {
        cert_pem: issued.pem(),
        key_pem: key.serialize_pem(),
    };
    let info = cert_info(&material.cert_pem, renew_before, now)?;
    tracing::info!(
        certificate = cert.metadata.name.as_deref().unwrap_or(""),
        serial = %info.serial,
        not_after = %info.not_after,
        "certificate signed by the private CA of Secret {secret_ref}"
    );
    Ok(Issued {
        material,
        ca_pem,
        request: wanted,
        info,
        new: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::certificate::{CaIssuer, CertificateSpec, Issuer};
    use crate::certs::{cert_dir, CertInfo};
    use crate::tls::TlsMaterial;

    /// Issued in place and kept in the state directory, as `edgemq run` does (the
    /// Certificate names Secret `secret_ref`).
    fn ensure(
        state: &std::path::Path,
        cert: &Certificate,
        secret_ref: &str,
        secrets: &Secrets,
        now: time::OffsetDateTime,
    ) -> Result<(TlsMaterial, CertInfo), CertError> {
        assert_eq!(cert.spec.issuer.ca.as_ref().unwrap().secret_ref, secret_ref);
        crate::certs::ensure(state, cert, secrets, now)
    }
    use rustls::client::danger::ServerCertVerifier;

    fn ca_secret() -> (Secrets, String) {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "LAN CA");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = p.self_signed(&key).unwrap();
        let mut s = Secrets::default();
        s.0.insert(("lan-ca".into(), "tls.crt".into()), ca.pem().into_bytes());
        s.0.insert(
            ("lan-ca".into(), "tls.key".into()),
            key.serialize_pem().into_bytes(),
        );
        (s, ca.pem())
    }

    fn cert(dns: &[&str]) -> Certificate {
        let mut c = Certificate::new(
            "device-1",
            CertificateSpec {
                dns_names: dns.iter().map(|s| s.to_string()).collect(),
                issuer: Issuer {
                    ca: Some(CaIssuer {
                        secret_ref: "lan-ca".into(),
                    }),
                    ..Issuer::default()
                },
                ..CertificateSpec::default()
            },
        );
        c.metadata.namespace = Some("default".into());
        c
    }

    #[test]
    fn a_ca_signed_certificate_chains_to_the_ca_and_serves_both_ends_of_tls() {
        let dir = tempfile::tempdir().unwrap();
        let (secrets, ca_pem) = ca_secret();
        let c = cert(&["mqtt.lan"]);
        let now = time::OffsetDateTime::now_utc();
        let (m, _) = ensure(dir.path(), &c, "lan-ca", &secrets, now).unwrap();
        let (_, leaf) = x509_parser::pem::parse_x509_pem(m.cert_pem.as_bytes()).unwrap();
        let leaf = leaf.parse_x509().unwrap();
        let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).unwrap();
        let ca = ca.parse_x509().unwrap();
        assert_eq!(leaf.issuer(), ca.subject());
        // A TLS client trusting only the CA accepts the certificate for its name.
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let der = rustls_pemfile::certs(&mut m.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        verifier
            .verify_server_cert(
                &der,
                &[],
                &rustls::pki_types::ServerName::try_from("mqtt.lan").unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let stored_ca = std::fs::read_to_string(cert_dir(dir.path(), &c).join("ca.crt")).unwrap();
        assert_eq!(stored_ca, ca_pem);
    }

    #[test]
    fn an_rsa_key_is_made_when_asked_and_changing_the_algorithm_reissues() {
        let dir = tempfile::tempdir().unwrap();
        let (secrets, _) = ca_secret();
        let mut c = cert(&["mqtt.lan"]);
        let now = time::OffsetDateTime::now_utc();
        let (_, ec) = ensure(dir.path(), &c, "lan-ca", &secrets, now).unwrap();
        c.spec.private_key.algorithm = crate::api::certificate::KeyAlgorithm::Rsa;
        let (m, rsa) = ensure(dir.path(), &c, "lan-ca", &secrets, now).unwrap();
        assert_ne!(ec.serial, rsa.serial);
        let (_, pem) = x509_parser::pem::parse_x509_pem(m.cert_pem.as_bytes()).unwrap();
        let leaf = pem.parse_x509().unwrap();
        match leaf.public_key().parsed().unwrap() {
            x509_parser::public_key::PublicKey::RSA(k) => assert_eq!(k.key_size(), 2048),
            other => panic!("expected an RSA key, got {other:?}"),
        }
        assert!(m.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn a_new_ca_reissues_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let c = cert(&["mqtt.lan"]);
        let now = time::OffsetDateTime::now_utc();
        let (s1, _) = ca_secret();
        let (_, i1) = ensure(dir.path(), &c, "lan-ca", &s1, now).unwrap();
        let (_, again) = ensure(dir.path(), &c, "lan-ca", &s1, now).unwrap();
        assert_eq!(i1.serial, again.serial);
        let (s2, _) = ca_secret();
        let (_, i2) = ensure(dir.path(), &c, "lan-ca", &s2, now).unwrap();
        assert_ne!(i1.serial, i2.serial);
    }

    #[test]
    fn a_missing_ca_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = ca_secret();
        s.0.remove(&("lan-ca".to_string(), "tls.key".to_string()));
        let e = ensure(
            dir.path(),
            &cert(&["mqtt.lan"]),
            "lan-ca",
            &s,
            time::OffsetDateTime::now_utc(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid certificate: Secret lan-ca has no key tls.key"
        );
    }
}
