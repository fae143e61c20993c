//! The TCP protocol (README.md, "Protocol") over real sockets against real `titan-server` processes.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use common::{Client, Cluster, Node, base_args};

#[test]
fn every_spec_table_line_works_on_leader_and_followers() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let leader_addr = format!("127.0.0.1:{}", cluster.nodes[leader].client_port);
    let mut l = cluster.nodes[leader].client();
    assert_eq!(l.cmd("PING").unwrap(), "PONG");
    assert_eq!(l.cmd("GET missing").unwrap(), "NOT_FOUND");
    assert_eq!(l.cmd("SET k1 v1").unwrap(), "OK");
    assert_eq!(l.cmd("GET k1").unwrap(), "VALUE v1");
    assert_eq!(l.cmd("DELETE k1").unwrap(), "OK");
    assert_eq!(l.cmd("DELETE never-existed").unwrap(), "OK");
    assert_eq!(l.cmd("GET k1").unwrap(), "NOT_FOUND");
    assert_eq!(l.cmd("SET k2 v2").unwrap(), "OK");
    for (i, node) in cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
    {
        let mut f = node.client();
        assert_eq!(f.cmd("ping").unwrap(), "PONG", "follower {i}");
        // Linearizable read on a follower sees the write the leader acknowledged.
        assert_eq!(f.cmd("get k2").unwrap(), "VALUE v2", "follower {i}");
        assert_eq!(f.cmd("GET k1").unwrap(), "NOT_FOUND", "follower {i}");
        assert_eq!(
            f.cmd("SET k3 v3").unwrap(),
            format!("ERR NOT_LEADER {leader_addr}")
        );
        assert_eq!(
            f.cmd("DELETE k2").unwrap(),
            format!("ERR NOT_LEADER {leader_addr}")
        );
    }
    assert_eq!(
        l.cmd("GET k2").unwrap(),
        "VALUE v2",
        "follower writes were refused"
    );
}

fn single_node(extra: &[&str]) -> (tempfile::TempDir, Node) {
    let root = tempfile::tempdir().expect("tempdir");
    let mut node = Node::new(root.path(), "solo");
    node.args = base_args();
    node.args.extend(extra.iter().map(|s| s.to_string()));
    node.start();
    let mut c = node.client();
    common::wait_for(Duration::from_secs(10), "single node leader", || {
        (c.cmd("SET ready 1").ok()? == "OK").then_some(())
    });
    (root, node)
}

#[test]
fn json_value_with_spaces_round_trips() {
    let (_root, node) = single_node(&[]);
    let mut c = node.client();
    let json = r#"{"path": "/a b/c.txt", "size": 12, "tags": ["x y", "z"]}"#;
    assert_eq!(c.cmd(&format!("SET file:1 {json}")).unwrap(), "OK");
    assert_eq!(c.cmd("GET file:1").unwrap(), format!("VALUE {json}"));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (_root, node) = single_node(&[]);
    let mut c = node.client();
    let mut batch = String::new();
    for i in 0..300 {
        batch.push_str(&format!("SET p{i} v{i}\nGET p{i}\n"));
    }
    batch.push_str("PING\n");
    c.send_raw(batch.as_bytes()).unwrap();
    for i in 0..300 {
        assert_eq!(c.read_line().unwrap(), "OK", "reply to SET p{i}");
        assert_eq!(
            c.read_line().unwrap(),
            format!("VALUE v{i}"),
            "reply to GET p{i}"
        );
    }
    assert_eq!(c.read_line().unwrap(), "PONG");
}

#[test]
fn oversize_line_gets_error_and_connection_stays_usable() {
    let (_root, node) = single_node(&["--max-line-bytes=1024"]);
    let mut c = node.client();
    let long = format!("SET big {}\nPING\n", "x".repeat(200_000));
    c.send_raw(long.as_bytes()).unwrap();
    assert_eq!(c.read_line().unwrap(), "ERR line too long");
    assert_eq!(c.read_line().unwrap(), "PONG");
    assert_eq!(c.cmd("SET small ok").unwrap(), "OK");
    assert_eq!(c.cmd("GET big").unwrap(), "NOT_FOUND");
}

#[test]
fn garbage_and_malformed_lines_get_err_and_connection_stays_usable() {
    let (_root, node) = single_node(&[]);
    let mut c = node.client();
    for bad in [
        &b"\xff\xfe\x00garbage\n"[..],
        b"FLY away\n",
        b"GET\n",
        b"SET onlykey\n",
        b"GET a b\n",
    ] {
        c.send_raw(bad).unwrap();
        let reply = c.read_line().unwrap();
        assert!(reply.starts_with("ERR "), "{bad:?} got {reply:?}");
    }
    assert_eq!(c.cmd("PING").unwrap(), "PONG");
}

#[test]
fn half_closed_connection_gets_every_reply_then_eof() {
    let (_root, node) = single_node(&[]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", node.client_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"SET nc 1\r\nGET nc\nGET nope").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out, "OK\nVALUE 1\nNOT_FOUND\n");
}

#[test]
fn writes_without_quorum_get_unavailable() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut node = Node::new(root.path(), "node1");
    let dead1 = common::free_port();
    let dead2 = common::free_port();
    node.args = base_args();
    node.args.push(format!(
        "-peers=node2:127.0.0.1:{dead1}:1,node3:127.0.0.1:{dead2}:2"
    ));
    node.start();
    let mut c: Client = node.client();
    let reply = c.cmd("SET k v").unwrap();
    assert!(reply.starts_with("ERR UNAVAILABLE"), "{reply}");
    assert_eq!(c.cmd("PING").unwrap(), "PONG");
}

#[test]
fn flags_work_as_titan_environment_variables() {
    let root = tempfile::tempdir().expect("tempdir");
    let port = |_| common::free_port();
    let (peer, client, grpc, http) = (port(0), port(1), port(2), port(3));
    let mut child = std::process::Command::new(common::server_bin())
        .env("TITAN_ID", "envnode")
        .env("TITAN_PORT", peer.to_string())
        .env("TITAN_CLIENT_PORT", client.to_string())
        .env("TITAN_GRPC_PORT", grpc.to_string())
        .env("TITAN_HTTP_PORT", http.to_string())
        .env("TITAN_LISTEN_ADDR", "127.0.0.1")
        .env("TITAN_ADVERTISE_CLIENT_ADDR", format!("127.0.0.1:{client}"))
        .env("TITAN_ADVERTISE_PEER_ADDR", format!("127.0.0.1:{peer}"))
        .env("TITAN_DATA_DIR", root.path().join("env"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let result = std::panic::catch_unwind(|| {
        let mut c = common::wait_for(Duration::from_secs(10), "env node", || {
            Client::connect(client).ok()
        });
        assert_eq!(c.cmd("PING").unwrap(), "PONG");
        common::wait_for(Duration::from_secs(10), "env node leads", || {
            (c.cmd("SET e 1").ok()? == "OK").then_some(())
        });
        assert_eq!(c.cmd("GET e").unwrap(), "VALUE 1");
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        root.path().join("env").join("identity").exists(),
        "data dir came from TITAN_DATA_DIR"
    );
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
