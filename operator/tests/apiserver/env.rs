//! The kube-apiserver under test and the storage behind its `--etcd-servers`:
//! one etcd (the reference), or a 3-node Titan cluster speaking the etcd v3
//! API on its client gRPC ports (started with `titan-testkit`; the binary
//! comes from `TITAN_SERVER_BIN` or this test's target dir).
//!
//! The API server can be restarted in place (same flags, certs, port and
//! storage), and the Titan leader can be killed with SIGKILL. Every process
//! is killed on drop; when a test fails, the API server's and etcd's logs
//! are kept in `$TMPDIR/titan-test-logs/<pid>/` next to the Titan node logs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use titan_testkit::{Cluster, free_port};

/// The static admin token (group `system:masters`).
pub const TOKEN: &str = "titan-test-admin-token";
/// Longest wait for the API server to become ready.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Titan members behind the API server.
pub const TITAN_MEMBERS: usize = 3;
/// How often the API server compacts its storage. The default is 5 min; a
/// short interval makes every run exercise etcd's compaction protocol
/// (a txn on `compact_rev_key`'s version, then `Compact`).
const COMPACTION_INTERVAL: &str = "10s";
/// Longest wait for the API server's compactor to have compacted once.
const COMPACTION_WAIT: Duration = Duration::from_secs(60);

/// What the API server stores its objects in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// One etcd 3.4 member.
    Etcd,
    /// A 3-node Titan cluster; `--etcd-servers` names every member.
    Titan,
}

/// How the API server is stopped before a restart.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// SIGTERM, then wait for its graceful exit.
    Graceful,
    /// SIGKILL.
    Kill,
}

enum Storage {
    Etcd(Child),
    Titan(Box<Cluster>),
}

/// Storage + kube-apiserver processes, killed on drop.
pub struct TestEnv {
    storage: Storage,
    /// The first `--etcd-servers` URL.
    etcd_url: String,
    apiserver: Option<Child>,
    apiserver_bin: PathBuf,
    apiserver_args: Vec<String>,
    /// Admin kubeconfig (static token, TLS verification off).
    pub kubeconfig: PathBuf,
    kubectl_bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Storage::Etcd(child) = &mut self.storage {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let keep = std::env::temp_dir()
                .join("titan-test-logs")
                .join(std::process::id().to_string());
            let _ = std::fs::create_dir_all(&keep);
            for log in ["apiserver.log", "etcd.log"] {
                let _ = std::fs::copy(self.dir.path().join(log), keep.join(log));
            }
            eprintln!("kube-apiserver/etcd logs kept in {}", keep.display());
        }
    }
}

fn spawn(program: &Path, args: &[String], log: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("log {}: {e}", log.display()));
    let err = out.try_clone().unwrap_or_else(|e| panic!("log clone: {e}"));
    Command::new(program)
        .args(args)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()))
}

/// One etcd member on loopback; its client URL.
fn start_etcd(assets: &Path, d: &Path) -> (Child, String) {
    let (port, peer) = (free_port(), free_port());
    let etcd = spawn(
        &assets.join("etcd"),
        &[
            format!("--data-dir={}", d.join("etcd").display()),
            format!("--listen-client-urls=http://127.0.0.1:{port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        ],
        &d.join("etcd.log"),
    );
    (etcd, format!("http://127.0.0.1:{port}"))
}

/// A Titan cluster (the testkit's fast-tick flags); the client URLs of its
/// etcd-compatible gRPC ports, every member.
fn start_titan() -> (Box<Cluster>, String) {
    // The testkit's blocking helpers run their own runtime.
    let cluster = tokio::task::block_in_place(|| Cluster::start(TITAN_MEMBERS, &[]));
    let urls: Vec<String> = cluster
        .grpc_endpoints()
        .iter()
        .map(|e| format!("http://{e}"))
        .collect();
    (Box::new(cluster), urls.join(","))
}

fn apiserver_args(d: &Path, etcd_servers: &str, api_port: u16) -> Vec<String> {
    let key = d.join("sa.key");
    let status = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .stderr(Stdio::null())
        .status();
    assert!(status.is_ok_and(|s| s.success()), "openssl genrsa failed");
    let tokens = d.join("tokens.csv");
    std::fs::write(
        &tokens,
        format!("{TOKEN},admin,admin-uid,\"system:masters\"\n"),
    )
    .unwrap_or_else(|e| panic!("tokens: {e}"));
    vec![
        format!("--etcd-servers={etcd_servers}"),
        format!("--etcd-compaction-interval={COMPACTION_INTERVAL}"),
        format!("--secure-port={api_port}"),
        "--bind-address=127.0.0.1".to_string(),
        "--advertise-address=127.0.0.1".to_string(),
        format!("--cert-dir={}", d.join("certs").display()),
        format!("--token-auth-file={}", tokens.display()),
        "--authorization-mode=RBAC".to_string(),
        "--service-account-issuer=https://kubernetes.default.svc".to_string(),
        format!("--service-account-key-file={}", key.display()),
        format!("--service-account-signing-key-file={}", key.display()),
        "--service-cluster-ip-range=10.96.0.0/12".to_string(),
        "--disable-admission-plugins=ServiceAccount".to_string(),
    ]
}

impl TestEnv {
    /// Starts the storage and an API server on it; returns once `/readyz` is ok.
    pub fn start(assets: &Path, backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let d = dir.path();
        let (storage, etcd_servers) = match backend {
            Backend::Etcd => {
                let (child, url) = start_etcd(assets, d);
                (Storage::Etcd(child), url)
            }
            Backend::Titan => {
                let (cluster, urls) = start_titan();
                (Storage::Titan(cluster), urls)
            }
        };
        let api_port = free_port();
        let kubeconfig = d.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(api_port))
            .unwrap_or_else(|e| panic!("kubeconfig: {e}"));
        let etcd_url = etcd_servers
            .split(',')
            .next()
            .unwrap_or_default()
            .to_string();
        let mut env = Self {
            storage,
            etcd_url,
            apiserver: None,
            apiserver_bin: assets.join("kube-apiserver"),
            apiserver_args: apiserver_args(d, &etcd_servers, api_port),
            kubeconfig,
            kubectl_bin: assets.join("kubectl"),
            dir,
        };
        env.start_apiserver();
        env
    }

    fn start_apiserver(&mut self) {
        let log = self.dir.path().join("apiserver.log");
        let child = spawn(&self.apiserver_bin, &self.apiserver_args, &log);
        self.apiserver = Some(child);
        self.wait_ready();
    }

    /// Stops the API server (`how`), starts it again with the same flags and
    /// storage, and waits until it is ready.
    pub fn restart_apiserver(&mut self, how: Stop) {
        if let Some(mut child) = self.apiserver.take() {
            match how {
                Stop::Kill => {
                    let _ = child.kill();
                }
                Stop::Graceful => {
                    let pid = child.id().to_string();
                    let _ = Command::new("kill").args(["-TERM", &pid]).status();
                }
            }
            let status = child.wait();
            println!("  kube-apiserver stopped ({how:?}): {status:?}");
        }
        self.start_apiserver();
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        while started.elapsed() < STARTUP_TIMEOUT {
            let ok = self
                .kubectl(&["get", "--raw", "/readyz"])
                .is_ok_and(|o| o.trim() == "ok");
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("kube-apiserver not ready after {STARTUP_TIMEOUT:?}");
    }

    /// The Titan cluster behind the API server (None on etcd).
    pub fn titan(&mut self) -> Option<&mut Cluster> {
        match &mut self.storage {
            Storage::Titan(c) => Some(c),
            Storage::Etcd(_) => None,
        }
    }

    /// SIGKILLs the Titan leader; returns its index. Panics on etcd.
    pub fn kill_titan_leader(&mut self) -> usize {
        let Some(cluster) = self.titan() else {
            panic!("no Titan cluster behind this API server");
        };
        tokio::task::block_in_place(|| {
            let leader = cluster.wait_leader(Duration::from_secs(20));
            cluster.nodes[leader].kill();
            leader
        })
    }

    /// Starts Titan member `i` again (same ports, data and flags); waits
    /// until the cluster has a leader.
    pub fn restart_titan_member(&mut self, i: usize) {
        let Some(cluster) = self.titan() else {
            panic!("no Titan cluster behind this API server");
        };
        tokio::task::block_in_place(|| {
            cluster.nodes[i].start();
            cluster.wait_leader(Duration::from_secs(20));
        });
    }

    /// Waits until the API server's compactor has compacted its storage at
    /// least once (its `compact_rev_key` is at version 2 or more: the first
    /// round only records a revision) and reads at revision 1 are refused as
    /// compacted, read through the etcd v3 API of the storage.
    pub async fn wait_for_apiserver_compaction(&self) {
        use titan_proto::etcdserverpb::{RangeRequest, kv_client::KvClient};
        let mut kv = KvClient::connect(self.etcd_url.clone())
            .await
            .unwrap_or_else(|e| panic!("etcd API at {}: {e}", self.etcd_url));
        let key = b"compact_rev_key".to_vec();
        let started = Instant::now();
        loop {
            let get = RangeRequest {
                key: key.clone(),
                ..Default::default()
            };
            let version = kv
                .range(get)
                .await
                .ok()
                .and_then(|r| r.into_inner().kvs.first().map(|kv| kv.version))
                .unwrap_or(0);
            if version >= 2 {
                break;
            }
            assert!(
                started.elapsed() < COMPACTION_WAIT,
                "the API server never compacted (compact_rev_key version {version})"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let old = RangeRequest {
            key,
            revision: 1,
            ..Default::default()
        };
        let refused = kv.range(old).await.err().map(|s| s.message().to_string());
        assert_eq!(
            refused.as_deref(),
            Some("etcdserver: mvcc: required revision has been compacted")
        );
    }

    /// Runs kubectl as the admin; Ok(stdout) on success, Err(stderr) otherwise.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.kubectl_bin)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `kubectl auth can-i ...` answer ("yes"/"no"); it exits non-zero on "no".
    pub fn can_i(&self, args: &[&str]) -> String {
        Command::new(&self.kubectl_bin)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// A client as the admin, impersonating `impersonate` when given.
    pub async fn client(&self, impersonate: Option<&str>) -> Client {
        let kubeconfig =
            Kubeconfig::read_from(&self.kubeconfig).unwrap_or_else(|e| panic!("kubeconfig: {e}"));
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("config: {e}"));
        config.auth_info.impersonate = impersonate.map(str::to_string);
        Client::try_from(config).unwrap_or_else(|e| panic!("client: {e}"))
    }
}

fn kubeconfig_yaml(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: https://127.0.0.1:{port}\n    \
insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: t\n  \
context:\n    cluster: t\n    user: admin\ncurrent-context: t\n"
    )
}
