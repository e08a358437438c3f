//! The binary's configuration surface: precedence (flags > env > file > defaults)
//! and fail-fast validation that names the setting. Each case makes `serve` stop
//! at validation, so no member actually starts.

use std::process::Command;

mod etcd_config;
mod unix_sockets;

/// Member processes, killed when the test ends, however it ends.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `mainstay serve` in an environment without `MAINSTAY_*` and `ETCD_*`
/// variables other than `env`.
fn serve_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mainstay"));
    command.arg("serve").args(args);
    for (key, _) in
        std::env::vars().filter(|(k, _)| k.starts_with("MAINSTAY_") || k.starts_with("ETCD_"))
    {
        command.env_remove(key);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Runs `mainstay serve` to its end: whether it succeeded, and its stderr. A
/// process still running after 30 s has started a member where the case
/// expected a refusal: it is killed and reported as a success, so the
/// test fails saying so instead of waiting forever.
fn serve(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    use std::io::Read;
    let mut child = serve_command(args, env)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run mainstay");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for mainstay") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    match status {
        Some(status) => (status.success(), stderr),
        None => (true, format!("still running after 30 s: {stderr}")),
    }
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

#[test]
fn errors_are_one_line_even_with_backtraces_on() {
    // Method: a bad flag value with RUST_BACKTRACE=1 and RUST_LIB_BACKTRACE=1 in
    // the environment; stderr is a pipe, so no colour codes either.
    let (ok, stderr) = serve(
        &["--initial-cluster-state", "maybe"],
        &[("RUST_BACKTRACE", "1"), ("RUST_LIB_BACKTRACE", "1")],
    );
    assert!(!ok);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains("--initial-cluster-state"), "{stderr}");
    assert!(!stderr.contains("Stack backtrace"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a pipe: {stderr}"
    );
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    // Method: a one-member cluster started with stderr on a pipe; its log lines
    // up to "serving clients" must hold no ANSI escape (colour only on a terminal).
    use std::io::{BufRead, BufReader};
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    };
    let (client, peer) = (free_port(), free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mainstay"))
        .arg("serve")
        .args(["--name", "solo", "--data-dir"])
        .arg(dir.path())
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("solo={peer_url}")])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start mainstay");
    let stderr = child.stderr.take().expect("stderr");
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let serving = line.contains("serving clients");
        seen.push(line);
        if serving || seen.len() > 200 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter().any(|l| l.contains("serving clients")),
        "{seen:#?}"
    );
    assert!(
        seen.iter().all(|l| !l.contains('\u{1b}')),
        "colour codes in a pipe: {seen:#?}"
    );
}
