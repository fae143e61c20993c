//! `spec.bootstrap.fromBackup`: the `restore-backup` init container and the
//! lines of the server's startup script that use what it fetched.
//!
//! On an initial member of a cluster that has not bootstrapped, the init
//! container runs `titan-operator fetch-backup` (the image carries the
//! operator binary), which writes [`RESTORE_FILE`] only once the whole
//! object checked out; the server then starts with `--restore-from` on it.
//! Any other pod, and every pod once the cluster has bootstrapped, fetches
//! nothing: joining members get the data from the leader. After bootstrap
//! the startup script deletes the file.

use k8s_openapi::api::core::v1::{Container, EnvVar, EnvVarSource, SecretKeySelector, VolumeMount};

use super::Names;
use super::statefulset::{DATA_DIR, identity_env, restricted_security_context};
use crate::backup::resource::{ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN};
use crate::crd::{BackupSource, TitanCluster};

/// Name of the init container.
pub const RESTORE_CONTAINER: &str = "restore-backup";
/// Where the checked backup lands in the member's volume.
pub const RESTORE_FILE: &str = "/var/lib/titan/restore/backup.snapshot";

/// Arguments reach the script as `"$@"`, never spliced into its text, so no
/// bucket or key can inject shell.
const FETCH_SCRIPT: &str = r#"set -eu
if [ "${BOOTSTRAPPED}" = "true" ]; then
  echo "restore-backup: the cluster has bootstrapped; nothing to fetch"; exit 0
fi
case ",${INITIAL_PEERS}," in
  *",${POD_NAME}:"*) ;;
  *) echo "restore-backup: ${POD_NAME} is not an initial member; it joins and gets the data from the leader"; exit 0 ;;
esac
exec titan-operator fetch-backup "$@"
"#;

/// The startup-script line, inside the initial-member branch, that passes
/// the fetched backup to the server.
pub fn restore_flag_script() -> String {
    format!("    if [ -f {RESTORE_FILE} ]; then set -- \"$@\" --restore-from {RESTORE_FILE}; fi\n")
}

/// The startup-script line that deletes the backup once the cluster has
/// bootstrapped (its data lives in the member's own snapshot by then).
pub fn cleanup_script() -> String {
    format!("if [ \"${{BOOTSTRAPPED}}\" = \"true\" ]; then rm -f {RESTORE_FILE}; fi\n")
}

/// The `restore-backup` init container.
pub fn restore_container(
    cluster: &TitanCluster,
    names: &Names,
    source: &BackupSource,
) -> Container {
    let s3 = &source.s3;
    let mut args = vec![
        RESTORE_CONTAINER.to_string(),
        "--bucket".to_string(),
        s3.bucket.clone(),
        "--key".to_string(),
        s3.key.clone(),
        "--region".to_string(),
        s3.region.clone(),
        "--out".to_string(),
        RESTORE_FILE.to_string(),
    ];
    if let Some(endpoint) = &s3.endpoint {
        args.extend(["--endpoint".to_string(), endpoint.clone()]);
    }
    if s3.allow_http {
        args.push("--allow-http".to_string());
    }
    if let Some(sha) = &source.sha256 {
        args.extend(["--sha256".to_string(), sha.clone()]);
    }
    let mut env = identity_env(names);
    env.extend([
        secret_env(&s3.credentials_secret, ACCESS_KEY_ID, false),
        secret_env(&s3.credentials_secret, SECRET_ACCESS_KEY, false),
        secret_env(&s3.credentials_secret, SESSION_TOKEN, true),
    ]);
    Container {
        name: RESTORE_CONTAINER.to_string(),
        image: Some(cluster.spec.image.clone()),
        image_pull_policy: Some(cluster.spec.image_pull_policy.as_str().to_string()),
        command: Some(vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            FETCH_SCRIPT.to_string(),
        ]),
        args: Some(args),
        env: Some(env),
        // The error it exits with becomes the termination message, which
        // the operator copies into the cluster's Degraded condition.
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".to_string(),
            mount_path: DATA_DIR.to_string(),
            ..VolumeMount::default()
        }]),
        security_context: Some(restricted_security_context()),
        ..Container::default()
    }
}

fn secret_env(secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: key.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: key.to_string(),
                optional: Some(optional),
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn restored_spec(source: serde_json::Value) -> serde_json::Value {
        json!({"replicas": 3, "bootstrap": {"fromBackup": source}})
    }

    #[test]
    fn a_restored_cluster_fetches_in_an_init_container_with_argv_not_shell_text() {
        let spec = crate::fixtures::pod_spec(restored_spec(json!({
            "s3": {"bucket": "b", "key": "k'; rm -rf / #", "credentialsSecret": "s3",
                   "endpoint": "http://minio:9000", "allowHttp": true},
            "sha256": "ab".repeat(32),
        })));
        let init = spec.init_containers.unwrap_or_default();
        assert_eq!(init.len(), 1);
        let c = &init[0];
        assert_eq!(c.name, RESTORE_CONTAINER);
        let script = &c.command.as_ref().unwrap_or_else(|| panic!("command"))[2];
        assert!(
            !script.contains("rm -rf"),
            "the key never enters the script"
        );
        let args = c.args.clone().unwrap_or_default();
        let want: Vec<String> = [
            "restore-backup",
            "--bucket",
            "b",
            "--key",
            "k'; rm -rf / #",
            "--region",
            "us-east-1",
            "--out",
            RESTORE_FILE,
            "--endpoint",
            "http://minio:9000",
            "--allow-http",
            "--sha256",
            &"ab".repeat(32),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(args, want);
        let env = c.env.clone().unwrap_or_default();
        let secret_keys: Vec<(String, bool)> = env
            .iter()
            .filter_map(|e| {
                let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
                Some((r.key.clone(), r.optional == Some(true)))
            })
            .collect();
        assert_eq!(
            secret_keys,
            [
                (ACCESS_KEY_ID.to_string(), false),
                (SECRET_ACCESS_KEY.to_string(), false),
                (SESSION_TOKEN.to_string(), true)
            ]
        );
        let server = &spec.containers[0].command.clone().unwrap_or_default()[2];
        assert!(server.contains(&restore_flag_script()), "{server}");
        assert!(server.contains(&cleanup_script()), "{server}");
    }

    #[test]
    fn other_clusters_keep_their_pod_template() {
        let spec = crate::fixtures::pod_spec(json!({"replicas": 3}));
        assert!(spec.init_containers.is_none());
        let server = &spec.containers[0].command.clone().unwrap_or_default()[2];
        assert!(!server.contains("restore"), "{server}");
    }

    /// The script, run by a real shell: it fetches only on an initial member
    /// of a cluster that has not bootstrapped, and passes the arguments
    /// through untouched.
    #[test]
    fn the_fetch_script_runs_only_on_an_initial_member_before_bootstrap() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let fake = dir.path().join("titan-operator");
        std::fs::write(&fake, "#!/bin/sh\nprintf '%s|' \"$@\"\n").unwrap_or_else(|e| panic!("{e}"));
        std::process::Command::new("chmod")
            .args(["+x", &fake.display().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("{e}"));
        let path = format!("{}:/usr/bin:/bin", dir.path().display());
        let peers = "demo-0:demo-0.demo-peers:5001:5002,demo-1:demo-1.demo-peers:5001:5002";
        let table = [
            ("demo-0", "false", "fetch-backup|--key|a b|"),
            ("demo-1", "false", "fetch-backup|--key|a b|"),
            ("demo-3", "false", "not an initial member"),
            ("demo-0", "true", "nothing to fetch"),
        ];
        for (pod, bootstrapped, want) in table {
            let out = std::process::Command::new("/bin/sh")
                .args(["-c", FETCH_SCRIPT, RESTORE_CONTAINER, "--key", "a b"])
                .env("PATH", &path)
                .env("POD_NAME", pod)
                .env("BOOTSTRAPPED", bootstrapped)
                .env("INITIAL_PEERS", peers)
                .output()
                .unwrap_or_else(|e| panic!("{e}"));
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{pod}/{bootstrapped}: {text}");
            assert!(text.contains(want), "{pod}/{bootstrapped}: {text}");
        }
    }
}
