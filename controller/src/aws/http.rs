//! The HTTPS client of every AWS SDK client edgemq makes: hyper's HTTP/1.1 client
//! over rustls with ring, trusting the system's roots.
//!
//! Our own rather than the SDK's (`aws-smithy-http-client`): the SDK's client always
//! links an HTTP/2 client and a connection pool of its own (about 1.5 MB of code on a
//! device that makes a few AWS calls a day), and its default would build aws-lc from C
//! sources. Every AWS API edgemq calls speaks HTTP/1.1.
//!
//! The SDK's orchestrator owns retries and the operation timeout; this client applies
//! the connect and read timeouts the SDK hands it and says which failures are worth a
//! retry (I/O, timeouts) and which are not.

use std::error::Error as StdError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::retry::ErrorKind;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;

type Hyper =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<TcpConnector>, SdkBody>;

/// The client, for `SdkConfig::http_client`.
pub fn https_client() -> SharedHttpClient {
    SharedHttpClient::new(Client::default())
}

/// Builds one connector per timeout settings and keeps it, so its connection pool is
/// shared by every call with those settings.
#[derive(Debug, Default)]
struct Client {
    connectors: Mutex<Vec<(Timeouts, SharedHttpConnector)>>,
}

/// Connect and read timeouts, as the SDK's settings give them.
type Timeouts = (Option<Duration>, Option<Duration>);

impl HttpClient for Client {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let key = (settings.connect_timeout(), settings.read_timeout());
        let mut connectors = self.connectors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = connectors.iter().find(|(k, _)| *k == key) {
            return c.clone();
        }
        let connector = SharedHttpConnector::new(Connector::new(key.0, key.1));
        connectors.push((key, connector.clone()));
        connector
    }
}

/// One hyper client with its pool, and the time a response may take to start.
#[derive(Clone)]
struct Connector {
    hyper: Hyper,
    read_timeout: Option<Duration>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("read_timeout", &self.read_timeout)
            .finish_non_exhaustive()
    }
}

impl Connector {
    fn new(connect_timeout: Option<Duration>, read_timeout: Option<Duration>) -> Connector {
        let mut tcp = TcpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(connect_timeout);
        tcp.set_nodelay(true);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(system_roots())
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let hyper =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .build(https);
        Connector {
            hyper,
            read_timeout,
        }
    }
}

/// The system's trusted roots; certificates that do not parse are skipped and logged,
/// as the SDK's own client does.
fn system_roots() -> rustls::RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "a system root certificate could not be read");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (_, skipped) = roots.add_parsable_certificates(found.certs);
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "system root certificates that do not parse were skipped"
        );
    }
    roots
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(r) => r,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let send = self.hyper.request(request);
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let response = match read_timeout {
                Some(t) => match tokio::time::timeout(t, send).await {
                    Ok(r) => r,
                    Err(_) => return Err(ConnectorError::timeout(Box::new(NoResponse(t)))),
                },
                None => send.await,
            }
            .map_err(connector_error)?;
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no response within {0:?}")]
struct NoResponse(Duration);

/// What the SDK's retry policy should make of a failed request: connection and I/O
/// failures are retried, a request hyper refused to send is the caller's mistake, a
/// response cut short is transient.
fn connector_error(e: hyper_util::client::legacy::Error) -> ConnectorError {
    let hyper = find_source::<hyper::Error>(&e);
    let kind = match hyper {
        Some(h) if h.is_user() => Kind::User,
        Some(h) if h.is_incomplete_message() => Kind::Transient,
        Some(h) if h.is_closed() || h.is_canceled() => Kind::Io,
        _ if e.is_connect() || find_source::<std::io::Error>(&e).is_some() => Kind::Io,
        _ => Kind::Other,
    };
    let e = Box::new(e);
    match kind {
        Kind::User => ConnectorError::user(e),
        Kind::Io => ConnectorError::io(e),
        Kind::Transient => ConnectorError::other(e, Some(ErrorKind::TransientError)),
        Kind::Other => ConnectorError::other(e, None),
    }
}

enum Kind {
    User,
    Io,
    Transient,
    Other,
}

/// `error` or the first error in its chain of sources that is an `E`.
fn find_source<'a, E: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(uri: &str) -> HttpRequest {
        HttpRequest::try_from(
            axum::http::Request::builder()
                .uri(uri)
                .body(SdkBody::empty())
                .unwrap(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_io_error_the_sdk_retries() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let connector = Connector::new(Some(Duration::from_secs(5)), None);
        let e = connector
            .call(get(&format!("http://127.0.0.1:{port}/")))
            .await
            .unwrap_err();
        assert!(e.is_io(), "{e:?}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(socket);
        });
        let connector = Connector::new(None, Some(Duration::from_millis(200)));
        let e = connector
            .call(get(&format!("http://{addr}/")))
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e:?}");
        assert!(find_source::<NoResponse>(&e).is_some(), "{e:?}");
        held.abort();
    }
}
