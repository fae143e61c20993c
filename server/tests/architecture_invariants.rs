//! Enforces the ARCHITECTURE.md invariants that the compiler cannot check on
//! its own: the `titan-raft` crate depends on nothing that can do IO and uses
//! no clock, thread, env or file API from std; `titan-snapfile` stays a
//! pure byte layout; only `transport/` knows tonic
//! and the protos; nothing but the operator knows kube; `node/` names
//! neither the transport nor the API layer; comments cite nothing outside
//! the repository.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read source dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Lines of code (comments stripped) in `dir` that contain any of `needles`.
fn offending_lines(dir: &Path, needles: &[&str], exempt: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    for file in rust_files(dir) {
        let rel = file.to_string_lossy().replace('\\', "/");
        if exempt.iter().any(|e| rel.contains(e)) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read source file");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if needles.iter().any(|needle| code.contains(needle)) {
                hits.push(format!("{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    hits
}

fn src(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn raft_core_does_no_io_and_reads_no_clock_or_os_randomness() {
    let needles = [
        "std::fs",
        "std::net",
        "std::time",
        "std::thread",
        "std::env",
        "tokio",
        "rand::",
        "SystemTime",
        "Instant::",
        "println!",
    ];
    let hits = offending_lines(&src("../raft/src"), &needles, &[]);
    assert!(
        hits.is_empty(),
        "raft/ must stay sans-IO:\n{}",
        hits.join("\n")
    );
}

/// The crate boundary is the real guarantee: `titan-raft` may depend on
/// nothing but `thiserror`, so no runtime, socket or file crate can reach it.
#[test]
fn raft_crate_depends_only_on_thiserror() {
    assert_eq!(
        dependencies("../raft/Cargo.toml"),
        ["thiserror.workspace = true"],
        "titan-raft must stay IO-free"
    );
}

/// The `[dependencies]` lines of a manifest, comments and blanks dropped.
fn dependencies(manifest: &str) -> Vec<String> {
    let text = std::fs::read_to_string(src(manifest)).expect("read manifest");
    text.split("[dependencies]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

#[test]
fn snapshot_format_crate_stays_pure() {
    assert_eq!(
        dependencies("../snapfile/Cargo.toml"),
        [
            "crc32fast.workspace = true",
            "sha2.workspace = true",
            "thiserror.workspace = true"
        ],
        "titan-snapfile is the byte layout only (titanctl uses it without the server)"
    );
}

#[test]
fn only_the_transport_module_knows_tonic_and_the_protos() {
    let needles = [
        "tonic::",
        "tonic_health",
        "titan_proto",
        "prost::",
        "rustls",
    ];
    let hits = offending_lines(&src("src"), &needles, &["/src/transport/"]);
    assert!(
        hits.is_empty(),
        "tonic/proto types outside transport/:\n{}",
        hits.join("\n")
    );
}

#[test]
fn nothing_outside_the_operator_knows_kube() {
    let needles = ["kube::", "k8s_openapi"];
    let mut hits = offending_lines(&src("src"), &needles, &[]);
    hits.extend(offending_lines(&src("../client/src"), &needles, &[]));
    assert!(
        hits.is_empty(),
        "kube outside operator/:\n{}",
        hits.join("\n")
    );
}

/// `node/` owns the core and talks to the network only through its own
/// traits (`node/outbound.rs`) and `PeerInbox`; the tonic transport and the
/// API layer depend on it, never the other way round. The top-level
/// `server` module does the wiring.
#[test]
fn node_names_neither_transport_nor_api() {
    let needles = [
        "crate::transport",
        "crate::api",
        "titan_server::transport",
        "titan_server::api",
        "tonic",
    ];
    let hits = offending_lines(&src("src/node"), &needles, &[]);
    assert!(
        hits.is_empty(),
        "node/ must not name transport/, api/ or tonic:\n{}",
        hits.join("\n")
    );
}

/// Docs stand alone: no comment in the workspace's Rust sources points at an
/// issue tracker entry, a review finding or a spec section that is not in
/// the repository.
#[test]
fn comments_refer_to_no_document_outside_the_repo() {
    let pattern = |line: &str| {
        let lower = line.to_lowercase();
        let numbered = |word: &str| {
            lower.match_indices(word).any(|(i, _)| {
                let rest = lower[i + word.len()..].trim_start_matches(['#', ' ']);
                rest.starts_with(|c: char| c.is_ascii_digit())
            })
        };
        lower.contains("spec §") || numbered("issue ") || numbered("finding ")
    };
    let mut hits = Vec::new();
    for krate in [
        "raft", "snapfile", "server", "client", "operator", "soak", "testkit", "proto",
    ] {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(krate);
        for dir in ["src", "tests", "benches"] {
            let dir = root.join(dir);
            if !dir.is_dir() {
                continue;
            }
            for file in rust_files(&dir) {
                let text = std::fs::read_to_string(&file).expect("read source file");
                for (n, line) in text.lines().enumerate() {
                    let comment = line.split_once("//").map_or("", |(_, c)| c);
                    if pattern(comment) {
                        hits.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "comments citing outside documents:\n{}",
        hits.join("\n")
    );
}
