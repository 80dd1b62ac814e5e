//! Checks over loaded objects: what the CRD schema holds (so standalone users get the
//! same answers as `kubectl apply`), references between objects, and conflicts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::api::{AclRule, SecretKeyRef};
use crate::auth::passwd::PasswordHash;

use super::locate::Seg;

mod certificate;
mod formats;
use super::{Kind, LoadError, ObjectRef, Resources};
pub use formats::filter_error;
use formats::{bind_address, bind_ip, dns_label, dns_subdomain, host_port, loopback};

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
}

#[cfg(test)]
mod tests;
