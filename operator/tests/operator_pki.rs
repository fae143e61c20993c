//! The certificates the operator issues under `spec.tls`, used by a real
//! `titan-server` exactly as the pod's startup script passes them: the
//! operator's Admin client gets in with its own certificate of the cluster
//! CA, and is refused without one or with another CA's; a member's
//! certificate may read Status but not change the cluster; the plaintext TCP
//! port listens on loopback only; a TLS member's backup streams over TLS
//! verified with the cluster CA.
//!
//! The server binary is `TITAN_SERVER_BIN`, else `titan-server` in this
//! test's target dir (see `titan-testkit`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use titan_operator::admin::{
    AdminApi, AdminError, AdminTarget, AdminTls, GrpcAdmin, GrpcAdminConfig, TlsIdentity,
};
use titan_operator::backup::upload::{StreamTls, UploadConfig, open_snapshot};
use titan_operator::builders::Names;
use titan_operator::planner::NodeRole;
use titan_operator::tls::{
    CLIENT_CERT_KEY, CLIENT_KEY_KEY, ClusterCa, OPERATOR_CN, client_cert, member_certs,
};
use titan_testkit::Cluster;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

const NOW: i64 = 1_796_000_000;

fn names() -> Names {
    Names {
        cluster: "demo".into(),
        namespace: "prod".into(),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(NOW, |d| i64::try_from(d.as_secs()).unwrap_or(NOW))
}

/// Writes the member Secret's files as the pod sees them in `/etc/titan/tls`.
fn write_member_files(dir: &Path, data: &BTreeMap<String, String>) {
    for (name, pem) in data {
        std::fs::write(dir.join(name), pem).unwrap_or_else(|e| panic!("write {name}: {e}"));
    }
}

/// The startup script's TLS flags for member `demo-0` (`client_auth`:
/// `spec.tls.clientAuth`).
fn member_flags(dir: &Path, client_auth: bool) -> Vec<String> {
    let f = |name: &str| dir.join(name).display().to_string();
    let mut flags = vec![
        format!("--peer-tls-cert={}", f("demo-0.crt")),
        format!("--peer-tls-key={}", f("demo-0.key")),
        format!("--peer-tls-ca={}", f("ca.crt")),
        format!("--client-tls-cert={}", f("demo-0.crt")),
        format!("--client-tls-key={}", f("demo-0.key")),
        "--client-listen-addr=127.0.0.1".to_string(),
        format!("--admin-allowed-cn={OPERATOR_CN}"),
    ];
    if client_auth {
        flags.push(format!("--client-tls-ca={}", f("ca.crt")));
    }
    flags
}

fn identity_of(ca: &ClusterCa, now: i64) -> Arc<TlsIdentity> {
    let leaf = ca.issue_operator(now).expect("operator certificate");
    Arc::new(TlsIdentity {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: leaf.cert_pem,
        key_pem: leaf.key_pem,
    })
}

fn target(peer_port: u16, identity: Arc<TlsIdentity>) -> AdminTarget {
    AdminTarget::tls(
        &format!("127.0.0.1:{peer_port}"),
        AdminTls {
            identity,
            server_name: names().pod_host(0),
        },
    )
}

/// One TLS member `demo-0` started with the operator's flags and files,
/// and what the tests call it with.
struct Member {
    rt: tokio::runtime::Runtime,
    ca: ClusterCa,
    members: titan_operator::tls::MemberCerts,
    operator: Arc<TlsIdentity>,
    admin: GrpcAdmin,
    cluster: Cluster,
    _dir: tempfile::TempDir,
}

fn start_member(client_auth: bool) -> Member {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let now = now();
    let ca = ClusterCa::generate(&names(), now).expect("ca");
    let members = member_certs(&ca, &names(), 1, &BTreeMap::new(), now).expect("members");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    write_member_files(dir.path(), &members.data);
    let flags = member_flags(dir.path(), client_auth);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let operator = identity_of(&ca, now);
    let harness_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&operator.ca_pem))
        .identity(Identity::from_pem(&operator.cert_pem, &operator.key_pem))
        .domain_name(names().pod_host(0));
    let cluster = Cluster::start_tls(1, &flags, harness_tls);
    let admin = GrpcAdmin::new(GrpcAdminConfig {
        connect_timeout_ms: 2_000,
        request_timeout_ms: 5_000,
    });
    Member {
        rt,
        ca,
        members,
        operator,
        admin,
        cluster,
        _dir: dir,
    }
}

#[test]
fn operator_issued_certificates_admit_the_operator_and_refuse_everyone_else() {
    let Member {
        rt,
        ca,
        operator,
        admin,
        cluster,
        ..
    } = start_member(false);
    let now = now();
    let node = &cluster.nodes[0];

    // The operator's own certificate, verified as the pod's DNS name.
    let status = rt
        .block_on(admin.status(target(node.peer_port, operator.clone())))
        .unwrap_or_else(|e| panic!("operator refused: {e}"));
    assert_eq!(status.role, NodeRole::Leader);

    // Another CA's certificate: refused by the member.
    let stranger_ca = ClusterCa::generate(&names(), now).expect("stranger ca");
    let mut stranger = (*identity_of(&stranger_ca, now)).clone();
    stranger.ca_pem = ca.cert_pem().to_string();
    let refused = rt.block_on(admin.status(target(node.peer_port, Arc::new(stranger))));
    assert!(
        matches!(
            refused,
            Err(AdminError::Connect { .. } | AdminError::Rpc { .. })
        ),
        "a certificate of another CA got in: {refused:?}"
    );

    // Plaintext on the peer port: refused.
    let plain =
        rt.block_on(admin.status(AdminTarget::plain(&format!("127.0.0.1:{}", node.peer_port))));
    assert!(plain.is_err(), "plaintext Admin call got in: {plain:?}");

    // The member is verified too: a name its certificate does not carry fails.
    let mut wrong_name = target(node.peer_port, operator);
    if let Some(tls) = wrong_name.tls.as_mut() {
        tls.server_name = "demo-7.demo-peers.prod.svc".to_string();
    }
    let wrong = rt.block_on(admin.status(wrong_name));
    assert!(wrong.is_err(), "a wrong server name was accepted");

    // The plaintext TCP port answers on loopback only.
    assert!(cluster.set("k", "v"), "SET over loopback");
    let outside = outside_address();
    if let Some(ip) = outside {
        let reached = std::net::TcpStream::connect((ip, node.client_port))
            .map(|_| ())
            .is_ok();
        assert!(!reached, "plaintext port reachable on {ip}");
    }
    // A backup streams from the member's client port over TLS, verified
    // with the cluster CA (no client certificate needed there); with
    // another CA the member is not trusted.
    let grpc = format!("https://{}", node.grpc_endpoint());
    let bytes = rt
        .block_on(snapshot_bytes(&grpc, &verified_by(ca.cert_pem())))
        .unwrap_or_else(|e| panic!("snapshot over TLS: {e}"));
    assert!(bytes > 0, "an empty snapshot stream");
    let untrusted = rt.block_on(snapshot_bytes(&grpc, &verified_by(stranger_ca.cert_pem())));
    assert!(untrusted.is_err(), "a member another CA signed was trusted");
    println!(
        "ok: mTLS admin as the operator; other CA, plaintext and wrong name refused; \
         TCP on loopback (outside address checked: {outside:?}); {bytes} snapshot bytes over TLS"
    );
}

#[test]
fn a_members_certificate_reads_status_but_cannot_change_the_cluster() {
    let Member {
        rt,
        ca,
        members,
        operator,
        admin,
        cluster,
        ..
    } = start_member(false);
    let node = &cluster.nodes[0];
    let status = rt
        .block_on(admin.status(target(node.peer_port, operator.clone())))
        .unwrap_or_else(|e| panic!("operator refused: {e}"));
    // A member's own certificate gets through the peer port's mutual TLS
    // and may read Status (members probe each other), but it is not the
    // admin identity: it cannot remove a member, move leadership or take a
    // snapshot. The operator can.
    let member = Arc::new(TlsIdentity {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: members.data["demo-0.crt"].clone(),
        key_pem: members.data["demo-0.key"].clone(),
    });
    let as_member = target(node.peer_port, member);
    rt.block_on(admin.status(as_member.clone()))
        .unwrap_or_else(|e| panic!("a member's Status refused: {e}"));
    let refusals = [
        (
            "RemoveMember",
            rt.block_on(admin.remove(as_member.clone(), status.id)),
        ),
        (
            "TransferLeadership",
            rt.block_on(admin.transfer_leadership(as_member.clone(), status.id)),
        ),
        (
            "TakeSnapshot",
            rt.block_on(admin.take_snapshot(as_member)).map(|_| ()),
        ),
    ];
    for (call, got) in refusals {
        match got {
            Err(AdminError::Rpc { status: s, .. }) => {
                assert_eq!(s.code(), tonic::Code::PermissionDenied, "{call}: {s:?}");
                assert!(
                    s.message().contains("CN=demo-0") && s.message().contains(OPERATOR_CN),
                    "{call}: {}",
                    s.message()
                );
            }
            other => panic!("{call} with a member's certificate: {other:?}"),
        }
    }
    let after = rt
        .block_on(admin.status(target(node.peer_port, operator.clone())))
        .unwrap_or_else(|e| panic!("status: {e}"));
    assert_eq!(
        after.role,
        NodeRole::Leader,
        "the refused calls changed the member"
    );
    assert_eq!(
        after.members.len(),
        1,
        "the refused RemoveMember removed a member"
    );
    let taken = rt
        .block_on(admin.take_snapshot(target(node.peer_port, operator.clone())))
        .unwrap_or_else(|e| panic!("the operator's TakeSnapshot refused: {e}"));

    println!(
        "ok: a member's certificate read Status and was refused RemoveMember, \
         TransferLeadership and TakeSnapshot; the operator's took {taken:?}"
    );
}

/// `spec.tls.clientAuth`: the gRPC port serves a client certificate the
/// operator issued (`spec.tls.clientCertificates`) and refuses a client
/// without one; a backup streams only with the operator's certificate.
#[test]
fn client_auth_serves_issued_client_certificates_and_refuses_anonymous_clients() {
    let Member {
        rt,
        ca,
        operator,
        cluster,
        ..
    } = start_member(true);
    let grpc = format!("https://{}", cluster.nodes[0].grpc_endpoint());
    let app = client_cert(&ca, "filesync", &BTreeMap::new(), now())
        .expect("client certificate")
        .expect("issued");

    let anonymous = rt.block_on(put(&grpc, ca.cert_pem(), None));
    assert!(anonymous.is_err(), "a client without a certificate wrote");
    let issued = Some((app[CLIENT_CERT_KEY].as_str(), app[CLIENT_KEY_KEY].as_str()));
    rt.block_on(put(&grpc, ca.cert_pem(), issued))
        .unwrap_or_else(|e| panic!("the issued client certificate was refused: {e}"));

    let refused = rt.block_on(snapshot_bytes(&grpc, &verified_by(ca.cert_pem())));
    assert!(refused.is_err(), "a backup streamed without a certificate");
    let mutual = StreamTls {
        ca_pem: ca.cert_pem().to_string(),
        identity: Some(operator),
    };
    let bytes = rt
        .block_on(snapshot_bytes(&grpc, &mutual))
        .unwrap_or_else(|e| panic!("the operator's backup stream was refused: {e}"));
    assert!(bytes > 0);
    println!(
        "ok: anonymous put refused ({}); CN=filesync put served; backup stream {bytes} bytes \
         with the operator's certificate, refused without",
        anonymous.err().unwrap_or_default()
    );
}

/// An etcd Put of `k` over TLS verified with `ca_pem`, presenting
/// `identity` (certificate, key) if given.
async fn put(grpc: &str, ca_pem: &str, identity: Option<(&str, &str)>) -> Result<(), String> {
    use titan_proto::etcdserverpb::PutRequest;
    use titan_proto::etcdserverpb::kv_client::KvClient;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(names().pod_host(0));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = tonic::transport::Endpoint::from_shared(grpc.to_string())
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    KvClient::new(channel)
        .put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..PutRequest::default()
        })
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// A stream verified with `ca_pem`, without a client certificate.
fn verified_by(ca_pem: &str) -> StreamTls {
    StreamTls {
        ca_pem: ca_pem.to_string(),
        identity: None,
    }
}

/// Bytes of a whole etcd Maintenance.Snapshot stream from `grpc`, the
/// member verified as `tls` says.
async fn snapshot_bytes(grpc: &str, tls: &StreamTls) -> Result<usize, String> {
    let config = UploadConfig::default();
    let mut stream = open_snapshot(grpc, Some(tls), &config)
        .await
        .map_err(|e| e.to_string())?;
    let mut bytes = 0;
    while let Some(msg) = stream.message().await.map_err(|e| e.to_string())? {
        bytes += msg.blob.len();
    }
    Ok(bytes)
}

/// A non-loopback address of this host, if it has one.
fn outside_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback()).then_some(ip)
}
