//! The least-privilege AWS IoT policy of an `awsIot` Certificate, generated from the
//! Bridges that present it. Pure: no I/O, the same input gives the same document.
//!
//! For each Bridge whose `remote.tls.clientCertificateRef` names the Certificate:
//!
//! - `iot:Connect` on `client/<id>`, the id the bridge connects with (its
//!   `remote.clientId`, else the thing name);
//! - for every topic rule, the remote topic is `remotePrefix + pattern` (Mosquitto's
//!   bridge `topic` meaning): `out` → `iot:Publish` on `topic/...`; `in` →
//!   `iot:Subscribe` on `topicfilter/...` and `iot:Receive` on `topic/...`; `both` → all
//!   three.
//!
//! Wildcards differ between MQTT and policies. In a policy `*` matches any characters
//! (`/` included) and `?` one character, while `+` and `#` are plain characters. So:
//!
//! - a `topicfilter/` resource is the filter exactly as the bridge subscribes with it
//!   (`commands/#` matches only a subscription to `commands/#`);
//! - a `topic/` resource must match concrete topic names: `a/#` becomes `topic/a` and
//!   `topic/a/*` (MQTT's `#` also matches the parent level); `+` becomes `*`, which
//!   also matches several levels — policies have no single-level wildcard, so this is
//!   the narrowest rule that still allows every topic the filter matches.
//!
//! Characters with a meaning in policies (`*`, `?`, and `$` before `{` or `(`) are
//! written as the policy variables `$(*)`, `$(?)` and `$($)`, so a topic containing
//! them grants nothing more.

use std::collections::BTreeSet;

use serde_json::json;

use crate::api::bridge::BridgeDirection;
use crate::api::{Bridge, Certificate};

/// What the policy grants, before it is written out with ARNs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// Client ids allowed to connect.
    pub client_ids: BTreeSet<String>,
    /// Remote topic filters published to (direction `out` or `both`).
    pub publish: BTreeSet<String>,
    /// Remote topic filters subscribed to (direction `in` or `both`).
    pub subscribe: BTreeSet<String>,
}

/// The Bridges, among `bridges`, that present Certificate `cert` as their client
/// certificate (same namespace).
pub fn bridges_using<'a>(
    cert: &Certificate,
    bridges: impl IntoIterator<Item = &'a Bridge>,
) -> Vec<&'a Bridge> {
    let ns = cert.metadata.namespace.as_deref().unwrap_or("default");
    let name = cert.metadata.name.as_deref().unwrap_or("");
    bridges
        .into_iter()
        .filter(|b| b.metadata.namespace.as_deref().unwrap_or("default") == ns)
        .filter(|b| {
            b.spec
                .remote
                .tls
                .as_ref()
                .and_then(|t| t.client_certificate_ref.as_deref())
                == Some(name)
        })
        .collect()
}

/// The client id a Bridge presenting an `awsIot` certificate connects with: its
/// `remote.clientId`, else the thing name.
pub fn client_id(bridge: &Bridge, thing_name: &str) -> String {
    bridge
        .spec
        .remote
        .client_id
        .clone()
        .unwrap_or_else(|| thing_name.to_string())
}

/// What the Bridges using `cert` need. The thing name is always allowed to connect, so
/// a certificate with no Bridge yet can still connect as its thing and nothing else.
pub fn grants(cert: &Certificate, bridges: &[&Bridge]) -> Grants {
    let thing = cert
        .spec
        .issuer
        .aws_iot
        .as_ref()
        .map(|a| a.thing_name.as_str())
        .unwrap_or_default();
    let mut g = Grants::default();
    if bridges.is_empty() {
        g.client_ids.insert(thing.to_string());
    }
    for b in bridges {
        g.client_ids.insert(client_id(b, thing));
        for t in &b.spec.topics {
            let remote = format!("{}{}", t.remote_prefix, t.pattern);
            if matches!(t.direction, BridgeDirection::Out | BridgeDirection::Both) {
                g.publish.insert(remote.clone());
            }
            if matches!(t.direction, BridgeDirection::In | BridgeDirection::Both) {
                g.subscribe.insert(remote);
            }
        }
    }
    g
}

/// Escapes the characters that have a meaning in policy resources.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => out.push_str("$(*)"),
            '?' => out.push_str("$(?)"),
            '$' if matches!(chars.peek(), Some('{') | Some('(')) => out.push_str("$($)"),
            c => out.push(c),
        }
    }
    out
}

/// The policy patterns of `topic/` resources matching every topic name an MQTT filter
/// matches.
pub fn topic_resources(filter: &str) -> Vec<String> {
    let levels: Vec<&str> = filter.split('/').collect();
    let (head, multi) = match levels.split_last() {
        Some((&"#", head)) => (head, true),
        _ => (&levels[..], false),
    };
    let head: Vec<String> = head
        .iter()
        .map(|l| {
            if *l == "+" {
                "*".to_string()
            } else {
                escape(l)
            }
        })
        .collect();
    if !multi {
        return vec![head.join("/")];
    }
    if head.is_empty() {
        return vec!["*".to_string()];
    }
    let parent = head.join("/");
    vec![parent.clone(), format!("{parent}/*")]
}

/// Name of the policy edgemq generates for a Certificate:
/// `edgemq-<thingName>-<certificate>`, in the characters policy names allow, at most
/// 128 of them.
pub fn generated_name(cert: &Certificate) -> String {
    let thing = cert
        .spec
        .issuer
        .aws_iot
        .as_ref()
        .map(|a| a.thing_name.as_str())
        .unwrap_or_default();
    let name = cert.metadata.name.as_deref().unwrap_or("");
    let raw = format!("edgemq-{thing}-{name}");
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect()
}

/// The policy document, with ARNs under `arn_prefix` (`arn:aws:iot:<region>:<account>`,
/// the prefix of the certificate's ARN). Statements without resources are left out;
/// resources are sorted, so the document is deterministic.
pub fn document(grants: &Grants, arn_prefix: &str) -> String {
    let arns = |kind: &str, items: &mut dyn Iterator<Item = String>| -> Vec<String> {
        let set: BTreeSet<String> = items.map(|r| format!("{arn_prefix}:{kind}/{r}")).collect();
        set.into_iter().collect()
    };
    let connect = arns("client", &mut grants.client_ids.iter().map(|c| escape(c)));
    let publish = arns(
        "topic",
        &mut grants.publish.iter().flat_map(|f| topic_resources(f)),
    );
    let subscribe = arns(
        "topicfilter",
        &mut grants.subscribe.iter().map(|f| escape(f)),
    );
    let receive = arns(
        "topic",
        &mut grants.subscribe.iter().flat_map(|f| topic_resources(f)),
    );
    let mut statements = Vec::new();
    for (action, resources) in [
        ("iot:Connect", connect),
        ("iot:Publish", publish),
        ("iot:Subscribe", subscribe),
        ("iot:Receive", receive),
    ] {
        if !resources.is_empty() {
            statements.push(json!({"Effect": "Allow", "Action": action, "Resource": resources}));
        }
    }
    serde_json::to_string_pretty(&json!({"Version": "2012-10-17", "Statement": statements}))
        .unwrap_or_default()
}

/// `arn:<partition>:iot:<region>:<account>` from an AWS IoT ARN such as a certificate's.
pub fn arn_prefix(arn: &str) -> Option<String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    (parts.len() == 6 && parts[0] == "arn" && parts[2] == "iot").then(|| parts[..5].join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::bridge::{BridgeRemote, BridgeSpec, BridgeTls, BridgeTopic};
    use crate::api::certificate::{AwsIotIssuer, CertificateSpec, Issuer};

    const PREFIX: &str = "arn:aws:iot:eu-west-1:123456789012";

    fn cert() -> Certificate {
        let mut c = Certificate::new(
            "aws-home",
            CertificateSpec {
                issuer: Issuer {
                    aws_iot: Some(AwsIotIssuer {
                        thing_name: "home-gw".into(),
                        ..AwsIotIssuer::default()
                    }),
                    ..Issuer::default()
                },
                ..CertificateSpec::default()
            },
        );
        c.metadata.namespace = Some("default".into());
        c
    }

    fn bridge(name: &str, cert: &str, client_id: Option<&str>, topics: Vec<BridgeTopic>) -> Bridge {
        let mut b = Bridge::new(
            name,
            BridgeSpec {
                broker_ref: "home".into(),
                remote: BridgeRemote {
                    client_id: client_id.map(str::to_string),
                    tls: Some(BridgeTls {
                        client_certificate_ref: Some(cert.into()),
                        ..BridgeTls::default()
                    }),
                    ..BridgeRemote::default()
                },
                topics,
                ..BridgeSpec::default()
            },
        );
        b.metadata.namespace = Some("default".into());
        b
    }

    fn rule(pattern: &str, direction: BridgeDirection, remote_prefix: &str) -> BridgeTopic {
        BridgeTopic {
            pattern: pattern.into(),
            direction,
            qos: 1,
            local_prefix: String::new(),
            remote_prefix: remote_prefix.into(),
        }
    }

    #[test]
    fn sensors_out_under_home_and_commands_in_allow_exactly_those_topics() {
        let c = cert();
        let b = bridge(
            "to-aws",
            "aws-home",
            None,
            vec![
                rule("sensors/#", BridgeDirection::Out, "home/"),
                rule("commands/#", BridgeDirection::In, ""),
            ],
        );
        let other = bridge(
            "elsewhere",
            "other-cert",
            Some("x"),
            vec![rule("#", BridgeDirection::Both, "")],
        );
        let used = bridges_using(&c, [&b, &other]);
        assert_eq!(used.len(), 1);
        let doc: serde_json::Value =
            serde_json::from_str(&document(&grants(&c, &used), PREFIX)).unwrap();
        assert_eq!(
            doc,
            json!({
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "iot:Connect",
                     "Resource": [format!("{PREFIX}:client/home-gw")]},
                    {"Effect": "Allow", "Action": "iot:Publish",
                     "Resource": [format!("{PREFIX}:topic/home/sensors"),
                                  format!("{PREFIX}:topic/home/sensors/*")]},
                    {"Effect": "Allow", "Action": "iot:Subscribe",
                     "Resource": [format!("{PREFIX}:topicfilter/commands/#")]},
                    {"Effect": "Allow", "Action": "iot:Receive",
                     "Resource": [format!("{PREFIX}:topic/commands"),
                                  format!("{PREFIX}:topic/commands/*")]},
                ]
            })
        );
    }

    #[test]
    fn both_directions_explicit_client_ids_and_single_level_wildcards() {
        let c = cert();
        let a = bridge(
            "a",
            "aws-home",
            Some("gw-a"),
            vec![rule("state/+/now", BridgeDirection::Both, "site1/")],
        );
        let b = bridge(
            "b",
            "aws-home",
            None,
            vec![rule("#", BridgeDirection::Out, "")],
        );
        let g = grants(&c, &bridges_using(&c, [&a, &b]));
        assert_eq!(g.client_ids, ["gw-a", "home-gw"].map(String::from).into());
        let doc: serde_json::Value = serde_json::from_str(&document(&g, PREFIX)).unwrap();
        let res = |i: usize| doc["Statement"][i]["Resource"].clone();
        assert_eq!(doc["Statement"][1]["Action"], "iot:Publish");
        assert_eq!(
            res(1),
            json!([
                format!("{PREFIX}:topic/*"),
                format!("{PREFIX}:topic/site1/state/*/now")
            ])
        );
        assert_eq!(
            res(2),
            json!([format!("{PREFIX}:topicfilter/site1/state/+/now")])
        );
        assert_eq!(res(3), json!([format!("{PREFIX}:topic/site1/state/*/now")]));
    }

    #[test]
    fn a_certificate_without_bridges_may_only_connect_as_its_thing() {
        let c = cert();
        let doc: serde_json::Value =
            serde_json::from_str(&document(&grants(&c, &[]), PREFIX)).unwrap();
        assert_eq!(doc["Statement"].as_array().unwrap().len(), 1);
        assert_eq!(doc["Statement"][0]["Action"], "iot:Connect");
    }

    #[test]
    fn policy_characters_in_topics_grant_nothing_more() {
        assert_eq!(topic_resources("a/*/b"), vec!["a/$(*)/b"]);
        assert_eq!(topic_resources("a?/${x}"), vec!["a$(?)/$($){x}"]);
        assert_eq!(topic_resources("$aws/things/x"), vec!["$aws/things/x"]);
        assert_eq!(topic_resources("#"), vec!["*"]);
        assert_eq!(topic_resources("+"), vec!["*"]);
    }

    #[test]
    fn names_and_arns() {
        assert_eq!(generated_name(&cert()), "edgemq-home-gw-aws-home");
        assert_eq!(
            arn_prefix("arn:aws:iot:eu-west-1:123456789012:cert/abc").as_deref(),
            Some(PREFIX)
        );
        assert_eq!(arn_prefix("arn:aws:s3:::bucket"), None);
    }
}
