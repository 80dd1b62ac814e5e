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

use axum::http::{header, Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
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

/// How long one call may take, its answer's body included.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer read: a record or zone list of this API is a few KB, and
/// `apiUrl` may name any server.
const MAX_ANSWER: usize = 1 << 20;

type Http =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An error of the HTTP client or of the call's limits, as text.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The API client and token.
pub struct Cloudflare {
    http: Http,
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

/// Why the Cloudflare provider could not be set up or a change failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API token's Secret cannot be used.
    #[error(transparent)]
    Secret(#[from] super::SecretError),
    /// `apiUrl` is not an http(s) URL.
    #[error("cloudflare: apiUrl `{0}` is not an http(s) URL")]
    ApiUrl(String),
    /// The HTTP client could not be built (the system's trust store cannot be used).
    #[error("cloudflare: HTTP client: {0}")]
    Client(#[source] std::io::Error),
    /// An API call failed; `doing` says what for (`adding TXT <name>`, `looking up
    /// zone <zone>`...).
    #[error("cloudflare: {doing}: {source}")]
    Call {
        /// What the call was for.
        doing: String,
        /// How it failed.
        #[source]
        source: CallError,
    },
    /// No zone the token can see holds the record.
    #[error("cloudflare: no zone of this token holds {name} (tried {}); check the token's zone permissions or set zoneId", .tried.join(", "))]
    NoZone {
        /// The record name.
        name: String,
        /// The zone names looked up.
        tried: Vec<String>,
    },
}

/// A failed API call, each naming the call (`METHOD /path`). No variant holds the
/// token, nor a body that is not Cloudflare's envelope.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The request could not be sent or got no answer.
    #[error("{call}: {source}")]
    Send {
        /// `METHOD /path`.
        call: String,
        /// Cause.
        #[source]
        source: BoxError,
    },
    /// The answer's body could not be read.
    #[error("{call}: HTTP {status}: {source}")]
    Body {
        /// `METHOD /path`.
        call: String,
        /// HTTP status of the answer.
        status: StatusCode,
        /// Cause.
        #[source]
        source: BoxError,
    },
    /// The body is not Cloudflare's envelope (it is not copied: whatever `apiUrl`
    /// points at answers here, and status is read by more people than the token).
    #[error("{call}: HTTP {status}: not a Cloudflare API answer ({len} bytes; {source})")]
    NotEnvelope {
        /// `METHOD /path`.
        call: String,
        /// HTTP status of the answer.
        status: StatusCode,
        /// Body length.
        len: usize,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The call succeeded but its `result` is not what was expected.
    #[error("{call}: unexpected result: {source}")]
    Result {
        /// `METHOD /path`.
        call: String,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// Cloudflare refused: HTTP status and its errors (codes, redacted messages).
    #[error("{call}: HTTP {status}{}", refusal_text(.errors))]
    Refused {
        /// `METHOD /path`.
        call: String,
        /// HTTP status of the answer.
        status: StatusCode,
        /// Cloudflare's error codes and messages (token redacted, at most 200
        /// characters each).
        errors: Vec<(i64, String)>,
    },
}

/// How a call failed before its answer was parsed.
enum Sent {
    /// No answer came (the request could not be sent, or no status line arrived).
    Before(BoxError),
    /// The answer's body could not be read, or was over [`MAX_ANSWER`].
    Body(StatusCode, BoxError),
}

impl CallError {
    /// Whether Cloudflare refused with error `code`.
    fn has_code(&self, code: i64) -> bool {
        matches!(self, CallError::Refused { errors, .. } if errors.iter().any(|(c, _)| *c == code))
    }
}

fn refusal_text(errors: &[(i64, String)]) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let errs: Vec<String> = errors.iter().map(|(c, m)| format!("{c} {m}")).collect();
    format!(": {}", errs.join("; "))
}

impl Cloudflare {
    /// Reads the token and checks the settings.
    pub fn new(
        p: &CloudflareProvider,
        secret: &dyn Fn(&SecretKeyRef) -> Option<Vec<u8>>,
    ) -> Result<Cloudflare, Error> {
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
            return Err(Error::ApiUrl(api));
        }
        let connector = crate::certs::https_connector(None).map_err(Error::Client)?;
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(Cloudflare {
            http,
            token,
            zone_id: p.zone_id.clone().filter(|z| !z.is_empty()),
            api,
        })
    }

    /// Adds the TXT value `value` to `name`.
    pub async fn set(&self, name: &str, value: &str) -> Result<(), Error> {
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
            Err(f) if f.has_code(IDENTICAL_RECORD_EXISTS) => Ok(()),
            Err(source) => Err(Error::Call {
                doing: format!("adding TXT {name}"),
                source,
            }),
        }
    }

    /// Removes the TXT value `value` from `name`; nothing to do when it is absent.
    pub async fn clear(&self, name: &str, value: &str) -> Result<(), Error> {
        let zone = self.zone(name).await?;
        let path = format!("/zones/{zone}/dns_records");
        let records: Vec<DnsRecord> = self
            .call(Method::GET, &path, &[("type", "TXT"), ("name", name)], None)
            .await
            .map_err(|source| Error::Call {
                doing: format!("listing TXT {name}"),
                source,
            })?;
        for r in records
            .iter()
            .filter(|r| r.content.trim_matches('"') == value)
        {
            let path = format!("/zones/{zone}/dns_records/{}", r.id);
            self.call::<serde_json::Value>(Method::DELETE, &path, &[], None)
                .await
                .map_err(|source| Error::Call {
                    doing: format!("deleting TXT {name} (record {})", r.id),
                    source,
                })?;
        }
        Ok(())
    }

    /// The zone id: as configured, or the zone whose name is the closest parent of
    /// `name`.
    async fn zone(&self, name: &str) -> Result<String, Error> {
        if let Some(z) = &self.zone_id {
            return Ok(z.clone());
        }
        let candidates = super::zone_candidates(name);
        for c in &candidates {
            let zones: Vec<Zone> = self
                .call(Method::GET, "/zones", &[("name", c)], None)
                .await
                .map_err(|source| Error::Call {
                    doing: format!("looking up zone {c}"),
                    source,
                })?;
            if let Some(z) = zones.into_iter().find(|z| z.name.eq_ignore_ascii_case(c)) {
                return Ok(z.id);
            }
        }
        Err(Error::NoZone {
            name: name.to_string(),
            tried: candidates,
        })
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
    ) -> Result<T, CallError> {
        let call = format!("{method} {path}");
        let mut uri = format!("{}{path}", self.api);
        if !query.is_empty() {
            uri.push('?');
            uri.push_str(
                &form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(query)
                    .finish(),
            );
        }
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(
                header::USER_AGENT,
                concat!("edgemq/", env!("CARGO_PKG_VERSION")),
            );
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(b.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let answer = async {
            let req = req.body(body).map_err(|e| Sent::Before(Box::new(e)))?;
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| Sent::Before(Box::new(e)))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| match e.is::<http_body_util::LengthLimitError>() {
                    true => Sent::Body(status, format!("more than {MAX_ANSWER} bytes").into()),
                    false => Sent::Body(status, e),
                })?
                .to_bytes();
            Ok::<_, Sent>((status, bytes))
        };
        let (status, bytes) = match tokio::time::timeout(CALL_TIMEOUT, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(Sent::Before(source))) => return Err(CallError::Send { call, source }),
            Ok(Err(Sent::Body(status, source))) => {
                return Err(CallError::Body {
                    call,
                    status,
                    source,
                })
            }
            Err(_) => {
                let source = format!("no answer within {CALL_TIMEOUT:?}").into();
                return Err(CallError::Send { call, source });
            }
        };
        let env: Envelope = match serde_json::from_slice(&bytes) {
            Ok(env) => env,
            // The body is not copied: whatever `apiUrl` points at answers here, and
            // status is read by more people than the token's Secret.
            Err(source) => {
                return Err(CallError::NotEnvelope {
                    call,
                    status,
                    len: bytes.len(),
                    source,
                });
            }
        };
        if status.is_success() && env.success {
            let result = env.result.unwrap_or(serde_json::Value::Null);
            return serde_json::from_value(result)
                .map_err(|source| CallError::Result { call, source });
        }
        Err(CallError::Refused {
            call,
            status,
            errors: env
                .errors
                .iter()
                .map(|e| (e.code, self.redact(&e.message)))
                .collect(),
        })
    }
}
