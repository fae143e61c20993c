//! One gRPC `Channel` per endpoint, created on first use and reused by every
//! request and every clone of the client (a tonic Channel multiplexes
//! concurrent requests over one HTTP/2 connection), plaintext or TLS.

use crate::config::{ClientConfig, TlsConfig, endpoint_uri};
use crate::error::Error;
use std::collections::HashMap;
use std::sync::Mutex;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

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
    /// TLS settings of every dial (`None`: plaintext), re-read from their
    /// files before each new connection.
    tls: Option<Mutex<LiveTls>>,
}

/// Client TLS settings that follow their files: before each dial the files
/// are read again, and when their bytes changed and the new set is valid it
/// is used from then on (a rotated client certificate, or a new CA bundle,
/// reaches new connections without rebuilding the client). A broken or
/// half-written set is logged and the previous one kept. Channels already
/// open keep their connection.
#[derive(Debug)]
struct LiveTls {
    /// The file paths and server name.
    source: TlsConfig,
    /// The files' bytes `config` was built from.
    files: Vec<Vec<u8>>,
    /// What new connections use.
    config: ClientTlsConfig,
}

impl LiveTls {
    fn new(source: &TlsConfig) -> Result<LiveTls, Error> {
        let config = crate::tls::client_tls(source)?;
        Ok(LiveTls {
            source: source.clone(),
            files: tls_file_bytes(source).unwrap_or_default(),
            config,
        })
    }

    /// The settings for a new connection, after taking in changed files.
    fn current(&mut self) -> ClientTlsConfig {
        match tls_file_bytes(&self.source) {
            Ok(files) if files == self.files => {}
            Ok(files) => match crate::tls::client_tls(&self.source) {
                Ok(config) => {
                    tracing::info!(ca = %self.source.ca_cert_path.display(), "client TLS files changed; new connections use them");
                    self.files = files;
                    self.config = config;
                }
                Err(error) => {
                    tracing::warn!(%error, "client TLS files changed but are not usable; keeping the previous ones");
                }
            },
            Err(error) => {
                tracing::warn!(%error, "client TLS files unreadable; keeping the previous ones");
            }
        }
        self.config.clone()
    }
}

/// The bytes of every file of `tls`, in a fixed order.
fn tls_file_bytes(tls: &TlsConfig) -> std::io::Result<Vec<Vec<u8>>> {
    let mut files = vec![std::fs::read(&tls.ca_cert_path)?];
    if let Some((cert, key)) = &tls.client_identity {
        files.push(std::fs::read(cert)?);
        files.push(std::fs::read(key)?);
    }
    Ok(files)
}

impl ChannelPool {
    /// Checks `config` (at least one well-formed endpoint; TLS files
    /// readable and well-formed) and returns an empty pool for it. Shared by
    /// every client type.
    pub fn for_config(config: &ClientConfig) -> Result<Self, Error> {
        if config.endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let tls = config.tls.as_ref().map(LiveTls::new).transpose()?;
        for endpoint in &config.endpoints {
            parse_endpoint(endpoint, tls.as_ref().map(|t| &t.config))?;
        }
        Ok(ChannelPool {
            channels: Mutex::new(HashMap::new()),
            connect_timeout: config.connect_timeout,
            tls: tls.map(Mutex::new),
        })
    }

    /// The channel for `endpoint`, connecting it if needed.
    pub async fn get(&self, endpoint: &str) -> Result<Channel, String> {
        if let Some(channel) = self.lock().get(endpoint) {
            return Ok(channel.clone());
        }
        let tls = self.tls.as_ref().map(|live| {
            live.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .current()
        });
        let channel = dial(endpoint, tls.as_ref(), self.connect_timeout).await?;
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

/// Validates an endpoint string without dialing it; with `tls`, a bare
/// `host:port` is dialled as `https://`.
pub fn parse_endpoint(endpoint: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, Error> {
    let invalid = |e: tonic::transport::Error| Error::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        reason: error_chain(&e),
    };
    let ep = Endpoint::from_shared(endpoint_uri(endpoint, tls.is_some())).map_err(invalid)?;
    match tls {
        Some(tls) if ep.uri().scheme_str() == Some("https") => {
            ep.tls_config(tls.clone()).map_err(invalid)
        }
        _ => Ok(ep),
    }
}

/// The tonic endpoint for `endpoint` (`host:port` or a URI) with `tls`
/// applied, for callers that dial a service the client does not wrap
/// (`titanctl snapshot save` streams etcd's Maintenance.Snapshot).
pub fn grpc_endpoint(endpoint: &str, tls: Option<&TlsConfig>) -> Result<Endpoint, Error> {
    let tls = tls.map(crate::tls::client_tls).transpose()?;
    parse_endpoint(endpoint, tls.as_ref())
}

async fn dial(
    endpoint: &str,
    tls: Option<&ClientTlsConfig>,
    connect_timeout: std::time::Duration,
) -> Result<Channel, String> {
    let ep = parse_endpoint(endpoint, tls).map_err(|e| e.to_string())?;
    let channel = ep
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("connect to {endpoint}: {}", error_chain(&e)))?;
    probe(channel.clone(), connect_timeout)
        .await
        .map_err(|e| format!("connect to {endpoint}: {e}{}", probe_hint(tls)))?;
    Ok(channel)
}

/// A gRPC path no server serves: a working connection answers it with
/// `UNIMPLEMENTED`.
const PROBE_PATH: &str = "/titan.client.Probe/Ping";

/// One round trip on a new channel before any request uses it. Opening an
/// HTTP/2 connection does not wait for the server, so without it a server
/// that rejects the connection (a TLS port spoken to in plaintext, a client
/// certificate it refuses) would only fail the first request, and a write
/// would then look sent with an unknown outcome.
async fn probe(channel: Channel, timeout: std::time::Duration) -> Result<(), String> {
    let mut grpc = tonic::client::Grpc::new(channel);
    let call = async {
        grpc.ready().await.map_err(|e| error_chain(&e))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(PROBE_PATH);
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        match grpc.unary(tonic::Request::new(()), path, codec).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(()),
            Err(s) => Err(status_chain(&s)),
        }
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// A status's message and the chain of its source (`Status`'s own
/// `Display` dumps every field).
fn status_chain(status: &tonic::Status) -> String {
    let mut text = status.message().to_string();
    if let Some(source) = std::error::Error::source(status) {
        text.push_str(": ");
        text.push_str(&error_chain(source));
    }
    text
}

/// What most often makes a connection fail its probe, by TLS setting.
fn probe_hint(tls: Option<&ClientTlsConfig>) -> &'static str {
    match tls {
        None => {
            " (if the server's port uses TLS, configure a CA: ClientConfig::tls, titanctl --cacert)"
        }
        Some(_) => " (the server may require a client certificate, or refuse this one)",
    }
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
