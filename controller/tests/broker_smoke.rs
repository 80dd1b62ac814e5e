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
