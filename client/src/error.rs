//! The client's typed errors. Callers branch on these: in particular
//! [`Error::OutcomeUnknown`] means "the write may or may not have happened".

/// Everything a [`crate::Client`] operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config listed no endpoints, so there is nothing to dial.
    #[error("no endpoints configured")]
    NoEndpoints,
    /// An endpoint string could not be turned into a URI.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A file of the TLS config could not be read or is not usable PEM.
    #[error("TLS {what} {}: {reason}", path.display())]
    TlsFile {
        /// Which file (`CA certificate`, `client certificate`, `client key`).
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// The TLS files parse but do not make a usable configuration.
    #[error("TLS configuration unusable: {0}")]
    TlsConfig(String),
    /// A write was sent and then the connection failed or the deadline passed
    /// before a reply: it may or may not have been committed. The client never
    /// retries such an unconditional write on its own; the caller decides
    /// (e.g. read the key back, or use a conditional write).
    #[error("outcome of {op} on key {key:?} is unknown: {detail}")]
    OutcomeUnknown {
        /// The operation (`put`, `delete`, `txn`, `lease grant`, ...).
        op: &'static str,
        /// The key, lossily decoded for display.
        key: String,
        /// What went wrong after the request was sent.
        detail: String,
    },
    /// Retries ran out (attempts or overall deadline) while no attempt reached a
    /// leader that could serve the request. Nothing was written.
    #[error("gave up after {attempts} attempts in {elapsed_ms} ms: {last}")]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// Time spent, including backoff.
        elapsed_ms: u64,
        /// The last retryable failure seen.
        last: String,
    },
    /// The server canceled a watch: its start revision was compacted away
    /// (`compact_revision` is then the oldest revision still available;
    /// watch again from there and re-read the state), or it refused it.
    #[error("watch canceled by the server (compact_revision {compact_revision}): {reason}")]
    WatchCanceled {
        /// The compaction point when that is the reason, else 0.
        compact_revision: i64,
        /// The server's reason.
        reason: String,
    },
    /// The server rejected the request for a reason retrying cannot fix
    /// (invalid argument, permission, unimplemented...).
    #[error("rejected by server: {code:?}: {message}")]
    Rejected {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
}

/// Convenience alias for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
