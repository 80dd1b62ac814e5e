//! The bundle Secret: what the controller hands to a Broker's pod.
//!
//! The plan's [`BrokerBundle`] references Secrets and Certificates by name; on a
//! cluster a Certificate's key pair lives in the Secret its `spec.secretName` names.
//! [`PodBundle`] carries the bundle plus that mapping, and the list of Secrets the pod
//! must read (and is allowed to read: the pod's Role names exactly these).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use edgemq::load::Resources;
use edgemq::plan::{BrokerBundle, CaSource, ClientCaSource, RemoteAddress, TlsSource};

/// Name of a Broker's bundle Secret.
pub fn bundle_secret_name(broker: &str) -> String {
    format!("edgemq-{broker}-bundle")
}

/// Key of the bundle Secret holding the [`PodBundle`] as JSON.
pub const BUNDLE_KEY: &str = "bundle.json";
/// Key of the bundle Secret holding the bundle's hash (for people and `kubectl`).
pub const HASH_KEY: &str = "hash";

/// A Broker's configuration as its pod reads it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodBundle {
    /// The plan's output for this Broker.
    pub bundle: BrokerBundle,
    /// Secret name of each Certificate the bundle references, by Certificate name.
    pub certificate_secrets: BTreeMap<String, String>,
    /// Every Secret the pod reads (TLS pairs, bridge credentials, CAs).
    pub secrets: BTreeSet<String>,
}

impl PodBundle {
    /// The pod's view of `bundle`: Certificates resolved to their Secrets in `res`.
    pub fn new(bundle: BrokerBundle, res: &Resources) -> PodBundle {
        let ns = bundle.namespace.clone();
        let mut certificates = BTreeSet::new();
        let mut secrets = BTreeSet::new();
        let mut source = |s: &TlsSource, certificates: &mut BTreeSet<String>| match s {
            TlsSource::Secret(n) => {
                secrets.insert(n.clone());
            }
            TlsSource::Certificate(n) => {
                certificates.insert(n.clone());
            }
        };
        let mut refs = BTreeSet::new();
        for l in &bundle.listeners {
            if let Some(t) = &l.tls {
                source(t, &mut certificates);
            }
            // A listener's client CA and CRL, read and watched like its key pair.
            if let Some(c) = &l.client_auth {
                match &c.ca {
                    ClientCaSource::Secret(r) => {
                        refs.insert(r.name.clone());
                    }
                    ClientCaSource::Certificate(n) => {
                        certificates.insert(n.clone());
                    }
                }
                if let Some(r) = &c.crl {
                    refs.insert(r.name.clone());
                }
            }
        }
        for b in bundle.bridges.values() {
            if let RemoteAddress::AwsIotEndpoint { certificate, .. } = &b.address {
                certificates.insert(certificate.clone());
            }
            for r in b.username.iter().chain(b.password.iter()) {
                refs.insert(r.name.clone());
            }
            if let Some(t) = &b.tls {
                match &t.ca {
                    CaSource::System => {}
                    CaSource::Secret(r) => {
                        refs.insert(r.name.clone());
                    }
                    CaSource::Certificate(n) => {
                        certificates.insert(n.clone());
                    }
                }
                if let Some(c) = &t.client {
                    source(c, &mut certificates);
                }
            }
        }
        secrets.extend(refs);
        let certificate_secrets: BTreeMap<String, String> = certificates
            .into_iter()
            .map(|c| {
                let secret = res
                    .certificate(&ns, &c)
                    .map(|cert| cert.secret_name())
                    .unwrap_or_else(|| c.clone());
                (c, secret)
            })
            .collect();
        secrets.extend(certificate_secrets.values().cloned());
        PodBundle {
            bundle,
            certificate_secrets,
            secrets,
        }
    }
}
