//! Scenarios where the API server or its storage goes away mid-test:
//! restarts of the kube-apiserver (SIGTERM and SIGKILL) and a SIGKILL of
//! the Titan leader behind it. After each, objects written before are
//! intact, CRUD works, CRD defaulting works, and a watch opened through the
//! API server delivers every later change exactly once, in order.
//!
//! Writes made while the storage elects a new leader may fail with a 5xx
//! or a dropped connection; they are retried for up to
//! [`WRITE_RETRY_LIMIT`], as any Kubernetes client does. A retried create
//! that finds the object (the first attempt committed) and a retried delete
//! that finds it gone count as done; a retried merge patch is idempotent.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::WatchParams;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent};
use serde_json::json;
use titan_operator::crd::TitanCluster;

use super::env::{Stop, TestEnv};

/// Longest a write may keep failing while the storage recovers.
const WRITE_RETRY_LIMIT: Duration = Duration::from_secs(60);
/// Pause between attempts of a failed write.
const WRITE_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Longest wait for a watch to deliver the events a scenario expects.
const WATCH_DELIVERY_LIMIT: Duration = Duration::from_secs(60);
/// Updates of one ConfigMap made around the Titan leader kill.
const COUNTER_WRITES: u32 = 60;
/// The leader is killed once this many of them are acknowledged.
const KILL_AFTER_WRITES: u32 = 20;

/// Whether a failed write may succeed when tried again (the storage or the
/// API server is briefly unavailable).
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429,
        _ => true,
    }
}

/// Runs `call` until it succeeds or fails for a non-transient reason, for up
/// to [`WRITE_RETRY_LIMIT`]; the last result and how many attempts failed.
async fn retrying<T, F, Fut>(what: &str, mut call: F) -> (Result<T, kube::Error>, u32)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let started = Instant::now();
    let mut failed = 0;
    loop {
        match call().await {
            Err(e) if transient(&e) => {
                failed += 1;
                assert!(
                    started.elapsed() < WRITE_RETRY_LIMIT,
                    "{what}: still failing after {WRITE_RETRY_LIMIT:?}: {e}"
                );
                tokio::time::sleep(WRITE_RETRY_PAUSE).await;
            }
            other => return (other, failed),
        }
    }
}

fn config_map(name: &str, n: u32) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name}, "data": {"n": n.to_string()}
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Creates ConfigMap `name` with `n`; failed attempts.
async fn create_cm(api: &Api<ConfigMap>, name: &str, n: u32) -> u32 {
    let (cm, pp) = (config_map(name, n), PostParams::default());
    let (res, failed) = retrying(&format!("create {name}"), || api.create(&pp, &cm)).await;
    match res {
        Ok(_) => {}
        // An earlier attempt committed but its answer was lost.
        Err(kube::Error::Api(s)) if s.code == 409 && failed > 0 => {}
        Err(e) => panic!("create {name}: {e}"),
    }
    failed
}

/// Sets `data.n` of ConfigMap `name` (merge patch); failed attempts.
async fn set_cm(api: &Api<ConfigMap>, name: &str, n: u32) -> u32 {
    let patch = json!({"data": {"n": n.to_string()}});
    let (pp, patch) = (PatchParams::default(), Patch::Merge(&patch));
    let (res, failed) = retrying(&format!("update {name} to {n}"), || {
        api.patch(name, &pp, &patch)
    })
    .await;
    res.unwrap_or_else(|e| panic!("update {name} to {n}: {e}"));
    failed
}

/// Deletes ConfigMap `name`; failed attempts.
async fn delete_cm(api: &Api<ConfigMap>, name: &str) -> u32 {
    let dp = DeleteParams::default();
    let (res, failed) = retrying(&format!("delete {name}"), || api.delete(name, &dp)).await;
    match res {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 && failed > 0 => {}
        Err(e) => panic!("delete {name}: {e}"),
    }
    failed
}

fn cm_n(cm: &ConfigMap) -> String {
    cm.data
        .as_ref()
        .and_then(|d| d.get("n").cloned())
        .unwrap_or_else(|| "-".to_string())
}

/// One watch on the ConfigMaps of a namespace, opened through the API
/// server at the list's resourceVersion; records every event it delivers
/// as `"<TYPE> <name> <data.n>"` (bookmarks left out; `END` when the stream
/// closes).
struct CmWatch {
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CmWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CmWatch {
    async fn open(api: &Api<ConfigMap>) -> Self {
        let lp = ListParams::default();
        let (list, _) = retrying("list configmaps", || api.list(&lp)).await;
        let list = list.unwrap_or_else(|e| panic!("list configmaps: {e}"));
        let rv = list.metadata.resource_version.unwrap_or_default();
        let stream = api
            .watch(&WatchParams::default().timeout(290), &rv)
            .await
            .unwrap_or_else(|e| panic!("watch configmaps from {rv}: {e}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let mut stream = Box::pin(stream);
            while let Some(event) = stream.next().await {
                let line = match event {
                    Ok(WatchEvent::Added(cm)) => format!("ADDED {}", describe(&cm)),
                    Ok(WatchEvent::Modified(cm)) => format!("MODIFIED {}", describe(&cm)),
                    Ok(WatchEvent::Deleted(cm)) => format!("DELETED {}", describe(&cm)),
                    Ok(WatchEvent::Bookmark(_)) => continue,
                    Ok(WatchEvent::Error(s)) => format!("ERROR {} {}", s.code, s.message),
                    Err(e) => format!("ERROR {e}"),
                };
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push("END".to_string());
        });
        CmWatch { seen, task }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the watch delivered as many events as `want` (or ended),
    /// then asserts it delivered exactly `want`, in that order.
    async fn expect(&self, want: &[String], what: &str) {
        let started = Instant::now();
        loop {
            let seen = self.seen();
            let ended = seen.iter().any(|l| l == "END" || l.starts_with("ERROR"));
            if seen.len() >= want.len() || ended {
                break;
            }
            if started.elapsed() > WATCH_DELIVERY_LIMIT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Anything extra (a duplicate) would show up shortly after.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(self.seen(), want, "{what}: the watch's events");
    }
}

fn describe(cm: &ConfigMap) -> String {
    let name = cm.metadata.name.clone().unwrap_or_default();
    format!("{name} {}", cm_n(cm))
}

/// Create, read, update and delete ConfigMaps in `ns` while a watch opened
/// just before sees each change once, in order. Returns failed attempts.
pub async fn crud_and_watch_work(client: &Client, ns: &str, tag: &str) -> u32 {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let watch = CmWatch::open(&api).await;
    let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
    let mut failed = create_cm(&api, &a, 1).await;
    failed += create_cm(&api, &b, 1).await;
    failed += set_cm(&api, &a, 2).await;
    failed += delete_cm(&api, &b).await;
    let (got, _) = retrying(&format!("get {a}"), || api.get(&a)).await;
    let got = got.unwrap_or_else(|e| panic!("get {a}: {e}"));
    assert_eq!(cm_n(&got), "2", "{a} reads back its update");
    let (gone, _) = retrying(&format!("get {b}"), || api.get_opt(&b)).await;
    assert!(
        gone.unwrap_or_else(|e| panic!("get {b}: {e}")).is_none(),
        "{b} stays deleted"
    );
    let want = [
        format!("ADDED {a} 1"),
        format!("ADDED {b} 1"),
        format!("MODIFIED {a} 2"),
        format!("DELETED {b} 1"),
    ];
    watch.expect(&want, &format!("CRUD round {tag}")).await;
    failed
}

/// A TitanCluster created now still gets the CRD schema's defaults.
async fn crd_defaults_still_apply(client: &Client, ns: &str, name: &str) {
    let api: Api<TitanCluster> = Api::namespaced(client.clone(), ns);
    let cluster: TitanCluster = serde_json::from_value(json!({
        "apiVersion": "titan.dev/v1alpha1", "kind": "TitanCluster",
        "metadata": {"name": name}, "spec": {}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let pp = PostParams::default();
    let (created, failed) = retrying(&format!("create TitanCluster {name}"), || {
        api.create(&pp, &cluster)
    })
    .await;
    let created = match created {
        Ok(c) => c,
        Err(kube::Error::Api(s)) if s.code == 409 && failed > 0 => api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get TitanCluster {name}: {e}")),
        Err(e) => panic!("create TitanCluster {name}: {e}"),
    };
    assert_eq!(created.spec.replicas, 3, "schema default for replicas");
}

/// (resourceVersion, data.n) of ConfigMap `name`.
async fn cm_state(api: &Api<ConfigMap>, name: &str) -> (String, String) {
    let (cm, _) = retrying(&format!("get {name}"), || api.get(name)).await;
    let cm = cm.unwrap_or_else(|e| panic!("get {name}: {e}"));
    (
        cm.metadata.resource_version.clone().unwrap_or_default(),
        cm_n(&cm),
    )
}

/// Restarts the API server twice (SIGTERM, then SIGKILL). Each time,
/// ConfigMaps and custom resources written before are unchanged (same
/// resourceVersion), the CRD still serves with its defaults, and CRUD and
/// watch work. Needs the CRD installed and `ssa/demo` created.
pub async fn objects_crds_and_watch_survive_apiserver_restarts(env: &mut TestEnv) {
    env.kubectl(&["create", "namespace", "restart"])
        .unwrap_or_else(|e| panic!("{e}"));
    let client = env.client(None).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "restart");
    create_cm(&cms, "keep", 7).await;
    let tcs: Api<TitanCluster> = Api::namespaced(client, "ssa");
    let demo = tcs.get("demo").await.unwrap_or_else(|e| panic!("{e}"));
    let demo_before = (demo.metadata.resource_version, demo.spec.replicas);
    let keep_before = cm_state(&cms, "keep").await;
    for how in [Stop::Graceful, Stop::Kill] {
        env.restart_apiserver(how);
        let client = env.client(None).await;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "restart");
        assert_eq!(cm_state(&cms, "keep").await, keep_before, "after {how:?}");
        let tcs: Api<TitanCluster> = Api::namespaced(client.clone(), "ssa");
        let (demo, _) = retrying("get ssa/demo", || tcs.get("demo")).await;
        let demo = demo.unwrap_or_else(|e| panic!("get ssa/demo: {e}"));
        assert_eq!(
            (demo.metadata.resource_version, demo.spec.replicas),
            demo_before,
            "TitanCluster ssa/demo after {how:?}"
        );
        let tag = format!("{how:?}").to_lowercase();
        crd_defaults_still_apply(&client, "restart", &tag).await;
        crud_and_watch_work(&client, "restart", &tag).await;
        println!("ok: after an API server restart ({how:?}) objects, CRDs, CRUD and watch work");
    }
}

/// Updates ConfigMap `name` to 1..=[`COUNTER_WRITES`] in order, publishing
/// the last acknowledged value in `progress`; failed attempts.
async fn write_counter(api: Api<ConfigMap>, name: String, progress: Arc<AtomicU32>) -> u32 {
    let mut failed = 0;
    for n in 1..=COUNTER_WRITES {
        failed += set_cm(&api, &name, n).await;
        progress.store(n, Ordering::SeqCst);
    }
    failed
}

/// Creates ConfigMap `name` at 0, opens a watch, and updates it to
/// 1..=[`COUNTER_WRITES`] while the Titan leader is SIGKILLed after
/// [`KILL_AFTER_WRITES`] acknowledged updates. Every update arrives on the
/// watch exactly once, in order. Returns the killed member and the failed
/// attempts that were retried.
async fn counter_across_leader_kill(
    env: &mut TestEnv,
    api: &Api<ConfigMap>,
    name: &str,
) -> (usize, u32) {
    create_cm(api, name, 0).await;
    let watch = CmWatch::open(api).await;
    let progress = Arc::new(AtomicU32::new(0));
    let writer = tokio::spawn(write_counter(
        api.clone(),
        name.to_string(),
        progress.clone(),
    ));
    let started = Instant::now();
    while progress.load(Ordering::SeqCst) < KILL_AFTER_WRITES {
        assert!(
            started.elapsed() < WRITE_RETRY_LIMIT,
            "the writer is stuck before the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed = env.kill_titan_leader();
    let at = progress.load(Ordering::SeqCst);
    println!(
        "  killed the Titan leader (member {killed}) after {at} acknowledged updates of {name}"
    );
    let failed = writer.await.unwrap_or_else(|e| panic!("writer task: {e}"));
    let want: Vec<String> = (1..=COUNTER_WRITES)
        .map(|n| format!("MODIFIED {name} {n}"))
        .collect();
    watch
        .expect(&want, "a watch open across the leader kill")
        .await;
    let (_, last) = cm_state(api, name).await;
    assert_eq!(last, COUNTER_WRITES.to_string());
    println!(
        "ok: {COUNTER_WRITES} updates of {name} across a Titan leader kill ({failed} failed \
         attempts retried) reached the watch once each, in order"
    );
    (killed, failed)
}

/// SIGKILLs the Titan leader while a writer updates a ConfigMap through the
/// API server and a watch is open ([`counter_across_leader_kill`]); objects
/// from before the kill are intact; CRUD, watch and CRD defaulting work
/// afterwards. Then the killed member comes back and the new leader is
/// killed the same way (each kill drops the API server's etcd streams on
/// that member, so two kills cover most of them).
pub async fn apiserver_serves_crud_and_watch_across_titan_leader_kill(env: &mut TestEnv) {
    env.kubectl(&["create", "namespace", "failover"])
        .unwrap_or_else(|e| panic!("{e}"));
    let client = env.client(None).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "failover");
    create_cm(&api, "before-kill", 5).await;
    let before = cm_state(&api, "before-kill").await;
    let (first, _) = counter_across_leader_kill(env, &api, "counter").await;
    assert_eq!(
        cm_state(&api, "before-kill").await,
        before,
        "written before the kill"
    );
    let after = crud_and_watch_work(&client, "failover", "after-kill").await;
    crd_defaults_still_apply(&client, "failover", "after-kill").await;
    println!("ok: CRUD + watch + CRDs work after the kill ({after} failed attempts retried)");
    env.restart_titan_member(first);
    let (second, _) = counter_across_leader_kill(env, &api, "counter-2").await;
    assert_ne!(first, second, "the second kill hits another member");
    crud_and_watch_work(&client, "failover", "second-kill").await;
    env.restart_titan_member(second);
    crud_and_watch_work(&client, "failover", "rejoined").await;
    let ready = env.kubectl(&["get", "--raw", "/readyz"]);
    assert_eq!(ready.map(|s| s.trim().to_string()), Ok("ok".to_string()));
    println!(
        "ok: a second leader kill too; both killed members rejoined; CRUD + watch work, /readyz ok"
    );
}
