//! Core-only throughput: three `RawNode`s in one process, an instant
//! network, proposals batched 64 at a time. Measures committed entries per
//! second through the full Ready loop (persist to `MemStorage`, send,
//! apply, advance). Target: ≥ 500,000 entries/s on one core.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use titan_raft::{Config, MemStorage, Message, NodeId, RawNode, Role, Storage};

/// Proposals per batch.
const BATCH: usize = 64;
/// Payload bytes per proposal (a small KV put).
const PAYLOAD_BYTES: usize = 32;
/// Batches between log compactions (keeps memory flat).
const COMPACT_EVERY_BATCHES: u64 = 256;

struct Bench {
    nodes: Vec<RawNode<MemStorage>>,
    /// Messages in flight (delivered instantly on the next pump).
    wire: Vec<Message>,
    batches: u64,
}

impl Bench {
    fn new() -> Self {
        let founders: Vec<(NodeId, Vec<u8>)> = (1..=3).map(|id| (id, Vec::new())).collect();
        let nodes = (1..=3)
            .map(|id| {
                let mut cfg = Config::new(id);
                cfg.max_msg_entries = 4096;
                RawNode::new(&cfg, MemStorage::new_bootstrapped(&founders)).expect("valid config")
            })
            .collect();
        let mut b = Bench {
            nodes,
            wire: Vec::new(),
            batches: 0,
        };
        b.nodes[0].campaign();
        b.pump();
        assert_eq!(b.nodes[0].status().role, Role::Leader);
        b
    }

    /// Runs Ready loops and deliveries until nothing moves.
    fn pump(&mut self) -> u64 {
        let mut applied = 0;
        loop {
            let mut progressed = false;
            for node in &mut self.nodes {
                while node.has_ready() {
                    progressed = true;
                    let mut rd = node.ready();
                    self.wire.append(&mut rd.messages);
                    let storage = node.storage_mut();
                    storage
                        .append_owned(std::mem::take(&mut rd.entries))
                        .expect("contiguous");
                    if let Some(hs) = rd.hard_state {
                        storage.set_hard_state(hs);
                    }
                    self.wire.append(&mut rd.persisted_messages);
                    applied += rd.committed_entries.len() as u64;
                    node.advance(rd);
                }
            }
            for m in std::mem::take(&mut self.wire) {
                progressed = true;
                let to = (m.to - 1) as usize;
                self.nodes[to].step(m).expect("step");
            }
            if !progressed {
                return applied;
            }
        }
    }

    fn batch(&mut self) {
        let datas = vec![vec![7u8; PAYLOAD_BYTES]; BATCH];
        self.nodes[0].propose_batch(datas).expect("leader accepts");
        self.pump();
        self.batches += 1;
        if self.batches.is_multiple_of(COMPACT_EVERY_BATCHES) {
            for node in &mut self.nodes {
                let applied = node.status().applied;
                if applied > node.storage().first_index() {
                    let _ = node.storage_mut().compact(applied);
                }
            }
        }
    }
}

fn committed_entries_per_second(c: &mut Criterion) {
    let mut group = c.benchmark_group("raft_core_3_nodes");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut bench = Bench::new();
    group.bench_function("propose_batch_64_commit_apply", |b| {
        b.iter(|| {
            bench.batch();
            black_box(bench.nodes[0].status().commit)
        })
    });
    group.finish();
}

criterion_group!(benches, committed_entries_per_second);
criterion_main!(benches);
