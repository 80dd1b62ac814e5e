//! Unit tests of the mapping: directives and file contents in, objects and losses out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::api::bridge::{BridgeDirection, MqttVersion};
use crate::api::Access;
use crate::import::mosquitto::conf::parse_conf;

const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";
const HASH: &str = "$7$101$qKSz0fyQacdTZ9HB$If/JbDtgTExFDBNmWitmhEReV5nR415+Z0sGyz5/w3xtjXLmRigZrJPRATCjNC+TE2hwhkAwJuKCX/NjaVU4kw==";

fn conf_path() -> PathBuf {
    PathBuf::from("/etc/mosquitto/mosquitto.conf")
}

/// Maps `conf` with the given files (paths relative to /etc/mosquitto).
fn run(conf: &str, files: &[(&str, &str)]) -> Result<Imported, ImportError> {
    let directives = parse_conf(conf, &conf_path());
    let files: BTreeMap<PathBuf, Vec<u8>> = files
        .iter()
        .map(|(p, t)| (Path::new("/etc/mosquitto").join(p), t.as_bytes().to_vec()))
        .collect();
    map(&Input {
        directives: &directives,
        files: &files,
        broker: "home",
        conf: &conf_path(),
    })
}

fn ok(conf: &str, files: &[(&str, &str)]) -> Imported {
    run(conf, files).unwrap_or_else(|e| panic!("{e}"))
}

fn losses(i: &Imported) -> Vec<String> {
    i.losses.iter().map(ToString::to_string).collect()
}

const HOME: &str = "\
per_listener_settings false
allow_anonymous true
password_file passwd
acl_file acl
persistence true
max_queued_messages 5000
message_size_limit 65536
listener 1883
listener 8883 127.0.0.1
certfile certs/server.crt
keyfile certs/server.key
listener 8083
protocol websockets
certfile certs/server.crt
keyfile certs/server.key
";

const ACL: &str = "\
topic read public/#
user alice
topic alice/#
topic deny alice/secret
user Bob.Smith
topic write cmd/#
pattern readwrite devices/%u/#
pattern read clients/%c/status
";

fn home() -> Imported {
    ok(
        HOME,
        &[
            ("passwd", &format!("alice:{HASH}\nBob.Smith:{HASH}\n")),
            ("acl", ACL),
            ("certs/server.crt", CERT),
            ("certs/server.key", KEY),
        ],
    )
}

#[test]
fn listeners_users_and_acl_carry_over_with_mosquittos_meaning() {
    let i = home();
    assert_eq!(losses(&i), Vec::<String>::new());
    let b = &i.broker.object.spec;
    let ls: Vec<_> = b
        .listeners
        .iter()
        .map(|l| {
            (
                l.name.as_str(),
                l.port,
                l.bind_address.as_deref(),
                l.protocol,
                l.tls.as_ref().and_then(|t| t.secret_ref.as_deref()),
            )
        })
        .collect();
    assert_eq!(
        ls,
        [
            ("mqtt-1883", 1883, None, ListenerProtocol::Mqtt, None),
            (
                "mqtts-8883",
                8883,
                Some("127.0.0.1"),
                ListenerProtocol::Mqtt,
                Some("tls-8883")
            ),
            (
                "wss-8083",
                8083,
                None,
                ListenerProtocol::Websockets,
                Some("tls-8883")
            ),
        ]
    );
    // One Secret for the key pair both listeners serve.
    assert_eq!(i.secrets.len(), 1);
    let s = &i.secrets[0].object;
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = s.string_data.as_ref().expect("data");
    assert_eq!(
        (data["tls.crt"].as_str(), data["tls.key"].as_str()),
        (CERT, KEY)
    );

    assert!(b.allow_anonymous && b.acl_enabled);
    assert_eq!(b.anonymous_acl, [rule("public/#", Access::Read)]);
    assert_eq!(
        b.acl_patterns,
        [
            rule("devices/%u/#", Access::Readwrite),
            rule("clients/%c/status", Access::Read)
        ]
    );
    assert!(b.persistence.as_ref().is_some_and(|p| p.enabled));
    assert_eq!(b.limits.max_queued_messages, 5000);
    assert_eq!(b.limits.max_payload_bytes, 65536);

    let users: Vec<_> = i
        .users
        .iter()
        .map(|u| {
            (
                u.object.metadata.name.clone().unwrap_or_default(),
                u.object.username(),
                u.object.spec.password_hash.clone(),
                u.object.spec.acl.clone(),
            )
        })
        .collect();
    assert_eq!(
        users,
        [
            (
                "alice".into(),
                "alice".into(),
                Some(HASH.into()),
                vec![
                    rule("alice/#", Access::Readwrite),
                    rule("alice/secret", Access::Deny)
                ]
            ),
            (
                "bob-smith".into(),
                "Bob.Smith".into(),
                Some(HASH.into()),
                vec![rule("cmd/#", Access::Write)]
            ),
        ]
    );
    assert_eq!(i.users[0].origin, "/etc/mosquitto/passwd:1");
}

fn rule(topic: &str, access: Access) -> crate::api::AclRule {
    crate::api::AclRule {
        topic: topic.into(),
        access,
    }
}

#[test]
fn without_an_acl_file_every_user_may_use_every_topic_and_defaults_are_mosquittos() {
    let i = ok("listener 1883\npassword_file passwd\n", &[("passwd", "")]);
    let b = &i.broker.object.spec;
    assert!(!b.acl_enabled && !b.allow_anonymous);
    assert_eq!(b.limits.max_queued_messages, 1000);
    assert!(i.notes.iter().any(|n| n.reason.contains("256 MiB")));
}

#[test]
fn what_edgemq_cannot_say_is_listed_with_its_place() {
    let conf = "listener 1883\nauth_plugin /usr/lib/x.so\nauth_opt_db x\nuser mosquitto\n\
                log_dest syslog\nlistener 8883\ncertfile c\nkeyfile k\nrequire_certificate true\n\
                use_identity_as_username true\nmax_keepalive 60\nretain_available true\nfoo_bar 1\n";
    let i = ok(conf, &[("c", CERT), ("k", KEY)]);
    let f = "/etc/mosquitto/mosquitto.conf";
    let got = losses(&i);
    for want in [
        format!("{f}:2: `auth_plugin /usr/lib/x.so`: plugins do not exist"),
        format!("{f}:3: `auth_opt_db ***`: plugin options"),
        format!("{f}:4: `user mosquitto`: edgemq runs as the user"),
        format!("{f}:5: `log_dest syslog`: edgemq logs to standard error"),
        format!("{f}:9: `require_certificate true`: the import does not carry client certificate authentication yet; write the listener's tls.clientAuth by hand"),
        format!("{f}:10: `use_identity_as_username true`: the import does not carry client certificate"),
        format!("{f}:11: `max_keepalive 60`: "),
        format!("{f}:13: `foo_bar 1`: not a Mosquitto 2.0 option"),
    ] {
        assert!(got.iter().any(|l| l.starts_with(&want)), "{want}\nin {got:#?}");
    }
    // retain_available true is Mosquitto's default: nothing lost.
    assert_eq!(got.len(), 8, "{got:#?}");
}

#[test]
fn acl_rules_edgemq_would_read_differently_are_losses() {
    let i = ok(
        "listener 1883\npassword_file p\nacl_file a\n",
        &[
            ("p", &format!("alice:{HASH}\n")),
            (
                "a",
                "user alice\ntopic %u/x\npattern a/%u-x/#\npattern ok/%u\n",
            ),
        ],
    );
    let got = losses(&i);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(got[0].starts_with("/etc/mosquitto/a:2: `%u/x`"), "{got:#?}");
    assert!(
        got[1].starts_with("/etc/mosquitto/a:3: `a/%u-x/#`"),
        "{got:#?}"
    );
    assert_eq!(
        i.broker.object.spec.acl_patterns,
        [rule("ok/%u", Access::Readwrite)]
    );
    assert!(i.users[0].object.spec.acl.is_empty());
}

#[test]
fn malformed_lines_stop_the_import_and_name_their_place() {
    for (conf, want) in [
        (
            "listener abc\n",
            "mosquitto.conf:1: listener: expects a port number",
        ),
        (
            "allow_anonymous yes\n",
            ":1: allow_anonymous: expects true or false",
        ),
        (
            "listener 1\ntopic # out\n",
            ":2: topic: a bridge option before any `connection`",
        ),
        (
            "listener 1\ncertfile c\n",
            ":2: certfile: certfile and keyfile must both be set",
        ),
        (
            "listener 1\nprotocol ws\n",
            ":2: protocol: expects mqtt or websockets",
        ),
        (
            "connection x\ntopic #\n",
            ":1: connection: a connection without an address",
        ),
        (
            "connection x\naddress h\ntopic # sideways\n",
            ":3: topic: direction must be in, out or both",
        ),
    ] {
        let e = run(conf, &[("c", CERT)]).expect_err(conf).to_string();
        assert!(e.contains(want), "{conf:?}: {e}");
    }
    let e = run(
        "listener 1\ncertfile c\nkeyfile k\n",
        &[("c", "junk"), ("k", KEY)],
    )
    .expect_err("junk cert")
    .to_string();
    assert!(
        e.starts_with("/etc/mosquitto/c: no PEM block with CERTIFICATE")
            && e.contains("mosquitto.conf:2"),
        "{e}"
    );
}

const BRIDGE: &str = "\
listener 1883
connection Cloud Server
address mqtt.example.net:8883
remote_username site-a
remote_password s3cret-pw
remote_clientid site-a
cleansession true
keepalive_interval 30
bridge_protocol_version mqttv50
bridge_cafile ca.crt
bridge_certfile client.crt
bridge_keyfile client.key
topic sensors/# out 1 \"\" home/
topic commands/# in 2
topic sync/#  both
notifications false
try_private true
";

#[test]
fn bridges_carry_topics_login_and_tls_with_credentials_only_in_secrets() {
    let i = ok(
        BRIDGE,
        &[("ca.crt", CERT), ("client.crt", CERT), ("client.key", KEY)],
    );
    assert_eq!(i.bridges.len(), 1);
    let b = &i.bridges[0].object;
    assert_eq!(b.metadata.name.as_deref(), Some("cloud-server"));
    let r = &b.spec.remote;
    assert_eq!(r.address.as_deref(), Some("mqtt.example.net:8883"));
    assert_eq!(r.client_id.as_deref(), Some("site-a"));
    assert!(r.clean_session);
    assert_eq!(
        (r.keep_alive_seconds, r.protocol_version),
        (30, MqttVersion::V5)
    );
    let tls = r.tls.as_ref().expect("tls");
    assert_eq!(
        tls.client_secret_ref.as_deref(),
        Some("cloud-server-client")
    );
    assert_eq!(
        tls.ca_secret_ref
            .as_ref()
            .map(|s| (s.name.as_str(), s.key.as_str())),
        Some(("cloud-server", "ca.crt"))
    );
    let topics: Vec<_> = b
        .spec
        .topics
        .iter()
        .map(|t| {
            (
                t.pattern.as_str(),
                t.direction,
                t.qos,
                t.local_prefix.as_str(),
                t.remote_prefix.as_str(),
            )
        })
        .collect();
    assert_eq!(
        topics,
        [
            ("sensors/#", BridgeDirection::Out, 1, "", "home/"),
            ("commands/#", BridgeDirection::In, 2, "", ""),
            ("sync/#", BridgeDirection::Both, 0, "", ""),
        ]
    );
    let yaml = serde_yaml::to_string(b).expect("yaml");
    assert!(
        !yaml.contains("s3cret-pw") && !yaml.contains("BEGIN"),
        "{yaml}"
    );
    let login = i.secrets[0].object.string_data.as_ref().expect("data");
    assert_eq!(login["password"], "s3cret-pw");
    assert_eq!(login["username"], "site-a");
    let got = losses(&i);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(got[0].contains(":17: `try_private true`"), "{got:#?}");
}

#[test]
fn a_plaintext_login_to_another_host_is_kept_but_said_out_loud() {
    let i = ok(
        "listener 1\nconnection c\naddress 10.0.0.2\nremote_password pw\ntopic #\n",
        &[],
    );
    let r = &i.bridges[0].object.spec.remote;
    assert_eq!(r.address.as_deref(), Some("10.0.0.2:1883"));
    assert!(r.insecure_plaintext_credentials);
    assert!(i.notes.iter().any(|n| n.reason.contains("without TLS")));
    assert!(i.notes.iter().all(|n| !n.to_string().contains("pw\n")));
    assert_eq!(
        i.bridges[0].object.spec.topics[0].qos, 0,
        "Mosquitto's default QoS"
    );
}

#[test]
fn no_listener_is_mosquittos_local_only_mode() {
    let i = ok("persistence false\n", &[]);
    let b = &i.broker.object.spec;
    assert_eq!(b.listeners.len(), 1);
    assert_eq!(b.listeners[0].bind_address.as_deref(), Some("127.0.0.1"));
    assert!(b.allow_anonymous);
    let i = ok("port 1884\nallow_anonymous false\n", &[]);
    assert_eq!(i.broker.object.spec.listeners[0].port, 1884);
    assert!(!i.broker.object.spec.allow_anonymous);
}

#[test]
fn the_written_folder_loads_and_validates_and_holds_no_secret() {
    let mut i = home();
    let b = ok(
        BRIDGE,
        &[("ca.crt", CERT), ("client.crt", CERT), ("client.key", KEY)],
    );
    i.bridges = b.bridges;
    i.secrets.extend(b.secrets);
    for br in &mut i.bridges {
        br.object.spec.broker_ref = "home".into();
    }
    let dir = tempfile::tempdir().expect("tmp");
    let (out, sec) = (dir.path().join("config"), dir.path().join("secrets"));
    let written = crate::import::write::write(&i, &conf_path(), &out, &sec, None).expect("write");
    assert_eq!(written.len(), 4);
    for f in ["broker.yaml", "users.yaml", "bridges.yaml"] {
        let text = std::fs::read_to_string(out.join(f)).expect("read");
        assert!(
            !text.contains("s3cret-pw") && !text.contains("PRIVATE KEY"),
            "{f}: {text}"
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(sec.join("secrets.yaml"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The fake PEM blocks are not real certificates, but the folder's schema,
    // references and ACL rules must all be valid.
    match crate::load::load(&out, Some(&sec)) {
        Ok(res) => assert_eq!(res.users().count(), 2),
        Err(e) => panic!("{e}"),
    }
    // A second import into the same folders replaces nothing.
    let e = crate::import::write::write(&i, &conf_path(), &out, &sec, None).expect_err("exists");
    assert!(e.to_string().contains("already exists"), "{e}");
    let e = crate::import::write::write(&i, &conf_path(), &out, &out.join("s"), None)
        .expect_err("inside");
    assert!(e.to_string().contains("must not be inside"), "{e}");
}
