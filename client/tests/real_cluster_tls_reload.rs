//! Certificate rotation on running `titan-server` processes: every member
//! polls its TLS files (`--tls-reload-interval-ms=1000` here) and serves a
//! changed, valid set to new connections, while a client keeps writing;
//! a broken replacement keeps the member serving its old certificate.
//!
//! The members of a cluster share one set of files (one node certificate
//! for both ports, signed by the CA in `ca.pem`), so replacing them rotates
//! every member at once. Which certificate a port serves is read from a
//! real TLS handshake (rustls, the leaf's DER compared with the file's).
//!
//! Nodes come from `titan-testkit`: the server binary is `TITAN_SERVER_BIN`,
//! else `titan-server` in this test's target dir (`cargo build -p titan-server
//! --bins` first; the test never builds it).
// Scenarios read top to bottom; the workspace's 70-line limit is for code.
#![allow(clippy::too_many_lines)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use titan_client::{Client, ClientConfig as TitanConfig, Consistency, TlsConfig};
use titan_testkit::tls::TestCa;
use titan_testkit::{Cluster, wait_for};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// How often the members re-read their files in these tests.
const RELOAD_INTERVAL_MS: u64 = 1000;
/// Longest wait for every member to serve a rotated certificate.
const ROTATION_WAIT: Duration = Duration::from_secs(20);

/// Where the members' and the test clients' PEM files live.
struct Pem {
    dir: tempfile::TempDir,
}

impl Pem {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces `name` whole, as a Secret update does (write, then rename).
    fn replace(&self, name: &str, pem: &str) {
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, pem).expect("write PEM");
        std::fs::rename(&tmp, self.path(name)).expect("rename PEM");
    }

    /// The members' certificate and key (certificate first, like a user
    /// copying files one by one: a poll in between sees a mismatched pair).
    fn node_leaf(&self, (cert, key): &(String, String)) {
        self.replace("node.pem", cert);
        self.replace("node-key.pem", key);
    }

    fn flags(&self) -> Vec<String> {
        let p = |name: &str| self.path(name).display().to_string();
        vec![
            format!("--client-tls-cert={}", p("node.pem")),
            format!("--client-tls-key={}", p("node-key.pem")),
            format!("--client-tls-ca={}", p("ca.pem")),
            format!("--peer-tls-cert={}", p("node.pem")),
            format!("--peer-tls-key={}", p("node-key.pem")),
            format!("--peer-tls-ca={}", p("ca.pem")),
            format!("--tls-reload-interval-ms={RELOAD_INTERVAL_MS}"),
        ]
    }

    /// How the harness reaches the Admin service: `trust` and the client
    /// identity `who` (`client` names `client.pem`/`client-key.pem`).
    fn admin_tls(&self, trust: &str, who: &str) -> ClientTlsConfig {
        let read = |name: &str| std::fs::read(self.path(name)).expect("read PEM");
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(trust)))
            .identity(Identity::from_pem(
                read(&format!("{who}.pem")),
                read(&format!("{who}-key.pem")),
            ))
    }

    /// titan-client settings trusting `trust` and presenting `who`.
    fn client_tls(&self, trust: &str, who: &str) -> TlsConfig {
        TlsConfig {
            ca_cert_path: self.path(trust),
            client_identity: Some((
                self.path(&format!("{who}.pem")),
                self.path(&format!("{who}-key.pem")),
            )),
            domain_name: None,
        }
    }
}

/// A cluster of `n` members on the files of `pem`, started with the CA
/// `ca.pem` and the node certificate `leaf`.
fn start(n: usize, ca: &TestCa, leaf: &(String, String)) -> (Cluster, Pem) {
    let pem = Pem {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    pem.replace("ca.pem", ca.pem());
    pem.node_leaf(leaf);
    let (cert, key) = ca.client_leaf("client 1");
    pem.replace("client.pem", &cert);
    pem.replace("client-key.pem", &key);
    let flags = pem.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let admin = pem.admin_tls("ca.pem", "client");
    let cluster = Cluster::start_tls(n, &flags, admin);
    (cluster, pem)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn client(endpoints: Vec<String>, tls: TlsConfig) -> Client {
    let mut config = TitanConfig::new(endpoints);
    config.tls = Some(tls);
    config.request_timeout = Duration::from_secs(3);
    config.retry.overall_deadline = Duration::from_secs(5);
    config.retry.max_attempts = 5;
    Client::connect(config).expect("valid client config")
}

/// Every certificate in a PEM file or string.
fn certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

/// The leaf certificate (DER) a new TLS connection to `127.0.0.1:port` is
/// shown, verified against `trust` (a file in `pem`) for `localhost`,
/// presenting `who` when asked. `None` when the handshake fails.
fn served_leaf(pem: &Pem, port: u16, trust: &str, who: &str) -> Option<Vec<u8>> {
    let mut roots = RootCertStore::empty();
    for cert in certs(&std::fs::read(pem.path(trust)).expect("read CA")) {
        roots.add(cert).expect("CA certificate");
    }
    let chain = certs(&std::fs::read(pem.path(&format!("{who}.pem"))).expect("read cert"));
    let key = PrivateKeyDer::from_pem_file(pem.path(&format!("{who}-key.pem"))).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client identity");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from("localhost").expect("name");
    let mut conn = ClientConnection::new(Arc::new(config), name).expect("connection");
    let mut sock = TcpStream::connect(("127.0.0.1", port)).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).ok()?;
    }
    Some(conn.peer_certificates()?.first()?.to_vec())
}

fn der(cert_pem: &str) -> Vec<u8> {
    certs(cert_pem.as_bytes())[0].to_vec()
}

/// Waits until every running member serves `leaf` on both TLS ports.
fn wait_served(cluster: &Cluster, pem: &Pem, trust: &str, who: &str, leaf: &(String, String)) {
    let want = der(&leaf.0);
    for node in cluster.nodes.iter().filter(|n| n.is_running()) {
        for (port, what) in [(node.grpc_port, "client"), (node.peer_port, "peer")] {
            let started = Instant::now();
            wait_for(ROTATION_WAIT, "the rotated certificate", || {
                (served_leaf(pem, port, trust, who).as_ref() == Some(&want)).then_some(())
            });
            eprintln!(
                "{} serves the new certificate on its {what} port after {:?}",
                node.name,
                started.elapsed()
            );
        }
    }
}

/// A writer thread putting `w<i> = v<i>` through a TLS client and
/// recording which puts were acknowledged.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    thread: JoinHandle<u64>,
}

impl Writer {
    fn start(client: Client) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let rt = runtime();
            let mut failed = 0;
            let mut i = 0u64;
            while !s.load(Ordering::SeqCst) {
                i += 1;
                match rt.block_on(client.put(format!("w{i}"), format!("v{i}"))) {
                    Ok(_) => a.lock().expect("ledger").push(i),
                    Err(e) => {
                        eprintln!("write w{i} failed: {e}");
                        failed += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            failed
        });
        Writer {
            stop,
            acked,
            thread,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().expect("ledger").len()
    }

    /// Waits for `more` acknowledged writes beyond the current count.
    fn wait_progress(&self, more: usize, what: &str) {
        let target = self.acked() + more;
        wait_for(Duration::from_secs(20), what, || {
            (self.acked() >= target).then_some(())
        });
    }

    /// Stops the thread; returns the acknowledged writes and the failures.
    fn stop(self) -> (Vec<u64>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let failed = self.thread.join().expect("writer thread");
        let acked = std::mem::take(&mut *self.acked.lock().expect("ledger"));
        (acked, failed)
    }
}

/// Every acknowledged write reads back on every running member.
fn verify_acked(cluster: &Cluster, pem: &Pem, trust: &str, who: &str, acked: &[u64]) {
    let rt = runtime();
    for node in cluster.nodes.iter().filter(|n| n.is_running()) {
        let reader = client(vec![node.grpc_endpoint()], pem.client_tls(trust, who));
        for i in acked {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let got = rt.block_on(reader.get(format!("w{i}"), Consistency::Serializable));
                match got {
                    Ok(Some((value, _))) => {
                        assert_eq!(value, format!("v{i}").into_bytes(), "{}: w{i}", node.name);
                        break;
                    }
                    other => assert!(
                        Instant::now() < deadline,
                        "{}: acknowledged write w{i} unreadable: {other:?}",
                        node.name
                    ),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Writes a client identity named `who` signed by `ca`.
fn client_identity(pem: &Pem, ca: &TestCa, who: &str) {
    let (cert, key) = ca.client_leaf(who);
    pem.replace(&format!("{who}.pem"), &cert);
    pem.replace(&format!("{who}-key.pem"), &key);
}

#[test]
fn rotated_leaf_and_ca_files_are_served_to_new_connections_while_writes_continue() {
    let ca1 = TestCa::new("titan CA 1");
    let ca2 = TestCa::new("titan CA 2");
    let (mut cluster, pem) = start(3, &ca1, &ca1.node_leaf("node gen 1"));
    client_identity(&pem, &ca2, "client2");
    pem.replace("bundle.pem", &format!("{}{}", ca1.pem(), ca2.pem()));
    let rt = runtime();
    let endpoints: Vec<String> = cluster.nodes.iter().map(|n| n.grpc_endpoint()).collect();
    // The writer trusts both CAs (clients get the new CA before the servers
    // use it) and presents a certificate of the first CA.
    let writer = Writer::start(client(
        endpoints.clone(),
        pem.client_tls("bundle.pem", "client"),
    ));
    writer.wait_progress(20, "writes before rotation");

    // 1. A new leaf from the same CA.
    let gen2 = ca1.node_leaf("node gen 2");
    pem.node_leaf(&gen2);
    wait_served(&cluster, &pem, "ca.pem", "client", &gen2);
    writer.wait_progress(20, "writes after the same-CA rotation");

    // 2. The CA files become the old and the new CA: a client whose
    // certificate the new CA signed gets in on every member.
    pem.replace("ca.pem", &format!("{}{}", ca1.pem(), ca2.pem()));
    for node in &cluster.nodes {
        let newcomer = client(
            vec![node.grpc_endpoint()],
            pem.client_tls("bundle.pem", "client2"),
        );
        wait_for(ROTATION_WAIT, "the CA bundle in use", || {
            rt.block_on(newcomer.put(format!("from-client2-{}", node.name), "v"))
                .ok()
        });
    }

    // 3. A leaf signed by the new CA.
    let gen3 = ca2.node_leaf("node gen 3");
    pem.node_leaf(&gen3);
    wait_served(&cluster, &pem, "bundle.pem", "client2", &gen3);
    writer.wait_progress(20, "writes after the new-CA rotation");
    let (acked, failed) = writer.stop();
    eprintln!(
        "{} writes acknowledged, {failed} failed during rotation",
        acked.len()
    );
    verify_acked(&cluster, &pem, "bundle.pem", "client2", &acked);

    // 4. The old CA is dropped: members must now present the new leaf
    // when they dial each other, or they are refused.
    pem.replace("ca.pem", ca2.pem());
    pem.replace("ca2.pem", ca2.pem());
    // (A fresh client each time: a connection opened before the reload
    // keeps its session.)
    wait_for(ROTATION_WAIT, "the old CA refused", || {
        let old_client = client(endpoints.clone(), pem.client_tls("bundle.pem", "client"));
        rt.block_on(old_client.put("from-old-client", "v")).err()
    });
    cluster.admin_tls = Some(pem.admin_tls("ca2.pem", "node"));
    // Fresh peer connections both ways: a restarted member dials the others,
    // and they re-dial it with their reloaded settings. With a third member
    // down, a write commits only if those links work.
    let leader = cluster.wait_leader(Duration::from_secs(20));
    let (restarted, stopped) = ((leader + 1) % 3, (leader + 2) % 3);
    cluster.nodes[restarted].restart();
    std::thread::sleep(Duration::from_secs(1));
    cluster.nodes[stopped].kill();
    let fresh = client(endpoints, pem.client_tls("ca2.pem", "client2"));
    wait_for(
        Duration::from_secs(30),
        "a write on the rotated links",
        || rt.block_on(fresh.put("after-rotation", "committed")).ok(),
    );
    verify_acked(
        &cluster,
        &pem,
        "ca2.pem",
        "client2",
        &acked[acked.len().saturating_sub(50)..],
    );
}

/// Reads `/metrics` of `node`.
fn metrics(node: &titan_testkit::Node) -> String {
    let mut sock = TcpStream::connect(("127.0.0.1", node.http_port)).expect("HTTP port");
    sock.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    sock.read_to_string(&mut text).expect("response");
    text
}

fn log_of(node: &titan_testkit::Node) -> String {
    std::fs::read_to_string(node.data_dir.with_extension("log")).unwrap_or_default()
}

#[test]
fn a_key_that_does_not_match_the_new_certificate_keeps_the_old_one_served_until_fixed() {
    let ca = TestCa::new("titan CA");
    let first = ca.node_leaf("node first");
    let (cluster, pem) = start(1, &ca, &first);
    let node = &cluster.nodes[0];
    let rt = runtime();
    // The new certificate arrives with a key that belongs to another one.
    let second = ca.node_leaf("node second");
    let stray = ca.node_leaf("stray");
    pem.node_leaf(&(second.0.clone(), stray.1));
    let key_file = pem.path("node-key.pem").display().to_string();
    wait_for(ROTATION_WAIT, "the refusal in the log", || {
        let log = log_of(node);
        (log.contains("cannot be used") && log.contains(&key_file)).then_some(())
    });
    wait_for(ROTATION_WAIT, "the failing gauge", || {
        metrics(node)
            .contains("titan_tls_reload_failing{port=\"client\"} 1")
            .then_some(())
    });
    // Still serving the old certificate on both ports, and serving writes
    // on new connections.
    for port in [node.grpc_port, node.peer_port] {
        assert_eq!(
            served_leaf(&pem, port, "ca.pem", "client"),
            Some(der(&first.0))
        );
    }
    let writer = client(
        vec![node.grpc_endpoint()],
        pem.client_tls("ca.pem", "client"),
    );
    rt.block_on(writer.put("during-bad-files", "v"))
        .expect("write with the old certificate");
    // Several polls later: still the old one.
    std::thread::sleep(Duration::from_millis(3 * RELOAD_INTERVAL_MS));
    assert_eq!(
        served_leaf(&pem, node.grpc_port, "ca.pem", "client"),
        Some(der(&first.0))
    );
    assert!(metrics(node).contains("titan_tls_reloads_total{port=\"client\",outcome=\"failed\"}"));
    // The matching key arrives: the next poll puts the new certificate in use.
    pem.replace("node-key.pem", &second.1);
    wait_served(&cluster, &pem, "ca.pem", "client", &second);
    let text = metrics(node);
    assert!(
        text.contains("titan_tls_reload_failing{port=\"client\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("titan_tls_reloads_total{port=\"client\",outcome=\"ok\"} 1"),
        "{text}"
    );
    let writer = client(
        vec![node.grpc_endpoint()],
        pem.client_tls("ca.pem", "client"),
    );
    rt.block_on(writer.put("after-fix", "v"))
        .expect("write with the new certificate");
}

#[test]
fn a_client_takes_a_rotated_client_certificate_from_its_files_without_being_rebuilt() {
    let ca = TestCa::new("titan CA");
    let (cluster, pem) = start(1, &ca, &ca.node_leaf("node"));
    let rt = runtime();
    // The client starts with a certificate the cluster's CA never signed:
    // the member refuses it (the client port requires a client certificate).
    let stranger = TestCa::new("another CA");
    let (cert, key) = stranger.client_leaf("stranger");
    pem.replace("app.pem", &cert);
    pem.replace("app-key.pem", &key);
    let kv = client(cluster.grpc_endpoints(), pem.client_tls("ca.pem", "app"));
    let refused = rt.block_on(kv.put("rotated", "no"));
    assert!(refused.is_err(), "a certificate of another CA got in");

    // A half-written replacement (a certificate without its key yet) is not
    // taken: still refused, and the client keeps working on the old set.
    let (cert, key) = ca.client_leaf("app");
    pem.replace("app.pem", &cert);
    pem.replace("app-key.pem", "not a key");
    assert!(rt.block_on(kv.put("rotated", "no")).is_err());

    // The key lands: the same client object connects with the new pair.
    pem.replace("app-key.pem", &key);
    let revision = rt
        .block_on(kv.put("rotated", "yes"))
        .unwrap_or_else(|e| panic!("put with the rotated certificate: {e}"));
    assert!(revision > 0);
    let got = rt
        .block_on(kv.get("rotated", Consistency::Linearizable))
        .unwrap_or_else(|e| panic!("get: {e}"));
    assert_eq!(got.map(|(value, _)| value), Some(b"yes".to_vec()));
}
