//! Log output of a real `titan-server`: `--log-format json` writes one JSON
//! object per line; text written to a file (not a terminal) has no ANSI
//! colour codes; `TITAN_LOG_LEVEL` filters as `--log-level` does.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Node, base_args};

/// Starts one node with `extra` flags and, when given, `TITAN_LOG_LEVEL`;
/// waits until it serves, stops it, and returns its stderr.
fn node_log(extra: &[&str], env_level: Option<&str>) -> String {
    let root = tempfile::tempdir().expect("tempdir");
    let mut node = Node::new(root.path(), "solo");
    let log = std::fs::File::create(node.data_dir.with_extension("log")).expect("log");
    let mut cmd = Command::new(common::server_bin());
    cmd.arg("--id=solo")
        .arg(format!("--port={}", node.peer_port))
        .arg(format!("--client-port={}", node.client_port))
        .arg(format!("--grpc-port={}", node.grpc_port))
        .arg(format!("--http-port={}", node.http_port))
        .arg("--listen-addr=127.0.0.1")
        .arg(format!(
            "--advertise-client-addr=127.0.0.1:{}",
            node.client_port
        ))
        .arg(format!(
            "--advertise-peer-addr=127.0.0.1:{}",
            node.peer_port
        ))
        .arg(format!(
            "--advertise-grpc-addr=127.0.0.1:{}",
            node.grpc_port
        ))
        .arg(format!("--data-dir={}", node.data_dir.display()))
        .args(base_args())
        .args(extra)
        .env_remove("RUST_LOG")
        .env_remove("TITAN_LOG_LEVEL")
        .env_remove("TITAN_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(level) = env_level {
        cmd.env("TITAN_LOG_LEVEL", level);
    }
    node.child = Some(cmd.spawn().expect("spawn titan-server"));
    let mut c = node.client();
    common::wait_for(Duration::from_secs(10), "single node serving", || {
        (c.cmd("SET ready 1").ok()? == "OK").then_some(())
    });
    assert_eq!(node.terminate(Duration::from_secs(10)), Some(0));
    std::fs::read_to_string(node.data_dir.with_extension("log")).expect("node log")
}

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    let log = node_log(&["--log-format=json"], None);
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "start-up is logged: {log}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
    }
    assert!(log.contains("\"message\":\"listening\""), "{log}");
}

#[test]
fn text_logs_to_a_file_carry_no_colour_codes() {
    let log = node_log(&[], None);
    assert!(log.contains(" INFO "), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape in a file: {log}");
}

#[test]
fn log_level_from_the_environment_filters_like_the_flag() {
    let quiet = node_log(&[], Some("warn"));
    assert!(!quiet.contains(" INFO "), "{quiet}");
    let flag = node_log(&["--log-level=warn"], None);
    assert!(!flag.contains(" INFO "), "{flag}");
    let flag_wins = node_log(&["--log-level=info"], Some("warn"));
    assert!(flag_wins.contains(" INFO "), "{flag_wins}");
}
