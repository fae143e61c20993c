//! Reading the server's answer to a failed RPC: was it a `NOT_LEADER` redirect
//! (and to where), a definite "not executed", or an unknown outcome?
//!
//! Server contract (see the crate docs): on the etcd v3 API a follower
//! forwards writes to the leader itself; a write lost after it was forwarded
//! is `DEADLINE_EXCEEDED` "outcome unknown", one never sent is `UNAVAILABLE`
//! ("leader changed", "request not sent"). A server that redirects instead
//! (`titan.v1.KV`) fails a write on a follower with `FAILED_PRECONDITION`, a
//! message starting with `NOT_LEADER`, and metadata `titan-leader-grpc` (the
//! leader's KV gRPC address) and `titan-leader-client` (its TCP address);
//! the client follows such a hint at once.
//!
//! The server also answers `UNAVAILABLE` both when it proposed nothing (no
//! leader, overloaded, transfer in progress, entry overwritten) and when the
//! outcome is unknown (request timed out, leadership lost, shutting down with
//! writes in flight). Only messages on the [`NOT_EXECUTED_MARKERS`] list are
//! trusted as "not executed"; every other `UNAVAILABLE` is an unknown outcome.

use std::error::Error as StdError;

/// Metadata key carrying the leader's client gRPC address on a redirect.
pub const LEADER_GRPC_METADATA: &str = "titan-leader-grpc";
/// Metadata key carrying the leader's plaintext TCP address on a redirect.
pub const LEADER_CLIENT_METADATA: &str = "titan-leader-client";
/// Prefix of the status message (and of the TCP `ERR` reply) on a redirect.
pub const NOT_LEADER_PREFIX: &str = "NOT_LEADER";

/// Substrings of a server `UNAVAILABLE` message that mean the request was
/// certainly not applied. Checked only after [`OUTCOME_UNKNOWN_MARKER`].
pub const NOT_EXECUTED_MARKERS: &[&str] = &[
    "no leader",
    "overloaded",
    "leadership transfer in progress",
    "membership change is in progress",
    "not applied",
    // etcd API: a node that is not (or no longer) the leader refused the
    // request before proposing it, or could not reach the leader at all.
    "etcdserver: leader changed",
    "request not sent",
];
/// Substring of the server's `RESOURCE_EXHAUSTED` for a key or value over
/// the size limit (`key too large (max N bytes)`): permanent, never retried.
pub const TOO_LARGE_MARKER: &str = "too large (max ";
/// Substring with which the server flags an `UNAVAILABLE` whose write may
/// have applied.
pub const OUTCOME_UNKNOWN_MARKER: &str = "outcome unknown";

/// What a failed attempt means for the retry loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The node is not the leader. `leader_grpc` is the hint, if it knew one.
    NotLeader {
        /// The leader's KV gRPC address (`host:port`), when known.
        leader_grpc: Option<String>,
    },
    /// The request was certainly not executed (connection refused, server said
    /// UNAVAILABLE / RESOURCE_EXHAUSTED). Safe to retry any operation.
    NotExecuted(String),
    /// The request may have reached the server and been executed. Reads can
    /// retry; unconditional writes must not.
    Unknown(String),
    /// A permanent error: retrying the same request cannot help.
    Permanent(tonic::Code, String),
}

/// Classifies a tonic status returned by one attempt.
pub fn classify(status: &tonic::Status) -> Failure {
    use tonic::Code;
    let message = status.message().to_string();
    match status.code() {
        Code::FailedPrecondition if message.starts_with(NOT_LEADER_PREFIX) => Failure::NotLeader {
            leader_grpc: leader_grpc_hint(status),
        },
        _ if is_connection_refused(status) => Failure::NotExecuted(describe(status)),
        // A server-generated UNAVAILABLE carries no transport source.
        Code::Unavailable if status.source().is_none() && server_did_not_execute(&message) => {
            Failure::NotExecuted(describe(status))
        }
        // The server refused an oversize key or value before Raft: nothing
        // was executed, and resending the same request cannot help.
        Code::ResourceExhausted if message.contains(TOO_LARGE_MARKER) => {
            Failure::Permanent(Code::ResourceExhausted, message)
        }
        Code::ResourceExhausted => Failure::NotExecuted(describe(status)),
        Code::Unavailable
        | Code::Unknown
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Internal => Failure::Unknown(describe(status)),
        code => Failure::Permanent(code, message),
    }
}

/// The leader's gRPC address from a redirect status, if present and non-empty.
pub fn leader_grpc_hint(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_GRPC_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Parses a TCP protocol `ERR NOT_LEADER <addr>` reply into the leader's
/// client address. `None` for any other line, or when no address is given.
pub fn parse_tcp_not_leader(line: &str) -> Option<&str> {
    let rest = line.trim_end().strip_prefix("ERR ")?;
    let addr = rest.strip_prefix(NOT_LEADER_PREFIX)?.trim();
    (!addr.is_empty() && !addr.contains(char::is_whitespace)).then_some(addr)
}

/// Whether a server `UNAVAILABLE` message says nothing was applied.
fn server_did_not_execute(message: &str) -> bool {
    !message.contains(OUTCOME_UNKNOWN_MARKER)
        && NOT_EXECUTED_MARKERS
            .iter()
            .any(|marker| message.contains(marker))
}

/// True when some cause of the status is a refused TCP connection: the request
/// bytes never left this process, so nothing can have been executed.
fn is_connection_refused(status: &tonic::Status) -> bool {
    let mut cause: Option<&(dyn StdError + 'static)> = status.source();
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        cause = err.source();
    }
    false
}

fn describe(status: &tonic::Status) -> String {
    match status.source() {
        Some(src) => format!("{:?}: {} ({src})", status.code(), status.message()),
        None => format!("{:?}: {}", status.code(), status.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    fn not_leader(hint: Option<&str>) -> Status {
        let mut status = Status::new(Code::FailedPrecondition, "NOT_LEADER leader is node2");
        if let Some(h) = hint {
            let value = h
                .parse()
                .unwrap_or_else(|_| panic!("bad test metadata {h}"));
            status.metadata_mut().insert(LEADER_GRPC_METADATA, value);
        }
        status
    }

    #[test]
    fn not_leader_status_yields_the_grpc_hint() {
        let failure = classify(&not_leader(Some("127.0.0.1:7002")));
        assert_eq!(
            failure,
            Failure::NotLeader {
                leader_grpc: Some("127.0.0.1:7002".into())
            }
        );
    }

    #[test]
    fn not_leader_without_or_with_blank_hint_has_no_leader() {
        assert_eq!(
            classify(&not_leader(None)),
            Failure::NotLeader { leader_grpc: None }
        );
        assert_eq!(
            classify(&not_leader(Some("  "))),
            Failure::NotLeader { leader_grpc: None }
        );
    }

    #[test]
    fn failed_precondition_without_prefix_is_permanent() {
        let status = Status::new(Code::FailedPrecondition, "something else");
        assert!(matches!(
            classify(&status),
            Failure::Permanent(Code::FailedPrecondition, _)
        ));
    }

    #[test]
    fn an_oversize_request_is_permanent_and_never_retried() {
        let status = Status::resource_exhausted("value too large (max 16711640 bytes)");
        assert!(matches!(
            classify(&status),
            Failure::Permanent(Code::ResourceExhausted, _)
        ));
        let busy = Status::resource_exhausted("too many concurrent requests");
        assert!(matches!(classify(&busy), Failure::NotExecuted(_)));
    }

    #[test]
    fn server_unavailable_is_classified_by_its_message() {
        // Messages titan-server sends today (server/src/node/*.rs on `node`).
        let cases: &[(&str, bool)] = &[
            ("UNAVAILABLE no leader", true),
            ("UNAVAILABLE no leader elected", true),
            ("UNAVAILABLE overloaded", true),
            ("UNAVAILABLE leadership transfer in progress", true),
            ("UNAVAILABLE a membership change is in progress", true),
            (
                "UNAVAILABLE entry was overwritten by a new leader; not applied",
                true,
            ),
            ("UNAVAILABLE request timed out; outcome unknown", false),
            ("UNAVAILABLE leadership lost; outcome unknown", false),
            ("UNAVAILABLE node is shutting down", false),
            (
                "UNAVAILABLE storage failure; node is stopping; outcome unknown",
                false,
            ),
            ("UNAVAILABLE something new", false),
            // The etcd API (server/src/transport/etcd_kv.rs, etcd_forward.rs).
            ("etcdserver: leader changed", true),
            ("etcdserver: leader unreachable; request not sent", true),
        ];
        for (message, not_executed) in cases {
            let failure = classify(&Status::new(Code::Unavailable, *message));
            let got = matches!(failure, Failure::NotExecuted(_));
            assert_eq!(got, *not_executed, "{message}: {failure:?}");
            if !not_executed {
                assert!(
                    matches!(failure, Failure::Unknown(_)),
                    "{message}: {failure:?}"
                );
            }
        }
    }

    #[test]
    fn transport_unavailable_after_send_is_unknown() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let status = Status::from_error(Box::new(io));
        // from_error on a foreign error gives Unknown with the io error as source.
        assert!(matches!(classify(&status), Failure::Unknown(_)));
    }

    #[test]
    fn refused_connection_means_not_executed() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = Status::from_error(Box::new(io));
        assert!(matches!(classify(&status), Failure::NotExecuted(_)));
    }

    #[test]
    fn a_forwarded_write_lost_mid_flight_is_an_unknown_outcome() {
        // What a follower answers when the leader was lost after it
        // forwarded the write (server/src/transport/etcd_forward.rs).
        let status = Status::deadline_exceeded(
            "etcdserver: request timed out, outcome unknown (the leader was lost mid-write)",
        );
        assert!(matches!(classify(&status), Failure::Unknown(_)));
    }

    #[test]
    fn deadline_and_internal_are_unknown_outcomes() {
        for code in [
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Aborted,
            Code::Internal,
        ] {
            assert!(
                matches!(classify(&Status::new(code, "x")), Failure::Unknown(_)),
                "{code:?}"
            );
        }
    }

    #[test]
    fn invalid_argument_is_permanent() {
        let failure = classify(&Status::new(Code::InvalidArgument, "bad key"));
        assert_eq!(
            failure,
            Failure::Permanent(Code::InvalidArgument, "bad key".into())
        );
    }

    #[test]
    fn tcp_not_leader_reply_is_parsed_from_a_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("ERR NOT_LEADER localhost:6002", Some("localhost:6002")),
            ("ERR NOT_LEADER localhost:6002\r\n", Some("localhost:6002")),
            ("ERR NOT_LEADER ", None),
            ("ERR NOT_LEADER", None),
            ("ERR UNAVAILABLE no leader", None),
            ("OK", None),
            ("VALUE NOT_LEADER x", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_tcp_not_leader(line), *want, "{line:?}");
        }
    }
}
