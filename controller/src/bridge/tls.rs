//! TLS towards a bridge's remote: roots (the system's, or a CA from a Secret or
//! Certificate), an optional client key pair (mutual TLS), ALPN, and the name checked
//! against the remote's certificate.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use crate::tls::TlsMaterial;

/// Resolved TLS settings of a bridge.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM roots; `None`: the operating system's roots.
    pub roots_pem: Option<String>,
    /// Key pair presented to the remote.
    pub client: Option<TlsMaterial>,
    /// ALPN protocols offered.
    pub alpn: Vec<String>,
    /// Name checked against the remote's certificate (and sent as SNI).
    pub server_name: String,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("custom_roots", &self.roots_pem.is_some())
            .field("client_certificate", &self.client.is_some())
            .field("alpn", &self.alpn)
            .field("server_name", &self.server_name)
            .finish()
    }
}

fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no PEM certificate found"));
    }
    Ok(certs)
}

/// Builds the rustls client configuration and the server name to check.
pub fn client_config(tls: &ClientTls) -> Result<(Arc<ClientConfig>, ServerName<'static>), String> {
    let mut roots = RootCertStore::empty();
    match &tls.roots_pem {
        Some(pem) => {
            for c in certs(pem, "CA certificate")? {
                roots.add(c).map_err(|e| format!("CA certificate: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(
                    "no system CA certificates found (install the CA certificates package, or set caSecretRef/caCertificateRef)"
                        .into(),
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match &tls.client {
        Some(m) => {
            let chain = certs(&m.cert_pem, "client certificate")?;
            let key: PrivateKeyDer<'static> =
                rustls_pemfile::private_key(&mut m.key_pem.as_bytes())
                    .map_err(|e| format!("client key: {e}"))?
                    .ok_or("client key: no PEM private key found")?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let name = ServerName::try_from(tls.server_name.clone())
        .map_err(|_| format!("`{}` is not a valid TLS server name", tls.server_name))?;
    Ok((Arc::new(config), name))
}
