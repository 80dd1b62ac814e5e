//! Certificates on a cluster (`acme`, `awsIot` and its `fleetProvisioning` have modules
//! of their own): the `selfSigned` and `ca` issuers write their key pair
//! into the `kubernetes.io/tls` Secret named by `spec.secretName` (with `ca.crt`),
//! owned by the Certificate, and renew it at the same time standalone mode would.
//! Broker pods read that Secret through the API and swap the pair under live
//! listeners.
//!
//! The issuers themselves are shared with standalone mode (`certs::selfsigned`,
//! `certs::ca`); only the store differs: here the Secret, with the request the pair
//! answers kept in an annotation so a changed spec is issued again.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::Action;

use super::context::Context;
use super::frame::Begun;
use super::Error;
use edgemq::api::{Certificate, CertificateStatus};
use edgemq::certs;
use edgemq::status::{self, kinds::reason};

use super::cert_secret::{ours, secret_for, stored};

/// The failed attempts an in-place Certificate's status counts.
fn in_place_progress(cert: &Certificate) -> Option<certs::renewal::Progress> {
    let s = cert.status.as_ref()?;
    Some(certs::renewal::Progress {
        failures: s.failures?,
        last_failure: s.last_failure.clone(),
        last_failure_time: s.last_failure_time.clone(),
        ..Default::default()
    })
}

/// Issues or renews a Certificate's pair and reports it.
pub async fn reconcile(cert: Arc<Certificate>, ctx: Arc<Context>) -> Result<Action, Error> {
    let frame = match ctx.begin(cert.as_ref()).await? {
        // Only awsIot Certificates with deletionPolicy: Delete hold a finalizer.
        Begun::Deleting(_timed) => return super::awsiot::finalize(cert, ctx.clone()).await,
        Begun::Live(frame) => frame,
    };
    let (ns, name) = (&frame.ns, &frame.name);
    let now = time::OffsetDateTime::now_utc();
    let res = &frame.view.res;
    if let Some(held) = frame.held() {
        let message = held.message();
        ctx.set_ready(
            cert.as_ref(),
            (false, reason::INVALID_SPEC, message),
            CertificateStatus::default(),
        )
        .await?;
        return Ok(Action::requeue(Duration::from_secs(600)));
    }
    let issuer = &cert.spec.issuer;
    let fleet = edgemq::certs::fleet::is_fleet(&cert);
    if issuer.aws_iot.is_some() && !fleet {
        return super::awsiot::reconcile(cert, ctx.clone()).await;
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret_name = cert.secret_name();
    let existing = api.get_opt(&secret_name).await?;
    if let Some(s) = &existing {
        if !ours(s, &cert) {
            let message = format!("Secret {secret_name} exists and does not belong to this Certificate; choose another spec.secretName or delete the Secret");
            ctx.set_ready(
                cert.as_ref(),
                (false, "SecretConflict", message),
                CertificateStatus::default(),
            )
            .await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    }
    if issuer.acme.is_some() {
        let secrets = certs::Secrets(res.secret_values(ns));
        return super::acme::reconcile(&cert, &ctx, secrets, existing.as_ref()).await;
    }
    if fleet {
        let secrets = certs::Secrets(res.secret_values(ns));
        return super::fleet::reconcile(&cert, &ctx, secrets, existing.as_ref()).await;
    }
    let previous = existing.as_ref().and_then(stored);
    let secrets = certs::Secrets(res.secret_values(ns));
    let attempt = match certs::issue_in_place(&cert, &secrets, previous.as_ref(), now) {
        Ok(issued) => {
            if issued.new {
                ctx.ensure(&secret_for(&cert, &issued)).await?;
                tracing::info!(certificate = %format!("{ns}/{name}"), serial = %issued.info.serial, "key pair written to Secret {secret_name}");
            }
            Ok((issued.material, issued.info))
        }
        Err(e) => Err(e.to_string()),
    };
    // A failed attempt keeps the pair in the Secret serving while it is valid, and is
    // counted in status, as `edgemq run` does.
    let (result, progress) = certs::keep_serving(
        &cert,
        attempt,
        previous.as_ref().map(|p| &p.material),
        in_place_progress(&cert).as_ref(),
        now,
    );
    let key = format!("{ns}/{name}");
    let (ready, reason, mut message, details) =
        status::certificate::certificate_status(Some(&result), progress.as_ref(), now);
    let failures = progress.as_ref().map_or(0, |p| p.failures);
    ctx.metrics.certificate(
        &key,
        result.as_ref().ok().map(|(_, i)| i.not_after.as_str()),
        failures,
    );
    if result.is_ok() {
        message.push_str(&format!("; stored in Secret {secret_name}"));
    }
    ctx.set_ready(
        cert.as_ref(),
        (ready, reason, message),
        status::certificate::fields(&details),
    )
    .await?;
    let Ok((_, info)) = &result else {
        return Ok(Action::requeue(Duration::from_secs(30)));
    };
    if failures > 0 {
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    // Come back at the renewal time (and at least hourly, to notice a lost Secret).
    let wait = certs::parse_rfc3339(&info.renewal_time)
        .map(|t| t - now)
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(Duration::ZERO)
        .clamp(Duration::from_secs(1), Duration::from_secs(3600));
    Ok(Action::requeue(wait))
}
