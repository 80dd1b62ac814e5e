//! The Route 53 provider against moto's Route 53 API: the TXT value is added to the
//! record set (next to other values), removed, and the set deleted with its last
//! value; the hosted zone is found by name when no id is given.

mod peers;

use aws_sdk_route53::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_route53::types::RrType;
use aws_sdk_route53::Client;

use edgemq::api::certificate::{Dns01Solver, Route53Provider};
use edgemq::api::SecretKeyRef;
use edgemq::certs::dns01::{route53, Dns01, Error};
use peers::{secrets, Moto};

/// A client of the test's own, to create zones and read what the provider did.
fn admin(moto: &Moto) -> Client {
    let conf = aws_sdk_route53::Config::builder()
        .http_client(edgemq::aws::https_client())
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(moto.url())
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .build();
    Client::from_conf(conf)
}

async fn create_zone(c: &Client, name: &str) -> String {
    let out = c
        .create_hosted_zone()
        .name(name)
        .caller_reference(format!("edgemq-test-{name}"))
        .send()
        .await
        .unwrap();
    out.hosted_zone()
        .unwrap()
        .id()
        .trim_start_matches("/hostedzone/")
        .to_string()
}

/// The TXT values of `name` in `zone`, as stored (quoted).
async fn txt(c: &Client, zone: &str, name: &str) -> Vec<String> {
    let out = c
        .list_resource_record_sets()
        .hosted_zone_id(zone)
        .send()
        .await
        .unwrap();
    let mut v: Vec<String> = out
        .resource_record_sets()
        .iter()
        .filter(|s| s.name().trim_end_matches('.') == name && *s.r#type() == RrType::Txt)
        .flat_map(|s| s.resource_records().iter().map(|r| r.value().to_string()))
        .collect();
    v.sort();
    v
}

fn route53(moto: &Moto, zone_id: Option<&str>) -> Dns01 {
    let solver = Dns01Solver {
        route53: Some(Route53Provider {
            hosted_zone_id: zone_id.map(str::to_string),
            region: Some("eu-west-1".into()),
            access_key_id_secret_ref: Some(SecretKeyRef {
                name: "aws".into(),
                key: "access-key-id".into(),
            }),
            secret_access_key_secret_ref: Some(SecretKeyRef {
                name: "aws".into(),
                key: "secret-access-key".into(),
            }),
            endpoint_url: Some(moto.url()),
        }),
        ..Default::default()
    };
    Dns01::new(
        &solver,
        &secrets(&[
            ("aws", "access-key-id", "AKIAEDGEMQTEST"),
            ("aws", "secret-access-key", "edgemq-test-secret"),
        ]),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_is_created_shared_and_removed() {
    let moto = Moto::start();
    let c = admin(&moto);
    // A parent zone too, so the lookup has to pick the closest one.
    create_zone(&c, "example.test").await;
    let zone = create_zone(&c, "home.example.test").await;
    let d = route53(&moto, None);
    let name = "_acme-challenge.mqtt.home.example.test";

    d.publish("mqtt.home.example.test", "token-one")
        .await
        .unwrap();
    assert_eq!(txt(&c, &zone, name).await, ["\"token-one\""]);
    d.publish("*.mqtt.home.example.test", "token-two")
        .await
        .unwrap();
    assert_eq!(
        txt(&c, &zone, name).await,
        ["\"token-one\"", "\"token-two\""]
    );
    // Again the same value: nothing changes.
    d.publish("mqtt.home.example.test", "token-one")
        .await
        .unwrap();
    assert_eq!(txt(&c, &zone, name).await.len(), 2);

    d.clear("mqtt.home.example.test", "token-one")
        .await
        .unwrap();
    assert_eq!(txt(&c, &zone, name).await, ["\"token-two\""]);
    d.clear("*.mqtt.home.example.test", "token-two")
        .await
        .unwrap();
    assert!(txt(&c, &zone, name).await.is_empty());
    d.clear("mqtt.home.example.test", "token-two")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_hosted_zone_id_is_used() {
    let moto = Moto::start();
    let c = admin(&moto);
    let zone = create_zone(&c, "example.test").await;
    let d = route53(&moto, Some(&format!("/hostedzone/{zone}")));
    d.publish("mqtt.example.test", "v").await.unwrap();
    assert_eq!(
        txt(&c, &zone, "_acme-challenge.mqtt.example.test").await,
        ["\"v\""]
    );
    d.clear("mqtt.example.test", "v").await.unwrap();
    assert!(txt(&c, &zone, "_acme-challenge.mqtt.example.test")
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_in_no_hosted_zone_is_named() {
    let moto = Moto::start();
    create_zone(&admin(&moto), "example.test").await;
    let d = route53(&moto, None);
    let e = d
        .publish("mqtt.nowhere.test", "v")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "route53: no hosted zone holds _acme-challenge.mqtt.nowhere.test (tried mqtt.nowhere.test, nowhere.test); set hostedZoneId"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_hosted_zone_is_reported_with_the_apis_error() {
    let moto = Moto::start();
    let d = route53(&moto, Some("ZNOSUCHZONE"));
    let e = d
        .publish("mqtt.example.test", "v")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "route53: reading TXT _acme-challenge.mqtt.example.test in hosted zone ZNOSUCHZONE: "
        ) && e.contains("NoSuchHostedZone"),
        "{e}"
    );
}

#[test]
fn half_a_key_pair_is_refused() {
    let solver = Dns01Solver {
        route53: Some(Route53Provider {
            access_key_id_secret_ref: Some(SecretKeyRef {
                name: "aws".into(),
                key: "id".into(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = Dns01::new(&solver, &secrets(&[("aws", "id", "AKIA")])).unwrap_err();
    assert!(
        matches!(err, Error::Route53(route53::Error::HalfCredentials)),
        "{err:?}"
    );
    let e = err.to_string();
    assert_eq!(e, "route53: set both accessKeyIdSecretRef and secretAccessKeySecretRef, or neither to use the AWS credential chain");
}
