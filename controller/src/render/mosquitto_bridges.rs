//! A bundle's Bridges as Mosquitto `connection` sections, with the same remote, login,
//! TLS files and topic rules. Secret values and file paths are resolved by the caller
//! ([`BridgeFiles`]); this module only writes text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use super::files::TlsFiles;
use crate::api::bridge::{BridgeDirection, MqttVersion};
use crate::plan::{BridgePlan, BrokerBundle, CaSource, RemoteAddress};

/// What a Bridge reads from Secrets and Certificates, resolved by the caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgeFiles {
    /// Username on the remote.
    pub username: Option<String>,
    /// Password on the remote.
    pub password: Option<String>,
    /// PEM file of the roots the remote is checked against (`None`: the system's).
    pub cafile: Option<PathBuf>,
    /// Key pair presented to the remote.
    pub client: Option<TlsFiles>,
}

/// Where Mosquitto finds the system's trusted roots.
const SYSTEM_CAPATH: &str = "/etc/ssl/certs";

/// Mosquitto's word for an empty prefix.
fn word(s: &str) -> &str {
    if s.is_empty() {
        "\"\""
    } else {
        s
    }
}

/// Appends one `connection` section per bridge of `b`.
pub fn sections(
    s: &mut String,
    b: &BrokerBundle,
    files: &BTreeMap<String, BridgeFiles>,
    not_expressed: &mut Vec<String>,
) {
    for (name, br) in &b.bridges {
        let none = BridgeFiles::default();
        section(s, name, br, files.get(name).unwrap_or(&none), not_expressed);
    }
}

fn section(
    s: &mut String,
    name: &str,
    br: &BridgePlan,
    f: &BridgeFiles,
    not_expressed: &mut Vec<String>,
) {
    let mut skip = |s: &mut String, why: String| {
        let _ = writeln!(s, "# NOT EXPRESSED: {why}");
        not_expressed.push(why);
    };
    let _ = writeln!(s, "\n# bridge {name}");
    let address = match &br.address {
        RemoteAddress::HostPort(a) => a.clone(),
        RemoteAddress::AwsIotEndpoint { certificate, .. } => {
            skip(s, format!("Bridge {name}: the AWS IoT endpoint of Certificate {certificate} is looked up by edgemq; Mosquitto needs it written as `address`; the bridge is left out"));
            return;
        }
    };
    let _ = writeln!(s, "connection {name}");
    let _ = writeln!(s, "address {address}");
    let _ = writeln!(s, "remote_clientid {}", br.client_id);
    let _ = writeln!(
        s,
        "bridge_protocol_version {}",
        match br.protocol_version {
            MqttVersion::V311 => "mqttv311",
            MqttVersion::V5 => "mqttv50",
        }
    );
    let _ = writeln!(s, "keepalive_interval {}", br.keep_alive_seconds);
    let _ = writeln!(s, "cleansession {}", br.clean_session);
    // edgemq publishes no connection notifications and starts every bridge at once.
    s.push_str("notifications false\nstart_type automatic\n");
    if let Some(u) = &f.username {
        let _ = writeln!(s, "remote_username {u}");
    }
    if let Some(p) = &f.password {
        let _ = writeln!(s, "remote_password {p}");
    }
    if let Some(tls) = &br.tls {
        match (&f.cafile, &tls.ca) {
            (Some(ca), _) => {
                let _ = writeln!(s, "bridge_cafile {}", ca.display());
            }
            (None, CaSource::System) => {
                let _ = writeln!(s, "bridge_capath {SYSTEM_CAPATH}");
            }
            (None, other) => skip(
                s,
                format!("Bridge {name}: the CA {other:?} has no file; the remote is checked against the system's roots"),
            ),
        }
        if let Some(c) = &f.client {
            let _ = writeln!(s, "bridge_certfile {}", c.certfile.display());
            let _ = writeln!(s, "bridge_keyfile {}", c.keyfile.display());
        }
        if let Some(first) = tls.alpn.first() {
            let _ = writeln!(s, "bridge_alpn {first}");
        }
        if tls.alpn.len() > 1 {
            skip(
                s,
                format!(
                    "Bridge {name}: Mosquitto offers one ALPN protocol; only {:?} is offered",
                    tls.alpn[0]
                ),
            );
        }
        if let Some(sn) = &tls.server_name {
            skip(
                s,
                format!("Bridge {name}: serverName {sn}: Mosquitto checks the remote's certificate against the address host"),
            );
        }
    }
    for t in &br.topics {
        let pattern = t
            .local_filter
            .strip_prefix(&t.local_prefix)
            .unwrap_or(&t.local_filter);
        let direction = match t.direction {
            BridgeDirection::Out => "out",
            BridgeDirection::In => "in",
            BridgeDirection::Both => "both",
        };
        let _ = write!(s, "topic {pattern} {direction} {}", t.qos);
        if !t.local_prefix.is_empty() || !t.remote_prefix.is_empty() {
            let _ = write!(s, " {} {}", word(&t.local_prefix), word(&t.remote_prefix));
        }
        s.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{BridgeTlsPlan, TlsSource, TopicRule};

    fn plan() -> BridgePlan {
        BridgePlan {
            namespace: "default".into(),
            name: "to-server".into(),
            generation: None,
            address: RemoteAddress::HostPort("mqtt.example.com:8883".into()),
            client_id: "site-a".into(),
            protocol_version: MqttVersion::V311,
            keep_alive_seconds: 30,
            clean_session: true,
            username: None,
            password: None,
            tls: Some(BridgeTlsPlan {
                ca: CaSource::Secret(crate::api::SecretKeyRef {
                    name: "to-server".into(),
                    key: "ca.crt".into(),
                }),
                client: Some(TlsSource::Secret("to-server-client".into())),
                alpn: vec![],
                server_name: None,
            }),
            topics: vec![
                TopicRule {
                    direction: BridgeDirection::Out,
                    qos: 1,
                    local_filter: "sensors/#".into(),
                    remote_filter: "site-a/sensors/#".into(),
                    local_prefix: String::new(),
                    remote_prefix: "site-a/".into(),
                },
                TopicRule {
                    direction: BridgeDirection::Out,
                    qos: 1,
                    local_filter: "#".into(),
                    remote_filter: "#".into(),
                    local_prefix: String::new(),
                    remote_prefix: String::new(),
                },
            ],
            queue_max_messages: 1000,
            queue_max_bytes: 1 << 20,
        }
    }

    #[test]
    fn a_bridge_is_a_connection_section_with_the_same_topic_lines() {
        let mut b = BrokerBundle::default();
        b.bridges.insert("to-server".into(), plan());
        let files = BTreeMap::from([(
            "to-server".to_owned(),
            BridgeFiles {
                username: Some("site-a".into()),
                password: Some("pw".into()),
                cafile: Some("/x/ca.crt".into()),
                client: Some(TlsFiles {
                    certfile: "/x/tls.crt".into(),
                    keyfile: "/x/tls.key".into(),
                }),
            },
        )]);
        let mut s = String::new();
        let mut ne = Vec::new();
        sections(&mut s, &b, &files, &mut ne);
        assert!(ne.is_empty(), "{ne:?}");
        assert_eq!(
            s,
            "\n# bridge to-server\nconnection to-server\naddress mqtt.example.com:8883\n\
             remote_clientid site-a\nbridge_protocol_version mqttv311\nkeepalive_interval 30\n\
             cleansession true\nnotifications false\nstart_type automatic\n\
             remote_username site-a\nremote_password pw\nbridge_cafile /x/ca.crt\n\
             bridge_certfile /x/tls.crt\nbridge_keyfile /x/tls.key\n\
             topic sensors/# out 1 \"\" site-a/\ntopic # out 1\n"
        );
    }

    #[test]
    fn an_aws_endpoint_and_a_server_name_are_reported() {
        let mut p = plan();
        p.address = RemoteAddress::AwsIotEndpoint {
            certificate: "aws".into(),
            port: 8883,
        };
        let mut b = BrokerBundle::default();
        b.bridges.insert("a".into(), p.clone());
        let (mut s, mut ne) = (String::new(), Vec::new());
        sections(&mut s, &b, &BTreeMap::new(), &mut ne);
        assert!(!s.contains("connection"), "{s}");
        assert!(ne[0].contains("AWS IoT endpoint"), "{ne:?}");
        p.address = RemoteAddress::HostPort("h:1".into());
        if let Some(t) = p.tls.as_mut() {
            t.server_name = Some("other".into());
            t.ca = CaSource::System;
        }
        b.bridges.insert("a".into(), p);
        let (mut s, mut ne) = (String::new(), Vec::new());
        sections(&mut s, &b, &BTreeMap::new(), &mut ne);
        assert!(s.contains("bridge_capath /etc/ssl/certs\n"), "{s}");
        assert!(ne[0].contains("serverName other"), "{ne:?}");
    }
}
