//! Files a rendered configuration names, shared by the broker's and the bridges' parts.

use std::path::PathBuf;

/// Certificate and key files of one TLS source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub certfile: PathBuf,
    /// PEM private key.
    pub keyfile: PathBuf,
}

impl TlsFiles {
    /// `tls.crt` and `tls.key` in `dir`: the layout of a mounted `kubernetes.io/tls`
    /// Secret, and of a key pair edgemq keeps in its state directory.
    pub fn in_dir(dir: &std::path::Path) -> TlsFiles {
        TlsFiles {
            certfile: dir.join("tls.crt"),
            keyfile: dir.join("tls.key"),
        }
    }
}
