//! Certificates: issuers produce key pairs into a store; listeners and bridges use
//! them by reference. One file per issuer.
//!
//! ```text
//!  standalone::certificates::Manager ─┐           ┌─ kubernetes::certificates
//!            (state directory)        ▼           ▼        (Secrets)
//!                      issue_in_place: selfSigned / ca (fast, local)
//!                      acme: a background task per Certificate (renewal), retried
//!                      with backoff, behind the AcmeStore trait
//!                      awsIot, fleet: behind their record stores
//! ```
//!
//! Standalone mode keeps issued material in the state directory
//! (`certs/<namespace>_<name>/tls.crt`, `tls.key`, and `ca.crt`, the CA that signed
//! it), every file readable by the owner only. Private keys never appear in logs or
//! status.

pub mod acme;
pub mod awsiot;
pub mod awsiot_jobs;
pub mod ca;
pub mod dns01;
pub mod fleet;
pub mod http01;
pub mod renewal;
pub mod selfsigned;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api::certificate::KeyAlgorithm;
use crate::api::Certificate;
use crate::tls::TlsMaterial;

/// What status reports about an issued certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertInfo {
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Serial number, hex.
    pub serial: String,
    /// When it will be renewed, RFC 3339.
    pub renewal_time: String,
    /// Seconds until expiry, at the time it was read.
    pub expires_in_seconds: i64,
    /// The AWS IoT side of an `awsIot` certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_iot: Option<crate::api::certificate::AwsIotCertificateStatus>,
}

impl CertInfo {
    /// The renewal time has passed (or cannot be read).
    pub fn due(&self, now: time::OffsetDateTime) -> bool {
        parse_rfc3339(&self.renewal_time).is_none_or(|t| now >= t)
    }
}

/// Parses an RFC 3339 time.
pub fn parse_rfc3339(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Formats a time as RFC 3339.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Values of the Secrets in a Certificate's namespace, by (Secret name, key): what an
/// issuer may need (a CA key pair, an EAB key, DNS provider credentials), owned so
/// background tasks can keep it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Secrets(pub std::collections::BTreeMap<(String, String), Vec<u8>>);

impl Secrets {
    /// The value of `key` in Secret `name`.
    pub fn get(&self, name: &str, key: &str) -> Option<&[u8]> {
        self.0
            .get(&(name.to_string(), key.to_string()))
            .map(|v| v.as_slice())
    }

    /// The value as UTF-8 text, or a clear error naming what is missing.
    pub fn text(&self, name: &str, key: &str) -> Result<String, CertError> {
        let v = self
            .get(name, key)
            .ok_or_else(|| CertError::Invalid(format!("Secret {name} has no key {key}")))?;
        String::from_utf8(v.to_vec())
            .map_err(|_| CertError::Invalid(format!("Secret {name} key {key} is not UTF-8 text")))
    }
}

/// The subject alternative names of a Certificate, sorted: DNS names and IP addresses.
pub fn subject_names(cert: &Certificate) -> Vec<String> {
    let mut v: Vec<String> = cert
        .spec
        .dns_names
        .iter()
        .chain(&cert.spec.ip_addresses)
        .cloned()
        .collect();
    v.sort();
    v
}

/// The common name: `commonName`, else the first DNS name, else the object's name.
pub fn common_name(cert: &Certificate) -> String {
    cert.spec
        .common_name
        .clone()
        .or_else(|| cert.spec.dns_names.first().cloned())
        .unwrap_or_else(|| cert.metadata.name.clone().unwrap_or_default())
}

/// Requested lifetime (`duration`, default 90 days).
pub fn lifetime(cert: &Certificate) -> Duration {
    cert.spec
        .duration
        .as_deref()
        .and_then(parse_duration)
        .unwrap_or(Duration::from_secs(90 * 24 * 3600))
}

/// A new key pair of the requested algorithm: ECDSA P-256, or RSA 2048 (generated
/// with the `rsa` crate, since ring cannot generate RSA keys; ring signs with it).
pub fn new_key(algorithm: KeyAlgorithm) -> Result<rcgen::KeyPair, CertError> {
    let err = |e: &dyn std::fmt::Display| CertError::Generate(e.to_string());
    match algorithm {
        KeyAlgorithm::Ecdsa => {
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| err(&e))
        }
        KeyAlgorithm::Rsa => {
            use rsa::pkcs8::EncodePrivateKey;
            let key =
                rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).map_err(|e| err(&e))?;
            let der = key.to_pkcs8_der().map_err(|e| err(&e))?;
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
                &rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_bytes()),
                &rcgen::PKCS_RSA_SHA256,
            )
            .map_err(|e| err(&e))
        }
    }
}

/// A random positive 128-bit serial number.
pub fn random_serial() -> rcgen::SerialNumber {
    let mut serial = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut serial);
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    rcgen::SerialNumber::from_slice(&serial)
}

/// Certificate parameters of a leaf issued locally (selfSigned, ca): names, common
/// name, validity from a little before now for the requested lifetime, a random
/// serial.
pub fn leaf_params(
    cert: &Certificate,
    now: time::OffsetDateTime,
) -> Result<rcgen::CertificateParams, CertError> {
    let mut params = rcgen::CertificateParams::new(subject_names(cert))
        .map_err(|e| CertError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name(cert));
    // Backdated for clocks a little behind, by at most a tenth of the lifetime so a
    // short-lived certificate is not due for renewal the moment it is made.
    let life = time::Duration::seconds(lifetime(cert).as_secs() as i64);
    let backdate: time::Duration = life / 10;
    params.not_before = now - backdate.min(time::Duration::minutes(5));
    params.not_after = now + life;
    params.serial_number = Some(random_serial());
    Ok(params)
}

/// A key pair stored in a Certificate's state directory, with the request it answers
/// (names, issuer...): a changed request means the pair must be issued again.
#[derive(Clone, Debug)]
pub struct Stored {
    /// Certificate chain and key.
    pub material: TlsMaterial,
    /// What was asked for when it was issued.
    pub request: String,
}

/// What an issuer returns: the pair to serve, its CA chain (`ca.crt`), the request
/// it answers and whether it was issued just now (and so must be stored).
#[derive(Clone, Debug)]
pub struct Issued {
    /// Certificate chain and key.
    pub material: TlsMaterial,
    /// The issuing CA's certificate (`ca.crt`).
    pub ca_pem: String,
    /// What was asked for.
    pub request: String,
    /// Validity and renewal time.
    pub info: CertInfo,
    /// Issued by this call: store it.
    pub new: bool,
}

/// Reads the stored pair of a Certificate directory, if complete.
pub fn read_stored(dir: &Path) -> Option<Stored> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    Some(Stored {
        material: TlsMaterial {
            cert_pem: read("tls.crt")?,
            key_pem: read("tls.key")?,
        },
        request: read("request")?,
    })
}

/// Stores a pair, its CA and its request, each file readable by the owner only. The
/// key is written first and the request last, so a crash in between leaves a pair
/// that does not match its request and is issued again.
pub fn write_stored(
    dir: &Path,
    material: &TlsMaterial,
    ca_pem: &str,
    request: &str,
) -> Result<(), CertError> {
    write_private(&dir.join("tls.key"), material.key_pem.as_bytes())?;
    write_private(&dir.join("tls.crt"), material.cert_pem.as_bytes())?;
    write_private(&dir.join("ca.crt"), ca_pem.as_bytes())?;
    write_private(&dir.join("request"), request.as_bytes())
}

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Generation failed.
    #[error("could not generate the certificate: {0}")]
    Generate(String),
    /// The state directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The ACME issuer failed: the server refused, failed or could not be reached,
    /// or a challenge could not be answered.
    #[error("ACME: {0}")]
    Issuer(#[from] acme::Error),
    /// A mode's ACME store or HTTP-01 solver failed (on a cluster: its Secrets,
    /// solver Pods and Services); the text names the object and the cause.
    #[error("ACME: {0}")]
    Acme(String),
    /// The DNS-01 record of an ACME challenge could not be published or seen.
    #[error("ACME: DNS-01 for {domain}: {source}")]
    Dns01 {
        /// The name being validated.
        domain: String,
        /// Why.
        #[source]
        source: Box<dns01::Error>,
    },
    /// A fleet provisioning template parameter could not be resolved.
    #[error("invalid certificate: {0}")]
    Parameter(#[from] fleet::ParameterError),
    /// Stored or provided material is not a usable certificate.
    #[error("invalid certificate: {0}")]
    Invalid(String),
    /// Issuance runs in the background and has not finished yet.
    #[error("{0}")]
    Pending(String),
    /// An AWS call failed (operation and AWS error code in the message).
    #[error("{0}")]
    Aws(#[from] crate::aws::AwsError),
}

/// Parses a Go-style duration (`2160h`, `1h30m`, `90s`, `1.5h`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut num = String::new();
    if s.is_empty() {
        return None;
    }
    for c in s.chars() {
        match c {
            '0'..='9' | '.' => num.push(c),
            'h' | 'm' | 's' => {
                let n: f64 = num.parse().ok()?;
                num.clear();
                total += n * match c {
                    'h' => 3600.0,
                    'm' => 60.0,
                    _ => 1.0,
                };
            }
            _ => return None,
        }
    }
    if !num.is_empty() {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

/// Reads validity and serial from a PEM certificate (the first of a chain), with the
/// renewal time for `renew_before` (default: one third of the lifetime; at most nine
/// tenths of it).
pub fn cert_info(
    pem: &str,
    renew_before: Option<Duration>,
    now: time::OffsetDateTime,
) -> Result<CertInfo, CertError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| CertError::Invalid(e.to_string()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| CertError::Invalid(e.to_string()))?;
    let nb = cert.validity().not_before.to_datetime();
    let na = cert.validity().not_after.to_datetime();
    let lifetime = na - nb;
    // Never earlier than a tenth into the lifetime: a renewBefore longer than the
    // lifetime the CA gave would otherwise renew in a loop.
    let before = renew_before
        .map(|d| time::Duration::seconds(d.as_secs() as i64))
        .unwrap_or(lifetime / 3)
        .min(lifetime * 9 / 10);
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    Ok(CertInfo {
        not_before: fmt(nb),
        not_after: fmt(na),
        serial: cert.raw_serial_as_string().replace(':', ""),
        renewal_time: fmt(na - before),
        expires_in_seconds: (na - now).whole_seconds(),
        aws_iot: None,
    })
}

/// Where a Certificate's material lives in the state directory.
pub fn cert_dir(state: &Path, cert: &Certificate) -> PathBuf {
    let ns = cert.metadata.namespace.as_deref().unwrap_or("default");
    let name = cert.metadata.name.as_deref().unwrap_or("");
    state.join("certs").join(format!("{ns}_{name}"))
}

/// Obtains (or reuses) the key pair of a Certificate whose issuer works locally
/// (`selfSigned`, `ca`), issuing or renewing it when needed. ACME certificates are
/// issued in the background by the [`Manager`].
pub fn ensure(
    state: &Path,
    cert: &Certificate,
    secrets: &Secrets,
    now: time::OffsetDateTime,
) -> Result<(TlsMaterial, CertInfo), CertError> {
    let issuer = &cert.spec.issuer;
    if issuer.self_signed.is_some() || issuer.ca.is_some() {
        let dir = cert_dir(state, cert);
        let issued = issue_in_place(cert, secrets, read_stored(&dir).as_ref(), now)?;
        if issued.new {
            write_stored(&dir, &issued.material, &issued.ca_pem, &issued.request)?;
        }
        Ok((issued.material, issued.info))
    } else if issuer.acme.is_some() {
        Err(CertError::Invalid(
            "ACME certificates are issued in the background".into(),
        ))
    } else if fleet::is_fleet(cert) {
        match fleet::cached(state, cert, now)? {
            Some(i) => Ok((i.material, i.info)),
            None => Err(CertError::Pending(
                "the device is being provisioned in the background".into(),
            )),
        }
    } else if issuer.aws_iot.is_some() {
        // AWS calls run in the background (standalone: `awsiot_jobs`); here only what
        // is already on disk.
        match awsiot::cached(state, cert, &[], now)?.issued {
            Some(i) => Ok((i.material, i.info)),
            None => Err(CertError::Pending(
                "the AWS IoT certificate is being created in the background".into(),
            )),
        }
    } else {
        Err(CertError::Invalid("no issuer set".into()))
    }
}

/// The issuer dispatch of the Certificates issued in place, used by both modes (each
/// keeps the result in its own store: the state directory, or the Secret): the pair
/// `stored` when it still answers the request and is not due, else a new one from the
/// `selfSigned` or `ca` issuer. `secrets` are the values of the namespace's Secrets.
pub fn issue_in_place(
    cert: &Certificate,
    secrets: &Secrets,
    stored: Option<&Stored>,
    now: time::OffsetDateTime,
) -> Result<Issued, CertError> {
    let issuer = &cert.spec.issuer;
    if issuer.self_signed.is_some() {
        selfsigned::issue(cert, stored, now)
    } else if let Some(ca) = &issuer.ca {
        ca::issue(cert, &ca.secret_ref, secrets, stored, now)
    } else {
        Err(CertError::Invalid(
            "only selfSigned and ca certificates are issued in place".into(),
        ))
    }
}

/// What a Certificate issued in place (`selfSigned`, `ca`) serves after an attempt,
/// and how its attempts stand, the same in both modes: a failed attempt keeps a stored
/// pair that has not expired serving (as ACME does) and is counted in the returned
/// progress (`previous` holds the earlier count, and the error's text); a success
/// clears it. The attempt's error is returned as it came, whatever its type. Pure.
pub fn keep_serving<E: std::fmt::Display>(
    cert: &Certificate,
    attempt: Result<(TlsMaterial, CertInfo), E>,
    stored: Option<&TlsMaterial>,
    previous: Option<&renewal::Progress>,
    now: time::OffsetDateTime,
) -> (
    Result<(TlsMaterial, CertInfo), E>,
    Option<renewal::Progress>,
) {
    let error = match attempt {
        Ok(ok) => return (Ok(ok), None),
        Err(e) => e,
    };
    let progress = renewal::Progress {
        issuing: false,
        failures: previous.map_or(0, |p| p.failures).saturating_add(1),
        last_failure: Some(error.to_string()),
        last_failure_time: Some(rfc3339(now)),
        next_attempt: None,
    };
    let renew_before = cert.spec.renew_before.as_deref().and_then(parse_duration);
    let serving = stored.and_then(|m| {
        cert_info(&m.cert_pem, renew_before, now)
            .ok()
            .filter(|i| i.expires_in_seconds > 0)
            .map(|i| (m.clone(), i))
    });
    match serving {
        Some(s) => (Ok(s), Some(progress)),
        None => (Err(error), Some(progress)),
    }
}

/// Writes a file readable by the owner only (keys and certificates), atomically; the
/// folders it creates are the owner's only too.
/// The HTTPS connector of the certificate code's HTTP/1.1 clients (ACME, and DNS-01
/// through Cloudflare): rustls with ring, trusting `tls`'s roots when given, else the
/// system's trust store (rustls-platform-verifier); plain `http://` too, for servers
/// on loopback. The error is the system's trust store that cannot be read.
pub fn https_connector(
    tls: Option<rustls::ClientConfig>,
) -> std::io::Result<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>>
{
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match tls {
        Some(config) => builder.with_tls_config(config),
        None => builder.with_provider_and_platform_verifier(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))?,
    };
    Ok(builder.https_or_http().enable_http1().build())
}

pub fn write_private(path: &Path, data: &[u8]) -> Result<(), CertError> {
    use std::io::Write;
    let io = |source| CertError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut mkdir = std::fs::DirBuilder::new();
    mkdir.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        mkdir.mode(0o700);
    }
    mkdir.create(dir).map_err(io)?;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_valid_for(secs: i64) -> (String, time::OffsetDateTime) {
        let now = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        p.not_before = now;
        p.not_after = now + time::Duration::seconds(secs);
        let key = rcgen::KeyPair::generate().unwrap();
        (p.self_signed(&key).unwrap().pem(), now)
    }

    #[test]
    fn a_failed_attempt_in_place_keeps_a_valid_pair_serving_and_counts() {
        let cert: Certificate = serde_yaml::from_str(
            "apiVersion: edgemq.io/v1alpha1\nkind: Certificate\nmetadata: {name: c}\n\
             spec: {dnsNames: [a.example], issuer: {ca: {secretRef: ca}}}\n",
        )
        .unwrap();
        let (pem, now) = cert_valid_for(90 * 24 * 3600);
        let stored = TlsMaterial {
            cert_pem: pem,
            key_pem: String::new(),
        };
        let gone = CertError::Invalid("CA gone".into());
        let (r, p) = keep_serving(&cert, Err(gone), Some(&stored), None, now);
        let (m, info) = r.expect("the stored pair keeps serving");
        assert_eq!(m.cert_pem, stored.cert_pem);
        let p = p.expect("the failure is counted");
        assert_eq!(
            (p.failures, p.last_failure.as_deref()),
            (1, Some("invalid certificate: CA gone"))
        );
        assert!(info.expires_in_seconds > 0 && !info.due(now));
        let (r, p2) = keep_serving(&cert, Err("still".to_string()), None, Some(&p), now);
        assert_eq!(r.unwrap_err(), "still");
        assert_eq!(p2.unwrap().failures, 2, "counted on");
        let (pem, _) = cert_valid_for(1);
        let expired = TlsMaterial {
            cert_pem: pem,
            key_pem: String::new(),
        };
        let later = now + time::Duration::seconds(5);
        let (r, _) = keep_serving(&cert, Err("x"), Some(&expired), None, later);
        assert!(r.is_err(), "an expired pair does not serve");
        let (ok, cleared) = keep_serving::<CertError>(
            &cert,
            Ok((
                stored.clone(),
                cert_info(&stored.cert_pem, None, now).unwrap(),
            )),
            None,
            Some(&p),
            now,
        );
        assert!(
            ok.is_ok() && cleared.is_none(),
            "a success clears the count"
        );
    }

    #[test]
    fn renewal_is_a_third_of_the_lifetime_before_expiry_unless_set() {
        let (pem, start) = cert_valid_for(90 * 24 * 3600);
        let info = cert_info(&pem, None, start).unwrap();
        assert_eq!(
            parse_rfc3339(&info.renewal_time).unwrap(),
            start + time::Duration::days(60)
        );
        let info = cert_info(&pem, Some(Duration::from_secs(24 * 3600)), start).unwrap();
        assert_eq!(
            parse_rfc3339(&info.renewal_time).unwrap(),
            start + time::Duration::days(89)
        );
        assert!(!info.due(start));
        assert!(info.due(start + time::Duration::days(89)));
    }

    #[test]
    fn a_renew_before_longer_than_the_lifetime_does_not_renew_in_a_loop() {
        // 100 s certificates with renewBefore 1h would be due the moment they arrive.
        let (pem, start) = cert_valid_for(100);
        let info = cert_info(&pem, Some(Duration::from_secs(3600)), start).unwrap();
        assert_eq!(
            parse_rfc3339(&info.renewal_time).unwrap(),
            start + time::Duration::seconds(10)
        );
        assert!(!info.due(start));
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(
            parse_duration("2160h"),
            Some(Duration::from_secs(2160 * 3600))
        );
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("5d"), None);
    }
}
