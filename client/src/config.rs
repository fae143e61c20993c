//! Client configuration: endpoints, timeouts, retry bounds and (future) TLS.

use std::time::Duration;

/// Everything a [`crate::Client`] needs to know before it dials anything.
///
/// Built with [`ClientConfig::new`] and adjusted field by field; every bound
/// has a default that suits an in-cluster client talking to a 3- or 5-node
/// cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Seed addresses of the KV gRPC service (`host:port`, default port 7001).
    /// Any member works: the client learns the leader from redirects.
    pub endpoints: Vec<String>,
    /// Timeout for establishing one TCP/HTTP2 connection. Kept short so that a
    /// dead seed costs little before the next one is tried.
    pub connect_timeout: Duration,
    /// Timeout for one RPC attempt, sent to the server as `grpc-timeout`.
    pub request_timeout: Duration,
    /// Retry policy shared by all operations.
    pub retry: RetryConfig,
    /// TLS settings; `None` means plaintext HTTP/2.
    pub tls: Option<TlsConfig>,
}

/// Bounds on how hard the client tries before giving up on one operation.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Maximum attempts of one operation, counting the first; redirects to
    /// the leader count as attempts, so a redirect loop cannot spin forever.
    pub max_attempts: u32,
    /// Wall-clock budget of one operation across all attempts and backoffs.
    pub overall_deadline: Duration,
    /// Smallest backoff before a retry (the jitter range starts here).
    pub backoff_min: Duration,
    /// Largest backoff before a retry; exponential growth is capped here.
    pub backoff_max: Duration,
}

/// TLS settings, accepted now so that callers can be written against the final
/// configuration shape. This build does not enable tonic's TLS features yet:
/// [`crate::Client::connect`] rejects a config with `tls: Some(..)` using
/// [`crate::Error::TlsUnsupported`] instead of silently sending plaintext.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM file with the CA certificates that sign the servers' certificates.
    pub ca_cert_path: std::path::PathBuf,
    /// Client certificate and key (PEM) for mutual TLS, if the server asks.
    pub client_identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Name to verify in the server certificate when it differs from the host.
    pub domain_name: Option<String>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 16,
            overall_deadline: Duration::from_secs(10),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
        }
    }
}

impl ClientConfig {
    /// A config with default timeouts and retry policy for these seeds.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            retry: RetryConfig::default(),
            tls: None,
        }
    }
}

/// Turns `host:port` or a full URI into the URI tonic dials.
pub(crate) fn endpoint_uri(endpoint: &str) -> String {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_uri_adds_scheme_only_when_missing() {
        assert_eq!(endpoint_uri("localhost:7001"), "http://localhost:7001");
        assert_eq!(endpoint_uri("http://a:1"), "http://a:1");
        assert_eq!(endpoint_uri("https://a:1"), "https://a:1");
    }
}
