//! `titan-bench`: a closed-loop load generator for the plaintext protocol.
//! N clients each keep exactly one request in flight for a fixed duration;
//! the tool prints throughput and latency percentiles.
//!
//! ```text
//! titan-bench --addrs 127.0.0.1:6001,127.0.0.1:6002,127.0.0.1:6003 --clients 64 --op set
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchOp {
    /// `SET key <value>` against the leader.
    Set,
    /// Linearizable `GET key`, spread over every address.
    Get,
}

#[derive(Debug, Parser)]
#[command(
    name = "titan-bench",
    about = "Closed-loop load for titan-server's TCP protocol"
)]
struct Args {
    /// Client addresses (`host:port`, comma separated).
    #[arg(long, default_value = "127.0.0.1:6001")]
    addrs: String,
    /// Concurrent clients, one request in flight each.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Measurement length.
    #[arg(long = "duration-secs", default_value_t = 10)]
    duration_secs: u64,
    /// Operation.
    #[arg(long, value_enum, default_value_t = BenchOp::Set)]
    op: BenchOp,
    /// Size of the key space.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long = "value-bytes", default_value_t = 256)]
    value_bytes: usize,
    /// Drive an etcd v3 cluster over gRPC instead (for comparisons);
    /// `--addrs` are then etcd client endpoints and SETs go to the first.
    #[arg(long)]
    etcd: bool,
}

struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    line: String,
}

impl Conn {
    async fn connect(addr: &str) -> anyhow::Result<Conn> {
        let s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Conn {
            reader: BufReader::new(r),
            writer: w,
            line: String::new(),
        })
    }

    async fn call(&mut self, req: &[u8]) -> anyhow::Result<&str> {
        self.writer.write_all(req).await?;
        self.line.clear();
        if self.reader.read_line(&mut self.line).await? == 0 {
            bail!("connection closed");
        }
        Ok(self.line.trim_end())
    }
}

/// Finds the leader by probing each address with a write.
async fn find_leader(addrs: &[String]) -> anyhow::Result<String> {
    for a in addrs {
        let mut c = Conn::connect(a).await?;
        let reply = c.call(b"SET __bench_probe 1\n").await?.to_string();
        if reply == "OK" {
            return Ok(a.clone());
        }
        if let Some(leader) = reply.strip_prefix("ERR NOT_LEADER ") {
            return Ok(leader.to_string());
        }
    }
    bail!("no leader found among {addrs:?}")
}

/// xorshift64: cheap, seeded per client, reproducible key choice.
fn next_key(state: &mut u64, keys: u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % keys
}

async fn client(addr: String, args: &Args, seed: u64, until: Instant) -> anyhow::Result<Vec<u32>> {
    if args.etcd {
        return etcd::client(addr, args, seed, until).await;
    }
    let mut conn = Conn::connect(&addr).await?;
    let value = "v".repeat(args.value_bytes);
    let mut rng = seed | 1;
    let mut lat_us = Vec::with_capacity(1 << 16);
    while Instant::now() < until {
        let key = next_key(&mut rng, args.keys);
        let req = match args.op {
            BenchOp::Set => format!("SET k{key} {value}\n"),
            BenchOp::Get => format!("GET k{key}\n"),
        };
        let started = Instant::now();
        let reply = conn.call(req.as_bytes()).await?;
        if reply.starts_with("ERR") {
            bail!("{addr}: {reply}");
        }
        lat_us.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    Ok(lat_us)
}

async fn preload(leader: &str, args: &Args) -> anyhow::Result<()> {
    let mut conn = Conn::connect(leader).await?;
    let value = "v".repeat(args.value_bytes);
    let mut batch = Vec::new();
    for k in 0..args.keys {
        batch.extend_from_slice(format!("SET k{k} {value}\n").as_bytes());
    }
    conn.writer.write_all(&batch).await?;
    for _ in 0..args.keys {
        conn.line.clear();
        conn.reader.read_line(&mut conn.line).await?;
    }
    Ok(())
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Box::leak(Box::new(Args::parse()));
    let addrs: Vec<String> = args
        .addrs
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let leader = if args.etcd {
        addrs[0].clone()
    } else {
        find_leader(&addrs).await?
    };
    if args.op == BenchOp::Get {
        if args.etcd {
            etcd::preload(&leader, args).await?;
        } else {
            preload(&leader, args).await?;
        }
    }
    let until = Instant::now() + Duration::from_secs(args.duration_secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|i| {
            let addr = match args.op {
                BenchOp::Set => leader.clone(),
                BenchOp::Get => addrs[i % addrs.len()].clone(),
            };
            let args: &'static Args = args;
            tokio::spawn(client(addr, args, 0x9e37_79b9_7f4a_7c15 ^ i as u64, until))
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("client task")??);
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    println!(
        "op={:?} clients={} value_bytes={} ops={} throughput={:.0} ops/s p50={:.2} ms p99={:.2} ms",
        args.op,
        args.clients,
        args.value_bytes,
        all.len(),
        all.len() as f64 / secs,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
    );
    Ok(())
}

/// Minimal etcd v3 KV client (Put and linearizable Range) over tonic, with
/// hand-written prost messages carrying only the fields the bench uses.
mod etcd {
    use std::time::Instant;

    use anyhow::Context;
    use tonic::codegen::http::uri::PathAndQuery;
    use tonic::transport::Channel;

    use super::{Args, BenchOp, next_key};

    #[derive(Clone, PartialEq, prost::Message)]
    struct PutRequest {
        #[prost(bytes = "vec", tag = "1")]
        key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Empty {}

    #[derive(Clone, PartialEq, prost::Message)]
    struct RangeRequest {
        #[prost(bytes = "vec", tag = "1")]
        key: Vec<u8>,
    }

    async fn channel(addr: &str) -> anyhow::Result<tonic::client::Grpc<Channel>> {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to etcd at {addr}"))?;
        Ok(tonic::client::Grpc::new(ch))
    }

    async fn put(
        g: &mut tonic::client::Grpc<Channel>,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> anyhow::Result<()> {
        g.ready().await?;
        let codec = tonic_prost::ProstCodec::<PutRequest, Empty>::default();
        let path = PathAndQuery::from_static("/etcdserverpb.KV/Put");
        g.unary(tonic::Request::new(PutRequest { key, value }), path, codec)
            .await?;
        Ok(())
    }

    async fn get(g: &mut tonic::client::Grpc<Channel>, key: Vec<u8>) -> anyhow::Result<()> {
        g.ready().await?;
        let codec = tonic_prost::ProstCodec::<RangeRequest, Empty>::default();
        let path = PathAndQuery::from_static("/etcdserverpb.KV/Range");
        g.unary(tonic::Request::new(RangeRequest { key }), path, codec)
            .await?;
        Ok(())
    }

    /// One closed-loop etcd client.
    pub async fn client(
        addr: String,
        args: &Args,
        seed: u64,
        until: Instant,
    ) -> anyhow::Result<Vec<u32>> {
        let mut g = channel(&addr).await?;
        let value = vec![b'v'; args.value_bytes];
        let mut rng = seed | 1;
        let mut lat_us = Vec::with_capacity(1 << 16);
        while Instant::now() < until {
            let key = format!("k{}", next_key(&mut rng, args.keys)).into_bytes();
            let started = Instant::now();
            match args.op {
                BenchOp::Set => put(&mut g, key, value.clone()).await?,
                BenchOp::Get => get(&mut g, key).await?,
            }
            lat_us.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
        }
        Ok(lat_us)
    }

    /// Writes every key once so GETs hit existing data.
    pub async fn preload(addr: &str, args: &Args) -> anyhow::Result<()> {
        let mut g = channel(addr).await?;
        for k in 0..args.keys {
            put(
                &mut g,
                format!("k{k}").into_bytes(),
                vec![b'v'; args.value_bytes],
            )
            .await?;
        }
        Ok(())
    }
}
