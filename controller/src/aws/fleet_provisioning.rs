//! AWS IoT's documented fleet provisioning topics and payloads (JSON format): what is
//! sent, what comes back, and how a refusal reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::certificate::KeyOrigin;

/// Which provisioning call answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// `$aws/certificates/create-from-csr`.
    CreateCertificateFromCsr,
    /// `$aws/certificates/create`.
    CreateKeysAndCertificate,
    /// `$aws/provisioning-templates/<name>/provision`.
    RegisterThing,
}

/// AWS IoT's `rejected` reply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    /// HTTP-like status code.
    #[serde(default)]
    pub status_code: Option<u16>,
    /// AWS's error code (`InvalidParameters`, `Throttling`...).
    #[serde(default)]
    pub error_code: String,
    /// AWS's explanation.
    #[serde(default)]
    pub error_message: String,
}

impl Rejection {
    /// A refusal by the template's pre-provisioning hook: AWS IoT answers RegisterThing
    /// with a rejection naming the hook.
    pub fn by_hook(&self) -> bool {
        let m = self.error_message.to_ascii_lowercase();
        m.contains("hook") || m.contains("provisioning denied")
    }
}

/// Why provisioning did not give an identity.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// AWS IoT answered on a `rejected` topic.
    #[error("{}", rejected_text(*.step, .rejection))]
    Rejected {
        /// The call that was rejected.
        step: Step,
        /// What AWS IoT said.
        rejection: Rejection,
    },
    /// The endpoint could not be reached, or the connection was refused or lost.
    #[error("{0}")]
    Unreachable(String),
    /// The endpoint answered something that does not follow the API.
    #[error("unexpected answer from the provisioning API: {0}")]
    Protocol(String),
    /// The spec or local material cannot be used.
    #[error("{0}")]
    Invalid(String),
}

fn rejected_text(step: Step, r: &Rejection) -> String {
    let status = r.status_code.map(|c| format!(" ({c})")).unwrap_or_default();
    let who = if step == Step::RegisterThing && r.by_hook() {
        "the provisioning template's pre-provisioning hook refused this device"
    } else {
        "AWS IoT rejected the request"
    };
    format!(
        "{step:?} rejected: {who}: {}{status}: {}",
        r.error_code, r.error_message
    )
}

/// The request and reply topics of one provisioning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    /// Certificate request topic.
    pub create: String,
    /// Provision (RegisterThing) request topic.
    pub provision: String,
}

impl Topics {
    /// Topics for `template` and `origin`, JSON payload format.
    pub fn new(template: &str, origin: KeyOrigin) -> Topics {
        Topics {
            create: match origin {
                KeyOrigin::Local => "$aws/certificates/create-from-csr/json",
                KeyOrigin::Aws => "$aws/certificates/create/json",
            }
            .to_string(),
            provision: format!("$aws/provisioning-templates/{template}/provision/json"),
        }
    }

    /// The reply filters, subscribed before anything is published.
    pub fn replies(&self) -> Vec<String> {
        [&self.create, &self.provision]
            .iter()
            .flat_map(|t| [format!("{t}/accepted"), format!("{t}/rejected")])
            .collect()
    }
}

/// The CreateCertificateFromCsr request payload.
pub fn csr_request(csr_pem: &str) -> Vec<u8> {
    serde_json::json!({ "certificateSigningRequest": csr_pem })
        .to_string()
        .into_bytes()
}

/// The CreateKeysAndCertificate request payload (empty object).
pub fn create_request() -> Vec<u8> {
    b"{}".to_vec()
}

/// The RegisterThing request payload.
pub fn provision_request(token: &str, parameters: &BTreeMap<String, String>) -> Vec<u8> {
    serde_json::json!({ "certificateOwnershipToken": token, "parameters": parameters })
        .to_string()
        .into_bytes()
}

/// The `accepted` reply of either certificate call.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateAccepted {
    /// Certificate id.
    pub certificate_id: String,
    /// The certificate, PEM.
    pub certificate_pem: String,
    /// The token RegisterThing takes.
    pub certificate_ownership_token: String,
    /// The key, from CreateKeysAndCertificate only.
    #[serde(default)]
    pub private_key: Option<String>,
}

/// The `accepted` reply of RegisterThing.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionAccepted {
    /// The thing the template made (or found).
    pub thing_name: String,
    /// `DeviceConfiguration` of the template.
    #[serde(default)]
    pub device_configuration: BTreeMap<String, serde_json::Value>,
}

/// Parses a reply payload of `step`.
pub fn parse<T: for<'de> Deserialize<'de>>(step: Step, payload: &[u8]) -> Result<T, FleetError> {
    serde_json::from_slice(payload)
        .map_err(|e| FleetError::Protocol(format!("{step:?} accepted reply: {e}")))
}

/// Parses a `rejected` payload; anything unreadable still counts as a rejection.
pub fn parse_rejection(payload: &[u8]) -> Rejection {
    serde_json::from_slice(payload).unwrap_or_else(|_| Rejection {
        status_code: None,
        error_code: "Unknown".into(),
        error_message: String::from_utf8_lossy(payload).chars().take(200).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_documented_api() {
        let t = Topics::new("edge-fleet", KeyOrigin::Local);
        assert_eq!(t.create, "$aws/certificates/create-from-csr/json");
        assert_eq!(
            t.provision,
            "$aws/provisioning-templates/edge-fleet/provision/json"
        );
        assert_eq!(
            t.replies(),
            [
                "$aws/certificates/create-from-csr/json/accepted",
                "$aws/certificates/create-from-csr/json/rejected",
                "$aws/provisioning-templates/edge-fleet/provision/json/accepted",
                "$aws/provisioning-templates/edge-fleet/provision/json/rejected",
            ]
        );
        assert_eq!(
            Topics::new("x", KeyOrigin::Aws).create,
            "$aws/certificates/create/json"
        );
    }

    #[test]
    fn request_payloads_are_the_documented_json() {
        let v: serde_json::Value = serde_json::from_slice(&csr_request("PEM")).unwrap();
        assert_eq!(v, serde_json::json!({"certificateSigningRequest": "PEM"}));
        assert_eq!(create_request(), b"{}");
        let params: BTreeMap<String, String> =
            [("SerialNumber".to_string(), "123".to_string())].into();
        let v: serde_json::Value =
            serde_json::from_slice(&provision_request("tok", &params)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"certificateOwnershipToken": "tok",
                               "parameters": {"SerialNumber": "123"}})
        );
    }

    #[test]
    fn replies_parse_and_a_hook_refusal_is_told_apart() {
        let a: CertificateAccepted = parse(
            Step::CreateKeysAndCertificate,
            br#"{"certificateId":"abc","certificatePem":"C","certificateOwnershipToken":"t","privateKey":"K"}"#,
        )
        .unwrap();
        assert_eq!(
            (a.certificate_id.as_str(), a.private_key.as_deref()),
            ("abc", Some("K"))
        );
        let p: ProvisionAccepted = parse(
            Step::RegisterThing,
            br#"{"thingName":"edge-123","deviceConfiguration":{"Site":"shed"}}"#,
        )
        .unwrap();
        assert_eq!(p.thing_name, "edge-123");
        assert!(parse::<ProvisionAccepted>(Step::RegisterThing, b"{}").is_err());

        let r = parse_rejection(
            br#"{"statusCode":403,"errorCode":"AccessDenied","errorMessage":"Pre-provisioning hook denied the request: serial 999 unknown"}"#,
        );
        assert!(r.by_hook());
        let e = FleetError::Rejected {
            step: Step::RegisterThing,
            rejection: r,
        }
        .to_string();
        assert_eq!(e, "RegisterThing rejected: the provisioning template's pre-provisioning hook refused this device: AccessDenied (403): Pre-provisioning hook denied the request: serial 999 unknown");
        let r = parse_rejection(
            br#"{"statusCode":400,"errorCode":"InvalidParameters","errorMessage":"Missing parameter SerialNumber"}"#,
        );
        assert!(!r.by_hook());
        assert_eq!(parse_rejection(b"oops").error_code, "Unknown");
    }
}
