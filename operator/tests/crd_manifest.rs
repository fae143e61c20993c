//! `manifests/crd.yaml` is generated from the Rust types and committed; this
//! test fails when it is stale. Regenerate with
//! `cargo run -p titan-operator -- crd > manifests/crd.yaml`.

#[test]
fn committed_crd_manifest_equals_generated_crd() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/crd.yaml");
    let committed = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let generated =
        titan_operator::crd::crd_yaml().unwrap_or_else(|e| panic!("rendering the CRD: {e}"));
    assert!(
        committed == generated,
        "manifests/crd.yaml is stale; run `cargo run -p titan-operator -- crd > manifests/crd.yaml`"
    );
}
