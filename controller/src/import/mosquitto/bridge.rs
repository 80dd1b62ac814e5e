//! Mosquitto `connection` sections → Bridges, their credentials and key pairs →
//! Secrets (for the secrets folder).

use k8s_openapi::api::core::v1::Secret;

use super::conf::Directive;
use super::objects::{loss, malformed, meta, object_name, pem, secret, Input, Placed};
use crate::api::bridge::{
    BridgeDirection, BridgeQueue, BridgeRemote, BridgeTls, BridgeTopic, MqttVersion,
};
use crate::api::{Bridge, BridgeSpec, SecretKeyRef};
use crate::import::{ImportError, Loss};

/// A Bridge and the Secrets it reads.
type Made = (Placed<Bridge>, Vec<Placed<Secret>>);
/// Every Bridge and every Secret they read.
type Sections = (Vec<Placed<Bridge>>, Vec<Placed<Secret>>);

/// Whether `key` belongs to the current `connection` section.
pub fn is_bridge_option(key: &str) -> bool {
    key == "connection"
        || key == "address"
        || key == "addresses"
        || key == "topic"
        || key.starts_with("bridge_")
        || key.starts_with("remote_")
        || key.starts_with("local_")
        || key.starts_with("notification")
        || matches!(
            key,
            "clientid"
                | "cleansession"
                | "keepalive_interval"
                | "try_private"
                | "start_type"
                | "restart_timeout"
                | "idle_timeout"
                | "threshold"
                | "round_robin"
        )
}

/// One `connection` section as written.
#[derive(Default)]
struct Section {
    connection: Option<Directive>,
    lines: Vec<Directive>,
}

/// The `connection` sections, gathered while the directives are read.
#[derive(Default)]
pub struct Bridges {
    sections: Vec<Section>,
}

impl Bridges {
    /// Takes one bridge directive.
    pub fn directive(&mut self, d: &Directive) -> Result<(), ImportError> {
        if d.key == "connection" {
            if d.rest.is_empty() {
                return Err(malformed(d, "expects a name"));
            }
            self.sections.push(Section {
                connection: Some(d.clone()),
                lines: Vec::new(),
            });
            return Ok(());
        }
        match self.sections.last_mut() {
            Some(s) => {
                s.lines.push(d.clone());
                Ok(())
            }
            None => Err(malformed(d, "a bridge option before any `connection`")),
        }
    }

    /// The Bridges and their Secrets.
    pub fn finish(
        self,
        input: &Input<'_>,
        losses: &mut Vec<Loss>,
        notes: &mut Vec<Loss>,
    ) -> Result<Sections, ImportError> {
        let mut bridges = Vec::new();
        let mut secrets = Vec::new();
        let mut names = Vec::new();
        for s in self.sections {
            let Some(conn) = s.connection else { continue };
            let name = object_name(&conn.rest, "bridge", &mut names);
            if let Some((b, sec)) = section(input, &conn, &name, &s.lines, losses, notes)? {
                bridges.push(b);
                secrets.extend(sec);
            }
        }
        Ok((bridges, secrets))
    }
}

fn boolean(d: &Directive) -> Result<bool, ImportError> {
    match d.args.first().map(String::as_str) {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        _ => Err(malformed(d, "expects true or false")),
    }
}

/// A `topic` line: `pattern [direction [qos [local_prefix remote_prefix]]]`, `""`
/// standing for an empty word.
fn topic(d: &Directive) -> Result<(BridgeTopic, bool), ImportError> {
    let w: Vec<String> = d
        .args
        .iter()
        .map(|a| {
            if a == "\"\"" {
                String::new()
            } else {
                a.clone()
            }
        })
        .collect();
    if w.is_empty() || w.len() > 5 || w.len() == 4 {
        return Err(malformed(
            d,
            "expects: pattern [in|out|both [qos [local-prefix remote-prefix]]]",
        ));
    }
    let direction = match w.get(1).map(String::as_str) {
        None | Some("out") => BridgeDirection::Out,
        Some("in") => BridgeDirection::In,
        Some("both") => BridgeDirection::Both,
        Some(_) => return Err(malformed(d, "direction must be in, out or both")),
    };
    let qos = match w.get(2) {
        None => 0,
        Some(q) => q
            .parse::<u8>()
            .ok()
            .filter(|q| *q <= 2)
            .ok_or_else(|| malformed(d, "QoS must be 0, 1 or 2"))?,
    };
    let t = BridgeTopic {
        pattern: w[0].clone(),
        direction,
        qos,
        local_prefix: w.get(3).cloned().unwrap_or_default(),
        remote_prefix: w.get(4).cloned().unwrap_or_default(),
    };
    let empty = t.pattern.is_empty();
    Ok((t, empty))
}

/// Why a bridge option has no equivalent, if it has none.
fn unsupported(key: &str) -> &'static str {
    match key {
        "bridge_insecure" => "edgemq always verifies the remote's certificate and name",
        "bridge_identity" | "bridge_psk" => "TLS pre-shared keys are not supported",
        "bridge_tls_version" => "edgemq chooses the TLS version itself",
        "bridge_require_ocsp" => "OCSP checks are not supported",
        "bridge_bind_address" => "the local address of a bridge is not configurable",
        "bridge_max_packet_size" | "bridge_outgoing_retain" | "bridge_attempt_unsubscribe"
        | "bridge_reload_type" => "not configurable on edgemq bridges",
        "try_private" => "edgemq does not announce itself as a bridge to the remote; it prevents loops itself",
        "notifications" | "notification_topic" | "notifications_local_only" => {
            "connection state notifications are not published; the Bridge's status and metrics say whether it is connected"
        }
        "start_type" | "restart_timeout" | "idle_timeout" | "threshold" => {
            "edgemq bridges connect at start and reconnect with backoff; not configurable"
        }
        "round_robin" => "a bridge has one remote address",
        "local_clientid" | "local_username" | "local_password" | "local_cleansession" => {
            "the local side of an edgemq bridge is inside the broker; no local login"
        }
        _ => "not a Mosquitto 2.0 bridge option edgemq knows",
    }
}

fn section(
    input: &Input<'_>,
    conn: &Directive,
    name: &str,
    lines: &[Directive],
    losses: &mut Vec<Loss>,
    notes: &mut Vec<Loss>,
) -> Result<Option<Made>, ImportError> {
    let mut remote = BridgeRemote {
        keep_alive_seconds: 60,
        ..BridgeRemote::default()
    };
    let mut topics = Vec::new();
    let mut address_seen = false;
    let mut creds: Vec<(&str, String)> = Vec::new();
    let (mut cafile, mut capath, mut certfile, mut keyfile) = (None, None, None, None);
    let mut alpn = Vec::new();
    let mut client_id_set = false;
    for d in lines {
        match d.key.as_str() {
            "address" | "addresses" => {
                let Some(first) = d.args.first() else {
                    return Err(malformed(d, "expects host[:port]"));
                };
                if address_seen || d.args.len() > 1 {
                    losses.push(loss(
                        d,
                        "several remote addresses: an edgemq bridge has one (the first is used)",
                    ));
                }
                if !address_seen {
                    remote.address = Some(if first.contains(':') {
                        first.clone()
                    } else {
                        format!("{first}:1883")
                    });
                    address_seen = true;
                }
            }
            "topic" => {
                let (t, empty) = topic(d)?;
                if empty {
                    losses.push(loss(
                        d,
                        "an empty pattern (the prefix is the whole topic) is not supported",
                    ));
                } else {
                    topics.push(t);
                }
            }
            "remote_username" => creds.push(("username", d.rest.clone())),
            "remote_password" => creds.push(("password", d.rest.clone())),
            "remote_clientid" | "clientid" => {
                remote.client_id = Some(d.rest.clone());
                client_id_set = true;
            }
            "cleansession" => remote.clean_session = boolean(d)?,
            "keepalive_interval" => {
                let n = d
                    .args
                    .first()
                    .and_then(|a| a.parse::<u32>().ok())
                    .ok_or_else(|| malformed(d, "expects seconds"))?;
                if !(5..=65535).contains(&n) {
                    losses.push(loss(d, "edgemq's bridge keepalive is 5 to 65535 seconds"));
                }
                remote.keep_alive_seconds = n.clamp(5, 65535) as u16;
            }
            "bridge_protocol_version" => {
                remote.protocol_version = match d.args.first().map(String::as_str) {
                    Some("mqttv311") => MqttVersion::V311,
                    Some("mqttv50") => MqttVersion::V5,
                    Some("mqttv31") => {
                        losses.push(loss(d, "MQTT 3.1 is not spoken; 3.1.1 is used"));
                        MqttVersion::V311
                    }
                    _ => return Err(malformed(d, "expects mqttv31, mqttv311 or mqttv50")),
                }
            }
            "bridge_cafile" => cafile = Some(d),
            "bridge_capath" => capath = Some(d),
            "bridge_certfile" => certfile = Some(d),
            "bridge_keyfile" => keyfile = Some(d),
            "bridge_alpn" => alpn.push(d.rest.clone()),
            "try_private"
            | "notifications"
            | "bridge_insecure"
            | "notifications_local_only"
            | "round_robin"
            | "local_cleansession" => {
                // Settings that only lose something when on.
                if boolean(d)? {
                    losses.push(loss(d, unsupported(&d.key)));
                }
            }
            "start_type" if d.rest == "automatic" => {}
            k => losses.push(loss(d, unsupported(k))),
        }
    }
    if remote.address.is_none() {
        return Err(malformed(conn, "a connection without an address"));
    }
    if topics.is_empty() {
        losses.push(loss(
            conn,
            "a bridge without topics bridges nothing; left out",
        ));
        return Ok(None);
    }
    if !client_id_set {
        notes.push(loss(conn, format!(
            "no remote_clientid: Mosquitto uses `<hostname>.{}`, edgemq `{}-{name}`; set remote.clientId if the remote expects one",
            conn.rest, input.broker
        )));
    }
    let mut secrets = Vec::new();
    let mut data = creds.clone();
    let tls_on = cafile.is_some() || capath.is_some();
    if (certfile.is_some() || keyfile.is_some() || !alpn.is_empty()) && !tls_on {
        let d = certfile.or(keyfile).unwrap_or(conn);
        return Err(malformed(
            d,
            "bridge TLS settings without bridge_cafile or bridge_capath",
        ));
    }
    let secret_name = name.to_owned();
    let mut tls = BridgeTls {
        alpn,
        ..BridgeTls::default()
    };
    if let Some(ca) = cafile {
        data.push(("ca.crt", pem(input, ca, "CERTIFICATE-----")?));
        tls.ca_secret_ref = Some(SecretKeyRef {
            name: secret_name.clone(),
            key: "ca.crt".into(),
        });
    } else if let Some(cp) = capath {
        notes.push(loss(
            cp,
            "the remote is verified against the system's trusted roots",
        ));
    }
    match (certfile, keyfile) {
        (None, None) => {}
        (Some(c), Some(k)) => {
            let client = format!("{secret_name}-client");
            secrets.push(Placed {
                object: secret(
                    &client,
                    Some("kubernetes.io/tls"),
                    &[
                        ("tls.crt", pem(input, c, "CERTIFICATE-----")?),
                        ("tls.key", pem(input, k, "PRIVATE KEY-----")?),
                    ],
                ),
                origin: format!("{} and {}", c.pos, k.pos),
            });
            tls.client_secret_ref = Some(client);
        }
        (Some(d), None) | (None, Some(d)) => {
            return Err(malformed(
                d,
                "bridge_certfile and bridge_keyfile must both be set",
            ))
        }
    }
    if creds.iter().any(|(k, _)| *k == "username") {
        remote.username_secret_ref = Some(SecretKeyRef {
            name: secret_name.clone(),
            key: "username".into(),
        });
    }
    if creds.iter().any(|(k, _)| *k == "password") {
        remote.password_secret_ref = Some(SecretKeyRef {
            name: secret_name.clone(),
            key: "password".into(),
        });
    }
    if !data.is_empty() {
        secrets.insert(
            0,
            Placed {
                object: secret(&secret_name, None, &data),
                origin: conn.pos.to_string(),
            },
        );
    }
    if tls_on {
        remote.tls = Some(tls);
    } else if !creds.is_empty() {
        let host = remote
            .address
            .as_deref()
            .and_then(|a| a.rsplit_once(':'))
            .map(|(h, _)| h)
            .unwrap_or_default();
        let lo = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !lo {
            remote.insecure_plaintext_credentials = true;
            notes.push(loss(conn, "the login is sent without TLS, as Mosquitto did: insecurePlaintextCredentials is set; add bridge_cafile (tls) to stop exposing it"));
        }
    }
    Ok(Some((
        Placed {
            object: Bridge {
                metadata: meta(name),
                spec: BridgeSpec {
                    broker_ref: input.broker.to_owned(),
                    remote,
                    topics,
                    queue: BridgeQueue::default(),
                },
                status: None,
            },
            origin: conn.pos.to_string(),
        },
        secrets,
    )))
}
