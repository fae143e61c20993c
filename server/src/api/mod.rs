//! Client-facing non-gRPC APIs: the plaintext TCP protocol (README.md, "Protocol") and the
//! HTTP endpoints (`/metrics`, `/healthz`, `/readyz`).
//!
//! Layers follow mini-redis: [`protocol`] is pure (bytes → request, reply →
//! bytes), [`connection`] owns the read buffer, [`handler`] serves one
//! connection, [`server`] accepts connections under a semaphore.

pub mod connection;
pub mod handler;
pub mod http;
pub mod protocol;
pub mod server;
