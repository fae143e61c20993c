//! One gRPC `Channel` per endpoint, created on first use and reused by every
//! request and every clone of the client (a tonic Channel multiplexes
//! concurrent requests over one HTTP/2 connection).

use crate::config::{ClientConfig, endpoint_uri};
use crate::error::Error;
use std::collections::HashMap;
use std::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

/// Most channels kept at once. Endpoints come from the config and from leader
/// hints, so a misbehaving server cannot make the pool grow without bound.
pub const MAX_POOLED_CHANNELS: usize = 64;

/// The pool. Connects eagerly so that a refused connection surfaces before a
/// request is sent (and is therefore known not to have executed).
#[derive(Debug)]
pub struct ChannelPool {
    /// Open channels by endpoint (`host:port` as given or hinted).
    channels: Mutex<HashMap<String, Channel>>,
    /// Dial settings for new channels.
    connect_timeout: std::time::Duration,
}

impl ChannelPool {
    /// Checks `config` (at least one well-formed endpoint, no TLS yet) and
    /// returns an empty pool for it. Shared by every client type.
    pub fn for_config(config: &ClientConfig) -> Result<Self, Error> {
        if config.endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        if config.tls.is_some() {
            return Err(Error::TlsUnsupported);
        }
        for endpoint in &config.endpoints {
            parse_endpoint(endpoint)?;
        }
        Ok(ChannelPool::new(config))
    }

    /// An empty pool using the config's connect timeout.
    pub fn new(config: &ClientConfig) -> Self {
        ChannelPool {
            channels: Mutex::new(HashMap::new()),
            connect_timeout: config.connect_timeout,
        }
    }

    /// The channel for `endpoint`, connecting it if needed.
    pub async fn get(&self, endpoint: &str) -> Result<Channel, String> {
        if let Some(channel) = self.lock().get(endpoint) {
            return Ok(channel.clone());
        }
        let channel = dial(endpoint, self.connect_timeout).await?;
        let mut channels = self.lock();
        if channels.len() >= MAX_POOLED_CHANNELS {
            channels.clear();
        }
        Ok(channels
            .entry(endpoint.to_string())
            .or_insert(channel)
            .clone())
    }

    /// Drops the channel for `endpoint`, so the next use reconnects (eagerly).
    pub fn evict(&self, endpoint: &str) {
        self.lock().remove(endpoint);
    }

    /// Number of open channels (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every critical section is a single map operation), so recover.
        self.channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Validates an endpoint string without dialing it.
pub fn parse_endpoint(endpoint: &str) -> Result<Endpoint, Error> {
    Endpoint::from_shared(endpoint_uri(endpoint)).map_err(|e| Error::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        reason: e.to_string(),
    })
}

async fn dial(endpoint: &str, connect_timeout: std::time::Duration) -> Result<Channel, String> {
    let ep = parse_endpoint(endpoint).map_err(|e| e.to_string())?;
    ep.connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("connect to {endpoint}: {}", error_chain(&e)))
}

/// "outer: inner: root" for an error and its sources (tonic's transport
/// error alone says only "transport error").
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}
