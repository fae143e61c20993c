//! A pure checker of the Kubernetes Pod Security Standards, `restricted`
//! profile (which includes every `baseline` rule), over a rendered pod
//! template as JSON: `{"metadata": ..., "spec": ...}`.
//!
//! It follows the rules as the standard states them
//! (kubernetes.io/docs/concepts/security/pod-security-standards), field by
//! field, so that tests can prove what the operator and the chart render
//! would be admitted by a namespace labelled
//! `pod-security.kubernetes.io/enforce: restricted`. Every rule has a
//! negative table row in `pod_security.rs`.

use serde_json::Value;

/// One rule of the standard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    /// baseline: `windowsOptions.hostProcess` must not be true.
    HostProcess,
    /// baseline: no `hostNetwork`, `hostPID` or `hostIPC`.
    HostNamespaces,
    /// baseline: no privileged container.
    Privileged,
    /// baseline: capabilities added only from the baseline list.
    BaselineCapabilities,
    /// baseline: no `hostPath` volume.
    HostPathVolumes,
    /// baseline: no `hostPort` other than 0.
    HostPorts,
    /// baseline: AppArmor only `runtime/default` / `localhost/*`.
    AppArmor,
    /// baseline: SELinux type from the container types, no user or role.
    SeLinux,
    /// baseline: `procMount` only `Default`.
    ProcMount,
    /// baseline: seccomp never `Unconfined`.
    BaselineSeccomp,
    /// baseline: only the safe sysctls.
    Sysctls,
    /// restricted: only the listed volume types.
    VolumeTypes,
    /// restricted: `allowPrivilegeEscalation: false` on every container.
    PrivilegeEscalation,
    /// restricted: `runAsNonRoot: true` (pod level or every container).
    RunAsNonRoot,
    /// restricted: `runAsUser` never 0.
    RunAsNonRootUser,
    /// restricted: seccomp `RuntimeDefault` or `Localhost` (pod level or every container).
    Seccomp,
    /// restricted: drop `ALL`, add at most `NET_BIND_SERVICE`.
    Capabilities,
}

impl Rule {
    /// True for the rules `restricted` adds on top of `baseline`.
    pub fn restricted_only(self) -> bool {
        self >= Rule::VolumeTypes
    }
}

/// A rule broken at `at` (`pod`, `volumes[NAME]`, `containers[NAME]`, ...).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// The rule.
    pub rule: Rule,
    /// Where.
    pub at: String,
}

const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
const SELINUX_TYPES: &[&str] = &[
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
const RESTRICTED_VOLUME_TYPES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];
const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

/// Every violation of `restricted` in the pod template `template`, sorted.
pub fn check(template: &Value) -> Vec<Violation> {
    let spec = &template["spec"];
    let pod_sc = &spec["securityContext"];
    let mut out = Vec::new();
    let mut flag = |rule: Rule, at: &str| {
        out.push(Violation {
            rule,
            at: at.to_string(),
        })
    };
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[field] == true {
            flag(Rule::HostNamespaces, "pod");
        }
    }
    check_annotations(&template["metadata"], &mut flag);
    check_pod_context(pod_sc, &mut flag);
    check_volumes(spec, &mut flag);
    for (at, container) in containers(spec) {
        check_container(&at, container, pod_sc, &mut flag);
    }
    out.sort();
    out
}

/// Every container, init container and ephemeral container with its place.
fn containers(spec: &Value) -> Vec<(String, &Value)> {
    let mut all = Vec::new();
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or("?");
            all.push((format!("{list}[{name}]"), c));
        }
    }
    all
}

fn check_annotations(metadata: &Value, flag: &mut impl FnMut(Rule, &str)) {
    let Some(annotations) = metadata["annotations"].as_object() else {
        return;
    };
    for (key, value) in annotations {
        let allowed = value
            .as_str()
            .is_some_and(|v| v == "runtime/default" || v.starts_with("localhost/"));
        if key.starts_with(APPARMOR_ANNOTATION_PREFIX) && !allowed {
            flag(Rule::AppArmor, &format!("annotations[{key}]"));
        }
    }
}

/// The rules a pod-level or a container-level security context share.
fn check_context(sc: &Value, at: &str, flag: &mut impl FnMut(Rule, &str)) {
    if sc["windowsOptions"]["hostProcess"] == true {
        flag(Rule::HostProcess, at);
    }
    let apparmor = &sc["appArmorProfile"]["type"];
    if !apparmor.is_null() && !matches!(apparmor.as_str(), Some("RuntimeDefault" | "Localhost")) {
        flag(Rule::AppArmor, at);
    }
    let selinux = &sc["seLinuxOptions"];
    let type_ok = selinux["type"]
        .as_str()
        .is_none_or(|t| t.is_empty() || SELINUX_TYPES.contains(&t));
    let no_user_role = [&selinux["user"], &selinux["role"]]
        .iter()
        .all(|v| v.as_str().is_none_or(str::is_empty));
    if !(type_ok && no_user_role) {
        flag(Rule::SeLinux, at);
    }
    if sc["seccompProfile"]["type"] == "Unconfined" {
        flag(Rule::BaselineSeccomp, at);
    }
    if sc["runAsUser"] == 0 {
        flag(Rule::RunAsNonRootUser, at);
    }
}

fn check_pod_context(pod_sc: &Value, flag: &mut impl FnMut(Rule, &str)) {
    check_context(pod_sc, "pod", flag);
    for sysctl in pod_sc["sysctls"].as_array().into_iter().flatten() {
        let name = sysctl["name"].as_str().unwrap_or_default();
        if !SAFE_SYSCTLS.contains(&name) {
            flag(Rule::Sysctls, &format!("sysctls[{name}]"));
        }
    }
    if !pod_sc["runAsNonRoot"].is_null() && pod_sc["runAsNonRoot"] != true {
        flag(Rule::RunAsNonRoot, "pod");
    }
    let seccomp = &pod_sc["seccompProfile"]["type"];
    if !seccomp.is_null() && !seccomp_allowed(seccomp) {
        flag(Rule::Seccomp, "pod");
    }
}

fn seccomp_allowed(profile_type: &Value) -> bool {
    matches!(profile_type.as_str(), Some("RuntimeDefault" | "Localhost"))
}

fn check_volumes(spec: &Value, flag: &mut impl FnMut(Rule, &str)) {
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        let name = volume["name"].as_str().unwrap_or("?");
        let at = format!("volumes[{name}]");
        let sources = volume.as_object().into_iter().flatten().map(|(k, _)| k);
        for source in sources.filter(|k| *k != "name") {
            if source == "hostPath" {
                flag(Rule::HostPathVolumes, &at);
            }
            if !RESTRICTED_VOLUME_TYPES.contains(&source.as_str()) {
                flag(Rule::VolumeTypes, &at);
            }
        }
    }
}

fn check_container(at: &str, c: &Value, pod_sc: &Value, flag: &mut impl FnMut(Rule, &str)) {
    let sc = &c["securityContext"];
    check_context(sc, at, flag);
    if sc["privileged"] == true {
        flag(Rule::Privileged, at);
    }
    if !sc["procMount"].is_null() && sc["procMount"] != "Default" {
        flag(Rule::ProcMount, at);
    }
    let host_port = |p: &Value| p["hostPort"].as_i64().is_some_and(|h| h != 0);
    if c["ports"].as_array().into_iter().flatten().any(host_port) {
        flag(Rule::HostPorts, at);
    }
    if sc["allowPrivilegeEscalation"] != false {
        flag(Rule::PrivilegeEscalation, at);
    }
    let non_root = if sc["runAsNonRoot"].is_null() {
        &pod_sc["runAsNonRoot"]
    } else {
        &sc["runAsNonRoot"]
    };
    if non_root != true {
        flag(Rule::RunAsNonRoot, at);
    }
    let seccomp = if sc["seccompProfile"].is_null() {
        &pod_sc["seccompProfile"]["type"]
    } else {
        &sc["seccompProfile"]["type"]
    };
    if !seccomp_allowed(seccomp) {
        flag(Rule::Seccomp, at);
    }
    check_capabilities(at, &sc["capabilities"], flag);
}

fn check_capabilities(at: &str, caps: &Value, flag: &mut impl FnMut(Rule, &str)) {
    let names = |field: &str| -> Vec<String> {
        caps[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let added = names("add");
    if added
        .iter()
        .any(|a| !BASELINE_CAPABILITIES.contains(&a.as_str()))
    {
        flag(Rule::BaselineCapabilities, at);
    }
    let drops_all = names("drop").iter().any(|d| d == "ALL");
    if !drops_all || added.iter().any(|a| a != "NET_BIND_SERVICE") {
        flag(Rule::Capabilities, at);
    }
}
