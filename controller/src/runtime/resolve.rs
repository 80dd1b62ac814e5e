//! Resolving a bundle against its material: the key pairs of TLS listeners and what
//! each bridge runs (address, credentials, TLS), looked up through [`Materials`].
//!
//! The plan references Secrets and Certificates by name; where their values come from
//! depends on the front door. Standalone: the folder's Secret manifests and the
//! certificates issued into the state directory. Kubernetes: Secrets read through the
//! API by the broker pod. Both implement [`Materials`], so the runtime never knows.

use std::collections::BTreeMap;

use crate::api::SecretKeyRef;
use crate::bridge::tls::ClientTls;
use crate::bridge::ResolvedBridge;
use crate::broker::client_cert::ClientCaMaterial;
use crate::broker::ListenerMaterial;
use crate::plan::{BridgePlan, BrokerBundle, CaSource, ClientCaSource, RemoteAddress, TlsSource};
use crate::tls::TlsMaterial;

/// Where Secret values and issued key pairs come from.
pub trait Materials {
    /// One key of a Secret in `namespace`; `None` when the Secret or key is missing.
    fn secret_value(&mut self, namespace: &str, name: &str, key: &str) -> Option<Vec<u8>>;
    /// The key pair of Certificate `namespace/name`, or why there is none (yet).
    fn certificate(&mut self, namespace: &str, name: &str) -> Result<TlsMaterial, String>;
    /// The CA chain (`ca.crt`) that issued Certificate `namespace/name`, when known.
    fn certificate_ca(&mut self, namespace: &str, name: &str) -> Option<String>;
    /// The AWS IoT data endpoint (`host` or `host:port`) an `awsIot` Certificate's
    /// issuer recorded, when it has run.
    fn certificate_endpoint(&mut self, namespace: &str, name: &str) -> Option<String>;
    /// The thing name an `awsIot` `fleetProvisioning` Certificate was provisioned as,
    /// once it has been.
    fn certificate_thing_name(&mut self, _namespace: &str, _name: &str) -> Option<String> {
        None
    }
}

/// The key pair in a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`).
pub fn secret_key_pair(
    m: &mut impl Materials,
    namespace: &str,
    name: &str,
) -> Result<TlsMaterial, String> {
    let mut get = |k: &str| {
        m.secret_value(namespace, name, k)
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or_else(|| format!("Secret {name} has no key {k}"))
    };
    Ok(TlsMaterial {
        cert_pem: get("tls.crt")?,
        key_pem: get("tls.key")?,
    })
}

/// One Secret key as text, or an error naming the field (`what`) it was for.
fn secret_text(
    m: &mut impl Materials,
    namespace: &str,
    r: &SecretKeyRef,
    what: &str,
) -> Result<String, String> {
    let v = m
        .secret_value(namespace, &r.name, &r.key)
        .ok_or_else(|| format!("{what}: Secret {} has no key {}", r.name, r.key))?;
    String::from_utf8(v)
        .map_err(|_| format!("{what}: Secret {} key {} is not UTF-8", r.name, r.key))
}

/// The key pair of every TLS listener of a bundle (and, with `clientAuth`, its client
/// CA and CRL), by listener name.
pub fn resolve_tls(
    bundle: &BrokerBundle,
    m: &mut impl Materials,
) -> Result<BTreeMap<String, ListenerMaterial>, String> {
    let mut out = BTreeMap::new();
    for l in &bundle.listeners {
        let Some(src) = &l.tls else { continue };
        let material = match src {
            TlsSource::Secret(name) => secret_key_pair(m, &bundle.namespace, name)
                .map_err(|e| format!("listener {}: {e}", l.name))?,
            TlsSource::Certificate(name) => m
                .certificate(&bundle.namespace, name)
                .map_err(|e| format!("listener {}: Certificate {name}: {e}", l.name))?,
        };
        let client_ca = match &l.client_auth {
            None => None,
            Some(c) => {
                let ns = bundle.namespace.as_str();
                let ca_pem = match &c.ca {
                    ClientCaSource::Secret(r) => secret_text(m, ns, r, "clientAuth.caSecretRef"),
                    ClientCaSource::Certificate(name) => m
                        .certificate(ns, name)
                        .map(|pair| m.certificate_ca(ns, name).unwrap_or(pair.cert_pem))
                        .map_err(|e| {
                            format!("clientAuth.caCertificateRef: Certificate {name}: {e}")
                        }),
                }
                .map_err(|e| format!("listener {}: {e}", l.name))?;
                let crl = match &c.crl {
                    None => None,
                    Some(r) => Some(m.secret_value(ns, &r.name, &r.key).ok_or_else(|| {
                        format!(
                            "listener {}: clientAuth.crlSecretRef: Secret {} has no key {}",
                            l.name, r.name, r.key
                        )
                    })?),
                };
                Some(ClientCaMaterial { ca_pem, crl })
            }
        };
        out.insert(
            l.name.clone(),
            ListenerMaterial {
                pair: material,
                client_ca,
            },
        );
    }
    Ok(out)
}

/// What a bridge runs: the address (also from an awsIot Certificate's endpoint),
/// credentials from Secrets, and TLS material.
pub fn resolve_bridge(plan: &BridgePlan, m: &mut impl Materials) -> Result<ResolvedBridge, String> {
    let ns = plan.namespace.as_str();
    let (host, port) = match &plan.address {
        RemoteAddress::HostPort(a) => {
            let (h, p) = a
                .rsplit_once(':')
                .ok_or_else(|| format!("address `{a}` must be host:port"))?;
            let p: u16 = p.parse().map_err(|_| format!("address `{a}`: bad port"))?;
            (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p,
            )
        }
        RemoteAddress::AwsIotEndpoint { certificate, port } => {
            let host = m
                .certificate_endpoint(ns, certificate)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    format!("Certificate {certificate} has no AWS IoT endpoint yet (its awsIot issuer has not run)")
                })?;
            // `host`, or `host:port` when the issuer's `dataEndpoint` names a port.
            match host
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            {
                Some((h, p)) => (h.to_string(), p),
                None => (host, *port),
            }
        }
    };
    let username = plan
        .username
        .as_ref()
        .map(|r| secret_text(m, ns, r, "username"))
        .transpose()?;
    let password = plan
        .password
        .as_ref()
        .map(|r| secret_text(m, ns, r, "password"))
        .transpose()?;
    let tls = match &plan.tls {
        None => None,
        Some(t) => {
            let roots_pem = match &t.ca {
                CaSource::System => None,
                CaSource::Secret(r) => Some(secret_text(m, ns, r, "caSecretRef")?),
                CaSource::Certificate(name) => {
                    let pair = m
                        .certificate(ns, name)
                        .map_err(|e| format!("caCertificateRef: Certificate {name}: {e}"))?;
                    Some(m.certificate_ca(ns, name).unwrap_or(pair.cert_pem))
                }
            };
            let client = match &t.client {
                None => None,
                Some(TlsSource::Certificate(name)) => Some(
                    m.certificate(ns, name)
                        .map_err(|e| format!("clientCertificateRef: Certificate {name}: {e}"))?,
                ),
                Some(TlsSource::Secret(name)) => Some(
                    secret_key_pair(m, ns, name).map_err(|e| format!("clientSecretRef: {e}"))?,
                ),
            };
            Some(ClientTls {
                roots_pem,
                client,
                alpn: t.alpn.clone(),
                server_name: t.server_name.clone().unwrap_or_else(|| host.clone()),
            })
        }
    };
    // An empty client id: the thing name of a fleet-provisioned client certificate,
    // known only once the device is provisioned.
    let mut plan = plan.clone();
    if plan.client_id.is_empty() {
        if let Some(TlsSource::Certificate(name)) =
            plan.tls.as_ref().and_then(|t| t.client.as_ref())
        {
            plan.client_id = m.certificate_thing_name(ns, name).ok_or_else(|| {
                format!("Certificate {name} has no thing name yet (the device is not provisioned)")
            })?;
        }
    }
    Ok(ResolvedBridge {
        plan,
        host,
        port,
        username,
        password,
        tls,
    })
}
