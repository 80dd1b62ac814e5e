//! Rendering: resources and bundles written out in other formats.
//!
//! - [`crds_yaml`]: the CustomResourceDefinitions, for `edgemq crds` and the chart.
//! - [`mosquitto`]: a bundle as Mosquitto configuration, for migration and for parity
//!   tests against a real Mosquitto.

pub mod mosquitto;

/// The YAML of one CRD, as committed under `crds/`.
pub fn crd_yaml(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    // A CRD is plain data; serializing it cannot fail.
    serde_yaml::to_string(crd).unwrap_or_default()
}

/// Every CRD (Broker, MqttUser, Bridge, Certificate), as one `---`-separated stream.
pub fn crds_yaml() -> String {
    crate::api::crds()
        .iter()
        .map(|c| format!("---\n{}", crd_yaml(c)))
        .collect()
}

/// The file name under `crds/` of each CRD, in [`crate::api::crds`] order.
pub const CRD_FILES: [&str; 4] = [
    "broker.yaml",
    "mqttuser.yaml",
    "bridge.yaml",
    "certificate.yaml",
];
