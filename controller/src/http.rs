//! The operations endpoint: `/healthz` (for brokers, a real publish/subscribe round
//! trip through every router), `/readyz`, `/metrics` (Prometheus text), `/status`
//! (the status report as JSON) and `POST /sync` (fetch the followed git repository
//! now, `edgemq run --git` only). Served by `edgemq run`, by the broker pod and by the
//! controller, each answering through [`Health`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use prometheus_client::registry::Registry;

/// What a process says about its own health.
pub trait Health: Send + Sync + 'static {
    /// What failed a liveness check (empty: alive).
    fn probe(&self) -> impl std::future::Future<Output = Vec<String>> + Send;
    /// Why the process is not ready, or `None` when it is.
    fn not_ready(&self) -> impl std::future::Future<Output = Option<String>> + Send;
    /// The status report as JSON.
    fn report(&self) -> impl std::future::Future<Output = serde_json::Value> + Send;
    /// Asks for a fetch of the followed git repository now (as SIGHUP does); false
    /// when the process follows none.
    fn request_sync(&self) -> bool {
        false
    }
}

/// What the endpoint serves from.
pub struct Ops<H> {
    /// Health and status.
    pub runtime: Arc<H>,
    /// Metrics registry.
    pub registry: Arc<Registry>,
}

impl<H> Clone for Ops<H> {
    fn clone(&self) -> Self {
        Ops {
            runtime: self.runtime.clone(),
            registry: self.registry.clone(),
        }
    }
}

/// Serves the endpoint on `addr` until the process ends. An error names the endpoint
/// and its address.
pub async fn serve<H: Health>(addr: SocketAddr, ops: Ops<H>) -> anyhow::Result<SocketAddr> {
    let failed = |e: std::io::Error| anyhow::anyhow!("operations endpoint {addr}: {e}");
    let app = Router::new()
        .route("/healthz", get(healthz::<H>))
        .route("/readyz", get(readyz::<H>))
        .route("/metrics", get(metrics::<H>))
        .route("/status", get(status::<H>))
        .route("/sync", post(sync::<H>))
        .with_state(ops);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "operations endpoint failed");
        }
    });
    tracing::info!(address = %local, "operations endpoint: /healthz /readyz /metrics /status");
    Ok(local)
}

async fn healthz<H: Health>(State(ops): State<Ops<H>>) -> Response {
    let failed = ops.runtime.probe().await;
    if failed.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "publish/subscribe round trip failed: {}\n",
                failed.join(", ")
            ),
        )
            .into_response()
    }
}

async fn readyz<H: Health>(State(ops): State<Ops<H>>) -> Response {
    match ops.runtime.not_ready().await {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn metrics<H: Health>(State(ops): State<Ops<H>>) -> Response {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &ops.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn status<H: Health>(State(ops): State<Ops<H>>) -> Response {
    axum::Json(ops.runtime.report().await).into_response()
}

/// `POST /sync`: 202 once a fetch is asked for (it runs in the background; repeated
/// requests while one is pending make one fetch), 404 without `--git`. GET is 405.
async fn sync<H: Health>(State(ops): State<Ops<H>>) -> Response {
    if ops.runtime.request_sync() {
        (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({
                "sync": "requested",
                "message": "the repository is fetched now; see /status (git) for the outcome",
            })),
        )
            .into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({
                "error": "this process follows no git repository (edgemq run --git)",
            })),
        )
            .into_response()
    }
}
