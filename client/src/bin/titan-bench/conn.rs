//! The load targets behind one interface: Titan over TCP, Titan over gRPC,
//! and the etcd v3 gRPC API (served by Titan or by etcd, one code path). A [`ConnSlot`] holds one connection,
//! reconnecting (or moving to the leader) when told to.

use crate::etcd_ops::etcd_op;
use crate::tcp::TcpConn;
use std::sync::Arc;
use std::time::Duration;
use titan_client::proto as pb;
use titan_client::redirect::{Failure, classify, parse_tcp_not_leader};
use titan_proto::etcdserverpb as etcdpb;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

/// Which system and protocol to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Titan's plaintext line protocol (client port 6001).
    TitanTcp,
    /// Titan's KV gRPC service (port 7001).
    TitanGrpc,
    /// Titan's etcd v3 API (client gRPC port 7001): the same requests, the
    /// same code as `etcd`.
    TitanEtcd,
    /// etcd v3 KV gRPC (port 2379).
    Etcd,
}

impl Target {
    /// Whether the target speaks etcd's v3 API (watch and lease modes need it).
    pub fn speaks_etcd(self) -> bool {
        matches!(self, Target::TitanEtcd | Target::Etcd)
    }
}

/// One operation of the workload.
#[derive(Debug, Clone)]
pub enum Op {
    Put {
        key: String,
    },
    Get {
        key: String,
    },
    /// Read the version, then write conditionally on it (Titan gRPC only).
    Cas {
        key: String,
    },
    /// A page of the key prefix from `key` on (etcd API only).
    Range {
        key: String,
    },
    /// Compare the key's mod_revision with the one the worker last saw, then
    /// put, else get (etcd API only; see `etcd_ops::txn_request`).
    Txn {
        key: String,
        expected_mod_revision: i64,
    },
}

/// What a successful operation reports back to its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// A Txn: which branch ran, and the key's mod_revision after it.
    Txn {
        succeeded: bool,
        mod_revision: i64,
    },
}

/// Why an operation failed; the string is the error kind in the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpError {
    /// Redirect: retry on the leader at this address (if known).
    NotLeader(Option<String>),
    /// Counted error of the given kind.
    Failed(&'static str),
}

/// An open connection to one node.
#[derive(Debug)]
enum Conn {
    Tcp(TcpConn),
    TitanGrpc(pb::kv_client::KvClient<Channel>),
    Etcd(etcdpb::kv_client::KvClient<Channel>),
}

/// One logical connection shared by several workers. `generation` changes on
/// every reconnect so that, when many workers see the same failure, only the
/// first one reconnects.
#[derive(Debug)]
pub struct ConnSlot {
    target: Target,
    /// All endpoints; a redirect without a leader hint moves to the next one.
    endpoints: Arc<Vec<String>>,
    state: Mutex<SlotState>,
}

#[derive(Debug)]
struct SlotState {
    generation: u64,
    /// Index into `endpoints` of the last endpoint chosen without a hint.
    cursor: usize,
    addr: String,
    conn: Option<Arc<Conn>>,
}

/// Where a reset slot should connect next.
#[derive(Debug)]
enum Retarget {
    /// Same address (the connection broke).
    Same,
    /// The leader named by a redirect.
    To(String),
    /// The next endpoint (redirect without a leader hint).
    NextEndpoint,
}

/// Settings every operation needs.
#[derive(Debug, Clone)]
pub struct OpSettings {
    pub value: Arc<str>,
    pub serializable: bool,
    pub timeout: Duration,
    /// End of the key prefix (`--op range`).
    pub range_end: Vec<u8>,
    /// Keys per page (`--op range`).
    pub range_limit: i64,
}

impl ConnSlot {
    /// A slot that first connects to `endpoints[cursor % len]`.
    pub fn new(target: Target, endpoints: Arc<Vec<String>>, cursor: usize) -> Self {
        let cursor = cursor % endpoints.len().max(1);
        let addr = endpoints.get(cursor).cloned().unwrap_or_default();
        ConnSlot {
            target,
            endpoints,
            state: Mutex::new(SlotState {
                generation: 0,
                cursor,
                addr,
                conn: None,
            }),
        }
    }

    /// The current connection (connecting if needed) and its generation.
    async fn current(&self) -> Result<(u64, Arc<Conn>), OpError> {
        let mut state = self.state.lock().await;
        if let Some(conn) = &state.conn {
            return Ok((state.generation, conn.clone()));
        }
        let conn = match connect(self.target, &state.addr).await {
            Ok(conn) => Arc::new(conn),
            Err(err) => {
                // The node may be down: the next attempt tries another one.
                if !self.endpoints.is_empty() {
                    state.cursor = (state.cursor + 1) % self.endpoints.len();
                    state.addr = self.endpoints[state.cursor].clone();
                }
                return Err(err);
            }
        };
        state.conn = Some(conn.clone());
        Ok((state.generation, conn))
    }

    /// Drops the connection of `generation` (if still current) and points
    /// the slot where the next attempt should go.
    async fn reset(&self, generation: u64, retarget: Retarget) {
        let mut state = self.state.lock().await;
        if state.generation != generation {
            return;
        }
        state.generation += 1;
        state.conn = None;
        match retarget {
            Retarget::Same => {}
            Retarget::To(addr) => state.addr = addr,
            Retarget::NextEndpoint if !self.endpoints.is_empty() => {
                state.cursor = (state.cursor + 1) % self.endpoints.len();
                state.addr = self.endpoints[state.cursor].clone();
            }
            Retarget::NextEndpoint => {}
        }
    }

    /// Runs one operation once. On a redirect or a connection failure the slot
    /// is reset so that the caller's retry goes to the right place.
    pub async fn run(&self, op: &Op, settings: &OpSettings) -> Result<Outcome, OpError> {
        let (generation, conn) = self.current().await?;
        let result =
            match tokio::time::timeout(settings.timeout, execute(&conn, op, settings)).await {
                Ok(result) => result,
                Err(_) => Err(OpError::Failed("timeout")),
            };
        match &result {
            Err(OpError::NotLeader(Some(leader))) => {
                self.reset(generation, Retarget::To(leader.clone())).await
            }
            Err(OpError::NotLeader(None)) => self.reset(generation, Retarget::NextEndpoint).await,
            Err(OpError::Failed("connection")) => self.reset(generation, Retarget::Same).await,
            _ => {}
        }
        result
    }
}

async fn connect(target: Target, addr: &str) -> Result<Conn, OpError> {
    match target {
        Target::TitanTcp => TcpConn::connect(addr)
            .await
            .map(Conn::Tcp)
            .map_err(|_| OpError::Failed("connect")),
        Target::TitanGrpc => Ok(Conn::TitanGrpc(pb::kv_client::KvClient::new(
            channel(addr).await?,
        ))),
        Target::TitanEtcd | Target::Etcd => Ok(Conn::Etcd(etcdpb::kv_client::KvClient::new(
            channel(addr).await?,
        ))),
    }
}

pub async fn channel(addr: &str) -> Result<Channel, OpError> {
    let uri = format!("http://{addr}");
    let endpoint = Endpoint::from_shared(uri).map_err(|_| OpError::Failed("bad_endpoint"))?;
    endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|_| OpError::Failed("connect"))
}

async fn execute(conn: &Conn, op: &Op, s: &OpSettings) -> Result<Outcome, OpError> {
    match conn {
        Conn::Tcp(tcp) => tcp_op(tcp, op, s).await.map(|()| Outcome::Done),
        Conn::TitanGrpc(kv) => titan_grpc_op(kv.clone(), op, s)
            .await
            .map(|()| Outcome::Done),
        Conn::Etcd(kv) => etcd_op(kv.clone(), op, s).await,
    }
}

async fn tcp_op(tcp: &TcpConn, op: &Op, s: &OpSettings) -> Result<(), OpError> {
    let line = match op {
        Op::Put { key } => format!("SET {key} {}", s.value),
        Op::Get { key } => format!("GET {key}"),
        Op::Cas { .. } | Op::Range { .. } | Op::Txn { .. } => {
            return Err(OpError::Failed("unsupported"));
        }
    };
    let reply = tcp
        .call(line)
        .await
        .map_err(|_| OpError::Failed("connection"))?;
    match reply.as_str() {
        "OK" | "NOT_FOUND" => Ok(()),
        r if r.starts_with("VALUE ") => Ok(()),
        r if r.starts_with("ERR NOT_LEADER") => Err(OpError::NotLeader(
            parse_tcp_not_leader(r).map(str::to_string),
        )),
        r if r.starts_with("ERR UNAVAILABLE") => Err(OpError::Failed("unavailable")),
        _ => Err(OpError::Failed("server_error")),
    }
}

async fn titan_grpc_op(
    mut kv: pb::kv_client::KvClient<Channel>,
    op: &Op,
    s: &OpSettings,
) -> Result<(), OpError> {
    let consistency = if s.serializable {
        pb::Consistency::Serializable
    } else {
        pb::Consistency::Linearizable
    } as i32;
    let result = match op {
        Op::Put { key } => {
            let req = pb::PutRequest {
                key: key.clone().into(),
                value: s.value.as_bytes().to_vec(),
                condition: None,
            };
            kv.put(req).await.map(|_| ())
        }
        Op::Get { key } => kv
            .get(pb::GetRequest {
                key: key.clone().into(),
                consistency,
            })
            .await
            .map(|_| ()),
        Op::Cas { key } => return titan_cas(kv, key, s, consistency).await,
        Op::Range { .. } | Op::Txn { .. } => return Err(OpError::Failed("unsupported")),
    };
    result.map_err(|status| grpc_error(&status))
}

/// Read-modify-write: get the version, then put conditionally on it. A lost
/// race counts as the error kind `cas_conflict`.
async fn titan_cas(
    mut kv: pb::kv_client::KvClient<Channel>,
    key: &str,
    s: &OpSettings,
    consistency: i32,
) -> Result<(), OpError> {
    let got = kv
        .get(pb::GetRequest {
            key: key.as_bytes().to_vec(),
            consistency,
        })
        .await
        .map_err(|status| grpc_error(&status))?;
    let kind = match got.into_inner().kv {
        Some(kv) => pb::condition::Kind::ExpectedVersion(kv.version),
        None => pb::condition::Kind::MustBeAbsent(true),
    };
    let req = pb::PutRequest {
        key: key.as_bytes().to_vec(),
        value: s.value.as_bytes().to_vec(),
        condition: Some(pb::Condition { kind: Some(kind) }),
    };
    let resp = kv.put(req).await.map_err(|status| grpc_error(&status))?;
    if resp.into_inner().succeeded {
        Ok(())
    } else {
        Err(OpError::Failed("cas_conflict"))
    }
}

pub fn grpc_error(status: &tonic::Status) -> OpError {
    match classify(status) {
        Failure::NotLeader { leader_grpc } => OpError::NotLeader(leader_grpc),
        Failure::NotExecuted(_) if std::error::Error::source(status).is_some() => {
            OpError::Failed("connection")
        }
        Failure::NotExecuted(_) => OpError::Failed("unavailable"),
        Failure::Unknown(_) if status.code() == tonic::Code::Unavailable => {
            OpError::Failed("connection")
        }
        Failure::Unknown(_) => OpError::Failed("unknown_outcome"),
        Failure::Permanent(..) => OpError::Failed("server_error"),
    }
}
