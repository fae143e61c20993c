//! The StatefulSet running `titan-server`.
//!
//! `OnDelete` updates (the operator restarts pods one at a time, see
//! `planner`), `Parallel` pod management (the initial members must start
//! together to elect a leader), a `data` PVC per pod.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapKeySelector, Container, ContainerPort, EnvVar, EnvVarSource,
    ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::restore;
use super::{
    BOOTSTRAPPED_KEY, BuildInput, CLIENT_PORT, GRPC_PORT, HTTP_PORT, INITIAL_PEERS_KEY, Names,
    PEER_PORT, child_meta,
};
use crate::crd::TitanCluster;
use crate::tls::OPERATOR_CN;

/// Mount point of the `data` PVC and `--data-dir` of the server.
pub const DATA_DIR: &str = "/var/lib/titan";
/// Where the member Secret (`spec.tls`) is mounted in the server container.
pub const TLS_DIR: &str = "/etc/titan/tls";
/// Mode of the mounted certificate files: owner and group (the pod's
/// `fsGroup`) read, nobody else.
const TLS_FILE_MODE: i32 = 0o440;
/// Name of the `titan-server` container in every server pod.
pub const SERVER_CONTAINER: &str = "titan";
/// UID/GID the server runs as (non-root).
const RUN_AS_ID: i64 = 65532;
/// Time a stopping server gets to finish in-flight requests and hand off.
const TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;
/// Seconds a deleted pod keeps serving before it gets SIGTERM (its preStop
/// hook): a terminating pod leaves the Services' endpoints at once, but
/// kube-proxy on every node needs a moment to stop sending new connections to
/// it. Without it a client could be routed to a server that is already
/// stopping. Counts against the termination grace period.
const PRE_STOP_DRAIN_SECONDS: u32 = 5;

/// CPU request of a server container when `spec.resources` is unset.
const DEFAULT_CPU_REQUEST: &str = "100m";
/// Memory request of a server container when `spec.resources` is unset.
const DEFAULT_MEMORY_REQUEST: &str = "256Mi";
/// Memory limit of a server container when `spec.resources` is unset. No
/// CPU limit: CFS throttling stalls the Raft loop and delays heartbeats.
const DEFAULT_MEMORY_LIMIT: &str = "1Gi";

/// The server container's resources when `spec.resources` is unset:
/// requests of CPU and memory, a memory limit.
pub fn default_resources() -> ResourceRequirements {
    let quantity = |v: &str| Quantity(v.to_string());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), quantity(DEFAULT_CPU_REQUEST)),
            ("memory".to_string(), quantity(DEFAULT_MEMORY_REQUEST)),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            quantity(DEFAULT_MEMORY_LIMIT),
        )])),
        claims: None,
    }
}

/// `spec.resources` as given, else the defaults, except for a cluster whose
/// StatefulSet already runs without any (see [`BuildInput::keep_no_resources`]).
fn resources(cluster: &TitanCluster, input: &BuildInput) -> Option<ResourceRequirements> {
    match &cluster.spec.resources {
        Some(given) => Some(given.clone()),
        None if input.keep_no_resources => None,
        None => Some(default_resources()),
    }
}

/// The StatefulSet. `input.statefulset_replicas` is the planner's current
/// step, not `spec.replicas`: scaling moves one member at a time.
pub fn statefulset(cluster: &TitanCluster, names: &Names, input: &BuildInput) -> StatefulSet {
    StatefulSet {
        metadata: child_meta(cluster, names, names.statefulset()),
        spec: StatefulSetSpec {
            replicas: Some(i32::try_from(input.statefulset_replicas).unwrap_or(0)),
            service_name: Some(names.peers_service()),
            pod_management_policy: Some("Parallel".to_string()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_string()),
                rolling_update: None,
            }),
            selector: LabelSelector {
                match_labels: Some(names.selector_labels()),
                ..LabelSelector::default()
            },
            template: pod_template(cluster, names, input),
            volume_claim_templates: Some(vec![data_claim(cluster, names)]),
            ..StatefulSetSpec::default()
        },
        status: None,
    }
}

fn pod_template(cluster: &TitanCluster, names: &Names, input: &BuildInput) -> PodTemplateSpec {
    let spec = &cluster.spec;
    let mut labels: BTreeMap<String, String> = spec.pod_labels.clone().unwrap_or_default();
    labels.extend(names.labels());
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: spec.pod_annotations.clone(),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![server_container(cluster, names, input)],
            init_containers: init_containers(cluster, names),
            volumes: tls_volume(cluster, names).map(|v| vec![v]),
            // The server never talks to the API server.
            automount_service_account_token: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS_ID),
                run_as_group: Some(RUN_AS_ID),
                fs_group: Some(RUN_AS_ID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_string(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_PERIOD_SECONDS),
            affinity: Some(affinity(spec.affinity.clone(), names)),
            tolerations: spec.tolerations.clone(),
            node_selector: spec.node_selector.clone(),
            topology_spread_constraints: spec.topology_spread_constraints.clone(),
            ..PodSpec::default()
        }),
    }
}

/// `fix-permissions` (when asked for), then `restore-backup` (for a cluster
/// bootstrapped from a backup); none for most clusters.
fn init_containers(cluster: &TitanCluster, names: &Names) -> Option<Vec<Container>> {
    let mut containers = Vec::new();
    if cluster.spec.storage.fix_permissions {
        containers.push(fix_permissions_container(cluster));
    }
    if let Some(bootstrap) = &cluster.spec.bootstrap {
        containers.push(restore::restore_container(
            cluster,
            names,
            &bootstrap.from_backup,
        ));
    }
    (!containers.is_empty()).then_some(containers)
}

/// `spec.storage.fixPermissions`: chowns the volume's root directory (not
/// recursively: everything below it is written by the server itself) to the
/// server's uid/gid. Runs as uid 0 with only `CAP_CHOWN`, no privilege
/// escalation, read-only root filesystem.
fn fix_permissions_container(cluster: &TitanCluster) -> Container {
    let owner = format!("{RUN_AS_ID}:{RUN_AS_ID}");
    Container {
        name: "fix-permissions".to_string(),
        image: Some(cluster.spec.image.clone()),
        image_pull_policy: Some(cluster.spec.image_pull_policy.as_str().to_string()),
        command: Some(vec!["chown".to_string(), owner, DATA_DIR.to_string()]),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".to_string(),
            mount_path: DATA_DIR.to_string(),
            ..VolumeMount::default()
        }]),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: Some(vec!["CHOWN".to_string()]),
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn server_container(cluster: &TitanCluster, names: &Names, input: &BuildInput) -> Container {
    let spec = &cluster.spec;
    Container {
        name: SERVER_CONTAINER.to_string(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some(spec.image_pull_policy.as_str().to_string()),
        command: Some(vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            startup_script(cluster, names),
        ]),
        ports: Some(vec![
            container_port("peer", PEER_PORT),
            container_port("client", CLIENT_PORT),
            container_port("grpc", GRPC_PORT),
            container_port("http", HTTP_PORT),
        ]),
        env: Some(env(cluster, names)),
        resources: resources(cluster, input),
        volume_mounts: Some(server_mounts(cluster)),
        lifecycle: Some(drain_before_stop()),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        security_context: Some(restricted_security_context()),
        ..Container::default()
    }
}

/// `spec.tls`: the member Secret as a volume. Its files are updated in
/// place when the operator renews a certificate; the server re-reads them.
fn tls_volume(cluster: &TitanCluster, names: &Names) -> Option<Volume> {
    cluster.spec.tls_enabled().then(|| Volume {
        name: "tls".to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(names.tls_secret()),
            default_mode: Some(TLS_FILE_MODE),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    })
}

fn server_mounts(cluster: &TitanCluster) -> Vec<VolumeMount> {
    let mut mounts = vec![VolumeMount {
        name: "data".to_string(),
        mount_path: DATA_DIR.to_string(),
        ..VolumeMount::default()
    }];
    if cluster.spec.tls_enabled() {
        mounts.push(VolumeMount {
            name: "tls".to_string(),
            mount_path: TLS_DIR.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    mounts
}

/// `spec.tls`: the member's own certificate (it must exist: the operator
/// writes it before the pod can start, and the kubelet may lag a little, so
/// a missing file fails the container, which is retried), then the server's
/// TLS flags. The plaintext TCP port listens on loopback only, and only the
/// operator's certificate may change the cluster through Admin (a member's
/// certificate is admitted to the peer port, but cannot remove its peers).
/// With `client_auth` the gRPC port also requires a certificate of the
/// cluster CA.
fn tls_script(client_auth: bool) -> String {
    let client_ca = if client_auth {
        " \\\n  --client-tls-ca \"$ca\""
    } else {
        ""
    };
    format!(
        r#"cert="{TLS_DIR}/${{POD_NAME}}.crt"; key="{TLS_DIR}/${{POD_NAME}}.key"; ca="{TLS_DIR}/ca.crt"
if [ ! -s "$cert" ] || [ ! -s "$key" ]; then
  echo "no certificate for ${{POD_NAME}} in {TLS_DIR} yet (Secret ${{TLS_SECRET}})" >&2; exit 1
fi
set -- "$@" --peer-tls-cert "$cert" --peer-tls-key "$key" --peer-tls-ca "$ca" \
  --client-tls-cert "$cert" --client-tls-key "$key" --client-listen-addr 127.0.0.1 \
  --admin-allowed-cn {OPERATOR_CN}{client_ca}
"#
    )
}

/// A non-root container's context under the `restricted` profile: no
/// privilege escalation, no capability, a read-only root filesystem (the
/// pod sets the user and the seccomp profile).
pub(super) fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// Shell entry point. Before the cluster is bootstrapped, an initial member
/// starts with `--peers` (the other initial members); every other pod, and any
/// pod after bootstrap (e.g. one whose PVC was lost), starts with `--join` so it
/// can never form a second cluster under an old identity. `BOOTSTRAPPED` and
/// `INITIAL_PEERS` come from the ConfigMap at container start.
fn startup_script(cluster: &TitanCluster, names: &Names) -> String {
    let raft = &cluster.spec.raft;
    let peers_svc = names.peers_service();
    // Only for a cluster restored from a backup, so that other clusters keep
    // their pod template.
    let (restore_flag, restore_done) = if cluster.spec.bootstrap.is_some() {
        (restore::restore_flag_script(), restore::cleanup_script())
    } else {
        (String::new(), String::new())
    };
    let tls = if cluster.spec.tls_enabled() {
        tls_script(cluster.spec.client_auth())
    } else {
        String::new()
    };
    format!(
        r#"set -eu
host="${{POD_NAME}}.{peers_svc}.${{POD_NAMESPACE}}.svc"
set -- --id "${{POD_NAME}}" --port {PEER_PORT} --client-port {CLIENT_PORT} --grpc-port {GRPC_PORT} \
  --http-port {HTTP_PORT} --data-dir {DATA_DIR} \
  --advertise-peer-addr "${{host}}:{PEER_PORT}" --advertise-client-addr "${{host}}:{CLIENT_PORT}" \
  --advertise-grpc-addr "${{host}}:{GRPC_PORT}" \
  --election-timeout-ms {election} --heartbeat-ms {heartbeat} --snapshot-threshold {threshold}
{tls}{restore_done}if [ "${{BOOTSTRAPPED}}" != "true" ]; then
  member=no; others=""
  IFS=,
  for p in ${{INITIAL_PEERS}}; do
    case "$p" in "${{POD_NAME}}":*) member=yes ;; *) others="${{others:+$others,}}$p" ;; esac
  done
  unset IFS
  if [ "$member" = yes ]; then
{restore_flag}    if [ -n "$others" ]; then exec titan-server "$@" --peers "$others"; fi
    exec titan-server "$@"
  fi
fi
exec titan-server "$@" --join
"#,
        election = raft.election_timeout_ms,
        heartbeat = raft.heartbeat_ms,
        threshold = raft.snapshot_threshold_entries,
    )
}

/// An environment variable from a field of the pod.
pub(super) fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    }
}

/// An environment variable from the cluster's ConfigMap.
pub(super) fn config_env(names: &Names, name: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: names.configmap(),
                key: key.to_string(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    }
}

/// The pod's name and namespace, and the bootstrap state of the cluster.
pub(super) fn identity_env(names: &Names) -> Vec<EnvVar> {
    vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        config_env(names, "BOOTSTRAPPED", BOOTSTRAPPED_KEY),
        config_env(names, "INITIAL_PEERS", INITIAL_PEERS_KEY),
    ]
}

fn env(cluster: &TitanCluster, names: &Names) -> Vec<EnvVar> {
    let mut env = identity_env(names);
    // Only when set, so that clusters without them keep their pod template.
    if cluster.spec.tls_enabled() {
        env.push(EnvVar {
            name: "TLS_SECRET".to_string(),
            value: Some(names.tls_secret()),
            value_from: None,
        });
    }
    if let Some(level) = cluster.spec.log_level {
        env.push(EnvVar {
            name: "TITAN_LOG_LEVEL".to_string(),
            value: Some(level.as_str().to_string()),
            value_from: None,
        });
    }
    env
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: port,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

/// preStop: keep serving for [`PRE_STOP_DRAIN_SECONDS`] while the endpoint
/// removal reaches every kube-proxy (an exec `sleep`: the `sleep` lifecycle
/// action needs Kubernetes 1.29).
fn drain_before_stop() -> Lifecycle {
    Lifecycle {
        pre_stop: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec![
                    "sleep".to_string(),
                    PRE_STOP_DRAIN_SECONDS.to_string(),
                ]),
            }),
            ..LifecycleHandler::default()
        }),
        post_start: None,
        stop_signal: None,
    }
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("http".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The user's affinity, plus a preferred anti-affinity spreading members over
/// nodes unless the user set their own pod anti-affinity.
fn affinity(user: Option<Affinity>, names: &Names) -> Affinity {
    let mut affinity = user.unwrap_or_default();
    if affinity.pod_anti_affinity.is_none() {
        affinity.pod_anti_affinity = Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: "kubernetes.io/hostname".to_string(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(names.selector_labels()),
                            ..LabelSelector::default()
                        }),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            required_during_scheduling_ignored_during_execution: None,
        });
    }
    affinity
}

fn data_claim(cluster: &TitanCluster, names: &Names) -> PersistentVolumeClaim {
    let storage = &cluster.spec.storage;
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".to_string()),
            labels: Some(names.labels()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(storage.size.clone()),
                )])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn pod_spec(spec: serde_json::Value) -> PodSpec {
        fixtures::pod_spec(spec)
    }

    /// `spec.resources` wins as given (`{}` included); unset, the defaults,
    /// unless the running StatefulSet has none at all.
    #[test]
    fn resources_are_the_spec_else_the_defaults_else_none_for_old_clusters() {
        let given = serde_json::json!({"limits": {"memory": "4Gi"}});
        let defaults = serde_json::json!({
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"}
        });
        let cases = [
            (serde_json::json!({}), false, Some(defaults)),
            (serde_json::json!({}), true, None),
            (
                serde_json::json!({"resources": given}),
                false,
                Some(given.clone()),
            ),
            (
                serde_json::json!({"resources": given}),
                true,
                Some(given.clone()),
            ),
            (
                serde_json::json!({"resources": {}}),
                false,
                Some(serde_json::json!({})),
            ),
        ];
        for (spec, keep_no_resources, want) in cases {
            let cluster = fixtures::cluster(spec.clone());
            let input = BuildInput {
                initial_replicas: 3,
                cluster_id: "id".to_string(),
                bootstrapped: true,
                statefulset_replicas: 3,
                voters: 3,
                keep_no_resources,
            };
            let sts = statefulset(&cluster, &Names::of(&cluster), &input);
            let pod = sts.spec.template.spec.unwrap_or_default();
            let got = pod.containers[0]
                .resources
                .as_ref()
                .map(|r| serde_json::to_value(r).unwrap_or_default());
            assert_eq!(got, want, "{spec} keep_no_resources={keep_no_resources}");
        }
    }

    /// Database pods get no API token and the runtime's default seccomp
    /// profile, whatever the storage settings.
    #[test]
    fn database_pods_have_no_token_and_runtime_default_seccomp() {
        for spec in [
            serde_json::json!({"replicas": 3}),
            serde_json::json!({"replicas": 3, "storage": {"fixPermissions": true}}),
        ] {
            let pod = pod_spec(spec.clone());
            assert_eq!(pod.automount_service_account_token, Some(false), "{spec}");
            let seccomp = pod.security_context.and_then(|s| s.seccomp_profile);
            assert_eq!(seccomp.map(|s| s.type_).as_deref(), Some("RuntimeDefault"));
        }
    }

    /// `storage.fixPermissions` adds exactly one init container that chowns
    /// the data dir as root with only CAP_CHOWN; without it there is none.
    #[test]
    fn fix_permissions_adds_a_chown_only_init_container() {
        let cases = [
            (serde_json::json!({"replicas": 3}), false),
            (
                serde_json::json!({"storage": {"fixPermissions": false}}),
                false,
            ),
            (
                serde_json::json!({"storage": {"fixPermissions": true}}),
                true,
            ),
        ];
        for (spec, want) in cases {
            let init = pod_spec(spec.clone()).init_containers.unwrap_or_default();
            assert_eq!(init.len(), usize::from(want), "{spec}");
            let Some(c) = init.first() else { continue };
            assert_eq!(
                c.command.as_deref(),
                Some(
                    &[
                        "chown".to_string(),
                        "65532:65532".to_string(),
                        DATA_DIR.to_string()
                    ][..]
                )
            );
            let sc = c.security_context.clone().unwrap_or_default();
            assert_eq!(sc.run_as_user, Some(0));
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            let caps = sc.capabilities.unwrap_or_default();
            assert_eq!(caps.add, Some(vec!["CHOWN".to_string()]));
            assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
        }
    }

    /// The TLS lines of the startup script, run by a real `/bin/sh` with
    /// the mount point moved to a temporary directory: with the member's
    /// files the server gets every TLS flag; without them the container
    /// fails naming the Secret.
    #[test]
    fn tls_script_passes_the_members_files_or_fails_naming_the_secret() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let tls_dir = dir.path().display().to_string();
        let script = |client_auth: bool| {
            format!(
                "set -eu\nset -- --id x\n{}printf '%s|' \"$@\"\n",
                tls_script(client_auth).replace(TLS_DIR, &tls_dir)
            )
        };
        let (plain, mutual) = (script(false), script(true));
        let run_with = |script: &str, pod: &str| {
            std::process::Command::new("/bin/sh")
                .args(["-c", script])
                .env("POD_NAME", pod)
                .env("TLS_SECRET", "demo-tls")
                .output()
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let run = |pod: &str| run_with(&plain, pod);
        for name in ["demo-0.crt", "demo-0.key", "ca.crt"] {
            std::fs::write(dir.path().join(name), "pem").unwrap_or_else(|e| panic!("{e}"));
        }
        let out = run("demo-0");
        let args = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args}");
        let want = format!(
            "--id|x|--peer-tls-cert|{tls_dir}/demo-0.crt|--peer-tls-key|{tls_dir}/demo-0.key|\
             --peer-tls-ca|{tls_dir}/ca.crt|--client-tls-cert|{tls_dir}/demo-0.crt|\
             --client-tls-key|{tls_dir}/demo-0.key|--client-listen-addr|127.0.0.1|\
             --admin-allowed-cn|titan-operator|"
        );
        assert_eq!(args, want);
        // spec.tls.clientAuth: the gRPC port requires the cluster CA's
        // certificates too.
        let out = run_with(&mutual, "demo-0");
        assert!(out.status.success());
        let args = String::from_utf8_lossy(&out.stdout);
        assert_eq!(args, format!("{want}--client-tls-ca|{tls_dir}/ca.crt|"));

        let out = run("demo-1");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started without a certificate");
        assert!(out.stdout.is_empty(), "the server was started");
        assert!(
            err.contains("no certificate for demo-1") && err.contains("demo-tls"),
            "{err}"
        );
    }
}
