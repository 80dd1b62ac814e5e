//! AWS plumbing shared by the AWS IoT issuer: SDK configuration from the standard
//! credential chain, and errors that name the service, the operation and AWS's error
//! code. The least-privilege policy generator (`policy`) and AWS IoT's fleet
//! provisioning contract (`fleet_provisioning`: topics and payloads, used by the
//! issuer in `certs::fleet` and by `fleet_template`) are pure.

pub mod fleet_provisioning;
pub mod fleet_template;
mod http;
pub mod policy;

pub use http::https_client;

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

pub use aws_sdk_iot::config::Credentials;

/// Longest wait for a connection to an AWS API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one AWS call may take, retries included, so a stalled endpoint never holds
/// up the work queued behind it.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
use aws_sdk_iot::error::{ProvideErrorMetadata, SdkError};

/// An AWS call that failed: which service and operation, and AWS's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("AWS {service} {operation} failed: {code}: {message}")]
pub struct AwsError {
    /// `IoT` or `SecretsManager`.
    pub service: &'static str,
    /// The API operation, for example `CreateThing`.
    pub operation: &'static str,
    /// AWS's error code (`ResourceNotFoundException`), or the kind of failure when the
    /// request got no answer (`DispatchFailure`, `TimeoutError`, ...).
    pub code: String,
    /// AWS's message, or the cause.
    pub message: String,
}

impl AwsError {
    /// Wraps an SDK error.
    pub fn from_sdk<E, R>(service: &'static str, operation: &'static str, e: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let code = e.code().map(str::to_string).unwrap_or_else(|| {
            match &e {
                SdkError::ConstructionFailure(_) => "ConstructionFailure",
                SdkError::TimeoutError(_) => "TimeoutError",
                SdkError::DispatchFailure(_) => "DispatchFailure",
                SdkError::ResponseError(_) => "ResponseError",
                SdkError::ServiceError(_) => "ServiceError",
                _ => "Unknown",
            }
            .to_string()
        });
        let message = e
            .message()
            .map(str::to_string)
            .unwrap_or_else(|| aws_sdk_iot::error::DisplayErrorContext(&e).to_string());
        AwsError {
            service,
            operation,
            code,
            message,
        }
    }

    /// Whether AWS said the resource does not exist.
    pub fn not_found(&self) -> bool {
        self.code == "ResourceNotFoundException"
    }
}

/// Where the AWS APIs are: a region (else the chain's) and an optional endpoint URL
/// (compatible services, tests).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// AWS region; `None`: from the AWS configuration chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// API endpoint URL; `None`: AWS's own for the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
}

/// Access keys from Secret `secret`, read from `values` (Secret name and key to value,
/// as `Resources::secret_values` gives them): `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN`.
pub fn credentials_from(
    secret: &str,
    values: &std::collections::BTreeMap<(String, String), Vec<u8>>,
) -> Result<Credentials, String> {
    let text = |k: &str| -> Result<Option<String>, String> {
        match values.get(&(secret.to_string(), k.to_string())) {
            None => Ok(None),
            Some(v) => String::from_utf8(v.clone())
                .map(|s| Some(s.trim().to_string()).filter(|s| !s.is_empty()))
                .map_err(|_| format!("Secret {secret}: {k} is not UTF-8")),
        }
    };
    let missing = |k: &str| format!("Secret {secret} (credentialsSecretRef) has no {k}");
    let id = text(ACCESS_KEY_ID)?.ok_or_else(|| missing(ACCESS_KEY_ID))?;
    let key = text(SECRET_ACCESS_KEY)?.ok_or_else(|| missing(SECRET_ACCESS_KEY))?;
    let token = text(SESSION_TOKEN)?;
    Ok(Credentials::new(id, key, token, None, "edgemq-secret"))
}

/// Key of the access key id in a credentials Secret.
pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// Key of the secret access key in a credentials Secret.
pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// Key of the optional session token in a credentials Secret.
pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

/// SDK configuration: `credentials` when given, else the standard chain (environment,
/// profile, web identity, ECS task role, instance metadata); HTTPS through rustls with
/// ring; every call bounded by a timeout.
pub async fn sdk_config(
    target: &Target,
    credentials: Option<Credentials>,
) -> Result<SdkConfig, String> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(https_client())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        );
    if let Some(c) = credentials {
        loader = loader.credentials_provider(c);
    }
    if let Some(r) = &target.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(u) = &target.endpoint_url {
        loader = loader.endpoint_url(u);
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(
            "no AWS region: set spec.issuer.awsIot.region, or AWS_REGION / a profile's region"
                .into(),
        );
    }
    Ok(config)
}

/// Clients of the two services the AWS IoT issuer uses.
#[derive(Clone, Debug)]
pub struct Clients {
    /// AWS IoT control plane.
    pub iot: aws_sdk_iot::Client,
    /// AWS Secrets Manager.
    pub secrets: aws_sdk_secretsmanager::Client,
}

impl Clients {
    /// Clients for `target`, with `credentials` or those of the standard chain.
    pub async fn new(target: &Target, credentials: Option<Credentials>) -> Result<Clients, String> {
        let config = sdk_config(target, credentials).await?;
        Ok(Clients {
            iot: aws_sdk_iot::Client::new(&config),
            secrets: aws_sdk_secretsmanager::Client::new(&config),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<(String, String), Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (("keys".to_string(), k.to_string()), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn access_keys_come_from_the_secret_with_an_optional_session_token() {
        let c = credentials_from(
            "keys",
            &values(&[(ACCESS_KEY_ID, "AKID\n"), (SECRET_ACCESS_KEY, "shh")]),
        )
        .unwrap();
        assert_eq!((c.access_key_id(), c.secret_access_key()), ("AKID", "shh"));
        assert_eq!(c.session_token(), None);
        let c = credentials_from(
            "keys",
            &values(&[
                (ACCESS_KEY_ID, "AKID"),
                (SECRET_ACCESS_KEY, "shh"),
                (SESSION_TOKEN, "tok"),
            ]),
        )
        .unwrap();
        assert_eq!(c.session_token(), Some("tok"));
        let e = credentials_from("keys", &values(&[(ACCESS_KEY_ID, "AKID")])).unwrap_err();
        assert!(e.contains("keys") && e.contains(SECRET_ACCESS_KEY), "{e}");
        assert!(credentials_from("other", &values(&[(ACCESS_KEY_ID, "A")])).is_err());
    }
}
