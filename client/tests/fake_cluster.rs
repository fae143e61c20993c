//! The client against an in-process fake cluster: three tonic etcd KV
//! servers (`etcdserverpb.KV`) on loopback sharing one store, where the test
//! decides who leads and injects faults (a reply that never comes after the
//! write applied). Unlike Titan, which forwards writes from followers, this
//! fake answers a write on a follower with a `NOT_LEADER` redirect, so the
//! client's redirect path is covered too. This covers the client's retry and
//! unknown-outcome rules exactly; the real-server test is `real_cluster.rs`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use titan_client::etcd_proto::compare::{CompareResult, TargetUnion};
use titan_client::etcd_proto::kv_server::{Kv, KvServer};
use titan_client::etcd_proto::{
    self as pb, request_op::Request as Op, response_op::Response as OpResp,
};
use titan_client::{CasResult, Client, ClientConfig, Consistency, Error, TlsConfig};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// Fault injected into the next write that reaches the leader.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Apply the write, then never answer (the client times out).
    ApplyThenHang,
}

/// One stored key: value, mod_revision, create_revision.
type Stored = (Vec<u8>, i64, i64);

#[derive(Debug, Default)]
struct State {
    leader: Option<String>,
    store: BTreeMap<Vec<u8>, Stored>,
    revision: i64,
    writes_applied: u64,
    fault: Option<Fault>,
}

#[derive(Clone)]
struct Cluster {
    state: Arc<Mutex<State>>,
    addrs: Vec<String>,
}

struct Node {
    addr: String,
    state: Arc<Mutex<State>>,
}

impl Cluster {
    async fn start() -> Cluster {
        let state = Arc::new(Mutex::new(State::default()));
        let mut addrs = Vec::new();
        for _ in 0..3 {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback");
            let addr = listener.local_addr().expect("local addr").to_string();
            let node = Node {
                addr: addr.clone(),
                state: state.clone(),
            };
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(KvServer::new(node))
                    .serve_with_incoming(TcpListenerStream::new(listener)),
            );
            addrs.push(addr);
        }
        Cluster { state, addrs }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("state lock")
    }

    fn set_leader(&self, i: Option<usize>) {
        self.lock().leader = i.map(|i| self.addrs[i].clone());
    }

    fn inject(&self, fault: Fault) {
        self.lock().fault = Some(fault);
    }

    fn writes_applied(&self) -> u64 {
        self.lock().writes_applied
    }

    fn client(&self, seeds: &[usize]) -> Client {
        let mut config = ClientConfig::new(seeds.iter().map(|i| self.addrs[*i].clone()));
        config.request_timeout = Duration::from_millis(300);
        config.retry.overall_deadline = Duration::from_secs(3);
        config.retry.backoff_min = Duration::from_millis(5);
        config.retry.backoff_max = Duration::from_millis(50);
        Client::connect(config).expect("valid config")
    }
}

fn header(revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision,
        ..Default::default()
    })
}

fn kv_pb(key: &[u8], (value, mod_rev, create_rev): &Stored) -> pb::RangeResponse {
    pb::RangeResponse {
        kvs: vec![kv_of(key, value, *mod_rev, *create_rev)],
        ..Default::default()
    }
}

fn kv_of(
    key: &[u8],
    value: &[u8],
    mod_rev: i64,
    create_rev: i64,
) -> titan_client::mvccpb::KeyValue {
    titan_client::mvccpb::KeyValue {
        key: key.to_vec(),
        value: value.to_vec(),
        mod_revision: mod_rev,
        create_revision: create_rev,
        version: 1,
        lease: 0,
    }
}

/// Whether one etcd compare holds against the store.
fn holds(store: &BTreeMap<Vec<u8>, Stored>, c: &pb::Compare) -> bool {
    let cur = store.get(&c.key);
    let ord = match (c.target_union.as_ref(), cur) {
        (Some(TargetUnion::Value(v)), Some((val, _, _))) => val.cmp(v),
        (Some(TargetUnion::Value(_)), None) => return false,
        (Some(TargetUnion::ModRevision(n)), _) => cur.map_or(0, |s| s.1).cmp(n),
        (Some(TargetUnion::CreateRevision(n)), _) => cur.map_or(0, |s| s.2).cmp(n),
        (Some(TargetUnion::Version(n)), _) => i64::from(cur.is_some()).cmp(n),
        _ => return false,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord.is_eq(),
        Ok(CompareResult::NotEqual) => !ord.is_eq(),
        Ok(CompareResult::Greater) => ord.is_gt(),
        Ok(CompareResult::Less) => ord.is_lt(),
        Err(_) => false,
    }
}

impl Node {
    /// Leader check: NOT_LEADER with the hint, or UNAVAILABLE without leader.
    fn check_leader(&self) -> Result<(), Status> {
        let state = self.state.lock().expect("state lock");
        match &state.leader {
            Some(l) if *l == self.addr => Ok(()),
            Some(l) => {
                let mut s = Status::failed_precondition(format!("NOT_LEADER {l}"));
                s.metadata_mut()
                    .insert("titan-leader-grpc", l.parse().expect("ascii addr"));
                Err(s)
            }
            None => Err(Status::unavailable("UNAVAILABLE no leader elected")),
        }
    }

    /// Runs one op of a write (the caller bumped the revision); returns its
    /// response.
    fn run_op(state: &mut State, op: &Op) -> OpResp {
        let rev = state.revision;
        match op {
            Op::RequestPut(p) => {
                let create = state.store.get(&p.key).map_or(rev, |s| s.2);
                state
                    .store
                    .insert(p.key.clone(), (p.value.clone(), rev, create));
                OpResp::ResponsePut(pb::PutResponse::default())
            }
            Op::RequestDeleteRange(d) => {
                let deleted = i64::from(state.store.remove(&d.key).is_some());
                OpResp::ResponseDeleteRange(pb::DeleteRangeResponse {
                    deleted,
                    ..Default::default()
                })
            }
            Op::RequestRange(r) => OpResp::ResponseRange(match state.store.get(&r.key) {
                Some(stored) => kv_pb(&r.key, stored),
                None => pb::RangeResponse::default(),
            }),
            Op::RequestTxn(_) => OpResp::ResponseTxn(pb::TxnResponse::default()),
        }
    }

    /// Applies a txn: evaluates compares, runs a branch (a branch with a
    /// write counts as one applied write at a new revision); returns the
    /// response and the fault to act on afterwards.
    fn apply(&self, txn: &pb::TxnRequest) -> (pb::TxnResponse, Fault) {
        let mut state = self.state.lock().expect("state lock");
        let succeeded = txn.compare.iter().all(|c| holds(&state.store, c));
        let branch = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let writes = branch
            .iter()
            .any(|op| !matches!(op.request, Some(Op::RequestRange(_))));
        let mut fault = Fault::None;
        if writes {
            state.revision += 1;
            state.writes_applied += 1;
            fault = state.fault.take().unwrap_or(Fault::None);
        }
        let responses = branch
            .iter()
            .filter_map(|op| op.request.as_ref())
            .map(|op| pb::ResponseOp {
                response: Some(Node::run_op(&mut state, op)),
            })
            .collect();
        let resp = pb::TxnResponse {
            header: header(state.revision),
            succeeded,
            responses,
        };
        (resp, fault)
    }

    /// A single write op as a txn without compares.
    fn apply_one(&self, op: Op) -> (pb::TxnResponse, Fault) {
        self.apply(&pb::TxnRequest {
            success: vec![pb::RequestOp { request: Some(op) }],
            ..Default::default()
        })
    }
}

async fn act_on(fault: Fault) {
    if fault == Fault::ApplyThenHang {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

#[tonic::async_trait]
impl Kv for Node {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let r = req.into_inner();
        let state = self.state.lock().expect("state lock");
        let in_range = |k: &Vec<u8>| {
            if r.range_end.is_empty() {
                *k == r.key
            } else {
                *k >= r.key && (r.range_end == [0] || *k < r.range_end)
            }
        };
        let kvs = state
            .store
            .iter()
            .filter(|(k, _)| in_range(k))
            .map(|(k, (v, m, c))| kv_of(k, v, *m, *c))
            .collect();
        Ok(Response::new(pb::RangeResponse {
            header: header(state.revision),
            kvs,
            ..Default::default()
        }))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        self.check_leader()?;
        let (resp, fault) = self.apply_one(Op::RequestPut(req.into_inner()));
        act_on(fault).await;
        Ok(Response::new(pb::PutResponse {
            header: resp.header,
            prev_kv: None,
        }))
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        self.check_leader()?;
        let (resp, fault) = self.apply_one(Op::RequestDeleteRange(req.into_inner()));
        act_on(fault).await;
        let deleted = match resp.responses.first().and_then(|r| r.response.as_ref()) {
            Some(OpResp::ResponseDeleteRange(d)) => d.deleted,
            _ => 0,
        };
        Ok(Response::new(pb::DeleteRangeResponse {
            header: resp.header,
            deleted,
            prev_kvs: Vec::new(),
        }))
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        self.check_leader()?;
        let (resp, fault) = self.apply(&req.into_inner());
        act_on(fault).await;
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        _: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        Err(Status::unimplemented("the fake keeps no history"))
    }
}

#[tokio::test]
async fn write_to_a_follower_follows_the_redirect_to_the_leader() {
    let cluster = Cluster::start().await;
    cluster.set_leader(Some(2));
    let client = cluster.client(&[0]);
    let version = client.put("k", "v").await.expect("put via redirect");
    assert_eq!(version, 1);
    assert_eq!(client.cached_leader(), Some(cluster.addrs[2].clone()));
    assert_eq!(client.pooled_channels(), 2, "one channel per endpoint used");
    client.put("k2", "v").await.expect("second put");
    assert_eq!(client.pooled_channels(), 2, "channels are reused");
}

#[tokio::test]
async fn leader_change_between_writes_is_followed() {
    let cluster = Cluster::start().await;
    cluster.set_leader(Some(0));
    let client = cluster.client(&[0, 1, 2]);
    client.put("a", "1").await.expect("first put");
    cluster.set_leader(Some(1));
    client.put("b", "2").await.expect("put after leader change");
    assert_eq!(client.cached_leader(), Some(cluster.addrs[1].clone()));
    assert_eq!(cluster.writes_applied(), 2);
}

#[tokio::test]
async fn no_leader_exhausts_bounded_retries_and_writes_nothing() {
    let cluster = Cluster::start().await;
    cluster.set_leader(None);
    let mut config = ClientConfig::new([cluster.addrs[0].clone()]);
    config.retry.max_attempts = 4;
    config.retry.backoff_min = Duration::from_millis(1);
    config.retry.backoff_max = Duration::from_millis(5);
    let client = Client::connect(config).expect("valid config");
    match client.put("k", "v").await {
        Err(Error::RetriesExhausted { attempts, .. }) => assert_eq!(attempts, 4),
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    assert_eq!(cluster.writes_applied(), 0);
}

#[tokio::test]
async fn leader_elected_during_retries_gets_the_write() {
    let cluster = Cluster::start().await;
    cluster.set_leader(None);
    let client = cluster.client(&[0, 1, 2]);
    let elect = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            cluster.set_leader(Some(2));
        })
    };
    client
        .put("k", "v")
        .await
        .expect("put once a leader exists");
    elect.await.expect("elect task");
    assert_eq!(cluster.writes_applied(), 1);
}

#[tokio::test]
async fn put_whose_reply_is_lost_is_outcome_unknown_and_not_retried() {
    let cluster = Cluster::start().await;
    cluster.set_leader(Some(0));
    let client = cluster.client(&[0]);
    cluster.inject(Fault::ApplyThenHang);
    match client.put("k", "v").await {
        Err(Error::OutcomeUnknown { op: "put", key, .. }) => assert_eq!(key, "k"),
        other => panic!("expected OutcomeUnknown, got {other:?}"),
    }
    assert_eq!(
        cluster.writes_applied(),
        1,
        "the put must not be sent twice"
    );
}

#[tokio::test]
async fn delete_whose_reply_is_lost_is_outcome_unknown() {
    let cluster = Cluster::start().await;
    cluster.set_leader(Some(0));
    let client = cluster.client(&[0]);
    client.put("k", "v").await.expect("put");
    cluster.inject(Fault::ApplyThenHang);
    assert!(matches!(
        client.delete("k").await,
        Err(Error::OutcomeUnknown { op: "delete", .. })
    ));
}

#[tokio::test]
async fn cas_whose_reply_is_lost_is_resolved_as_applied() {
    let cluster = Cluster::start().await;
    cluster.set_leader(Some(0));
    let client = cluster.client(&[0]);
    let v1 = client.put("k", "old").await.expect("put");
    cluster.inject(Fault::ApplyThenHang);
    let result = client
        .put_if_version("k", "new", v1)
        .await
        .expect("resolved CAS");
    let current = client
        .get("k", Consistency::Linearizable)
        .await
        .expect("get");
    let (value, version) = current.expect("key exists");
    assert_eq!(value, b"new");
    assert_eq!(result, CasResult::Applied { version });
    assert_eq!(
        cluster.writes_applied(),
        2,
        "retry of the CAS must not apply again"
    );
}

#[tokio::test]
async fn put_if_absent_whose_reply_is_lost_is_resolved_as_applied() {
    let cluster = Cluster::start().await;
    cluster.set_leader(Some(1));
    let client = cluster.client(&[0, 1, 2]);
    cluster.inject(Fault::ApplyThenHang);
    let result = client
        .put_if_absent("fresh", "mine")
        .await
        .expect("resolved CAS");
    assert_eq!(result, CasResult::Applied { version: 1 });
}

#[tokio::test]
async fn delete_if_version_whose_reply_is_lost_is_resolved_as_applied() {
    let cluster = Cluster::start().await;
    cluster.set_leader(Some(0));
    let client = cluster.client(&[0]);
    let v = client.put("k", "v").await.expect("put");
    cluster.inject(Fault::ApplyThenHang);
    let result = client
        .delete_if_version("k", v)
        .await
        .expect("resolved CAS delete");
    assert_eq!(result, CasResult::Applied { version: 0 });
    assert_eq!(
        client
            .get("k", Consistency::Linearizable)
            .await
            .expect("get"),
        None
    );
}

#[tokio::test]
async fn cas_with_a_stale_version_is_a_conflict() {
    let cluster = Cluster::start().await;
    cluster.set_leader(Some(0));
    let client = cluster.client(&[0]);
    let v1 = client.put("k", "a").await.expect("put");
    let v2 = client.put("k", "b").await.expect("put");
    let result = client.put_if_version("k", "c", v1).await.expect("cas");
    assert_eq!(
        result,
        CasResult::Conflict {
            current_version: v2
        }
    );
    assert_eq!(
        client.put_if_absent("k", "d").await.expect("cas"),
        CasResult::Conflict {
            current_version: v2
        }
    );
    assert_eq!(
        client.delete_if_version("k", v1).await.expect("cas"),
        CasResult::Conflict {
            current_version: v2
        }
    );
}

#[tokio::test]
async fn dead_seed_is_skipped() {
    let cluster = Cluster::start().await;
    cluster.set_leader(Some(1));
    // Bind and drop a listener to get a port nobody listens on.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let mut config = ClientConfig::new([dead, cluster.addrs[1].clone()]);
    config.retry.backoff_min = Duration::from_millis(1);
    let client = Client::connect(config).expect("valid config");
    client.put("k", "v").await.expect("put via the live seed");
    let got = client
        .get("k", Consistency::Serializable)
        .await
        .expect("get");
    assert_eq!(got, Some((b"v".to_vec(), 1)));
}

#[tokio::test]
async fn range_returns_keys_with_versions() {
    let cluster = Cluster::start().await;
    cluster.set_leader(Some(0));
    let client = cluster.client(&[0]);
    client.put("p/a", "1").await.expect("put");
    client.put("p/b", "2").await.expect("put");
    let page = client
        .range(titan_client::RangeQuery::prefix("p/"))
        .await
        .expect("range");
    let keys: Vec<_> = page
        .kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.version))
        .collect();
    assert_eq!(keys, vec![(b"p/a".to_vec(), 1), (b"p/b".to_vec(), 2)]);
}

#[test]
fn config_errors_are_typed() {
    assert!(matches!(
        Client::connect(ClientConfig::new(Vec::<String>::new())),
        Err(Error::NoEndpoints)
    ));
    assert!(matches!(
        Client::connect(ClientConfig::new(["bad host:1"])),
        Err(Error::InvalidEndpoint { .. })
    ));
    let mut tls = ClientConfig::new(["localhost:7001"]);
    tls.tls = Some(TlsConfig {
        ca_cert_path: "no-such-ca.pem".into(),
        client_identity: None,
        domain_name: None,
    });
    let err = Client::connect(tls).expect_err("a missing CA file is refused");
    assert!(matches!(err, Error::TlsFile { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-ca.pem"), "{err}");
}
