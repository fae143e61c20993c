//! TLS end to end: real `titan-server` processes with mutual TLS on the
//! peer port and on the client gRPC port, certificates made by rcgen
//! (`titan_testkit::tls`), reached by `titan-client`, `titanctl` and
//! Debian's `etcdctl`; and the start-up checks of the TLS flags.
//!
//! Nodes come from `titan-testkit`: the server binary is `TITAN_SERVER_BIN`,
//! else `titan-server` in this test's target dir (`cargo build -p titan-server
//! --bins` first; the test never builds it).
// Scenarios read top to bottom; the workspace's 70-line limit is for code.
#![allow(clippy::too_many_lines)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use titan_client::{Client, ClientConfig, Consistency, Error, TlsConfig};
use titan_testkit::tls::TestPki;
use titan_testkit::{Cluster, free_port, server_bin};

const TITANCTL: &str = env!("CARGO_BIN_EXE_titanctl");
/// Longest wait for a write to reach every member.
const REPLICATION_WAIT: Duration = Duration::from_secs(15);

/// A 3-node cluster with mutual TLS on both ports, and its certificates.
struct TlsCluster {
    cluster: Cluster,
    pki: TestPki,
    /// Holds the PEM files.
    _certs: tempfile::TempDir,
}

fn tls_cluster() -> TlsCluster {
    let certs = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::generate(certs.path());
    let flags = pki.server_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = Cluster::start_tls(3, &flags, pki.admin_tls());
    TlsCluster {
        cluster,
        pki,
        _certs: certs,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A client of `endpoints` with `tls`, giving up after a few seconds.
fn client(endpoints: &[String], tls: Option<TlsConfig>) -> Result<Client, Error> {
    let mut config = ClientConfig::new(endpoints.iter().cloned());
    config.tls = tls;
    config.request_timeout = Duration::from_secs(3);
    config.retry.overall_deadline = Duration::from_secs(4);
    config.retry.max_attempts = 4;
    Client::connect(config)
}

fn tls_config(ca: &Path, identity: Option<(&Path, &Path)>) -> TlsConfig {
    TlsConfig {
        ca_cert_path: ca.to_path_buf(),
        client_identity: identity.map(|(c, k)| (c.to_path_buf(), k.to_path_buf())),
        domain_name: None,
    }
}

impl TlsCluster {
    /// The TLS settings of a client with a certificate the cluster's CA signed.
    fn good_tls(&self) -> TlsConfig {
        let p = &self.pki;
        tls_config(&p.ca, Some((&p.client_cert, &p.client_key)))
    }

    fn follower(&self) -> usize {
        let leader = self.cluster.wait_leader(Duration::from_secs(20));
        (leader + 1) % 3
    }
}

#[test]
fn peer_mtls_cluster_elects_a_leader_and_replicates_a_write_through_the_tls_client_port() {
    let c = tls_cluster();
    let rt = runtime();
    // Through a follower: the write is forwarded to the leader's TLS client
    // port with the node's certificate.
    let follower = c.cluster.nodes[c.follower()].grpc_endpoint();
    let writer = client(&[follower], Some(c.good_tls())).expect("valid TLS config");
    rt.block_on(writer.put("tls-key", "over-tls"))
        .expect("write through a follower over TLS");
    // Every member applies it: replication over the mutual-TLS peer port.
    for node in &c.cluster.nodes {
        let reader = client(&[node.grpc_endpoint()], Some(c.good_tls())).expect("client");
        let deadline = Instant::now() + REPLICATION_WAIT;
        loop {
            let got = rt.block_on(reader.get("tls-key", Consistency::Serializable));
            if let Ok(Some((value, _))) = &got {
                assert_eq!(value, b"over-tls");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never applied the write: {got:?}",
                node.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs a put that must fail before it is sent (the connection is refused,
/// so the client knows nothing was written); returns the error text.
fn refused_put(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    tls: Option<TlsConfig>,
    key: &str,
) -> String {
    let c = client(&[endpoint.to_string()], tls).expect("valid config");
    let err = rt
        .block_on(c.put(key, "must-not-land"))
        .expect_err("the TLS port must refuse this client");
    let text = err.to_string();
    eprintln!("{key}: refused with: {text}");
    assert!(
        matches!(err, Error::RetriesExhausted { .. }),
        "{key}: a refused connection is a write never sent: {err:?}"
    );
    text
}

#[test]
fn tls_client_port_refuses_plaintext_unverified_and_uncertified_clients_and_nothing_is_written() {
    let c = tls_cluster();
    let rt = runtime();
    let leader = c.cluster.wait_leader(Duration::from_secs(20));
    let endpoint = c.cluster.nodes[leader].grpc_endpoint();
    let p = &c.pki;
    // Plaintext HTTP/2 against the TLS port.
    let text = refused_put(&rt, &endpoint, None, "plaintext");
    assert!(text.contains("uses TLS, configure a CA"), "{text}");
    // A client that trusts another CA cannot verify the server.
    let text = refused_put(
        &rt,
        &endpoint,
        Some(tls_config(&p.other_ca, None)),
        "wrong-ca",
    );
    assert!(
        text.contains("certificate") || text.contains("UnknownIssuer"),
        "the error should say the server certificate is not trusted: {text}"
    );
    // --client-tls-ca is set: no certificate, or one from another CA, is refused.
    let text = refused_put(&rt, &endpoint, Some(tls_config(&p.ca, None)), "no-cert");
    assert!(text.contains("require a client certificate"), "{text}");
    let other = Some((p.other_cert.as_path(), p.other_key.as_path()));
    refused_put(
        &rt,
        &endpoint,
        Some(tls_config(&p.ca, other)),
        "other-ca-cert",
    );
    // Nothing was written.
    let good = client(&[endpoint], Some(c.good_tls())).expect("client");
    for key in ["plaintext", "wrong-ca", "no-cert", "other-ca-cert"] {
        let got = rt.block_on(good.get(key, Consistency::Linearizable));
        assert!(matches!(got, Ok(None)), "{key} must not exist: {got:?}");
    }
}

#[test]
fn client_tls_files_that_do_not_exist_are_refused_by_name_before_dialing() {
    let missing = PathBuf::from("/nonexistent/titan-ca.pem");
    let err = client(&["127.0.0.1:1".into()], Some(tls_config(&missing, None)))
        .expect_err("a missing CA file must be refused");
    assert!(matches!(err, Error::TlsFile { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/titan-ca.pem"),
        "{err}"
    );
}

fn titanctl(c: &TlsCluster, tls: &[String], args: &[&str]) -> Output {
    Command::new(TITANCTL)
        .env("TITAN_ENDPOINTS", c.cluster.grpc_endpoints().join(","))
        .env(
            "TITAN_ADMIN_ENDPOINTS",
            c.cluster.admin_endpoints().join(","),
        )
        .args(["--timeout-ms=2000", "--deadline-ms=4000"])
        .args(tls)
        .args(args)
        .output()
        .expect("run titanctl")
}

fn flag(name: &str, path: &Path) -> String {
    format!("--{name}={}", path.display())
}

#[test]
fn peer_port_refuses_admin_calls_without_a_certificate_the_peer_ca_signed() {
    let c = tls_cluster();
    let p = &c.pki;
    let no_cert = [flag("cacert", &p.ca)];
    let other_cert = [
        flag("cacert", &p.ca),
        flag("cert", &p.other_cert),
        flag("key", &p.other_key),
    ];
    let good = [
        flag("cacert", &p.ca),
        flag("cert", &p.client_cert),
        flag("key", &p.client_key),
    ];
    for (what, tls) in [
        ("no flags (plaintext)", &[][..]),
        ("no client certificate", &no_cert[..]),
        ("certificate from another CA", &other_cert[..]),
    ] {
        let out = titanctl(&c, tls, &["status"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{what}: {stderr}");
        assert_eq!(
            out.status.code(),
            Some(5),
            "titanctl status with {what} must find no member it may talk to; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let out = titanctl(&c, &good, &["status"]);
    assert!(
        out.status.success(),
        "titanctl status with the right certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same flags reach the client port.
    let out = titanctl(&c, &good, &["set", "ctl-key", "ctl-value"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = titanctl(&c, &good, &["get", "ctl-key"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ctl-value"));
}

/// Runs `titan-server` with `flags` until it exits (it must, within 20 s).
fn start_and_expect_exit(root: &Path, flags: &[String]) -> Output {
    let mut child = Command::new(server_bin())
        .arg("--id=tls-check")
        .arg(format!("--port={}", free_port()))
        .arg(format!("--client-port={}", free_port()))
        .arg(format!("--grpc-port={}", free_port()))
        .arg(format!("--http-port={}", free_port()))
        .arg("--listen-addr=127.0.0.1")
        .arg("--advertise-client-addr=127.0.0.1:1")
        .arg("--advertise-peer-addr=127.0.0.1:2")
        .arg("--advertise-grpc-addr=127.0.0.1:3")
        .arg(format!("--data-dir={}", root.join("data").display()))
        .args(flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn titan-server");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("titan-server kept running with {flags:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn startup_with_a_missing_unpaired_mismatched_or_malformed_tls_file_exits_non_zero_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::generate(dir.path());
    let missing = dir.path().join("missing-key.pem");
    let garbage = dir.path().join("garbage-key.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\n@@@@\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    let cert = flag("peer-tls-cert", &pki.node_cert);
    let ca = flag("peer-tls-ca", &pki.ca);
    let cases = [
        (
            vec![cert.clone(), flag("peer-tls-key", &missing), ca.clone()],
            missing.display().to_string(),
        ),
        (
            vec![cert.clone(), flag("peer-tls-key", &garbage), ca.clone()],
            garbage.display().to_string(),
        ),
        (
            vec![
                cert.clone(),
                flag("peer-tls-key", &pki.client_key),
                ca.clone(),
            ],
            pki.client_key.display().to_string(),
        ),
        (vec![cert.clone(), ca.clone()], "--peer-tls-key".to_string()),
        (
            vec![flag("client-tls-key", &pki.node_key)],
            "--client-tls-cert".to_string(),
        ),
    ];
    for (flags, named) in cases {
        let out = start_and_expect_exit(dir.path(), &flags);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{flags:?}: {stderr}");
        assert!(
            out.status.code().is_some(),
            "{flags:?}: killed by a signal: {stderr}"
        );
        assert!(
            stderr.contains(&named),
            "{flags:?}: error should name {named}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{flags:?}: {stderr}");
    }
}

/// Whether `etcdctl` can run here; panics when it must.
fn etcdctl_available() -> bool {
    let found = Command::new("etcdctl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("TITAN_REQUIRE_ALL_TIERS").is_none(),
            "TITAN_REQUIRE_ALL_TIERS is set but etcdctl is missing (apt-get install etcd-client)"
        );
        eprintln!("skipping: etcdctl not found (apt-get install etcd-client)");
    }
    found
}

fn etcdctl(endpoint: &str, tls: &[String], args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=5s")
        .arg("--dial-timeout=3s")
        .args(tls)
        .args(args)
        .output()
        .expect("run etcdctl")
}

#[test]
fn etcdctl_puts_and_gets_through_the_mutual_tls_client_port() {
    if !etcdctl_available() {
        return;
    }
    let c = tls_cluster();
    let p = &c.pki;
    let follower = c.cluster.nodes[c.follower()].grpc_port;
    let endpoint = format!("https://127.0.0.1:{follower}");
    let tls = [
        flag("cacert", &p.ca),
        flag("cert", &p.client_cert),
        flag("key", &p.client_key),
    ];
    let out = etcdctl(&endpoint, &tls, &["put", "etcdctl-key", "etcdctl-value"]);
    assert!(
        out.status.success(),
        "put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = etcdctl(&endpoint, &tls, &["get", "etcdctl-key"]);
    assert!(
        out.status.success(),
        "get: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "etcdctl-key\netcdctl-value\n"
    );
    // Without a client certificate the port refuses etcdctl.
    let out = etcdctl(&endpoint, &tls[..1], &["get", "etcdctl-key"]);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Waits until `node`'s log holds `needle`.
fn wait_for_log(node: &titan_testkit::Node, needle: &str) {
    let log = node.data_dir.with_extension("log");
    titan_testkit::wait_for(Duration::from_secs(15), needle, || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|text| text.contains(needle))
    });
}

#[test]
fn a_member_whose_certificate_another_ca_signed_is_shut_out_and_the_logs_say_why() {
    let mut c = tls_cluster();
    let rt = runtime();
    let p = c.pki.clone();
    let intruder = &mut c.cluster.nodes[2];
    intruder.kill();
    for arg in &mut intruder.args {
        if arg.starts_with("--peer-tls-cert=") {
            *arg = flag("peer-tls-cert", &p.other_cert);
        } else if arg.starts_with("--peer-tls-key=") {
            *arg = flag("peer-tls-key", &p.other_key);
        }
    }
    intruder.start();
    // The others cannot verify its certificate; it is refused by them.
    wait_for_log(&c.cluster.nodes[0], "TLS dial failed");
    wait_for_log(&c.cluster.nodes[2], "peer stream ended by a TLS failure");
    // The two good members still make progress; the intruder gets nothing.
    let leader = c.cluster.wait_leader(Duration::from_secs(20));
    assert_ne!(leader, 2, "the intruder cannot lead");
    let good = c.good_tls();
    let writer = client(
        &[c.cluster.nodes[leader].grpc_endpoint()],
        Some(good.clone()),
    );
    rt.block_on(writer.expect("client").put("after-intruder", "v"))
        .expect("write on the two good members");
    std::thread::sleep(Duration::from_millis(500));
    let reader = client(&[c.cluster.nodes[2].grpc_endpoint()], Some(good)).expect("client");
    let got = rt.block_on(reader.get("after-intruder", Consistency::Serializable));
    assert!(
        matches!(got, Ok(None)),
        "the intruder must not replicate: {got:?}"
    );
}
