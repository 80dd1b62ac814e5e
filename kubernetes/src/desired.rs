//! The objects a Broker needs on a cluster, computed purely from the Broker, its
//! bundle and the controller's settings: no client, no clock, no randomness. The
//! controller applies them with server-side apply under one field manager.
//!
//! ```text
//!  Broker + PodBundle ──► Secret          edgemq-<name>-bundle  (the bundle, hashed, and
//!                     │                                          the Broker's spec: recover)
//!                     ├─► ServiceAccount  edgemq-<name>
//!                     ├─► Role/RoleBinding edgemq-<name>         (its own Secrets, by name)
//!                     ├─► Deployment      edgemq-<name>          (1 replica, `edgemq broker`)
//!                     ├─► Service         edgemq-<name>          (one port per listener)
//!                     └─► PVC             edgemq-<name>-data     (when persistence is on)
//! ```
//!
//! The pod template holds nothing that changes with the configuration: users, ACLs,
//! listeners, certificates and bridges reach the running pod through the API and are
//! applied live. Only image, resources, scheduling and volumes roll the pod.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use serde_json::json;

use super::bundle::{PodBundle, BUNDLE_KEY, HASH_KEY};
use edgemq::api::broker::{Persistence, UpdateStrategy};
use edgemq::api::Broker;

/// Label naming the Broker an object belongs to.
pub const BROKER_LABEL: &str = "edgemq.io/broker";
/// `app.kubernetes.io/managed-by` value of every object the controller makes.
pub const MANAGED_BY: &str = "edgemq";
/// Port of the pod's operations endpoint (/healthz, /readyz, /metrics, /status).
pub const OPS_PORT: u16 = 9883;
/// Where the pod keeps retained messages and bridge queues.
pub const DATA_DIR: &str = "/var/lib/edgemq";
/// Annotation of a Broker asking for its pod to be replaced (any new value restarts
/// it), copied into the pod template as `kubectl rollout restart` does for a
/// Deployment.
pub const RESTARTED_AT: &str = "edgemq.io/restartedAt";
/// Pod-template annotation of broker pods that hand their stores over on request
/// (`super::handover`). A pod without it (an older release) never would: the rollout
/// that replaces it is `Recreate` ([`first_hand_over`]).
pub const HANDOVER_ANNOTATION: &str = "edgemq.io/hand-over";
/// Default size of the data volume.
pub const DEFAULT_VOLUME_SIZE: &str = "1Gi";

/// Name of the Deployment, Service, ServiceAccount, Role and RoleBinding of a Broker.
pub fn workload_name(broker: &str) -> String {
    format!("edgemq-{broker}")
}

pub use super::bundle::bundle_secret_name;

/// Name of a Broker's data PersistentVolumeClaim.
pub fn volume_name(broker: &str) -> String {
    format!("edgemq-{broker}-data")
}

/// Copies a restart asked of the live Broker (its [`RESTARTED_AT`] annotation) onto the
/// version the pod is made from: annotations do not move the generation that version is
/// chosen by, and a restart is asked even while the spec has a mistake.
pub fn carry_restart(live: &Broker, effective: &mut Broker) {
    let asked = live
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RESTARTED_AT));
    let annotations = effective
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    match asked {
        Some(at) => {
            annotations.insert(RESTARTED_AT.into(), at.clone());
        }
        None => {
            annotations.remove(RESTARTED_AT);
        }
    }
}

/// How a pod-template change replaces `broker`'s pod (`status.updateStrategy`).
pub fn update_strategy(broker: &Broker) -> &'static str {
    match broker.spec.persistence.as_ref().filter(|p| p.enabled) {
        Some(p) => p.update_strategy.as_str(),
        None => "RollingUpdate",
    }
}

/// A Deployment's `spec.strategy` for `strategy`: the new pod first (surge, and the
/// hand-over between the pods) or the old pod gone first.
fn deployment_strategy(strategy: UpdateStrategy) -> serde_json::Value {
    match strategy {
        UpdateStrategy::Recreate => json!({"type": "Recreate"}),
        UpdateStrategy::HandOver => {
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
        }
    }
}

/// Sets how `desired`'s pod is replaced: the strategy decided from the Broker's volume
/// (`super::volume::decide`).
pub fn set_update_strategy(desired: &mut Deployment, strategy: UpdateStrategy) {
    desired.spec.strategy = Some(typed(deployment_strategy(strategy)));
}

/// Replaces a hand-over by `Recreate` for the one rollout whose old pod (running now,
/// from an older release) does not hand its stores over: the new pod would wait for
/// them while the old one, still ready, is never ended.
pub fn first_hand_over(desired: &mut Deployment, current: Option<&Deployment>) {
    let speaks = |d: &Deployment| {
        d.spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .is_some_and(|a| a.contains_key(HANDOVER_ANNOTATION))
    };
    let Some(current) = current else { return };
    let has_volume = desired
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.volumes.as_ref())
        .is_some_and(|v| v.iter().any(|v| v.persistent_volume_claim.is_some()));
    if has_volume && !speaks(current) {
        set_update_strategy(desired, UpdateStrategy::Recreate);
    }
}

/// What the controller was told, for the objects it makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Image of broker pods unless a Broker names its own (the controller's image).
    pub image: String,
    /// Pull policy unless a Broker names its own.
    pub image_pull_policy: Option<String>,
    /// What the installer lets objects reach beyond their namespace.
    pub trust: super::trust::Trust,
}

/// Why `broker`'s pod may not run the image it names, if it may not: a broker pod reads
/// the Secrets its Broker names, so it runs the controller's image or one the installer
/// lists.
pub fn image_refusal(broker: &Broker, settings: &Settings) -> Option<String> {
    let image = broker.spec.pod.image.as_deref()?;
    settings.trust.image_refusal(image, &settings.image)
}

/// Every object of one Broker.
#[derive(Clone, Debug, PartialEq)]
pub struct BrokerObjects {
    /// The bundle Secret.
    pub bundle: Secret,
    /// The pod's identity.
    pub service_account: ServiceAccount,
    /// What the pod may read and write.
    pub role: Role,
    /// Binds the Role to the ServiceAccount.
    pub role_binding: RoleBinding,
    /// The broker pod.
    pub deployment: Deployment,
    /// The listeners' Service.
    pub service: Service,
    /// The data volume, when persistence is on.
    pub volume: Option<PersistentVolumeClaim>,
}

fn owner(broker: &Broker) -> OwnerReference {
    let mut o = broker
        .controller_owner_ref(&())
        .unwrap_or_else(|| OwnerReference {
            api_version: edgemq::api::API_VERSION.into(),
            kind: "Broker".into(),
            name: broker.metadata.name.clone().unwrap_or_default(),
            uid: broker.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            ..OwnerReference::default()
        });
    o.block_owner_deletion = Some(true);
    o
}

fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "edgemq-broker".into()),
        ("app.kubernetes.io/instance".into(), name.to_string()),
        ("app.kubernetes.io/managed-by".into(), MANAGED_BY.into()),
        (BROKER_LABEL.into(), name.to_string()),
    ])
}

fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "edgemq-broker".into()),
        (BROKER_LABEL.into(), name.to_string()),
    ])
}

fn meta(name: &str, namespace: &str, broker: &Broker) -> serde_json::Value {
    json!({
        "name": name,
        "namespace": namespace,
        "labels": labels(&broker.metadata.name.clone().unwrap_or_default()),
        "ownerReferences": [owner(broker)],
    })
}

fn typed<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    // The values are built here from typed parts; a failure is a bug in this file,
    // caught by the unit tests below.
    serde_json::from_value(v).expect("well-formed object")
}

/// Every object of `broker`, for `bundle`.
pub fn broker_objects(broker: &Broker, bundle: &PodBundle, settings: &Settings) -> BrokerObjects {
    let name = broker.metadata.name.clone().unwrap_or_default();
    let ns = broker
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let persistence = broker.spec.persistence.as_ref().filter(|p| p.enabled);
    let (service_account, role, role_binding) = access(broker, bundle, &name, &ns);
    BrokerObjects {
        bundle: bundle_secret(broker, bundle, &name, &ns),
        service_account,
        role,
        role_binding,
        deployment: deployment(broker, settings, &name, &ns, persistence),
        service: service(broker, &name, &ns),
        volume: persistence.map(|p| claim(broker, p, &name, &ns)),
    }
}

/// The bundle Secret: what the broker pod runs, its hash, and the Broker it was
/// planned from.
fn bundle_secret(broker: &Broker, bundle: &PodBundle, name: &str, ns: &str) -> Secret {
    let hash = bundle.bundle.hash();
    let mut bundle_meta = meta(&bundle_secret_name(name), ns, broker);
    bundle_meta["annotations"] = json!({"edgemq.io/config-hash": hash});
    let mut data = serde_json::Map::new();
    data.insert(
        BUNDLE_KEY.into(),
        json!(serde_json::to_string(bundle).unwrap_or_default()),
    );
    data.insert(HASH_KEY.into(), json!(hash));
    // The Broker this bundle was planned from: its last good version after a restart.
    // Always written (empty when it cannot be stored): server-side apply of
    // `stringData` does not remove a key left out, and an older spec must not stay.
    data.insert(
        super::recover::BROKER_KEY.into(),
        json!(super::recover::stored_broker(broker).unwrap_or_default()),
    );
    typed(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": bundle_meta,
        "type": "edgemq.io/bundle",
        "stringData": data,
    }))
}

/// The broker pod's identity and what it may read and write: its Secrets (by name),
/// its Broker's status and its Bridges' status.
fn access(
    broker: &Broker,
    bundle: &PodBundle,
    name: &str,
    ns: &str,
) -> (ServiceAccount, Role, RoleBinding) {
    let workload = workload_name(name);
    let service_account: ServiceAccount = typed(json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(&workload, ns, broker),
    }));

    let mut secrets: Vec<String> = bundle.secrets.iter().cloned().collect();
    secrets.push(bundle_secret_name(name));
    secrets.sort();
    secrets.dedup();
    let bridges: Vec<String> = bundle.bundle.bridges.keys().cloned().collect();
    let mut rules = vec![
        json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"], "resourceNames": secrets}),
        json!({"apiGroups": [edgemq::api::GROUP], "resources": ["brokers/status"], "verbs": ["get", "patch"], "resourceNames": [name]}),
    ];
    if !bridges.is_empty() {
        rules.push(json!({"apiGroups": [edgemq::api::GROUP], "resources": ["bridges/status"], "verbs": ["get", "patch"], "resourceNames": bridges}));
    }
    let role: Role = typed(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta(&workload, ns, broker),
        "rules": rules,
    }));
    let role_binding: RoleBinding = typed(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta(&workload, ns, broker),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": workload},
        "subjects": [{"kind": "ServiceAccount", "name": workload, "namespace": ns}],
    }));
    (service_account, role, role_binding)
}

/// The Deployment: one broker pod, replaced by hand-over or `Recreate`.
fn deployment(
    broker: &Broker,
    settings: &Settings,
    name: &str,
    ns: &str,
    persistence: Option<&Persistence>,
) -> Deployment {
    let workload = workload_name(name);
    let pod = &broker.spec.pod;
    let image = pod.image.clone().unwrap_or_else(|| settings.image.clone());
    let pull = pod
        .image_pull_policy
        .map(|p| p.as_str().to_string())
        .or_else(|| settings.image_pull_policy.clone());
    let mut container = json!({
        "name": "broker",
        "image": image,
        "args": ["broker"],
        "env": [
            {"name": "EDGEMQ_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "EDGEMQ_BROKER", "value": name},
            {"name": "EDGEMQ_STATE", "value": DATA_DIR},
            {"name": "EDGEMQ_HTTP", "value": format!("0.0.0.0:{OPS_PORT}")},
        ],
        // Only the ops port, which the probes name. Listener ports are not declared:
        // containerPorts are informational (the Service targets listeners by number),
        // and declaring them would make every listener change roll the pod.
        "ports": [{"name": "ops", "containerPort": OPS_PORT, "protocol": "TCP"}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "ops"}, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6},
        // Probed every second: a replacement pod joins the Service within a second
        // of its listeners accepting (its /readyz turns ready only then).
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "ops"}, "periodSeconds": 1, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    });
    if let Some(p) = pull {
        container["imagePullPolicy"] = json!(p);
    }
    if let Some(r) = &pod.resources {
        container["resources"] = json!(r);
    }
    let data_volume = match persistence {
        Some(_) => {
            json!({"name": "data", "persistentVolumeClaim": {"claimName": volume_name(name)}})
        }
        None => json!({"name": "data", "emptyDir": {}}),
    };
    let mut pod_spec = json!({
        "serviceAccountName": workload,
        "automountServiceAccountToken": true,
        "enableServiceLinks": false,
        "terminationGracePeriodSeconds": pod.termination_grace_period_seconds.unwrap_or(30),
        "securityContext": {
            "runAsNonRoot": true,
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [data_volume, {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}],
    });
    if !pod.node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(pod.node_selector);
    }
    if !pod.tolerations.is_empty() {
        pod_spec["tolerations"] = json!(pod.tolerations);
    }
    if let Some(a) = &pod.affinity {
        pod_spec["affinity"] = json!(a);
    }
    if let Some(p) = &pod.priority_class_name {
        pod_spec["priorityClassName"] = json!(p);
    }
    let mut template_annotations = pod.annotations.clone();
    template_annotations.insert(HANDOVER_ANNOTATION.into(), "v1".into());
    // `kubectl annotate broker NAME edgemq.io/restartedAt=...`: a restart as
    // `kubectl rollout restart` makes one, on the same path as any pod-template change.
    if let Some(at) = broker
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RESTARTED_AT))
    {
        template_annotations.insert(RESTARTED_AT.into(), at.clone());
    }
    let mut template_labels = labels(name);
    template_labels.extend(pod.labels.clone());
    // The new pod starts first (surge), unless a volume one node cannot share asks for
    // the old pod to go first. Two pods never open one store: the stores' locks and the
    // hand-over see to that (see `super::handover`).
    // The controller may still fall back to `Recreate` once it has seen the volume
    // (`super::volume`).
    let strategy =
        deployment_strategy(persistence.map_or(UpdateStrategy::HandOver, |p| p.update_strategy));
    typed(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(&workload, ns, broker),
        "spec": {
            // One replica: brokers are not clustered, so two would split clients.
            "replicas": 1,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector(name)},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": template_labels, "annotations": template_annotations},
                "spec": pod_spec,
            },
        },
    }))
}

/// The Service: one port per listener.
fn service(broker: &Broker, name: &str, ns: &str) -> Service {
    let workload = workload_name(name);
    let svc = &broker.spec.service;
    let mut svc_labels = labels(name);
    svc_labels.extend(svc.labels.clone());
    let ports: Vec<serde_json::Value> = broker
        .spec
        .listeners
        .iter()
        .map(|l| {
            let mut p =
                json!({"name": l.name, "port": l.port, "targetPort": l.port, "protocol": "TCP"});
            if let Some(np) = svc.node_ports.get(&l.name) {
                p["nodePort"] = json!(np);
            }
            p
        })
        .collect();
    let mut service_spec = json!({
        "type": svc.type_.as_str(),
        "selector": selector(name),
        "ports": ports,
    });
    if let Some(p) = &svc.external_traffic_policy {
        service_spec["externalTrafficPolicy"] = json!(p.as_str());
    }
    typed(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": workload,
            "namespace": ns,
            "labels": svc_labels,
            "annotations": svc.annotations,
            "ownerReferences": [owner(broker)],
        },
        "spec": service_spec,
    }))
}

/// The claim of a persistent Broker's data volume.
fn claim(broker: &Broker, p: &Persistence, name: &str, ns: &str) -> PersistentVolumeClaim {
    let mut pvc_spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": p.size.clone().unwrap_or_else(|| DEFAULT_VOLUME_SIZE.into())}},
    });
    if let Some(c) = &p.storage_class_name {
        pvc_spec["storageClassName"] = json!(c);
    }
    // No owner reference: deleting the Broker keeps its retained messages and
    // bridge queues; the claim is deleted by hand when the data is not wanted.
    let mut pvc_meta = meta(&volume_name(name), ns, broker);
    if let Some(m) = pvc_meta.as_object_mut() {
        m.remove("ownerReferences");
    }
    typed::<PersistentVolumeClaim>(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": pvc_meta,
        "spec": pvc_spec,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgemq::load::{Object, Resources};

    const BROKER: &str = r#"
apiVersion: edgemq.io/v1alpha1
kind: Broker
metadata: {name: home, namespace: iot, uid: 1234-5678, generation: 2}
spec:
  listeners:
    - {name: lan, port: 1883}
    - {name: tls, port: 8883, tls: {secretRef: home-tls}}
"#;

    fn broker(extra: &str) -> Broker {
        serde_yaml::from_str(&format!("{BROKER}{extra}")).expect("broker yaml")
    }

    fn user(name: &str, hash: &str) -> edgemq::api::MqttUser {
        serde_yaml::from_str(&format!(
            "apiVersion: edgemq.io/v1alpha1\nkind: MqttUser\nmetadata: {{name: {name}, namespace: iot}}\nspec: {{brokerRef: home, passwordHash: \"{hash}\"}}\n"
        ))
        .expect("user yaml")
    }

    const HASH: &str = "$7$101$qKSz0fyQacdTZ9HB$If/JbDtgTExFDBNmWitmhEReV5nR415+Z0sGyz5/w3xtjXLmRigZrJPRATCjNC+TE2hwhkAwJuKCX/NjaVU4kw==";

    fn objects(b: &Broker, users: &[&str]) -> BrokerObjects {
        let mut res = Resources::default();
        res.apply(Object::Broker(Box::new(b.clone())), None);
        for u in users {
            res.apply(Object::MqttUser(Box::new(user(u, HASH))), None);
        }
        let loaded = res.broker("iot", "home").expect("broker").clone();
        let bundle = edgemq::plan::plan_broker(&res, &loaded).expect("plan");
        let settings = Settings {
            image: "edgemq:1".into(),
            image_pull_policy: Some("Never".into()),
            trust: Default::default(),
        };
        broker_objects(b, &PodBundle::new(bundle, &res), &settings)
    }

    #[test]
    fn a_broker_runs_the_controllers_image_or_one_the_installer_lists() {
        let mut settings = Settings {
            image: "edgemq:1".into(),
            image_pull_policy: None,
            trust: Default::default(),
        };
        assert_eq!(image_refusal(&broker(""), &settings), None);
        let own = broker("  pod: {image: \"edgemq:1\"}\n");
        assert_eq!(image_refusal(&own, &settings), None);
        let foreign = broker("  pod: {image: \"busybox:latest\"}\n");
        let e = image_refusal(&foreign, &settings).unwrap();
        assert!(
            e.contains("busybox:latest") && e.contains("allowedBrokerImages"),
            "{e}"
        );
        settings.trust.broker_images = vec!["busybox:latest".into()];
        assert_eq!(image_refusal(&foreign, &settings), None);
    }

    #[test]
    fn a_broker_runs_as_one_locked_down_replica_probed_on_its_ops_port() {
        let o = objects(&broker(""), &["alice"]);
        let spec = o.deployment.spec;
        assert_eq!(spec.replicas, Some(1));
        let pod = spec.template.spec.expect("pod spec");
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("edgemq:1"));
        assert_eq!(c.args.as_ref().expect("args"), &vec!["broker".to_string()]);
        let sc = c.security_context.as_ref().expect("security context");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()])
        );
        let live = c
            .liveness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("liveness");
        assert_eq!(live.path.as_deref(), Some("/healthz"));
        let ready = c
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("readiness");
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        assert_eq!(pod.service_account_name.as_deref(), Some("edgemq-home"));
        let owner = &o.deployment.metadata.owner_references.expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Broker", "1234-5678")
        );
        assert_eq!(owner.controller, Some(true));
    }

    #[test]
    fn users_and_acls_change_the_bundle_but_never_the_pod_template() {
        let b = broker("");
        let one = objects(&b, &["alice"]);
        let two = objects(&b, &["alice", "bob"]);
        assert_ne!(
            one.bundle, two.bundle,
            "the bundle Secret carries the users"
        );
        assert_eq!(
            one.deployment, two.deployment,
            "a user change is applied live: the pod template must not move"
        );
        let mut other_image = b.clone();
        other_image.spec.pod.image = Some("edgemq:2".into());
        assert_ne!(
            one.deployment.spec.template,
            objects(&other_image, &["alice"]).deployment.spec.template,
            "an image change rolls the pod"
        );
    }

    #[test]
    fn a_restart_annotation_on_the_broker_rolls_the_pod_and_nothing_else_does() {
        let plain = broker("");
        let mut annotated = plain.clone();
        annotated.metadata.annotations = Some(BTreeMap::from([(
            "note".to_string(),
            "not a restart".to_string(),
        )]));
        assert_eq!(
            objects(&plain, &[]).deployment,
            objects(&annotated, &[]).deployment,
            "other annotations of the Broker leave the pod alone"
        );
        let mut restarted = annotated.clone();
        restarted
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(RESTARTED_AT.into(), "2026-12-06T05:00:00Z".into());
        // The controller plans from the Broker's last good version, whose annotations
        // may be older: the restart is taken from the live object.
        let mut planned = annotated.clone();
        carry_restart(&restarted, &mut planned);
        let template = objects(&planned, &[]).deployment.spec.template;
        let a = template.metadata.unwrap().annotations.unwrap();
        assert_eq!(a[RESTARTED_AT], "2026-12-06T05:00:00Z");
        assert!(!a.contains_key("note"));
    }

    #[test]
    fn a_pod_of_a_release_without_hand_over_is_replaced_old_pod_first_once() {
        let with = objects(&broker("  persistence: {enabled: true}\n"), &[]);
        let mut old_release = with.deployment.clone();
        if let Some(a) = old_release
            .spec
            .template
            .metadata
            .as_mut()
            .and_then(|m| m.annotations.as_mut())
        {
            a.remove(HANDOVER_ANNOTATION);
        }
        let strategy = |d: &Deployment| d.spec.strategy.clone().and_then(|s| s.type_);
        let mut d = with.deployment.clone();
        first_hand_over(&mut d, Some(&old_release));
        assert_eq!(strategy(&d).as_deref(), Some("Recreate"));
        let mut d = with.deployment.clone();
        first_hand_over(&mut d, Some(&with.deployment));
        assert_eq!(strategy(&d).as_deref(), Some("RollingUpdate"));
        let mut d = with.deployment.clone();
        first_hand_over(&mut d, None);
        assert_eq!(strategy(&d).as_deref(), Some("RollingUpdate"));
        // Without a volume there is nothing to hand over: surge-first stays.
        let without = objects(&broker(""), &[]);
        let mut d = without.deployment.clone();
        first_hand_over(&mut d, Some(&old_release));
        assert_eq!(strategy(&d).as_deref(), Some("RollingUpdate"));
    }

    #[test]
    fn readiness_is_probed_every_second_so_a_replacement_joins_the_service_at_once() {
        let o = objects(&broker(""), &[]);
        let pod = o.deployment.spec.template.spec.unwrap();
        let ready = pod.containers[0].readiness_probe.clone().unwrap();
        assert_eq!(
            (
                ready.period_seconds,
                ready.timeout_seconds,
                ready.success_threshold
            ),
            (Some(1), Some(1), Some(1))
        );
        // Long enough to tell 1000 clients at 200/s and save the sessions.
        assert_eq!(pod.termination_grace_period_seconds, Some(30));
    }

    #[test]
    fn listener_changes_reach_the_service_but_never_the_pod_template() {
        let b = broker("");
        let mut more = b.clone();
        more.spec.listeners.push(
            serde_yaml::from_str("{name: tls2, port: 8884, tls: {secretRef: home-tls}}")
                .expect("listener"),
        );
        more.spec.listeners[0].port = 11883;
        let (one, two) = (objects(&b, &[]), objects(&more, &[]));
        assert_ne!(
            one.service, two.service,
            "the Service carries the listeners"
        );
        assert_eq!(
            one.deployment, two.deployment,
            "a listener change is applied live: the pod template must not move"
        );
        let pod = two.deployment.spec.template.spec.expect("pod");
        let ports: Vec<_> = pod.containers[0]
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.container_port))
            .collect();
        assert_eq!(ports, vec![(Some("ops"), i32::from(OPS_PORT))]);
    }

    #[test]
    fn a_volume_means_a_hand_over_unless_recreate_is_asked_and_no_volume_means_surge_first() {
        let without = objects(&broker(""), &[]);
        assert!(without.volume.is_none());
        let s = without.deployment.spec.strategy.expect("strategy");
        assert_eq!(s.type_.as_deref(), Some("RollingUpdate"));

        let handover = objects(&broker("  persistence: {enabled: true}\n"), &[]);
        assert_eq!(update_strategy(&broker("")), "RollingUpdate");
        assert_eq!(
            update_strategy(&broker("  persistence: {enabled: true}\n")),
            "HandOver"
        );
        let s = handover.deployment.spec.strategy.expect("strategy");
        assert_eq!(s.type_.as_deref(), Some("RollingUpdate"));
        let r = s.rolling_update.expect("rolling update");
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        assert_eq!(
            (r.max_surge, r.max_unavailable),
            (Some(IntOrString::Int(1)), Some(IntOrString::Int(0))),
            "the old pod serves until the new one is ready"
        );

        let with = objects(
            &broker("  persistence: {enabled: true, size: 2Gi, updateStrategy: Recreate}\n"),
            &[],
        );
        let pvc = with.volume.expect("a claim");
        assert_eq!(pvc.metadata.name.as_deref(), Some("edgemq-home-data"));
        assert!(
            pvc.metadata.owner_references.is_none(),
            "deleting the Broker keeps its data"
        );
        let s = with.deployment.spec.strategy.expect("strategy");
        assert_eq!(
            s.type_.as_deref(),
            Some("Recreate"),
            "two pods must not open one store"
        );
    }

    #[test]
    fn the_pod_may_read_only_its_own_secrets_by_name() {
        let o = objects(&broker(""), &["alice"]);
        let rule = &o.role.rules.expect("rules")[0];
        assert_eq!(
            rule.resources.as_deref(),
            Some(&["secrets".to_string()][..])
        );
        assert_eq!(
            rule.resource_names.clone().expect("names"),
            vec!["edgemq-home-bundle".to_string(), "home-tls".to_string()]
        );
        let verbs = rule.verbs.clone();
        assert!(!verbs
            .iter()
            .any(|v| v == "create" || v == "update" || v == "delete"));
    }

    #[test]
    fn the_service_exposes_every_listener_with_the_spec_s_type_and_node_ports() {
        let o = objects(
            &broker("  service:\n    type: NodePort\n    nodePorts: {lan: 31883}\n    annotations: {a: b}\n"),
            &[],
        );
        let spec = o.service.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        let ports = spec.ports.expect("ports");
        assert_eq!(ports.len(), 2);
        assert_eq!(
            (ports[0].name.as_deref(), ports[0].port, ports[0].node_port),
            (Some("lan"), 1883, Some(31883))
        );
        assert_eq!(ports[1].node_port, None);
        assert_eq!(
            o.service.metadata.annotations.expect("annotations")["a"],
            "b"
        );
    }
}
