//! The `selfSigned` issuer: an ECDSA P-256 key and a certificate signed by itself,
//! for LAN brokers and tests. Reused across restarts from the state directory and
//! reissued when its SANs change or its renewal time has passed.

use super::{
    cert_info, common_name, leaf_params, new_key, parse_duration, subject_names, CertError, Issued,
    Stored,
};
use crate::api::Certificate;
use crate::tls::TlsMaterial;

/// What a stored self-signed pair must match to be reused.
fn request(cert: &Certificate) -> String {
    format!(
        "selfSigned\nnames={}\ncn={}\nlifetime={}\nalgorithm={:?}\n",
        subject_names(cert).join(","),
        common_name(cert),
        super::lifetime(cert).as_secs(),
        cert.spec.private_key.algorithm
    )
}

/// The pair `stored` when it answers the current request and is not due for renewal,
/// otherwise a newly issued one. Stores nothing: the caller keeps what is `new`.
pub fn issue(
    cert: &Certificate,
    stored: Option<&Stored>,
    now: time::OffsetDateTime,
) -> Result<Issued, CertError> {
    let renew_before = cert.spec.renew_before.as_deref().and_then(parse_duration);
    let wanted = request(cert);
    if let Some(stored) = stored {
        if stored.request == wanted {
            if let Ok(info) = cert_info(&stored.material.cert_pem, renew_before, now) {
                if !info.due(now) {
                    return Ok(Issued {
                        ca_pem: stored.material.cert_pem.clone(),
                        material: stored.material.clone(),
                        request: wanted,
                        info,
                        new: false,
                    });
                }
            }
        }
    }
    let params = leaf_params(cert, now)?;
    let key = new_key(cert.spec.private_key.algorithm)?;
    let issued = params
        .self_signed(&key)
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
        "self-signed certificate issued"
    );
    Ok(Issued {
        ca_pem: material.cert_pem.clone(),
        material,
        request: wanted,
        info,
        new: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::certificate::{CertificateSpec, Issuer, SelfSignedIssuer};
    use crate::certs::{cert_dir, CertInfo};

    /// Issued in place and kept in the state directory, as `edgemq run` does.
    fn ensure(
        state: &std::path::Path,
        cert: &Certificate,
        now: time::OffsetDateTime,
    ) -> Result<(TlsMaterial, CertInfo), CertError> {
        crate::certs::ensure(state, cert, &Default::default(), now)
    }

    fn cert(dns: &[&str]) -> Certificate {
        let mut c = Certificate::new(
            "home-tls",
            CertificateSpec {
                dns_names: dns.iter().map(|s| s.to_string()).collect(),
                issuer: Issuer {
                    self_signed: Some(SelfSignedIssuer {}),
                    ..Issuer::default()
                },
                ..CertificateSpec::default()
            },
        );
        c.metadata.namespace = Some("default".into());
        c
    }

    #[test]
    fn a_self_signed_certificate_is_reused_until_its_names_change() {
        let dir = tempfile::tempdir().unwrap();
        let now = time::OffsetDateTime::now_utc();
        let (m1, i1) = ensure(dir.path(), &cert(&["localhost"]), now).unwrap();
        let (m2, i2) = ensure(dir.path(), &cert(&["localhost"]), now).unwrap();
        assert_eq!(m1, m2);
        assert_eq!(i1.serial, i2.serial);
        let (_, i3) = ensure(dir.path(), &cert(&["localhost", "mqtt.lan"]), now).unwrap();
        assert_ne!(i1.serial, i3.serial);
    }

    #[test]
    fn the_key_file_is_readable_by_the_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let c = cert(&["localhost"]);
        ensure(dir.path(), &c, time::OffsetDateTime::now_utc()).unwrap();
        let mode = std::fs::metadata(cert_dir(dir.path(), &c).join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(cert_dir(dir.path(), &c))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[test]
    fn a_certificate_past_its_renewal_time_is_reissued() {
        let dir = tempfile::tempdir().unwrap();
        let c = cert(&["localhost"]);
        let now = time::OffsetDateTime::now_utc();
        let (_, first) = ensure(dir.path(), &c, now).unwrap();
        let later = now + time::Duration::days(70);
        let (_, second) = ensure(dir.path(), &c, later).unwrap();
        assert_ne!(first.serial, second.serial);
    }
}
