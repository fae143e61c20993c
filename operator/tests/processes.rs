//! The membership logic driven against real `titan-server` processes.
//!
//! [`LocalPods`] stands in for the StatefulSet and its PVCs (ordinal-indexed
//! processes with stable ports and data dirs), and [`step`] is the operator's
//! observe → plan → execute loop with the real gRPC admin client. `step` keeps
//! no state between calls — every call is a freshly "restarted" operator — so
//! these runs also show that an operator killed between any two steps resumes.
//!
//! Needs the server binary, found by `titan-testkit`: `TITAN_SERVER_BIN`, else
//! `titan-server` in this test's target dir (`cargo build -p titan-server --bins`);
//! the tests fail with that command when it is absent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use titan_operator::admin::{AdminApi, AdminTarget, GrpcAdmin, GrpcAdminConfig, NewMember};
use titan_operator::planner::{self, Action, NodeRole, Observed, PlannerConfig, PodView};

/// Most planner steps one convergence may take before the test fails.
const MAX_STEPS: usize = 200;
/// Longest time one convergence may take.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);

use titan_testkit::{free_port, request};

/// One ordinal: stable ports and data dir, like a pod's DNS name and PVC.
struct Slot {
    peer_port: u16,
    client_port: u16,
    grpc_port: u16,
    http_port: u16,
    child: Option<Child>,
    /// Template revision the running process was started from.
    revision: u32,
}

/// Stand-in for the StatefulSet + PVCs + ConfigMap `bootstrapped` flag.
struct LocalPods {
    bin: PathBuf,
    root: tempfile::TempDir,
    slots: BTreeMap<u32, Slot>,
    replicas: u32,
    initial: u32,
    bootstrapped: bool,
    /// Current template revision (`updateRevision`); OnDelete, so pods keep theirs until deleted.
    revision: u32,
    /// Client ports of running pods, shared with the writers.
    client_ports: Arc<Mutex<Vec<u16>>>,
}

impl LocalPods {
    fn new(bin: PathBuf, initial: u32) -> Self {
        let mut pods = Self {
            bin,
            root: tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
            slots: BTreeMap::new(),
            replicas: 0,
            initial,
            bootstrapped: false,
            revision: 1,
            client_ports: Arc::default(),
        };
        for o in 0..initial {
            pods.slot(o);
        }
        pods.set_replicas(initial);
        pods
    }

    fn slot(&mut self, ordinal: u32) -> &mut Slot {
        self.slots.entry(ordinal).or_insert_with(|| Slot {
            peer_port: free_port(),
            client_port: free_port(),
            grpc_port: free_port(),
            http_port: free_port(),
            child: None,
            revision: 0,
        })
    }

    fn data_dir(&self, ordinal: u32) -> PathBuf {
        self.root.path().join(format!("data-demo-{ordinal}"))
    }

    fn name(ordinal: u32) -> String {
        format!("demo-{ordinal}")
    }

    /// The container command: bootstrap with --peers before the flag, --join after.
    fn args(&self, ordinal: u32) -> Vec<String> {
        let s = &self.slots[&ordinal];
        let mut args = vec![
            format!("--id={}", Self::name(ordinal)),
            format!("--port={}", s.peer_port),
            format!("--client-port={}", s.client_port),
            format!("--grpc-port={}", s.grpc_port),
            format!("--http-port={}", s.http_port),
            "--listen-addr=127.0.0.1".to_string(),
            format!("--advertise-peer-addr=127.0.0.1:{}", s.peer_port),
            format!("--advertise-client-addr=127.0.0.1:{}", s.client_port),
            format!("--data-dir={}", self.data_dir(ordinal).display()),
            "--election-timeout-ms=300".to_string(),
            "--heartbeat-ms=50".to_string(),
        ];
        if !self.bootstrapped && ordinal < self.initial {
            let others: Vec<String> = (0..self.initial)
                .filter(|o| *o != ordinal)
                .map(|o| {
                    format!(
                        "{}:127.0.0.1:{}:{}",
                        Self::name(o),
                        self.slots[&o].peer_port,
                        self.slots[&o].client_port
                    )
                })
                .collect();
            if !others.is_empty() {
                args.push(format!("--peers={}", others.join(",")));
            }
        } else {
            args.push("--join".to_string());
        }
        args
    }

    fn start(&mut self, ordinal: u32) {
        self.slot(ordinal);
        let log_path = self.root.path().join(format!("demo-{ordinal}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path);
        let log = log.unwrap_or_else(|e| panic!("log: {e}"));
        // Reaped in `stop` (also run on drop).
        #[allow(clippy::zombie_processes)]
        let child = Command::new(&self.bin)
            .args(self.args(ordinal))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn titan-server: {e}"));
        let revision = self.revision;
        if let Some(s) = self.slots.get_mut(&ordinal) {
            s.child = Some(child);
            s.revision = revision;
        }
        self.publish_ports();
    }

    fn stop(&mut self, ordinal: u32) {
        if let Some(mut child) = self.slots.get_mut(&ordinal).and_then(|s| s.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.publish_ports();
    }

    fn publish_ports(&self) {
        let ports = self
            .slots
            .values()
            .filter(|s| s.child.is_some())
            .map(|s| s.client_port)
            .collect();
        if let Ok(mut p) = self.client_ports.lock() {
            *p = ports;
        }
    }

    fn set_replicas(&mut self, n: u32) {
        for o in n..self.replicas {
            self.stop(o);
        }
        for o in self.replicas..n {
            self.start(o);
        }
        self.replicas = n;
    }

    /// Deletes the "pod" (process) and its "PVC" (data dir), then the StatefulSet recreates the pod.
    fn lose_volume(&mut self, ordinal: u32) {
        self.stop(ordinal);
        let _ = std::fs::remove_dir_all(self.data_dir(ordinal));
        self.start(ordinal);
    }

    /// `kubectl delete pod`: the StatefulSet recreates it on the current revision, same volume.
    fn delete_pod(&mut self, ordinal: u32) {
        self.stop(ordinal);
        self.start(ordinal);
    }

    fn up_to_date(&self, ordinal: u32) -> bool {
        self.slots
            .get(&ordinal)
            .is_none_or(|s| s.revision == self.revision)
    }

    fn pvc_ordinals(&self) -> BTreeSet<u32> {
        self.slots
            .keys()
            .copied()
            .filter(|o| self.data_dir(*o).exists())
            .collect()
    }

    fn endpoint(&self, ordinal: u32) -> Option<AdminTarget> {
        let s = self.slots.get(&ordinal)?;
        s.child
            .as_ref()
            .map(|_| AdminTarget::plain(&format!("127.0.0.1:{}", s.peer_port)))
    }
}

impl Drop for LocalPods {
    fn drop(&mut self) {
        let ordinals: Vec<u32> = self.slots.keys().copied().collect();
        for o in ordinals {
            self.stop(o);
        }
    }
}

fn admin() -> GrpcAdmin {
    GrpcAdmin::new(GrpcAdminConfig {
        connect_timeout_ms: 500,
        request_timeout_ms: 5_000,
    })
}

async fn observe(pods: &LocalPods, desired: u32) -> Observed {
    let admin = admin();
    let mut views = BTreeMap::new();
    for o in 0..pods.replicas {
        let node = match pods.endpoint(o) {
            Some(e) => admin.status(e).await.ok(),
            None => None,
        };
        let ready = node
            .as_ref()
            .is_some_and(|n| n.role != NodeRole::Joining && n.id != 0);
        let view = PodView {
            ready,
            up_to_date: pods.up_to_date(o),
            terminating: false,
            unready_secs: 0,
            node,
        };
        views.insert(o, view);
    }
    Observed {
        desired_replicas: desired,
        paused: false,
        bootstrapped: pods.bootstrapped,
        statefulset_replicas: Some(pods.replicas),
        pods: views,
        pvc_ordinals: pods.pvc_ordinals(),
        snapshot_due: false,
    }
}

/// One operator step with no memory: observe, plan, execute. Returns the action.
async fn step(pods: &mut LocalPods, desired: u32) -> Action {
    let observed = observe(pods, desired).await;
    let cfg = PlannerConfig {
        catch_up_lag_entries: 50,
        unhealthy_grace_secs: 300,
    };
    let action = planner::plan(&observed, &cfg, &|n| n.strip_prefix("demo-")?.parse().ok()).action;
    let admin = admin();
    let ep = |o: u32| pods.endpoint(o).unwrap_or_else(|| String::new().into());
    let result = match &action {
        Action::ScaleStatefulSet(n) => {
            pods.set_replicas(*n);
            Ok(())
        }
        Action::MarkBootstrapped => {
            pods.bootstrapped = true;
            Ok(())
        }
        Action::DeletePod(o) => {
            pods.delete_pod(*o);
            Ok(())
        }
        Action::DeletePvc(o) => {
            let _ = std::fs::remove_dir_all(pods.data_dir(*o));
            Ok(())
        }
        Action::AddLearner { id, ordinal, via } => {
            let s = &pods.slots[ordinal];
            let member = NewMember {
                id: *id,
                name: LocalPods::name(*ordinal),
                peer_addr: format!("127.0.0.1:{}", s.peer_port),
                client_addr: format!("127.0.0.1:{}", s.client_port),
                grpc_addr: format!("127.0.0.1:{}", s.grpc_port),
            };
            admin.add_learner(ep(*via), member).await
        }
        Action::Promote { id, via, .. } => admin.promote(ep(*via), *id).await,
        Action::RemoveMember { id, via, .. } => admin.remove(ep(*via), *id).await,
        Action::TransferLeadership { to_id, via, .. } => {
            admin.transfer_leadership(ep(*via), *to_id).await
        }
        _ => Ok(()),
    };
    if let Err(e) = result {
        // A failed step is simply re-planned from a fresh observation.
        eprintln!("step {action:?} failed: {e}");
    }
    action
}

/// Steps until the planner reports Steady with `desired` voters; returns the actions taken.
async fn converge(pods: &mut LocalPods, desired: u32) -> Vec<Action> {
    let started = Instant::now();
    let mut actions = Vec::new();
    for _ in 0..MAX_STEPS {
        assert!(
            started.elapsed() < CONVERGE_TIMEOUT,
            "no convergence to {desired}: {actions:?}"
        );
        let action = step(pods, desired).await;
        match &action {
            Action::Steady => {
                eprintln!("converged to {desired} via {actions:?}");
                return actions;
            }
            Action::Degraded(reason) => eprintln!("degraded (retrying): {reason:?}"),
            Action::Wait(_) => {}
            other => actions.push(other.clone()),
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    panic!("more than {MAX_STEPS} steps converging to {desired}: {actions:?}");
}

/// Client writers: SET with NOT_LEADER redirects; remembers every acknowledged write.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn set(ports: &[u16], key: &str, value: &str) -> bool {
    let mut port = ports.first().copied();
    for _ in 0..4 {
        let Some(p) = port else { return false };
        match request(p, &format!("SET {key} {value}")) {
            Some(r) if r == "OK" => return true,
            Some(r) if r.starts_with("ERR NOT_LEADER ") => {
                port = r.rsplit(':').next().and_then(|p| p.parse().ok());
            }
            _ => port = ports.iter().copied().find(|q| Some(*q) != port),
        }
    }
    false
}

impl Writers {
    fn start(ports: Arc<Mutex<Vec<u16>>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let current = ports.lock().map(|p| p.clone()).unwrap_or_default();
                let (key, value) = (format!("k{i}"), format!("v{i}"));
                if set(&current, &key, &value)
                    && let Ok(mut a) = a.lock()
                {
                    a.push((key, value));
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    /// Stops and returns every acknowledged write.
    fn finish(mut self) -> Vec<(String, String)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.acked.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

fn assert_no_write_lost(pods: &LocalPods, acked: &[(String, String)]) {
    let port = pods.client_ports.lock().map(|p| p[0]).unwrap_or(0);
    assert!(!acked.is_empty(), "writers made progress");
    eprintln!("verifying {} acknowledged writes", acked.len());
    for (key, value) in acked {
        let got = request(port, &format!("GET {key}"));
        assert_eq!(
            got.as_deref(),
            Some(format!("VALUE {value}").as_str()),
            "acknowledged write {key} lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_3_to_5_to_3_with_a_fresh_operator_every_step_loses_no_write() {
    let bin = titan_testkit::server_bin();
    let mut pods = LocalPods::new(bin, 3);
    converge(&mut pods, 3).await;
    assert!(pods.bootstrapped);
    let writers = Writers::start(pods.client_ports.clone());
    let up = converge(&mut pods, 5).await;
    let adds = up
        .iter()
        .filter(|a| matches!(a, Action::AddLearner { .. }))
        .count();
    let promotes = up
        .iter()
        .filter(|a| matches!(a, Action::Promote { .. }))
        .count();
    assert_eq!((adds, promotes), (2, 2), "{up:?}");
    let down = converge(&mut pods, 3).await;
    let removes = down
        .iter()
        .filter(|a| matches!(a, Action::RemoveMember { .. }))
        .count();
    assert_eq!(removes, 2, "{down:?}");
    assert_eq!(pods.replicas, 3);
    assert_eq!(
        pods.pvc_ordinals(),
        BTreeSet::from([0, 1, 2]),
        "removed members' volumes deleted"
    );
    let acked = writers.finish();
    assert_no_write_lost(&pods, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_down_the_leader_transfers_then_removes_it() {
    let bin = titan_testkit::server_bin();
    let mut pods = LocalPods::new(bin, 3);
    converge(&mut pods, 3).await;
    // Make the highest ordinal the leader.
    let observed = observe(&pods, 3).await;
    let id2 = observed.pods[&2].node.as_ref().map(|n| n.id).unwrap_or(0);
    let leader = observed
        .pods
        .iter()
        .find(|(_, p)| p.node.as_ref().is_some_and(|n| n.role == NodeRole::Leader));
    let via = leader.map(|(o, _)| *o).unwrap_or(0);
    let _ = admin()
        .transfer_leadership(
            pods.endpoint(via).unwrap_or_else(|| String::new().into()),
            id2,
        )
        .await;
    let writers = Writers::start(pods.client_ports.clone());
    let actions = converge(&mut pods, 2).await;
    let transfer = actions
        .iter()
        .position(|a| matches!(a, Action::TransferLeadership { via: 2, .. }));
    let remove = actions
        .iter()
        .position(|a| matches!(a, Action::RemoveMember { name, .. } if name == "demo-2"));
    assert!(transfer.is_some() && remove > transfer, "{actions:?}");
    let acked = writers.finish();
    assert_no_write_lost(&pods, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_whose_volume_was_lost_is_removed_and_re_added() {
    let bin = titan_testkit::server_bin();
    let mut pods = LocalPods::new(bin, 3);
    converge(&mut pods, 3).await;
    let before = observe(&pods, 3).await.pods[&1].node.as_ref().map(|n| n.id);
    let writers = Writers::start(pods.client_ports.clone());
    pods.lose_volume(1);
    let actions = converge(&mut pods, 3).await;
    assert!(
        matches!(actions.first(), Some(Action::RemoveMember { id, .. }) if Some(*id) == before),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::AddLearner { ordinal: 1, .. })),
        "{actions:?}"
    );
    let after = observe(&pods, 3).await.pods[&1].node.as_ref().map(|n| n.id);
    assert_ne!(after, before, "rejoined under a new identity");
    let acked = writers.finish();
    assert_no_write_lost(&pods, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_restarts_followers_highest_first_and_the_leader_last() {
    let bin = titan_testkit::server_bin();
    let mut pods = LocalPods::new(bin, 3);
    converge(&mut pods, 3).await;
    let writers = Writers::start(pods.client_ports.clone());
    pods.revision = 2;
    let actions = converge(&mut pods, 3).await;
    let deleted: Vec<u32> = actions
        .iter()
        .filter_map(|a| {
            if let Action::DeletePod(o) = a {
                Some(*o)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(deleted.len(), 3, "{actions:?}");
    let last = deleted[2];
    let transfer = actions
        .iter()
        .position(|a| matches!(a, Action::TransferLeadership { via, .. } if *via == last));
    let last_delete = actions
        .iter()
        .rposition(|a| matches!(a, Action::DeletePod(_)));
    assert!(
        transfer.is_some() && transfer < last_delete,
        "leader goes last, after a transfer: {actions:?}"
    );
    let followers = &deleted[..2];
    assert!(
        followers[0] > followers[1],
        "followers from the highest ordinal down: {deleted:?}"
    );
    assert!((0..3).all(|o| pods.up_to_date(o)));
    let acked = writers.finish();
    assert_no_write_lost(&pods, &acked);
}

/// The operator dies right after a membership call (simulated by issuing the
/// call outside the operator); a fresh operator must continue with the next
/// step, never repeat the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_after_a_membership_call_resumes_with_the_next_step() {
    let bin = titan_testkit::server_bin();
    let mut pods = LocalPods::new(bin, 3);
    converge(&mut pods, 3).await;
    // Scale-up: StatefulSet +1 and AddLearner happened, then the operator died.
    assert_eq!(step(&mut pods, 4).await, Action::ScaleStatefulSet(4));
    let added = loop {
        match step(&mut pods, 4).await {
            Action::AddLearner { .. } => break true,
            Action::Wait(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("expected AddLearner, got {other:?}"),
        }
    };
    assert!(added);
    let resumed = converge(&mut pods, 4).await;
    assert!(
        matches!(resumed.first(), Some(Action::Promote { ordinal: 3, .. })),
        "{resumed:?}"
    );
    assert!(
        !resumed
            .iter()
            .any(|a| matches!(a, Action::AddLearner { .. })),
        "{resumed:?}"
    );
    // Scale-down: RemoveMember committed, then the operator died before StatefulSet −1.
    assert!(matches!(
        step(&mut pods, 3).await,
        Action::RemoveMember { .. }
    ));
    let resumed = converge(&mut pods, 3).await;
    assert_eq!(
        resumed,
        vec![Action::ScaleStatefulSet(3), Action::DeletePvc(3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_snapshot_is_taken_on_every_member_through_the_admin_api() {
    let bin = titan_testkit::server_bin();
    let mut pods = LocalPods::new(bin, 3);
    converge(&mut pods, 3).await;
    let ports = pods
        .client_ports
        .lock()
        .map(|p| p.clone())
        .unwrap_or_default();
    for i in 0..20 {
        assert!(set(&ports, &format!("s{i}"), "x"), "write s{i}");
    }
    let mut observed = observe(&pods, 3).await;
    observed.snapshot_due = true;
    let cfg = PlannerConfig::default();
    let plan = planner::plan(&observed, &cfg, &|n| n.strip_prefix("demo-")?.parse().ok());
    assert_eq!(plan.action, Action::TakeSnapshot);
    for o in 0..3 {
        let endpoint = pods.endpoint(o).unwrap_or_else(|| String::new().into());
        let taken = admin().take_snapshot(endpoint).await;
        let index = taken
            .map(|t| t.index)
            .unwrap_or_else(|e| panic!("snapshot on demo-{o}: {e}"));
        assert!(
            index >= 20,
            "demo-{o} snapshot covers the writes (index {index})"
        );
    }
}
