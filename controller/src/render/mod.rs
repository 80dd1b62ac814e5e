//! Rendering: resources and bundles written out in other formats.
//!
//! - [`crds_yaml`]: the CustomResourceDefinitions, for `edgemq crds` and the chart;
//!   [`crds_yaml_without_cel`] for clusters older than Kubernetes 1.23.
//! - [`mosquitto`]: a bundle as Mosquitto configuration, for migration and for parity
//!   tests against a real Mosquitto.

pub mod files;
pub mod mosquitto;
pub mod mosquitto_bridges;
pub mod write;

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

/// `crd` without its CEL rules (`x-kubernetes-validations`), for Kubernetes 1.20 to
/// 1.22: their CRD schema type has no such field, so `kubectl apply` (its client-side
/// validation) and server-side apply refuse the whole CRD. 1.23 and 1.24 accept the field
/// (enforcing it only behind a feature gate); 1.25 on enforces it. Without the rules,
/// the apiserver checks only the schema; everything else is left to edgemq's own
/// validation, as in standalone mode.
pub fn without_cel(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("x-kubernetes-validations");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    // A CRD is plain data: it converts to JSON and back without loss.
    let mut v = serde_json::to_value(crd).unwrap_or_default();
    strip(&mut v);
    serde_json::from_value(v).unwrap_or_else(|_| crd.clone())
}

/// [`crds_yaml`] without CEL rules (see [`without_cel`]), for Kubernetes 1.20 to 1.22.
pub fn crds_yaml_without_cel() -> String {
    crate::api::crds()
        .iter()
        .map(|c| format!("---\n{}", crd_yaml(&without_cel(c))))
        .collect()
}

/// The file name under `crds/` of each CRD, in [`crate::api::crds`] order.
pub const CRD_FILES: [&str; 4] = [
    "broker.yaml",
    "mqttuser.yaml",
    "bridge.yaml",
    "certificate.yaml",
];

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::{crds_yaml, crds_yaml_without_cel};

    /// Each CRD's `openAPIV3Schema`, with the CRD's name.
    fn schemas() -> Vec<(String, Value)> {
        crate::api::crds()
            .iter()
            .map(|crd| {
                let name = crd.metadata.name.clone().unwrap_or_default();
                let v = serde_json::to_value(crd).expect("a CRD is JSON");
                let schema = v["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
                assert!(schema.is_object(), "{name} has no schema");
                (name, schema)
            })
            .collect()
    }

    /// Paths of every `default` holding an empty string, at any depth of its value.
    fn empty_string_defaults(v: &Value, path: &str, in_default: bool, out: &mut Vec<String>) {
        match v {
            Value::String(s) if in_default && s.is_empty() => out.push(path.to_owned()),
            Value::Object(m) => {
                for (k, child) in m {
                    let p = format!("{path}.{k}");
                    empty_string_defaults(child, &p, in_default || k == "default", out);
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    empty_string_defaults(child, &format!("{path}[{i}]"), in_default, out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn no_crd_schema_has_an_empty_string_default() {
        // A Kubernetes 1.20 apiserver refuses a CRD whose schema holds `default: ''`.
        let mut found = Vec::new();
        for (name, schema) in schemas() {
            empty_string_defaults(&schema, &name, false, &mut found);
        }
        assert!(found.is_empty(), "empty-string defaults: {found:?}");
    }

    /// Structural-schema rules every supported apiserver (1.20 on) enforces: each node
    /// has a `type` (or is int-or-string / preserves unknown fields), no references and
    /// no `anyOf`/`oneOf`/`allOf`/`not` (kube's derive inlines and flattens them).
    fn non_structural(v: &Value, path: &str, out: &mut Vec<String>) {
        let Some(m) = v.as_object() else {
            out.push(format!("{path}: not an object"));
            return;
        };
        let flag = |k: &str| m.get(k).and_then(Value::as_bool) == Some(true);
        if !m.contains_key("type")
            && !flag("x-kubernetes-int-or-string")
            && !flag("x-kubernetes-preserve-unknown-fields")
        {
            out.push(format!("{path}: no type"));
        }
        for k in [
            "$ref",
            "$schema",
            "definitions",
            "$defs",
            "anyOf",
            "oneOf",
            "allOf",
            "not",
        ] {
            if m.contains_key(k) {
                out.push(format!("{path}: {k}"));
            }
        }
        if m.contains_key("properties") && m.contains_key("additionalProperties") {
            out.push(format!("{path}: properties and additionalProperties"));
        }
        if let Some(Value::Object(props)) = m.get("properties") {
            for (k, child) in props {
                non_structural(child, &format!("{path}.{k}"), out);
            }
        }
        if let Some(items) = m.get("items") {
            non_structural(items, &format!("{path}[]"), out);
        }
        if let Some(ap @ Value::Object(_)) = m.get("additionalProperties") {
            non_structural(ap, &format!("{path}{{}}"), out);
        }
    }

    #[test]
    fn every_crd_schema_is_structural() {
        let mut found = Vec::new();
        for (name, schema) in schemas() {
            non_structural(&schema, &name, &mut found);
        }
        assert!(found.is_empty(), "not structural: {found:?}");
    }

    #[test]
    fn the_crds_for_old_clusters_differ_only_by_their_cel_rules() {
        let with = crds_yaml();
        let without = crds_yaml_without_cel();
        assert!(with.contains("x-kubernetes-validations"));
        assert!(!without.contains("x-kubernetes-validations"));
        assert_eq!(without.matches("---\n").count(), 4);
        for crd in crate::api::crds() {
            let mut stripped = serde_json::to_value(super::without_cel(&crd)).expect("json");
            let mut original = serde_json::to_value(&crd).expect("json");
            // Through the typed CRD and back, nothing else is lost or changed.
            fn drop_rules(v: &mut Value) {
                match v {
                    Value::Object(m) => {
                        m.remove("x-kubernetes-validations");
                        m.values_mut().for_each(drop_rules);
                    }
                    Value::Array(a) => a.iter_mut().for_each(drop_rules),
                    _ => {}
                }
            }
            drop_rules(&mut original);
            assert!(!stripped.to_string().contains("x-kubernetes-validations"));
            drop_rules(&mut stripped);
            assert_eq!(stripped, original, "{}", crd.spec.names.kind);
        }
    }

    #[test]
    fn every_crd_is_in_the_edgemq_category_with_a_short_name() {
        for crd in crate::api::crds() {
            let names = &crd.spec.names;
            assert_eq!(
                names.categories.as_deref(),
                Some(&["edgemq".to_owned()][..]),
                "{}",
                names.kind
            );
            assert!(
                names.short_names.as_ref().is_some_and(|s| !s.is_empty()),
                "{} has no short name",
                names.kind
            );
        }
    }

    #[test]
    fn every_crd_prints_ready_reason_and_age() {
        for crd in crate::api::crds() {
            let cols: Vec<String> = crd.spec.versions[0]
                .additional_printer_columns
                .iter()
                .flatten()
                .map(|c| c.name.clone())
                .collect();
            for want in ["Ready", "Reason", "Age"] {
                assert!(
                    cols.iter().any(|c| c == want),
                    "{}: {cols:?}",
                    crd.spec.names.kind
                );
            }
        }
    }
}
