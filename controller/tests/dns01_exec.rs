//! DNS-01 through a user's command (the exec provider), here a hook that drives
//! pebble-challtestsrv's management API; the visibility check then asks
//! challtestsrv's DNS server. Failures of the command and of the check are reported
//! with what went wrong.

mod peers;

use edgemq::api::certificate::{Dns01Solver, DnsPropagation, ExecProvider};
use edgemq::certs::dns01::{exec, Dns01, Error};
use peers::{dig_txt, ChallTestSrv};

fn exec(command: &[&str], timeout: Option<u32>, dns_port: u16, wait: u32) -> Dns01 {
    let solver = Dns01Solver {
        exec: Some(ExecProvider {
            command: command.iter().map(|s| s.to_string()).collect(),
            timeout_seconds: timeout,
        }),
        propagation: Some(DnsPropagation {
            nameservers: vec![format!("127.0.0.1:{dns_port}")],
            timeout_seconds: Some(wait),
        }),
        ..Default::default()
    };
    Dns01::new(&solver, &|_| None).unwrap()
}

fn hook() -> String {
    peers::fixtures()
        .join("dns01/challtestsrv-hook.py")
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_sets_the_record_and_set_returns_once_it_is_visible() {
    let python = peers::require("python3", "python3");
    let srv = ChallTestSrv::start();
    let python = python.display().to_string();
    let hook = hook();
    let url = srv.management_url();
    let d = exec(&[&python, &hook, &url], None, srv.dns_port, 30);
    let name = "_acme-challenge.mqtt.example.test";
    assert!(dig_txt(srv.dns_port, name).is_empty());

    d.set("mqtt.example.test", "token-value").await.unwrap();
    assert_eq!(dig_txt(srv.dns_port, name), ["token-value"]);

    d.clear("mqtt.example.test", "token-value").await.unwrap();
    assert!(dig_txt(srv.dns_port, name).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_gets_the_documented_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env");
    let script = format!("env | grep '^EDGEMQ_ACME_' | sort > '{}'", out.display());
    let solver = Dns01Solver {
        exec: Some(ExecProvider {
            command: vec!["sh".into(), "-c".into(), script],
            timeout_seconds: None,
        }),
        ..Default::default()
    };
    let d = Dns01::new(&solver, &|_| None).unwrap();
    d.clear("*.home.example.test", "abc-_123").await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "EDGEMQ_ACME_ACTION=clear\n\
         EDGEMQ_ACME_DOMAIN=*.home.example.test\n\
         EDGEMQ_ACME_RECORD=_acme-challenge.home.example.test\n\
         EDGEMQ_ACME_VALUE=abc-_123\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hook_is_reported_with_its_status_and_stderr() {
    let d = exec(
        &["sh", "-c", "echo 'zone example.test is locked' >&2; exit 3"],
        None,
        1,
        5,
    );
    let err = d.set("mqtt.example.test", "v").await.unwrap_err();
    assert!(
        matches!(&err, Error::Exec(exec::Error::Failed { code: Some(3), stderr, .. }) if stderr == "zone example.test is locked"),
        "{err:?}"
    );
    let e = err.to_string();
    assert_eq!(
        e,
        "exec hook `sh -c echo 'zone example.test is locked' >&2; exit 3` (set _acme-challenge.mqtt.example.test): exited with status 3: zone example.test is locked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_hangs_is_killed_at_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("still-running");
    // A background child would create the marker if the whole group were not killed.
    let script = format!("(sleep 4; touch '{}') & wait", marker.display());
    let d = exec(&["sh", "-c", &script], Some(1), 1, 5);
    let e = d
        .clear("mqtt.example.test", "v")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("did not finish within 1s and was killed"),
        "{e}"
    );
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert!(!marker.exists(), "the hook was not killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_program_is_named() {
    let d = exec(&["/nonexistent/dns-hook"], None, 1, 5);
    let e = d
        .set("mqtt.example.test", "v")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("exec hook `/nonexistent/dns-hook` (set _acme-challenge.mqtt.example.test): could not be started:"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_never_appears_fails_the_visibility_check() {
    let srv = ChallTestSrv::start();
    // The hook claims success but publishes nothing.
    let d = exec(&["true"], None, srv.dns_port, 3);
    let e = d
        .set("mqtt.example.test", "v")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "exec: TXT record _acme-challenge.mqtt.example.test with the challenge value not visible after 3s: 127.0.0.1:{} answered no TXT record",
            srv.dns_port
        )
    );
}
