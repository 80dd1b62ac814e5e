//! Mosquitto directives → edgemq objects. Pure: the files the configuration names come
//! in as bytes ([`files_needed`] says which), and every setting that cannot be carried
//! over is returned as a [`Loss`] with its place.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;

use super::bridge;
use super::conf::{self, Directive, PlacedRule};
use super::objects::{
    loss, malformed, meta, object_name, pem, secret, Certbot, Imported, Input, Placed,
};
use crate::api::broker::{Limits, Listener, ListenerProtocol, ListenerTls, Persistence};
use crate::api::{AclRule, Broker, BrokerSpec, MqttUser, MqttUserSpec};
use crate::auth::passwd::PasswordHash;
use crate::import::{ImportError, Loss, Pos};

/// Options whose value is a file the import reads.
const FILE_OPTIONS: [&str; 7] = [
    "password_file",
    "acl_file",
    "certfile",
    "keyfile",
    "bridge_cafile",
    "bridge_certfile",
    "bridge_keyfile",
];

/// Files the directives name that the import reads, with the directive naming each.
pub fn files_needed(directives: &[Directive]) -> Vec<(PathBuf, Pos)> {
    directives
        .iter()
        .filter(|d| FILE_OPTIONS.contains(&d.key.as_str()) && !d.rest.is_empty())
        .map(|d| (conf::resolve(&d.rest, &d.pos), d.pos.clone()))
        .collect()
}

/// Options of one listener (before the first `listener`: of the default listener).
const LISTENER_OPTIONS: &[&str] = &[
    "protocol",
    "certfile",
    "keyfile",
    "cafile",
    "capath",
    "crlfile",
    "require_certificate",
    "use_identity_as_username",
    "use_subject_as_username",
    "use_username_as_clientid",
    "tls_version",
    "ciphers",
    "ciphers_tls1.3",
    "tls_engine",
    "tls_engine_kpass_sha1",
    "tls_keyform",
    "dhparamfile",
    "psk_hint",
    "http_dir",
    "mount_point",
    "max_connections",
    "socket_domain",
    "bind_interface",
    "max_qos",
    "max_topic_alias",
    "websockets_headers_size",
];

/// Options edgemq has no equivalent for, with the reason.
fn unsupported(key: &str) -> Option<&'static str> {
    Some(match key {
        "auth_plugin" | "plugin" | "global_plugin" => {
            "plugins do not exist in edgemq; users, passwords and ACLs are MqttUsers and the Broker's ACL settings"
        }
        k if k.starts_with("auth_opt_") || k.starts_with("plugin_opt_") => {
            "plugin options: plugins do not exist in edgemq"
        }
        "user" => "edgemq runs as the user that starts it (a systemd unit's User=, or the pod's securityContext)",
        "pid_file" => "edgemq writes no pid file",
        "log_dest" | "log_type" | "log_facility" | "log_timestamp" | "log_timestamp_format"
        | "connection_messages" | "websockets_log_level" => {
            "edgemq logs to standard error; the level is set with EDGEMQ_LOG and the format with --log-format"
        }
        "require_certificate" | "use_identity_as_username" | "use_subject_as_username" | "crlfile"
        | "capath" => "the import does not carry client certificate authentication yet; write the listener's tls.clientAuth by hand",
        "psk_hint" | "psk_file" => "TLS pre-shared keys are not supported",
        "tls_version" | "ciphers" | "ciphers_tls1.3" | "dhparamfile" | "tls_engine"
        | "tls_engine_kpass_sha1" | "tls_keyform" => {
            "edgemq chooses TLS versions and ciphers itself (TLS 1.2 and 1.3, modern suites)"
        }
        "http_dir" => "edgemq's WebSocket listeners serve no files",
        "mount_point" => "listener mount points are not supported",
        "bind_interface" => "binding to an interface by name is not supported; use the listener's address",
        "max_qos" => "a maximum QoS is not supported",
        "max_topic_alias" => "the topic alias maximum is not configurable",
        "use_username_as_clientid" => "replacing the client id with the username is not supported",
        "websockets_headers_size" => "the WebSocket header size is not configurable",
        "max_keepalive" => "a maximum keepalive is not configurable",
        "max_queued_bytes" => "queues are bounded by message count (max_queued_messages) only",
        "memory_limit" => "a process memory limit is not configurable",
        "allow_zero_length_clientid" | "auto_id_prefix" => {
            "client id assignment is not configurable"
        }
        "clientid_prefixes" => "client id prefixes are not supported; use ACL rules",
        "queue_qos0_messages" => "queuing QoS 0 messages for offline clients is not configurable",
        "upgrade_outgoing_qos" => "upgrading outgoing QoS is not supported",
        "check_retain_source" => "re-checking the ACL of retained messages' publishers is not supported",
        "set_tcp_nodelay" => "TCP_NODELAY is not configurable",
        "allow_duplicate_messages" => "not configurable",
        "retain_available" => "turning retained messages off is not supported",
        "autosave_interval" | "autosave_on_changes" => {
            "edgemq writes its store itself; the save schedule is not configurable"
        }
        "enable_control_api" | "accept_protocol_versions" | "enable_proxy_protocol" => {
            "not supported"
        }
        _ => return None,
    })
}

/// A Mosquitto boolean.
fn boolean(d: &Directive) -> Result<bool, ImportError> {
    match d.args.first().map(String::as_str) {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        _ => Err(malformed(d, "expects true or false")),
    }
}

/// A Mosquitto integer.
fn integer(d: &Directive) -> Result<i64, ImportError> {
    d.args
        .first()
        .and_then(|a| a.parse::<i64>().ok())
        .ok_or_else(|| malformed(d, "expects a number"))
}

fn text_file(input: &Input<'_>, d: &Directive) -> Result<(PathBuf, String), ImportError> {
    let path = conf::resolve(&d.rest, &d.pos);
    let data = input.files.get(&path).cloned().unwrap_or_default();
    let text = String::from_utf8(data).map_err(|_| ImportError::BadFile {
        file: path.clone(),
        by: Some(d.pos.clone()),
        message: "not UTF-8 text".into(),
    })?;
    Ok((path, text))
}

/// A listener as Mosquitto's directives build it.
#[derive(Default)]
struct RawListener {
    port: u16,
    bind: Option<String>,
    pos: Option<Pos>,
    protocol: ListenerProtocol,
    certfile: Option<Directive>,
    keyfile: Option<Directive>,
    cafile: Option<Directive>,
    max_connections: Option<i64>,
    ipv6: bool,
    /// Whether any directive touched it (for the default listener).
    used: bool,
}

/// Maps the directives onto edgemq objects.
pub fn map(input: &Input<'_>) -> Result<Imported, ImportError> {
    let mut m = Mapping::new(input);
    for d in input.directives {
        m.directive(d)?;
    }
    // Mosquitto 2.0 without a listener listens on localhost only.
    let local_only = m.listeners.is_empty() && !m.default.used;
    let (listeners, pairs) = m.listeners(local_only)?;
    let (mut secrets, certbot) = (pairs.secrets, pairs.certbot);
    if !m.payload_set {
        m.notes.push(Loss {
            pos: Pos { file: input.conf.to_owned(), line: 1 },
            what: "(no message_size_limit)".into(),
            reason: "Mosquitto accepts payloads up to 256 MiB; edgemq's default bound is 1 MiB (limits.maxPayloadBytes)".into(),
        });
    }
    if let Some(d) = m.per_listener {
        if listeners.len() > 1 {
            m.losses.push(loss(d, "edgemq's users, ACL and anonymous access are broker-wide: the per-listener settings are merged"));
        }
    }
    let allow_anonymous = m.allow_anonymous.as_ref().map_or(local_only, |a| a.0);
    let (mut users, usernames) = m.users()?;
    let (anonymous_acl, acl_patterns) = m.acl(allow_anonymous, &mut users, &usernames)?;
    let broker = Broker {
        metadata: meta(input.broker),
        spec: BrokerSpec {
            listeners,
            allow_anonymous,
            anonymous_acl,
            acl_patterns,
            acl_enabled: m.acl_file.is_some(),
            persistence: m.persistence.then(|| Persistence {
                enabled: true,
                ..Persistence::default()
            }),
            limits: m.limits.clone(),
            ..BrokerSpec::default()
        },
        status: None,
    };
    let (out_bridges, bridge_secrets) = m.bridges.finish(input, &mut m.losses, &mut m.notes)?;
    secrets.extend(bridge_secrets);
    m.losses.sort();
    Ok(Imported {
        broker: Placed {
            object: broker,
            origin: input.conf.display().to_string(),
        },
        users,
        bridges: out_bridges,
        secrets,
        losses: m.losses,
        notes: m.notes,
        certbot,
    })
}

/// The directives as read so far: broker-wide settings, the listeners as Mosquitto
/// builds them, the bridges, and what cannot be carried over (`losses`) or is carried
/// over differently (`notes`).
struct Mapping<'a> {
    input: &'a Input<'a>,
    losses: Vec<Loss>,
    notes: Vec<Loss>,
    default: RawListener,
    listeners: Vec<RawListener>,
    allow_anonymous: Option<(bool, Pos)>,
    per_listener: Option<&'a Directive>,
    password_file: Option<&'a Directive>,
    acl_file: Option<&'a Directive>,
    persistence: bool,
    limits: Limits,
    payload_set: bool,
    bridges: bridge::Bridges,
}

/// The key pairs the listeners name, each pair of files copied into one Secret, and
/// the certbot certificates among them.
#[derive(Default)]
struct KeyPairs {
    secrets: Vec<Placed<Secret>>,
    by_files: Vec<(PathBuf, PathBuf, String)>,
    certbot: Vec<Certbot>,
}

impl<'a> Mapping<'a> {
    fn new(input: &'a Input<'a>) -> Mapping<'a> {
        Mapping {
            input,
            losses: Vec::new(),
            notes: Vec::new(),
            default: RawListener {
                port: 1883,
                ..RawListener::default()
            },
            listeners: Vec::new(),
            allow_anonymous: None,
            per_listener: None,
            password_file: None,
            acl_file: None,
            persistence: false,
            // Mosquitto's default queue bound where edgemq's differs.
            limits: Limits {
                max_queued_messages: 1000,
                ..Limits::default()
            },
            payload_set: false,
            bridges: bridge::Bridges::default(),
        }
    }

    /// Reads one directive.
    fn directive(&mut self, d: &'a Directive) -> Result<(), ImportError> {
        let k = d.key.as_str();
        if bridge::is_bridge_option(k) {
            return self.bridges.directive(d);
        }
        if LISTENER_OPTIONS.contains(&k) {
            return self.listener_option(d);
        }

        match k {
            "listener" => {
                let port = d
                    .args
                    .first()
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(|| malformed(d, "expects a port number"))?;
                if port == 0 {
                    self.losses.push(loss(d, "listeners on Unix sockets are not supported"));
                }
                self.listeners.push(RawListener {
                    port,
                    bind: d.args.get(1).cloned(),
                    pos: Some(d.pos.clone()),
                    used: true,
                    ..RawListener::default()
                });
            }
            "port" => {
                self.default.port = d
                    .args
                    .first()
                    .and_then(|p| p.parse::<u16>().ok())
                    .filter(|p| *p > 0)
                    .ok_or_else(|| malformed(d, "expects a port number"))?;
                self.default.used = true;
                self.default.pos = Some(d.pos.clone());
            }
            "bind_address" => {
                self.default.bind = Some(d.rest.clone());
                self.default.used = true;
            }
            "per_listener_settings" => {
                if boolean(d)? {
                    self.per_listener = Some(d);
                }
            }
            "allow_anonymous" => {
                let v = boolean(d)?;
                if self.per_listener.is_some() && self.allow_anonymous.as_ref().is_some_and(|a| a.0 != v) {
                    self.losses.push(loss(d, "per-listener anonymous access: edgemq's is broker-wide (the last value is used)"));
                }
                self.allow_anonymous = Some((v, d.pos.clone()));
            }
            "password_file" | "acl_file" => {
                let slot = if k == "password_file" {
                    &mut self.password_file
                } else {
                    &mut self.acl_file
                };
                if let Some(prev) = slot {
                    self.losses.push(loss(
                        prev,
                        format!("replaced by the {k} at {} (edgemq has one per broker)", d.pos),
                    ));
                }
                *slot = Some(d);
            }
            "persistence" => self.persistence = boolean(d)?,
            "persistence_location" | "persistence_file" => self.notes.push(loss(
                d,
                "edgemq keeps its store in its state directory (--state); Mosquitto's database is not read",
            )),
            "max_inflight_messages" => {
                let n = integer(d)?;
                self.limits.max_inflight = if n <= 0 || n > 65535 {
                    self.notes.push(loss(d, "edgemq's most is 65535 messages in flight"));
                    65535
                } else {
                    n as u16
                };
            }
            "max_queued_messages" => {
                let n = integer(d)?;
                self.limits.max_queued_messages = if n <= 0 || n > 1_000_000 {
                    self.notes.push(loss(d, "edgemq always bounds the queue; 1000000 messages"));
                    1_000_000
                } else {
                    n as u32
                };
            }
            "message_size_limit" | "max_packet_size" => {
                let n = integer(d)?;
                if k == "max_packet_size" {
                    if self.payload_set {
                        return Ok(());
                    }
                    self.notes.push(loss(d, "edgemq bounds the payload, not the whole packet: maxPayloadBytes"));
                } else {
                    self.payload_set = true;
                }
                self.limits.max_payload_bytes = if n <= 0 || n > 268_435_455 {
                    268_435_455
                } else {
                    n as u32
                };
            }
            "sys_interval" => {
                let n = integer(d)?;
                self.limits.sys_interval_seconds = n.clamp(0, 86400) as u32;
                if n > 86400 {
                    self.losses.push(loss(d, "edgemq's longest $SYS interval is 86400 seconds"));
                }
            }
            "persistent_client_expiration" => match expiration(&d.rest) {
                Some(s) => self.limits.session_expiry_seconds = s,
                None => return Err(malformed(d, "expects a duration such as 2h, 14d, 1w, 1m or 1y")),
            },
            "retain_available" => {
                if !boolean(d)? {
                    self.losses.push(loss(d, unsupported(k).unwrap_or_default()));
                }
            }
            _ => match unsupported(k) {
                Some(reason) => self.losses.push(loss(d, reason)),
                None => self.losses.push(loss(d, "not a Mosquitto 2.0 option edgemq knows")),
            },
        }
        Ok(())
    }

    /// A directive of the listener being read (or of the default listener).
    fn listener_option(&mut self, d: &Directive) -> Result<(), ImportError> {
        let k = d.key.as_str();
        let l = self.listeners.last_mut().unwrap_or(&mut self.default);
        l.used = true;
        match k {
            "protocol" => {
                l.protocol = match d.args.first().map(String::as_str) {
                    Some("mqtt") => ListenerProtocol::Mqtt,
                    Some("websockets") => ListenerProtocol::Websockets,
                    _ => return Err(malformed(d, "expects mqtt or websockets")),
                }
            }
            "certfile" => l.certfile = Some(d.clone()),
            "keyfile" => l.keyfile = Some(d.clone()),
            "cafile" => l.cafile = Some(d.clone()),
            "max_connections" => l.max_connections = Some(integer(d)?),
            "socket_domain" => match d.args.first().map(String::as_str) {
                Some("ipv4") => {}
                Some("ipv6") => l.ipv6 = true,
                _ => return Err(malformed(d, "expects ipv4 or ipv6")),
            },
            "require_certificate" | "use_identity_as_username" | "use_subject_as_username" => {
                if boolean(d)? {
                    self.losses
                        .push(loss(d, unsupported(k).unwrap_or_default()));
                }
            }
            _ => self
                .losses
                .push(loss(d, unsupported(k).unwrap_or("not supported"))),
        }
        Ok(())
    }

    /// The Broker's listeners, with the key pairs they name copied into Secrets.
    fn listeners(&mut self, local_only: bool) -> Result<(Vec<Listener>, KeyPairs), ImportError> {
        let input = self.input;
        let mut listeners = std::mem::take(&mut self.listeners);
        let default = std::mem::take(&mut self.default);
        if default.used {
            listeners.insert(0, default);
        }
        let mut names = Vec::new();
        let mut out_listeners = Vec::new();
        let mut pairs = KeyPairs::default();
        let mut max_connections: Option<i64> = None;
        if local_only {
            out_listeners.push(Listener {
                name: "local".into(),
                port: 1883,
                bind_address: Some("127.0.0.1".into()),
                ..Listener::default()
            });
            self.notes.push(Loss {
                pos: Pos { file: input.conf.to_owned(), line: 1 },
                what: "(no listener)".into(),
                reason: "Mosquitto 2.0 then listens on localhost:1883 only (\"local only mode\"); so does the import".into(),
            });
        }
        for l in listeners {
            if l.port == 0 {
                continue;
            }
            let pos = l.pos.clone().unwrap_or(Pos {
                file: input.conf.to_owned(),
                line: 1,
            });
            if out_listeners.iter().any(|o: &Listener| o.port == l.port) {
                self.losses.push(Loss {
                    pos,
                    what: format!("listener {}", l.port),
                    reason: "a second listener on the same port (another address): edgemq has one listener per port".into(),
                });
                continue;
            }
            let tls = match (&l.certfile, &l.keyfile) {
                (None, None) => None,
                (Some(c), Some(k)) => Some(ListenerTls {
                    certificate_ref: None,
                    secret_ref: Some(self.key_pair(&mut pairs, c, k, l.port)?),
                    client_auth: None,
                }),
                (Some(d), None) | (None, Some(d)) => {
                    return Err(malformed(d, "certfile and keyfile must both be set"))
                }
            };
            if let (Some(ca), None) = (&l.cafile, &tls) {
                return Err(malformed(
                    ca,
                    "cafile on a listener without certfile and keyfile",
                ));
            }
            if let Some(ca) = &l.cafile {
                self.notes.push(loss(ca, "the listener's CA only verifies client certificates, which are not requested here; not carried over"));
            }
            if let Some(n) = l.max_connections.filter(|n| *n > 0) {
                max_connections = Some(max_connections.unwrap_or(0) + n);
            }
            let secure = tls.is_some();
            let kind = match (l.protocol, secure) {
                (ListenerProtocol::Mqtt, false) => "mqtt",
                (ListenerProtocol::Mqtt, true) => "mqtts",
                (ListenerProtocol::Websockets, false) => "ws",
                (ListenerProtocol::Websockets, true) => "wss",
            };
            let bind = match (l.bind, l.ipv6) {
                (Some(b), _) => Some(b),
                (None, true) => Some("::".to_owned()),
                (None, false) => None,
            };
            out_listeners.push(Listener {
                name: object_name(&format!("{kind}-{}", l.port), "listener", &mut names),
                port: l.port,
                bind_address: bind,
                protocol: l.protocol,
                tls,
            });
        }
        if let Some(n) = max_connections {
            self.limits.max_connections = n.clamp(1, 1_000_000) as u32;
        }
        Ok((out_listeners, pairs))
    }

    /// The Secret holding the key pair of files `c` and `k` (one Secret per pair of
    /// files, however many listeners serve it), for a listener on `port`.
    fn key_pair(
        &mut self,
        pairs: &mut KeyPairs,
        c: &Directive,
        k: &Directive,
        port: u16,
    ) -> Result<String, ImportError> {
        let input = self.input;
        let cpath = conf::resolve(&c.rest, &c.pos);
        let kpath = conf::resolve(&k.rest, &k.pos);
        let name = match pairs
            .by_files
            .iter()
            .find(|(a, b, _)| *a == cpath && *b == kpath)
        {
            Some((_, _, n)) => n.clone(),
            None => {
                let crt = pem(input, c, "CERTIFICATE-----")?;
                let key = pem(input, k, "PRIVATE KEY-----")?;
                let base = match certbot_name(&cpath) {
                    Some(domain) => {
                        let mut dns_names = super::acme::san_dns_names(&crt);
                        if dns_names.is_empty() {
                            dns_names.push(domain.clone());
                        }
                        self.notes.push(loss(c, format!(
                            "a certbot certificate: edgemq can issue and renew it itself with an `acme` Certificate (dnsNames: [{}]) and the DNS-01 or HTTP-01 solver you choose (--propose-acme EMAIL writes one, commented out); until then the files are copied into a Secret and are not renewed",
                            dns_names.join(", ")
                        )));
                        pairs.certbot.push(Certbot {
                            name: domain.clone(),
                            secret: String::new(),
                            dns_names,
                            pos: c.pos.clone(),
                        });
                        format!("tls-{domain}")
                    }
                    None => format!("tls-{}", port),
                };
                let mut taken: Vec<String> = pairs
                    .secrets
                    .iter()
                    .filter_map(|s| s.object.metadata.name.clone())
                    .collect();
                let name = object_name(&base, "tls", &mut taken);
                if let Some(cb) = pairs.certbot.last_mut().filter(|cb| cb.secret.is_empty()) {
                    cb.secret = name.clone();
                }
                pairs.secrets.push(Placed {
                    object: secret(
                        &name,
                        Some("kubernetes.io/tls"),
                        &[("tls.crt", crt), ("tls.key", key)],
                    ),
                    origin: format!("{} and {}", c.pos, k.pos),
                });
                pairs.by_files.push((cpath, kpath, name.clone()));
                name
            }
        };
        Ok(name)
    }

    /// One MqttUser per usable entry of the password file, and the usernames in the
    /// same order.
    fn users(&mut self) -> Result<(Vec<Placed<MqttUser>>, Vec<String>), ImportError> {
        let mut users = Vec::new();
        let mut user_names: Vec<String> = Vec::new();
        let mut usernames: Vec<String> = Vec::new();
        if let Some(pf) = self.password_file {
            let (path, text) = text_file(self.input, pf)?;
            for e in conf::parse_passwd(&text, &path) {
                let at = |reason: String| Loss {
                    pos: e.pos.clone(),
                    what: format!("{}:…", e.username),
                    reason,
                };
                if e.username.is_empty() || e.username.contains(['+', '#']) {
                    self.losses.push(at(
                        "a username that is empty or holds `+` or `#` cannot log in to edgemq"
                            .into(),
                    ));
                    continue;
                }
                if usernames.contains(&e.username) {
                    self.notes.push(at(
                        "the username appears again; the first entry is used".into()
                    ));
                    continue;
                }
                if let Err(err) = PasswordHash::parse(&e.hash) {
                    self.notes.push(at(format!(
                        "{err}: the user cannot log in to Mosquitto either, and is left out"
                    )));
                    continue;
                }
                usernames.push(e.username.clone());
                let name = object_name(&e.username, "user", &mut user_names);
                users.push(Placed {
                    object: MqttUser {
                        metadata: meta(&name),
                        spec: MqttUserSpec {
                            broker_ref: self.input.broker.to_owned(),
                            username: (name != e.username).then(|| e.username.clone()),
                            password_hash: Some(e.hash.clone()),
                            ..MqttUserSpec::default()
                        },
                        status: None,
                    },
                    origin: e.pos.to_string(),
                });
            }
        }
        Ok((users, usernames))
    }

    /// The ACL file's rules: for anonymous clients and patterns (returned), and for
    /// each user (into `users`).
    fn acl(
        &mut self,
        allow_anonymous: bool,
        users: &mut [Placed<MqttUser>],
        usernames: &[String],
    ) -> Result<(Vec<AclRule>, Vec<AclRule>), ImportError> {
        let mut anonymous_acl = Vec::new();
        let mut acl_patterns = Vec::new();
        if let Some(af) = self.acl_file {
            let (path, text) = text_file(self.input, af)?;
            let acl = conf::parse_acl(&text, &path)?;
            let keep =
                |rules: &[PlacedRule], patterns: bool, losses: &mut Vec<Loss>| -> Vec<AclRule> {
                    rules
                        .iter()
                        .filter(
                            |r| match crate::load::filter_error(&r.rule.topic, patterns) {
                                None => true,
                                Some(why) => {
                                    losses.push(Loss {
                                        pos: r.pos.clone(),
                                        what: r.rule.topic.clone(),
                                        reason: why,
                                    });
                                    false
                                }
                            },
                        )
                        .map(|r| r.rule.clone())
                        .collect()
                };
            if allow_anonymous {
                anonymous_acl = keep(&acl.anonymous, false, &mut self.losses);
            } else if let Some(first) = acl.anonymous.first() {
                self.notes.push(Loss {
                    pos: first.pos.clone(),
                    what: first.rule.topic.clone(),
                    reason: "rules for anonymous clients, but allow_anonymous is false: left out"
                        .into(),
                });
            }
            acl_patterns = keep(&acl.patterns, true, &mut self.losses);
            for (user, pos, rules) in &acl.users {
                match usernames.iter().position(|u| u == user) {
                    Some(i) => users[i].object.spec.acl = keep(rules, false, &mut self.losses),
                    None => self.notes.push(Loss {
                        pos: pos.clone(),
                        what: format!("user {user}"),
                        reason:
                            "not in the password file, so it cannot log in: its rules are left out"
                                .into(),
                    }),
                }
            }
        }
        Ok((anonymous_acl, acl_patterns))
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;

/// The domain of a certbot certificate path (`/etc/letsencrypt/live/NAME/...`).
fn certbot_name(path: &Path) -> Option<String> {
    let s = path.to_str()?;
    let rest = s.split("/letsencrypt/live/").nth(1)?;
    let name = rest.split('/').next()?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// Mosquitto's `persistent_client_expiration`: a number and h, d, w, m or y.
fn expiration(s: &str) -> Option<u32> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    let secs = n * match unit {
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        "m" => 30 * 86400,
        "y" => 365 * 86400,
        _ => return None,
    };
    Some(secs.min(u32::MAX as u64) as u32)
}
