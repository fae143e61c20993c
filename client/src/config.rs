//! Client configuration: endpoints, timeouts, retry bounds and TLS.

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

/// TLS settings (rustls, ring provider). The files are read when the client
/// is built, so a missing or malformed one fails
/// [`crate::Client::connect`] with [`crate::Error::TlsFile`] naming it. They
/// are read again before every new connection: a changed, valid set (a
/// rotated client certificate, a new CA bundle) is used from then on, a
/// broken one is logged and the previous set kept.
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

/// Turns `host:port` or a full URI into the URI tonic dials: a bare
/// `host:port` gets `https://` when TLS is configured, else `http://`.
pub(crate) fn endpoint_uri(endpoint: &str, tls: bool) -> String {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_string()
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_uri_adds_scheme_only_when_missing() {
        assert_eq!(
            endpoint_uri("localhost:7001", false),
            "http://localhost:7001"
        );
        assert_eq!(
            endpoint_uri("localhost:7001", true),
            "https://localhost:7001"
        );
        assert_eq!(endpoint_uri("http://a:1", true), "http://a:1");
        assert_eq!(endpoint_uri("https://a:1", false), "https://a:1");
    }
}
