//! `edgemq render --format mosquitto`: a bundle's Mosquitto files written to a folder,
//! with the key pairs and credentials they name. The side-effect edge of
//! [`super::mosquitto`], which only renders text.

/// What [`mosquitto`] wrote.
pub struct Written {
    /// Each file, in the order written.
    pub files: Vec<std::path::PathBuf>,
    /// What Mosquitto's configuration cannot say, for the user to read.
    pub not_expressed: Vec<String>,
}

/// Writes mosquitto.conf, passwd and acl for `bundle` into `out`. Key pairs from
/// Secrets are written under `out/tls/`; issued Certificates are referenced where
/// `edgemq run` keeps them in the state directory.
pub fn mosquitto(
    res: &crate::load::Resources,
    bundle: &crate::plan::BrokerBundle,
    out: &std::path::Path,
    state: &std::path::Path,
) -> anyhow::Result<Written> {
    use crate::plan::TlsSource;
    use crate::render::mosquitto::{render, MosquittoPaths, TlsFiles};
    std::fs::create_dir_all(out)?;
    let out = std::fs::canonicalize(out)?;
    let mut paths = MosquittoPaths {
        config_dir: out.clone(),
        persistence_dir: out.join("data"),
        ..MosquittoPaths::default()
    };
    for l in &bundle.listeners {
        let Some(src) = &l.tls else { continue };
        let files = match src {
            TlsSource::Secret(name) => {
                let dir = out.join("tls").join(format!("secret-{name}"));
                for key in ["tls.crt", "tls.key"] {
                    let value = res
                        .secret_value(&bundle.namespace, name, key)
                        .ok_or_else(|| anyhow::anyhow!("Secret {name} has no key {key}"))?;
                    crate::certs::write_private(&dir.join(key), &value)?;
                }
                TlsFiles::in_dir(&dir)
            }
            TlsSource::Certificate(name) => {
                let cert = res
                    .certificate(&bundle.namespace, name)
                    .ok_or_else(|| anyhow::anyhow!("Certificate {name} not found"))?;
                let dir = std::path::absolute(crate::certs::cert_dir(state, cert))?;
                TlsFiles::in_dir(&dir)
            }
        };
        paths.tls.insert(src.clone(), files);
    }
    for l in &bundle.listeners {
        let Some(c) = &l.client_auth else { continue };
        let dir = out.join("tls").join(format!("client-ca-{}", l.name));
        let ca = match &c.ca {
            crate::plan::ClientCaSource::Secret(r) => res
                .secret_value(&bundle.namespace, &r.name, &r.key)
                .ok_or_else(|| anyhow::anyhow!("Secret {} has no key {}", r.name, r.key))?,
            crate::plan::ClientCaSource::Certificate(name) => {
                let cert = res
                    .certificate(&bundle.namespace, name)
                    .ok_or_else(|| anyhow::anyhow!("Certificate {name} not found"))?;
                let issued = crate::certs::cert_dir(state, cert);
                std::fs::read(issued.join("ca.crt"))
                    .or_else(|_| std::fs::read(issued.join("tls.crt")))
                    .map_err(|e| anyhow::anyhow!("Certificate {name} is not issued yet: {e}"))?
            }
        };
        crate::certs::write_private(&dir.join("ca.crt"), &ca)?;
        let crlfile = match &c.crl {
            None => None,
            Some(r) => {
                let crl = res
                    .secret_value(&bundle.namespace, &r.name, &r.key)
                    .ok_or_else(|| anyhow::anyhow!("Secret {} has no key {}", r.name, r.key))?;
                crate::certs::write_private(&dir.join("ca.crl"), &crl)?;
                Some(dir.join("ca.crl"))
            }
        };
        paths.client_ca.insert(
            l.name.clone(),
            crate::render::mosquitto::ClientCaFiles {
                cafile: dir.join("ca.crt"),
                crlfile,
            },
        );
    }
    paths.bridges = bridge_files(res, bundle, &out, state)?;
    let private = paths
        .bridges
        .values()
        .any(|b| b.username.is_some() || b.password.is_some());
    let files = render(bundle, &paths);
    let mut written = Written {
        files: Vec::new(),
        not_expressed: files.not_expressed.clone(),
    };
    for (name, text) in [
        ("mosquitto.conf", &files.conf),
        ("passwd", &files.passwd),
        ("acl", &files.acl),
    ] {
        let path = out.join(name);
        if name == "mosquitto.conf" && !private {
            std::fs::write(&path, text)?;
        } else {
            crate::certs::write_private(&path, text.as_bytes())?;
        }
        written.files.push(path);
    }
    Ok(written)
}

/// Logins and TLS files of each Bridge of `bundle` for [`mosquitto`]: Secret
/// values read, PEM from Secrets written under `out/bridges/NAME/`, issued
/// Certificates referenced in the state directory.
fn bridge_files(
    res: &crate::load::Resources,
    bundle: &crate::plan::BrokerBundle,
    out: &std::path::Path,
    state: &std::path::Path,
) -> anyhow::Result<std::collections::BTreeMap<String, crate::render::mosquitto_bridges::BridgeFiles>>
{
    use crate::plan::{CaSource, TlsSource};
    use crate::render::mosquitto::TlsFiles;
    use crate::render::mosquitto_bridges::BridgeFiles;
    let ns = &bundle.namespace;
    let value = |name: &str, key: &str| {
        res.secret_value(ns, name, key)
            .ok_or_else(|| anyhow::anyhow!("Secret {name} has no key {key}"))
    };
    let text = |v: Vec<u8>| String::from_utf8_lossy(&v).trim_end().to_owned();
    let cert_dir = |name: &str| -> anyhow::Result<std::path::PathBuf> {
        let cert = res
            .certificate(ns, name)
            .ok_or_else(|| anyhow::anyhow!("Certificate {name} not found"))?;
        Ok(std::path::absolute(crate::certs::cert_dir(state, cert))?)
    };
    let mut all = std::collections::BTreeMap::new();
    for (name, br) in &bundle.bridges {
        let dir = out.join("bridges").join(name);
        let mut f = BridgeFiles {
            username: br
                .username
                .as_ref()
                .map(|r| value(&r.name, &r.key))
                .transpose()?
                .map(text),
            password: br
                .password
                .as_ref()
                .map(|r| value(&r.name, &r.key))
                .transpose()?
                .map(text),
            ..BridgeFiles::default()
        };
        if let Some(tls) = &br.tls {
            f.cafile = match &tls.ca {
                CaSource::System => None,
                CaSource::Secret(r) => {
                    let path = dir.join("ca.crt");
                    crate::certs::write_private(&path, &value(&r.name, &r.key)?)?;
                    Some(path)
                }
                CaSource::Certificate(c) => Some(cert_dir(c)?.join("ca.crt")),
            };
            f.client = match &tls.client {
                None => None,
                Some(TlsSource::Secret(s)) => {
                    for key in ["tls.crt", "tls.key"] {
                        crate::certs::write_private(&dir.join(key), &value(s, key)?)?;
                    }
                    Some(TlsFiles::in_dir(&dir))
                }
                Some(TlsSource::Certificate(c)) => {
                    let d = cert_dir(c)?;
                    Some(TlsFiles::in_dir(&d))
                }
            };
        }
        all.insert(name.clone(), f);
    }
    Ok(all)
}
