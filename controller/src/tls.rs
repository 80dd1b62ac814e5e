//! A PEM key pair: what a Certificate issues, a TLS listener serves and a bridge
//! presents. A leaf module, so the issuers, the front doors and the broker share it
//! without importing each other.

/// PEM key pair served by a TLS listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsMaterial {
    /// Certificate chain, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
}
