//! The command-line tools introduce themselves: their own one-line about text
//! (not the library crate's description), `--version`, and `titanctl
//! completion bash|zsh|fish` scripts that a shell can load.

use std::process::Command;

/// Runs a tool binary with `args`; (exit success, stdout).
fn run(bin: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

const TITANCTL: &str = env!("CARGO_BIN_EXE_titanctl");
const BENCH: &str = env!("CARGO_BIN_EXE_titan-bench");

#[test]
fn help_opens_with_each_tools_own_about_text() {
    let cases = [
        (
            TITANCTL,
            "Command-line client for a Titan cluster: keys, status, membership, snapshots",
        ),
        (
            BENCH,
            "Closed-loop load generator for Titan (TCP or gRPC) and etcd v3, for comparison",
        ),
    ];
    for (bin, about) in cases {
        let (ok, help) = run(bin, &["--help"]);
        assert!(ok, "{bin} --help");
        assert_eq!(help.lines().next(), Some(about), "{bin}: {help}");
        assert!(
            !help.contains("Async Rust client"),
            "{bin} --help shows the library's description: {help}"
        );
    }
}

#[test]
fn version_flag_prints_name_and_crate_version() {
    for (bin, name) in [(TITANCTL, "titanctl"), (BENCH, "titan-bench")] {
        let (ok, out) = run(bin, &["--version"]);
        assert!(ok, "{bin} --version");
        assert_eq!(out.trim(), format!("{name} {}", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn completion_scripts_cover_every_subcommand_for_each_shell() {
    let cases = [
        ("bash", "complete -F _titanctl"),
        ("zsh", "#compdef titanctl"),
        ("fish", "complete -c titanctl"),
    ];
    for (shell, marker) in cases {
        let (ok, script) = run(TITANCTL, &["completion", shell]);
        assert!(ok, "titanctl completion {shell}");
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for sub in [
            "get",
            "set",
            "status",
            "members",
            "transfer-leader",
            "completion",
        ] {
            assert!(script.contains(sub), "{shell} script lacks {sub}");
        }
    }
    let (ok, _) = run(TITANCTL, &["completion", "powershell-7"]);
    assert!(!ok, "an unknown shell is a command-line error");
}

/// The bash script is valid bash: sourcing it defines the completion function.
#[test]
fn bash_completion_script_loads_in_bash() {
    let (_, script) = run(TITANCTL, &["completion", "bash"]);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("titanctl.bash");
    std::fs::write(&path, script).unwrap_or_else(|e| panic!("write: {e}"));
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && declare -F _titanctl", path.display()))
        .output()
        .unwrap_or_else(|e| panic!("bash: {e}"));
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}
