//! Certificates: issuers produce key pairs into a store; listeners and bridges use
//! them by reference. One file per issuer.
//!
//! Standalone mode keeps issued material in the state directory
//! (`certs/<namespace>_<name>/tls.crt`, `tls.key`), the key readable by the owner only.
//! Private keys never appear in logs or status.

pub mod awsiot;
pub mod awsiot_jobs;
pub mod selfsigned;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api::Certificate;
use crate::broker::TlsMaterial;

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

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The issuer is part of the API but not implemented yet.
    #[error("issuer {0} is not supported yet")]
    Unsupported(&'static str),
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

/// Reads validity and serial from a PEM certificate, with the renewal time for
/// `renew_before` (default: one third of the lifetime).
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
    let before = renew_before
        .map(|d| time::Duration::seconds(d.as_secs() as i64))
        .unwrap_or(lifetime / 3);
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

/// Obtains (or reuses) the key pair of a Certificate, issuing or renewing it when
/// needed. Returns the material and what status should show.
pub fn ensure(
    state: &Path,
    cert: &Certificate,
    now: time::OffsetDateTime,
) -> Result<(TlsMaterial, CertInfo), CertError> {
    let issuer = &cert.spec.issuer;
    if issuer.self_signed.is_some() {
        selfsigned::ensure(state, cert, now)
    } else if issuer.ca.is_some() {
        Err(CertError::Unsupported("ca"))
    } else if issuer.acme.is_some() {
        Err(CertError::Unsupported("acme"))
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

/// Writes a file readable by the owner only (keys and certificates), atomically.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), CertError> {
    use std::io::Write;
    let io = |source| CertError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
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
