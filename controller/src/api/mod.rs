//! API types: the four kinds edgemq reconciles (group `edgemq.io`, version `v1alpha1`).
//!
//! One file per kind. The types are the contract shared by both front doors: the
//! Kubernetes API (as CRDs, generated from these types) and the standalone folder
//! loader. Every check a schema can hold lives here, in the schema.

pub mod bridge;
pub mod broker;
pub mod certificate;
pub mod common;
pub mod user;

pub use bridge::{Bridge, BridgeSpec, BridgeStatus};
pub use broker::{Broker, BrokerSpec, BrokerStatus};
pub use certificate::{Certificate, CertificateSpec, CertificateStatus};
pub use common::*;
pub use user::{MqttUser, MqttUserSpec, MqttUserStatus};

/// The API group of every edgemq kind.
pub const GROUP: &str = "edgemq.io";
/// The API version of every edgemq kind.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "edgemq.io/v1alpha1";

/// Every CRD, in a stable order (Broker, MqttUser, Bridge, Certificate).
pub fn crds(
) -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        Broker::crd(),
        MqttUser::crd(),
        Bridge::crd(),
        Certificate::crd(),
    ]
}
