//! The binary's configuration surface: precedence (flags > env > file > defaults)
//! and fail-fast validation that names the setting. Each case makes `serve` stop
//! at validation, so no member actually starts.

use std::process::Command;

fn serve(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mainstay"));
    command.arg("serve").args(args);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("MAINSTAY_")) {
        command.env_remove(key);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run mainstay");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn invalid_settings_fail_fast_naming_the_setting() {
    let (ok, stderr) = serve(
        &["--heartbeat-interval", "100", "--election-timeout", "200"],
        &[],
    );
    assert!(!ok);
    assert!(stderr.contains("--election-timeout"), "{stderr}");
    let (ok, stderr) = serve(&["--initial-cluster-state", "maybe"], &[]);
    assert!(!ok);
    assert!(stderr.contains("--initial-cluster-state"), "{stderr}");
    let (ok, stderr) = serve(&["--listen-client-urls", "nonsense"], &[]);
    assert!(!ok);
    assert!(stderr.contains("--listen-client-urls"), "{stderr}");
    let (ok, stderr) = serve(
        &["--name", "x", "--initial-cluster", "y=http://127.0.0.1:1"],
        &[],
    );
    assert!(!ok);
    assert!(stderr.contains("--initial-cluster"), "{stderr}");
}

#[test]
fn flags_beat_env_beat_file_beat_defaults() {
    // Method: the file sets a bad election timeout; a higher layer overriding it
    // moves the first validation error on to --max-txn-ops (checked later).
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("mainstay.toml");
    std::fs::write(&file, "election-timeout = 100\n").expect("write");
    let file = file.to_str().expect("utf-8 path");

    let (_, stderr) = serve(&["--config-file", file], &[]);
    assert!(
        stderr.contains("--election-timeout (100 ms)"),
        "file applies: {stderr}"
    );

    let (_, stderr) = serve(
        &["--config-file", file, "--max-txn-ops", "0"],
        &[("MAINSTAY_ELECTION_TIMEOUT", "1000")],
    );
    assert!(stderr.contains("--max-txn-ops"), "env beats file: {stderr}");

    let (_, stderr) = serve(
        &[
            "--config-file",
            file,
            "--election-timeout",
            "1000",
            "--max-txn-ops",
            "0",
        ],
        &[],
    );
    assert!(
        stderr.contains("--max-txn-ops"),
        "flag beats file: {stderr}"
    );

    let (_, stderr) = serve(
        &["--election-timeout", "1000", "--max-txn-ops", "0"],
        &[("MAINSTAY_ELECTION_TIMEOUT", "100")],
    );
    assert!(stderr.contains("--max-txn-ops"), "flag beats env: {stderr}");

    let (_, stderr) = serve(&["--max-txn-ops", "0"], &[]);
    assert!(
        stderr.contains("--max-txn-ops"),
        "defaults are valid: {stderr}"
    );
}

#[test]
fn unknown_file_settings_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("mainstay.toml");
    std::fs::write(&file, "electoin-timeout = 1000\n").expect("write");
    let (ok, stderr) = serve(&["--config-file", file.to_str().expect("utf-8")], &[]);
    assert!(!ok);
    assert!(stderr.contains("electoin-timeout"), "{stderr}");
}
