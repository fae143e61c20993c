//! Pod Security Standards, `restricted` profile, against what the operator
//! and the chart render: the database StatefulSet's pod template for a
//! table of specs, the opt-in `fix-permissions` init container (which
//! `restricted` must refuse, and `baseline` admit), and the operator
//! Deployment of `manifests/operator.yaml` (the Helm chart rendered with
//! default values; `scripts/ci/check-packaging.sh` proves the two equal).
//! The checker itself (`pod_security/restricted.rs`) is proven by one
//! negative table row per rule.

#[path = "pod_security/restricted.rs"]
mod restricted;

use std::path::PathBuf;

use kube::api::ObjectMeta;
use serde_json::{Value, json};
use titan_operator::builders::{self, BuildInput, Names};
use titan_operator::crd::{TitanCluster, TitanClusterSpec};

use restricted::{Rule, Violation, check};

fn cluster(spec_json: Value) -> TitanCluster {
    let spec: TitanClusterSpec = serde_json::from_value(spec_json)
        .unwrap_or_else(|e| panic!("fixture spec must parse: {e}"));
    TitanCluster {
        metadata: ObjectMeta {
            name: Some("demo".to_string()),
            namespace: Some("prod".to_string()),
            uid: Some("8c1f6a52-0000-4000-8000-000000000001".to_string()),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

/// The database pod template as JSON, as the StatefulSet carries it.
fn database_pod(spec_json: Value) -> Value {
    let c = cluster(spec_json);
    let input = BuildInput {
        initial_replicas: 3,
        cluster_id: "id".to_string(),
        bootstrapped: false,
        statefulset_replicas: 3,
        voters: 3,
        keep_no_resources: false,
    };
    let sts = builders::statefulset(&c, &Names::of(&c), &input);
    serde_json::to_value(&sts.spec.template).unwrap_or_else(|e| panic!("serializing: {e}"))
}

fn violation(rule: Rule, at: &str) -> Violation {
    Violation {
        rule,
        at: at.to_string(),
    }
}

#[test]
fn database_pods_pass_restricted_with_default_and_custom_settings() {
    let specs = [
        json!({}),
        json!({"replicas": 1, "storage": {"fixPermissions": false}}),
        json!({"resources": {"limits": {"cpu": "2", "memory": "4Gi"}}, "logLevel": "debug",
            "podLabels": {"team": "a"}, "podAnnotations": {"x": "y"},
            "tolerations": [{"key": "k", "operator": "Exists"}],
            "networkPolicy": {"enabled": true}}),
        // A cluster restored from a backup: its restore-backup init container too.
        json!({"bootstrap": {"fromBackup": {"s3": {"bucket": "b", "key": "k",
            "credentialsSecret": "s3"}}}}),
    ];
    for spec in specs {
        assert_eq!(check(&database_pod(spec.clone())), vec![], "{spec}");
    }
}

/// `storage.fixPermissions` runs its init container as root with
/// `CAP_CHOWN`: `restricted` refuses exactly that, `baseline` admits it (as
/// the CRD field and the README say).
#[test]
fn fix_permissions_init_container_violates_restricted_but_not_baseline() {
    let found = check(&database_pod(json!({"storage": {"fixPermissions": true}})));
    let at = "initContainers[fix-permissions]";
    assert_eq!(
        found,
        vec![
            violation(Rule::RunAsNonRoot, at),
            violation(Rule::RunAsNonRootUser, at),
            violation(Rule::Capabilities, at),
        ]
    );
    assert!(found.iter().all(|v| v.rule.restricted_only()), "{found:?}");
}

#[test]
fn operator_deployment_rendered_by_the_chart_passes_restricted() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/operator.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("bad YAML in {}: {e}", path.display()));
    let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    assert_eq!(deployments.len(), 1, "one operator Deployment");
    let template = &deployments[0]["spec"]["template"];
    assert!(template["spec"]["containers"].is_array(), "{template}");
    assert_eq!(check(template), vec![]);
}

/// A pod that passes `restricted`: what each negative row mutates.
fn compliant_pod() -> Value {
    json!({
        "metadata": {"annotations": {}},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "ports": [{"containerPort": 80}],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
            "volumes": [{"name": "cfg", "configMap": {"name": "x"}}]
        }
    })
}

/// Sets the value at JSON pointer `pointer`, creating objects on the way
/// (and appending when an array index equals the length).
fn set(doc: &mut Value, pointer: &str, value: Value) {
    let mut at = doc;
    let tokens: Vec<String> = pointer
        .trim_start_matches('/')
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let (last, parents) = tokens
        .split_last()
        .unwrap_or_else(|| panic!("empty pointer"));
    for token in parents {
        at = step(at, token);
    }
    match at {
        Value::Array(items) => match last.parse::<usize>() {
            Ok(i) if i == items.len() => items.push(value),
            Ok(i) if i < items.len() => items[i] = value,
            _ => panic!("bad index {last} in {pointer}"),
        },
        other => {
            if !other.is_object() {
                *other = json!({});
            }
            other[last.as_str()] = value;
        }
    }
}

fn step<'a>(at: &'a mut Value, token: &str) -> &'a mut Value {
    match at {
        Value::Array(items) => {
            let i: usize = token
                .parse()
                .unwrap_or_else(|e| panic!("index {token}: {e}"));
            &mut items[i]
        }
        other => {
            if !other.is_object() {
                *other = json!({});
            }
            &mut other[token]
        }
    }
}

/// Every rule variant, so the table below must prove each one.
const ALL_RULES: [Rule; 17] = [
    Rule::HostProcess,
    Rule::HostNamespaces,
    Rule::Privileged,
    Rule::BaselineCapabilities,
    Rule::HostPathVolumes,
    Rule::HostPorts,
    Rule::AppArmor,
    Rule::SeLinux,
    Rule::ProcMount,
    Rule::BaselineSeccomp,
    Rule::Sysctls,
    Rule::VolumeTypes,
    Rule::PrivilegeEscalation,
    Rule::RunAsNonRoot,
    Rule::RunAsNonRootUser,
    Rule::Seccomp,
    Rule::Capabilities,
];

/// Negative rows, and the allowed values next to them: `what | edits |
/// violations`. Edits (`;`-separated) set a JSON pointer of the compliant
/// pod to a JSON value (`null` removes); violations (`;`-separated) are
/// `Rule@where`, exactly the ones `check` must report. A text table, so
/// that each row stays one line.
const ROWS: &str = r#"
compliant |  |
hostNetwork | /spec/hostNetwork=true | HostNamespaces@pod
hostPID | /spec/hostPID=true | HostNamespaces@pod
hostIPC | /spec/hostIPC=true | HostNamespaces@pod
hostProcess | /spec/securityContext/windowsOptions/hostProcess=true | HostProcess@pod
privileged | /spec/containers/0/securityContext/privileged=true | Privileged@containers[c]
add SYS_ADMIN | /spec/containers/0/securityContext/capabilities/add=["SYS_ADMIN"] | BaselineCapabilities@containers[c]; Capabilities@containers[c]
add CHOWN | /spec/containers/0/securityContext/capabilities/add=["CHOWN"] | Capabilities@containers[c]
add NET_BIND_SERVICE | /spec/containers/0/securityContext/capabilities/add=["NET_BIND_SERVICE"] |
drop nothing | /spec/containers/0/securityContext/capabilities/drop=[] | Capabilities@containers[c]
hostPath volume | /spec/volumes/1={"name":"h","hostPath":{"path":"/"}} | HostPathVolumes@volumes[h]; VolumeTypes@volumes[h]
nfs volume | /spec/volumes/1={"name":"n","nfs":{"server":"s","path":"/"}} | VolumeTypes@volumes[n]
emptyDir volume | /spec/volumes/1={"name":"e","emptyDir":{}} |
hostPort | /spec/containers/0/ports/0/hostPort=80 | HostPorts@containers[c]
hostPort 0 | /spec/containers/0/ports/0/hostPort=0 |
AppArmor annotation unconfined | /metadata/annotations/container.apparmor.security.beta.kubernetes.io~1c="unconfined" | AppArmor@annotations[container.apparmor.security.beta.kubernetes.io/c]
AppArmor annotation runtime/default | /metadata/annotations/container.apparmor.security.beta.kubernetes.io~1c="runtime/default" |
AppArmor field Unconfined | /spec/containers/0/securityContext/appArmorProfile/type="Unconfined" | AppArmor@containers[c]
SELinux type spc_t | /spec/securityContext/seLinuxOptions/type="spc_t" | SeLinux@pod
SELinux user | /spec/containers/0/securityContext/seLinuxOptions/user="root" | SeLinux@containers[c]
SELinux container_t | /spec/securityContext/seLinuxOptions/type="container_t" |
procMount Unmasked | /spec/containers/0/securityContext/procMount="Unmasked" | ProcMount@containers[c]
pod seccomp Unconfined | /spec/securityContext/seccompProfile/type="Unconfined" | BaselineSeccomp@pod; Seccomp@pod; Seccomp@containers[c]
container seccomp Unconfined | /spec/containers/0/securityContext/seccompProfile/type="Unconfined" | BaselineSeccomp@containers[c]; Seccomp@containers[c]
no seccomp anywhere | /spec/securityContext/seccompProfile=null | Seccomp@containers[c]
seccomp on the container only | /spec/securityContext/seccompProfile=null; /spec/containers/0/securityContext/seccompProfile/type="Localhost" |
unsafe sysctl | /spec/securityContext/sysctls=[{"name":"kernel.msgmax","value":"1"}] | Sysctls@sysctls[kernel.msgmax]
safe sysctl | /spec/securityContext/sysctls=[{"name":"net.ipv4.tcp_syncookies","value":"1"}] |
privilege escalation allowed | /spec/containers/0/securityContext/allowPrivilegeEscalation=true | PrivilegeEscalation@containers[c]
privilege escalation unset | /spec/containers/0/securityContext/allowPrivilegeEscalation=null | PrivilegeEscalation@containers[c]
runAsNonRoot unset | /spec/securityContext/runAsNonRoot=null | RunAsNonRoot@containers[c]
runAsNonRoot false on the pod | /spec/securityContext/runAsNonRoot=false | RunAsNonRoot@pod; RunAsNonRoot@containers[c]
runAsNonRoot false on the container | /spec/containers/0/securityContext/runAsNonRoot=false | RunAsNonRoot@containers[c]
runAsNonRoot on the container only | /spec/securityContext/runAsNonRoot=null; /spec/containers/0/securityContext/runAsNonRoot=true |
runAsUser 0 on the pod | /spec/securityContext/runAsUser=0 | RunAsNonRootUser@pod
runAsUser 0 on the container | /spec/containers/0/securityContext/runAsUser=0 | RunAsNonRootUser@containers[c]
init containers are checked | /spec/initContainers=[{"name":"i"}] | PrivilegeEscalation@initContainers[i]; Capabilities@initContainers[i]
ephemeral containers are checked | /spec/ephemeralContainers=[{"name":"e","securityContext":{"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]},"privileged":true}}] | Privileged@ephemeralContainers[e]
"#;

fn rule_named(name: &str) -> Rule {
    ALL_RULES
        .into_iter()
        .find(|r| format!("{r:?}") == name)
        .unwrap_or_else(|| panic!("no rule {name}"))
}

/// `a; b; c` without empty parts.
fn parts(field: &str) -> impl Iterator<Item = &str> {
    field.split(';').map(str::trim).filter(|p| !p.is_empty())
}

/// Applies one row's edits to the compliant pod; returns it and the
/// violations the row expects, sorted.
fn row_case(edits: &str, violations: &str) -> (Value, Vec<Violation>) {
    let mut pod = compliant_pod();
    for edit in parts(edits) {
        let (pointer, value) = edit
            .split_once('=')
            .unwrap_or_else(|| panic!("edit {edit:?} is not POINTER=JSON"));
        let value: Value =
            serde_json::from_str(value).unwrap_or_else(|e| panic!("edit {edit:?}: {e}"));
        set(&mut pod, pointer, value);
    }
    let mut want: Vec<Violation> = parts(violations)
        .map(|v| {
            let (rule, at) = v
                .split_once('@')
                .unwrap_or_else(|| panic!("violation {v:?} is not Rule@where"));
            violation(rule_named(rule), at)
        })
        .collect();
    want.sort();
    (pod, want)
}

#[test]
fn checker_catches_each_rule_of_the_restricted_profile() {
    let mut proven = std::collections::BTreeSet::new();
    for line in ROWS.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        let [what, edits, violations] = fields[..] else {
            panic!("row {line:?} is not `what | edits | violations`");
        };
        let (pod, want) = row_case(edits, violations);
        assert_eq!(check(&pod), want, "{what}: {pod}");
        proven.extend(want.iter().map(|v| v.rule));
    }
    let unproven: Vec<Rule> = ALL_RULES
        .into_iter()
        .filter(|r| !proven.contains(r))
        .collect();
    assert!(
        unproven.is_empty(),
        "rules without a negative row: {unproven:?}"
    );
}
