//! The broker runtime started from a hand-built bundle serves real Mosquitto clients.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use edgemq::api::broker::{Limits, ListenerProtocol};
use edgemq::broker::BrokerRuntime;
use edgemq::metrics::Metrics;
use edgemq::plan::{AclPlan, BrokerBundle, ListenerPlan};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_broker_routes_between_mosquitto_clients() {
    let port = free_port();
    let bundle = BrokerBundle {
        namespace: "default".into(),
        name: "smoke".into(),
        listeners: vec![ListenerPlan {
            name: "mqtt".into(),
            bind: format!("127.0.0.1:{port}"),
            protocol: ListenerProtocol::Mqtt,
            tls: None,
            client_auth: None,
        }],
        allow_anonymous: true,
        acl: AclPlan {
            enabled: false,
            ..AclPlan::default()
        },
        limits: Limits::default(),
        ..BrokerBundle::default()
    };
    let metrics = Metrics::default();
    let rt = BrokerRuntime::start(bundle, BTreeMap::new(), None, &metrics)
        .await
        .unwrap();
    assert!(rt.probe());
    let sub = Command::new("mosquitto_sub")
        .args([
            "-p",
            &port.to_string(),
            "-t",
            "a/#",
            "-C",
            "1",
            "-W",
            "5",
            "-q",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = Command::new("mosquitto_pub")
        .args([
            "-p",
            &port.to_string(),
            "-t",
            "a/b",
            "-m",
            "hello",
            "-q",
            "1",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let out = tokio::task::spawn_blocking(move || sub.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
    rt.shutdown().await;
}

/// A listener is bound at once but accepts only when opened, so a client that connects
/// while the broker is still restoring its state waits in the backlog and is then
/// served (instead of getting a fresh session that the restored one replaces).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_accepts_only_once_opened_and_then_serves_the_waiting_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let bundle = BrokerBundle {
        namespace: "default".into(),
        name: "gate".into(),
        allow_anonymous: true,
        acl: AclPlan {
            enabled: false,
            ..AclPlan::default()
        },
        limits: Limits::default(),
        ..BrokerBundle::default()
    };
    let metrics = Metrics::default();
    let rt = BrokerRuntime::start(bundle, BTreeMap::new(), None, &metrics)
        .await
        .unwrap();
    let port = free_port();
    let plan = ListenerPlan {
        name: "mqtt".into(),
        bind: format!("127.0.0.1:{port}"),
        protocol: ListenerProtocol::Mqtt,
        tls: None,
        client_auth: None,
    };
    let handle = edgemq::broker::listener::start(plan, None, rt.shared().clone())
        .await
        .unwrap();

    // The kernel completes the TCP handshake, but no CONNACK comes before `open`.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let connect = [
        0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 2, b'g', b'1',
    ];
    s.write_all(&connect).await.unwrap();
    let mut ack = [0u8; 4];
    let early = tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut ack)).await;
    assert!(early.is_err(), "answered before the listener was opened");

    handle.open();
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut ack))
        .await
        .expect("no CONNACK after the listener was opened")
        .unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0]);
    handle.stop();
    rt.shutdown().await;
}
