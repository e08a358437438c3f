//! The chaos runner's arguments are checked before it touches a namespace,
//! a process or nftables: a wrong invocation fails at once and says why.
//! (This target also makes `cargo test --workspace` build the runner with the
//! workspace's features, so CI's chaos tier reuses that build.)

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mainstay-chaos"))
        .args(args)
        .output()
        .expect("the chaos runner starts");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_wrong_invocation_is_refused_with_the_reason() {
    // The test binary itself stands in for "some file that exists".
    let exists = std::env::current_exe().expect("own path");
    let exists = exists.to_str().expect("utf-8 path");
    let cases: [(&[&str], &str); 5] = [
        (&["--bogus"], "unknown argument --bogus"),
        (&["--binary"], "--binary needs a value"),
        (
            &["--binary", "/nonexistent/mainstay"],
            "no mainstay binary at",
        ),
        (
            &["--binary", exists, "--members", "4"],
            "--members must be 3 or 5",
        ),
        (&["--binary", exists, "--seconds", "soon"], "--seconds"),
    ];
    for (args, reason) in cases {
        let (ok, stderr) = run(args);
        assert!(!ok, "{args:?} was accepted");
        assert!(
            stderr.contains(reason),
            "{args:?}: {stderr:?} lacks {reason:?}"
        );
    }
}
