//! Builder tests: golden files of every built object, table-driven invariants,
//! and the pod start-up script run under a real `/bin/sh` with a fake server.
//!
//! Regenerate golden files with `UPDATE_GOLDEN=1 cargo test -p titan-operator --test builders`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kube::api::ObjectMeta;
use titan_operator::builders::{self, BuildInput, Names, OperatorIdentity};
use titan_operator::crd::{TitanCluster, TitanClusterSpec};

fn cluster(name: &str, spec_json: serde_json::Value) -> TitanCluster {
    let spec: TitanClusterSpec = serde_json::from_value(spec_json)
        .unwrap_or_else(|e| panic!("fixture spec must parse: {e}"));
    TitanCluster {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("prod".to_string()),
            uid: Some("8c1f6a52-0000-4000-8000-000000000001".to_string()),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

fn input(replicas: u32, bootstrapped: bool) -> BuildInput {
    BuildInput {
        initial_replicas: replicas,
        cluster_id: "8c1f6a52-0000-4000-8000-000000000001".to_string(),
        bootstrapped,
        statefulset_replicas: replicas,
        voters: replicas,
        keep_no_resources: false,
    }
}

/// The operator identity the golden NetworkPolicy admits.
fn operator() -> OperatorIdentity {
    OperatorIdentity {
        namespace: "titan-system".to_string(),
        pod_labels: BTreeMap::from([
            (
                "app.kubernetes.io/instance".to_string(),
                "titan-operator".to_string(),
            ),
            (
                "app.kubernetes.io/name".to_string(),
                "titan-operator".to_string(),
            ),
        ]),
    }
}

fn render_all(cluster: &TitanCluster, input: &BuildInput) -> String {
    let names = Names::of(cluster);
    let docs = [
        serde_saphyr::to_string(&builders::peers_service(cluster, &names)),
        serde_saphyr::to_string(&builders::client_service(cluster, &names)),
        serde_saphyr::to_string(&builders::leader_service(cluster, &names)),
        serde_saphyr::to_string(&builders::configmap(cluster, &names, input)),
        serde_saphyr::to_string(&builders::statefulset(cluster, &names, input)),
        serde_saphyr::to_string(&builders::pdb(cluster, &names, input)),
    ];
    let policy =
        cluster.spec.network_policy.enabled.then(|| {
            serde_saphyr::to_string(&builders::network_policy(cluster, &names, &operator()))
        });
    docs.into_iter()
        .chain(policy)
        .map(|d| d.unwrap_or_else(|e| panic!("serializing: {e}")))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn check_golden(case: &str, rendered: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{case}.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, rendered)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        golden == rendered,
        "{case}: built objects differ from {}; rerun with UPDATE_GOLDEN=1 if intended",
        path.display()
    );
}

#[test]
fn default_three_member_cluster_matches_golden() {
    let c = cluster("demo", serde_json::json!({}));
    check_golden("default-3", &render_all(&c, &input(3, false)));
}

#[test]
fn customized_single_member_cluster_matches_golden() {
    let c = cluster(
        "solo",
        serde_json::json!({
            "replicas": 1,
            "image": "registry.example/titan-server:2.0",
            "imagePullPolicy": "Always",
            "storage": {"size": "20Gi", "storageClassName": "fast"},
            "raft": {"electionTimeoutMs": 3000, "heartbeatMs": 300, "snapshotThresholdEntries": 5000},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}],
            "nodeSelector": {"disk": "ssd"},
            "podLabels": {"team": "sync", "app.kubernetes.io/name": "spoofed"},
            "podAnnotations": {"prometheus.io/scrape": "true"},
            "logLevel": "debug",
            "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}},
            "networkPolicy": {
                "enabled": true,
                "clientFrom": [
                    {"namespaceSelector": {"matchLabels": {"team": "sync"}}},
                    {"podSelector": {"matchLabels": {"role": "titan-client"}}}
                ],
                "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
            }
        }),
    );
    check_golden("custom-1", &render_all(&c, &input(1, true)));
}

#[test]
fn every_object_is_owned_by_the_cluster_and_labelled() {
    let c = cluster("demo", serde_json::json!({}));
    let names = Names::of(&c);
    let input = input(3, false);
    let metas = [
        builders::peers_service(&c, &names).metadata,
        builders::client_service(&c, &names).metadata,
        builders::leader_service(&c, &names).metadata,
        builders::configmap(&c, &names, &input).metadata,
        builders::statefulset(&c, &names, &input).metadata,
        builders::pdb(&c, &names, &input).metadata,
        builders::network_policy(&c, &names, &operator()).metadata,
    ];
    for meta in metas {
        let owners = meta.owner_references.unwrap_or_default();
        assert_eq!(owners.len(), 1, "{:?}", meta.name);
        assert_eq!(owners[0].kind, "TitanCluster");
        assert_eq!(owners[0].controller, Some(true));
        let labels = meta.labels.unwrap_or_default();
        assert_eq!(
            labels.get("app.kubernetes.io/instance").map(String::as_str),
            Some("demo")
        );
    }
}

#[test]
fn leader_service_selects_only_the_labelled_pod_of_its_cluster() {
    let c = cluster("demo", serde_json::json!({}));
    let names = Names::of(&c);
    let svc = builders::leader_service(&c, &names);
    assert_eq!(svc.metadata.name.as_deref(), Some("demo-leader"));
    let spec = svc.spec.unwrap_or_default();
    let mut want = names.selector_labels();
    want.insert("titan.dev/role".to_string(), "leader".to_string());
    assert_eq!(spec.selector, Some(want));
    assert_eq!(spec.cluster_ip, None, "a normal ClusterIP Service");
    assert_eq!(
        spec.publish_not_ready_addresses, None,
        "only a Ready leader is routed to"
    );
    let ports: Vec<i32> = spec
        .ports
        .unwrap_or_default()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, vec![6001, 7001]);
    // The StatefulSet's pod template never sets the role: the operator owns it per pod.
    let sts = builders::statefulset(&c, &names, &input(3, false));
    let template_labels = sts.spec.template.metadata.unwrap_or_default().labels;
    assert!(
        !template_labels
            .unwrap_or_default()
            .contains_key("titan.dev/role")
    );
}

#[test]
fn server_pods_keep_serving_until_their_endpoint_is_gone() {
    let c = cluster("demo", serde_json::json!({}));
    let sts = builders::statefulset(&c, &Names::of(&c), &input(3, false));
    let pod = sts.spec.template.spec.unwrap_or_default();
    let server = &pod.containers[0];
    let pre_stop = server
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone());
    assert_eq!(pre_stop, Some(vec!["sleep".to_string(), "5".to_string()]));
    let grace = pod.termination_grace_period_seconds.unwrap_or(0);
    assert!(
        grace > 5 + 10,
        "the drain leaves the server time to hand off: {grace}"
    );
}

#[test]
fn operator_labels_win_over_user_pod_labels() {
    let c = cluster(
        "demo",
        serde_json::json!({"podLabels": {"app.kubernetes.io/name": "x", "team": "a"}}),
    );
    let sts = builders::statefulset(&c, &Names::of(&c), &input(3, false));
    let labels = sts
        .spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .unwrap_or_default();
    assert_eq!(
        labels.get("app.kubernetes.io/name").map(String::as_str),
        Some("titan")
    );
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));
}

/// The server container's environment as (name, literal value) pairs.
fn server_env(c: &TitanCluster) -> Vec<(String, Option<String>)> {
    let sts = builders::statefulset(c, &Names::of(c), &input(3, false));
    let pod = sts.spec.template.spec.unwrap_or_default();
    pod.containers[0]
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect()
}

#[test]
fn spec_log_level_reaches_the_server_pods_only_when_set() {
    let level = |env: &[(String, Option<String>)]| {
        env.iter()
            .find(|(name, _)| name == "TITAN_LOG_LEVEL")
            .map(|(_, v)| v.clone())
    };
    let unset = server_env(&cluster("demo", serde_json::json!({})));
    assert_eq!(
        level(&unset),
        None,
        "no logLevel: the pod template is unchanged"
    );
    for want in ["error", "warn", "info", "debug", "trace"] {
        let c = cluster("demo", serde_json::json!({"logLevel": want}));
        assert_eq!(level(&server_env(&c)), Some(Some(want.to_string())));
    }
    let bad: Result<TitanClusterSpec, _> =
        serde_json::from_value(serde_json::json!({"logLevel": "loud"}));
    assert!(bad.is_err(), "only the five levels are accepted");
}

#[test]
fn statefulset_replicas_follow_the_planner_not_the_spec() {
    let c = cluster("demo", serde_json::json!({"replicas": 5}));
    for step in [3u32, 4, 5] {
        let mut i = input(3, true);
        i.statefulset_replicas = step;
        let sts = builders::statefulset(&c, &Names::of(&c), &i);
        assert_eq!(sts.spec.replicas, Some(step as i32));
    }
}

#[test]
fn pdb_is_sized_from_current_voters_during_scale_up() {
    let c = cluster("demo", serde_json::json!({"replicas": 5}));
    // (voters, expected maxUnavailable): spec says 5, but only `voters` are members.
    let cases = [(3u32, 1), (4, 1), (5, 2), (7, 2)];
    for (voters, want) in cases {
        let mut i = input(3, true);
        i.voters = voters;
        let pdb = builders::pdb(&c, &Names::of(&c), &i);
        let got = pdb.spec.and_then(|s| s.max_unavailable);
        assert_eq!(
            got,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(want)),
            "voters={voters}"
        );
    }
}

#[test]
fn user_pod_anti_affinity_replaces_the_default_preference() {
    let c = cluster(
        "demo",
        serde_json::json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "topology.kubernetes.io/zone"}]}}}),
    );
    let sts = builders::statefulset(&c, &Names::of(&c), &input(3, false));
    let anti = sts
        .spec
        .template
        .spec
        .and_then(|s| s.affinity)
        .and_then(|a| a.pod_anti_affinity)
        .unwrap_or_default();
    assert!(
        anti.preferred_during_scheduling_ignored_during_execution
            .is_none()
    );
    assert_eq!(
        anti.required_during_scheduling_ignored_during_execution
            .map(|v| v.len()),
        Some(1)
    );
}

/// Runs the start-up script for `pod` under `/bin/sh`; returns the fake server's argv.
fn run_script(
    script: &str,
    bin_dir: &std::path::Path,
    pod: &str,
    bootstrapped: &str,
    peers: &str,
) -> Vec<String> {
    let env: BTreeMap<&str, String> = BTreeMap::from([
        ("POD_NAME", pod.to_string()),
        ("POD_NAMESPACE", "prod".to_string()),
        ("BOOTSTRAPPED", bootstrapped.to_string()),
        ("INITIAL_PEERS", peers.to_string()),
        ("PATH", format!("{}:/usr/bin:/bin", bin_dir.display())),
    ]);
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .env_clear()
        .envs(env)
        .output()
        .unwrap_or_else(|e| panic!("running sh: {e}"));
    let args: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        out.status.success(),
        "{pod}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    args
}

/// Runs the container command under `/bin/sh` with a fake `titan-server` that
/// prints its arguments, for each (pod, bootstrapped) case.
#[test]
fn startup_script_bootstraps_initial_members_and_joins_everyone_else() {
    let c = cluster("demo", serde_json::json!({}));
    let names = Names::of(&c);
    let sts = builders::statefulset(&c, &names, &input(3, false));
    let command = sts
        .spec
        .template
        .spec
        .map(|s| s.containers[0].command.clone().unwrap_or_default());
    let script = command.and_then(|c| c.get(2).cloned()).unwrap_or_default();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let fake = dir.path().join("titan-server");
    std::fs::write(
        &fake,
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done\n",
    )
    .unwrap_or_else(|e| panic!("writing fake server: {e}"));
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&fake)
        .status()
        .ok();
    let peers = "demo-0:demo-0.demo-peers.prod.svc:5001:6001,demo-1:demo-1.demo-peers.prod.svc:5001:6001,\
demo-2:demo-2.demo-peers.prod.svc:5001:6001";
    let cases = [
        (
            "demo-0",
            "false",
            Some(
                "demo-1:demo-1.demo-peers.prod.svc:5001:6001,demo-2:demo-2.demo-peers.prod.svc:5001:6001",
            ),
        ),
        (
            "demo-2",
            "false",
            Some(
                "demo-0:demo-0.demo-peers.prod.svc:5001:6001,demo-1:demo-1.demo-peers.prod.svc:5001:6001",
            ),
        ),
        ("demo-3", "false", None),
        ("demo-0", "true", None),
    ];
    for (pod, bootstrapped, want_peers) in cases {
        let args = run_script(&script, dir.path(), pod, bootstrapped, peers);
        let arg_after = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        assert_eq!(arg_after("--id").as_deref(), Some(pod));
        assert_eq!(
            arg_after("--advertise-peer-addr"),
            Some(format!("{pod}.demo-peers.prod.svc:5001"))
        );
        assert_eq!(
            arg_after("--peers").as_deref(),
            want_peers,
            "{pod} bootstrapped={bootstrapped}"
        );
        assert_eq!(
            args.iter().any(|a| a == "--join"),
            want_peers.is_none(),
            "{pod} bootstrapped={bootstrapped}"
        );
    }
}
