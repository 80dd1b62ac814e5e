//! Real DNS peers for the DNS-01 tests, started on free loopback ports and stopped by
//! pid when dropped (also when a test fails): BIND's `named` and Knot's `knotd`
//! (RFC 2136 updates with TSIG), pebble-challtestsrv (DNS answers set through its management API) and
//! moto_server (the Route 53 API).
//!
//! A missing program fails the test, with a message naming the package to install
//! (scripts/install-peers.sh installs them all): Rust's test harness cannot mark a
//! test skipped at run time, and a test that returns early reports `ok` for what it
//! never checked.

#![allow(dead_code)]

use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1 for both TCP and UDP (DNS servers listen on both).
pub fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Finds `program` in PATH or the sbin folders; panics naming the package to install
/// when it is missing.
pub fn require(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(program);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{program}` not found: install the `{package}` package (scripts/install-peers.sh)");
}

/// Polls `f` every 50 ms until it is true; panics with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not ready after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed by pid when dropped.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc { child, name, log }
    }

    /// Panics with the log when the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}):\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_tcp(p: &mut Proc, port: u16) {
    let start = Instant::now();
    loop {
        p.assert_running();
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} does not listen on {port}:\n{}",
            p.name,
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TSIG key as BIND's key files hold it.
pub struct TsigKey {
    pub name: String,
    pub algorithm: &'static str,
    /// Base64, as in the key file.
    pub secret: String,
}

impl TsigKey {
    pub fn random(name: &str) -> TsigKey {
        use base64::Engine;
        let bytes: [u8; 32] = rand::random();
        TsigKey {
            name: name.into(),
            algorithm: "hmac-sha256",
            secret: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }
}

/// BIND 9 authoritative for `zone`, taking updates signed with `key` for any TXT
/// record in the zone, and with `limited` only for `only.<zone>`.
pub struct Bind {
    pub port: u16,
    pub zone: String,
    pub key: TsigKey,
    pub limited: TsigKey,
    /// An hmac-sha512 key with the same rights as `key`.
    pub sha512: TsigKey,
    pub proc: Proc,
    pub dir: tempfile::TempDir,
}

impl Bind {
    pub fn start(zone: &str) -> Bind {
        let named = require("named", "bind9");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let key = TsigKey::random("edgemq-test");
        let limited = TsigKey::random("edgemq-limited");
        let sha512 = TsigKey {
            algorithm: "hmac-sha512",
            ..TsigKey::random("edgemq-sha512")
        };
        let d = dir.path().display();
        let keys: String = [&key, &limited, &sha512]
            .iter()
            .map(|k| {
                format!(
                    "key \"{}\" {{ algorithm {}; secret \"{}\"; }};\n",
                    k.name, k.algorithm, k.secret
                )
            })
            .collect();
        let conf = format!(
            r#"{keys}
options {{
  directory "{d}";
  pid-file "{d}/named.pid";
  listen-on port {port} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }};
  recursion no;
  dnssec-validation no;
  notify no;
}};
controls {{ }};
zone "{zone}" {{
  type primary;
  file "{d}/zone.db";
  update-policy {{
    grant {k} zonesub TXT;
    grant {s} zonesub TXT;
    grant {l} name only.{zone} TXT;
  }};
}};
"#,
            k = key.name,
            l = limited.name,
            s = sha512.name,
        );
        std::fs::write(dir.path().join("named.conf"), conf).unwrap();
        std::fs::write(
            dir.path().join("zone.db"),
            format!(
                "$TTL 60\n@ IN SOA ns.{zone}. admin.{zone}. 1 60 60 600 60\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
            ),
        )
        .unwrap();
        let mut proc = Proc::spawn(
            "named",
            Command::new(named)
                .arg("-g") // foreground, log to stderr
                .args(["-n", "1"])
                .arg("-c")
                .arg(dir.path().join("named.conf")),
            dir.path().join("named.log"),
        );
        wait_tcp(&mut proc, port);
        Bind {
            port,
            zone: zone.into(),
            key,
            limited,
            sha512,
            proc,
            dir,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Knot DNS authoritative for `zone`, taking updates signed with `key`.
pub struct Knot {
    pub port: u16,
    pub key: TsigKey,
    pub proc: Proc,
    pub dir: tempfile::TempDir,
}

impl Knot {
    pub fn start(zone: &str) -> Knot {
        let knotd = require("knotd", "knot");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let key = TsigKey::random("edgemq-test");
        let d = dir.path().display();
        let conf = format!(
            "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.1@{port}\n\
             database:\n    storage: \"{d}\"\n\
             key:\n  - id: {k}\n    algorithm: {a}\n    secret: {s}\n\
             acl:\n  - id: update\n    key: {k}\n    action: update\n\
             zone:\n  - domain: {zone}\n    storage: \"{d}\"\n    file: \"zone.db\"\n    acl: update\n",
            k = key.name,
            a = key.algorithm,
            s = key.secret,
        );
        std::fs::write(dir.path().join("knot.conf"), conf).unwrap();
        std::fs::write(
            dir.path().join("zone.db"),
            format!(
                "$TTL 60\n@ IN SOA ns.{zone}. admin.{zone}. 1 60 60 600 60\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
            ),
        )
        .unwrap();
        let mut proc = Proc::spawn(
            "knotd",
            Command::new(knotd)
                .arg("-c")
                .arg(dir.path().join("knot.conf")),
            dir.path().join("knot.log"),
        );
        wait_tcp(&mut proc, port);
        Knot {
            port,
            key,
            proc,
            dir,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// The TXT values of `name` as `dig` (BIND's own client) sees them at `server:port`:
/// an independent view of what the provider did.
pub fn dig_txt(port: u16, name: &str) -> Vec<String> {
    let dig = require("dig", "bind9-dnsutils");
    let out = Command::new(dig)
        .args(["+short", "+tries=2", "+time=5", "-p", &port.to_string()])
        .args(["@127.0.0.1", "TXT", name])
        .output()
        .unwrap();
    assert!(out.status.success(), "dig failed: {out:?}");
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .map(|l| l.trim().trim_matches('"').to_string())
        .collect();
    v.sort();
    v
}

/// pebble-challtestsrv: a DNS server whose TXT answers are set through its management
/// HTTP API.
pub struct ChallTestSrv {
    pub dns_port: u16,
    pub management_port: u16,
    pub proc: Proc,
    _dir: tempfile::TempDir,
}

impl ChallTestSrv {
    pub fn start() -> ChallTestSrv {
        let bin = require("pebble-challtestsrv", "pebble");
        let dir = tempfile::tempdir().unwrap();
        let dns_port = free_port();
        let management_port = free_port();
        let mut proc = Proc::spawn(
            "pebble-challtestsrv",
            Command::new(bin).args([
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-management",
                &format!("127.0.0.1:{management_port}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ]),
            dir.path().join("challtestsrv.log"),
        );
        wait_tcp(&mut proc, management_port);
        wait_tcp(&mut proc, dns_port);
        ChallTestSrv {
            dns_port,
            management_port,
            proc,
            _dir: dir,
        }
    }

    pub fn management_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.management_port)
    }
}

/// moto_server, the AWS API emulator.
pub struct Moto {
    pub port: u16,
    pub proc: Proc,
    _dir: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Moto {
        let bin = require("moto_server", "moto[server] (pip)");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut proc = Proc::spawn(
            "moto_server",
            Command::new(bin).args(["-H", "127.0.0.1", "-p", &port.to_string()]),
            dir.path().join("moto.log"),
        );
        wait_tcp(&mut proc, port);
        Moto {
            port,
            proc,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A Secret lookup over fixed `(name, key) → value` pairs.
pub fn secrets(
    pairs: &[(&str, &str, &str)],
) -> impl Fn(&edgemq::api::SecretKeyRef) -> Option<Vec<u8>> {
    let pairs: Vec<(String, String, Vec<u8>)> = pairs
        .iter()
        .map(|(n, k, v)| (n.to_string(), k.to_string(), v.as_bytes().to_vec()))
        .collect();
    move |r| {
        pairs
            .iter()
            .find(|(n, k, _)| *n == r.name && *k == r.key)
            .map(|(_, _, v)| v.clone())
    }
}

/// Where this test crate's fixtures live.
pub fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}
