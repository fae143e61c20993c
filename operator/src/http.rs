//! The operator's own HTTP endpoint: `/metrics` and `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;

use crate::metrics::Metrics;

/// Router serving `/metrics` (Prometheus text) and `/healthz`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(metrics)
}

async fn render_metrics(State(metrics): State<Arc<Metrics>>) -> String {
    metrics.render()
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn healthz_and_metrics_answer_over_http() {
        let metrics = Arc::new(Metrics::default());
        metrics.count_failure("kube");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let server = tokio::spawn(async move { axum::serve(listener, router(metrics)).await });
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"));
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("write: {e}"));
            let mut out = String::new();
            s.read_to_string(&mut out)
                .await
                .unwrap_or_else(|e| panic!("read: {e}"));
            out
        };
        let health = get("/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        let metrics = get("/metrics").await;
        assert!(
            metrics.contains("titan_operator_reconcile_failures_total{reason=\"kube\"} 1"),
            "{metrics}"
        );
        server.abort();
    }
}
