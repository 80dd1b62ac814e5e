//! certbot certificates (`/etc/letsencrypt/live/NAME/`) proposed as `acme`
//! Certificates with the same names, for `edgemq import mosquitto --propose-acme EMAIL`.
//!
//! The proposal is a file of commented YAML (`proposed-acme-certificates.yaml` in the
//! config folder): the challenge (HTTP-01 on a reachable port 80, or DNS-01 with a
//! provider's credentials) cannot be guessed from a Mosquitto installation, and an
//! active Certificate would start ordering from Let's Encrypt at the next start. As
//! comments it loads as nothing, so `edgemq validate` and `edgemq run` accept the
//! folder as imported, and the listener keeps serving the copied certbot files until
//! the user uncomments the Certificate and points the listener at it.

use std::fmt::Write as _;

use crate::api::certificate::{AcmeIssuer, AcmeSolver, Http01Solver, Issuer};
use crate::api::{Certificate, CertificateSpec};

pub use super::objects::Certbot;
use super::objects::{meta, Imported};

/// The file the proposal is written to, in the config folder.
pub const PROPOSAL_FILE: &str = "proposed-acme-certificates.yaml";

/// Let's Encrypt's production directory: certbot's default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The DNS names in the subjectAltName of the first certificate of `pem`.
pub fn san_dns_names(pem: &str) -> Vec<String> {
    let Ok((_, p)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else {
        return Vec::new();
    };
    let Ok(cert) = p.parse_x509() else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect()
}

/// The Certificate proposed for `c`.
pub fn certificate(c: &Certbot, email: &str) -> Certificate {
    Certificate {
        metadata: meta(&c.secret.replacen("tls-", "", 1)),
        spec: CertificateSpec {
            dns_names: c.dns_names.clone(),
            issuer: Issuer {
                acme: Some(AcmeIssuer {
                    server: LETS_ENCRYPT.into(),
                    email: Some(email.into()),
                    solver: AcmeSolver {
                        http01: Some(Http01Solver {
                            port: Some(80),
                            ..Http01Solver::default()
                        }),
                        ..AcmeSolver::default()
                    },
                    ..AcmeIssuer::default()
                }),
                ..Issuer::default()
            },
            ..CertificateSpec::default()
        },
        status: None,
    }
}

/// The text of [`PROPOSAL_FILE`], or `None` when no certbot certificate was imported.
pub fn proposal(imported: &Imported, email: &str) -> Option<String> {
    if imported.certbot.is_empty() {
        return None;
    }
    let mut s = String::from(
        "# Proposed by `edgemq import mosquitto --propose-acme`: the certbot certificates\n\
         # below, issued and renewed by edgemq itself. Every line is a comment, so nothing\n\
         # here is active and the listeners serve the copied certbot files. To switch:\n\
         #   1. uncomment a Certificate and check its solver: http01 needs port 80 of this\n\
         #      host reachable from the internet; otherwise use dns01 (README: \"DNS-01\n\
         #      solvers\");\n\
         #   2. in broker.yaml, replace the listener's `secretRef: <secret>` below with\n\
         #      `certificateRef: <name>`, and delete that Secret from the secrets folder;\n\
         #   3. run `edgemq validate`, then stop certbot renewing the certificate.\n",
    );
    for c in &imported.certbot {
        let cert = certificate(c, email);
        let listeners: Vec<&str> = imported
            .broker
            .object
            .spec
            .listeners
            .iter()
            .filter(|l| {
                l.tls
                    .as_ref()
                    .is_some_and(|t| t.secret_ref.as_deref() == Some(&c.secret))
            })
            .map(|l| l.name.as_str())
            .collect();
        let _ = write!(
            s,
            "#\n# certbot's {} (from {}): secretRef {} of listener(s) {}.\n# ---\n",
            c.name,
            c.pos,
            c.secret,
            listeners.join(", ")
        );
        for line in serde_yaml::to_string(&cert).unwrap_or_default().lines() {
            let _ = writeln!(s, "# {line}");
        }
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::Pos;

    fn leaf_with(names: &[&str]) -> String {
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").pem()
    }

    #[test]
    fn the_san_dns_names_are_read_in_order() {
        let pem = leaf_with(&["mqtt.example.org", "www.example.org"]);
        assert_eq!(
            san_dns_names(&pem),
            vec!["mqtt.example.org", "www.example.org"]
        );
        assert!(san_dns_names("not pem").is_empty());
    }

    #[test]
    fn the_proposed_certificate_uncommented_is_an_acme_certificate_with_those_names() {
        let c = Certbot {
            name: "mqtt.example.org".into(),
            secret: "tls-mqtt-example-org".into(),
            dns_names: vec!["mqtt.example.org".into(), "www.example.org".into()],
            pos: Pos {
                file: "/etc/mosquitto/mosquitto.conf".into(),
                line: 3,
            },
        };
        let yaml = serde_yaml::to_string(&certificate(&c, "ops@example.org")).unwrap();
        let back: Certificate = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back.metadata.name.as_deref(), Some("mqtt-example-org"));
        assert_eq!(back.spec.dns_names, c.dns_names);
        let acme = back.spec.issuer.acme.expect("acme");
        assert_eq!(acme.email.as_deref(), Some("ops@example.org"));
        assert_eq!(acme.server, LETS_ENCRYPT);
        assert!(yaml.contains("kind: Certificate"), "{yaml}");
    }
}
