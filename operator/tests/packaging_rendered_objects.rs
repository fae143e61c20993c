//! The committed install manifests parse into k8s-openapi types and say what
//! the packaging promises: `manifests/operator.yaml` (the Helm chart rendered with
//! default values), `manifests/crd.yaml` and its chart copy, and the example
//! TitanCluster. `scripts/ci/check-packaging.sh` separately proves that these files
//! equal what they are generated from, so checking them checks the chart.
//!
//! Every object must also survive a round trip through its typed form unchanged:
//! a misspelt or misplaced field would be dropped by the typed deserializer and
//! show up here as a difference, long before a cluster rejects it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use titan_operator::crd::TitanCluster;

/// The objects of `manifests/operator.yaml`, each parsed into its k8s-openapi type.
struct OperatorManifest {
    namespace: Namespace,
    service_account: ServiceAccount,
    cluster_role: ClusterRole,
    cluster_role_binding: ClusterRoleBinding,
    role: Role,
    role_binding: RoleBinding,
    deployment: Deployment,
    service: Service,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn read_repo_file(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every non-empty YAML document of a (multi-document) file.
fn documents(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("bad YAML document: {e}"))
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

fn kind_of(doc: &Value) -> &str {
    doc.get("kind")
        .and_then(Value::as_str)
        .unwrap_or("<no kind>")
}

/// Collects the paths where two YAML trees differ.
fn differences(expected: &Value, actual: &Value, path: &str, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, e_val) in e {
                let child = format!("{path}.{key}");
                match a.get(key) {
                    Some(a_val) => differences(e_val, a_val, &child, out),
                    None => out.push(format!("{child} was dropped (unknown field?)")),
                }
            }
            for key in a.keys().filter(|k| !e.contains_key(*k)) {
                out.push(format!("{path}.{key} appeared"));
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (e_val, a_val)) in e.iter().zip(a).enumerate() {
                differences(e_val, a_val, &format!("{path}[{i}]"), out);
            }
        }
        _ if expected == actual => {}
        _ => out.push(format!("{path}: {expected:?} became {actual:?}")),
    }
}

/// Parses a document into `T` and checks that serializing it back loses nothing.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let kind = kind_of(doc);
    let parsed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{kind} does not parse into its k8s-openapi type: {e}"));
    let back = serde_json::to_value(&parsed)
        .unwrap_or_else(|e| panic!("{kind} does not serialize back: {e}"));
    let mut diffs = Vec::new();
    differences(doc, &back, kind, &mut diffs);
    assert!(
        diffs.is_empty(),
        "{kind} changes in a typed round trip: {diffs:#?}"
    );
    parsed
}

/// The single object of kind `kind`, parsed as `T`.
fn only<T: DeserializeOwned + Serialize>(docs: &[Value], kind: &str) -> T {
    let matching: Vec<&Value> = docs.iter().filter(|d| kind_of(d) == kind).collect();
    assert_eq!(matching.len(), 1, "expected exactly one {kind}");
    typed(matching[0])
}

fn operator_manifest() -> OperatorManifest {
    let docs = documents(&read_repo_file("manifests/operator.yaml"));
    let kinds: Vec<&str> = docs.iter().map(kind_of).collect();
    let known = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
    ];
    assert!(
        kinds.iter().all(|k| known.contains(k)),
        "unexpected kinds in manifests/operator.yaml: {kinds:?}"
    );
    OperatorManifest {
        namespace: only(&docs, "Namespace"),
        service_account: only(&docs, "ServiceAccount"),
        cluster_role: only(&docs, "ClusterRole"),
        cluster_role_binding: only(&docs, "ClusterRoleBinding"),
        role: only(&docs, "Role"),
        role_binding: only(&docs, "RoleBinding"),
        deployment: only(&docs, "Deployment"),
        service: only(&docs, "Service"),
    }
}

fn operator_container(deployment: &Deployment) -> Container {
    let containers = deployment
        .spec
        .template
        .spec
        .as_ref()
        .map(|p| p.containers.clone())
        .unwrap_or_default();
    assert_eq!(containers.len(), 1, "the operator pod has one container");
    containers[0].clone()
}

#[test]
fn operator_manifest_objects_parse_into_k8s_types_without_losing_fields() {
    let m = operator_manifest();
    let ns = m.namespace.metadata.name.clone().unwrap_or_default();
    assert_eq!(ns, "titan-system");
    for (what, object_ns) in [
        ("ServiceAccount", &m.service_account.metadata.namespace),
        ("Role", &m.role.metadata.namespace),
        ("RoleBinding", &m.role_binding.metadata.namespace),
        ("Deployment", &m.deployment.metadata.namespace),
        ("Service", &m.service.metadata.namespace),
    ] {
        assert_eq!(object_ns.as_deref(), Some(ns.as_str()), "{what} namespace");
    }
}

#[test]
fn operator_deployment_runs_non_root_read_only_without_capabilities() {
    let m = operator_manifest();
    let pod = m.deployment.spec.template.spec.unwrap_or_default();
    let pod_sc = pod.security_context.unwrap_or_default();
    assert_eq!(pod_sc.run_as_non_root, Some(true));
    assert_ne!(pod_sc.run_as_user, Some(0));
    assert_eq!(
        pod_sc.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault")
    );
    let sc = pod.containers[0]
        .security_context
        .clone()
        .unwrap_or_default();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let dropped = sc.capabilities.and_then(|c| c.drop).unwrap_or_default();
    assert_eq!(dropped, vec!["ALL".to_string()]);
}

#[test]
fn operator_probes_and_resources_use_the_declared_metrics_port() {
    let m = operator_manifest();
    let c = operator_container(&m.deployment);
    let ports: Vec<String> = c
        .ports
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    assert_eq!(ports, vec!["metrics".to_string()]);
    for (which, probe) in [
        ("liveness", c.liveness_probe),
        ("readiness", c.readiness_probe),
    ] {
        let get = probe
            .and_then(|p| p.http_get)
            .unwrap_or_else(|| panic!("{which} probe is HTTP"));
        assert_eq!(get.path.as_deref(), Some("/healthz"), "{which} path");
        assert_eq!(
            serde_json::to_value(&get.port).unwrap_or_default(),
            serde_json::json!("metrics"),
            "{which} port"
        );
    }
    let resources = c.resources.unwrap_or_default();
    assert!(
        resources
            .requests
            .is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory"))
    );
    assert!(resources.limits.is_some_and(|l| l.contains_key("memory")));
}

/// The downward-API field path that feeds env variable `name`, if any.
fn env_field_path(container: &Container, name: &str) -> Option<String> {
    let env = container.env.clone().unwrap_or_default();
    env.into_iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value_from)
        .and_then(|v| v.field_ref)
        .map(|f| f.field_path)
}

#[test]
fn operator_runs_the_controller_with_its_lease_in_its_own_namespace() {
    let m = operator_manifest();
    let c = operator_container(&m.deployment);
    assert_eq!(
        c.command,
        Some(vec!["/usr/local/bin/titan-operator".to_string()])
    );
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("run"));
    let port = c.ports.clone().unwrap_or_default()[0].container_port;
    for expected in [
        format!("--http-addr=0.0.0.0:{port}"),
        "--lease-name=titan-operator-leader".to_string(),
    ] {
        assert!(args.contains(&expected), "{expected} missing from {args:?}");
    }
    // The operator reads the Lease namespace and its holder identity from these.
    assert_eq!(
        env_field_path(&c, "POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    assert_eq!(
        env_field_path(&c, "POD_NAME").as_deref(),
        Some("metadata.name")
    );
}

/// The operator's own namespace (downward API) and pod labels reach it, so
/// that a TitanCluster's NetworkPolicy admits exactly these pods to the
/// Admin API; the labels are the Deployment's selector.
#[test]
fn operator_knows_its_namespace_and_pod_labels_for_network_policies() {
    let m = operator_manifest();
    let c = operator_container(&m.deployment);
    assert_eq!(
        env_field_path(&c, "POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    let selector = c
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == "TITAN_OPERATOR_POD_SELECTOR")
        .and_then(|e| e.value)
        .unwrap_or_else(|| panic!("TITAN_OPERATOR_POD_SELECTOR is not set literally"));
    let labels = titan_operator::builders::parse_pod_selector(&selector)
        .unwrap_or_else(|e| panic!("{selector:?}: {e}"));
    let match_labels = m.deployment.spec.selector.match_labels.unwrap_or_default();
    assert_eq!(labels, match_labels);
}

#[test]
fn metrics_service_selects_exactly_the_operator_pods() {
    let m = operator_manifest();
    let spec = m.deployment.spec;
    let pod_labels = spec
        .template
        .metadata
        .and_then(|md| md.labels)
        .unwrap_or_default();
    let match_labels = spec.selector.match_labels.unwrap_or_default();
    let service_spec = m.service.spec.unwrap_or_default();
    let service_selector = service_spec.selector.unwrap_or_default();
    assert!(!service_selector.is_empty());
    assert_eq!(service_selector, match_labels);
    assert!(
        match_labels
            .iter()
            .all(|(k, v)| pod_labels.get(k) == Some(v)),
        "Deployment selector must match its pod template labels"
    );
    let port = &service_spec.ports.unwrap_or_default()[0];
    assert_eq!(port.name.as_deref(), Some("metrics"));
}

#[test]
fn rbac_bindings_grant_both_roles_to_the_operator_service_account() {
    let m = operator_manifest();
    let sa_name = m.service_account.metadata.name.clone().unwrap_or_default();
    let sa_ns = m.service_account.metadata.namespace.clone();
    let pod_sa = m
        .deployment
        .spec
        .template
        .spec
        .and_then(|p| p.service_account_name);
    assert_eq!(pod_sa.as_deref(), Some(sa_name.as_str()));
    let bindings = [
        (
            "ClusterRole",
            &m.cluster_role.metadata.name,
            &m.cluster_role_binding.role_ref,
            &m.cluster_role_binding.subjects,
        ),
        (
            "Role",
            &m.role.metadata.name,
            &m.role_binding.role_ref,
            &m.role_binding.subjects,
        ),
    ];
    for (kind, role_name, role_ref, subjects) in bindings {
        assert_eq!(role_ref.kind, kind);
        assert_eq!(Some(&role_ref.name), role_name.as_ref());
        let subjects = subjects.clone().unwrap_or_default();
        assert_eq!(subjects.len(), 1, "{kind} binding has one subject");
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, sa_name);
        assert_eq!(subjects[0].namespace, sa_ns);
    }
}

fn rule_grants(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.api_groups
            .as_ref()
            .is_some_and(|g| g.iter().any(|x| x == group))
            && r.resources
                .as_ref()
                .is_some_and(|rs| rs.iter().any(|x| x == resource))
            && r.verbs.iter().any(|v| v == verb)
    })
}

/// Secrets: `get` by name (the credentials Secret a TitanBackup names, a
/// `spec.tls` cluster's CA and member Secrets), `create` and `patch` for
/// the latter two; never `list`, `watch`, `update` or `delete` (the operator
/// cannot enumerate Secrets; owned ones go with their cluster).
#[test]
fn rbac_rules_are_least_privilege_without_wildcards_or_secret_listing() {
    let m = operator_manifest();
    let cluster_rules = m.cluster_role.rules.unwrap_or_default();
    let lease_rules = m.role.rules.unwrap_or_default();
    for rule in cluster_rules.iter().chain(&lease_rules) {
        let fields = [
            rule.api_groups.clone().unwrap_or_default(),
            rule.resources.clone().unwrap_or_default(),
            rule.verbs.clone(),
        ];
        assert!(
            fields.iter().flatten().all(|x| !x.contains('*')),
            "wildcard in {rule:?}"
        );
        assert!(
            rule.non_resource_urls.is_none(),
            "non-resource URL in {rule:?}"
        );
        let resources = rule.resources.clone().unwrap_or_default();
        if resources.iter().any(|r| r == "secrets") {
            assert_eq!(resources, ["secrets"], "secrets share no rule: {rule:?}");
            assert_eq!(
                rule.verbs,
                ["get", "create", "patch"],
                "secrets are read by name only: {rule:?}"
            );
        }
    }
    assert!(rule_grants(
        &cluster_rules,
        "titan.dev",
        "titanclusters",
        "watch"
    ));
    assert!(rule_grants(
        &cluster_rules,
        "titan.dev",
        "titanbackups",
        "watch"
    ));
    assert!(rule_grants(
        &cluster_rules,
        "titan.dev",
        "titanbackups/status",
        "patch"
    ));
    assert!(rule_grants(&cluster_rules, "", "secrets", "get"));
    assert!(rule_grants(
        &cluster_rules,
        "titan.dev",
        "titanclusters/status",
        "patch"
    ));
    assert!(rule_grants(&cluster_rules, "apps", "statefulsets", "patch"));
    for verb in ["get", "list", "watch", "create", "patch", "delete"] {
        assert!(
            rule_grants(&cluster_rules, "networking.k8s.io", "networkpolicies", verb),
            "networkpolicies {verb}"
        );
    }
    assert!(rule_grants(
        &lease_rules,
        "coordination.k8s.io",
        "leases",
        "update"
    ));
    assert!(
        !rule_grants(&cluster_rules, "coordination.k8s.io", "leases", "update"),
        "Lease access belongs in the namespaced Role only"
    );
}

/// The operator's single RBAC source, `manifests/rbac.yaml`, parsed.
struct RbacSource {
    service_account: ServiceAccount,
    cluster_role: ClusterRole,
    cluster_role_binding: ClusterRoleBinding,
    role: Role,
    role_binding: RoleBinding,
}

fn rbac_source() -> RbacSource {
    let docs = documents(&read_repo_file("manifests/rbac.yaml"));
    RbacSource {
        service_account: only(&docs, "ServiceAccount"),
        cluster_role: only(&docs, "ClusterRole"),
        cluster_role_binding: only(&docs, "ClusterRoleBinding"),
        role: only(&docs, "Role"),
        role_binding: only(&docs, "RoleBinding"),
    }
}

#[test]
fn rendered_rbac_rules_equal_the_operators_rbac_source() {
    let m = operator_manifest();
    let source = rbac_source();
    assert_eq!(m.cluster_role.rules, source.cluster_role.rules);
    assert_eq!(m.role.rules, source.role.rules);
}

/// With default values the chart names its RBAC objects exactly like
/// `manifests/rbac.yaml`, so applying both never creates a second, diverging set.
#[test]
fn rendered_rbac_objects_have_the_names_of_the_rbac_source() {
    let m = operator_manifest();
    let s = rbac_source();
    let pairs = [
        (&m.service_account.metadata, &s.service_account.metadata),
        (&m.cluster_role.metadata, &s.cluster_role.metadata),
        (
            &m.cluster_role_binding.metadata,
            &s.cluster_role_binding.metadata,
        ),
        (&m.role.metadata, &s.role.metadata),
        (&m.role_binding.metadata, &s.role_binding.metadata),
    ];
    for (rendered, source) in pairs {
        assert_eq!(rendered.name, source.name);
        assert_eq!(rendered.namespace, source.namespace);
    }
    assert_eq!(m.role_binding.role_ref, s.role_binding.role_ref);
    assert_eq!(
        m.cluster_role_binding.subjects,
        s.cluster_role_binding.subjects
    );
}

/// The CRDs of manifests/crd.yaml: TitanCluster, TitanBackup, then
/// TitanBackupSchedule.
fn crds() -> Vec<CustomResourceDefinition> {
    let docs = documents(&read_repo_file("manifests/crd.yaml"));
    assert_eq!(docs.len(), 3, "manifests/crd.yaml holds three CRDs");
    docs.iter().map(typed).collect()
}

fn crd() -> CustomResourceDefinition {
    crds().remove(0)
}

/// The `n`th CRD: `titan.dev`, namespaced, `v1alpha1` served and stored
/// with a status subresource; its subresources for further checks.
fn namespaced_titan_crd(
    n: usize,
    name: &str,
    kind: &str,
    short: &str,
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceSubresources
{
    let crd = crds().remove(n);
    assert_eq!(crd.metadata.name.as_deref(), Some(name));
    assert_eq!(crd.spec.group, "titan.dev");
    assert_eq!(crd.spec.names.kind, kind);
    assert_eq!(crd.spec.names.short_names, Some(vec![short.to_string()]));
    assert_eq!(crd.spec.scope, "Namespaced");
    let version = crd.spec.versions.iter().find(|v| v.name == "v1alpha1");
    let version = version.unwrap_or_else(|| panic!("{kind}: no v1alpha1 version"));
    assert!(version.served && version.storage, "{kind}");
    let sub = version.subresources.clone().unwrap_or_default();
    assert!(sub.status.is_some(), "{kind}: status subresource");
    sub
}

#[test]
fn backup_crd_is_served_in_the_same_group_with_a_status_subresource() {
    let sub = namespaced_titan_crd(1, "titanbackups.titan.dev", "TitanBackup", "tbk");
    assert!(sub.scale.is_none(), "a backup has no replicas");
}

#[test]
fn backup_schedule_crd_is_served_in_the_same_group_with_a_status_subresource() {
    let sub = namespaced_titan_crd(
        2,
        "titanbackupschedules.titan.dev",
        "TitanBackupSchedule",
        "tbs",
    );
    assert!(sub.scale.is_none(), "a schedule has no replicas");
}

#[test]
fn crd_serves_titan_dev_v1alpha1_with_status_and_scale_subresources() {
    let crd = crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("titanclusters.titan.dev")
    );
    assert_eq!(crd.spec.group, "titan.dev");
    assert_eq!(crd.spec.names.kind, "TitanCluster");
    assert_eq!(crd.spec.names.plural, "titanclusters");
    assert_eq!(crd.spec.names.short_names, Some(vec!["tc".to_string()]));
    assert_eq!(crd.spec.scope, "Namespaced");
    let version = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == "v1alpha1")
        .cloned();
    let version = version.unwrap_or_else(|| panic!("no v1alpha1 version"));
    assert!(version.served && version.storage);
    let sub = version.subresources.unwrap_or_default();
    assert!(sub.status.is_some(), "status subresource");
    let scale = sub.scale.unwrap_or_else(|| panic!("no scale subresource"));
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
}

#[test]
fn chart_crd_copy_is_byte_identical_to_manifests_crd() {
    assert_eq!(
        read_repo_file("charts/titan-operator/crds/titanclusters.titan.dev.yaml"),
        read_repo_file("manifests/crd.yaml"),
        "run scripts/ci/check-packaging.sh --update"
    );
}

/// Fails for every key of `value` that `schema` does not declare.
fn undeclared_fields(value: &Value, schema: &JSONSchemaProps, path: &str, out: &mut Vec<String>) {
    let Value::Object(map) = value else { return };
    let props: BTreeMap<String, JSONSchemaProps> = schema.properties.clone().unwrap_or_default();
    let open = schema.x_kubernetes_preserve_unknown_fields == Some(true);
    for (key, child) in map {
        let name = key.clone();
        match props.get(&name) {
            Some(child_schema) => {
                undeclared_fields(child, child_schema, &format!("{path}.{name}"), out)
            }
            None if open => {}
            None => out.push(format!("{path}.{name}")),
        }
    }
}

#[test]
fn example_cluster_is_three_members_1gi_snapshotting_every_ten_minutes() {
    let docs = documents(&read_repo_file("manifests/examples/titancluster.yaml"));
    assert_eq!(docs.len(), 1);
    assert_eq!(
        docs[0].get("apiVersion").and_then(Value::as_str),
        Some("titan.dev/v1alpha1")
    );
    let tc: TitanCluster = serde_json::from_value(docs[0].clone())
        .unwrap_or_else(|e| panic!("the example is not a TitanCluster: {e}"));
    assert_eq!(tc.spec.replicas, 3);
    assert_eq!(tc.spec.storage.size, "1Gi");
    assert_eq!(tc.spec.snapshot.interval_seconds, 600);
    assert_eq!(tc.spec.validate(), Ok(()));
    assert!(
        tc.spec
            .image
            .ends_with(concat!(":", env!("CARGO_PKG_VERSION"))),
        "the example runs the image of this version: {}",
        tc.spec.image
    );
}

#[test]
fn example_cluster_uses_only_fields_the_crd_schema_declares() {
    let docs = documents(&read_repo_file("manifests/examples/titancluster.yaml"));
    let crd = crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.clone())
        .unwrap_or_else(|| panic!("the CRD has no openAPIV3Schema"));
    let spec_schema = schema
        .properties
        .and_then(|p| p.get("spec").cloned())
        .unwrap_or_default();
    let mut unknown = Vec::new();
    let spec = docs[0].get("spec").cloned().unwrap_or(Value::Null);
    undeclared_fields(&spec, &spec_schema, "spec", &mut unknown);
    assert!(
        unknown.is_empty(),
        "fields missing from the CRD schema: {unknown:?}"
    );
    let required = spec_schema.required.unwrap_or_default();
    for field in required {
        assert!(
            spec.get(field.as_str()).is_some(),
            "example lacks required spec.{field}"
        );
    }
}
