//! AWS Route 53 through the AWS SDK.
//!
//! A TXT record set holds every value of a name, so setting a value UPSERTs the set
//! with the existing values plus the new one, and clearing UPSERTs it without the
//! value (or DELETEs it when it was the last). After each change the provider waits
//! until Route 53 reports it `INSYNC` on all its name servers.
//!
//! Credentials: the access key pair from Secrets when given, otherwise the standard
//! AWS chain (environment, profile, instance or pod role). Route 53 is a global
//! service: without a region from the settings or the chain, `us-east-1` signs the
//! requests.

use std::time::Duration;

use aws_sdk_route53::config::{Credentials, Region};
use aws_sdk_route53::error::DisplayErrorContext;
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
};
use aws_sdk_route53::Client;
use tokio::sync::OnceCell;

use super::{secret_text, RECORD_TTL};
use crate::api::certificate::Route53Provider;
use crate::api::SecretKeyRef;

/// Pause between two `GetChange` polls.
const CHANGE_POLL: Duration = Duration::from_secs(2);

/// Why the Route 53 provider could not be set up or a change failed. `change` names
/// a change: `route53: adding TXT <name> in hosted zone <zone>`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An access key Secret cannot be used.
    #[error(transparent)]
    Secret(#[from] super::SecretError),
    /// Only one of the two access key references is set.
    #[error("route53: set both accessKeyIdSecretRef and secretAccessKeySecretRef, or neither to use the AWS credential chain")]
    HalfCredentials,
    /// `endpointUrl` is not an http(s) URL.
    #[error("route53: endpointUrl `{0}` is not an http(s) URL")]
    EndpointUrl(String),
    /// Looking up the hosted zones of a name failed.
    #[error("route53: looking up hosted zone {zone}: {source}")]
    LookupZone {
        /// The zone name looked up.
        zone: String,
        /// The API's error.
        #[source]
        source: ApiError,
    },
    /// No hosted zone holds the record.
    #[error("route53: no hosted zone holds {name} (tried {}); set hostedZoneId", .tried.join(", "))]
    NoZone {
        /// The record name.
        name: String,
        /// The zone names looked up.
        tried: Vec<String>,
    },
    /// Reading the record's current values failed.
    #[error("route53: reading TXT {name} in hosted zone {zone}: {source}")]
    ReadRecord {
        /// The record name.
        name: String,
        /// The hosted zone id.
        zone: String,
        /// The API's error.
        #[source]
        source: ApiError,
    },
    /// The change could not be built from the values.
    #[error("{change}: {source}")]
    Build {
        /// The change.
        change: String,
        /// Cause.
        #[source]
        source: aws_sdk_route53::error::BuildError,
    },
    /// Route 53 did not take the change.
    #[error("{change}: {source}")]
    Change {
        /// The change.
        change: String,
        /// The API's error.
        #[source]
        source: ApiError,
    },
    /// Polling the change's state failed.
    #[error("{change}: GetChange {id}: {source}")]
    GetChange {
        /// The change.
        change: String,
        /// Route 53's change id.
        id: String,
        /// The API's error.
        #[source]
        source: ApiError,
    },
    /// The change did not reach all of Route 53's servers in time.
    #[error("{change}: change {id} still {state} after {seconds}s")]
    NotInSync {
        /// The change.
        change: String,
        /// Route 53's change id.
        id: String,
        /// Its last state.
        state: ChangeStatus,
        /// The time waited.
        seconds: u64,
    },
}

/// An error of the AWS SDK, shown with its whole chain of causes (the SDK's
/// `DisplayErrorContext`), where the AWS error code is.
#[derive(Debug, thiserror::Error)]
#[error("{}", DisplayErrorContext(.0.as_ref()))]
pub struct ApiError(#[source] Box<dyn std::error::Error + Send + Sync>);

impl ApiError {
    fn of(e: impl std::error::Error + Send + Sync + 'static) -> ApiError {
        ApiError(Box::new(e))
    }
}

/// The settings and, once first used, the client.
pub struct Route53 {
    hosted_zone_id: Option<String>,
    region: Option<String>,
    endpoint_url: Option<String>,
    credentials: Option<(String, String)>,
    insync_timeout: Duration,
    client: OnceCell<Client>,
}

impl Route53 {
    /// Reads the access key pair (when given) and checks the settings.
    /// `insync_timeout` bounds the wait for a change to reach Route 53's servers.
    pub fn new(
        p: &Route53Provider,
        secret: &dyn Fn(&SecretKeyRef) -> Option<Vec<u8>>,
        insync_timeout: Duration,
    ) -> Result<Route53, Error> {
        let credentials = match (&p.access_key_id_secret_ref, &p.secret_access_key_secret_ref) {
            (Some(id), Some(key)) => Some((
                secret_text(secret, "route53", "accessKeyIdSecretRef", id)?,
                secret_text(secret, "route53", "secretAccessKeySecretRef", key)?,
            )),
            (None, None) => None,
            _ => return Err(Error::HalfCredentials),
        };
        if let Some(u) = &p.endpoint_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return Err(Error::EndpointUrl(u.clone()));
            }
        }
        Ok(Route53 {
            hosted_zone_id: p
                .hosted_zone_id
                .as_deref()
                .map(|z| z.trim_start_matches("/hostedzone/").to_string())
                .filter(|z| !z.is_empty()),
            region: p.region.clone().filter(|r| !r.is_empty()),
            endpoint_url: p.endpoint_url.clone(),
            credentials,
            insync_timeout,
            client: OnceCell::new(),
        })
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .http_client(crate::aws::https_client());
                if let Some(r) = &self.region {
                    loader = loader.region(Region::new(r.clone()));
                }
                if let Some(u) = &self.endpoint_url {
                    loader = loader.endpoint_url(u.clone());
                }
                if let Some((id, key)) = &self.credentials {
                    loader = loader.credentials_provider(Credentials::new(
                        id.clone(),
                        key.clone(),
                        None,
                        None,
                        "edgemq-secret",
                    ));
                }
                let shared = loader.load().await;
                let mut b = aws_sdk_route53::config::Builder::from(&shared);
                if shared.region().is_none() {
                    b = b.region(Region::new("us-east-1"));
                }
                Client::from_conf(b.build())
            })
            .await
    }

    /// Adds `value` to the TXT record set `name`.
    pub async fn set(&self, name: &str, value: &str) -> Result<(), Error> {
        let zone = self.zone(name).await?;
        let mut values = self.values(&zone, name).await?;
        let quoted = quote(value);
        if values.contains(&quoted) {
            return Ok(());
        }
        values.push(quoted);
        self.change(&zone, name, ChangeAction::Upsert, values, "adding")
            .await
    }

    /// Removes `value` from the TXT record set `name`; nothing to do when absent.
    pub async fn clear(&self, name: &str, value: &str) -> Result<(), Error> {
        let zone = self.zone(name).await?;
        let values = self.values(&zone, name).await?;
        let quoted = quote(value);
        if !values.contains(&quoted) {
            return Ok(());
        }
        let rest: Vec<String> = values.iter().filter(|v| **v != quoted).cloned().collect();
        if rest.is_empty() {
            // DELETE must name the set exactly as it is.
            self.change(&zone, name, ChangeAction::Delete, values, "deleting")
                .await
        } else {
            self.change(
                &zone,
                name,
                ChangeAction::Upsert,
                rest,
                "removing a value of",
            )
            .await
        }
    }

    /// The hosted zone id: as configured, or the public zone whose name is the closest
    /// parent of `name`.
    async fn zone(&self, name: &str) -> Result<String, Error> {
        if let Some(z) = &self.hosted_zone_id {
            return Ok(z.clone());
        }
        let client = self.client().await;
        let candidates = super::zone_candidates(name);
        for c in &candidates {
            let out = client
                .list_hosted_zones_by_name()
                .dns_name(c.as_str())
                .max_items(10)
                .send()
                .await
                .map_err(|e| Error::LookupZone {
                    zone: c.clone(),
                    source: ApiError::of(e),
                })?;
            let want = format!("{c}.");
            let mut zones: Vec<_> = out
                .hosted_zones()
                .iter()
                .filter(|z| z.name().eq_ignore_ascii_case(&want))
                .collect();
            // A public zone is what the CA sees; a private one only if nothing else.
            zones.sort_by_key(|z| z.config().is_some_and(|c| c.private_zone()));
            if let Some(z) = zones.first() {
                return Ok(z.id().trim_start_matches("/hostedzone/").to_string());
            }
        }
        Err(Error::NoZone {
            name: name.to_string(),
            tried: candidates,
        })
    }

    /// The current values (quoted, as Route 53 stores them) of the TXT set `name`.
    async fn values(&self, zone: &str, name: &str) -> Result<Vec<String>, Error> {
        let out = self
            .client()
            .await
            .list_resource_record_sets()
            .hosted_zone_id(zone)
            .start_record_name(name)
            .start_record_type(RrType::Txt)
            .max_items(1)
            .send()
            .await
            .map_err(|e| Error::ReadRecord {
                name: name.to_string(),
                zone: zone.to_string(),
                source: ApiError::of(e),
            })?;
        let want = format!("{}.", name.trim_end_matches('.'));
        Ok(out
            .resource_record_sets()
            .iter()
            .filter(|s| s.name().eq_ignore_ascii_case(&want) && *s.r#type() == RrType::Txt)
            .flat_map(|s| s.resource_records().iter().map(|r| r.value().to_string()))
            .collect())
    }

    async fn change(
        &self,
        zone: &str,
        name: &str,
        action: ChangeAction,
        values: Vec<String>,
        doing: &str,
    ) -> Result<(), Error> {
        let change = format!("route53: {doing} TXT {name} in hosted zone {zone}");
        let build = |source| Error::Build {
            change: change.clone(),
            source,
        };
        let records = values
            .into_iter()
            .map(|v| ResourceRecord::builder().value(v).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(build)?;
        let set = ResourceRecordSet::builder()
            .name(name)
            .r#type(RrType::Txt)
            .ttl(RECORD_TTL.into())
            .set_resource_records(Some(records))
            .build()
            .map_err(build)?;
        let batch = ChangeBatch::builder()
            .comment("edgemq ACME DNS-01 challenge")
            .changes(
                Change::builder()
                    .action(action)
                    .resource_record_set(set)
                    .build()
                    .map_err(build)?,
            )
            .build()
            .map_err(build)?;
        let client = self.client().await;
        let out = client
            .change_resource_record_sets()
            .hosted_zone_id(zone)
            .change_batch(batch)
            .send()
            .await
            .map_err(|e| Error::Change {
                change: change.clone(),
                source: ApiError::of(e),
            })?;
        let Some(info) = out.change_info() else {
            return Ok(());
        };
        let id = info.id().trim_start_matches("/change/").to_string();
        let mut status = info.status().clone();
        let deadline = tokio::time::Instant::now() + self.insync_timeout;
        while status != ChangeStatus::Insync {
            if tokio::time::Instant::now() + CHANGE_POLL > deadline {
                return Err(Error::NotInSync {
                    change,
                    id,
                    state: status,
                    seconds: self.insync_timeout.as_secs(),
                });
            }
            tokio::time::sleep(CHANGE_POLL).await;
            let out = client
                .get_change()
                .id(&id)
                .send()
                .await
                .map_err(|e| Error::GetChange {
                    change: change.clone(),
                    id: id.clone(),
                    source: ApiError::of(e),
                })?;
            status = out
                .change_info()
                .map(|i| i.status().clone())
                .unwrap_or(ChangeStatus::Insync);
        }
        Ok(())
    }
}

/// A TXT value as Route 53 takes it: one quoted character string.
fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}
