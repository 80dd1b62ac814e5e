//! The administrator's side of fleet provisioning by claim, rendered from the same
//! YAML the devices run (`edgemq aws fleet-template`): the provisioning template, the
//! claim policy and the device policy, for the administrator's own tooling (Terraform,
//! the AWS CLI). Pure: no I/O, the same input gives the same documents.
//!
//! - **Template**: the parameters the Certificate sends, a thing named from one of
//!   them (with an optional prefix), of `thingTypeName` and in `thingGroupName` when
//!   set, the certificate made ACTIVE, and the device policy attached by name.
//! - **Claim policy**: connect only as a provisioning client
//!   (`client/edgemq-provision-*`), and publish, subscribe and receive only the
//!   provisioning topics of this template and of the key origin in use.
//! - **Device policy**: what the Bridges presenting the Certificate need, the
//!   least-privilege way [`super::policy`] writes it for `awsIot`; the thing name is
//!   only known per device, so the client id is the policy variable
//!   `${iot:Connection.Thing.ThingName}` (a Bridge connects as its thing by default).

use serde_json::{json, Value};

use super::fleet_provisioning::Topics;
use super::policy;
use crate::api::certificate::FleetProvisioning;
use crate::api::{Bridge, Certificate};

/// Client ids the claim may connect with (the provisioning connection's prefix).
pub const CLAIM_CLIENT_IDS: &str = "edgemq-provision-*";
/// Stands for the thing name while the device policy is generated.
const THING: &str = "EDGEMQTHINGNAMEPLACEHOLDER";

/// How the thing is named.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThingNaming {
    /// The parameter whose value names the thing. Default: `SerialNumber` when the
    /// Certificate sends it, else its first parameter.
    pub parameter: Option<String>,
    /// Put before the value (`edge-`).
    pub prefix: String,
}

/// What an administrator creates in AWS IoT for a fleet Certificate.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// Provisioning template name.
    pub template_name: String,
    /// The template body.
    pub template: Value,
    /// The claim certificate's policy.
    pub claim_policy: Value,
    /// Name of the device policy (the template attaches it).
    pub device_policy_name: String,
    /// The device policy.
    pub device_policy: Value,
}

fn fleet(cert: &Certificate) -> Result<&FleetProvisioning, String> {
    cert.spec
        .issuer
        .aws_iot
        .as_ref()
        .and_then(|a| a.fleet_provisioning.as_ref())
        .ok_or_else(|| {
            format!(
                "Certificate {} does not use awsIot.fleetProvisioning",
                cert.metadata.name.as_deref().unwrap_or("")
            )
        })
}

/// Renders the template and policies of `cert` with ARNs under `arn_prefix`
/// (`arn:aws:iot:<region>:<account>`); `bridges` are those presenting it
/// ([`policy::bridges_using`]).
pub fn render(
    cert: &Certificate,
    bridges: &[&Bridge],
    arn_prefix: &str,
    naming: &ThingNaming,
) -> Result<Rendered, String> {
    let fp = fleet(cert)?;
    let aws = cert.spec.issuer.aws_iot.as_ref().ok_or("not awsIot")?;
    let names: Vec<&str> = fp.parameters.iter().map(|p| p.name.as_str()).collect();
    let thing_param = match &naming.parameter {
        Some(p) if names.contains(&p.as_str()) => p.clone(),
        Some(p) => {
            return Err(format!(
                "the thing name parameter {p} is not among the Certificate's parameters ({})",
                names.join(", ")
            ))
        }
        None if names.contains(&"SerialNumber") => "SerialNumber".into(),
        None => names.first().map(|s| s.to_string()).ok_or_else(|| {
            "the Certificate sends no parameters, so nothing can name the thing; add one (such as SerialNumber)".to_string()
        })?,
    };
    let device_policy_name = aws
        .policy_name
        .clone()
        .unwrap_or_else(|| format!("edgemq-fleet-{}", fp.template_name));

    let mut parameters = serde_json::Map::new();
    for n in &names {
        parameters.insert(n.to_string(), json!({"Type": "String"}));
    }
    parameters.insert(
        "AWS::IoT::Certificate::Id".into(),
        json!({"Type": "String"}),
    );
    let thing_name = if naming.prefix.is_empty() {
        json!({"Ref": thing_param})
    } else {
        json!({"Fn::Join": ["", [naming.prefix, {"Ref": thing_param}]]})
    };
    let mut thing = json!({"ThingName": thing_name});
    if let Some(t) = &aws.thing_type_name {
        thing["ThingTypeName"] = json!(t);
    }
    if let Some(g) = &aws.thing_group_name {
        thing["ThingGroups"] = json!([g]);
    }
    let template = json!({
        "Parameters": parameters,
        "Resources": {
            "thing": {"Type": "AWS::IoT::Thing", "Properties": thing,
                      "OverrideSettings": {"ThingTypeName": "REPLACE", "ThingGroups": "DO_NOTHING"}},
            "certificate": {"Type": "AWS::IoT::Certificate",
                            "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
                                           "Status": "ACTIVE"}},
            "policy": {"Type": "AWS::IoT::Policy",
                       "Properties": {"PolicyName": device_policy_name}},
        },
        "DeviceConfiguration": {},
    });

    let topics = Topics::new(&fp.template_name, aws.key_origin.unwrap_or_default());
    let requests = [&topics.create, &topics.provision];
    let arn = |kind: &str, r: &str| format!("{arn_prefix}:{kind}/{r}");
    let replies = topics.replies();
    let claim_policy = json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect",
             "Resource": [arn("client", CLAIM_CLIENT_IDS)]},
            {"Effect": "Allow", "Action": "iot:Publish",
             "Resource": requests.iter().map(|t| arn("topic", t)).collect::<Vec<_>>()},
            {"Effect": "Allow", "Action": "iot:Subscribe",
             "Resource": replies.iter().map(|t| arn("topicfilter", t)).collect::<Vec<_>>()},
            {"Effect": "Allow", "Action": "iot:Receive",
             "Resource": replies.iter().map(|t| arn("topic", t)).collect::<Vec<_>>()},
        ],
    });

    let mut named = cert.clone();
    if let Some(a) = named.spec.issuer.aws_iot.as_mut() {
        a.thing_name = THING.into();
    }
    let doc = policy::document(&policy::grants(&named, bridges), arn_prefix).replace(
        &format!("client/{THING}\""),
        "client/${iot:Connection.Thing.ThingName}\"",
    );
    let device_policy: Value = serde_json::from_str(&doc).map_err(|e| e.to_string())?;
    Ok(Rendered {
        template_name: fp.template_name.clone(),
        template,
        claim_policy,
        device_policy_name,
        device_policy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::bridge::{BridgeDirection, BridgeRemote, BridgeSpec, BridgeTls, BridgeTopic};
    use crate::api::certificate::KeyOrigin;
    use crate::api::certificate::{
        AwsIotIssuer, CertificateSpec, ClaimCertificate, Issuer, ParameterSource, TemplateParameter,
    };

    const PREFIX: &str = "arn:aws:iot:eu-west-1:123456789012";

    fn cert(origin: Option<KeyOrigin>) -> Certificate {
        let mut c = Certificate::new(
            "device",
            CertificateSpec {
                issuer: Issuer {
                    aws_iot: Some(AwsIotIssuer {
                        data_endpoint: Some("a1-ats.iot.eu-west-1.amazonaws.com".into()),
                        key_origin: origin,
                        thing_group_name: Some("edge".into()),
                        fleet_provisioning: Some(FleetProvisioning {
                            template_name: "edge-fleet".into(),
                            claim: ClaimCertificate {
                                secret_ref: Some("claim".into()),
                                certificate_ref: None,
                            },
                            parameters: vec![
                                TemplateParameter {
                                    name: "Site".into(),
                                    value: Some("shed".into()),
                                    value_from: None,
                                },
                                TemplateParameter {
                                    name: "SerialNumber".into(),
                                    value: None,
                                    value_from: Some(ParameterSource {
                                        hostname: None,
                                        file: Some("/etc/serial".into()),
                                    }),
                                },
                            ],
                            ca_secret_ref: None,
                        }),
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

    fn bridge() -> Bridge {
        let mut b = Bridge::new(
            "to-aws",
            BridgeSpec {
                broker_ref: "home".into(),
                remote: BridgeRemote {
                    tls: Some(BridgeTls {
                        client_certificate_ref: Some("device".into()),
                        ..BridgeTls::default()
                    }),
                    ..BridgeRemote::default()
                },
                topics: vec![
                    BridgeTopic {
                        pattern: "sensors/#".into(),
                        direction: BridgeDirection::Out,
                        remote_prefix: "home/".into(),
                        ..BridgeTopic::default()
                    },
                    BridgeTopic {
                        pattern: "commands/#".into(),
                        direction: BridgeDirection::In,
                        ..BridgeTopic::default()
                    },
                ],
                ..BridgeSpec::default()
            },
        );
        b.metadata.namespace = Some("default".into());
        b
    }

    fn actions(policy: &Value) -> Vec<(String, Vec<String>)> {
        policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["Action"].as_str().unwrap().to_string(),
                    s["Resource"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r.as_str().unwrap().to_string())
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn the_template_names_the_thing_from_the_serial_number_and_attaches_the_device_policy() {
        let naming = ThingNaming {
            parameter: None,
            prefix: "edge-".into(),
        };
        let r = render(&cert(None), &[], PREFIX, &naming).unwrap();
        assert_eq!(r.template_name, "edge-fleet");
        assert_eq!(r.device_policy_name, "edgemq-fleet-edge-fleet");
        assert_eq!(
            r.template,
            json!({
                "Parameters": {
                    "AWS::IoT::Certificate::Id": {"Type": "String"},
                    "SerialNumber": {"Type": "String"},
                    "Site": {"Type": "String"},
                },
                "Resources": {
                    "thing": {"Type": "AWS::IoT::Thing",
                              "Properties": {"ThingName": {"Fn::Join": ["", ["edge-", {"Ref": "SerialNumber"}]]},
                                             "ThingGroups": ["edge"]},
                              "OverrideSettings": {"ThingTypeName": "REPLACE", "ThingGroups": "DO_NOTHING"}},
                    "certificate": {"Type": "AWS::IoT::Certificate",
                                    "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
                                                   "Status": "ACTIVE"}},
                    "policy": {"Type": "AWS::IoT::Policy",
                               "Properties": {"PolicyName": "edgemq-fleet-edge-fleet"}},
                },
                "DeviceConfiguration": {},
            })
        );
        let named = ThingNaming {
            parameter: Some("Site".into()),
            prefix: String::new(),
        };
        let r = render(&cert(None), &[], PREFIX, &named).unwrap();
        assert_eq!(
            r.template["Resources"]["thing"]["Properties"]["ThingName"],
            json!({"Ref": "Site"})
        );
        let unknown = ThingNaming {
            parameter: Some("Nope".into()),
            prefix: String::new(),
        };
        let e = render(&cert(None), &[], PREFIX, &unknown).unwrap_err();
        assert!(
            e.contains("Nope") && e.contains("Site, SerialNumber"),
            "{e}"
        );
    }

    #[test]
    fn the_claim_policy_allows_only_the_provisioning_topics_of_the_template() {
        let r = render(&cert(None), &[], PREFIX, &ThingNaming::default()).unwrap();
        let csr = "$aws/certificates/create-from-csr/json";
        let prov = "$aws/provisioning-templates/edge-fleet/provision/json";
        let replies = |kind: &str| -> Vec<String> {
            [csr, prov]
                .iter()
                .flat_map(|t| ["accepted", "rejected"].map(|r| format!("{PREFIX}:{kind}/{t}/{r}")))
                .collect()
        };
        assert_eq!(
            actions(&r.claim_policy),
            vec![
                (
                    "iot:Connect".into(),
                    vec![format!("{PREFIX}:client/edgemq-provision-*")]
                ),
                (
                    "iot:Publish".into(),
                    vec![
                        format!("{PREFIX}:topic/{csr}"),
                        format!("{PREFIX}:topic/{prov}")
                    ]
                ),
                ("iot:Subscribe".into(), replies("topicfilter")),
                ("iot:Receive".into(), replies("topic")),
            ]
        );
        // Keys made by AWS IoT: the create topic instead of create-from-csr.
        let r = render(
            &cert(Some(KeyOrigin::Aws)),
            &[],
            PREFIX,
            &ThingNaming::default(),
        )
        .unwrap();
        let text = r.claim_policy.to_string();
        assert!(text.contains("$aws/certificates/create/json\""));
        assert!(!text.contains("create-from-csr"));
    }

    #[test]
    fn the_device_policy_is_the_bridges_least_privilege_as_the_thing() {
        let b = bridge();
        let r = render(&cert(None), &[&b], PREFIX, &ThingNaming::default()).unwrap();
        assert_eq!(
            actions(&r.device_policy),
            vec![
                (
                    "iot:Connect".into(),
                    vec![format!(
                        "{PREFIX}:client/${{iot:Connection.Thing.ThingName}}"
                    )]
                ),
                (
                    "iot:Publish".into(),
                    vec![
                        format!("{PREFIX}:topic/home/sensors"),
                        format!("{PREFIX}:topic/home/sensors/*")
                    ]
                ),
                (
                    "iot:Subscribe".into(),
                    vec![format!("{PREFIX}:topicfilter/commands/#")]
                ),
                (
                    "iot:Receive".into(),
                    vec![
                        format!("{PREFIX}:topic/commands"),
                        format!("{PREFIX}:topic/commands/*")
                    ]
                ),
            ]
        );
        let mut not_fleet = cert(None);
        not_fleet
            .spec
            .issuer
            .aws_iot
            .as_mut()
            .unwrap()
            .fleet_provisioning = None;
        assert!(render(&not_fleet, &[], PREFIX, &ThingNaming::default()).is_err());
    }
}
