//! The pure plan: validated resources → one deterministic config bundle per Broker.
//!
//! No I/O, no clock, no randomness: the same resources give a byte-identical bundle,
//! and the bundle's hash says whether anything changed. Certificate *material* is not
//! part of the plan; listeners reference it by name and the runtime resolves it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::bridge::{BridgeDirection, MqttVersion};
use crate::api::broker::{
    CertificateIdentity, ClientAuthMode, Limits, ListenerProtocol, UnknownIdentity,
};
use crate::api::{Bridge, Broker, SecretKeyRef};
use crate::auth::acl::topic_matches;
/// The ACL part of a plan; defined beside the matcher that reads it, so the two
/// modules depend one way (plan → auth).
pub use crate::auth::acl::AclPlan;
use crate::auth::passwd::{hash_password_with_salt, SALT_LEN};
use crate::load::{Loaded, Resources};

/// Everything one broker needs to run, derived from the resources.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BrokerBundle {
    /// `namespace/name` of the Broker (standalone: namespace `default` unless set).
    pub namespace: String,
    /// Name of the Broker.
    pub name: String,
    /// `metadata.generation` of the Broker, when known.
    pub generation: Option<i64>,
    /// Listeners, sorted by name.
    pub listeners: Vec<ListenerPlan>,
    /// Whether clients without a username may connect.
    pub allow_anonymous: bool,
    /// Users by username: password hash and source object.
    pub users: BTreeMap<String, UserPlan>,
    /// The ACL, with Mosquitto's semantics.
    pub acl: AclPlan,
    /// Limits.
    pub limits: Limits,
    /// Keep retained messages across restarts.
    pub persistence: bool,
    /// The Broker's `clientIdPattern`: client ids bound to users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_pattern: Option<String>,
    /// Bridges of this broker, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bridges: BTreeMap<String, BridgePlan>,
}

/// One Bridge: how to reach the remote and which topics cross, in both directions.
/// Secret values are referenced, not copied, so bundles carry no credentials; the
/// runtime resolves them.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BridgePlan {
    /// Namespace of the Bridge.
    pub namespace: String,
    /// Name of the Bridge.
    pub name: String,
    /// `metadata.generation` of the Bridge, when known.
    pub generation: Option<i64>,
    /// Where the remote is.
    pub address: RemoteAddress,
    /// Client id on the remote.
    pub client_id: String,
    /// MQTT version spoken to the remote.
    pub protocol_version: MqttVersion,
    /// Keepalive in seconds.
    pub keep_alive_seconds: u16,
    /// Clean session on every connect.
    pub clean_session: bool,
    /// Username on the remote.
    pub username: Option<SecretKeyRef>,
    /// Password on the remote.
    pub password: Option<SecretKeyRef>,
    /// TLS towards the remote; `None` for plain text.
    pub tls: Option<BridgeTlsPlan>,
    /// Topic rules, in the order given.
    pub topics: Vec<TopicRule>,
    /// Most messages kept in the outbound queue.
    pub queue_max_messages: u64,
    /// Most payload bytes kept in the outbound queue.
    pub queue_max_bytes: u64,
}

/// Where a bridge connects.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RemoteAddress {
    /// `host:port` as written.
    HostPort(String),
    /// The AWS IoT Core data endpoint of an `awsIot` Certificate, on this port.
    AwsIotEndpoint {
        /// Name of the Certificate.
        certificate: String,
        /// 8883, or 443 with ALPN.
        port: u16,
    },
}

/// TLS settings of a bridge.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BridgeTlsPlan {
    /// Roots the remote's certificate is checked against.
    pub ca: CaSource,
    /// Key pair presented to the remote (mutual TLS).
    pub client: Option<TlsSource>,
    /// ALPN protocols offered.
    pub alpn: Vec<String>,
    /// Name checked against the remote's certificate; `None`: the address host.
    pub server_name: Option<String>,
}

/// Roots a bridge trusts.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum CaSource {
    /// The operating system's roots.
    System,
    /// The CA of a Certificate (its `ca.crt`, or the certificate itself).
    Certificate(String),
    /// PEM in a Secret key.
    Secret(SecretKeyRef),
}

/// One topic rule, with Mosquitto's bridge `topic` meaning: the local side subscribes
/// or publishes `localPrefix + pattern`, the remote side `remotePrefix + pattern`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TopicRule {
    /// `out`, `in` or `both`.
    pub direction: BridgeDirection,
    /// QoS on the link.
    pub qos: u8,
    /// Filter on the local broker.
    pub local_filter: String,
    /// Filter on the remote broker.
    pub remote_filter: String,
    /// Local prefix.
    pub local_prefix: String,
    /// Remote prefix.
    pub remote_prefix: String,
}

impl TopicRule {
    /// Whether messages cross local → remote.
    pub fn outbound(&self) -> bool {
        matches!(self.direction, BridgeDirection::Out | BridgeDirection::Both)
    }

    /// Whether messages cross remote → local.
    pub fn inbound(&self) -> bool {
        matches!(self.direction, BridgeDirection::In | BridgeDirection::Both)
    }

    /// The remote topic of a local one, when this outbound rule matches it.
    pub fn to_remote(&self, local_topic: &str) -> Option<String> {
        if !self.outbound() || !topic_matches(&self.local_filter, local_topic) {
            return None;
        }
        let rest = local_topic.strip_prefix(&self.local_prefix)?;
        Some(format!("{}{rest}", self.remote_prefix))
    }

    /// The local topic of a remote one, when this inbound rule matches it.
    pub fn to_local(&self, remote_topic: &str) -> Option<String> {
        if !self.inbound() || !topic_matches(&self.remote_filter, remote_topic) {
            return None;
        }
        let rest = remote_topic.strip_prefix(&self.remote_prefix)?;
        Some(format!("{}{rest}", self.local_prefix))
    }
}

/// One listener.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ListenerPlan {
    /// Listener name.
    pub name: String,
    /// Address to bind, `host:port`.
    pub bind: String,
    /// `mqtt` or `websockets`.
    pub protocol: ListenerProtocol,
    /// Where the TLS key pair comes from; `None` for plain text.
    pub tls: Option<TlsSource>,
    /// Client certificates asked for; `None`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuthPlan>,
}

/// Client certificates on a listener (see [`crate::api::broker::ClientAuth`]).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ClientAuthPlan {
    /// A client without a certificate is refused during the handshake.
    pub required: bool,
    /// The CA that signs client certificates.
    pub ca: ClientCaSource,
    /// A revocation list of that CA.
    pub crl: Option<SecretKeyRef>,
    /// The part of the certificate that becomes the username.
    pub identity: CertificateIdentity,
    /// The client id must be the identity.
    pub identity_as_client_id: bool,
    /// A certificate whose identity no MqttUser names is refused (else it gets the
    /// `aclPatterns` only).
    pub refuse_unknown: bool,
}

/// Where a listener's client CA comes from.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum ClientCaSource {
    /// The CA of a Certificate (its `ca.crt`, or the certificate itself).
    Certificate(String),
    /// PEM in a Secret key.
    Secret(SecretKeyRef),
}

/// Where a TLS key pair comes from. The runtime resolves it to PEM material.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum TlsSource {
    /// Issued for a Certificate resource (by name).
    Certificate(String),
    /// Already present in a `kubernetes.io/tls` Secret (by name).
    Secret(String),
}

/// One user of a broker.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UserPlan {
    /// Mosquitto-compatible password hash (`$7$`, `$6$` or `$argon2id$`); empty for a
    /// certificate user.
    pub password_hash: String,
    /// A certificate user: logs in with a client certificate whose identity is the
    /// username, never with a password.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub certificate: bool,
    /// The MqttUser object it came from, for status and logs.
    pub source: String,
}

impl BrokerBundle {
    /// SHA-256 (hex) of the bundle's canonical JSON: equal bundles, equal hashes.
    /// `metadata.generation` is left out: it says which edit a status describes, not
    /// what runs, so a folder and the same objects in a cluster hash alike.
    pub fn hash(&self) -> String {
        use sha2::Digest;
        let mut config = self.clone();
        config.generation = None;
        for b in config.bridges.values_mut() {
            b.generation = None;
        }
        let json = serde_json::to_vec(&config).unwrap_or_default();
        sha2::Sha256::digest(&json)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Why no bundle could be made. The loader's validation prevents all of these; the plan
/// still checks, because objects from the Kubernetes API arrive one by one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The password Secret or its key is missing.
    #[error("MqttUser {user}: Secret `{secret}` has no key `{key}` in namespace `{namespace}`")]
    MissingPassword {
        /// `namespace/name` of the MqttUser.
        user: String,
        /// Its namespace.
        namespace: String,
        /// Secret name.
        secret: String,
        /// Key in the Secret.
        key: String,
    },
    /// The MqttUser has neither a password Secret nor a hash.
    #[error("MqttUser {user}: set exactly one of passwordSecretRef, passwordHash and certificateIdentity")]
    NoPassword {
        /// `namespace/name` of the MqttUser.
        user: String,
    },
    /// Two MqttUsers give one Broker the same username.
    #[error(
        "Broker {broker}: username `{username}` is claimed by both MqttUser {first} and {second}"
    )]
    DuplicateUsername {
        /// `namespace/name` of the Broker.
        broker: String,
        /// The username.
        username: String,
        /// `namespace/name` of the first MqttUser.
        first: String,
        /// `namespace/name` of the second.
        second: String,
    },
}

/// Every [`PlanError`] found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct PlanErrors(pub Vec<PlanError>);

impl PlanErrors {
    /// The errors, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, PlanError> {
        self.0.iter()
    }
}

/// PBKDF2 iterations of hashes the plan makes, as `mosquitto_passwd` does.
pub const PLAN_HASH_ITERATIONS: u32 = 101;

/// Domain tag of the salt derivation; bump the version to re-salt every password.
const SALT_TAG: &[u8] = b"edgemq.io/plan/password-salt/v1";

/// One bundle per Broker, keyed `namespace/name`. Pure: no I/O, no clock, no randomness.
pub fn plan(res: &Resources) -> Result<BTreeMap<String, BrokerBundle>, PlanErrors> {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for b in res.brokers() {
        let key = format!("{}/{}", b.namespace, b.name);
        match plan_broker(res, b) {
            Ok(bundle) => {
                out.insert(key, bundle);
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(PlanErrors(errors))
    }
}

/// The bundle of one Broker. The Kubernetes controller plans Brokers one at a time, so
/// one Broker's mistakes never hold back another's.
pub fn plan_broker(res: &Resources, b: &Loaded<Broker>) -> Result<BrokerBundle, Vec<PlanError>> {
    let spec = &b.object.spec;
    let broker_key = format!("{}/{}", b.namespace, b.name);
    let mut errors = Vec::new();

    let mut listeners: Vec<ListenerPlan> = spec
        .listeners
        .iter()
        .map(|l| ListenerPlan {
            name: l.name.clone(),
            bind: bind(l.bind_address.as_deref(), l.port),
            protocol: l.protocol,
            tls: l.tls.as_ref().and_then(|t| {
                t.certificate_ref
                    .clone()
                    .map(TlsSource::Certificate)
                    .or_else(|| t.secret_ref.clone().map(TlsSource::Secret))
            }),
            client_auth: l
                .tls
                .as_ref()
                .and_then(|t| t.client_auth.as_ref())
                .and_then(|c| {
                    let ca = c
                        .ca_certificate_ref
                        .clone()
                        .map(ClientCaSource::Certificate)
                        .or_else(|| c.ca_secret_ref.clone().map(ClientCaSource::Secret))?;
                    Some(ClientAuthPlan {
                        required: c.mode == ClientAuthMode::Required,
                        ca,
                        crl: c.crl_secret_ref.clone(),
                        identity: c.identity,
                        identity_as_client_id: c.identity_as_client_id,
                        refuse_unknown: c.unknown_identity == UnknownIdentity::Refuse,
                    })
                }),
        })
        .collect();
    listeners.sort_by(|a, c| a.name.cmp(&c.name));

    let mut users = BTreeMap::new();
    let mut user_acls = BTreeMap::new();
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    for u in res.users_of(&b.namespace, &b.name) {
        let source = format!("{}/{}", u.namespace, u.name);
        let username = u.object.username();
        if let Some(first) = sources.get(&username) {
            errors.push(PlanError::DuplicateUsername {
                broker: broker_key.clone(),
                username,
                first: first.clone(),
                second: source,
            });
            continue;
        }
        sources.insert(username.clone(), source.clone());
        let spec = &u.object.spec;
        let hash = match (&spec.password_hash, &spec.password_secret_ref) {
            _ if spec.certificate_identity.is_some() => String::new(),
            (Some(h), _) => h.clone(),
            (None, Some(r)) => match res.secret_value(&u.namespace, &r.name, &r.key) {
                Some(pw) => hash_secret_password(&broker_key, &username, &pw),
                None => {
                    errors.push(PlanError::MissingPassword {
                        user: source,
                        namespace: u.namespace.clone(),
                        secret: r.name.clone(),
                        key: r.key.clone(),
                    });
                    continue;
                }
            },
            (None, None) => {
                errors.push(PlanError::NoPassword { user: source });
                continue;
            }
        };
        if !spec.acl.is_empty() {
            user_acls.insert(username.clone(), spec.acl.clone());
        }
        users.insert(
            username,
            UserPlan {
                password_hash: hash,
                certificate: spec.certificate_identity.is_some(),
                source,
            },
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    Ok(BrokerBundle {
        namespace: b.namespace.clone(),
        name: b.name.clone(),
        generation: b.generation,
        listeners,
        allow_anonymous: spec.allow_anonymous,
        users,
        acl: AclPlan {
            enabled: spec.acl_enabled,
            // Rules for anonymous clients mean nothing while anonymous clients are
            // refused; leaving them out keeps the bundle (and its hash) to what runs.
            anonymous: if spec.allow_anonymous {
                spec.anonymous_acl.clone()
            } else {
                Vec::new()
            },
            users: user_acls,
            patterns: spec.acl_patterns.clone(),
        },
        limits: spec.limits.clone(),
        persistence: spec.persistence.as_ref().is_some_and(|p| p.enabled),
        client_id_pattern: spec.client_id_pattern.clone(),
        bridges: res
            .bridges_of(&b.namespace, &b.name)
            .map(|br| (br.name.clone(), plan_bridge(res, br)))
            .collect(),
    })
}

/// The plan of one Bridge. Defaults: client id `<broker>-<bridge>`, or the thing name
/// when the client certificate is an AWS IoT one (AWS IoT Core policies usually
/// allow a thing to connect under its own name only; for a `fleetProvisioning`
/// certificate the thing name is known only once provisioned, so the plan leaves the id
/// empty and the runtime fills it in); port 8883 for the AWS IoT
/// endpoint, 443 when ALPN is offered (AWS IoT Core's MQTT over 443).
fn plan_bridge(res: &Resources, br: &Loaded<Bridge>) -> BridgePlan {
    let spec = &br.object.spec;
    let r = &spec.remote;
    let client_cert = r
        .tls
        .as_ref()
        .and_then(|t| t.client_certificate_ref.as_deref())
        .and_then(|c| res.certificate(&br.namespace, c));
    let thing = client_cert
        .and_then(|c| c.spec.issuer.aws_iot.as_ref())
        .map(|a| a.thing_name.clone());
    let client_id = r
        .client_id
        .clone()
        .or(thing)
        .unwrap_or_else(|| format!("{}-{}", spec.broker_ref, br.name));
    let alpn = r.tls.as_ref().is_some_and(|t| !t.alpn.is_empty());
    let address = match (&r.address, &r.aws_iot_endpoint) {
        (Some(a), _) => RemoteAddress::HostPort(a.clone()),
        (None, Some(e)) => RemoteAddress::AwsIotEndpoint {
            certificate: e.certificate_ref.clone(),
            port: if alpn { 443 } else { 8883 },
        },
        (None, None) => RemoteAddress::HostPort(String::new()),
    };
    // The AWS IoT endpoint always speaks TLS, so it gets TLS with the system roots
    // even when `tls` is left out.
    let tls = match (&r.tls, &address) {
        (Some(t), _) => Some(BridgeTlsPlan {
            ca: match (&t.ca_certificate_ref, &t.ca_secret_ref) {
                (Some(c), _) => CaSource::Certificate(c.clone()),
                (None, Some(s)) => CaSource::Secret(s.clone()),
                (None, None) => CaSource::System,
            },
            client: match (&t.client_certificate_ref, &t.client_secret_ref) {
                (Some(c), _) => Some(TlsSource::Certificate(c.clone())),
                (None, Some(s)) => Some(TlsSource::Secret(s.clone())),
                (None, None) => None,
            },
            alpn: t.alpn.clone(),
            server_name: t.server_name.clone(),
        }),
        (None, RemoteAddress::AwsIotEndpoint { .. }) => Some(BridgeTlsPlan {
            ca: CaSource::System,
            client: None,
            alpn: Vec::new(),
            server_name: None,
        }),
        (None, RemoteAddress::HostPort(_)) => None,
    };
    BridgePlan {
        namespace: br.namespace.clone(),
        name: br.name.clone(),
        generation: br.generation,
        address,
        client_id,
        protocol_version: r.protocol_version,
        keep_alive_seconds: r.keep_alive_seconds,
        clean_session: r.clean_session,
        username: r.username_secret_ref.clone(),
        password: r.password_secret_ref.clone(),
        tls,
        topics: spec
            .topics
            .iter()
            .map(|t| TopicRule {
                direction: t.direction,
                qos: t.qos.min(2),
                local_filter: format!("{}{}", t.local_prefix, t.pattern),
                remote_filter: format!("{}{}", t.remote_prefix, t.pattern),
                local_prefix: t.local_prefix.clone(),
                remote_prefix: t.remote_prefix.clone(),
            })
            .collect(),
        queue_max_messages: spec.queue.max_messages,
        queue_max_bytes: spec.queue.max_bytes,
    }
}

/// `host:port`, with IPv6 literals in brackets.
fn bind(addr: Option<&str>, port: u16) -> String {
    let host = addr.unwrap_or("0.0.0.0");
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The `$7$` hash of a password read from a Secret.
///
/// The bundle must be deterministic (same resources → same bytes → same hash, so an
/// unchanged folder never restarts anything), so the salt cannot be random. It is
/// derived from the broker, the username and the password: the hash string changes
/// exactly when the password changes, and two users or brokers with the same password
/// still get different salts. The derivation is itself PBKDF2 with the same iteration
/// count, so the salt (which is public inside the hash string) offers no cheaper way to
/// test a guessed password than the hash does.
fn hash_secret_password(broker_key: &str, username: &str, password: &[u8]) -> String {
    let mut info = Vec::with_capacity(SALT_TAG.len() + broker_key.len() + username.len() + 24);
    for part in [SALT_TAG, broker_key.as_bytes(), username.as_bytes()] {
        info.extend_from_slice(&(part.len() as u64).to_be_bytes());
        info.extend_from_slice(part);
    }
    let mut salt = [0u8; SALT_LEN];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, &info, PLAN_HASH_ITERATIONS, &mut salt);
    hash_password_with_salt(password, &salt, PLAN_HASH_ITERATIONS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::bridge::BridgeDirection;
    use crate::auth::passwd::PasswordHash;
    use crate::load::testing::{assert_golden, fixture, standalone_example};

    fn example_bundles() -> BTreeMap<String, BrokerBundle> {
        let res = crate::load::load(&standalone_example(), None).unwrap_or_else(|e| panic!("{e}"));
        plan(&res).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_standalone_example_plans_as_the_golden_bundle() {
        let bundles = example_bundles();
        let json = serde_json::to_string_pretty(&bundles).expect("bundles are JSON") + "\n";
        assert_golden(&fixture("golden").join("standalone.bundles.json"), &json);
    }

    #[test]
    fn kubernetes_only_broker_fields_load_from_a_folder_and_leave_the_bundle_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        for entry in std::fs::read_dir(standalone_example()).expect("example folder") {
            let path = entry.expect("entry").path();
            let to = dir.path().join(path.file_name().expect("file name"));
            std::fs::copy(&path, to).expect("copy the example");
        }
        let broker = dir.path().join("broker.yaml");
        let yaml = std::fs::read_to_string(&broker).expect("broker.yaml");
        let persistence = "  persistence: {enabled: true}\n";
        assert!(yaml.contains(persistence));
        let k8s = r#"  persistence: {enabled: true, size: 2Gi, storageClassName: local-path}
  service:
    type: LoadBalancer
    externalTrafficPolicy: Local
    nodePorts: {lan: 31883}
    annotations: {example.com/lb: "yes"}
    labels: {team: iot}
  pod:
    image: registry.example.com/edgemq:1.0
    imagePullPolicy: IfNotPresent
    resources:
      requests: {cpu: 50m, memory: 64Mi}
      limits: {memory: 256Mi}
    nodeSelector: {kubernetes.io/hostname: pi}
    tolerations: [{key: edge, operator: Exists, effect: NoSchedule}]
    affinity:
      nodeAffinity:
        requiredDuringSchedulingIgnoredDuringExecution:
          nodeSelectorTerms:
            - matchExpressions: [{key: kubernetes.io/arch, operator: In, values: [arm64]}]
    annotations: {example.com/scrape: "true"}
    labels: {team: iot}
    priorityClassName: edge-critical
    terminationGracePeriodSeconds: 60
"#;
        std::fs::write(&broker, yaml.replace(persistence, k8s)).expect("write broker.yaml");
        let res = crate::load::load(dir.path(), None).unwrap_or_else(|e| panic!("{e}"));
        let spec = &res.brokers().next().expect("the Broker").object.spec;
        assert_eq!(
            spec.service.type_,
            crate::api::broker::ServiceType::LoadBalancer
        );
        assert_eq!(spec.service.node_ports["lan"], 31883);
        assert_eq!(spec.pod.termination_grace_period_seconds, Some(60));
        assert_eq!(spec.pod.tolerations.len(), 1);
        let with = plan(&res).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            with["default/home"].hash(),
            example_bundles()["default/home"].hash()
        );
    }

    #[test]
    fn the_same_input_gives_byte_identical_bundles() {
        let a = serde_json::to_vec(&example_bundles()).expect("json");
        let b = serde_json::to_vec(&example_bundles()).expect("json");
        assert_eq!(a, b);
        let h: Vec<String> = example_bundles().values().map(BrokerBundle::hash).collect();
        assert_eq!(
            h,
            example_bundles()
                .values()
                .map(BrokerBundle::hash)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn listeners_are_sorted_and_bound_to_every_interface_by_default() {
        let b = &example_bundles()["default/home"];
        let names: Vec<&str> = b.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["lan", "tls", "ws"]);
        assert_eq!(b.listeners[0].bind, "0.0.0.0:1883");
        assert_eq!(
            b.listeners[1].tls,
            Some(TlsSource::Certificate("home-tls".into()))
        );
        assert_eq!(bind(Some("::1"), 1883), "[::1]:1883");
    }

    #[test]
    fn a_password_from_a_secret_is_hashed_verifiably_and_changes_only_with_the_password() {
        let h1 = hash_secret_password("default/home", "ha", b"pw1");
        assert_eq!(h1, hash_secret_password("default/home", "ha", b"pw1"));
        assert_ne!(h1, hash_secret_password("default/home", "ha", b"pw2"));
        assert_ne!(h1, hash_secret_password("default/home", "other", b"pw1"));
        let parsed = PasswordHash::parse(&h1).expect("a valid $7$ hash");
        assert!(parsed.verify(b"pw1"));
        assert!(!parsed.verify(b"pw2"));
        let b = &example_bundles()["default/home"];
        let ha = PasswordHash::parse(&b.users["homeassistant"].password_hash).expect("hash");
        assert!(ha.verify(b"change-me-please"));
    }

    #[test]
    fn the_acl_plan_takes_user_rules_and_patterns() {
        let b = &example_bundles()["default/home"];
        assert!(b.acl.enabled);
        assert!(b.acl.anonymous.is_empty());
        assert_eq!(b.acl.patterns[0].topic, "devices/%u/#");
        assert_eq!(b.acl.users["zigbee2mqtt"].len(), 2);
        assert!(b.persistence);
    }

    fn bridge_example() -> BTreeMap<String, BrokerBundle> {
        let dir = standalone_example().join("..");
        let res = crate::load::load(&dir.join("bridges"), Some(&dir.join("bridges-secrets")))
            .unwrap_or_else(|e| panic!("{e}"));
        plan(&res).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_bridge_example_plans_as_the_golden_bundle_without_secret_values() {
        let bundles = bridge_example();
        let json = serde_json::to_string_pretty(&bundles).expect("bundles are JSON") + "\n";
        assert!(
            !json.contains("change-me"),
            "secret values stay out of the bundle"
        );
        assert_golden(&fixture("golden").join("bridges-example.json"), &json);
    }

    #[test]
    fn an_aws_iot_bridge_defaults_to_the_thing_name_and_the_endpoint_port() {
        let b = &bridge_example()["default/home"].bridges["to-aws"];
        assert_eq!(b.client_id, "home-bridge");
        assert_eq!(
            b.address,
            RemoteAddress::AwsIotEndpoint {
                certificate: "aws-iot-home".into(),
                port: 8883
            }
        );
        let tls = b.tls.as_ref().expect("AWS IoT Core is always TLS");
        assert_eq!(tls.ca, CaSource::System);
        assert_eq!(
            tls.client,
            Some(TlsSource::Certificate("aws-iot-home".into()))
        );
        let other = &bridge_example()["default/home"].bridges["to-server"];
        assert_eq!(other.client_id, "site-a");
    }

    #[test]
    fn topic_rules_map_prefixes_like_mosquitto_and_only_in_their_direction() {
        let rule = |direction, local: &str, remote: &str| TopicRule {
            direction,
            qos: 1,
            local_filter: format!("{local}sensors/#"),
            remote_filter: format!("{remote}sensors/#"),
            local_prefix: local.into(),
            remote_prefix: remote.into(),
        };
        let out = rule(BridgeDirection::Out, "", "home/");
        assert_eq!(
            out.to_remote("sensors/a/b").as_deref(),
            Some("home/sensors/a/b")
        );
        assert_eq!(out.to_remote("other/a"), None);
        assert_eq!(
            out.to_local("home/sensors/a"),
            None,
            "out rules never bring messages in"
        );
        let inbound = rule(BridgeDirection::In, "site/", "cloud/");
        assert_eq!(
            inbound.to_local("cloud/sensors/x").as_deref(),
            Some("site/sensors/x")
        );
        assert_eq!(inbound.to_remote("site/sensors/x"), None);
        let both = rule(BridgeDirection::Both, "", "");
        assert_eq!(both.to_remote("sensors/x").as_deref(), Some("sensors/x"));
        assert_eq!(both.to_local("sensors/x").as_deref(), Some("sensors/x"));
    }
}
