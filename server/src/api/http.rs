//! HTTP endpoints: Prometheus `/metrics`, liveness `/healthz` (fails once a
//! fatal storage error stopped the node), readiness `/readyz` (a member, a
//! leader is known, applied close to commit).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::node::NodeHandle;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    node: NodeHandle,
}

async fn render_metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// Alive means able to serve: after a fatal storage error this fails at
/// once (the process exits right after), so Kubernetes restarts the pod.
async fn healthz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.node.leader_view().failed {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "storage failure; the node is exiting\n",
        )
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    let view = s.node.leader_view();
    if view.ready && !view.failed {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// The router, separate from binding so tests can drive it.
pub fn router(metrics: Arc<Metrics>, node: NodeHandle) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, node })
}

/// Serves HTTP on `listener` until shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    node: NodeHandle,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, node))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}
