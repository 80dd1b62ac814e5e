//! What a Certificate's status says, the same in both modes and for every issuer:
//! ready, reason, message and the details (validity, serial, and how the background
//! issuer is doing); [`fields`] makes the typed status of a cluster from the details.
//!
//! Reasons: `Issued`, `Renewing`, `Issuing`, `IssueFailed` (nothing to serve yet),
//! `ReissueFailing` (the old certificate still serves), `RenewalFailing` (past its
//! renewal time and failing), `Expired`; `fleetProvisioning`: `Provisioned`,
//! `Provisioning`, `Rejected`. A cluster adds `SecretConflict`, `CredentialsRequired`
//! and `IssuerNotSupported`.

use crate::api::CertificateStatus;
use crate::certs::awsiot_jobs::AwsIotState;
use crate::certs::renewal::Progress;
use crate::certs::CertInfo;
use crate::tls::TlsMaterial;

/// The typed status fields in a Certificate's `details` that do not move with the
/// clock (`expiresInSeconds` does), without a zero `failures`: what a cluster writes,
/// so an unchanged Certificate is not written again.
pub fn fields(details: &serde_json::Value) -> CertificateStatus {
    let text = |k: &str| details.get(k).and_then(|v| v.as_str()).map(str::to_string);
    CertificateStatus {
        not_before: text("notBefore"),
        not_after: text("notAfter"),
        serial: text("serial"),
        renewal_time: text("renewalTime"),
        failures: details
            .get("failures")
            .and_then(|v| v.as_u64())
            .filter(|n| *n > 0)
            .map(|n| n.min(u32::MAX as u64) as u32),
        last_failure: text("lastFailure"),
        last_failure_time: text("lastFailureTime"),
        next_attempt: text("nextAttempt"),
        aws_iot: details
            .get("awsIot")
            .and_then(|v| serde_json::from_value(v.clone()).ok()),
        ..Default::default()
    }
}

/// Ready, reason, message and details of a Certificate's status.
pub fn certificate_status(
    result: Option<&Result<(TlsMaterial, CertInfo), String>>,
    progress: Option<&Progress>,
    now: time::OffsetDateTime,
) -> (bool, &'static str, String, serde_json::Value) {
    let failing = progress.filter(|p| p.failures > 0);
    let details = |info: Option<&CertInfo>| {
        let mut v = serde_json::to_value(info).unwrap_or_default();
        if let (Some(p), serde_json::Value::Object(m)) = (progress, &mut v) {
            if let Ok(serde_json::Value::Object(pm)) = serde_json::to_value(p) {
                m.extend(pm);
            }
        }
        if info.is_none() {
            v = serde_json::to_value(progress).unwrap_or_default();
        }
        v
    };
    match result {
        Some(Ok((_, info))) if info.expires_in_seconds <= 0 => (
            false,
            "Expired",
            format!(
                "expired at {}{}",
                info.not_after,
                failing
                    .and_then(|p| p.last_failure.as_deref())
                    .map(|f| format!("; renewal failing: {f}"))
                    .unwrap_or_default()
            ),
            details(Some(info)),
        ),
        Some(Ok((_, info))) => match failing {
            Some(p) if info.due(now) => (
                true,
                "RenewalFailing",
                format!(
                    "renewal failing ({} attempt(s)), the current certificate expires at {} and keeps serving: {}",
                    p.failures,
                    info.not_after,
                    p.last_failure.as_deref().unwrap_or("")
                ),
                details(Some(info)),
            ),
            Some(p) => (
                true,
                "ReissueFailing",
                format!(
                    "a new certificate could not be issued, the current one (valid until {}) keeps serving: {}",
                    info.not_after,
                    p.last_failure.as_deref().unwrap_or("")
                ),
                details(Some(info)),
            ),
            None if progress.is_some_and(|p| p.issuing) => (
                true,
                "Renewing",
                format!(
                    "valid until {}; a new certificate is being requested",
                    info.not_after
                ),
                details(Some(info)),
            ),
            None => (
                true,
                "Issued",
                format!("valid until {}", info.not_after),
                details(Some(info)),
            ),
        },
        Some(Err(e)) => (
            false,
            if progress.is_some() && failing.is_none() {
                "Issuing"
            } else {
                "IssueFailed"
            },
            e.clone(),
            details(None),
        ),
        None => (
            false,
            "NotIssued",
            "this issuer is not handled by standalone mode yet".to_string(),
            serde_json::Value::Null,
        ),
    }
}

/// `; retrying in Ns` when the background AWS work will try again, for messages.
fn retry_suffix(st: &AwsIotState) -> String {
    st.retry_in_seconds
        .map(|s| format!("; retrying in {s}s"))
        .unwrap_or_default()
}

/// Ready, reason, message and details of a `fleetProvisioning` Certificate:
/// `Provisioned`, `Provisioning` (also while retrying after a network failure) or
/// `Rejected` (AWS IoT's error code and message).
pub fn fleet_status(st: &AwsIotState) -> (bool, &'static str, String, serde_json::Value) {
    let retry = retry_suffix(st);
    let attempts = |m: String| {
        let mut v = serde_json::json!({ "failures": st.failures });
        if let Some(s) = st.retry_in_seconds {
            v["retryInSeconds"] = s.into();
        }
        (m, v)
    };
    match (&st.issued, &st.error) {
        (Some(i), _) => {
            let a = i.info.aws_iot.clone().unwrap_or_default();
            (
                true,
                "Provisioned",
                format!(
                    "provisioned as thing {} with certificate {} (template {}); endpoint {}",
                    a.thing_name,
                    a.certificate_id,
                    a.provisioning_template.unwrap_or_default(),
                    a.endpoint
                ),
                serde_json::to_value(&i.info).unwrap_or_default(),
            )
        }
        (None, Some(e)) if st.rejected => {
            let (m, v) = attempts(format!("{e}{retry}"));
            (false, "Rejected", m, v)
        }
        (None, Some(e)) => {
            let (m, v) = attempts(format!("not provisioned yet: {e}{retry}"));
            (false, "Provisioning", m, v)
        }
        (None, None) => (
            false,
            "Provisioning",
            "provisioning the device with the claim certificate".into(),
            serde_json::Value::Null,
        ),
    }
}

/// Ready, reason, message and details of an `awsIot` Certificate (not fleet
/// provisioning) from what the background AWS work reports.
pub fn aws_iot_status(st: &AwsIotState) -> (bool, &'static str, String, serde_json::Value) {
    if st.fleet {
        return fleet_status(st);
    }
    let retry = retry_suffix(st);
    match (&st.issued, &st.error) {
        (Some(i), err) => {
            let a = i.info.aws_iot.clone().unwrap_or_default();
            let mut message = format!(
                "AWS IoT certificate {} attached to thing {} and policy {}; endpoint {}",
                a.certificate_id, a.thing_name, a.policy_name, a.endpoint
            );
            if st.working {
                message.push_str("; updating in AWS");
            }
            if let Some(e) = err {
                message.push_str(&format!("; last AWS update failed: {e}{retry}"));
            }
            (
                true,
                "Issued",
                message,
                serde_json::to_value(&i.info).unwrap_or_default(),
            )
        }
        (None, Some(e)) => (
            false,
            "IssueFailed",
            format!("{e}{retry}"),
            serde_json::Value::Null,
        ),
        (None, None) => (
            false,
            "Issuing",
            "creating the AWS IoT certificate in the background".into(),
            serde_json::Value::Null,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::rfc3339;

    fn info(now: time::OffsetDateTime, renew_in: i64, expire_in: i64) -> CertInfo {
        CertInfo {
            not_before: rfc3339(now - time::Duration::hours(1)),
            not_after: rfc3339(now + time::Duration::seconds(expire_in)),
            serial: "0a".into(),
            renewal_time: rfc3339(now + time::Duration::seconds(renew_in)),
            expires_in_seconds: expire_in,
            aws_iot: None,
        }
    }

    fn pair(i: CertInfo) -> Result<(TlsMaterial, CertInfo), String> {
        Ok((
            TlsMaterial {
                cert_pem: String::new(),
                key_pem: String::new(),
            },
            i,
        ))
    }

    fn failing(n: u32) -> Progress {
        Progress {
            failures: n,
            last_failure: Some("ACME: server down".into()),
            ..Progress::default()
        }
    }

    #[test]
    fn certificate_status_says_where_issuance_stands() {
        let now = time::OffsetDateTime::now_utc();
        let reason = |r: &Result<(TlsMaterial, CertInfo), String>, p: Option<Progress>| {
            let (ready, reason, message, details) = certificate_status(Some(r), p.as_ref(), now);
            (ready, reason, message, details)
        };
        let good = pair(info(now, 3600, 7200));
        assert_eq!(reason(&good, None).1, "Issued");
        let issuing = Progress {
            issuing: true,
            ..Progress::default()
        };
        assert_eq!(reason(&good, Some(issuing.clone())).1, "Renewing");
        let (ready, r, m, d) = reason(&good, Some(failing(2)));
        assert!(ready);
        assert_eq!(r, "ReissueFailing");
        assert!(m.contains("ACME: server down"), "{m}");
        assert_eq!(d["failures"], 2);
        assert_eq!(d["serial"], "0a");

        let due = pair(info(now, -60, 600));
        let (ready, r, m, _) = reason(&due, Some(failing(3)));
        assert!(ready, "the current certificate still serves");
        assert_eq!(r, "RenewalFailing");
        assert!(
            m.contains("3 attempt(s)") && m.contains("server down"),
            "{m}"
        );

        let expired = pair(info(now, -600, -1));
        let (ready, r, _, _) = reason(&expired, Some(failing(9)));
        assert!(!ready);
        assert_eq!(r, "Expired");

        let none: Result<(TlsMaterial, CertInfo), String> = Err("being issued".into());
        assert_eq!(reason(&none, Some(issuing)).1, "Issuing");
        let (ready, r, _, d) = reason(&none, Some(failing(1)));
        assert!(!ready);
        assert_eq!(r, "IssueFailed");
        assert_eq!(d["lastFailure"], "ACME: server down");
    }

    #[test]
    fn a_cluster_keeps_the_identity_and_failures_not_the_countdowns() {
        let d = serde_json::json!({"notAfter": "x", "failures": 2, "retryInSeconds": 17,
            "expiresInSeconds": 100, "issuing": false,
            "awsIot": {"certificateId": "c", "thingName": "t", "endpoint": "e"}});
        let f = serde_json::to_value(fields(&d)).unwrap();
        let keys: Vec<&String> = f.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["awsIot", "conditions", "failures", "notAfter"]);
        assert_eq!(f["awsIot"]["thingName"], "t");
        assert_eq!(f["failures"], 2);
        let none = serde_json::to_value(fields(&serde_json::json!({"failures": 0}))).unwrap();
        assert_eq!(none, serde_json::json!({"conditions": []}));
    }

    #[test]
    fn status_keeps_only_declared_fields_that_do_not_move_with_the_clock() {
        let f = fields(&serde_json::json!({
            "notAfter": "x", "serial": "0a", "expiresInSeconds": 5, "issuing": true,
            "failures": 0, "lastFailure": null, "awsIot": null
        }));
        assert_eq!(
            serde_json::to_value(f).unwrap(),
            serde_json::json!({"conditions": [], "notAfter": "x", "serial": "0a"})
        );
    }

    #[test]
    fn a_pair_kept_serving_after_a_failed_attempt_says_reissue_failing() {
        let now = time::OffsetDateTime::now_utc();
        let good = pair(info(now, 3600, 7200));
        let (ready, r, m, d) = certificate_status(Some(&good), Some(&failing(1)), now);
        assert!(ready, "the current pair still serves");
        assert_eq!(r, "ReissueFailing");
        assert!(m.contains("server down"), "{m}");
        assert_eq!(fields(&d).failures, Some(1));
    }
}
