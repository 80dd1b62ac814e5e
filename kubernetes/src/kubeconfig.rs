//! The Kubernetes client's configuration, found where kube's `Client::try_default`
//! finds it: the files `KUBECONFIG` lists, merged (else `~/.kube/config`); failing that,
//! the Pod's service account. The one difference is the parser: the kubeconfig is read
//! with serde_yaml, the YAML parser edgemq reads every resource with. kube's own reader
//! instantiates serde-saphyr's deserializer for the whole kubeconfig, 0.26 MB of the
//! release binary (serde-saphyr itself stays: kube parses an exec plugin's answer with
//! it).
//!
//! What kube's reader does besides parsing is done the same way here: every YAML
//! document of every file is merged with kube's `Kubeconfig::merge` (the first file to
//! set a value wins), and the relative paths in a file (certificate authority, client
//! certificate and key, token file, an exec command with a path separator) are taken
//! relative to that file's directory.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::Deserialize;

/// A client from the kubeconfig, else from the Pod's service account; the error names
/// why neither could be used.
pub async fn client() -> anyhow::Result<kube::Client> {
    let mut config = match from_kubeconfig().await {
        Ok(config) => config,
        Err(kubeconfig) => kube::Config::incluster().map_err(|in_cluster| {
            anyhow::anyhow!(
                "no Kubernetes configuration: not in a cluster ({in_cluster}), \
                 and no usable kubeconfig ({kubeconfig:#})"
            )
        })?,
    };
    config.apply_debug_overrides();
    Ok(kube::Client::try_from(config)?)
}

async fn from_kubeconfig() -> anyhow::Result<kube::Config> {
    let kubeconfig = read(&paths()?)?;
    Ok(kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
}

/// The files `KUBECONFIG` lists (empty entries left out), else `~/.kube/config`.
fn paths() -> anyhow::Result<Vec<PathBuf>> {
    let listed: Vec<PathBuf> = std::env::var_os("KUBECONFIG")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if !listed.is_empty() {
        return Ok(listed);
    }
    let home = std::env::home_dir()
        .ok_or_else(|| anyhow::anyhow!("KUBECONFIG is not set and there is no home directory"))?;
    Ok(vec![home.join(".kube").join("config")])
}

/// The files merged in order: the first to set a value wins.
fn read(paths: &[PathBuf]) -> anyhow::Result<Kubeconfig> {
    paths
        .iter()
        .try_fold(Kubeconfig::default(), |merged, path| {
            Ok(merged.merge(read_file(path)?)?)
        })
}

fn read_file(path: &Path) -> anyhow::Result<Kubeconfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("kubeconfig {}: {e}", path.display()))?;
    let dir = path.parent();
    let mut merged = Kubeconfig::default();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let mut config = Kubeconfig::deserialize(document)
            .map_err(|e| anyhow::anyhow!("kubeconfig {}: {e}", path.display()))?;
        if let Some(dir) = dir {
            absolute_paths(&mut config, dir);
        }
        merged = merged.merge(config)?;
    }
    Ok(merged)
}

/// The file names in `config` made relative to `dir`, the directory of its file.
fn absolute_paths(config: &mut Kubeconfig, dir: &Path) {
    let absolute = |file: Option<&mut String>| {
        if let Some(file) = file.filter(|f| Path::new(f.as_str()).is_relative()) {
            if let Some(joined) = dir.join(file.as_str()).to_str() {
                *file = joined.to_string();
            }
        }
    };
    for cluster in config
        .clusters
        .iter_mut()
        .filter_map(|c| c.cluster.as_mut())
    {
        absolute(cluster.certificate_authority.as_mut());
    }
    for auth in config
        .auth_infos
        .iter_mut()
        .filter_map(|a| a.auth_info.as_mut())
    {
        absolute(auth.client_certificate.as_mut());
        absolute(auth.client_key.as_mut());
        absolute(auth.token_file.as_mut());
        // A bare command (`aws`) is looked up in PATH, as client-go does.
        let command = auth.exec.as_mut().and_then(|e| e.command.as_mut());
        absolute(command.filter(|c| c.contains(std::path::MAIN_SEPARATOR)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    const FIRST: &str = "\
apiVersion: v1
kind: Config
current-context: edge
clusters:
- name: edge
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority: certs/ca.crt
users:
- name: admin
  user:
    client-certificate: /etc/admin.crt
    client-key: admin.key
    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: ./bin/token
contexts:
- name: edge
  context: {cluster: edge, user: admin, namespace: iot}
";

    #[test]
    fn files_merge_in_order_and_relative_paths_follow_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = write(dir.path(), "first", FIRST);
        let second = write(
            dir.path(),
            "second",
            "current-context: other\nclusters:\n- name: edge\n  cluster: {server: https://10.0.0.1}\n\
             - name: other\n  cluster: {server: https://10.0.0.2, certificate-authority: ca2.crt}\n",
        );
        let config = read(&[first, second]).unwrap();
        assert_eq!(
            config.current_context.as_deref(),
            Some("edge"),
            "the first file wins"
        );
        let clusters: Vec<_> = config
            .clusters
            .iter()
            .map(|c| {
                let cluster = c.cluster.as_ref().unwrap();
                (
                    c.name.as_str(),
                    cluster.server.clone().unwrap(),
                    cluster.certificate_authority.clone(),
                )
            })
            .collect();
        let d = dir.path().display();
        assert_eq!(
            clusters,
            [
                (
                    "edge",
                    "https://127.0.0.1:6443".to_string(),
                    Some(format!("{d}/certs/ca.crt"))
                ),
                (
                    "other",
                    "https://10.0.0.2".to_string(),
                    Some(format!("{d}/ca2.crt"))
                ),
            ]
        );
        let user = config.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(user.client_certificate.as_deref(), Some("/etc/admin.crt"));
        assert_eq!(user.client_key, Some(format!("{d}/admin.key")));
        let exec = user.exec.as_ref().unwrap();
        assert_eq!(exec.command, Some(format!("{d}/./bin/token")));
        assert_eq!(
            config.contexts[0]
                .context
                .as_ref()
                .unwrap()
                .namespace
                .as_deref(),
            Some("iot")
        );
    }

    #[test]
    fn documents_of_one_file_merge_and_an_empty_file_is_an_empty_config() {
        let dir = tempfile::tempdir().unwrap();
        let two = write(
            dir.path(),
            "two",
            &format!("{FIRST}---\ncurrent-context: later\n"),
        );
        assert_eq!(
            read(&[two]).unwrap().current_context.as_deref(),
            Some("edge")
        );
        let empty = write(dir.path(), "empty", "");
        let config = read(&[empty]).unwrap();
        assert!(config.clusters.is_empty() && config.current_context.is_none());
    }

    #[test]
    fn an_unreadable_or_invalid_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let e = read(std::slice::from_ref(&missing))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("kubeconfig {}: ", missing.display())),
            "{e}"
        );
        let bad = write(dir.path(), "bad", "clusters: [\n");
        let e = read(std::slice::from_ref(&bad)).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("kubeconfig {}: ", bad.display())),
            "{e}"
        );
    }
}
