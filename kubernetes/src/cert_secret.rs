//! The store of key pairs on a cluster: a Certificate's `kubernetes.io/tls` Secret
//! (`tls.crt`, `tls.key`, `ca.crt`), owned by the Certificate, with the request the
//! pair answers in an annotation so a changed spec is issued again. Used by every
//! issuer's driver (`certificates` for selfSigned and ca, `acme`, `awsiot`, `fleet`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::{Resource, ResourceExt};

use edgemq::api::Certificate;
use edgemq::certs::{Issued, Stored};
use edgemq::tls::TlsMaterial;

/// Annotation holding the request a stored pair answers.
pub const REQUEST_ANNOTATION: &str = "edgemq.io/certificate-request";

/// The pair stored in a Secret, if it has one.
pub fn stored(secret: &Secret) -> Option<Stored> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    Some(Stored {
        material: TlsMaterial {
            cert_pem: text("tls.crt")?,
            key_pem: text("tls.key")?,
        },
        request: secret.annotations().get(REQUEST_ANNOTATION)?.clone(),
    })
}

/// The Secret holding `issued` for `cert`.
pub fn secret_for(cert: &Certificate, issued: &Issued) -> Secret {
    tls_secret(cert, &issued.material, &issued.ca_pem, &issued.request)
}

/// The `kubernetes.io/tls` Secret of `cert` holding `material`, its CA chain and the
/// request it answers; owned by the Certificate.
pub fn tls_secret(
    cert: &Certificate,
    material: &TlsMaterial,
    ca_pem: &str,
    request: &str,
) -> Secret {
    let owner = cert.controller_owner_ref(&());
    let mut data = BTreeMap::new();
    data.insert(
        "tls.crt".to_string(),
        ByteString(material.cert_pem.clone().into_bytes()),
    );
    data.insert(
        "tls.key".to_string(),
        ByteString(material.key_pem.clone().into_bytes()),
    );
    data.insert("ca.crt".to_string(), ByteString(ca_pem.as_bytes().to_vec()));
    Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(cert.secret_name()),
            namespace: cert.metadata.namespace.clone(),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    super::desired::MANAGED_BY.to_string(),
                ),
                ("edgemq.io/certificate".to_string(), cert.name_any()),
            ])),
            annotations: Some(BTreeMap::from([(
                REQUEST_ANNOTATION.to_string(),
                request.to_string(),
            )])),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// Whether `secret` may be written for `cert`: it is new (empty), or already the
/// Certificate's ([`super::ownership::owned_by`], the rule every object the
/// controller writes follows).
pub fn ours(secret: &Secret, cert: &Certificate) -> bool {
    let owner: Vec<_> = cert.controller_owner_ref(&()).into_iter().collect();
    super::ownership::owned_by(&secret.metadata, &owner)
        || (secret.data.as_ref().is_none_or(|d| d.is_empty())
            && secret.string_data.as_ref().is_none_or(|d| d.is_empty()))
}
