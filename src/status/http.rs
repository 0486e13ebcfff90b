//! The HTTP endpoints (SPEC §7): `/metrics`, `/healthz`, `/readyz`. They only read the
//! controller's state; nothing here writes to LXD.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::controller::Controller;
use crate::lxd::LxdApi;
use crate::status::metrics::Telemetry;

/// How long `/readyz` waits for LXD to answer.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A worker holding one key this much longer than the reconcile timeout is stuck.
const STUCK_GRACE: Duration = Duration::from_secs(10);

struct Shared<L: LxdApi> {
    ctl: Arc<Controller<L>>,
    telemetry: Arc<Telemetry>,
}

/// The router; `serve` binds it.
pub fn router<L: LxdApi>(ctl: Arc<Controller<L>>, telemetry: Arc<Telemetry>) -> Router {
    let shared = Arc::new(Shared { ctl, telemetry });
    Router::new()
        .route("/metrics", get(metrics::<L>))
        .route("/healthz", get(healthz::<L>))
        .route("/readyz", get(readyz::<L>))
        .with_state(shared)
}

/// Serves on `listener` until the process ends.
pub async fn serve<L: LxdApi>(
    listener: tokio::net::TcpListener,
    ctl: Arc<Controller<L>>,
    telemetry: Arc<Telemetry>,
) -> std::io::Result<()> {
    axum::serve(listener, router(ctl, telemetry)).await
}

async fn metrics<L: LxdApi>(State(s): State<Arc<Shared<L>>>) -> impl IntoResponse {
    s.ctl.metrics.set_source_errors(s.ctl.source_errors());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.telemetry.encode(),
    )
}

/// Alive: the workers are not stuck past the reconcile timeout.
async fn healthz<L: LxdApi>(State(s): State<Arc<Shared<L>>>) -> impl IntoResponse {
    let held = s.ctl.queue.longest_processing();
    if held > s.ctl.opts.reconcile_timeout + STUCK_GRACE {
        let why = format!("a reconcile has been running for {held:?}");
        return (StatusCode::SERVICE_UNAVAILABLE, why);
    }
    (StatusCode::OK, "ok".to_string())
}

/// Ready: desired state and the first full listing loaded, LXD answering now, not
/// draining.
async fn readyz<L: LxdApi>(State(s): State<Arc<Shared<L>>>) -> impl IntoResponse {
    let not = |why: &str| (StatusCode::SERVICE_UNAVAILABLE, why.to_string());
    if s.ctl.is_draining() {
        return not("shutting down");
    }
    if !s.ctl.is_loaded() {
        return not("desired state or the first LXD listing not loaded yet");
    }
    match tokio::time::timeout(READY_PROBE_TIMEOUT, s.ctl.lxd.server()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok".to_string()),
        Ok(Err(e)) => not(&format!("LXD does not answer: {e}")),
        Err(_) => not("LXD does not answer: timed out"),
    }
}
