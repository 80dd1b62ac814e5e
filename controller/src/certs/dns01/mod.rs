//! DNS-01: publishes the ACME challenge token as a TXT record
//! `_acme-challenge.<domain>` through one DNS provider, waits until the record can be
//! seen, and removes it afterwards.
//!
//! Providers, one file each: RFC 2136 dynamic updates signed with TSIG
//! ([`rfc2136`]), Cloudflare's API ([`cloudflare`]), AWS Route 53 ([`route53`]) and a
//! user command ([`exec`]). [`propagation`] asks name servers directly until they
//! answer with the value, so the CA is only asked to validate once it can succeed.
//!
//! Secrets are resolved when a [`Dns01`] is built, so a missing Secret or key is
//! reported before anything is sent. Every error names the provider and the cause.

pub mod cloudflare;
pub mod exec;
pub mod propagation;
pub mod rfc2136;
pub mod route53;

use std::time::Duration;

use crate::api::certificate::Dns01Solver;
use crate::api::SecretKeyRef;

/// Prefix of the TXT record name a CA looks up for DNS-01.
pub const RECORD_PREFIX: &str = "_acme-challenge.";

/// TTL of the challenge records, in seconds: short, so a retry is not hidden behind
/// a cached old value.
pub const RECORD_TTL: u32 = 60;

/// The TXT record name for `domain`: `_acme-challenge.<domain>`, without a trailing
/// dot. A wildcard's `*.` is dropped, as RFC 8555 §8.4 asks.
pub fn record_name(domain: &str) -> String {
    let d = domain.trim_end_matches('.');
    let d = d.strip_prefix("*.").unwrap_or(d);
    format!("{RECORD_PREFIX}{d}")
}

/// Names from `name` up to its last two labels, most specific first: where the zone
/// holding `name` may start, when a provider has to look it up.
/// `_acme-challenge.a.example.com` → `a.example.com`, `example.com`.
pub(crate) fn zone_candidates(name: &str) -> Vec<String> {
    let name = name.trim_end_matches('.');
    let name = name.strip_prefix(RECORD_PREFIX).unwrap_or(name);
    let labels: Vec<&str> = name.split('.').filter(|l| !l.is_empty()).collect();
    let min = if labels.len() >= 2 { 2 } else { 1 };
    (0..=labels.len().saturating_sub(min))
        .map(|i| labels[i..].join("."))
        .collect()
}

/// A Secret value a provider needs that cannot be used; each names the provider, its
/// field and the Secret key.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The Secret or its key does not exist.
    #[error("{provider}: {field}: Secret `{name}` has no key `{key}` (or does not exist)")]
    Missing {
        /// `rfc2136`, `cloudflare` or `route53`.
        provider: &'static str,
        /// The provider's field that refers to the Secret.
        field: &'static str,
        /// Secret name.
        name: String,
        /// Key in the Secret.
        key: String,
    },
    /// The value must be text and is not UTF-8.
    #[error("{provider}: {field}: Secret `{name}` key `{key}` is not UTF-8 text")]
    NotText {
        /// `cloudflare` or `route53`.
        provider: &'static str,
        /// The provider's field that refers to the Secret.
        field: &'static str,
        /// Secret name.
        name: String,
        /// Key in the Secret.
        key: String,
    },
    /// The value is only whitespace.
    #[error("{provider}: {field}: Secret `{name}` key `{key}` is empty")]
    Empty {
        /// `cloudflare` or `route53`.
        provider: &'static str,
        /// The provider's field that refers to the Secret.
        field: &'static str,
        /// Secret name.
        name: String,
        /// Key in the Secret.
        key: String,
    },
}

/// Why a DNS-01 record could not be set up, published, seen or removed. Each
/// provider's error names the provider and the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No provider, or more than one, is set.
    #[error("dns01: set exactly one DNS provider: rfc2136, cloudflare, route53 or exec")]
    NotOneProvider,
    /// The `propagation` settings cannot be used.
    #[error(transparent)]
    Propagation(#[from] propagation::Error),
    /// The RFC 2136 provider failed.
    #[error(transparent)]
    Rfc2136(#[from] rfc2136::Error),
    /// Cloudflare's API failed or refused.
    #[error(transparent)]
    Cloudflare(#[from] cloudflare::Error),
    /// Route 53 failed or refused.
    #[error(transparent)]
    Route53(#[from] route53::Error),
    /// The exec hook failed.
    #[error(transparent)]
    Exec(#[from] exec::Error),
    /// The record was published but the name servers did not show it in time; it was
    /// removed again.
    #[error("{provider}: {source}")]
    NotVisible {
        /// The provider that published it.
        provider: &'static str,
        /// What the name servers answered.
        #[source]
        source: propagation::Error,
    },
    /// The record was published but not seen in time, and removing it failed too.
    #[error("{provider}: {source}; removing it again failed too: {cleanup}")]
    NotVisibleNorRemoved {
        /// The provider that published it.
        provider: &'static str,
        /// What the name servers answered.
        #[source]
        source: propagation::Error,
        /// Why removing it failed.
        cleanup: Box<Error>,
    },
}

/// Resolves one `SecretKeyRef` for provider `provider`'s field `field`, with an error
/// naming both.
fn secret_value(
    secret: &dyn Fn(&SecretKeyRef) -> Option<Vec<u8>>,
    provider: &'static str,
    field: &'static str,
    r: &SecretKeyRef,
) -> Result<Vec<u8>, SecretError> {
    secret(r).ok_or_else(|| SecretError::Missing {
        provider,
        field,
        name: r.name.clone(),
        key: r.key.clone(),
    })
}

/// A secret that must be text (API tokens, access keys), trimmed of surrounding
/// whitespace such as a file's final newline.
fn secret_text(
    secret: &dyn Fn(&SecretKeyRef) -> Option<Vec<u8>>,
    provider: &'static str,
    field: &'static str,
    r: &SecretKeyRef,
) -> Result<String, SecretError> {
    let v = secret_value(secret, provider, field, r)?;
    let s = String::from_utf8(v).map_err(|_| SecretError::NotText {
        provider,
        field,
        name: r.name.clone(),
        key: r.key.clone(),
    })?;
    let s = s.trim().to_string();
    if s.is_empty() {
        return Err(SecretError::Empty {
            provider,
            field,
            name: r.name.clone(),
            key: r.key.clone(),
        });
    }
    Ok(s)
}

enum Provider {
    Rfc2136(rfc2136::Rfc2136),
    Cloudflare(cloudflare::Cloudflare),
    Route53(route53::Route53),
    Exec(exec::Exec),
}

/// A configured DNS-01 solver: one provider and the visibility check.
pub struct Dns01 {
    provider: Provider,
    propagation: propagation::Propagation,
}

impl std::fmt::Debug for Dns01 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("Dns01")
            .field("provider", &self.provider_name())
            .finish_non_exhaustive()
    }
}

impl Dns01 {
    /// Builds the solver. Secrets are resolved here, so errors name the missing
    /// Secret/key.
    pub fn new(
        solver: &Dns01Solver,
        secret: &dyn Fn(&SecretKeyRef) -> Option<Vec<u8>>,
    ) -> Result<Dns01, Error> {
        if !solver.has_one_provider() {
            return Err(Error::NotOneProvider);
        }
        let timeout = Duration::from_secs(
            solver
                .propagation
                .as_ref()
                .and_then(|p| p.timeout_seconds)
                .unwrap_or(120)
                .into(),
        );
        let explicit: Vec<String> = solver
            .propagation
            .as_ref()
            .map(|p| p.nameservers.clone())
            .unwrap_or_default();
        let (provider, default_servers) = if let Some(p) = &solver.rfc2136 {
            let r = rfc2136::Rfc2136::new(p, secret)?;
            // The primary that takes the update is authoritative for the zone.
            (Provider::Rfc2136(r), vec![p.nameserver.clone()])
        } else if let Some(p) = &solver.cloudflare {
            (
                Provider::Cloudflare(cloudflare::Cloudflare::new(p, secret)?),
                vec![],
            )
        } else if let Some(p) = &solver.route53 {
            (
                Provider::Route53(route53::Route53::new(p, secret, timeout)?),
                vec![],
            )
        } else if let Some(p) = &solver.exec {
            (Provider::Exec(exec::Exec::new(p)?), vec![])
        } else {
            unreachable!("exactly one provider was checked above")
        };
        let servers = if explicit.is_empty() {
            default_servers
        } else {
            explicit
        };
        Ok(Dns01 {
            provider,
            propagation: propagation::Propagation::new(servers, timeout)?,
        })
    }

    /// `rfc2136`, `cloudflare`, `route53` or `exec`.
    pub fn provider_name(&self) -> &'static str {
        match self.provider {
            Provider::Rfc2136(_) => "rfc2136",
            Provider::Cloudflare(_) => "cloudflare",
            Provider::Route53(_) => "route53",
            Provider::Exec(_) => "exec",
        }
    }

    /// Sets `_acme-challenge.<domain>` TXT `value`, then waits until the record is
    /// visible.
    pub async fn set(&self, domain: &str, value: &str) -> Result<(), Error> {
        self.publish(domain, value).await?;
        let name = record_name(domain);
        let Err(source) = self.propagation.wait_visible(&name, value).await else {
            return Ok(());
        };
        // The caller will not clear a record whose set failed: do it here.
        let provider = self.provider_name();
        match self.clear(domain, value).await {
            Ok(()) => Err(Error::NotVisible { provider, source }),
            Err(c) => Err(Error::NotVisibleNorRemoved {
                provider,
                source,
                cleanup: Box::new(c),
            }),
        }
    }

    /// Adds the TXT value through the provider only, without waiting for it to be
    /// visible (`set` does both). Other values of the record are kept, so a name and
    /// its wildcard can be validated at the same time.
    pub async fn publish(&self, domain: &str, value: &str) -> Result<(), Error> {
        let name = record_name(domain);
        match &self.provider {
            Provider::Rfc2136(p) => p.set(&name, value).await?,
            Provider::Cloudflare(p) => p.set(&name, value).await?,
            Provider::Route53(p) => p.set(&name, value).await?,
            Provider::Exec(p) => p.run(exec::Action::Set, domain, &name, value).await?,
        }
        Ok(())
    }

    /// Removes that record value (other values of the record stay).
    pub async fn clear(&self, domain: &str, value: &str) -> Result<(), Error> {
        let name = record_name(domain);
        match &self.provider {
            Provider::Rfc2136(p) => p.clear(&name, value).await?,
            Provider::Cloudflare(p) => p.clear(&name, value).await?,
            Provider::Route53(p) => p.clear(&name, value).await?,
            Provider::Exec(p) => p.run(exec::Action::Clear, domain, &name, value).await?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_follow_rfc8555() {
        assert_eq!(
            record_name("mqtt.example.com"),
            "_acme-challenge.mqtt.example.com"
        );
        assert_eq!(record_name("*.example.com"), "_acme-challenge.example.com");
        assert_eq!(record_name("example.com."), "_acme-challenge.example.com");
    }

    #[test]
    fn zone_candidates_go_up_to_two_labels() {
        assert_eq!(
            zone_candidates("_acme-challenge.a.b.example.com"),
            ["a.b.example.com", "b.example.com", "example.com"]
        );
        assert_eq!(
            zone_candidates("_acme-challenge.example.com."),
            ["example.com"]
        );
        assert_eq!(zone_candidates("test"), ["test"]);
    }

    #[test]
    fn exactly_one_provider_and_secrets_named() {
        let none = |_: &SecretKeyRef| None;
        let e = Dns01::new(&Dns01Solver::default(), &none).unwrap_err();
        assert!(matches!(e, Error::NotOneProvider), "{e}");
        assert!(e.to_string().contains("exactly one DNS provider"), "{e}");
        let s = Dns01Solver {
            cloudflare: Some(crate::api::certificate::CloudflareProvider {
                api_token_secret_ref: SecretKeyRef {
                    name: "cf".into(),
                    key: "token".into(),
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = Dns01::new(&s, &none).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Cloudflare(cloudflare::Error::Secret(SecretError::Missing { .. }))
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "cloudflare: apiTokenSecretRef: Secret `cf` has no key `token` (or does not exist)"
        );
    }
}
