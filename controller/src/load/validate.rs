//! Checks over loaded objects: what the CRD schema holds (so standalone users get the
//! same answers as `kubectl apply`), references between objects, and conflicts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::api::certificate::{
    AcmeIssuer, AwsIotIssuer, CertificateSpec, Dns01Solver, FleetProvisioning, KeyOrigin,
};
use crate::api::{AclRule, SecretKeyRef};
use crate::auth::passwd::PasswordHash;

use super::locate::Seg;

mod formats;
use super::{Kind, LoadError, ObjectRef, Resources};
pub use formats::filter_error;
use formats::{
    bind_address, bind_ip, dns_label, dns_subdomain, go_duration, host_port, loopback,
    nameserver_addr,
};

/// The namespace of objects whose manifest names none.
pub const DEFAULT_NAMESPACE: &str = "default";

type Broken = BTreeSet<(Kind, String, String)>;

/// Every mistake in `res`. References to objects in `broken` (declared, but refused
/// earlier) are not reported again.
pub(crate) fn validate(res: &Resources, broken: &Broken) -> Vec<LoadError> {
    let mut v = Validator {
        res,
        broken,
        errors: Vec::new(),
    };
    v.names();
    v.brokers();
    v.users();
    v.bridges();
    v.certificates();
    v.errors
}

/// Settings that load and run but almost certainly do not do what was meant. They do
/// not stop a folder from loading; `edgemq validate` prints them.
pub fn warnings(res: &Resources) -> Vec<LoadError> {
    let mut out = Vec::new();
    for b in res.brokers() {
        let spec = &b.object.spec;
        if spec.allow_anonymous && spec.acl_enabled && !anonymous_can_do_anything(spec) {
            out.push(b.error_at(
                &[Seg::Key("spec"), Seg::Key("allowAnonymous")],
                "anonymous clients may connect but can neither publish nor receive anything: \
                 aclEnabled is true and no anonymousAcl rule (nor an aclPatterns rule without \
                 `%u`) grants them a topic; add anonymousAcl rules, or set aclEnabled: false \
                 to let every client use every topic (Mosquitto without an acl_file)",
            ));
        }
    }
    out
}

/// Whether some rule could grant an anonymous client access: one of its own that is
/// not `deny`, or a pattern without `%u` (patterns with `%u` never match a client
/// without a username).
fn anonymous_can_do_anything(spec: &crate::api::BrokerSpec) -> bool {
    use crate::api::Access;
    spec.anonymous_acl.iter().any(|r| r.access != Access::Deny)
        || spec
            .acl_patterns
            .iter()
            .any(|r| r.access != Access::Deny && !r.topic.split('/').any(|l| l == "%u"))
}

/// Brokers of one folder run on one host: no two may bind the same port on
/// overlapping addresses.
pub(crate) fn shared_host_ports(res: &Resources) -> Vec<LoadError> {
    // port → (bound address, listener name, its Broker) of every listener seen so far
    type Bound<'a> = (Option<IpAddr>, String, &'a ObjectRef, usize);
    let mut seen: BTreeMap<u16, Vec<Bound<'_>>> = BTreeMap::new();
    let mut errors = Vec::new();
    // In file order, so the clash is reported on the listener that came second.
    let mut brokers: Vec<_> = res.brokers().collect();
    brokers.sort_by(|a, b| {
        (&a.location, &a.namespace, &a.name).cmp(&(&b.location, &b.namespace, &b.name))
    });
    for b in brokers {
        for (i, l) in b.object.spec.listeners.iter().enumerate() {
            let addr = bind_ip(l.bind_address.as_deref());
            let slot = seen.entry(l.port).or_default();
            let clash = slot.iter().find(|(a, _, other, _)| {
                other.namespace != b.namespace || other.name != b.name
            } && (a.is_none() || addr.is_none() || *a == addr));
            if let Some((_, lname, other, j)) = clash {
                errors.push(b.error_at(
                    &listener_path(i, "port"),
                    format!(
                        "port {} is also used by listener `{lname}` of {} ({})",
                        l.port,
                        other.display_name(),
                        other.origin()
                    ),
                ));
                // Both Brokers are in conflict: the one already running keeps its
                // last good version and a new one stays out.
                errors.push(other.error_at(
                    &listener_path(*j, "port"),
                    format!(
                        "port {} is also used by listener `{}` of {} ({})",
                        l.port,
                        l.name,
                        b.display_name(),
                        b.origin()
                    ),
                ));
            }
            slot.push((addr, l.name.clone(), &b.meta, i));
        }
    }
    errors
}

fn listener_path(i: usize, field: &str) -> [Seg<'_>; 4] {
    [
        Seg::Key("spec"),
        Seg::Key("listeners"),
        Seg::Index(i),
        Seg::Key(field),
    ]
}

/// The credential field a Bridge would send in plain text across the network, if it
/// would: a username or password, no `tls`, a remote address that is not loopback, and
/// no `insecurePlaintextCredentials`. (The AWS IoT endpoint is always TLS.)
fn plaintext_credentials(r: &crate::api::bridge::BridgeRemote) -> Option<&'static str> {
    if r.tls.is_some() || r.insecure_plaintext_credentials {
        return None;
    }
    let host = r.address.as_deref()?.rsplit_once(':')?.0;
    if loopback(host) {
        return None;
    }
    if r.password_secret_ref.is_some() {
        Some("passwordSecretRef")
    } else if r.username_secret_ref.is_some() {
        Some("usernameSecretRef")
    } else {
        None
    }
}

/// The last key of a field path, for messages (`value` when there is none).
fn field_name<'a>(path: &[Seg<'a>]) -> &'a str {
    match path.last() {
        Some(Seg::Key(k)) => k,
        _ => "value",
    }
}

struct Validator<'a> {
    res: &'a Resources,
    broken: &'a Broken,
    errors: Vec<LoadError>,
}

impl Validator<'_> {
    fn err(&mut self, obj: &ObjectRef, path: &[Seg<'_>], msg: impl Into<String>) {
        self.errors.push(obj.error_at(path, msg));
    }

    fn is_broken(&self, kind: Kind, ns: &str, name: &str) -> bool {
        self.broken
            .contains(&(kind, ns.to_string(), name.to_string()))
    }

    fn range(&mut self, obj: &ObjectRef, path: &[Seg<'_>], v: u64, min: u64, max: u64) {
        if v < min || v > max {
            let field = match path.last() {
                Some(Seg::Key(k)) => *k,
                _ => "value",
            };
            self.err(
                obj,
                path,
                format!("{field} {v} is out of range {min}..={max}"),
            );
        }
    }

    fn len(&mut self, obj: &ObjectRef, path: &[Seg<'_>], s: &str, min: usize, max: usize) {
        if s.len() < min || s.len() > max {
            let field = field_name(path);
            self.err(
                obj,
                path,
                format!("{field} must be {min} to {max} characters long"),
            );
        }
    }

    /// An http(s) URL (ACME directories, API endpoints).
    fn http_url(&mut self, obj: &ObjectRef, path: &[Seg<'_>], s: &str) {
        if !(s.starts_with("https://") || s.starts_with("http://")) {
            let field = field_name(path);
            self.err(obj, path, format!("{field} `{s}` is not an http(s) URL"));
        }
    }

    fn names(&mut self) {
        let res = self.res;
        let metas: Vec<&ObjectRef> = res
            .brokers()
            .map(|o| &o.meta)
            .chain(res.users().map(|o| &o.meta))
            .chain(res.bridges().map(|o| &o.meta))
            .chain(res.certificates().map(|o| &o.meta))
            .chain(res.secrets().map(|o| &o.meta))
            .collect();
        for m in metas {
            if !dns_subdomain(&m.name) {
                self.err(
                    m,
                    &[Seg::Key("metadata"), Seg::Key("name")],
                    format!(
                        "invalid name `{}`: lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit",
                        m.name
                    ),
                );
            }
            if !dns_label(&m.namespace, 63) {
                self.err(
                    m,
                    &[Seg::Key("metadata"), Seg::Key("namespace")],
                    format!("invalid namespace `{}`", m.namespace),
                );
            }
        }
    }

    fn acl(&mut self, obj: &ObjectRef, field: &str, rules: &[AclRule], patterns: bool) {
        for (i, r) in rules.iter().enumerate() {
            if let Some(e) = filter_error(&r.topic, patterns) {
                self.err(
                    obj,
                    &[
                        Seg::Key("spec"),
                        Seg::Key(field),
                        Seg::Index(i),
                        Seg::Key("topic"),
                    ],
                    e,
                );
            }
        }
    }

    /// A Secret and key in the object's namespace.
    fn secret_key_ref(&mut self, obj: &ObjectRef, path: &[Seg<'_>], r: &SecretKeyRef) {
        let mut name_path = path.to_vec();
        name_path.push(Seg::Key("name"));
        let mut key_path = path.to_vec();
        key_path.push(Seg::Key("key"));
        self.len(obj, &name_path, &r.name, 1, 253);
        self.len(obj, &key_path, &r.key, 1, 253);
        if self.is_broken(Kind::Secret, &obj.namespace, &r.name) {
            return;
        }
        if self.res.secret(&obj.namespace, &r.name).is_none() {
            self.err(
                obj,
                &name_path,
                format!(
                    "Secret `{}` not found in namespace `{}`",
                    r.name, obj.namespace
                ),
            );
        } else if self
            .res
            .secret_value(&obj.namespace, &r.name, &r.key)
            .is_none()
        {
            self.err(
                obj,
                &key_path,
                format!("Secret `{}` has no key `{}`", r.name, r.key),
            );
        }
    }

    /// A `kubernetes.io/tls` Secret with `tls.crt` and `tls.key`.
    fn tls_secret_ref(&mut self, obj: &ObjectRef, path: &[Seg<'_>], name: &str) {
        if self.is_broken(Kind::Secret, &obj.namespace, name) {
            return;
        }
        if self.res.secret(&obj.namespace, name).is_none() {
            self.err(
                obj,
                path,
                format!("Secret `{name}` not found in namespace `{}`", obj.namespace),
            );
            return;
        }
        for k in ["tls.crt", "tls.key"] {
            if self.res.secret_value(&obj.namespace, name, k).is_none() {
                self.err(obj, path, format!("Secret `{name}` has no key `{k}`"));
            }
        }
    }

    fn certificate_ref(&mut self, obj: &ObjectRef, path: &[Seg<'_>], name: &str) {
        if !self.is_broken(Kind::Certificate, &obj.namespace, name)
            && self.res.certificate(&obj.namespace, name).is_none()
        {
            self.err(
                obj,
                path,
                format!(
                    "Certificate `{name}` not found in namespace `{}`",
                    obj.namespace
                ),
            );
        }
    }

    fn broker_ref(&mut self, obj: &ObjectRef, name: &str) {
        let path = [Seg::Key("spec"), Seg::Key("brokerRef")];
        self.len(obj, &path, name, 1, 253);
        if !name.is_empty()
            && !self.is_broken(Kind::Broker, &obj.namespace, name)
            && self.res.broker(&obj.namespace, name).is_none()
        {
            self.err(
                obj,
                &path,
                format!("Broker `{name}` not found in namespace `{}`", obj.namespace),
            );
        }
    }

    fn brokers(&mut self) {
        let res = self.res;
        for b in res.brokers() {
            let spec = &b.object.spec;
            let n = spec.listeners.len();
            if !(1..=32).contains(&n) {
                self.err(
                    b,
                    &[Seg::Key("spec"), Seg::Key("listeners")],
                    format!("a Broker needs 1 to 32 listeners, found {n}"),
                );
            }
            let mut names: BTreeMap<&str, usize> = BTreeMap::new();
            let mut ports: BTreeMap<u16, &str> = BTreeMap::new();
            for (i, l) in spec.listeners.iter().enumerate() {
                if !dns_label(&l.name, 63) {
                    self.err(b, &listener_path(i, "name"), format!("invalid listener name `{}`: lowercase letters, digits and `-`, at most 63", l.name));
                }
                if names.insert(&l.name, i).is_some() {
                    self.err(
                        b,
                        &listener_path(i, "name"),
                        format!("two listeners are named `{}`", l.name),
                    );
                }
                if l.port == 0 {
                    self.err(
                        b,
                        &listener_path(i, "port"),
                        "port 0 is out of range 1..=65535",
                    );
                } else if let Some(other) = ports.insert(l.port, &l.name) {
                    self.err(
                        b,
                        &listener_path(i, "port"),
                        format!("port {} is already used by listener `{other}`", l.port),
                    );
                }
                if let Some(a) = &l.bind_address {
                    if !bind_address(a) {
                        self.err(
                            b,
                            &listener_path(i, "bindAddress"),
                            format!("bindAddress `{a}` is not an IP address or host name"),
                        );
                    }
                }
                if let Some(tls) = &l.tls {
                    let tls_path = |f| {
                        [
                            Seg::Key("spec"),
                            Seg::Key("listeners"),
                            Seg::Index(i),
                            Seg::Key("tls"),
                            Seg::Key(f),
                        ]
                    };
                    match (&tls.certificate_ref, &tls.secret_ref) {
                        (Some(c), None) => self.certificate_ref(b, &tls_path("certificateRef"), c),
                        (None, Some(s)) => self.tls_secret_ref(b, &tls_path("secretRef"), s),
                        _ => self.err(
                            b,
                            &listener_path(i, "tls"),
                            "set exactly one of certificateRef and secretRef",
                        ),
                    }
                    if let Some(ca) = &tls.client_auth {
                        let cp = |f| {
                            [
                                Seg::Key("spec"),
                                Seg::Key("listeners"),
                                Seg::Index(i),
                                Seg::Key("tls"),
                                Seg::Key("clientAuth"),
                                Seg::Key(f),
                            ]
                        };
                        match (&ca.ca_certificate_ref, &ca.ca_secret_ref) {
                            (Some(c), None) => self.certificate_ref(b, &cp("caCertificateRef"), c),
                            (None, Some(s)) => self.secret_key_ref(b, &cp("caSecretRef"), s),
                            _ => self.err(
                                b,
                                &tls_path("clientAuth"),
                                "set exactly one of caCertificateRef and caSecretRef",
                            ),
                        }
                        if let Some(s) = &ca.crl_secret_ref {
                            self.secret_key_ref(b, &cp("crlSecretRef"), s);
                        }
                    }
                }
            }
            self.acl(b, "anonymousAcl", &spec.anonymous_acl, false);
            self.acl(b, "aclPatterns", &spec.acl_patterns, true);
            if let Some(pattern) = &spec.client_id_pattern {
                if let Err(e) = crate::auth::client_id::ClientIdPattern::parse(pattern) {
                    self.err(
                        b,
                        &[Seg::Key("spec"), Seg::Key("clientIdPattern")],
                        e.to_string(),
                    );
                }
            }
            let lim = &spec.limits;
            let p = |f| [Seg::Key("spec"), Seg::Key("limits"), Seg::Key(f)];
            self.range(
                b,
                &p("maxConnections"),
                lim.max_connections.into(),
                1,
                1_000_000,
            );
            self.range(
                b,
                &p("maxPayloadBytes"),
                lim.max_payload_bytes.into(),
                1,
                268_435_455,
            );
            self.range(b, &p("maxInflight"), lim.max_inflight.into(), 1, 65535);
            self.range(
                b,
                &p("maxQueuedMessages"),
                lim.max_queued_messages.into(),
                1,
                1_000_000,
            );
            self.range(
                b,
                &p("handshakeTimeoutSeconds"),
                lim.handshake_timeout_seconds.into(),
                1,
                300,
            );
            self.range(
                b,
                &p("maxRetainedMessages"),
                lim.max_retained_messages.into(),
                0,
                10_000_000,
            );
            for (field, v, min, max) in [
                ("maxRetainedBytes", lim.max_retained_bytes, 0, 1 << 40),
                (
                    "maxConnectBytes",
                    lim.max_connect_bytes.into(),
                    256,
                    268_435_455,
                ),
                ("maxHandshakes", lim.max_handshakes.into(), 1, 1_000_000),
                (
                    "maxHandshakesPerAddress",
                    lim.max_handshakes_per_address.into(),
                    1,
                    1_000_000,
                ),
                ("maxSessions", lim.max_sessions.into(), 1, 10_000_000),
                (
                    "maxSubscriptionsPerClient",
                    lim.max_subscriptions_per_client.into(),
                    1,
                    10_000_000,
                ),
                ("maxQueuedBytes", lim.max_queued_bytes, 1024, 1 << 40),
                (
                    "shutdownDisconnectRate",
                    lim.shutdown_disconnect_rate.into(),
                    1,
                    1_000_000,
                ),
            ] {
                self.range(b, &p(field), v, min, max);
            }
            self.range(
                b,
                &p("sysIntervalSeconds"),
                lim.sys_interval_seconds.into(),
                0,
                86_400,
            );
        }
    }

    fn users(&mut self) {
        let res = self.res;
        // (namespace, broker, username) → the first user claiming it
        let mut usernames: BTreeMap<(String, String, String), &ObjectRef> = BTreeMap::new();
        for u in res.users() {
            let spec = &u.object.spec;
            self.broker_ref(u, &spec.broker_ref);
            let username = u.object.username();
            let upath = [Seg::Key("spec"), Seg::Key("username")];
            let upath: &[Seg] = if spec.username.is_some() {
                &upath
            } else {
                &[Seg::Key("metadata"), Seg::Key("name")]
            };
            if username.is_empty()
                || username.len() > 65535
                || username.contains(['+', '#', ':'])
                || username.chars().any(char::is_control)
            {
                self.err(u, upath, format!("invalid username {username:?}: must be non-empty, without `+`, `#`, `:` or control characters"));
            }
            let k = (
                u.namespace.clone(),
                spec.broker_ref.clone(),
                username.clone(),
            );
            if let Some(first) = usernames.get(&k).copied() {
                let msg = format!(
                    "username `{username}` is already used on Broker `{}` by {} ({})",
                    spec.broker_ref,
                    first.display_name(),
                    first.origin()
                );
                self.err(u, upath, msg);
                // Both claimants are in conflict: which one is new cannot be told from
                // here, and a newcomer must never take over a username that works.
                if let Some(f) = res.user(&first.namespace, &first.name) {
                    let fpath = [Seg::Key("spec"), Seg::Key("username")];
                    let fpath: &[Seg] = if f.object.spec.username.is_some() {
                        &fpath
                    } else {
                        &[Seg::Key("metadata"), Seg::Key("name")]
                    };
                    let msg = format!(
                        "username `{username}` is also claimed on Broker `{}` by {} ({})",
                        spec.broker_ref,
                        u.display_name(),
                        u.origin()
                    );
                    self.err(first, fpath, msg);
                }
            } else {
                usernames.insert(k, &u.meta);
            }
            match (
                &spec.password_secret_ref,
                &spec.password_hash,
                &spec.certificate_identity,
            ) {
                (Some(r), None, None) => {
                    self.secret_key_ref(u, &[Seg::Key("spec"), Seg::Key("passwordSecretRef")], r)
                }
                (None, None, Some(id)) => {
                    if spec.username.as_ref().is_some_and(|n| n != id) {
                        self.err(
                            u,
                            &[Seg::Key("spec"), Seg::Key("username")],
                            format!("a certificate user's username is its certificateIdentity `{id}`; leave username out"),
                        );
                    }
                }
                (None, Some(h), None) => {
                    if let Err(e) = PasswordHash::parse(h) {
                        self.err(
                            u,
                            &[Seg::Key("spec"), Seg::Key("passwordHash")],
                            e.to_string(),
                        );
                    }
                }
                _ => self.err(
                    u,
                    &[Seg::Key("spec")],
                    "set exactly one of passwordSecretRef, passwordHash and certificateIdentity",
                ),
            }
            self.acl(u, "acl", &spec.acl, false);
        }
    }

    fn bridges(&mut self) {
        let res = self.res;
        for br in res.bridges() {
            let spec = &br.object.spec;
            self.broker_ref(br, &spec.broker_ref);
            let r = &spec.remote;
            let rp = |f| [Seg::Key("spec"), Seg::Key("remote"), Seg::Key(f)];
            match (&r.address, &r.aws_iot_endpoint) {
                (Some(a), None) => {
                    if !host_port(a) {
                        self.err(
                            br,
                            &rp("address"),
                            format!("address `{a}` must be host:port"),
                        );
                    }
                }
                (None, Some(e)) => {
                    let path = [
                        Seg::Key("spec"),
                        Seg::Key("remote"),
                        Seg::Key("awsIotEndpoint"),
                        Seg::Key("certificateRef"),
                    ];
                    self.certificate_ref(br, &path, &e.certificate_ref);
                    let is_aws = res
                        .certificate(&br.meta.namespace, &e.certificate_ref)
                        .is_none_or(|c| c.spec.issuer.aws_iot.is_some());
                    if !is_aws {
                        self.err(
                            br,
                            &path,
                            format!(
                                "Certificate {} does not use the awsIot issuer, so it has no AWS IoT endpoint",
                                e.certificate_ref
                            ),
                        );
                    }
                }
                _ => self.err(
                    br,
                    &[Seg::Key("spec"), Seg::Key("remote")],
                    "set exactly one of address and awsIotEndpoint",
                ),
            }
            if let Some(id) = &r.client_id {
                self.len(br, &rp("clientId"), id, 1, 128);
            }
            self.range(
                br,
                &rp("keepAliveSeconds"),
                r.keep_alive_seconds.into(),
                5,
                65535,
            );
            if let Some(s) = &r.username_secret_ref {
                self.secret_key_ref(br, &rp("usernameSecretRef"), s);
            }
            if let Some(s) = &r.password_secret_ref {
                self.secret_key_ref(br, &rp("passwordSecretRef"), s);
            }
            if let Some(field) = plaintext_credentials(r) {
                self.err(
                    br,
                    &rp(field),
                    format!(
                        "{field} would go in plain text to {}: add tls, or set insecurePlaintextCredentials: true to send it unencrypted anyway",
                        r.address.as_deref().unwrap_or_default()
                    ),
                );
            }
            if let Some(tls) = &r.tls {
                let tp = |f| {
                    [
                        Seg::Key("spec"),
                        Seg::Key("remote"),
                        Seg::Key("tls"),
                        Seg::Key(f),
                    ]
                };
                if tls.ca_certificate_ref.is_some() && tls.ca_secret_ref.is_some() {
                    self.err(
                        br,
                        &rp("tls"),
                        "set at most one of caCertificateRef and caSecretRef",
                    );
                }
                if tls.client_certificate_ref.is_some() && tls.client_secret_ref.is_some() {
                    self.err(
                        br,
                        &rp("tls"),
                        "set at most one of clientCertificateRef and clientSecretRef",
                    );
                }
                if let Some(c) = &tls.ca_certificate_ref {
                    self.certificate_ref(br, &tp("caCertificateRef"), c);
                }
                if let Some(s) = &tls.ca_secret_ref {
                    self.secret_key_ref(br, &tp("caSecretRef"), s);
                }
                if let Some(c) = &tls.client_certificate_ref {
                    self.certificate_ref(br, &tp("clientCertificateRef"), c);
                }
                if let Some(s) = &tls.client_secret_ref {
                    self.tls_secret_ref(br, &tp("clientSecretRef"), s);
                }
            }
            let n = spec.topics.len();
            if !(1..=256).contains(&n) {
                self.err(
                    br,
                    &[Seg::Key("spec"), Seg::Key("topics")],
                    format!("a Bridge needs 1 to 256 topic rules, found {n}"),
                );
            }
            for (i, t) in spec.topics.iter().enumerate() {
                let tp = |f| {
                    [
                        Seg::Key("spec"),
                        Seg::Key("topics"),
                        Seg::Index(i),
                        Seg::Key(f),
                    ]
                };
                if let Some(e) = filter_error(&t.pattern, false) {
                    self.err(br, &tp("pattern"), e);
                }
                for (field, prefix) in [
                    ("localPrefix", &t.local_prefix),
                    ("remotePrefix", &t.remote_prefix),
                ] {
                    if prefix.contains(['+', '#', '\0']) {
                        self.err(
                            br,
                            &tp(field),
                            format!("{field} `{prefix}` must not contain wildcards (+, #)"),
                        );
                    }
                }
                self.range(br, &tp("qos"), t.qos.into(), 0, 2);
            }
            let qp = |f| [Seg::Key("spec"), Seg::Key("queue"), Seg::Key(f)];
            self.range(
                br,
                &qp("maxMessages"),
                spec.queue.max_messages,
                1,
                100_000_000,
            );
            self.range(br, &qp("maxBytes"), spec.queue.max_bytes, 1024, u64::MAX);
        }
    }

    /// The ACME parts CEL checks in a cluster: names, exactly one solver, exactly one
    /// DNS provider, and the Secrets they read.
    fn acme(&mut self, c: &ObjectRef, acme: &AcmeIssuer, spec: &CertificateSpec) {
        let ap = |f| {
            [
                Seg::Key("spec"),
                Seg::Key("issuer"),
                Seg::Key("acme"),
                Seg::Key(f),
            ]
        };
        if spec.dns_names.is_empty() {
            self.err(
                c,
                &[Seg::Key("spec"), Seg::Key("dnsNames")],
                "an acme Certificate needs at least one DNS name",
            );
        }
        if !spec.ip_addresses.is_empty() {
            self.err(
                c,
                &[Seg::Key("spec"), Seg::Key("ipAddresses")],
                "the acme issuer does not issue certificates for IP addresses; use dnsNames",
            );
        }
        if let Some(r) = &acme.ca_bundle_secret_ref {
            self.secret_key_ref(c, &ap("caBundleSecretRef"), r);
        }
        let solver = &acme.solver;
        let sp = |f| {
            [
                Seg::Key("spec"),
                Seg::Key("issuer"),
                Seg::Key("acme"),
                Seg::Key("solver"),
                Seg::Key(f),
            ]
        };
        if solver.dns01.is_some() == solver.http01.is_some() {
            self.err(c, &ap("solver"), "set exactly one of dns01 and http01");
        }
        if let Some(h) = &solver.http01 {
            if h.port == Some(0) {
                self.err(c, &sp("http01"), "port 0 is out of range 1..=65535");
            }
            if let Some(a) = &h.bind_address {
                if a.parse::<IpAddr>().is_err() {
                    self.err(
                        c,
                        &sp("http01"),
                        format!("bindAddress `{a}` is not an IP address"),
                    );
                }
            }
        }
        if let Some(d) = &solver.dns01 {
            let set = [
                d.rfc2136.is_some(),
                d.cloudflare.is_some(),
                d.route53.is_some(),
                d.exec.is_some(),
            ];
            if set.iter().filter(|x| **x).count() != 1 {
                self.err(
                    c,
                    &sp("dns01"),
                    "set exactly one DNS provider: rfc2136, cloudflare, route53 or exec",
                );
            }
        }
    }

    fn certificates(&mut self) {
        let res = self.res;
        for c in res.certificates() {
            let spec = &c.object.spec;
            let sp = |f| [Seg::Key("spec"), Seg::Key(f)];
            if let Some(s) = &spec.secret_name {
                if !dns_subdomain(s) {
                    self.err(c, &sp("secretName"), format!("invalid secretName `{s}`"));
                }
            }
            for (field, v) in [
                ("duration", &spec.duration),
                ("renewBefore", &spec.renew_before),
            ] {
                if let Some(d) = v {
                    if !go_duration(d) {
                        self.err(
                            c,
                            &sp(field),
                            format!("{field} `{d}` is not a duration such as `2160h` or `1h30m`"),
                        );
                    }
                }
            }
            for (i, ip) in spec.ip_addresses.iter().enumerate() {
                if ip.parse::<IpAddr>().is_err() {
                    self.err(
                        c,
                        &[Seg::Key("spec"), Seg::Key("ipAddresses"), Seg::Index(i)],
                        format!("`{ip}` is not an IP address"),
                    );
                }
            }
            let is = &spec.issuer;
            let set = [
                is.self_signed.is_some(),
                is.ca.is_some(),
                is.acme.is_some(),
                is.aws_iot.is_some(),
            ];
            if set.iter().filter(|x| **x).count() != 1 {
                self.err(
                    c,
                    &sp("issuer"),
                    "set exactly one issuer: selfSigned, ca, acme or awsIot",
                );
            }
            if let Some(ca) = &is.ca {
                let path = [
                    Seg::Key("spec"),
                    Seg::Key("issuer"),
                    Seg::Key("ca"),
                    Seg::Key("secretRef"),
                ];
                self.len(c, &path, &ca.secret_ref, 1, 253);
                if !ca.secret_ref.is_empty() {
                    self.tls_secret_ref(c, &path, &ca.secret_ref);
                }
            }
            if let Some(acme) = &is.acme {
                self.http_url(
                    c,
                    &[
                        Seg::Key("spec"),
                        Seg::Key("issuer"),
                        Seg::Key("acme"),
                        Seg::Key("server"),
                    ],
                    &acme.server,
                );
                if let Some(d) = &acme.solver.dns01 {
                    self.dns01_provider(c, d);
                }
                if let Some(eab) = &acme.external_account_binding {
                    let path = [
                        Seg::Key("spec"),
                        Seg::Key("issuer"),
                        Seg::Key("acme"),
                        Seg::Key("externalAccountBinding"),
                        Seg::Key("keySecretRef"),
                    ];
                    self.secret_key_ref(c, &path, &eab.key_secret_ref);
                }
                self.acme(c, acme, spec);
            }
            if let Some(aws) = &is.aws_iot {
                self.aws_iot(c, aws);
            }
        }
    }

    fn aws_iot(&mut self, c: &ObjectRef, aws: &AwsIotIssuer) {
        let p = |f| {
            [
                Seg::Key("spec"),
                Seg::Key("issuer"),
                Seg::Key("awsIot"),
                Seg::Key(f),
            ]
        };
        let name_chars = |s: &str, extra: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || extra.contains(ch))
        };
        for (field, v, extra) in [
            (
                "thingName",
                Some(&aws.thing_name).filter(|t| !t.is_empty()),
                ":_-",
            ),
            ("thingTypeName", aws.thing_type_name.as_ref(), ":_-"),
            ("thingGroupName", aws.thing_group_name.as_ref(), ":_-"),
            ("policyName", aws.policy_name.as_ref(), "_+=,.@-"),
        ] {
            let Some(v) = v else { continue };
            self.len(c, &p(field), v, 1, 128);
            if !v.is_empty() && !name_chars(v, extra) {
                self.err(
                    c,
                    &p(field),
                    format!(
                        "{field} `{v}` may only hold letters, digits and `{extra}`, as AWS IoT requires"
                    ),
                );
            }
        }
        if let Some(r) = &aws.region {
            if !name_chars(r, "-") {
                self.err(
                    c,
                    &p("region"),
                    format!("region `{r}` is not an AWS region such as `eu-west-1`"),
                );
            }
        }
        if let Some(u) = &aws.endpoint_url {
            self.http_url(c, &p("endpointUrl"), u);
        }
        if let Some(name) = &aws.credentials_secret_ref {
            let path = p("credentialsSecretRef");
            self.len(c, &path, name, 1, 253);
            if !self.is_broken(Kind::Secret, &c.namespace, name) {
                if self.res.secret(&c.namespace, name).is_none() {
                    self.err(
                        c,
                        &path,
                        format!("Secret `{name}` not found in namespace `{}`", c.namespace),
                    );
                } else {
                    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
                        if self.res.secret_value(&c.namespace, name, key).is_none() {
                            self.err(c, &path, format!("Secret `{name}` has no key `{key}`"));
                        }
                    }
                }
            }
        }
        if let Some(e) = &aws.data_endpoint {
            let host = match e.rsplit_once(':') {
                Some((h, p)) if p.parse::<u16>().is_ok_and(|p| p > 0) => h,
                _ => e.as_str(),
            };
            if host.is_empty() || host.contains(['/', ' ', ':']) {
                self.err(
                    c,
                    &p("dataEndpoint"),
                    format!("dataEndpoint `{e}` must be a host or host:port"),
                );
            }
        }
        for (field, r) in [
            ("storeInSecret", &aws.store_in_secret),
            ("importFrom", &aws.import_from),
        ] {
            if let Some(r) = r {
                let mut path = p(field).to_vec();
                path.push(Seg::Key("secretId"));
                self.len(c, &path, &r.secret_id, 1, 2048);
            }
        }
        if aws.import_from.is_some() && aws.key_origin == Some(KeyOrigin::Aws) {
            self.err(
                c,
                &p("keyOrigin"),
                "importFrom takes the key from the secret; do not set keyOrigin: AWS",
            );
        }
        match &aws.fleet_provisioning {
            Some(fp) => self.fleet_provisioning(c, aws, fp),
            None if aws.thing_name.is_empty() => self.err(
                c,
                &p("thingName"),
                "set thingName, or fleetProvisioning (its template names the thing)",
            ),
            None => {}
        }
    }

    /// `awsIot.fleetProvisioning`: what it needs (`dataEndpoint`, one claim, parameters
    /// with one source each) and the `awsIot` fields that do not apply to it.
    fn fleet_provisioning(&mut self, c: &ObjectRef, aws: &AwsIotIssuer, fp: &FleetProvisioning) {
        let base = [Seg::Key("spec"), Seg::Key("issuer"), Seg::Key("awsIot")];
        let at = |rest: &[Seg<'static>]| -> Vec<Seg<'static>> {
            base.iter()
                .copied()
                .chain(std::iter::once(Seg::Key("fleetProvisioning")))
                .chain(rest.iter().copied())
                .collect()
        };
        let field = |f: &'static str| -> Vec<Seg<'static>> {
            base.iter()
                .copied()
                .chain(std::iter::once(Seg::Key(f)))
                .collect()
        };
        if !aws.thing_name.is_empty() {
            self.err(
                c,
                &field("thingName"),
                "set thingName, or fleetProvisioning (its template names the thing), not both",
            );
        }
        if aws.data_endpoint.is_none() {
            self.err(
                c,
                &field("dataEndpoint"),
                "fleetProvisioning needs dataEndpoint, the account's iot:Data-ATS endpoint (`aws iot describe-endpoint --endpoint-type iot:Data-ATS`)",
            );
        }
        for (name, set) in [
            ("region", aws.region.is_some()),
            ("endpointUrl", aws.endpoint_url.is_some()),
            ("importFrom", aws.import_from.is_some()),
            ("storeInSecret", aws.store_in_secret.is_some()),
        ] {
            if set {
                self.err(
                    c,
                    &field(name),
                    format!("{name} does not apply with fleetProvisioning (no AWS API is called)"),
                );
            }
        }
        let t = &fp.template_name;
        self.len(c, &at(&[Seg::Key("templateName")]), t, 1, 36);
        if !t
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "_-".contains(ch))
        {
            self.err(
                c,
                &at(&[Seg::Key("templateName")]),
                format!("templateName `{t}` may only hold letters, digits, `_` and `-`, as AWS IoT requires"),
            );
        }
        match (&fp.claim.secret_ref, &fp.claim.certificate_ref) {
            (Some(s), None) => {
                self.tls_secret_ref(c, &at(&[Seg::Key("claim"), Seg::Key("secretRef")]), s)
            }
            (None, Some(name)) => {
                let path = at(&[Seg::Key("claim"), Seg::Key("certificateRef")]);
                if *name == c.name {
                    self.err(
                        c,
                        &path,
                        "the claim cannot be the Certificate it provisions",
                    );
                } else {
                    self.certificate_ref(c, &path, name);
                }
            }
            _ => self.err(
                c,
                &at(&[Seg::Key("claim")]),
                "set exactly one of secretRef and certificateRef",
            ),
        }
        if let Some(r) = &fp.ca_secret_ref {
            self.secret_key_ref(c, &at(&[Seg::Key("caSecretRef")]), r);
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, prm) in fp.parameters.iter().enumerate() {
            let pp = |rest: &[Seg<'static>]| -> Vec<Seg<'static>> {
                let mut v = at(&[Seg::Key("parameters"), Seg::Index(i)]);
                v.extend_from_slice(rest);
                v
            };
            self.len(c, &pp(&[Seg::Key("name")]), &prm.name, 1, 128);
            if !seen.insert(prm.name.as_str()) {
                self.err(
                    c,
                    &pp(&[Seg::Key("name")]),
                    format!("parameter {} is given twice", prm.name),
                );
            }
            match (&prm.value, &prm.value_from) {
                (Some(_), None) => {}
                (None, Some(from)) => match (&from.hostname, &from.file) {
                    (Some(_), None) => {}
                    (None, Some(f)) => {
                        if !f.starts_with('/') {
                            self.err(
                                c,
                                &pp(&[Seg::Key("valueFrom"), Seg::Key("file")]),
                                format!("file `{f}` must be an absolute path"),
                            );
                        }
                    }
                    _ => self.err(
                        c,
                        &pp(&[Seg::Key("valueFrom")]),
                        "set exactly one of hostname and file",
                    ),
                },
                _ => self.err(c, &pp(&[]), "set exactly one of value and valueFrom"),
            }
        }
    }

    /// The settings and Secrets of the DNS-01 provider (`acme` checks that exactly one
    /// is set): what the CRD schema holds, for standalone mode, plus what a schema
    /// cannot see, such as a TSIG secret that is not base64.
    fn dns01_provider(&mut self, c: &ObjectRef, d: &Dns01Solver) {
        let dp = |rest: &[Seg<'static>]| -> Vec<Seg<'static>> {
            [
                Seg::Key("spec"),
                Seg::Key("issuer"),
                Seg::Key("acme"),
                Seg::Key("solver"),
                Seg::Key("dns01"),
            ]
            .into_iter()
            .chain(rest.iter().copied())
            .collect()
        };
        if let Some(p) = &d.rfc2136 {
            let r = |f: &'static str| dp(&[Seg::Key("rfc2136"), Seg::Key(f)]);
            if !nameserver_addr(&p.nameserver) {
                self.err(
                    c,
                    &r("nameserver"),
                    format!(
                        "nameserver `{}` is not host:port (for example 192.0.2.1:53)",
                        p.nameserver
                    ),
                );
            }
            if let Some(z) = &p.zone {
                if z.is_empty() || z.contains(char::is_whitespace) {
                    self.err(c, &r("zone"), format!("zone `{z}` is not a DNS name"));
                }
            }
            self.len(c, &r("tsigKeyName"), &p.tsig_key_name, 1, 253);
            self.secret_key_ref(c, &r("tsigSecretRef"), &p.tsig_secret_ref);
            let secret = &p.tsig_secret_ref;
            if let Some(v) = self
                .res
                .secret_value(&c.namespace, &secret.name, &secret.key)
            {
                use base64::Engine;
                let t = String::from_utf8_lossy(&v);
                let t = t.trim().trim_matches('"');
                let ok = !t.is_empty()
                    && (base64::engine::general_purpose::STANDARD.decode(t).is_ok()
                        || base64::engine::general_purpose::STANDARD_NO_PAD
                            .decode(t)
                            .is_ok());
                if !ok {
                    self.err(
                        c,
                        &r("tsigSecretRef"),
                        format!(
                            "Secret `{}` key `{}` is not base64; give the `secret` of the server's TSIG key file",
                            secret.name, secret.key
                        ),
                    );
                }
            }
        }
        if let Some(p) = &d.cloudflare {
            let r = |f: &'static str| dp(&[Seg::Key("cloudflare"), Seg::Key(f)]);
            self.secret_key_ref(c, &r("apiTokenSecretRef"), &p.api_token_secret_ref);
            if let Some(u) = &p.api_url {
                self.http_url(c, &r("apiUrl"), u);
            }
        }
        if let Some(p) = &d.route53 {
            let r = |f: &'static str| dp(&[Seg::Key("route53"), Seg::Key(f)]);
            match (&p.access_key_id_secret_ref, &p.secret_access_key_secret_ref) {
                (Some(id), Some(key)) => {
                    self.secret_key_ref(c, &r("accessKeyIdSecretRef"), id);
                    self.secret_key_ref(c, &r("secretAccessKeySecretRef"), key);
                }
                (None, None) => {}
                (Some(_), None) => self.err(
                    c,
                    &r("accessKeyIdSecretRef"),
                    "set secretAccessKeySecretRef too, or neither to use the AWS credential chain",
                ),
                (None, Some(_)) => self.err(
                    c,
                    &r("secretAccessKeySecretRef"),
                    "set accessKeyIdSecretRef too, or neither to use the AWS credential chain",
                ),
            }
            if let Some(u) = &p.endpoint_url {
                self.http_url(c, &r("endpointUrl"), u);
            }
        }
        if let Some(p) = &d.exec {
            let r = |f: &'static str| dp(&[Seg::Key("exec"), Seg::Key(f)]);
            if p.command.first().is_none_or(|c| c.is_empty()) {
                self.err(
                    c,
                    &r("command"),
                    "command must name a program (its arguments follow as list items)",
                );
            }
            if let Some(t) = p.timeout_seconds {
                self.range(c, &r("timeoutSeconds"), t.into(), 1, 3600);
            }
        }
        if let Some(p) = &d.propagation {
            let r = |f: &'static str| dp(&[Seg::Key("propagation"), Seg::Key(f)]);
            for (i, ns) in p.nameservers.iter().enumerate() {
                if !nameserver_addr(ns) {
                    let mut path = r("nameservers");
                    path.push(Seg::Index(i));
                    self.err(
                        c,
                        &path,
                        format!("nameserver `{ns}` is not host:port (for example 192.0.2.1:53)"),
                    );
                }
            }
            if let Some(t) = p.timeout_seconds {
                self.range(c, &r("timeoutSeconds"), t.into(), 1, 3600);
            }
        }
    }
}

#[cfg(test)]
mod tests;
