//! The three reproductions of the reliability review, against
//! real `titan-server` processes:
//! - a value with `\n` written over gRPC must never split a TCP reply;
//! - a value larger than storage can hold is refused at the edge, cleanly;
//! - a full disk makes the node unhealthy and exit, and loses no
//!   acknowledged write.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Node, base_args, rt};
use titan_proto::v1 as pb;
use titan_proto::v1::kv_client::KvClient;
use titan_server::node::limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES};

fn single_node(root: &Path, extra: &[&str]) -> Node {
    let mut node = Node::new(root, "solo");
    node.args = base_args();
    node.args.extend(extra.iter().map(|s| s.to_string()));
    node.start();
    wait_writable(&node);
    node
}

fn wait_writable(node: &Node) {
    let mut c = node.client();
    common::wait_for(Duration::from_secs(10), "single node leader", || {
        (c.cmd("SET ready 1").ok()? == "OK").then_some(())
    });
}

fn kv(port: u16) -> KvClient<tonic::transport::Channel> {
    rt().block_on(KvClient::connect(format!("http://127.0.0.1:{port}")))
        .expect("kv connect")
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20)
}

fn grpc_put(port: u16, key: &[u8], value: Vec<u8>) -> Result<pb::PutResponse, tonic::Status> {
    let req = pb::PutRequest {
        key: key.to_vec(),
        value,
        condition: None,
    };
    rt().block_on(kv(port).put(req)).map(|r| r.into_inner())
}

/// Sends `input`, closes the write side and returns every reply line.
fn pipelined(port: u16, input: &[u8]) -> Vec<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(input).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines().map(str::to_string).collect()
}

/// The HTTP status of `GET path`, or None if nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1)?.parse().ok()
}

/// The body of `GET path` (HTTP/1.0, read to EOF), or None.
fn http_body(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The overall gRPC health status (1 = SERVING, 2 = NOT_SERVING), or None.
fn grpc_health(port: u16) -> Option<i32> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let addr = format!("http://127.0.0.1:{port}");
    rt().block_on(async move {
        let call = async {
            let channel = tonic::transport::Endpoint::from_shared(addr)
                .ok()?
                .connect()
                .await
                .ok()?;
            let mut c = HealthClient::new(channel);
            let req = HealthCheckRequest {
                service: String::new(),
            };
            c.check(req).await.ok().map(|r| r.into_inner().status)
        };
        tokio::time::timeout(Duration::from_millis(300), call)
            .await
            .ok()
            .flatten()
    })
}

#[test]
fn a_value_with_newlines_written_over_grpc_never_splits_tcp_replies() {
    let root = tempfile::tempdir().unwrap();
    let node = single_node(root.path(), &[]);
    grpc_put(node.grpc_port, b"inj", b"a\nOK\nVALUE pwned".to_vec()).expect("gRPC put");
    grpc_put(node.grpc_port, b"cr", b"x\r".to_vec()).expect("gRPC put");
    let replies = pipelined(node.client_port, b"GET inj\nGET missing\nPING\n");
    assert_eq!(
        replies,
        ["VALUE_B64 YQpPSwpWQUxVRSBwd25lZA==", "NOT_FOUND", "PONG"],
        "exactly three replies, the value base64-encoded on one line"
    );
    let replies = pipelined(
        node.client_port,
        b"GET cr\r\nSET plain a b\r\nGET plain\r\n",
    );
    assert_eq!(replies, ["VALUE_B64 eA0=", "OK", "VALUE a b"]);
}

#[test]
fn an_oversize_value_is_refused_at_the_edge_and_the_node_keeps_serving() {
    let root = tempfile::tempdir().unwrap();
    let node = single_node(root.path(), &["--max-line-bytes=33554432"]);
    let mut line = b"SET huge ".to_vec();
    line.resize(line.len() + (17 << 20), b'x');
    line.extend_from_slice(b"\nPING\nSET after ok\nGET after\n");
    let replies = pipelined(node.client_port, &line);
    assert_eq!(
        replies,
        [
            format!("ERR value too large (max {MAX_VALUE_BYTES} bytes)"),
            "PONG".into(),
            "OK".into(),
            "VALUE ok".into(),
        ]
    );
    let err = grpc_put(node.grpc_port, b"huge", vec![b'x'; MAX_VALUE_BYTES + 1]).unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("value too large"), "{err:?}");
    let err = grpc_put(
        node.grpc_port,
        &vec![b'k'; MAX_KEY_BYTES + 1],
        b"v".to_vec(),
    )
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    // Past the largest request storage accepts, tonic refuses the message
    // from its length prefix, before buffering the body (OUT_OF_RANGE).
    let err = grpc_put(node.grpc_port, b"huge", vec![b'x'; 17 << 20]).unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    let big = grpc_put(node.grpc_port, b"big", vec![b'y'; MAX_VALUE_BYTES]).expect("max-size put");
    assert!(big.succeeded);
    assert_eq!(http_status(node.http_port, "/healthz"), Some(200));
    let mut c = node.client();
    assert_eq!(c.cmd("SET still serving").unwrap(), "OK");
    assert_eq!(c.cmd("GET still").unwrap(), "VALUE serving");
}

/// A tmpfs mounted for one test, unmounted on drop (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(&dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Writes 32 KiB values until a write fails; returns the acknowledged keys.
fn fill_until_refused(node: &Node) -> Vec<String> {
    let mut c = node.client();
    let mut acked = Vec::new();
    for i in 0..2000 {
        let key = format!("k{i}");
        match c.cmd(&format!("SET {key} {}", value_for(i))) {
            Ok(r) if r == "OK" => acked.push(key),
            Ok(r) => {
                assert!(r.starts_with("ERR UNAVAILABLE"), "{r}");
                assert!(!r.contains("UNAVAILABLE UNAVAILABLE"), "{r}");
                return acked;
            }
            Err(_) => return acked,
        }
    }
    panic!("an 8 MiB disk took 2000 writes of 32 KiB");
}

fn value_for(i: usize) -> String {
    format!("{i}-{}", "v".repeat(32 << 10))
}

#[test]
fn a_full_disk_makes_the_node_exit_unhealthy_and_loses_no_acknowledged_write() {
    let root = tempfile::tempdir().unwrap();
    // The data dir itself is the small disk; the node's log sits beside it.
    let Some(_disk) = Tmpfs::mount(root.path().join("small/solo"), "8m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let mut node = Node::new(&root.path().join("small"), "solo");
    node.args = base_args();
    node.start();
    wait_writable(&node);
    let acked = fill_until_refused(&node);
    assert!(acked.len() > 10, "only {} writes fit", acked.len());
    // Unhealthy at once, then a non-zero exit after a short drain.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut saw_unhealthy = false;
    let mut saw_metric = false;
    let mut saw_grpc_not_serving = false;
    let code = loop {
        if let Some(status) = node.child.as_mut().unwrap().try_wait().unwrap() {
            break status.code();
        }
        if http_status(node.http_port, "/healthz").is_some_and(|s| s != 200) {
            saw_unhealthy = true;
            saw_metric |= http_body(node.http_port, "/metrics")
                .is_some_and(|m| m.contains("titan_storage_fatal 1"));
            // Any gRPC health answer after the failure must be NOT_SERVING.
            if let Some(serving) = grpc_health(node.grpc_port) {
                assert_ne!(serving, 1, "gRPC health still SERVING after a fatal error");
                saw_grpc_not_serving = true;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the node still runs after a full disk"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    node.child = None;
    assert_eq!(code, Some(3), "exit status after a fatal storage error");
    assert!(
        saw_unhealthy,
        "/healthz failed during the drain before exit"
    );
    assert!(saw_metric, "titan_storage_fatal was 1 during the drain");
    assert!(
        saw_grpc_not_serving,
        "gRPC health answered NOT_SERVING during the drain"
    );
    let log = std::fs::read_to_string(node.data_dir.with_extension("log")).unwrap();
    assert!(
        log.contains("fatal storage error") && log.contains("No space left on device"),
        "the log says what failed and where:\n{log}"
    );
    // Restart with space: every acknowledged write is there.
    let roomy = root.path().join("roomy");
    std::fs::create_dir_all(&roomy).unwrap();
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&node.data_dir)
        .arg(roomy.join("solo"))
        .status()
        .unwrap();
    assert!(copied.success());
    node.data_dir = roomy.join("solo");
    node.start();
    wait_writable(&node);
    let mut c = node.client();
    for (i, key) in acked.iter().enumerate() {
        let got = c.cmd(&format!("GET {key}")).unwrap();
        assert_eq!(got, format!("VALUE {}", value_for(i)), "{key} lost");
    }
}

/// Regression: every batch from an unknown sender id used to open an outbound
/// stream (a task and a queue) to the address it claimed. Now at most
/// `MAX_UNKNOWN_PEER_LINKS` (8) are opened for non-members.
#[test]
fn messages_from_many_unknown_senders_open_a_bounded_number_of_peer_links() {
    use titan_proto::v1::raft_client::RaftClient;
    let root = tempfile::tempdir().unwrap();
    let node = single_node(root.path(), &[]);
    let status = node.status().expect("admin status");
    let batches: Vec<pb::MessageBatch> = (0..40u64)
        .map(|i| pb::MessageBatch {
            cluster_id: status.cluster_id.clone(),
            msgs: vec![pb::RaftMessage {
                msg_type: 7, // Heartbeat, from a stale term: ignored by the core.
                from: 1000 + i,
                to: status.id,
                ..Default::default()
            }],
            sender_addr: format!("127.0.0.1:{}", 1 + i),
            ..Default::default()
        })
        .collect();
    let addr = format!("http://127.0.0.1:{}", node.peer_port);
    rt().block_on(async move {
        let mut c = RaftClient::connect(addr).await.expect("raft connect");
        c.send(tokio_stream::iter(batches)).await.expect("send");
    });
    let links = || {
        let m = http_body(node.http_port, "/metrics")?;
        let line = m.lines().find(|l| l.starts_with("titan_peer_links "))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    };
    common::wait_for(Duration::from_secs(5), "8 peer links", || {
        links().filter(|&n| n >= 8)
    });
    // Every batch was delivered before `send` returned; give the runtime time.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        links(),
        Some(8),
        "one link per unknown sender up to the bound"
    );
    let mut c = node.client();
    assert_eq!(c.cmd("SET after unknown").unwrap(), "OK");
}
