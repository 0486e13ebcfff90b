//! The HTTP endpoints (SPEC §7): `/metrics`, `/healthz`, `/readyz`. They read the
//! `Health` handle and the metrics, and ask LXD whether it answers; nothing here holds
//! reconcile state or writes to LXD.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::lxd::LxdApi;

use super::Health;
use super::metrics::Telemetry;

/// How long `/readyz` waits for LXD to answer.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A worker holding one key this much longer than the reconcile timeout is stuck.
const STUCK_GRACE: Duration = Duration::from_secs(10);

/// What the endpoints read.
pub struct Endpoints<L: LxdApi> {
    pub lxd: L,
    pub health: Health,
    pub telemetry: Arc<Telemetry>,
    /// `/healthz` fails when a reconcile runs well past it.
    pub reconcile_timeout: Duration,
}

type Shared<L> = Endpoints<L>;

/// The router; `serve` binds it.
pub fn router<L: LxdApi>(endpoints: Endpoints<L>) -> Router {
    let shared = Arc::new(endpoints);
    Router::new()
        .route("/metrics", get(metrics::<L>))
        .route("/healthz", get(healthz::<L>))
        .route("/readyz", get(readyz::<L>))
        .with_state(shared)
}

/// Serves on `listener` until the process ends.
pub async fn serve<L: LxdApi>(
    listener: tokio::net::TcpListener,
    endpoints: Endpoints<L>,
) -> std::io::Result<()> {
    axum::serve(listener, router(endpoints)).await
}

/// OpenMetrics for a scraper that asks for it (Prometheus does), the Prometheus text
/// format 0.0.4 otherwise (curl, `promtool check metrics`), as the Go client negotiates.
async fn metrics<L: LxdApi>(
    State(s): State<Arc<Shared<L>>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            s.telemetry.encode(),
        )
    } else {
        (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            s.telemetry.encode_text(),
        )
    }
}

/// Alive: the workers are not stuck past the reconcile timeout.
async fn healthz<L: LxdApi>(State(s): State<Arc<Shared<L>>>) -> impl IntoResponse {
    let held = s.health.longest_reconcile();
    if held > s.reconcile_timeout + STUCK_GRACE {
        let why = format!("a reconcile has been running for {held:?}");
        return (StatusCode::SERVICE_UNAVAILABLE, why);
    }
    (StatusCode::OK, "ok".to_string())
}

/// Ready: desired state and the first full listing loaded, LXD answering now, not
/// draining.
async fn readyz<L: LxdApi>(State(s): State<Arc<Shared<L>>>) -> impl IntoResponse {
    let not = |why: &str| (StatusCode::SERVICE_UNAVAILABLE, why.to_string());
    if s.health.is_draining() {
        return not("shutting down");
    }
    if let Some(why) = s.health.unreadable() {
        return not(&format!(
            "desired state partial, last good view kept: {why}"
        ));
    }
    if !s.health.is_loaded() {
        return not("desired state or the first LXD listing not loaded yet");
    }
    match tokio::time::timeout(READY_PROBE_TIMEOUT, s.lxd.server()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok".to_string()),
        Ok(Err(e)) => not(&format!("LXD does not answer: {e}")),
        Err(_) => not("LXD does not answer: timed out"),
    }
}
