//! `etcdserverpb.Watch`: a bidirectional stream of create/cancel requests,
//! served by any node from its own applied state (no round trip to the
//! leader per event).
//!
//! Each watcher is a task that pulls events from the local MVCC history
//! ([`ReadQuery::EtcdEvents`], a local read) from the next revision it owes,
//! every [`WATCH_POLL_MS`] or at once when it is behind. Events are sent in
//! revision order, each once; a watcher never buffers: when the client is
//! slow, the bounded stream ([`WATCH_STREAM_BUFFER`]) makes the watcher
//! wait, and a watcher that falls behind the compaction point is canceled
//! with `compact_revision` set, as etcd does.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use titan_proto::etcdserverpb as pb;
use titan_proto::etcdserverpb::watch_server::Watch;
use titan_proto::mvccpb;

use super::etcd_convert::{header_to_pb, kv_to_pb};
use crate::node::{Event, EventsQuery, Header, NodeHandle, ReadAnswer, ReadQuery};

/// How often an idle watcher looks for new events.
pub const WATCH_POLL_MS: u64 = 20;
/// Responses queued towards one client stream.
pub const WATCH_STREAM_BUFFER: usize = 64;
/// Events in one response (whole revisions; one large revision may exceed it).
pub const WATCH_MAX_EVENTS_PER_RESPONSE: usize = 1000;
/// Watchers on one stream.
pub const MAX_WATCHERS_PER_STREAM: usize = 1000;

type Tx = mpsc::Sender<Result<pb::WatchResponse, Status>>;

/// Implements `etcdserverpb.Watch`.
pub struct EtcdWatchService {
    /// The local node.
    node: NodeHandle,
}

impl EtcdWatchService {
    /// Serves `node`.
    pub fn new(node: NodeHandle) -> Self {
        EtcdWatchService { node }
    }
}

#[tonic::async_trait]
impl Watch for EtcdWatchService {
    type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(WATCH_STREAM_BUFFER);
        let stream = Stream {
            node: self.node.clone(),
            tx,
            watchers: HashMap::new(),
            next_id: 0,
        };
        tokio::spawn(stream.run(req.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One client stream and its watchers.
struct Stream {
    node: NodeHandle,
    tx: Tx,
    /// Watcher tasks by id (aborted on cancel and when the stream ends).
    watchers: HashMap<i64, JoinHandle<()>>,
    next_id: i64,
}

impl Stream {
    async fn run(mut self, mut input: Streaming<pb::WatchRequest>) {
        while let Some(Ok(req)) = input.next().await {
            use pb::watch_request::RequestUnion as U;
            let ok = match req.request_union {
                Some(U::CreateRequest(c)) => self.create(c).await,
                Some(U::CancelRequest(c)) => self.cancel(c.watch_id).await,
                Some(U::ProgressRequest(_)) => self.progress().await,
                None => true,
            };
            if !ok {
                break;
            }
        }
        for (_, task) in self.watchers.drain() {
            task.abort();
        }
    }

    async fn header(&self) -> Header {
        let q = ReadQuery::EtcdStats;
        self.node
            .read(q, false)
            .await
            .map(|r| r.header)
            .unwrap_or_default()
    }

    async fn send(&self, resp: pb::WatchResponse) -> bool {
        self.tx.send(Ok(resp)).await.is_ok()
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> bool {
        self.watchers.retain(|_, t| !t.is_finished());
        let header = self.header().await;
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            self.fresh_id()
        };
        let refused = if self.watchers.len() >= MAX_WATCHERS_PER_STREAM {
            Some("too many watchers on this stream")
        } else if self.watchers.contains_key(&id) {
            Some("watch id already in use")
        } else {
            None
        };
        let mut resp = pb::WatchResponse {
            header: Some(header_to_pb(&header)),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        if let Some(reason) = refused {
            resp.canceled = true;
            resp.cancel_reason = reason.into();
            return self.send(resp).await;
        }
        if !self.send(resp).await {
            return false;
        }
        let from = if c.start_revision > 0 {
            c.start_revision
        } else {
            header.revision + 1
        };
        let w = Watcher::new(self.node.clone(), self.tx.clone(), id, c, from);
        self.watchers.insert(id, tokio::spawn(w.run()));
        true
    }

    fn fresh_id(&mut self) -> i64 {
        while self.watchers.contains_key(&self.next_id) {
            self.next_id += 1;
        }
        self.next_id
    }

    async fn cancel(&mut self, id: i64) -> bool {
        if let Some(task) = self.watchers.remove(&id) {
            task.abort();
        }
        let header = self.header().await;
        self.send(pb::WatchResponse {
            header: Some(header_to_pb(&header)),
            watch_id: id,
            canceled: true,
            ..Default::default()
        })
        .await
    }

    async fn progress(&self) -> bool {
        let header = self.header().await;
        self.send(pb::WatchResponse {
            header: Some(header_to_pb(&header)),
            watch_id: -1,
            ..Default::default()
        })
        .await
    }
}

/// One watcher: pulls events and sends them.
struct Watcher {
    node: NodeHandle,
    tx: Tx,
    id: i64,
    query: EventsQuery,
    no_put: bool,
    no_delete: bool,
}

impl Watcher {
    fn new(node: NodeHandle, tx: Tx, id: i64, c: pb::WatchCreateRequest, from: i64) -> Self {
        let no_put = c
            .filters
            .contains(&(pb::watch_create_request::FilterType::Noput as i32));
        let no_delete = c
            .filters
            .contains(&(pb::watch_create_request::FilterType::Nodelete as i32));
        let query = EventsQuery {
            key: c.key,
            range_end: c.range_end,
            from,
            prev_kv: c.prev_kv,
            max_events: WATCH_MAX_EVENTS_PER_RESPONSE,
        };
        Watcher {
            node,
            tx,
            id,
            query,
            no_put,
            no_delete,
        }
    }

    async fn run(mut self) {
        loop {
            let read = ReadQuery::EtcdEvents(Box::new(self.query.clone()));
            let Ok(res) = self.node.read(read, false).await else {
                tokio::time::sleep(Duration::from_millis(WATCH_POLL_MS)).await;
                continue;
            };
            let header = res.header;
            let (batch, compacted) = match res.answer {
                ReadAnswer::EtcdEvents(Ok(b), _) => (b, 0),
                ReadAnswer::EtcdEvents(Err(_), compact) => (Default::default(), compact),
                _ => return,
            };
            if compacted > 0 {
                self.send_compacted(header, compacted).await;
                return;
            }
            let behind = batch.complete_through < header.revision;
            if !self.send_events(header, batch.events).await {
                return;
            }
            self.query.from = batch.complete_through + 1;
            if !behind {
                tokio::time::sleep(Duration::from_millis(WATCH_POLL_MS)).await;
            }
        }
    }

    async fn send_events(&self, header: Header, events: Vec<Event>) -> bool {
        let events: Vec<mvccpb::Event> = events
            .into_iter()
            .filter(|e| !(e.is_put && self.no_put || !e.is_put && self.no_delete))
            .map(event_to_pb)
            .collect();
        if events.is_empty() {
            return true;
        }
        let resp = pb::WatchResponse {
            header: Some(header_to_pb(&header)),
            watch_id: self.id,
            events,
            ..Default::default()
        };
        self.tx.send(Ok(resp)).await.is_ok()
    }

    async fn send_compacted(&self, header: Header, compact_revision: i64) {
        let resp = pb::WatchResponse {
            header: Some(header_to_pb(&header)),
            watch_id: self.id,
            canceled: true,
            compact_revision,
            cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
            ..Default::default()
        };
        let _ = self.tx.send(Ok(resp)).await;
    }
}

fn event_to_pb(e: Event) -> mvccpb::Event {
    let kind = if e.is_put {
        mvccpb::event::EventType::Put
    } else {
        mvccpb::event::EventType::Delete
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(kv_to_pb(e.kv)),
        prev_kv: e.prev_kv.map(kv_to_pb),
    }
}
