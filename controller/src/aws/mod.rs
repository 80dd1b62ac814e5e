//! AWS plumbing shared by the AWS IoT issuer: SDK configuration from the standard
//! credential chain, and errors that name the service, the operation and AWS's error
//! code. The least-privilege policy generator (`policy`) is pure.

pub mod fleet_template;
pub mod policy;

use aws_config::{BehaviorVersion, Region, SdkConfig};
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

/// The HTTPS client of every AWS SDK client edgemq makes: rustls with ring, like the
/// rest of edgemq (the SDK's default would build aws-lc from C sources).
pub fn https_client() -> aws_sdk_iot::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// SDK configuration: credentials from the standard chain (environment, profile, web
/// identity, ECS task role, instance metadata), HTTPS through rustls with ring.
pub async fn sdk_config(target: &Target) -> Result<SdkConfig, String> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(https_client());
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
    /// Clients for `target`.
    pub async fn new(target: &Target) -> Result<Clients, String> {
        let config = sdk_config(target).await?;
        Ok(Clients {
            iot: aws_sdk_iot::Client::new(&config),
            secrets: aws_sdk_secretsmanager::Client::new(&config),
        })
    }
}
