//! A bundle as Mosquitto 2.0 configuration: `mosquitto.conf` (with a `connection`
//! section per Bridge, see [`super::mosquitto_bridges`]), a password file and an ACL
//! file with the same meaning.
//!
//! Used to migrate to and from Mosquitto, and by the parity tests that check edgemq's
//! ACL and password decisions against a real Mosquitto on the same bundle.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

pub use super::files::TlsFiles;
use crate::api::broker::{CertificateIdentity, ListenerProtocol};
use crate::api::{Access, AclRule};
use crate::plan::{BrokerBundle, ClientAuthPlan, TlsSource};

/// The three files of a Mosquitto configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MosquittoFiles {
    /// `mosquitto.conf`.
    pub conf: String,
    /// The password file (`username:hash` lines).
    pub passwd: String,
    /// The ACL file.
    pub acl: String,
    /// Settings of the Broker that Mosquitto cannot express, one sentence each (also
    /// written as comments in `mosquitto.conf`).
    pub not_expressed: Vec<String>,
}

/// Where the files the configuration names live; the caller writes them there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MosquittoPaths {
    /// Folder of the password and ACL files (`passwd`, `acl`).
    pub config_dir: PathBuf,
    /// Folder of Mosquitto's persistence database.
    pub persistence_dir: PathBuf,
    /// Key pair of each TLS source. A source not listed is looked for in
    /// `config_dir/tls/<certificate|secret>-<name>/tls.crt` and `tls.key`, the layout
    /// of a mounted `kubernetes.io/tls` Secret.
    pub tls: BTreeMap<TlsSource, TlsFiles>,
    /// Logins and TLS files of each Bridge, by name.
    pub bridges: BTreeMap<String, super::mosquitto_bridges::BridgeFiles>,
    /// Client CA (`cafile`) and CRL (`crlfile`) of each listener with `clientAuth`, by
    /// listener name. A listener not listed gets `config_dir/tls/client-ca-<listener>/`
    /// `ca.crt` and `ca.crl`.
    pub client_ca: BTreeMap<String, ClientCaFiles>,
}

/// The files of a listener's `clientAuth`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCaFiles {
    /// PEM CA bundle.
    pub cafile: PathBuf,
    /// PEM CRL, when the listener has one.
    pub crlfile: Option<PathBuf>,
}

impl MosquittoPaths {
    fn client_ca_files(&self, listener: &str, crl: bool) -> ClientCaFiles {
        if let Some(f) = self.client_ca.get(listener) {
            return f.clone();
        }
        let dir = self
            .config_dir
            .join("tls")
            .join(format!("client-ca-{listener}"));
        ClientCaFiles {
            cafile: dir.join("ca.crt"),
            crlfile: crl.then(|| dir.join("ca.crl")),
        }
    }

    fn tls_files(&self, src: &TlsSource) -> TlsFiles {
        if let Some(f) = self.tls.get(src) {
            return f.clone();
        }
        let dir = match src {
            TlsSource::Certificate(n) => format!("certificate-{n}"),
            TlsSource::Secret(n) => format!("secret-{n}"),
        };
        let dir = self.config_dir.join("tls").join(dir);
        TlsFiles::in_dir(&dir)
    }
}

/// Renders `bundle` as Mosquitto configuration.
pub fn render(bundle: &BrokerBundle, paths: &MosquittoPaths) -> MosquittoFiles {
    let mut not_expressed = Vec::new();
    MosquittoFiles {
        conf: conf(bundle, paths, &mut not_expressed),
        passwd: passwd(bundle),
        acl: acl(bundle),
        not_expressed,
    }
}

/// `clientIdPattern` in Mosquitto's terms: `%u` without anonymous access is what
/// `use_username_as_clientid` gives (every client id is its user's name; Mosquitto puts
/// the username in place of another id where edgemq refuses it, and refuses anonymous
/// clients); anything else has no Mosquitto equivalent. Returns whether every
/// listener gets `use_username_as_clientid true` (a per-listener setting).
fn client_ids(s: &mut String, b: &BrokerBundle, not_expressed: &mut Vec<String>) -> bool {
    let Some(pattern) = &b.client_id_pattern else {
        return false;
    };
    if pattern == "%u" && !b.allow_anonymous {
        s.push_str("# clientIdPattern %u: a client id is its user's name (edgemq refuses another id; Mosquitto uses the username instead)\n");
        true
    } else {
        let why = format!(
            "clientIdPattern {pattern:?}{} cannot be expressed: Mosquitto binds client ids to users only as `use_username_as_clientid` (pattern \"%u\" without anonymous access); client ids are not bound to users in this configuration",
            if pattern == "%u" { " with allowAnonymous" } else { "" }
        );
        let _ = writeln!(s, "# NOT EXPRESSED: {why}");
        not_expressed.push(why);
        false
    }
}

fn conf(b: &BrokerBundle, paths: &MosquittoPaths, not_expressed: &mut Vec<String>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Broker {}/{}, rendered by edgemq (config {}).",
        b.namespace,
        b.name,
        b.hash()
    );
    s.push_str("per_listener_settings false\n");
    let _ = writeln!(s, "allow_anonymous {}", b.allow_anonymous);
    let username_as_client_id = client_ids(&mut s, b, not_expressed);
    let _ = writeln!(
        s,
        "password_file {}",
        paths.config_dir.join("passwd").display()
    );
    if b.acl.enabled {
        let _ = writeln!(s, "acl_file {}", paths.config_dir.join("acl").display());
    }
    let _ = writeln!(s, "max_inflight_messages {}", b.limits.max_inflight);
    let _ = writeln!(s, "max_queued_messages {}", b.limits.max_queued_messages);
    let _ = writeln!(s, "message_size_limit {}", b.limits.max_payload_bytes);
    let _ = writeln!(s, "persistence {}", b.persistence);
    if b.persistence {
        // Mosquitto wants the trailing slash.
        let _ = writeln!(
            s,
            "persistence_location {}/",
            paths.persistence_dir.display()
        );
    }
    for l in &b.listeners {
        let (host, port) = split_bind(&l.bind);
        let _ = writeln!(s, "\n# listener {}", l.name);
        let _ = writeln!(s, "listener {port} {host}");
        if l.protocol == ListenerProtocol::Websockets {
            s.push_str("protocol websockets\n");
        }
        // Mosquitto counts connections per listener, edgemq per broker: the broker-wide
        // bound is the nearest per-listener one that never refuses what edgemq accepts.
        let _ = writeln!(s, "max_connections {}", b.limits.max_connections);
        if username_as_client_id {
            s.push_str("use_username_as_clientid true\n");
        }
        if let Some(src) = &l.tls {
            let f = paths.tls_files(src);
            let _ = writeln!(s, "certfile {}", f.certfile.display());
            let _ = writeln!(s, "keyfile {}", f.keyfile.display());
        }
        if let Some(c) = &l.client_auth {
            client_auth(
                &mut s,
                &l.name,
                c,
                paths,
                username_as_client_id,
                not_expressed,
            );
        }
    }
    super::mosquitto_bridges::sections(&mut s, b, &paths.bridges, not_expressed);
    s
}

/// A listener's `clientAuth` as Mosquitto's `require_certificate`, `cafile`, `crlfile`
/// and `use_identity_as_username` / `use_subject_as_username`.
fn client_auth(
    s: &mut String,
    listener: &str,
    c: &ClientAuthPlan,
    paths: &MosquittoPaths,
    username_as_client_id: bool,
    not_expressed: &mut Vec<String>,
) {
    let mut lost = |s: &mut String, why: String| {
        let _ = writeln!(s, "# NOT EXPRESSED: {why}");
        not_expressed.push(why);
    };
    let f = paths.client_ca_files(listener, c.crl.is_some());
    let _ = writeln!(s, "cafile {}", f.cafile.display());
    if let Some(crl) = &f.crlfile {
        let _ = writeln!(s, "crlfile {}", crl.display());
    }
    if !c.required {
        // Mosquitto only checks (and maps) client certificates it requires.
        lost(s, format!("listener {listener}: clientAuth mode optional cannot be expressed: Mosquitto checks client certificates only with require_certificate true; clients log in with passwords here"));
        s.push_str(
            "require_certificate false
",
        );
        return;
    }
    s.push_str(
        "require_certificate true
",
    );
    match c.identity {
        CertificateIdentity::CommonName => s.push_str("use_identity_as_username true
"),
        CertificateIdentity::Subject => s.push_str("use_subject_as_username true
"),
        other => lost(s, format!("listener {listener}: clientAuth identity {other:?} cannot be expressed: Mosquitto takes the username from the CN or the whole subject only")),
    }
    if c.identity_as_client_id && !username_as_client_id {
        // Mosquitto replaces the client id by the username instead of refusing another.
        s.push_str(
            "use_username_as_clientid true
",
        );
    }
    if c.refuse_unknown {
        lost(s, format!("listener {listener}: clientAuth unknownIdentity refuse cannot be expressed: Mosquitto admits every certificate of the CA (with the ACL patterns only when no user block names it)"));
    }
}

/// `host:port` (IPv6 in brackets) → (host, port).
fn split_bind(bind: &str) -> (&str, &str) {
    match bind.rsplit_once(':') {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']'), p),
        None => (bind, ""),
    }
}

fn passwd(b: &BrokerBundle) -> String {
    // Certificate users have no password.
    b.users
        .iter()
        .filter(|(_, u)| !u.certificate)
        .map(|(name, u)| format!("{name}:{}\n", u.password_hash))
        .collect()
}

fn access_word(a: Access) -> &'static str {
    match a {
        Access::Read => "read",
        Access::Write => "write",
        Access::Readwrite => "readwrite",
        Access::Deny => "deny",
    }
}

fn rules(s: &mut String, keyword: &str, rules: &[AclRule]) {
    for r in rules {
        let _ = writeln!(s, "{keyword} {} {}", access_word(r.access), r.topic);
    }
}

fn acl(b: &BrokerBundle) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Broker {}/{}, rendered by edgemq.",
        b.namespace, b.name
    );
    if !b.acl.anonymous.is_empty() {
        s.push_str("\n# clients without a username\n");
        rules(&mut s, "topic", &b.acl.anonymous);
    }
    for (user, r) in &b.acl.users {
        let _ = writeln!(s, "\nuser {user}");
        rules(&mut s, "topic", r);
    }
    if !b.acl.patterns.is_empty() {
        s.push_str("\n# every client\n");
        rules(&mut s, "pattern", &b.acl.patterns);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::testing::{assert_golden, fixture, standalone_example};

    fn example() -> BrokerBundle {
        let res = crate::load::load(&standalone_example(), None).unwrap_or_else(|e| panic!("{e}"));
        let mut bundles = crate::plan::plan(&res).unwrap_or_else(|e| panic!("{e}"));
        bundles
            .remove("default/home")
            .expect("the example's broker")
    }

    fn paths() -> MosquittoPaths {
        MosquittoPaths {
            config_dir: "/etc/mosquitto".into(),
            persistence_dir: "/var/lib/mosquitto".into(),
            tls: BTreeMap::from([(
                TlsSource::Certificate("home-tls".into()),
                TlsFiles {
                    certfile: "/etc/mosquitto/certs/home.crt".into(),
                    keyfile: "/etc/mosquitto/certs/home.key".into(),
                },
            )]),
            bridges: BTreeMap::new(),
            client_ca: BTreeMap::new(),
        }
    }

    #[test]
    fn the_standalone_example_renders_as_the_golden_files() {
        let files = render(&example(), &paths());
        let dir = fixture("golden").join("mosquitto");
        assert_golden(&dir.join("mosquitto.conf"), &files.conf);
        assert_golden(&dir.join("passwd"), &files.passwd);
        assert_golden(&dir.join("acl"), &files.acl);
    }

    #[test]
    fn anonymous_topics_come_first_then_users_then_patterns() {
        let mut b = example();
        b.allow_anonymous = true;
        b.acl.anonymous = vec![AclRule {
            topic: "public/#".into(),
            access: Access::Read,
        }];
        let acl = render(&b, &paths()).acl;
        let anon = acl.find("topic read public/#").expect("anonymous rule");
        let user = acl.find("user ").expect("a user block");
        let pattern = acl.find("pattern readwrite devices/%u/#").expect("pattern");
        assert!(anon < user && user < pattern, "{acl}");
    }

    #[test]
    fn a_username_client_id_pattern_is_use_username_as_clientid() {
        let mut b = example();
        b.client_id_pattern = Some("%u".into());
        let files = render(&b, &paths());
        assert!(
            files.conf.contains("\nuse_username_as_clientid true\n"),
            "{}",
            files.conf
        );
        assert!(files.not_expressed.is_empty());
    }

    #[test]
    fn other_client_id_patterns_are_reported_as_not_expressed() {
        let mut b = example();
        b.client_id_pattern = Some("%u-*".into());
        let files = render(&b, &paths());
        assert!(
            !files.conf.contains("\nuse_username_as_clientid true"),
            "{}",
            files.conf
        );
        assert_eq!(files.not_expressed.len(), 1);
        assert!(files.not_expressed[0].starts_with("clientIdPattern \"%u-*\" cannot be expressed"));
        assert!(files.conf.contains("# NOT EXPRESSED: clientIdPattern"));
        b.client_id_pattern = Some("%u".into());
        b.allow_anonymous = true;
        let files = render(&b, &paths());
        assert!(
            !files.conf.contains("\nuse_username_as_clientid true"),
            "{}",
            files.conf
        );
        assert!(files.not_expressed[0].contains("with allowAnonymous"));
    }

    #[test]
    fn without_acl_there_is_no_acl_file() {
        let mut b = example();
        b.acl.enabled = false;
        assert!(!render(&b, &paths()).conf.contains("acl_file"));
    }

    #[test]
    fn tls_sources_without_paths_use_the_mounted_secret_layout() {
        let mut p = paths();
        p.tls.clear();
        let conf = render(&example(), &p).conf;
        assert!(
            conf.contains("certfile /etc/mosquitto/tls/certificate-home-tls/tls.crt"),
            "{conf}"
        );
        assert_eq!(split_bind("[::1]:1883"), ("::1", "1883"));
    }

    #[test]
    fn client_auth_is_require_certificate_with_the_identity_as_username() {
        use crate::plan::{ClientAuthPlan, ClientCaSource, UserPlan};
        let mut b = example();
        let plan = ClientAuthPlan {
            required: true,
            ca: ClientCaSource::Certificate("devices-ca".into()),
            crl: Some(crate::api::SecretKeyRef {
                name: "crl".into(),
                key: "ca.crl".into(),
            }),
            identity: CertificateIdentity::CommonName,
            identity_as_client_id: false,
            refuse_unknown: false,
        };
        b.listeners[1].client_auth = Some(plan.clone());
        b.users.insert(
            "sensor-1".into(),
            UserPlan {
                password_hash: String::new(),
                certificate: true,
                source: "default/sensor-1".into(),
            },
        );
        let name = b.listeners[1].name.clone();
        let files = render(&b, &paths());
        let dir = format!("/etc/mosquitto/tls/client-ca-{name}");
        for line in [
            format!("cafile {dir}/ca.crt"),
            format!("crlfile {dir}/ca.crl"),
            "require_certificate true".into(),
            "use_identity_as_username true".into(),
        ] {
            assert!(
                files.conf.lines().any(|l| l == line),
                "{line}\n{}",
                files.conf
            );
        }
        assert!(!files.passwd.contains("sensor-1"), "{}", files.passwd);
        assert!(files.not_expressed.is_empty());

        // The whole subject; what Mosquitto cannot say is reported.
        b.listeners[1].client_auth = Some(ClientAuthPlan {
            identity: CertificateIdentity::Subject,
            refuse_unknown: true,
            ..plan.clone()
        });
        let files = render(&b, &paths());
        assert!(files.conf.contains("use_subject_as_username true\n"));
        assert_eq!(files.not_expressed.len(), 1, "{:?}", files.not_expressed);
        b.listeners[1].client_auth = Some(ClientAuthPlan {
            identity: CertificateIdentity::DnsName,
            required: false,
            ..plan
        });
        let files = render(&b, &paths());
        assert!(files.conf.contains("require_certificate false\n"));
        assert!(files.not_expressed[0].contains("optional"));
    }
}
