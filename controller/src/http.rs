//! The operations endpoint: `/healthz` (a real publish/subscribe round trip through
//! every broker's router), `/readyz`, `/metrics` (Prometheus text) and `/status`
//! (the status report as JSON).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

use crate::standalone::Runtime;

/// What the endpoint serves from.
#[derive(Clone)]
pub struct Ops {
    /// The running brokers and their status.
    pub runtime: Arc<Runtime>,
    /// Metrics registry.
    pub registry: Arc<Registry>,
}

/// Serves the endpoint on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, ops: Ops) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(ops);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "operations endpoint failed");
        }
    });
    tracing::info!(address = %local, "operations endpoint: /healthz /readyz /metrics /status");
    Ok(local)
}

async fn healthz(State(ops): State<Ops>) -> Response {
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

async fn readyz(State(ops): State<Ops>) -> Response {
    match ops.runtime.not_ready().await {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn metrics(State(ops): State<Ops>) -> Response {
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

async fn status(State(ops): State<Ops>) -> Response {
    axum::Json(ops.runtime.report().await).into_response()
}
