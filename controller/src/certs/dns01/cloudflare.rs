//! Cloudflare's DNS API (v4), with an API token (`Authorization: Bearer`):
//!
//! - `GET /zones?name=Z` finds the zone id when none is given, trying the record's
//!   parent names from the most specific one;
//! - `POST /zones/{id}/dns_records` adds the TXT record;
//! - `GET /zones/{id}/dns_records?type=TXT&name=N` lists the record's values and
//!   `DELETE /zones/{id}/dns_records/{record id}` removes the one that was added.
//!
//! Every answer is Cloudflare's envelope `{success, errors: [{code, message}], result}`;
//! a failure carries the HTTP status and Cloudflare's codes and messages (never the
//! token, and no body that is not an envelope: the token goes to whatever `apiUrl`
//! names, and the answer ends up in status).

use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::secret_text;
use crate::api::certificate::CloudflareProvider;
use crate::api::SecretKeyRef;

/// Cloudflare's v4 API.
pub const DEFAULT_API_URL: &str = "https://api.cloudflare.com/client/v4";

/// TTL of the TXT record: Cloudflare's minimum outside its enterprise plan is 60 s;
/// 120 s as other ACME clients use.
const TTL: u32 = 120;

/// Cloudflare's error code for "an identical record already exists".
const IDENTICAL_RECORD_EXISTS: i64 = 81058;

/// The API client and token.
pub struct Cloudflare {
    http: reqwest::Client,
    token: String,
    zone_id: Option<String>,
    api: String,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    errors: Vec<ApiError>,
    #[serde(default)]
    result: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct Zone {
    id: String,
    name: String,
}

#[derive(Deserialize)]
struct DnsRecord {
    id: String,
    #[serde(default)]
    content: String,
}

/// A refused call: HTTP status and Cloudflare's error codes.
struct Failure {
    codes: Vec<i64>,
    text: String,
}

impl Cloudflare {
    /// Reads the token and checks the settings.
    pub fn new(
        p: &CloudflareProvider,
        secret: &dyn Fn(&SecretKeyRef) -> Option<Vec<u8>>,
    ) -> Result<Cloudflare, String> {
        let token = secret_text(
            secret,
            "cloudflare",
            "apiTokenSecretRef",
            &p.api_token_secret_ref,
        )?;
        let api = p
            .api_url
            .as_deref()
            .unwrap_or(DEFAULT_API_URL)
            .trim_end_matches('/')
            .to_string();
        if !(api.starts_with("https://") || api.starts_with("http://")) {
            return Err(format!("cloudflare: apiUrl `{api}` is not an http(s) URL"));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("edgemq/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cloudflare: HTTP client: {e}"))?;
        Ok(Cloudflare {
            http,
            token,
            zone_id: p.zone_id.clone().filter(|z| !z.is_empty()),
            api,
        })
    }

    /// Adds the TXT value `value` to `name`.
    pub async fn set(&self, name: &str, value: &str) -> Result<(), String> {
        let zone = self.zone(name).await?;
        let body = serde_json::json!({
            "type": "TXT",
            "name": name,
            "content": value,
            "ttl": TTL,
        });
        let path = format!("/zones/{zone}/dns_records");
        match self
            .call::<serde_json::Value>(Method::POST, &path, &[], Some(body))
            .await
        {
            Ok(_) => Ok(()),
            Err(f) if f.codes.contains(&IDENTICAL_RECORD_EXISTS) => Ok(()),
            Err(f) => Err(format!("cloudflare: adding TXT {name}: {}", f.text)),
        }
    }

    /// Removes the TXT value `value` from `name`; nothing to do when it is absent.
    pub async fn clear(&self, name: &str, value: &str) -> Result<(), String> {
        let zone = self.zone(name).await?;
        let path = format!("/zones/{zone}/dns_records");
        let records: Vec<DnsRecord> = self
            .call(Method::GET, &path, &[("type", "TXT"), ("name", name)], None)
            .await
            .map_err(|f| format!("cloudflare: listing TXT {name}: {}", f.text))?;
        for r in records
            .iter()
            .filter(|r| r.content.trim_matches('"') == value)
        {
            let path = format!("/zones/{zone}/dns_records/{}", r.id);
            self.call::<serde_json::Value>(Method::DELETE, &path, &[], None)
                .await
                .map_err(|f| {
                    format!(
                        "cloudflare: deleting TXT {name} (record {}): {}",
                        r.id, f.text
                    )
                })?;
        }
        Ok(())
    }

    /// The zone id: as configured, or the zone whose name is the closest parent of
    /// `name`.
    async fn zone(&self, name: &str) -> Result<String, String> {
        if let Some(z) = &self.zone_id {
            return Ok(z.clone());
        }
        let candidates = super::zone_candidates(name);
        for c in &candidates {
            let zones: Vec<Zone> = self
                .call(Method::GET, "/zones", &[("name", c)], None)
                .await
                .map_err(|f| format!("cloudflare: looking up zone {c}: {}", f.text))?;
            if let Some(z) = zones.into_iter().find(|z| z.name.eq_ignore_ascii_case(c)) {
                return Ok(z.id);
            }
        }
        Err(format!(
            "cloudflare: no zone of this token holds {name} (tried {}); check the token's zone permissions or set zoneId",
            candidates.join(", ")
        ))
    }

    /// An API error message as status may show it: the token never (a server that is
    /// not Cloudflare may echo it), and at most 200 characters.
    fn redact(&self, message: &str) -> String {
        let m = if self.token.is_empty() {
            message.to_string()
        } else {
            message.replace(&self.token, "[redacted]")
        };
        m.chars().take(200).collect()
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> Result<T, Failure> {
        let what = format!("{method} {path}");
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .query(query);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let fail = |text: String| Failure {
            codes: vec![],
            text,
        };
        let resp = req.send().await.map_err(|e| fail(format!("{what}: {e}")))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| fail(format!("{what}: HTTP {status}: {e}")))?;
        let env: Envelope = match serde_json::from_slice(&bytes) {
            Ok(env) => env,
            // The body is not copied: whatever `apiUrl` points at answers here, and
            // status is read by more people than the token's Secret.
            Err(e) => {
                return Err(fail(format!(
                    "{what}: HTTP {status}: not a Cloudflare API answer ({} bytes; {e})",
                    bytes.len()
                )));
            }
        };
        if status.is_success() && env.success {
            let result = env.result.unwrap_or(serde_json::Value::Null);
            return serde_json::from_value(result)
                .map_err(|e| fail(format!("{what}: unexpected result: {e}")));
        }
        let errs: Vec<String> = env
            .errors
            .iter()
            .map(|e| format!("{} {}", e.code, self.redact(&e.message)))
            .collect();
        Err(Failure {
            codes: env.errors.iter().map(|e| e.code).collect(),
            text: if errs.is_empty() {
                format!("{what}: HTTP {status}")
            } else {
                format!("{what}: HTTP {status}: {}", errs.join("; "))
            },
        })
    }
}
