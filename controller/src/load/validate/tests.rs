use super::formats::go_duration;
use super::*;

fn warnings_of(yaml: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("broker.yaml"), yaml).expect("write");
    let res = super::super::load(dir.path(), None).expect("a valid folder");
    warnings(&res)
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn anonymous_access_that_can_do_nothing_is_a_warning() {
    let broker = |extra: &str| {
        format!(
            "apiVersion: edgemq.io/v1alpha1\nkind: Broker\nmetadata: {{name: b}}\n\
             spec:\n  listeners: [{{name: m, port: 1883}}]\n{extra}"
        )
    };
    let w = warnings_of(&broker("  allowAnonymous: true\n"));
    assert!(w.contains("broker.yaml:6"), "{w}");
    assert!(
        w.contains("can neither publish nor receive anything"),
        "{w}"
    );
    let deny_only = "  allowAnonymous: true\n  anonymousAcl: [{topic: '#', access: deny}]\n";
    assert!(!warnings_of(&broker(deny_only)).is_empty());
    let user_pattern = "  allowAnonymous: true\n  aclPatterns: [{topic: 'u/%u/#'}]\n";
    assert!(!warnings_of(&broker(user_pattern)).is_empty());
    for fine in [
        "",
        "  allowAnonymous: true\n  aclEnabled: false\n",
        "  allowAnonymous: true\n  anonymousAcl: [{topic: 'public/#', access: read}]\n",
        "  allowAnonymous: true\n  aclPatterns: [{topic: 'c/%c/#'}]\n",
    ] {
        assert_eq!(warnings_of(&broker(fine)), "", "{fine}");
    }
}

#[test]
fn plaintext_bridge_credentials_go_only_to_loopback_unless_spelled_out() {
    let folder = |remote: &str| {
        format!(
            "apiVersion: edgemq.io/v1alpha1\nkind: Broker\nmetadata: {{name: home}}\n\
             spec:\n  listeners: [{{name: m, port: 1883}}]\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: login}}\n\
             stringData: {{username: u, password: p}}\n---\n\
             apiVersion: edgemq.io/v1alpha1\nkind: Bridge\nmetadata: {{name: up}}\n\
             spec:\n  brokerRef: home\n  topics: [{{pattern: '#', direction: out}}]\n\
             \x20 remote:\n    passwordSecretRef: {{name: login, key: password}}\n{remote}"
        )
    };
    let errors = |remote: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("home.yaml"), folder(remote)).expect("write");
        match super::super::load(dir.path(), None) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let e = errors("    address: mqtt.example.net:1883\n");
    assert!(e.contains("home.yaml:19"), "{e}");
    assert!(e.contains("Bridge") && e.contains("up"), "{e}");
    assert!(
        e.contains("passwordSecretRef would go in plain text to mqtt.example.net:1883"),
        "{e}"
    );
    assert!(e.contains("insecurePlaintextCredentials: true"), "{e}");
    for fine in [
        "    address: 127.0.0.1:1883\n",
        "    address: localhost:1883\n",
        "    address: mqtt.example.net:8883\n    tls: {}\n",
        "    address: mqtt.example.net:1883\n    insecurePlaintextCredentials: true\n",
    ] {
        assert_eq!(errors(fine), "", "{fine}");
    }
}

#[test]
fn client_auth_needs_one_ca_and_certificate_users_no_password() {
    let errors = |listener_tls: &str, user: &str| {
        let yaml = format!(
            "apiVersion: edgemq.io/v1alpha1\nkind: Broker\nmetadata: {{name: home}}\n\
             spec:\n  listeners:\n    - name: d\n      port: 8883\n      tls: {listener_tls}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: ca}}\nstringData: {{ca.crt: x}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: t}}\ntype: kubernetes.io/tls\n\
             stringData: {{tls.crt: x, tls.key: y}}\n---\n\
             apiVersion: edgemq.io/v1alpha1\nkind: MqttUser\nmetadata: {{name: dev}}\n\
             spec: {{brokerRef: home, {user}}}\n"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("home.yaml"), yaml).expect("write");
        match super::super::load(dir.path(), None) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let ok_tls = "{secretRef: t, clientAuth: {caSecretRef: {name: ca, key: ca.crt}}}";
    assert_eq!(errors(ok_tls, "certificateIdentity: dev-1"), "");
    let e = errors(
        "{secretRef: t, clientAuth: {}}",
        "certificateIdentity: dev-1",
    );
    assert!(
        e.contains("home.yaml:8")
            && e.contains("set exactly one of caCertificateRef and caSecretRef"),
        "{e}"
    );
    let e = errors(
        "{secretRef: t, clientAuth: {caSecretRef: {name: nope, key: ca.crt}}}",
        "certificateIdentity: dev-1",
    );
    assert!(e.contains("nope"), "{e}");
    let e = errors(ok_tls, "certificateIdentity: dev-1, passwordHash: '$7$x'");
    assert!(
        e.contains("set exactly one of passwordSecretRef, passwordHash and certificateIdentity"),
        "{e}"
    );
    let e = errors(ok_tls, "certificateIdentity: dev-1, username: other");
    assert!(e.contains("username is its certificateIdentity"), "{e}");
}

#[test]
fn acl_filters_follow_mqtt_and_mosquitto_rules() {
    assert!(filter_error("a/+/b/#", false).is_none());
    assert!(filter_error("a/#/b", false).is_some());
    assert!(filter_error("a+", false).is_some());
    assert!(filter_error("devices/%u/#", false).is_some());
    assert!(filter_error("devices/%u/#", true).is_none());
    assert!(filter_error("devices/x%u/#", true).is_some());
    assert!(filter_error("a\nb", false).is_some());
}

/// Errors of a folder holding one file, as text.
fn errors_of(yaml: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("certs.yaml"), yaml).expect("write");
    match super::super::load(dir.path(), None) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

fn acme_cert(name: &str, extra_spec: &str, acme: &str) -> String {
    format!(
        "apiVersion: edgemq.io/v1alpha1\nkind: Certificate\nmetadata: {{name: {name}}}\n\
         spec:\n  dnsNames: [mqtt.example.org]\n{extra_spec}  issuer:\n    acme:\n      \
         server: https://acme.example.org/dir\n{acme}"
    )
}

#[test]
fn acme_rules_that_cel_checks_in_a_cluster_are_checked_in_files_too() {
    let both = acme_cert(
        "both",
        "",
        "      solver: {http01: {}, dns01: {exec: {command: [x]}}}\n",
    );
    let none = acme_cert("none", "", "      solver: {}\n");
    let two_providers = acme_cert(
        "two-providers",
        "",
        "      solver: {dns01: {exec: {command: [x]}, cloudflare: {apiTokenSecretRef: {name: cf, key: t}}}}\n",
    );
    let ip = acme_cert(
        "ip",
        "  ipAddresses: [\"192.0.2.1\"]\n  privateKey: {algorithm: RSA}\n",
        "      solver: {http01: {bindAddress: not-an-ip}}\n      caBundleSecretRef: {name: missing, key: ca.crt}\n",
    );
    let good = acme_cert("good", "", "      solver: {http01: {port: 8080}}\n");
    let e = errors_of(&[both, none, two_providers, ip, good].join("---\n"));
    for want in [
        "certs.yaml:9: Certificate/both: set exactly one of dns01 and http01",
        "certs.yaml:19: Certificate/none: set exactly one of dns01 and http01",
        "certs.yaml:29: Certificate/two-providers: set exactly one DNS provider",
        "certs.yaml:36: Certificate/ip: the acme issuer does not issue certificates for IP addresses",
        "certs.yaml:41: Certificate/ip: bindAddress `not-an-ip` is not an IP address",
        "certs.yaml:42: Certificate/ip: Secret `missing` not found",
    ] {
        assert!(e.contains(want), "missing `{want}` in:\n{e}");
    }
    assert!(!e.contains("Certificate/good"), "{e}");
    assert!(!e.contains("RSA"), "RSA keys are accepted: {e}");
}

#[test]
fn aws_credentials_secret_must_exist_with_both_keys() {
    let cert = |name: &str, secret: &str| {
        format!(
            "apiVersion: edgemq.io/v1alpha1\nkind: Certificate\nmetadata: {{name: {name}}}\n\
             spec:\n  issuer:\n    awsIot:\n      region: eu-west-1\n      thingName: gw\n      \
             credentialsSecretRef: {secret}\n"
        )
    };
    let keys = "apiVersion: v1\nkind: Secret\nmetadata: {name: keys}\n\
                stringData: {AWS_ACCESS_KEY_ID: a, AWS_SECRET_ACCESS_KEY: s}\n";
    let half = "apiVersion: v1\nkind: Secret\nmetadata: {name: half}\n\
                stringData: {AWS_ACCESS_KEY_ID: a}\n";
    let e = errors_of(
        &[
            cert("good", "keys"),
            cert("gone", "missing"),
            cert("partial", "half"),
            keys.into(),
            half.into(),
        ]
        .join("---\n"),
    );
    assert!(
        e.contains("Certificate/gone: Secret `missing` not found"),
        "{e}"
    );
    assert!(
        e.contains("Certificate/partial: Secret `half` has no key `AWS_SECRET_ACCESS_KEY`"),
        "{e}"
    );
    assert!(!e.contains("Certificate/good"), "{e}");
}

#[test]
fn durations_and_addresses() {
    assert!(go_duration("2160h") && go_duration("1h30m") && go_duration("2.5h"));
    assert!(!go_duration("") && !go_duration("90d") && !go_duration("h"));
    assert!(host_port("a.example.com:8883") && !host_port("a:0") && !host_port("a"));
}
