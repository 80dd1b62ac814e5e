//! What the installer lets edgemq objects reach beyond their namespace, on a cluster.
//!
//! Whoever may write a Broker, Bridge or Certificate in a namespace gets no more than
//! the namespace already grants. Three things the controller holds would reach
//! further, and each is closed unless the installer opens it (chart values, passed as
//! flags or environment):
//!
//! ```text
//!  the controller's files     fleet `valueFrom.file`     fleetFileRoots      (default: none)
//!  its AWS identity           awsIot / route53 without   ambientAwsNamespaces (default: none)
//!                               a credentials Secret
//!  images run with the        Broker `spec.pod.image`    allowedBrokerImages (default: the
//!    namespace's Secrets                                                     controller's own)
//! ```
//!
//! Every decision here is pure; the reconcilers turn a refusal into a Ready=False
//! status with a reason, and nothing is sent or applied.

use std::path::{Component, Path, PathBuf};

/// Folders never read for a fleet parameter, even under an allowed root: the
/// controller's own credentials (its ServiceAccount token) and the kernel's view of
/// its processes (environment, memory, open files).
pub const FORBIDDEN_ROOTS: &[&str] = &["/var/run/secrets", "/run/secrets", "/proc"];

/// Status reason of an `awsIot` Certificate or ACME DNS-01 solver that needs AWS
/// credentials of its own.
pub const CREDENTIALS_REQUIRED: &str = "CredentialsRequired";
/// Status reason of a fleet parameter file outside the allowed roots.
pub const FILE_NOT_ALLOWED: &str = "FileNotAllowed";
/// Status reason of a Broker whose image the installer did not allow.
pub const IMAGE_NOT_ALLOWED: &str = "ImageNotAllowed";

/// Why a fleet parameter file is not read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// The installer does not allow it.
    #[error("{0}")]
    Refused(String),
    /// It is allowed but cannot be read (missing, no permission).
    #[error("{0}")]
    Unreadable(String),
}

enum Checked {
    Refused(String),
    Missing(String),
}

/// The installer's settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    /// Folders whose files fleet provisioning parameters may read (`valueFrom.file`).
    /// Empty: none.
    pub fleet_file_roots: Vec<PathBuf>,
    /// Namespaces whose Certificates may use the controller's own AWS credentials
    /// (IRSA, node role, environment). Empty: none; `*`: every namespace.
    pub ambient_aws_namespaces: Vec<String>,
    /// Images a Broker may name in `spec.pod.image` besides the controller's own: exact
    /// references, or a prefix ending in `*`.
    pub broker_images: Vec<String>,
}

impl Trust {
    /// Whether Certificates of `namespace` may use the controller's AWS identity.
    pub fn ambient_aws(&self, namespace: &str) -> bool {
        self.ambient_aws_namespaces
            .iter()
            .any(|n| n == "*" || n == namespace)
    }

    /// Why a Certificate of `namespace` without its own credentials is refused, if it
    /// is. `what` names the setting, for example `spec.issuer.awsIot.credentialsSecretRef`.
    pub fn ambient_aws_refusal(&self, namespace: &str, what: &str) -> Option<String> {
        (!self.ambient_aws(namespace)).then(|| {
            format!(
                "AWS credentials are required: set {what} to a Secret in namespace {namespace}; the controller's own AWS identity serves only the namespaces the installer lists (chart value ambientAwsNamespaces)"
            )
        })
    }

    /// Why `image` may not run as a broker pod, if it may not. `own` is the
    /// controller's image, always allowed.
    pub fn image_refusal(&self, image: &str, own: &str) -> Option<String> {
        let allowed = image == own
            || self
                .broker_images
                .iter()
                .any(|a| match a.strip_suffix('*') {
                    Some(prefix) => image.starts_with(prefix),
                    None => a == image,
                });
        (!allowed).then(|| {
            format!(
                "spec.pod.image {image} is not allowed: a broker pod reads the Secrets its Broker names, so it runs the controller's image ({own}) or one the installer lists (chart value allowedBrokerImages); nothing was applied"
            )
        })
    }

    /// The real path of a fleet parameter file, if the installer allows reading it:
    /// symbolic links resolved, under an allowed root, and never under
    /// [`FORBIDDEN_ROOTS`] (checked on the path as written and as resolved).
    pub fn fleet_file(&self, path: &str) -> Result<PathBuf, FileError> {
        self.check_fleet_file(path).map_err(|e| match e {
            Checked::Refused(m) => FileError::Refused(m),
            Checked::Missing(m) => FileError::Unreadable(m),
        })
    }

    fn check_fleet_file(&self, path: &str) -> Result<PathBuf, Checked> {
        use Checked::Refused;
        let hint = "(chart value fleetFileRoots)";
        let written = Path::new(path);
        if !written.is_absolute() {
            return Err(Refused(format!("{path}: not an absolute path")));
        }
        let lexical = normalize(written);
        if let Some(f) = forbidden(&lexical) {
            return Err(Refused(format!(
                "{path}: files under {f} are never read on a cluster (they hold the controller's credentials)"
            )));
        }
        if self.fleet_file_roots.is_empty() {
            return Err(Refused(format!(
                "{path}: this cluster allows no files for fleet parameters; the installer lists the folders that may be read {hint}"
            )));
        }
        let real =
            std::fs::canonicalize(written).map_err(|e| Checked::Missing(format!("{path}: {e}")))?;
        if let Some(f) = forbidden(&real) {
            return Err(Refused(format!(
                "{path}: resolves to {} under {f}, which is never read on a cluster",
                real.display()
            )));
        }
        let under_root = self.fleet_file_roots.iter().any(|root| {
            // A root is compared resolved too, so a root that is itself a link works
            // and a file linking out of it does not.
            let root = std::fs::canonicalize(root).unwrap_or_else(|_| normalize(root));
            forbidden(&root).is_none() && real.starts_with(&root)
        });
        if !under_root {
            let roots: Vec<String> = self
                .fleet_file_roots
                .iter()
                .map(|r| r.display().to_string())
                .collect();
            return Err(Refused(format!(
                "{path}: resolves to {}, outside the folders this cluster allows for fleet parameters ({}) {hint}",
                real.display(),
                roots.join(", ")
            )));
        }
        Ok(real)
    }
}

/// `path` with `.` and `..` folded away, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The forbidden folder `path` lies in, if any.
fn forbidden(path: &Path) -> Option<&'static str> {
    FORBIDDEN_ROOTS
        .iter()
        .find(|f| path.starts_with(f))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(r: &[&Path]) -> Trust {
        Trust {
            fleet_file_roots: r.iter().map(|p| p.to_path_buf()).collect(),
            ..Trust::default()
        }
    }

    #[test]
    fn without_roots_no_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("serial");
        std::fs::write(&f, "abc").unwrap();
        let e = Trust::default()
            .fleet_file(f.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("allows no files"), "{e}");
        assert!(e.contains("fleetFileRoots"), "{e}");
    }

    #[test]
    fn a_file_under_an_allowed_root_is_read_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("host");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::write(allowed.join("serial"), "abc").unwrap();
        std::fs::write(dir.path().join("other"), "x").unwrap();
        let t = roots(&[&allowed]);
        let ok = t
            .fleet_file(allowed.join("serial").to_str().unwrap())
            .unwrap();
        assert_eq!(ok, allowed.join("serial").canonicalize().unwrap());
        let e = t
            .fleet_file(dir.path().join("other").to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the folders"), "{e}");
        // `..` out of the root is the same file outside it.
        let dotdot = format!("{}/../other", allowed.display());
        assert!(t
            .fleet_file(&dotdot)
            .unwrap_err()
            .to_string()
            .contains("outside"));
        // A missing file under a root is unreadable, not refused.
        let missing = t.fleet_file(allowed.join("nope").to_str().unwrap());
        assert!(
            matches!(missing, Err(FileError::Unreadable(_))),
            "{missing:?}"
        );
    }

    #[test]
    fn a_link_out_of_an_allowed_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("host");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::write(dir.path().join("secret"), "token").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), allowed.join("serial")).unwrap();
        let e = roots(&[&allowed])
            .fleet_file(allowed.join("serial").to_str().unwrap())
            .unwrap_err();
        assert!(
            matches!(&e, FileError::Refused(m) if m.contains("outside the folders")),
            "{e}"
        );
    }

    #[test]
    fn the_token_and_proc_are_refused_even_when_listed() {
        let t = roots(&[Path::new("/"), Path::new("/proc"), Path::new("/var/run")]);
        for p in [
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "/run/secrets/kubernetes.io/serviceaccount/token",
            "/proc/self/environ",
            "/etc/../proc/1/environ",
        ] {
            let e = t.fleet_file(p).unwrap_err();
            assert!(
                matches!(&e, FileError::Refused(m) if m.contains("never read")),
                "{p}: {e}"
            );
        }
        // A root under a forbidden folder opens nothing, and "/" does not open /proc.
        let e = roots(&[Path::new("/proc")])
            .fleet_file("/proc/cpuinfo")
            .unwrap_err()
            .to_string();
        assert!(e.contains("never read"), "{e}");
        assert!(t.fleet_file("relative/serial").is_err());
    }

    #[test]
    fn ambient_aws_identity_serves_only_listed_namespaces() {
        let t = Trust {
            ambient_aws_namespaces: vec!["iot".into()],
            ..Trust::default()
        };
        assert!(t.ambient_aws("iot"));
        assert!(!t.ambient_aws("other"));
        let e = t
            .ambient_aws_refusal("other", "credentialsSecretRef")
            .unwrap();
        assert!(e.contains("credentials are required"), "{e}");
        assert!(Trust::default().ambient_aws_refusal("iot", "x").is_some());
        let all = Trust {
            ambient_aws_namespaces: vec!["*".into()],
            ..Trust::default()
        };
        assert!(all.ambient_aws("anything"));
    }

    #[test]
    fn broker_images_are_the_controllers_own_or_listed() {
        let own = "registry.local/edgemq:1.0";
        let t = Trust {
            broker_images: vec![
                "registry.local/edgemq-debug:2".into(),
                "mirror.local/edgemq:*".into(),
            ],
            ..Trust::default()
        };
        assert!(t.image_refusal(own, own).is_none());
        assert!(t
            .image_refusal("registry.local/edgemq-debug:2", own)
            .is_none());
        assert!(t.image_refusal("mirror.local/edgemq:1.1", own).is_none());
        let e = t.image_refusal("evil/cat-secrets:latest", own).unwrap();
        assert!(
            e.contains("evil/cat-secrets:latest") && e.contains("allowedBrokerImages"),
            "{e}"
        );
        assert!(t
            .image_refusal("registry.local/edgemq-debug:3", own)
            .is_some());
        assert!(Trust::default()
            .image_refusal("edgemq:other", own)
            .is_some());
    }
}
