//! The committed CRD YAML under `crds/` must match the API types. Run with
//! `UPDATE_CRDS=1` to rewrite the files after changing a type.

use std::path::PathBuf;

use edgemq::render::{crd_yaml, crds_yaml, CRD_FILES};

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("crds")
}

#[test]
fn committed_crds_match_the_api_types() {
    let update = std::env::var_os("UPDATE_CRDS").is_some_and(|v| v == "1");
    let crds = edgemq::api::crds();
    assert_eq!(crds.len(), CRD_FILES.len());
    let mut stale = Vec::new();
    for (crd, file) in crds.iter().zip(CRD_FILES) {
        let path = crds_dir().join(file);
        let yaml = crd_yaml(crd);
        if update {
            std::fs::write(&path, &yaml).expect("write the CRD file");
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "crds/{{{}}} differ from the API types; run `UPDATE_CRDS=1 cargo test -p edgemq --test crds` and commit",
        stale.join(",")
    );
}

#[test]
fn each_file_holds_the_crd_of_its_kind() {
    for (crd, file) in edgemq::api::crds().iter().zip(CRD_FILES) {
        let kind = crd.spec.names.kind.to_lowercase();
        assert_eq!(format!("{kind}.yaml"), file);
        assert_eq!(crd.spec.group, "edgemq.io");
    }
}

#[test]
fn the_crds_command_stream_holds_all_four_documents() {
    let all = crds_yaml();
    assert_eq!(all.matches("---\n").count(), 4);
    for kind in ["Broker", "MqttUser", "Bridge", "Certificate"] {
        assert!(all.contains(&format!("kind: {kind}\n")), "{kind} missing");
    }
}
