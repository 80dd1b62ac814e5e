//! DNS-01 through RFC 2136 dynamic updates signed with TSIG, against BIND 9 (and
//! Knot DNS for the same exchange with another implementation): the
//! record appears (as `dig` sees it), coexists with another value, is removed, and
//! every kind of refusal comes back as an error that says what to fix.

mod peers;

use edgemq::api::certificate::{Dns01Solver, DnsPropagation, Rfc2136Provider, TsigAlgorithm};
use edgemq::api::SecretKeyRef;
use edgemq::certs::dns01::{rfc2136, Dns01, Error};
use hickory_proto::op::ResponseCode;
use peers::{dig_txt, secrets, Bind, Knot};

fn solver(bind: &Bind, key: &peers::TsigKey, zone: Option<&str>) -> Dns01Solver {
    Dns01Solver {
        rfc2136: Some(Rfc2136Provider {
            nameserver: bind.addr(),
            zone: zone.map(str::to_string),
            tsig_key_name: key.name.clone(),
            tsig_secret_ref: SecretKeyRef {
                name: "tsig".into(),
                key: "secret".into(),
            },
            ..Default::default()
        }),
        propagation: Some(DnsPropagation {
            nameservers: vec![],
            timeout_seconds: Some(20),
        }),
        ..Default::default()
    }
}

fn dns01(bind: &Bind, key: &peers::TsigKey, secret: &str, zone: Option<&str>) -> Dns01 {
    Dns01::new(
        &solver(bind, key, zone),
        &secrets(&[("tsig", "secret", secret)]),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_update_sets_and_clears_the_challenge_record() {
    let bind = Bind::start("example.test");
    // The zone is found by the SOA the server returns for the record name.
    let d = dns01(&bind, &bind.key, &bind.key.secret, None);
    let name = "_acme-challenge.mqtt.example.test";

    d.set("mqtt.example.test", "token-one").await.unwrap();
    assert_eq!(dig_txt(bind.port, name), ["token-one"]);

    // A name and its wildcard share the record: both values must coexist.
    d.set("*.mqtt.example.test", "token-two").await.unwrap();
    assert_eq!(dig_txt(bind.port, name), ["token-one", "token-two"]);

    d.clear("mqtt.example.test", "token-one").await.unwrap();
    assert_eq!(dig_txt(bind.port, name), ["token-two"]);
    d.clear("*.mqtt.example.test", "token-two").await.unwrap();
    assert!(dig_txt(bind.port, name).is_empty());

    // Clearing what is not there is not an error (a retry after a crash).
    d.clear("mqtt.example.test", "token-one").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hmac_sha512_key_signs_updates_too() {
    let bind = Bind::start("example.test");
    let mut s = solver(&bind, &bind.sha512, None);
    s.rfc2136.as_mut().unwrap().tsig_algorithm = TsigAlgorithm::HmacSha512;
    let d = Dns01::new(&s, &secrets(&[("tsig", "secret", &bind.sha512.secret)])).unwrap();
    d.set("mqtt.example.test", "v512").await.unwrap();
    assert_eq!(
        dig_txt(bind.port, "_acme-challenge.mqtt.example.test"),
        ["v512"]
    );
    d.clear("mqtt.example.test", "v512").await.unwrap();
    assert!(dig_txt(bind.port, "_acme-challenge.mqtt.example.test").is_empty());

    // The same key announced with the wrong algorithm is unknown to the server.
    let mut s = solver(&bind, &bind.sha512, None);
    s.rfc2136.as_mut().unwrap().tsig_algorithm = TsigAlgorithm::HmacSha256;
    let d = Dns01::new(&s, &secrets(&[("tsig", "secret", &bind.sha512.secret)])).unwrap();
    let e = d
        .set("mqtt.example.test", "v")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("BADKEY: the server has no key `edgemq-sha512` with algorithm hmac-sha256"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_zone_is_used_as_given() {
    let bind = Bind::start("example.test");
    let d = dns01(&bind, &bind.key, &bind.key.secret, Some("example.test."));
    d.set("a.b.example.test", "v").await.unwrap();
    assert_eq!(
        dig_txt(bind.port, "_acme-challenge.a.b.example.test"),
        ["v"]
    );

    let outside = dns01(&bind, &bind.key, &bind.key.secret, Some("example.test"));
    let e = outside
        .set("mqtt.other.test", "v")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("_acme-challenge.mqtt.other.test is not inside zone `example.test`"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_with_badsig() {
    let bind = Bind::start("example.test");
    let wrong = peers::TsigKey::random("unused").secret;
    let d = dns01(&bind, &bind.key, &wrong, None);
    let e = d
        .set("mqtt.example.test", "v")
        .await
        .unwrap_err()
        .to_string();
    let want = format!(
        "rfc2136 update of _acme-challenge.mqtt.example.test at {} refused: NOTAUTH (TSIG error BADSIG",
        bind.addr()
    );
    assert!(e.starts_with(&want), "{e}");
    assert!(dig_txt(bind.port, "_acme-challenge.mqtt.example.test").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_is_refused_with_badkey() {
    let bind = Bind::start("example.test");
    let stranger = peers::TsigKey::random("nobody-knows-me");
    let d = dns01(&bind, &stranger, &stranger.secret, None);
    let err = d.set("mqtt.example.test", "v").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Rfc2136(rfc2136::Error::Refused {
                code: ResponseCode::NotAuth,
                tsig_error: Some(17),
                ..
            })
        ),
        "{err:?}"
    );
    let e = err.to_string();
    assert!(e.contains("refused: NOTAUTH (TSIG error BADKEY: the server has no key `nobody-knows-me` with algorithm hmac-sha256)"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_outside_the_keys_policy_is_refused() {
    let bind = Bind::start("example.test");
    // `edgemq-limited` may only change `only.example.test`.
    let d = dns01(&bind, &bind.limited, &bind.limited.secret, None);
    let e = d
        .set("mqtt.example.test", "v")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("refused: REFUSED (the server's update policy does not let key `edgemq-limited` change _acme-challenge.mqtt.example.test in zone `example.test`)"),
        "{e}"
    );
    assert!(dig_txt(bind.port, "_acme-challenge.mqtt.example.test").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_the_server_does_not_hold_is_named() {
    let bind = Bind::start("example.test");
    let d = dns01(&bind, &bind.key, &bind.key.secret, None);
    let e = d
        .set("mqtt.elsewhere.test", "v")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "rfc2136: finding the zone of _acme-challenge.mqtt.elsewhere.test at {}:",
            bind.addr()
        )) && e.ends_with("set rfc2136.zone"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_malformed_secret_is_named_before_anything_is_sent() {
    let bind = Bind::start("example.test");
    let e = Dns01::new(&solver(&bind, &bind.key, None), &secrets(&[]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "rfc2136: tsigSecretRef: Secret `tsig` has no key `secret` (or does not exist)"
    );
    let e = Dns01::new(
        &solver(&bind, &bind.key, None),
        &secrets(&[("tsig", "secret", "not base64!")]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("is not base64"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_takes_the_same_updates_and_refuses_a_wrong_secret() {
    let knot = Knot::start("example.test");
    let solver = |secret: &str| {
        let s = Dns01Solver {
            rfc2136: Some(Rfc2136Provider {
                nameserver: knot.addr(),
                tsig_key_name: knot.key.name.clone(),
                tsig_secret_ref: SecretKeyRef {
                    name: "tsig".into(),
                    key: "secret".into(),
                },
                ..Default::default()
            }),
            propagation: Some(DnsPropagation {
                nameservers: vec![],
                timeout_seconds: Some(20),
            }),
            ..Default::default()
        };
        Dns01::new(&s, &secrets(&[("tsig", "secret", secret)])).unwrap()
    };
    let name = "_acme-challenge.mqtt.example.test";
    let d = solver(&knot.key.secret);
    d.set("mqtt.example.test", "one").await.unwrap();
    d.set("*.mqtt.example.test", "two").await.unwrap();
    assert_eq!(dig_txt(knot.port, name), ["one", "two"]);
    d.clear("mqtt.example.test", "one").await.unwrap();
    assert_eq!(dig_txt(knot.port, name), ["two"]);
    d.clear("*.mqtt.example.test", "two").await.unwrap();
    assert!(dig_txt(knot.port, name).is_empty());

    let wrong = solver(&peers::TsigKey::random("unused").secret);
    let e = wrong
        .set("mqtt.example.test", "v")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "rfc2136 update of {name} at {} refused: NOTAUTH (TSIG error BADSIG",
            knot.addr()
        )),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_visibility_check_finds_the_zones_name_servers() {
    use edgemq::certs::dns01::propagation::authoritative_servers_via;
    let bind = Bind::start("example.test");
    let resolver: std::net::SocketAddr = bind.addr().parse().unwrap();
    // The closest enclosing zone with NS records, its servers on port 53.
    let found = authoritative_servers_via(resolver, "_acme-challenge.a.mqtt.example.test")
        .await
        .unwrap();
    assert_eq!(
        found,
        [(
            "ns.example.test (127.0.0.1)".to_string(),
            "127.0.0.1:53".parse().unwrap()
        )]
    );
    let e = authoritative_servers_via(resolver, "_acme-challenge.mqtt.elsewhere.test")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no zone holding _acme-challenge.mqtt.elsewhere.test has NS records"),
        "{e}"
    );
}
