//! Whether a broker's new pod can mount the Broker's volume beside the old one, read
//! from the PersistentVolume its claim is bound to — and so which update strategy a
//! pod-template change really takes (`status.updateStrategy`). Pure: the controller
//! observes the claim and the volume and passes them in.
//!
//! A hand-over starts the new pod while the old one still runs. That works when both
//! pods can mount the volume at once: a volume of one node (k3s' local-path, `local`
//! volumes: the scheduler puts the new pod on that node too) or one many nodes mount
//! (`ReadWriteMany`). A `ReadWriteOnce` volume that is not tied to a node (a network
//! disk) attaches to one node at a time, so a new pod scheduled elsewhere would wait
//! for it while the old one, never told to go, keeps it: such a volume falls back to
//! `Recreate`.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};

use edgemq::api::broker::UpdateStrategy;

/// The node label the scheduler keeps a node-local volume's pods to.
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// What the bound volume allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// Two pods can mount it at once; why.
    Shared(String),
    /// They cannot; why.
    NotShared(String),
    /// Not known (not bound yet, or the volume cannot be read); why.
    Unknown(String),
}

/// The strategy a pod-template change takes, and why (for status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The strategy the Deployment gets.
    pub strategy: UpdateStrategy,
    /// Why, in a sentence.
    pub reason: String,
    /// Whether a hand-over was asked for and the volume does not allow it.
    pub fell_back: bool,
}

/// What `claim`, bound (or not) to `volume`, allows. `volume` is the bound
/// PersistentVolume, or why it could not be read.
pub fn assess(
    claim: &PersistentVolumeClaim,
    volume: Result<Option<&PersistentVolume>, &str>,
) -> Sharing {
    let claim_name = claim.metadata.name.as_deref().unwrap_or_default();
    let Some(pv_name) = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()) else {
        return Sharing::Unknown(format!(
            "PersistentVolumeClaim {claim_name} is not bound to a volume yet"
        ));
    };
    let pv = match volume {
        Ok(Some(pv)) => pv,
        Ok(None) => {
            return Sharing::Unknown(format!("PersistentVolume {pv_name} was not found"));
        }
        Err(why) => {
            return Sharing::Unknown(format!("PersistentVolume {pv_name} cannot be read: {why}"));
        }
    };
    let spec = pv.spec.as_ref();
    let modes: Vec<&str> = spec
        .and_then(|s| s.access_modes.as_ref())
        .map(|m| m.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let what = format!("PersistentVolume {pv_name} ({})", source_kind(pv));
    if modes.contains(&"ReadWriteMany") {
        return Sharing::Shared(format!("{what} is ReadWriteMany: both pods mount it"));
    }
    if modes.contains(&"ReadWriteOncePod") {
        return Sharing::NotShared(format!("{what} is ReadWriteOncePod: one pod at a time"));
    }
    if let Some(node) = single_node(pv) {
        return Sharing::Shared(format!(
            "{what} is on node {node} only: the new pod starts on that node and mounts it \
             beside the old one"
        ));
    }
    Sharing::NotShared(format!(
        "{what} is ReadWriteOnce and not tied to one node: a new pod on another node \
         could not mount it while the old pod holds it"
    ))
}

/// The strategy a Broker asking for `asked` gets on a volume that allows `sharing`.
/// An unknown volume keeps what was asked: before the claim binds there is no old pod
/// to hand over from, and the next reconcile (the pod's readiness) decides again.
pub fn decide(asked: UpdateStrategy, sharing: &Sharing) -> Decision {
    let (strategy, reason, fell_back) = match (asked, sharing) {
        (UpdateStrategy::Recreate, _) => (
            UpdateStrategy::Recreate,
            "persistence.updateStrategy is Recreate".to_string(),
            false,
        ),
        (UpdateStrategy::HandOver, Sharing::Shared(why)) => {
            (UpdateStrategy::HandOver, why.clone(), false)
        }
        (UpdateStrategy::HandOver, Sharing::Unknown(why)) => (
            UpdateStrategy::HandOver,
            format!(
                "{why}; HandOver as asked (set persistence.updateStrategy: Recreate if two \
                 pods cannot share the volume)"
            ),
            false,
        ),
        (UpdateStrategy::HandOver, Sharing::NotShared(why)) => (
            UpdateStrategy::Recreate,
            format!("{why}: Recreate instead of HandOver"),
            true,
        ),
    };
    Decision {
        strategy,
        reason,
        fell_back,
    }
}

/// The one node a volume's required node affinity allows, if it allows exactly one
/// (as k3s' local-path and `local` volumes set it).
fn single_node(pv: &PersistentVolume) -> Option<&str> {
    let terms = &pv
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms;
    // Terms are ORed: one node only when there is one term, and it names one host.
    let [term] = terms.as_slice() else {
        return None;
    };
    term.match_expressions.as_ref()?.iter().find_map(|e| {
        match (e.key.as_str(), e.operator.as_str(), e.values.as_deref()) {
            (HOSTNAME_LABEL, "In", Some([node])) => Some(node.as_str()),
            _ => None,
        }
    })
}

/// The kind of storage behind a volume (`hostPath`, `csi driver X`, …), for messages:
/// the name of its one volume-source field.
fn source_kind(pv: &PersistentVolume) -> String {
    const NOT_SOURCES: &[&str] = &[
        "accessModes",
        "capacity",
        "claimRef",
        "mountOptions",
        "nodeAffinity",
        "persistentVolumeReclaimPolicy",
        "storageClassName",
        "volumeAttributesClassName",
        "volumeMode",
    ];
    if let Some(csi) = pv.spec.as_ref().and_then(|s| s.csi.as_ref()) {
        return format!("csi driver {}", csi.driver);
    }
    let spec = serde_json::to_value(pv.spec.as_ref()).unwrap_or_default();
    spec.as_object()
        .and_then(|o| o.keys().find(|k| !NOT_SOURCES.contains(&k.as_str())))
        .cloned()
        .unwrap_or_else(|| "unknown source".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(bound_to: Option<&str>) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "edgemq-home-data", "namespace": "ns"},
            "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": bound_to},
        }))
        .unwrap()
    }

    fn pv(spec: serde_json::Value) -> PersistentVolume {
        serde_json::from_value(json!({"metadata": {"name": "pv1"}, "spec": spec})).unwrap()
    }

    fn on_node(node: &str) -> serde_json::Value {
        json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}})
    }

    #[test]
    fn a_node_local_volume_is_shared_on_its_node() {
        let v = pv(
            json!({"accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/d"},
                          "nodeAffinity": on_node("edge-1")}),
        );
        let s = assess(&claim(Some("pv1")), Ok(Some(&v)));
        assert_eq!(
            s,
            Sharing::Shared(
                "PersistentVolume pv1 (hostPath) is on node edge-1 only: the new pod starts \
                 on that node and mounts it beside the old one"
                    .into()
            )
        );
        let d = decide(UpdateStrategy::HandOver, &s);
        assert_eq!(d.strategy, UpdateStrategy::HandOver);
        assert!(!d.fell_back);
    }

    #[test]
    fn a_network_disk_of_one_node_at_a_time_falls_back_to_recreate() {
        let v = pv(json!({"accessModes": ["ReadWriteOnce"],
                          "csi": {"driver": "disk.csi.example", "volumeHandle": "vol-1"}}));
        let d = decide(
            UpdateStrategy::HandOver,
            &assess(&claim(Some("pv1")), Ok(Some(&v))),
        );
        assert_eq!(d.strategy, UpdateStrategy::Recreate);
        assert!(d.fell_back);
        assert_eq!(
            d.reason,
            "PersistentVolume pv1 (csi driver disk.csi.example) is ReadWriteOnce and not \
             tied to one node: a new pod on another node could not mount it while the old \
             pod holds it: Recreate instead of HandOver"
        );
    }

    #[test]
    fn a_host_path_without_node_affinity_is_not_shared() {
        // The scheduler may start the new pod on any node: this path there is another
        // folder.
        let v = pv(json!({"accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/d"}}));
        let s = assess(&claim(Some("pv1")), Ok(Some(&v)));
        assert!(
            matches!(&s, Sharing::NotShared(w) if w.starts_with("PersistentVolume pv1 (hostPath)"))
        );
    }

    #[test]
    fn read_write_many_is_shared_and_read_write_once_pod_is_not() {
        let many =
            pv(json!({"accessModes": ["ReadWriteMany"], "nfs": {"server": "s", "path": "/"}}));
        assert!(matches!(
            assess(&claim(Some("pv1")), Ok(Some(&many))),
            Sharing::Shared(w) if w == "PersistentVolume pv1 (nfs) is ReadWriteMany: both pods mount it"
        ));
        // Even tied to one node, one pod at a time.
        let once_pod = pv(
            json!({"accessModes": ["ReadWriteOncePod"], "local": {"path": "/d"},
                                 "nodeAffinity": on_node("edge-1")}),
        );
        assert!(matches!(
            assess(&claim(Some("pv1")), Ok(Some(&once_pod))),
            Sharing::NotShared(_)
        ));
    }

    #[test]
    fn affinity_to_several_nodes_or_by_zone_is_not_one_node() {
        let two_terms = pv(
            json!({"accessModes": ["ReadWriteOnce"], "local": {"path": "/d"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]}]},
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["b"]}]}]}}}),
        );
        let zone = pv(
            json!({"accessModes": ["ReadWriteOnce"], "csi": {"driver": "d", "volumeHandle": "v"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["z1"]}]}]}}}),
        );
        for v in [two_terms, zone] {
            assert!(matches!(
                assess(&claim(Some("pv1")), Ok(Some(&v))),
                Sharing::NotShared(_)
            ));
        }
    }

    #[test]
    fn unbound_or_unreadable_keeps_what_was_asked_and_says_why() {
        let d = decide(UpdateStrategy::HandOver, &assess(&claim(None), Ok(None)));
        assert_eq!(d.strategy, UpdateStrategy::HandOver);
        assert!(d
            .reason
            .starts_with("PersistentVolumeClaim edgemq-home-data is not bound to a volume yet"));
        let d = decide(
            UpdateStrategy::HandOver,
            &assess(&claim(Some("pv1")), Err("forbidden")),
        );
        assert_eq!(d.strategy, UpdateStrategy::HandOver);
        assert!(d
            .reason
            .starts_with("PersistentVolume pv1 cannot be read: forbidden; HandOver as asked"));
        // Recreate asked: whatever the volume.
        let d = decide(UpdateStrategy::Recreate, &assess(&claim(None), Ok(None)));
        assert_eq!(
            (d.strategy, d.reason.as_str(), d.fell_back),
            (
                UpdateStrategy::Recreate,
                "persistence.updateStrategy is Recreate",
                false
            )
        );
    }
}
