//! Whose an existing object is: the controller writes an object only when it is new or
//! already belongs to the edgemq object it is written for. Server-side apply with
//! `force` would otherwise take over anything that happens to carry the name — a
//! Broker named `leader-election` would replace the controller's own Role.
//!
//! ```text
//!  existing object's metadata ─┐
//!                              ├─► owned_by? ── yes ─► apply
//!  the owner it is written for ┘           └── no ──► refuse: NameConflict in the owner's status
//! ```
//!
//! An object belongs to an owner when it carries an owner reference to the owner's
//! uid, or edgemq's `app.kubernetes.io/managed-by` label together with the owner's
//! label (`edgemq.io/broker: <name>`, `edgemq.io/certificate: <name>`). The label lets
//! a recreated Broker adopt what its previous incarnation left behind before the
//! garbage collector removes it. Everything here is pure: it decides from metadata.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::desired::MANAGED_BY;

/// The label naming the edgemq object an object was made for, by owner kind:
/// `edgemq.io/broker` for a Broker, `edgemq.io/certificate` for a Certificate.
pub fn owner_label(kind: &str) -> String {
    format!("edgemq.io/{}", kind.to_ascii_lowercase())
}

/// Whether `existing` belongs to one of `owners` (see the module doc).
pub fn owned_by(existing: &ObjectMeta, owners: &[OwnerReference]) -> bool {
    let refs = existing.owner_references.as_deref().unwrap_or_default();
    if owners
        .iter()
        .any(|o| !o.uid.is_empty() && refs.iter().any(|r| r.uid == o.uid))
    {
        return true;
    }
    let labels = existing.labels.clone().unwrap_or_default();
    if labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        != Some(MANAGED_BY)
    {
        return false;
    }
    owners
        .iter()
        .any(|o| labels.get(&owner_label(&o.kind)) == Some(&o.name))
}

/// For an object written without an owner reference (a Broker's data claim, which
/// outlives its Broker): whether `existing` carries edgemq's `managed-by` label and the
/// same `edgemq.io/*` owner labels `desired` is written with.
fn same_labelled_owner(existing: &ObjectMeta, desired: &ObjectMeta) -> bool {
    let (Some(have), Some(want)) = (&existing.labels, &desired.labels) else {
        return false;
    };
    if have.get("app.kubernetes.io/managed-by").map(String::as_str) != Some(MANAGED_BY) {
        return false;
    }
    let mut named = want
        .iter()
        .filter(|(k, _)| k.starts_with("edgemq.io/"))
        .peekable();
    named.peek().is_some() && named.all(|(k, v)| have.get(k) == Some(v))
}

/// An object the controller would have to take over from someone else.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name} already exists and does not belong to {owner}{held}; rename the {owner_kind} or remove the {kind}")]
pub struct Conflict {
    /// Kind of the existing object.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// `Kind name` of the edgemq object it would be written for.
    pub owner: String,
    /// Kind of that edgemq object.
    pub owner_kind: String,
    /// Who holds it, as far as its metadata says (`" (managed by Helm)"`), or empty.
    pub held: String,
}

/// The conflict of writing `desired` (kind `kind`) over `existing`, if `existing`
/// does not belong to one of `desired`'s owners.
pub fn conflict(kind: &str, existing: &ObjectMeta, desired: &ObjectMeta) -> Option<Conflict> {
    let owners = desired.owner_references.as_deref().unwrap_or_default();
    if owned_by(existing, owners) || (owners.is_empty() && same_labelled_owner(existing, desired)) {
        return None;
    }
    let (owner_kind, owner) = owners
        .first()
        .map(|o| (o.kind.clone(), format!("{} {}", o.kind, o.name)))
        .unwrap_or_else(|| ("object".into(), "edgemq".into()));
    let held = holder(existing);
    Some(Conflict {
        kind: kind.to_string(),
        name: existing.name.clone().unwrap_or_default(),
        owner,
        owner_kind,
        held: held.map(|h| format!(" ({h})")).unwrap_or_default(),
    })
}

/// Who an object belongs to, from its owner references or managed-by label.
fn holder(m: &ObjectMeta) -> Option<String> {
    if let Some(o) = m.owner_references.as_deref().and_then(|r| r.first()) {
        return Some(format!("owned by {} {}", o.kind, o.name));
    }
    m.labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/managed-by"))
        .map(|v| format!("managed by {v}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn owner(kind: &str, name: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "edgemq.io/v1alpha1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(true),
            ..Default::default()
        }
    }

    fn meta(name: &str, labels: &[(&str, &str)], owners: Vec<OwnerReference>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("iot".into()),
            labels: (!labels.is_empty()).then(|| {
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>()
            }),
            owner_references: (!owners.is_empty()).then_some(owners),
            ..Default::default()
        }
    }

    fn desired_for_broker(name: &str, uid: &str) -> ObjectMeta {
        meta(
            &format!("edgemq-{name}"),
            &[
                ("app.kubernetes.io/managed-by", "edgemq"),
                ("edgemq.io/broker", name),
            ],
            vec![owner("Broker", name, uid)],
        )
    }

    #[test]
    fn an_object_owned_by_the_broker_is_written() {
        let existing = meta("edgemq-foo", &[], vec![owner("Broker", "foo", "u1")]);
        assert_eq!(
            conflict("Service", &existing, &desired_for_broker("foo", "u1")),
            None
        );
    }

    #[test]
    fn an_object_nobody_owns_is_refused_and_named() {
        let existing = meta("edgemq-foo", &[("app", "shop")], vec![]);
        let c =
            conflict("Service", &existing, &desired_for_broker("foo", "u1")).expect("a conflict");
        assert_eq!(c.kind, "Service");
        assert_eq!(c.name, "edgemq-foo");
        assert_eq!(
            c.to_string(),
            "Service edgemq-foo already exists and does not belong to Broker foo; rename the Broker or remove the Service"
        );
    }

    #[test]
    fn the_charts_own_role_is_refused_and_its_holder_named() {
        // The chart's leader-election Role, which a Broker named `leader-election`
        // would otherwise replace.
        let existing = meta(
            "edgemq-leader-election",
            &[("app.kubernetes.io/managed-by", "Helm")],
            vec![],
        );
        let c = conflict(
            "Role",
            &existing,
            &desired_for_broker("leader-election", "u1"),
        )
        .expect("a conflict");
        assert!(
            c.to_string().contains("(managed by Helm)"),
            "{}",
            c.to_string()
        );
    }

    #[test]
    fn an_object_of_another_owner_is_refused() {
        let existing = meta(
            "edgemq-foo",
            &[
                ("app.kubernetes.io/managed-by", "edgemq"),
                ("edgemq.io/certificate", "foo"),
            ],
            vec![owner("Certificate", "foo", "c1")],
        );
        let c = conflict("Secret", &existing, &desired_for_broker("foo", "u1")).unwrap();
        assert!(c.to_string().contains("(owned by Certificate foo)"));
    }

    #[test]
    fn edgemq_labels_for_the_same_broker_adopt_an_earlier_incarnations_object() {
        let existing = meta(
            "edgemq-foo",
            &[
                ("app.kubernetes.io/managed-by", "edgemq"),
                ("edgemq.io/broker", "foo"),
            ],
            vec![owner("Broker", "foo", "old-uid")],
        );
        assert_eq!(
            conflict("Deployment", &existing, &desired_for_broker("foo", "new")),
            None
        );
    }

    #[test]
    fn the_broker_label_alone_is_not_edgemqs() {
        // Someone else's object labelled for the Broker, without edgemq's managed-by.
        let existing = meta("edgemq-foo", &[("edgemq.io/broker", "foo")], vec![]);
        assert!(conflict("Service", &existing, &desired_for_broker("foo", "u1")).is_some());
        // edgemq's label for another Broker.
        let other = meta(
            "edgemq-foo",
            &[
                ("app.kubernetes.io/managed-by", "edgemq"),
                ("edgemq.io/broker", "bar"),
            ],
            vec![],
        );
        assert!(conflict("Service", &other, &desired_for_broker("foo", "u1")).is_some());
    }

    #[test]
    fn an_owner_without_uid_matches_no_reference_without_uid() {
        let existing = meta("x", &[], vec![owner("Broker", "foo", "")]);
        assert!(!owned_by(&existing, &[owner("Broker", "foo", "")]));
    }

    #[test]
    fn a_data_claim_without_owner_references_belongs_to_the_broker_its_labels_name() {
        let desired = meta(
            "edgemq-home-data",
            &[
                ("app.kubernetes.io/managed-by", MANAGED_BY),
                ("edgemq.io/broker", "home"),
            ],
            vec![],
        );
        let ours = desired.clone();
        assert_eq!(conflict("PersistentVolumeClaim", &ours, &desired), None);
        let other_broker = meta(
            "edgemq-home-data",
            &[
                ("app.kubernetes.io/managed-by", MANAGED_BY),
                ("edgemq.io/broker", "away"),
            ],
            vec![],
        );
        assert!(conflict("PersistentVolumeClaim", &other_broker, &desired).is_some());
        let unlabelled = meta("edgemq-home-data", &[], vec![]);
        assert!(conflict("PersistentVolumeClaim", &unlabelled, &desired).is_some());
        let someone_elses = meta(
            "edgemq-home-data",
            &[
                ("app.kubernetes.io/managed-by", "Helm"),
                ("edgemq.io/broker", "home"),
            ],
            vec![],
        );
        assert!(conflict("PersistentVolumeClaim", &someone_elses, &desired).is_some());
    }
}
