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
