//! Table-driven tests of the MVCC rules, and a property test against a
//! model that keeps the full state of every revision.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn put(key: &str, value: &str) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        ..PutRequest::default()
    })
}

fn del(key: &str, range_end: &str) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        prev_kv: true,
    })
}

fn txn(ops: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        success: ops,
        ..TxnRequest::default()
    }
}

fn get_at(s: &MvccStore, key: &str, rev: i64) -> Result<Option<KeyValue>, MvccError> {
    let req = RangeRequest {
        key: key.into(),
        revision: rev,
        ..RangeRequest::default()
    };
    s.range(&req).map(|r| r.kvs.into_iter().next())
}

fn value(kv: &Option<KeyValue>) -> Option<String> {
    kv.as_ref()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

#[test]
fn revision_advances_once_per_txn_that_changes_a_key() {
    let mut s = MvccStore::new();
    // (ops, revision after)
    let table: Vec<(Vec<RequestOp>, i64)> = vec![
        (vec![put("a", "1")], 2),
        (vec![put("a", "2")], 3),
        (vec![del("zz", "")], 3),
        (vec![RequestOp::Range(RangeRequest::default())], 3),
        (vec![put("b", "1"), put("c", "1"), del("a", "")], 4),
        (vec![], 4),
    ];
    for (i, (ops, rev)) in table.into_iter().enumerate() {
        s.txn(&txn(ops)).expect("txn");
        assert_eq!(s.revision(), rev, "row {i}");
    }
    let b = s.get(b"b").unwrap().expect("b");
    assert_eq!((b.create_revision, b.mod_revision, b.version), (4, 4, 1));
    assert!(s.get(b"a").unwrap().is_none());
}

#[test]
fn a_key_recreated_after_delete_starts_a_new_generation() {
    let mut s = MvccStore::new();
    for ops in [vec![put("k", "1")], vec![put("k", "2")], vec![del("k", "")]] {
        s.txn(&txn(ops)).expect("txn");
    }
    s.txn(&txn(vec![put("k", "3")])).expect("txn");
    let kv = s.get(b"k").unwrap().expect("k");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    let old = get_at(&s, "k", 3).expect("read").expect("live at 3");
    assert_eq!((old.create_revision, old.version), (2, 2));
}

#[test]
fn reads_at_past_revisions_see_old_values_and_tombstones() {
    let mut s = MvccStore::new();
    for ops in [
        vec![put("k", "v1")],
        vec![put("k", "v2")],
        vec![del("k", "")],
    ] {
        s.txn(&txn(ops)).expect("txn");
    }
    // (revision, expected value)
    let table = [
        (1, None),
        (2, Some("v1")),
        (3, Some("v2")),
        (4, None),
        (0, None),
    ];
    for (rev, want) in table {
        let got = value(&get_at(&s, "k", rev).expect("read"));
        assert_eq!(got.as_deref(), want, "rev {rev}");
    }
    assert_eq!(get_at(&s, "k", 5), Err(MvccError::FutureRevision));
}

#[test]
fn compaction_drops_older_revisions_and_keeps_reads_at_or_after_it() {
    let mut s = MvccStore::new();
    for v in ["1", "2", "3"] {
        s.txn(&txn(vec![put("k", v)])).expect("txn");
    }
    s.txn(&txn(vec![put("gone", "x")])).expect("txn");
    s.txn(&txn(vec![del("gone", "")])).expect("txn");
    assert_eq!(s.stats().history_records, 3);
    s.compact(6).expect("compact");
    assert_eq!(get_at(&s, "k", 3), Err(MvccError::Compacted));
    assert_eq!(
        value(&get_at(&s, "k", 6).expect("read")).as_deref(),
        Some("3")
    );
    assert_eq!(
        s.stats().indexed_keys,
        1,
        "a tombstone below the point goes"
    );
    assert_eq!(s.stats().history_records, 0);
    // (compact to, expected result)
    let table = [
        (6, Err(MvccError::Compacted)),
        (5, Err(MvccError::Compacted)),
        (7, Err(MvccError::FutureRevision)),
    ];
    for (rev, want) in table {
        assert_eq!(s.compact(rev), want, "compact {rev}");
    }
}

#[test]
fn range_options_follow_etcd_semantics() {
    let mut s = MvccStore::new();
    for (k, v) in [("a", "3"), ("b", "1"), ("c", "2"), ("d", "0")] {
        s.txn(&txn(vec![put(k, v)])).expect("txn");
    }
    s.txn(&txn(vec![put("b", "9")])).expect("txn");
    let base = RangeRequest {
        key: b"a".to_vec(),
        range_end: b"d".to_vec(),
        ..RangeRequest::default()
    };
    // (request, keys, more, count)
    let table: Vec<(RangeRequest, Vec<&str>, bool, i64)> = vec![
        (base.clone(), vec!["a", "b", "c"], false, 3),
        (
            RangeRequest {
                limit: 2,
                ..base.clone()
            },
            vec!["a", "b"],
            true,
            3,
        ),
        (
            RangeRequest {
                range_end: vec![0],
                ..base.clone()
            },
            vec!["a", "b", "c", "d"],
            false,
            4,
        ),
        (
            RangeRequest {
                sort_order: SortOrder::Descend,
                sort_target: SortTarget::Mod,
                ..base.clone()
            },
            vec!["b", "c", "a"],
            false,
            3,
        ),
        (
            RangeRequest {
                sort_target: SortTarget::Value,
                ..base.clone()
            },
            vec!["c", "a", "b"],
            false,
            3,
        ),
        (
            RangeRequest {
                min_mod_revision: 4,
                ..base.clone()
            },
            vec!["b", "c"],
            false,
            3,
        ),
        (
            RangeRequest {
                max_create_revision: 3,
                ..base.clone()
            },
            vec!["a", "b"],
            false,
            3,
        ),
        // A limit with a filter pages over the pairs that pass it.
        (
            RangeRequest {
                limit: 1,
                min_mod_revision: 4,
                ..base.clone()
            },
            vec!["b"],
            true,
            3,
        ),
        // A limit with a sort other than by key sorts everything first.
        (
            RangeRequest {
                limit: 2,
                sort_order: SortOrder::Descend,
                sort_target: SortTarget::Mod,
                ..base.clone()
            },
            vec!["b", "c"],
            true,
            3,
        ),
        (
            RangeRequest {
                limit: 3,
                ..base.clone()
            },
            vec!["a", "b", "c"],
            false,
            3,
        ),
        (
            RangeRequest {
                count_only: true,
                ..base.clone()
            },
            vec![],
            false,
            3,
        ),
        (
            RangeRequest {
                range_end: b"a".to_vec(),
                ..base.clone()
            },
            vec![],
            false,
            0,
        ),
        (
            RangeRequest {
                revision: 3,
                ..base.clone()
            },
            vec!["a", "b"],
            false,
            2,
        ),
    ];
    for (i, (req, want, more, count)) in table.into_iter().enumerate() {
        let r = s.range(&req).expect("range");
        assert_eq!(
            (keys(&r), r.more, r.count),
            (want.iter().map(|k| k.to_string()).collect(), more, count),
            "row {i}"
        );
    }
    let r = s
        .range(&RangeRequest {
            keys_only: true,
            ..base
        })
        .expect("range");
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
}

fn cmp(result: CompareResult, target: CompareTarget, key: &str) -> Compare {
    Compare {
        result,
        target,
        key: key.into(),
        range_end: Vec::new(),
    }
}

#[test]
fn txn_compares_pick_the_branch_with_missing_keys_as_zero() {
    let mut s = MvccStore::new();
    s.txn(&txn(vec![put("k", "v")])).expect("txn");
    use CompareResult::*;
    use CompareTarget::*;
    let table = [
        (cmp(Equal, Value(b"v".to_vec()), "k"), true),
        (cmp(Greater, Value(b"a".to_vec()), "k"), true),
        (cmp(Equal, Version(1), "k"), true),
        (cmp(Equal, Create(2), "k"), true),
        (cmp(Less, Mod(3), "k"), true),
        (cmp(Equal, Lease(0), "k"), true),
        (cmp(NotEqual, Version(1), "k"), false),
        (cmp(Equal, Version(0), "missing"), true),
        (cmp(Equal, Create(0), "missing"), true),
        (cmp(Equal, Value(Vec::new()), "missing"), false),
        (cmp(NotEqual, Value(b"x".to_vec()), "missing"), false),
    ];
    for (i, (c, want)) in table.into_iter().enumerate() {
        let t = TxnRequest {
            compare: vec![c],
            success: vec![RequestOp::Range(RangeRequest::default())],
            failure: vec![],
        };
        let r = s.txn(&t).expect("txn");
        assert_eq!(r.succeeded, want, "row {i}");
        assert_eq!(
            r.responses.len(),
            usize::from(want),
            "row {i}: only the chosen branch runs"
        );
    }
}

#[test]
fn a_failing_op_leaves_the_whole_txn_unapplied() {
    let mut s = MvccStore::new();
    let bad = RequestOp::Put(PutRequest {
        key: b"missing".to_vec(),
        ignore_value: true,
        ..PutRequest::default()
    });
    let err = s.txn(&txn(vec![put("a", "1"), bad]));
    assert_eq!(err, Err(MvccError::KeyNotFound));
    assert_eq!(s.revision(), 1);
    assert!(s.get(b"a").unwrap().is_none());
}

#[test]
fn reads_inside_a_txn_see_its_earlier_writes_and_put_returns_prev_kv() {
    let mut s = MvccStore::new();
    s.txn(&txn(vec![put("k", "old")])).expect("txn");
    let put_prev = RequestOp::Put(PutRequest {
        key: b"k".to_vec(),
        value: b"new".to_vec(),
        prev_kv: true,
        ..PutRequest::default()
    });
    let read = RequestOp::Range(RangeRequest {
        key: b"k".to_vec(),
        ..RangeRequest::default()
    });
    let r = s.txn(&txn(vec![put_prev, read])).expect("txn");
    let ResponseOp::Put(p) = &r.responses[0] else {
        panic!("put response expected");
    };
    assert_eq!(
        p.prev_kv.as_ref().map(|kv| &kv.value[..]),
        Some(&b"old"[..])
    );
    let ResponseOp::Range(rr) = &r.responses[1] else {
        panic!("range response expected");
    };
    assert_eq!(&rr.kvs[0].value[..], b"new");
    assert_eq!(rr.kvs[0].mod_revision, 3);
}

#[test]
fn automatic_compaction_bounds_the_history_of_a_hot_key() {
    let mut s = MvccStore::new();
    let writes = 2 * AUTO_COMPACT_RETENTION_REVISIONS + 10;
    for i in 0..writes {
        s.txn(&txn(vec![put("hot", &i.to_string())])).expect("txn");
    }
    assert!(s.compact_revision() > 0);
    assert!(s.stats().history_records <= 2 * AUTO_COMPACT_RETENTION_REVISIONS as u64);
    assert_eq!(
        value(&get_at(&s, "hot", 0).expect("read")),
        Some((writes - 1).to_string())
    );
}

// ---- property test against a model ----------------------------------------

/// A key's state in the model: (value, create, mod, version).
type ModelKv = (String, i64, i64, i64);

/// The model: the full state at every revision (index = revision).
struct Model {
    states: Vec<BTreeMap<String, ModelKv>>,
    compacted: i64,
}

#[derive(Debug, Clone)]
enum Step {
    Txn(Vec<(u8, Option<u8>)>),
    DeletePrefix(u8),
    Compact(i64),
    Read(u8, i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => prop::collection::vec((0u8..6, prop::option::of(0u8..4)), 1..4).prop_map(Step::Txn),
        1 => (0u8..3).prop_map(Step::DeletePrefix),
        1 => (0i64..40).prop_map(Step::Compact),
        3 => (0u8..6, 0i64..40).prop_map(|(k, r)| Step::Read(k, r)),
    ]
}

fn key(k: u8) -> String {
    format!("{}{}", k % 3, k)
}

impl Model {
    fn now(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    /// Applies distinct-key writes as one revision (if anything changes).
    fn write(&mut self, writes: &[(String, Option<String>)]) {
        let rev = self.now() + 1;
        let mut next = self.states[self.now() as usize].clone();
        let mut changed = false;
        for (k, v) in writes {
            match v {
                Some(v) => {
                    let (create, version) = next.get(k).map_or((rev, 1), |e| (e.1, e.3 + 1));
                    next.insert(k.clone(), (v.clone(), create, rev, version));
                    changed = true;
                }
                None => changed |= next.remove(k).is_some(),
            }
        }
        if changed {
            self.states.push(next);
        }
    }
}

fn dedup(writes: &[(u8, Option<u8>)]) -> Vec<(String, Option<String>)> {
    let mut seen = BTreeMap::new();
    for (k, v) in writes {
        seen.entry(key(*k)).or_insert(v.map(|v| v.to_string()));
    }
    seen.into_iter().collect()
}

fn run_step(s: &mut MvccStore, m: &mut Model, st: Step) {
    match st {
        Step::Txn(writes) => {
            let writes = dedup(&writes);
            let ops = writes
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => put(k, v),
                    None => del(k, ""),
                })
                .collect();
            s.txn(&txn(ops)).expect("txn");
            m.write(&writes);
        }
        Step::DeletePrefix(p) => {
            let prefix = p.to_string();
            let end = (p + 1).to_string();
            s.txn(&txn(vec![del(&prefix, &end)])).expect("txn");
            let doomed: Vec<(String, Option<String>)> = m.states[m.now() as usize]
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .map(|k| (k.clone(), None))
                .collect();
            m.write(&doomed);
        }
        Step::Compact(rev) => {
            let want = if rev <= m.compacted {
                Err(MvccError::Compacted)
            } else if rev > m.now() {
                Err(MvccError::FutureRevision)
            } else {
                m.compacted = rev;
                Ok(())
            };
            assert_eq!(s.compact(rev), want);
        }
        Step::Read(k, rev) => check_read(s, m, &key(k), rev),
    }
    assert_eq!(s.revision(), m.now());
}

fn check_read(s: &MvccStore, m: &Model, k: &str, rev: i64) {
    let got = get_at(s, k, rev);
    let at = if rev <= 0 { m.now() } else { rev };
    if at > m.now() {
        assert_eq!(got, Err(MvccError::FutureRevision));
    } else if at < m.compacted {
        assert_eq!(got, Err(MvccError::Compacted));
    } else {
        let want = m.states[at as usize].get(k).cloned();
        let got = got.expect("read").map(|kv| {
            let v = String::from_utf8_lossy(&kv.value).into_owned();
            (v, kv.create_revision, kv.mod_revision, kv.version)
        });
        assert_eq!(got, want, "key {k} at {at}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, rng_seed: proptest::test_runner::RngSeed::Fixed(10), ..ProptestConfig::default() })]
    #[test]
    fn store_matches_a_model_of_full_states_per_revision(
        steps in prop::collection::vec(step(), 1..60),
        threshold in prop::option::of(0usize..3),
    ) {
        // Values are one byte: threshold 0 or 1 logs every value, 2 none.
        let (_dir, mut s) = store_with(threshold);
        let mut m = Model { states: vec![BTreeMap::new(), BTreeMap::new()], compacted: 0 };
        for st in steps {
            run_step(&mut s, &mut m, st);
        }
        for k in 0..6 {
            for rev in 0..=m.now() {
                check_read(&s, &m, &key(k), rev);
            }
        }
        let mut copy = Vec::new();
        let view = s.clone();
        for (k, h) in view.histories() {
            copy.push((k.clone(), h.clone()));
        }
        let mut back = MvccStore::new();
        back.set_revisions(s.revision(), s.compact_revision());
        for (k, h) in copy {
            back.insert_history(k, h);
        }
        prop_assert_eq!(back.stats(), s.stats());
    }
}

#[test]
fn snapshot_restores_revision_compaction_point_and_every_history_record() {
    use crate::raft::{Entry, EntryKind, SnapshotMeta};
    use crate::storage::snapshot_codec::{decode_snapshot, encode_snapshot};
    use crate::storage::{Command, SnapshotLimits, StateMachine};
    let mut sm = StateMachine::new();
    let cmds = [
        Command::Txn(txn(vec![put("a", "1"), put("b", "1")])),
        Command::Txn(txn(vec![put("a", "2")])),
        Command::Txn(txn(vec![del("b", "")])),
        Command::Compact(3),
        Command::Txn(txn(vec![put("a", "3")])),
    ];
    for (i, cmd) in cmds.into_iter().enumerate() {
        let e = Entry {
            index: i as u64 + 1,
            term: 1,
            kind: EntryKind::Normal,
            data: cmd.encode(),
        };
        sm.apply(&e);
    }
    let meta = SnapshotMeta {
        index: sm.applied_index(),
        ..SnapshotMeta::default()
    };
    let mut buf = Vec::new();
    encode_snapshot(&mut buf, &meta, &sm).expect("encode");
    let (_, back) = decode_snapshot(&mut &buf[..], &SnapshotLimits::default()).expect("decode");
    let (kv, restored) = (sm.kv(), back.kv());
    assert_eq!(
        (restored.revision(), restored.compact_revision()),
        (kv.revision(), kv.compact_revision())
    );
    assert_eq!((restored.revision(), restored.compact_revision()), (5, 3));
    assert_eq!(restored.stats(), kv.stats());
    let a: Vec<_> = kv.histories().collect();
    let b: Vec<_> = restored.histories().collect();
    assert_eq!(a, b);
    assert_eq!(
        get_at(restored, "a", 3)
            .expect("read at 3")
            .map(|kv| kv.version),
        Some(2)
    );
    assert_eq!(get_at(restored, "a", 2), Err(MvccError::Compacted));
}

#[test]
fn events_replay_history_in_revision_order_with_prev_kv_and_whole_revisions() {
    let mut s = MvccStore::new();
    for ops in [
        vec![put("w/a", "1")],
        vec![put("w/b", "1"), put("w/a", "2")],
        vec![del("w/a", "")],
        vec![put("other", "x")],
    ] {
        s.txn(&txn(ops)).expect("txn");
    }
    let batch = s.events(b"w/", b"w0", 2, true, 100).expect("events");
    let got: Vec<(bool, String, i64, Option<String>)> = batch
        .events
        .iter()
        .map(|e| {
            let prev = e
                .prev_kv
                .as_ref()
                .map(|p| String::from_utf8_lossy(&p.value).into_owned());
            (
                e.is_put,
                String::from_utf8_lossy(&e.kv.key).into_owned(),
                e.kv.mod_revision,
                prev,
            )
        })
        .collect();
    let want = vec![
        (true, "w/a".to_string(), 2, None),
        (true, "w/a".to_string(), 3, Some("1".to_string())),
        (true, "w/b".to_string(), 3, None),
        (false, "w/a".to_string(), 4, Some("2".to_string())),
    ];
    assert_eq!(got, want);
    assert_eq!(batch.complete_through, 5);
    // A limit never splits a revision.
    let cut = s.events(b"w/", b"w0", 2, false, 2).expect("events");
    assert_eq!(cut.events.len(), 3);
    assert_eq!(cut.complete_through, 3);
    s.compact(4).expect("compact");
    assert_eq!(
        s.events(b"w/", b"w0", 3, false, 10),
        Err(MvccError::Compacted)
    );
}

fn leased_put(key: &str, lease: i64) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        lease,
        ..PutRequest::default()
    })
}

fn lease_keys(s: &MvccStore, id: i64) -> Option<Vec<String>> {
    s.lease(id).map(|l| {
        l.keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    })
}

#[test]
fn lease_grants_follow_etcd_rules() {
    // (id, ttl_s, expected)
    let table: [(i64, i64, Result<(), MvccError>); 5] = [
        (1, 10, Ok(())),
        (2, MAX_LEASE_TTL_S, Ok(())),
        (1, 10, Err(MvccError::LeaseExists)),
        (3, MAX_LEASE_TTL_S + 1, Err(MvccError::LeaseTtlTooLarge)),
        (0, 10, Err(MvccError::LeaseNotFound)),
    ];
    let mut s = MvccStore::new();
    for (i, (id, ttl, want)) in table.into_iter().enumerate() {
        let got = s
            .lease_grant(id, ttl)
            .map(|g| assert_eq!(g, LeaseGrant { id, ttl_s: ttl }));
        assert_eq!(got, want, "row {i}");
    }
    assert_eq!(s.revision(), 1, "a grant does not advance the revision");
    let ids: Vec<i64> = s.leases().map(|(id, _)| id).collect();
    assert_eq!(ids, vec![1, 2]);
}

#[test]
fn puts_attach_keys_to_leases_and_deletes_detach_them() {
    let mut s = MvccStore::new();
    s.lease_grant(1, 10).expect("grant 1");
    s.lease_grant(2, 10).expect("grant 2");
    // (ops, expected result, keys of lease 1, keys of lease 2)
    type Row = (
        Vec<RequestOp>,
        Result<(), MvccError>,
        Vec<&'static str>,
        Vec<&'static str>,
    );
    let table: Vec<Row> = vec![
        (
            vec![leased_put("a", 1), leased_put("b", 1)],
            Ok(()),
            vec!["a", "b"],
            vec![],
        ),
        (vec![leased_put("a", 2)], Ok(()), vec!["b"], vec!["a"]),
        (
            vec![leased_put("c", 9)],
            Err(MvccError::LeaseNotFound),
            vec!["b"],
            vec!["a"],
        ),
        (vec![put("b", "plain")], Ok(()), vec![], vec!["a"]),
        (
            vec![leased_put("b", 1), del("a", "")],
            Ok(()),
            vec!["b"],
            vec![],
        ),
        (
            vec![RequestOp::Put(PutRequest {
                key: b"b".to_vec(),
                value: b"kept lease".to_vec(),
                ignore_lease: true,
                ..PutRequest::default()
            })],
            Ok(()),
            vec!["b"],
            vec![],
        ),
    ];
    for (i, (ops, want, k1, k2)) in table.into_iter().enumerate() {
        assert_eq!(s.txn(&txn(ops)).map(|_| ()), want, "row {i}");
        let owned = |v: Vec<&str>| v.into_iter().map(String::from).collect::<Vec<_>>();
        assert_eq!(lease_keys(&s, 1), Some(owned(k1)), "row {i} lease 1");
        assert_eq!(lease_keys(&s, 2), Some(owned(k2)), "row {i} lease 2");
    }
    assert_eq!(s.get(b"b").unwrap().map(|kv| kv.lease), Some(1));
    assert_eq!(lease_keys(&s, 3), None);
}

#[test]
fn revoke_deletes_every_attached_key_in_one_revision_with_delete_events() {
    let mut s = MvccStore::new();
    s.lease_grant(7, 5).expect("grant");
    s.txn(&txn(vec![
        leased_put("a", 7),
        leased_put("b", 7),
        put("c", "x"),
    ]))
    .expect("puts");
    let before = s.revision();
    s.lease_revoke(7).expect("revoke");
    assert_eq!(s.revision(), before + 1, "one revision for every key");
    assert_eq!((s.get(b"a").unwrap(), s.get(b"b").unwrap()), (None, None));
    assert!(s.get(b"c").unwrap().is_some(), "an unleased key stays");
    let batch = s
        .events(b"a", b"z", before + 1, false, 100)
        .expect("events");
    let got: Vec<(bool, String, i64)> = batch
        .events
        .iter()
        .map(|e| {
            (
                e.is_put,
                String::from_utf8_lossy(&e.kv.key).into_owned(),
                e.kv.mod_revision,
            )
        })
        .collect();
    let want = vec![
        (false, "a".into(), before + 1),
        (false, "b".into(), before + 1),
    ];
    assert_eq!(got, want);
    // Revoking again, or revoking a lease with no keys: etcd's answers.
    assert_eq!(s.lease_revoke(7), Err(MvccError::LeaseNotFound));
    s.lease_grant(8, 5).expect("grant");
    s.lease_revoke(8).expect("empty revoke");
    assert_eq!(s.revision(), before + 1, "an empty revoke changes no key");
}

#[test]
fn expiry_and_client_revokes_are_the_same_log_entry() {
    use crate::raft::{Entry, EntryKind};
    use crate::storage::{ApplyOutcome, Command, StateMachine};
    let mut sm = StateMachine::new();
    let cmds = [
        Command::LeaseGrant { id: 5, ttl_s: 3 },
        Command::Txn(txn(vec![leased_put("k", 5)])),
        Command::LeaseRevoke(5),
        Command::LeaseRevoke(5),
    ];
    let mut outcomes = Vec::new();
    for (i, cmd) in cmds.into_iter().enumerate() {
        let e = Entry {
            index: i as u64 + 1,
            term: 1,
            kind: EntryKind::Normal,
            data: cmd.encode(),
        };
        outcomes.push(sm.apply(&e));
    }
    assert!(
        matches!(&outcomes[0], ApplyOutcome::Write(w) if w.lease == Some(LeaseGrant { id: 5, ttl_s: 3 }))
    );
    assert!(matches!(&outcomes[2], ApplyOutcome::Write(w) if w.revision == 3));
    assert!(matches!(
        &outcomes[3],
        ApplyOutcome::Rejected(crate::storage::ApplyError::Mvcc(MvccError::LeaseNotFound))
    ));
    assert_eq!(sm.kv().get(b"k").unwrap(), None);
    assert_eq!(sm.kv().lease_count(), 0);
}

#[test]
fn snapshot_round_trip_restores_leases_and_their_attached_keys() {
    use crate::raft::{Entry, EntryKind, SnapshotMeta};
    use crate::storage::snapshot_codec::{decode_snapshot, encode_snapshot};
    use crate::storage::{Command, SnapshotLimits, StateMachine};
    let mut sm = StateMachine::new();
    let cmds = [
        Command::LeaseGrant { id: 1, ttl_s: 10 },
        Command::LeaseGrant { id: 2, ttl_s: 60 },
        Command::LeaseGrant { id: 3, ttl_s: 5 },
        Command::Txn(txn(vec![
            leased_put("a", 1),
            leased_put("b", 1),
            leased_put("c", 2),
        ])),
        Command::Txn(txn(vec![leased_put("b", 2)])),
        Command::LeaseRevoke(3),
    ];
    for (i, cmd) in cmds.into_iter().enumerate() {
        let e = Entry {
            index: i as u64 + 1,
            term: 1,
            kind: EntryKind::Normal,
            data: cmd.encode(),
        };
        sm.apply(&e);
    }
    let meta = SnapshotMeta {
        index: sm.applied_index(),
        ..SnapshotMeta::default()
    };
    let mut buf = Vec::new();
    encode_snapshot(&mut buf, &meta, &sm).expect("encode");
    let (_, back) = decode_snapshot(&mut &buf[..], &SnapshotLimits::default()).expect("decode");
    let leases = |s: &MvccStore| -> Vec<(i64, Lease)> {
        s.leases().map(|(id, l)| (id, l.clone())).collect()
    };
    assert_eq!(leases(back.kv()), leases(sm.kv()));
    assert_eq!(lease_keys(back.kv(), 1), Some(vec!["a".to_string()]));
    assert_eq!(
        lease_keys(back.kv(), 2),
        Some(vec!["b".to_string(), "c".to_string()])
    );
    let small = SnapshotLimits {
        max_leases: 1,
        ..SnapshotLimits::default()
    };
    assert!(
        decode_snapshot(&mut &buf[..], &small).is_err(),
        "lease bound"
    );
}

#[test]
fn a_version_2_snapshot_from_before_leases_still_loads_with_no_leases() {
    use crate::raft::{Entry, EntryKind, SnapshotMeta};
    use crate::storage::snapshot_codec::{
        SNAPSHOT_VERSION_NO_LEASES, decode_snapshot, encode_snapshot,
    };
    use crate::storage::{Command, SnapshotLimits, StateMachine};
    let mut sm = StateMachine::new();
    let e = Entry {
        index: 1,
        term: 1,
        kind: EntryKind::Normal,
        data: Command::Txn(txn(vec![put("a", "1")])).encode(),
    };
    sm.apply(&e);
    let meta = SnapshotMeta {
        index: 1,
        ..SnapshotMeta::default()
    };
    let mut v3 = Vec::new();
    encode_snapshot(&mut v3, &meta, &sm).expect("encode");
    // Rewrite as format 2: version 2 in the header (new header CRC) and no
    // lease table (an empty one is 4 zero bytes) before the trailer.
    let header_len = u32::from_le_bytes(v3[12..16].try_into().expect("4 bytes")) as usize;
    let header_end = 16 + header_len;
    let mut v2 = v3[..header_end].to_vec();
    v2[8..12].copy_from_slice(&SNAPSHOT_VERSION_NO_LEASES.to_le_bytes());
    v2.extend_from_slice(&crc32fast::hash(&v2).to_le_bytes());
    let body = &v3[header_end + 4..v3.len() - 12];
    assert_eq!(&body[body.len() - 4..], &[0, 0, 0, 0], "empty lease table");
    let body = &body[..body.len() - 4];
    v2.extend_from_slice(body);
    v2.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    v2.extend_from_slice(&v3[v3.len() - 8..]);
    let (header, back) = decode_snapshot(&mut &v2[..], &SnapshotLimits::default()).expect("v2");
    assert_eq!(header.version, SNAPSHOT_VERSION_NO_LEASES);
    assert_eq!(back.kv().get(b"a").unwrap().map(|kv| kv.version), Some(1));
    assert_eq!(back.kv().lease_count(), 0);
}

/// A store whose values of at least `threshold` bytes go to a fresh value
/// log (`None`: all in memory). Keep the directory alive while it is used.
fn store_with(threshold: Option<usize>) -> (tempfile::TempDir, MvccStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let values = match threshold {
        Some(t) => {
            let log = crate::storage::vlog::ValueLog::open(&dir.path().join("vlog"), 512)
                .expect("value log");
            ValueStore::logged(log, t)
        }
        None => ValueStore::in_memory(),
    };
    (dir, MvccStore::with_values(values))
}

/// Every read path that returns or inspects values, as txns: sort by value
/// (with and without keys_only), value compares, prev_kv on put and delete,
/// ignore_value, and watch events with prev_kv.
fn value_reading_script() -> Vec<TxnRequest> {
    let cmp_value = |key: &str, v: &str, result| Compare {
        result,
        target: CompareTarget::Value(v.into()),
        key: key.into(),
        range_end: Vec::new(),
    };
    let put_prev = |key: &str, v: &str| {
        RequestOp::Put(PutRequest {
            key: key.into(),
            value: v.into(),
            prev_kv: true,
            ..PutRequest::default()
        })
    };
    let range = |keys_only, sort_target| {
        RequestOp::Range(RangeRequest {
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            sort_order: SortOrder::Descend,
            sort_target,
            keys_only,
            ..RangeRequest::default()
        })
    };
    vec![
        txn(vec![
            put("a", "long value one"),
            put("b", "b"),
            put("c", ""),
        ]),
        txn(vec![put_prev("a", "long value two"), put_prev("b", "bb")]),
        TxnRequest {
            compare: vec![cmp_value("a", "long value two", CompareResult::Equal)],
            success: vec![put("d", "compare held"), range(false, SortTarget::Value)],
            failure: vec![put("d", "compare failed")],
        },
        TxnRequest {
            compare: vec![cmp_value("a", "long value one", CompareResult::Equal)],
            success: vec![put("e", "wrong")],
            failure: vec![
                range(true, SortTarget::Value),
                range(false, SortTarget::Key),
            ],
        },
        txn(vec![RequestOp::Put(PutRequest {
            key: b"d".to_vec(),
            ignore_value: true,
            prev_kv: true,
            ..PutRequest::default()
        })]),
        txn(vec![del("b", "d")]),
        txn(vec![range(false, SortTarget::Mod)]),
    ]
}

#[test]
fn logged_values_read_back_exactly_as_in_memory_ones() {
    let (_d0, mut memory) = store_with(None);
    for threshold in [0, 2, 5, 100] {
        let (_d, mut logged) = store_with(Some(threshold));
        if threshold == 0 {
            for req in value_reading_script() {
                assert_eq!(logged.txn(&req), memory.txn(&req), "{req:?}");
            }
        } else {
            for req in value_reading_script() {
                logged.txn(&req).expect("txn");
            }
        }
        let live = |s: &MvccStore| s.iter_live().collect::<Result<Vec<_>, _>>();
        assert_eq!(live(&logged), live(&memory), "threshold {threshold}");
        let events = |s: &MvccStore| s.events(b"a", b"z", 1, true, 1000);
        assert_eq!(events(&logged), events(&memory), "threshold {threshold}");
        assert_eq!(logged.stats(), memory.stats(), "threshold {threshold}");
        let logged_files = logged.values().stats().bytes > 0;
        assert_eq!(logged_files, threshold <= 14, "threshold {threshold}");
    }
}

#[test]
fn an_unreadable_value_fails_reads_and_txns_without_changing_the_store() {
    let (dir, mut s) = store_with(Some(0));
    s.txn(&txn(vec![put("a", "one"), put("b", "two")]))
        .expect("txn");
    let file = dir.path().join("vlog").join("00000000.vlog");
    let mut bytes = std::fs::read(&file).expect("data file");
    let last = bytes.len() - 1;
    bytes[last] ^= 1; // the last byte of b's value
    std::fs::write(&file, bytes).expect("write");
    let before = s.revision();
    assert_eq!(
        get_at(&s, "a", 0).map(|kv| value(&kv)),
        Ok(Some("one".into()))
    );
    assert_eq!(get_at(&s, "b", 0), Err(MvccError::ValueUnreadable));
    let guarded = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Value(b"two".to_vec()),
            key: b"b".to_vec(),
            range_end: Vec::new(),
        }],
        success: vec![put("c", "x")],
        failure: vec![put("c", "y")],
    };
    assert_eq!(s.txn(&guarded), Err(MvccError::ValueUnreadable));
    assert_eq!(
        s.txn(&txn(vec![put("c", "x"), del("a", "z")])),
        Err(MvccError::ValueUnreadable)
    );
    assert_eq!(s.revision(), before, "a failed txn changes nothing");
    // Reads that do not need b's value still work.
    let count = RangeRequest {
        key: b"a".to_vec(),
        range_end: b"z".to_vec(),
        count_only: true,
        ..RangeRequest::default()
    };
    assert_eq!(s.range(&count).map(|r| r.count), Ok(2));
    let keys_only = RangeRequest {
        keys_only: true,
        count_only: false,
        ..count
    };
    assert_eq!(s.range(&keys_only).map(|r| r.kvs.len()), Ok(2));
    s.txn(&txn(vec![RequestOp::DeleteRange(DeleteRangeRequest {
        key: b"b".to_vec(),
        range_end: Vec::new(),
        prev_kv: false,
    })]))
    .expect("a delete without prev_kv needs no value");
}
