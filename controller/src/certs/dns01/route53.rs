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
    ) -> Result<Route53, String> {
        let credentials = match (&p.access_key_id_secret_ref, &p.secret_access_key_secret_ref) {
            (Some(id), Some(key)) => Some((
                secret_text(secret, "route53", "accessKeyIdSecretRef", id)?,
                secret_text(secret, "route53", "secretAccessKeySecretRef", key)?,
            )),
            (None, None) => None,
            _ => {
                return Err(
                    "route53: set both accessKeyIdSecretRef and secretAccessKeySecretRef, or neither to use the AWS credential chain"
                        .into(),
                )
            }
        };
        if let Some(u) = &p.endpoint_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return Err(format!("route53: endpointUrl `{u}` is not an http(s) URL"));
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
    pub async fn set(&self, name: &str, value: &str) -> Result<(), String> {
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
    pub async fn clear(&self, name: &str, value: &str) -> Result<(), String> {
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
    async fn zone(&self, name: &str) -> Result<String, String> {
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
                .map_err(|e| {
                    format!(
                        "route53: looking up hosted zone {c}: {}",
                        DisplayErrorContext(&e)
                    )
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
        Err(format!(
            "route53: no hosted zone holds {name} (tried {}); set hostedZoneId",
            candidates.join(", ")
        ))
    }

    /// The current values (quoted, as Route 53 stores them) of the TXT set `name`.
    async fn values(&self, zone: &str, name: &str) -> Result<Vec<String>, String> {
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
            .map_err(|e| {
                format!(
                    "route53: reading TXT {name} in hosted zone {zone}: {}",
                    DisplayErrorContext(&e)
                )
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
    ) -> Result<(), String> {
        let what = format!("route53: {doing} TXT {name} in hosted zone {zone}");
        let records = values
            .into_iter()
            .map(|v| ResourceRecord::builder().value(v).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{what}: {e}"))?;
        let set = ResourceRecordSet::builder()
            .name(name)
            .r#type(RrType::Txt)
            .ttl(RECORD_TTL.into())
            .set_resource_records(Some(records))
            .build()
            .map_err(|e| format!("{what}: {e}"))?;
        let batch = ChangeBatch::builder()
            .comment("edgemq ACME DNS-01 challenge")
            .changes(
                Change::builder()
                    .action(action)
                    .resource_record_set(set)
                    .build()
                    .map_err(|e| format!("{what}: {e}"))?,
            )
            .build()
            .map_err(|e| format!("{what}: {e}"))?;
        let client = self.client().await;
        let out = client
            .change_resource_record_sets()
            .hosted_zone_id(zone)
            .change_batch(batch)
            .send()
            .await
            .map_err(|e| format!("{what}: {}", DisplayErrorContext(&e)))?;
        let Some(info) = out.change_info() else {
            return Ok(());
        };
        let id = info.id().trim_start_matches("/change/").to_string();
        let mut status = info.status().clone();
        let deadline = tokio::time::Instant::now() + self.insync_timeout;
        while status != ChangeStatus::Insync {
            if tokio::time::Instant::now() + CHANGE_POLL > deadline {
                return Err(format!(
                    "{what}: change {id} still {status} after {}s",
                    self.insync_timeout.as_secs()
                ));
            }
            tokio::time::sleep(CHANGE_POLL).await;
            let out = client
                .get_change()
                .id(&id)
                .send()
                .await
                .map_err(|e| format!("{what}: GetChange {id}: {}", DisplayErrorContext(&e)))?;
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
