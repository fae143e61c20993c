//! Watches over `etcdserverpb.Watch`: a stream of the changes to a key or a
//! prefix, from a past revision or from now.
//!
//! Any node serves a watch from its own applied state, so the client opens
//! it on whichever endpoint the retry loop picks. If the stream breaks (the
//! node died, a connection reset), [`Watch::next`] reopens it on another
//! endpoint from the revision after the last event it returned, so events
//! still come in revision order, each once. At most
//! [`MAX_WATCH_RESUMES_IN_A_ROW`] reopenings happen without an event in
//! between, each bounded by the client's retry config. A watch whose start
//! was compacted away (or that the server cancels for another reason) ends
//! with [`Error::WatchCanceled`].

use crate::client::{Client, OnUnknown};
use crate::error::{Error, Result};
use crate::types::{KeyValue, prefix_bounds};
use futures::Stream;
use titan_proto::etcdserverpb as pb;
use titan_proto::etcdserverpb::watch_client::WatchClient;
use titan_proto::mvccpb;
use tokio::sync::mpsc;

/// Times a broken watch stream is reopened without an event in between.
pub const MAX_WATCH_RESUMES_IN_A_ROW: u32 = 8;
/// Requests queued towards the server on one watch stream (only the create
/// request is ever sent).
const WATCH_REQUEST_BUFFER: usize = 4;

/// What to watch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchQuery {
    /// The key, or the prefix when `prefix` is set.
    pub key: Vec<u8>,
    /// Watch every key starting with `key`.
    pub prefix: bool,
    /// First revision to report (0 = changes after now). A past revision
    /// replays history from there, unless it was compacted.
    pub start_revision: i64,
    /// Also return each key's previous value with its events.
    pub prev_kv: bool,
}

impl WatchQuery {
    /// Changes to one key, from now.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        WatchQuery {
            key: key.into(),
            ..Default::default()
        }
    }

    /// Changes to every key with this prefix, from now.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        WatchQuery {
            key: prefix.into(),
            prefix: true,
            ..Default::default()
        }
    }

    /// The same watch, starting at `revision` (0 = now).
    pub fn from_revision(mut self, revision: i64) -> Self {
        self.start_revision = revision;
        self
    }

    pub(crate) fn create_request(&self, start_revision: i64) -> pb::WatchRequest {
        let (key, range_end) = if self.prefix {
            prefix_bounds(&self.key)
        } else {
            (self.key.clone(), Vec::new())
        };
        let create = pb::WatchCreateRequest {
            key,
            range_end,
            start_revision,
            prev_kv: self.prev_kv,
            ..Default::default()
        };
        pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
        }
    }
}

/// The kind of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was written.
    Put,
    /// The key was deleted (also by a lease revoke or expiry).
    Delete,
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete, the key with the deleting
    /// revision as `version` and no value.
    pub kv: KeyValue,
    /// The key before the change, when asked for (`prev_kv`).
    pub prev: Option<KeyValue>,
}

impl WatchEvent {
    fn from_pb(e: mvccpb::Event) -> Option<Self> {
        let kind = if e.r#type == mvccpb::event::EventType::Delete as i32 {
            EventKind::Delete
        } else {
            EventKind::Put
        };
        Some(WatchEvent {
            kind,
            kv: KeyValue::from_pb(e.kv?),
            prev: e.prev_kv.map(KeyValue::from_pb),
        })
    }

    /// The revision of the change.
    pub fn revision(&self) -> i64 {
        i64::try_from(self.kv.version).unwrap_or(i64::MAX)
    }
}

/// An open watch. Dropping it closes the stream.
pub struct Watch {
    /// Reopens the stream after a break.
    client: Client,
    /// What is watched.
    query: WatchQuery,
    /// The revision the next event must have at least (0 = not known yet).
    next_revision: i64,
    /// Keeps the request side open; the server ends the watch when it closes.
    _requests: mpsc::Sender<pb::WatchRequest>,
    /// The server's responses.
    responses: tonic::Streaming<pb::WatchResponse>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("query", &self.query)
            .field("next_revision", &self.next_revision)
            .finish()
    }
}

/// An opened stream: its request side, responses and the revision the
/// watch starts at.
type Opened = (
    mpsc::Sender<pb::WatchRequest>,
    tonic::Streaming<pb::WatchResponse>,
    i64,
);

impl Client {
    /// Opens a watch and waits until the server confirms it. Events then
    /// come from [`Watch::next`] or [`Watch::into_stream`].
    pub async fn watch(&self, query: WatchQuery) -> Result<Watch> {
        let (requests, responses, next_revision) =
            self.open_watch(&query, query.start_revision).await?;
        Ok(Watch {
            client: self.clone(),
            query,
            next_revision,
            _requests: requests,
            responses,
        })
    }

    async fn open_watch(&self, query: &WatchQuery, start_revision: i64) -> Result<Opened> {
        let create = query.create_request(start_revision);
        let done = self
            .run(OnUnknown::Retry, &query.key, |channel| {
                let create = create.clone();
                async move { open_once(channel, create, start_revision).await }
            })
            .await?;
        Ok(done.value)
    }
}

/// One attempt at opening: send the create request, wait for `created`.
async fn open_once(
    channel: tonic::transport::Channel,
    create: pb::WatchRequest,
    start_revision: i64,
) -> std::result::Result<tonic::Response<Opened>, tonic::Status> {
    let (tx, rx) = mpsc::channel(WATCH_REQUEST_BUFFER);
    tx.send(create)
        .await
        .map_err(|_| tonic::Status::internal("watch request queue closed"))?;
    let requests =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|msg| (msg, rx)) },
        );
    let mut responses = WatchClient::new(channel)
        .watch(requests)
        .await?
        .into_inner();
    let Some(first) = responses.message().await? else {
        return Err(tonic::Status::unavailable(
            "watch stream closed before it was created; not applied",
        ));
    };
    if first.canceled || !first.created {
        return Err(tonic::Status::failed_precondition(format!(
            "watch not created: {}",
            first.cancel_reason
        )));
    }
    let from = match start_revision {
        0 => first.header.map_or(0, |h| h.revision) + 1,
        rev => rev,
    };
    Ok(tonic::Response::new((tx, responses, from)))
}

impl Watch {
    /// The next non-empty batch of events (whole revisions, in revision
    /// order). Waits as long as nothing changes. Reopens a broken stream
    /// from the next revision owed; fails with [`Error::WatchCanceled`]
    /// when the server cancels the watch (for example, its start revision
    /// was compacted).
    pub async fn next(&mut self) -> Result<Vec<WatchEvent>> {
        let mut resumes = 0u32;
        loop {
            let broken = match self.responses.message().await {
                Ok(Some(resp)) => match self.take(resp)? {
                    Some(events) => return Ok(events),
                    None => continue,
                },
                Ok(None) => String::from("the server closed the watch stream"),
                Err(status) => format!("{:?}: {}", status.code(), status.message()),
            };
            if resumes >= MAX_WATCH_RESUMES_IN_A_ROW {
                return Err(Error::RetriesExhausted {
                    attempts: resumes,
                    elapsed_ms: 0,
                    last: format!("watch stream broke: {broken}"),
                });
            }
            resumes += 1;
            tracing::debug!(%broken, next = self.next_revision, "reopening watch");
            let (requests, responses, _) = self
                .client
                .open_watch(&self.query, self.next_revision)
                .await?;
            self._requests = requests;
            self.responses = responses;
        }
    }

    /// Events of one response, or `None` for a response without any
    /// (progress, a late confirmation). Skips events already returned.
    fn take(&mut self, resp: pb::WatchResponse) -> Result<Option<Vec<WatchEvent>>> {
        if resp.canceled {
            return Err(Error::WatchCanceled {
                compact_revision: resp.compact_revision,
                reason: resp.cancel_reason,
            });
        }
        let floor = self.next_revision;
        let events: Vec<WatchEvent> = resp
            .events
            .into_iter()
            .filter_map(WatchEvent::from_pb)
            .filter(|e| e.revision() >= floor)
            .collect();
        let Some(last) = events.last() else {
            return Ok(None);
        };
        self.next_revision = last.revision() + 1;
        Ok(Some(events))
    }

    /// The revision the next event will have at least: where a new watch
    /// would resume this one.
    pub fn next_revision(&self) -> i64 {
        self.next_revision
    }

    /// The watch as a stream of event batches; it ends after the first error.
    pub fn into_stream(self) -> impl Stream<Item = Result<Vec<WatchEvent>>> {
        futures::stream::unfold(Some(self), |state| async move {
            let mut watch = state?;
            match watch.next().await {
                Ok(events) => Some((Ok(events), Some(watch))),
                Err(err) => Some((Err(err), None)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_watch_asks_for_the_prefix_range_from_its_revision() {
        let req = WatchQuery::prefix("jobs/")
            .from_revision(42)
            .create_request(42);
        match req.request_union {
            Some(pb::watch_request::RequestUnion::CreateRequest(c)) => {
                assert_eq!(c.key, b"jobs/".to_vec());
                assert_eq!(c.range_end, b"jobs0".to_vec());
                assert_eq!(c.start_revision, 42);
            }
            other => panic!("not a create request: {other:?}"),
        }
        match WatchQuery::key("k").create_request(0).request_union {
            Some(pb::watch_request::RequestUnion::CreateRequest(c)) => {
                assert!(c.range_end.is_empty());
            }
            other => panic!("not a create request: {other:?}"),
        }
    }
}
