//! The AWS IoT issuer against moto's server (an AWS API emulator started per test on a
//! free loopback port): create, status, policy updates, rotation, deletion, Retain,
//! Secrets Manager store and import, and the refusal of a certificate for a foreign key.
//!
//! moto_server comes with `pip install 'moto[server]'` (scripts/install-peers.sh).
//! Missing, it fails the test with that hint.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use edgemq::api::{Bridge, Certificate};
use edgemq::aws::{policy, Clients, Target};
use edgemq::certs::{awsiot, cert_dir};

struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

static ENV: Once = Once::new();

/// Starts moto_server; panics with the package to install when it is missing.
fn moto() -> Moto {
    ENV.call_once(|| {
        // Dummy credentials through the standard chain's first link; no profile files.
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/edgemq-test");
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/edgemq-test");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    });
    let port = free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("moto_server not found: install it with pip install 'moto[server]' (scripts/install-peers.sh): {e}")
        });
    let m = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    m
}

fn certificate(yaml_issuer: &str, url: &str, extra: &str) -> Certificate {
    let yaml = format!(
        "apiVersion: edgemq.io/v1alpha1\nkind: Certificate\nmetadata: {{name: aws-home, namespace: default}}\nspec:\n{extra}  issuer:\n    awsIot:\n      region: eu-west-1\n      endpointUrl: {url}\n{yaml_issuer}"
    );
    serde_yaml::from_str(&yaml).unwrap()
}

fn bridge(yaml_topics: &str) -> Bridge {
    let yaml = format!(
        "apiVersion: edgemq.io/v1alpha1\nkind: Bridge\nmetadata: {{name: to-aws, namespace: default}}\nspec:\n  brokerRef: home\n  remote:\n    awsIotEndpoint: {{certificateRef: aws-home}}\n    tls: {{clientCertificateRef: aws-home}}\n  topics:\n{yaml_topics}"
    );
    serde_yaml::from_str(&yaml).unwrap()
}

async fn clients(url: &str) -> Clients {
    Clients::new(
        &Target {
            region: Some("eu-west-1".into()),
            endpoint_url: Some(url.into()),
        },
        None,
    )
    .await
    .unwrap()
}

/// Everything moto holds that edgemq could have made: things, certificates (id and
/// status), policies, secrets.
#[derive(Debug, PartialEq, Eq)]
struct Inventory {
    things: Vec<String>,
    certificates: Vec<(String, String)>,
    policies: Vec<String>,
    secrets: Vec<String>,
}

async fn inventory(c: &Clients) -> Inventory {
    let things = c.iot.list_things().send().await.unwrap();
    let certs = c.iot.list_certificates().send().await.unwrap();
    let policies = c.iot.list_policies().send().await.unwrap();
    let secrets = c.secrets.list_secrets().send().await.unwrap();
    let mut inv = Inventory {
        things: things
            .things()
            .iter()
            .filter_map(|t| t.thing_name.clone())
            .collect(),
        certificates: certs
            .certificates()
            .iter()
            .map(|c| {
                (
                    c.certificate_id.clone().unwrap_or_default(),
                    c.status
                        .as_ref()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                )
            })
            .collect(),
        policies: policies
            .policies()
            .iter()
            .filter_map(|p| p.policy_name.clone())
            .collect(),
        secrets: secrets
            .secret_list()
            .iter()
            .filter_map(|s| s.name.clone())
            .collect(),
    };
    inv.certificates.sort();
    inv
}

async fn attached(c: &Clients, arn: &str) -> (Vec<String>, Vec<String>) {
    let policies = c
        .iot
        .list_attached_policies()
        .target(arn)
        .send()
        .await
        .unwrap()
        .policies()
        .iter()
        .filter_map(|p| p.policy_name.clone())
        .collect();
    let things = c
        .iot
        .list_principal_things()
        .principal(arn)
        .send()
        .await
        .unwrap()
        .things()
        .to_vec();
    (policies, things)
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn read(dir: &Path, f: &str) -> String {
    std::fs::read_to_string(dir.join(f)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_lifecycle_with_aws_made_keys() {
    let m = moto();
    let state = tempfile::tempdir().unwrap();
    let cert = certificate(
        "      thingName: home-gw\n      keyOrigin: AWS\n",
        &m.url,
        "  deletionPolicy: Delete\n",
    );
    let b = bridge("    - {pattern: 'sensors/#', direction: out, remotePrefix: home/}\n");
    let bridges = policy::bridges_using(&cert, [&b]);
    let c = clients(&m.url).await;

    // Create: thing, certificate, policy, attachments, endpoint, files.
    let issued = awsiot::ensure(state.path(), &cert, &bridges, None, now())
        .await
        .unwrap();
    let aws = issued.info.aws_iot.clone().unwrap();
    assert!(aws
        .certificate_arn
        .ends_with(&format!("cert/{}", aws.certificate_id)));
    assert!(
        aws.endpoint.contains("-ats.iot.eu-west-1."),
        "{}",
        aws.endpoint
    );
    assert_eq!(aws.thing_name, "home-gw");
    assert_eq!(aws.policy_name, "edgemq-home-gw-aws-home");
    let doc = aws.policy_document.clone().unwrap();
    assert!(doc.contains("topic/home/sensors/*"), "{doc}");
    let inv = inventory(&c).await;
    assert_eq!(inv.things, vec!["home-gw"]);
    assert_eq!(
        inv.certificates,
        vec![(aws.certificate_id.clone(), "ACTIVE".to_string())]
    );
    assert_eq!(inv.policies, vec![aws.policy_name.clone()]);
    assert_eq!(
        attached(&c, &aws.certificate_arn).await,
        (vec![aws.policy_name.clone()], vec!["home-gw".to_string()])
    );
    let in_aws = c
        .iot
        .get_policy()
        .policy_name(&aws.policy_name)
        .send()
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(in_aws.policy_document().unwrap()).unwrap(),
        serde_json::from_str::<serde_json::Value>(&doc).unwrap()
    );
    let dir = cert_dir(state.path(), &cert);
    assert_eq!(read(&dir, "endpoint"), aws.endpoint);
    assert_eq!(read(&dir, "tls.crt"), issued.material.cert_pem);
    assert_eq!(read(&dir, "tls.key"), issued.material.key_pem);
    assert!(read(&dir, "ca.crt").contains("BEGIN CERTIFICATE"));
    awsiot::keys_match(&issued.material).unwrap();

    // Unchanged: the same certificate.
    let again = awsiot::ensure(state.path(), &cert, &bridges, None, now())
        .await
        .unwrap();
    assert_eq!(again.material, issued.material);
    assert_eq!(again.info.aws_iot, issued.info.aws_iot);

    // A Bridge rule added: the policy gets a new default version with it.
    let b2 = bridge(
        "    - {pattern: 'sensors/#', direction: out, remotePrefix: home/}\n    - {pattern: 'commands/#', direction: in}\n",
    );
    let bridges2 = policy::bridges_using(&cert, [&b2]);
    let updated = awsiot::ensure(state.path(), &cert, &bridges2, None, now())
        .await
        .unwrap();
    let doc2 = updated
        .info
        .aws_iot
        .clone()
        .unwrap()
        .policy_document
        .unwrap();
    assert!(doc2.contains("topicfilter/commands/#"), "{doc2}");
    let in_aws = c
        .iot
        .get_policy()
        .policy_name(&aws.policy_name)
        .send()
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(in_aws.policy_document().unwrap()).unwrap(),
        serde_json::from_str::<serde_json::Value>(&doc2).unwrap()
    );
    assert_eq!(updated.material, issued.material);

    // Rotation: a new certificate, attached; the old one stays until the next ensure
    // (the bridge switches over in between), then it is gone.
    let rotated = awsiot::rotate(state.path(), &cert, &bridges2, None, now())
        .await
        .unwrap();
    let new = rotated.info.aws_iot.clone().unwrap();
    assert_ne!(new.certificate_id, aws.certificate_id);
    assert_ne!(rotated.material, issued.material);
    assert_eq!(read(&dir, "tls.crt"), rotated.material.cert_pem);
    assert_eq!(
        attached(&c, &new.certificate_arn).await,
        (vec![aws.policy_name.clone()], vec!["home-gw".to_string()])
    );
    assert_eq!(inventory(&c).await.certificates.len(), 2);
    let after = awsiot::ensure(state.path(), &cert, &bridges2, None, now())
        .await
        .unwrap();
    assert_eq!(after.material, rotated.material);
    assert_eq!(
        inventory(&c).await.certificates,
        vec![(new.certificate_id.clone(), "ACTIVE".to_string())]
    );

    // Deletion: nothing left in AWS, nor in the state directory.
    let deleted = awsiot::delete(&dir, None).await.unwrap();
    assert!(!deleted.actions.is_empty());
    assert_eq!(
        inventory(&c).await,
        Inventory {
            things: vec![],
            certificates: vec![],
            policies: vec![],
            secrets: vec![],
        }
    );
    assert!(!dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_leaves_everything_in_aws() {
    let m = moto();
    let state = tempfile::tempdir().unwrap();
    let cert = certificate(
        "      thingName: home-gw\n      keyOrigin: AWS\n",
        &m.url,
        "  deletionPolicy: Retain\n",
    );
    let c = clients(&m.url).await;
    let issued = awsiot::ensure(state.path(), &cert, &[], None, now())
        .await
        .unwrap();
    let aws = issued.info.aws_iot.unwrap();
    // Without Bridges the generated policy lets the thing connect and nothing else.
    let doc: serde_json::Value = serde_json::from_str(&aws.policy_document.unwrap()).unwrap();
    assert_eq!(doc["Statement"].as_array().unwrap().len(), 1);
    let before = inventory(&c).await;
    let dir = cert_dir(state.path(), &cert);
    let deleted = awsiot::delete(&dir, None).await.unwrap();
    assert!(deleted.actions.is_empty());
    assert_eq!(inventory(&c).await, before);
    assert_eq!(
        attached(&c, &aws.certificate_arn).await,
        (vec![aws.policy_name.clone()], vec!["home-gw".to_string()])
    );
    assert!(dir.join("tls.key").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_a_key_other_than_the_local_one_is_refused() {
    let m = moto();
    let state = tempfile::tempdir().unwrap();
    // Default key origin: a local key and a CSR. moto signs a key of its own instead.
    let cert = certificate("      thingName: home-gw\n", &m.url, "");
    let c = clients(&m.url).await;
    let err = awsiot::ensure(state.path(), &cert, &[], None, now())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("CreateCertificateFromCsr"), "{err}");
    assert!(err.contains("does not match the private key"), "{err}");
    assert!(err.contains("deactivated and deleted"), "{err}");
    // Nothing handed out, and the refused certificate is not left active in AWS.
    let dir = cert_dir(state.path(), &cert);
    assert!(!dir.join("tls.crt").exists());
    assert_eq!(inventory(&c).await.certificates, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_store_and_import() {
    let m = moto();
    let c = clients(&m.url).await;

    // Store: the issued pair lands in the named secret.
    let state = tempfile::tempdir().unwrap();
    let cert = certificate(
        "      thingName: home-gw\n      keyOrigin: AWS\n      storeInSecret: {secretId: edgemq/home-gw}\n",
        &m.url,
        "  deletionPolicy: Delete\n",
    );
    let issued = awsiot::ensure(state.path(), &cert, &[], None, now())
        .await
        .unwrap();
    let secret = c
        .secrets
        .get_secret_value()
        .secret_id("edgemq/home-gw")
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(secret.secret_string().unwrap()).unwrap();
    assert_eq!(v["certificatePem"], issued.material.cert_pem.as_str());
    assert_eq!(v["privateKey"], issued.material.key_pem.as_str());
    assert_eq!(
        v["certificateId"],
        issued
            .info
            .aws_iot
            .as_ref()
            .unwrap()
            .certificate_id
            .as_str()
    );

    // Import: a certificate made elsewhere (as `aws iot create-keys-and-certificate`
    // prints it), kept in a secret.
    let made = c
        .iot
        .create_keys_and_certificate()
        .set_as_active(true)
        .send()
        .await
        .unwrap();
    let body = serde_json::json!({
        "certificateArn": made.certificate_arn(),
        "certificateId": made.certificate_id(),
        "certificatePem": made.certificate_pem(),
        "keyPair": {
            "PublicKey": made.key_pair().unwrap().public_key(),
            "PrivateKey": made.key_pair().unwrap().private_key(),
        }
    });
    c.secrets
        .create_secret()
        .name("terraform/gw2")
        .secret_string(body.to_string())
        .send()
        .await
        .unwrap();
    let state2 = tempfile::tempdir().unwrap();
    let imp = certificate(
        "      thingName: gw2\n      importFrom: {secretId: terraform/gw2}\n",
        &m.url,
        "  deletionPolicy: Delete\n",
    );
    let got = awsiot::ensure(state2.path(), &imp, &[], None, now())
        .await
        .unwrap();
    assert_eq!(got.material.cert_pem, made.certificate_pem().unwrap());
    let arn = made.certificate_arn().unwrap();
    assert_eq!(got.info.aws_iot.as_ref().unwrap().certificate_arn, arn);
    assert_eq!(
        attached(&c, arn).await,
        (
            vec!["edgemq-gw2-aws-home".to_string()],
            vec!["gw2".to_string()]
        )
    );
    // Deleting an imported certificate's Certificate detaches it but leaves it to its
    // maker, active.
    awsiot::delete(&cert_dir(state2.path(), &imp), None)
        .await
        .unwrap();
    assert_eq!(attached(&c, arn).await, (vec![], vec![]));
    let left = inventory(&c).await;
    assert!(left
        .certificates
        .contains(&(made.certificate_id().unwrap().to_string(), "ACTIVE".into())));
    assert!(!left.things.contains(&"gw2".to_string()));

    // The first one's deletion also schedules its secret for deletion.
    awsiot::delete(&cert_dir(state.path(), &cert), None)
        .await
        .unwrap();
    let left = inventory(&c).await;
    assert_eq!(left.secrets, vec!["terraform/gw2".to_string()]);
    assert_eq!(left.things, Vec::<String>::new());

    // A secret whose key is not the certificate's is refused.
    let other = c
        .iot
        .create_keys_and_certificate()
        .set_as_active(true)
        .send()
        .await
        .unwrap();
    let bad = serde_json::json!({
        "certificatePem": made.certificate_pem(),
        "privateKey": other.key_pair().unwrap().private_key(),
    });
    c.secrets
        .create_secret()
        .name("bad/gw3")
        .secret_string(bad.to_string())
        .send()
        .await
        .unwrap();
    let state3 = tempfile::tempdir().unwrap();
    let wrong = certificate(
        "      thingName: gw3\n      importFrom: {secretId: bad/gw3}\n",
        &m.url,
        "",
    );
    let err = awsiot::ensure(state3.path(), &wrong, &[], None, now())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not belong to the private key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_errors_name_the_operation_and_code() {
    let m = moto();
    let state = tempfile::tempdir().unwrap();
    let cert = certificate(
        "      thingName: home-gw\n      keyOrigin: AWS\n      thingTypeName: no-such-type\n",
        &m.url,
        "",
    );
    let err = awsiot::ensure(state.path(), &cert, &[], None, now())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("AWS IoT CreateThing failed"), "{err}");
    assert!(err.contains("ResourceNotFoundException"), "{err}");

    // A named policy is attached as is, and left in place on deletion.
    let c = clients(&m.url).await;
    c.iot
        .create_policy()
        .policy_name("fleet")
        .policy_document(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}"#)
        .send()
        .await
        .unwrap();
    let named = certificate(
        "      thingName: home-gw\n      keyOrigin: AWS\n      policyName: fleet\n",
        &m.url,
        "  deletionPolicy: Delete\n",
    );
    let issued = awsiot::ensure(state.path(), &named, &[], None, now())
        .await
        .unwrap();
    let aws = issued.info.aws_iot.unwrap();
    assert_eq!(aws.policy_document, None);
    assert_eq!(attached(&c, &aws.certificate_arn).await.0, vec!["fleet"]);
    awsiot::delete(&cert_dir(state.path(), &named), None)
        .await
        .unwrap();
    let left = inventory(&c).await;
    assert_eq!(left.policies, vec!["fleet"]);
    assert_eq!(left.certificates, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_endpoint_replaces_the_discovered_one_and_back() {
    let m = moto();
    let state = tempfile::tempdir().unwrap();
    let standin = certificate(
        "      thingName: home-gw\n      keyOrigin: AWS\n      dataEndpoint: localhost:18883\n",
        &m.url,
        "",
    );
    let issued = awsiot::ensure(state.path(), &standin, &[], None, now())
        .await
        .unwrap();
    let dir = cert_dir(state.path(), &standin);
    assert_eq!(read(&dir, "endpoint"), "localhost:18883");
    assert_eq!(
        issued.info.aws_iot.unwrap().endpoint,
        "localhost:18883".to_string()
    );
    // Without the override the account's endpoint is discovered; same certificate.
    let real = certificate(
        "      thingName: home-gw\n      keyOrigin: AWS\n",
        &m.url,
        "",
    );
    let local = awsiot::cached(state.path(), &real, &[], now()).unwrap();
    assert!(local.needs_aws);
    let again = awsiot::ensure(state.path(), &real, &[], None, now())
        .await
        .unwrap();
    assert_eq!(again.material, issued.material);
    assert!(read(&dir, "endpoint").ends_with("-ats.iot.eu-west-1.amazonaws.com"));
    assert!(
        !awsiot::cached(state.path(), &real, &[], now())
            .unwrap()
            .needs_aws
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_thing_gets_its_type_and_group() {
    let m = moto();
    let c = clients(&m.url).await;
    c.iot
        .create_thing_type()
        .thing_type_name("gateway")
        .send()
        .await
        .unwrap();
    c.iot
        .create_thing_group()
        .thing_group_name("homes")
        .send()
        .await
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let cert = certificate(
        "      thingName: home-gw\n      keyOrigin: AWS\n      thingTypeName: gateway\n      thingGroupName: homes\n",
        &m.url,
        "  deletionPolicy: Delete\n",
    );
    awsiot::ensure(state.path(), &cert, &[], None, now())
        .await
        .unwrap();
    let thing = c
        .iot
        .describe_thing()
        .thing_name("home-gw")
        .send()
        .await
        .unwrap();
    assert_eq!(thing.thing_type_name(), Some("gateway"));
    let members = c
        .iot
        .list_things_in_thing_group()
        .thing_group_name("homes")
        .send()
        .await
        .unwrap();
    assert_eq!(members.things(), ["home-gw".to_string()]);
    awsiot::delete(&cert_dir(state.path(), &cert), None)
        .await
        .unwrap();
    let left = inventory(&c).await;
    assert_eq!((left.things.len(), left.certificates.len()), (0, 0));
}
