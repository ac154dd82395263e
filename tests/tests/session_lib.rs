//! `spore::persist::Client`: the session from Rust code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore::persist::Client;
use spore_tests::{spore_bin, LeakGuard, Scratch};
use std::time::{Duration, Instant};

#[test]
fn a_client_runs_twice_on_one_session_and_the_second_is_warm() {
    let guard = LeakGuard::new();
    let dir = Scratch::new("session-lib");
    let runtime = dir.path("xdg");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    // SAFETY of intent: this test process runs one test (nextest), and no
    // other thread reads the environment while it is set.
    std::env::set_var("XDG_RUNTIME_DIR", &runtime);
    let client = Client::new(spore_bin(), Duration::from_secs(30)).unwrap();
    let args = ["run", "local", "local/local", "--", "sh", "-c", "echo out; echo err >&2; exit 3"];
    let started = Instant::now();
    let cold = client.run(&args).unwrap();
    let cold_took = started.elapsed();
    let started = Instant::now();
    let warm = client.run(&args).unwrap();
    let warm_took = started.elapsed();
    eprintln!("cold {cold_took:?}, warm {warm_took:?}");
    assert_eq!(cold.status, 3);
    assert_eq!(warm.status, 3);
    let mut lines: Vec<&[u8]> = warm.stdout.split(|&b| b == b'\n').collect();
    lines.sort();
    assert_eq!(lines, [&b""[..], b"local/local: out", b"local: out"]);
    let sorted = |b: &[u8]| {
        let mut l: Vec<Vec<u8>> = b.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect();
        l.sort();
        l
    };
    assert_eq!(sorted(&cold.stdout), sorted(&warm.stdout));
    assert_eq!(sorted(&cold.stderr), sorted(&warm.stderr));
    // The session keeps both contexts: status lists them.
    let out = std::process::Command::new(spore_bin()).args(["session", "status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("local/local"), "{text}");
    let out = std::process::Command::new(spore_bin()).args(["session", "stop"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    guard.check();
}
