//! Calls a follower relays to the leader's client gRPC port (the Lease
//! service, and the Cluster service's member calls), so etcd clients, which
//! expect any member to answer, work through a follower or a Kubernetes
//! Service. KV writes do not come here: a follower forwards them inside
//! Raft (`NodeHandle::write_from_any_member`).
//!
//! Outcomes: the leader's own answers (including etcd errors) are relayed
//! unchanged; a leader that could not be reached at all means the call was
//! not sent (`Unavailable`); a failure after the request left (reset,
//! timeout) means the outcome is unknown, reported as `DeadlineExceeded`
//! with a message that says so, never as a plain failure.

use tonic::{Code, Status};

/// Upper bound on one forwarded request (connect + leader commit + reply).
pub const FORWARD_TIMEOUT_MS: u64 = 10_000;
/// Upper bound on connecting to the leader.
pub const FORWARD_CONNECT_TIMEOUT_MS: u64 = 1_000;

/// The message of a write whose outcome is unknown.
pub const UNKNOWN_OUTCOME: &str =
    "etcdserver: request timed out, outcome unknown (the leader was lost mid-write)";

/// Metadata marking a forwarded request: its receiver never forwards it
/// again (two nodes with stale leader views cannot bounce it forever).
pub const FORWARDED_HEADER: &str = "titan-forwarded";

/// Whether the status came from the transport failing to connect (the
/// request never left this node).
fn never_sent(s: &Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        let text = e.to_string();
        if text.contains("Connection refused") || text.contains("connect") {
            return true;
        }
        source = e.source();
    }
    false
}

/// Maps a failed forwarded call to what the client sees.
pub fn forwarded_error(s: Status) -> Status {
    let from_leader = s.message().starts_with("etcdserver:")
        || !matches!(
            s.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
        );
    if from_leader {
        return s;
    }
    if never_sent(&s) {
        return Status::unavailable("etcdserver: leader unreachable; request not sent");
    }
    Status::deadline_exceeded(UNKNOWN_OUTCOME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_answers_pass_through_and_lost_calls_are_unknown_outcomes() {
        let table = [
            (
                Status::out_of_range("etcdserver: mvcc: required revision has been compacted"),
                Code::OutOfRange,
            ),
            (
                Status::unavailable("etcdserver: leader changed"),
                Code::Unavailable,
            ),
            (Status::invalid_argument("bad"), Code::InvalidArgument),
            (Status::unknown("h2 protocol error"), Code::DeadlineExceeded),
            (Status::cancelled("timeout expired"), Code::DeadlineExceeded),
        ];
        for (i, (s, want)) in table.into_iter().enumerate() {
            assert_eq!(forwarded_error(s).code(), want, "row {i}");
        }
        assert_eq!(
            forwarded_error(Status::unknown("reset")).message(),
            UNKNOWN_OUTCOME
        );
    }
}
