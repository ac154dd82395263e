//! Shell start-up noise before the bootstrap marker (issue 11): a flood
//! without a newline fails fast with a short error in bounded memory; a
//! noisy but valid start still connects.
//!
//! The connection is a local `sh -c` whose script prints the noise, then
//! runs the real bootstrap script: what a `.bashrc` would do over ssh.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore_agent::bootstrap::{offered, script, AgentArgs};
use spore_agent::handshake::{connect, Connected};
use spore_agent::images::{Held, Images};
use spore_agent::spawn::Command;
use spore_protocol::body::ConnectArgs;
use spore_tests::{agent_path, LeakGuard};
use std::time::{Duration, Instant};

/// The connect timeout of these tests.
const TIMEOUT: Duration = Duration::from_secs(20);
/// The longest error message allowed.
const MESSAGE_LIMIT: usize = 4096;
/// The most the master may grow while reading the noise.
const RSS_LIMIT: u64 = 32 * 1024 * 1024;

/// A field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = text.lines().find(|l| l.starts_with(field)).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Run `noise` (sh), then the bootstrap, through `handshake::connect`;
/// the result, how long it took and how much the peak RSS grew.
fn connect_after(noise: &str) -> (Result<Connected, String>, Duration, u64) {
    let images = Images::held(vec![Held::from_bytes(std::fs::read(agent_path()).unwrap())]);
    let args = AgentArgs {
        id: 1,
        name: "noisy".into(),
        parent_ids: vec![0],
        log_level: 2,
        max_message: spore_protocol::DEFAULT_MAX_MESSAGE,
        grace_ms: 2000,
        keepalive_ms: 0,
        keepalive_misses: 4,
        cwd: None,
    };
    let how = ConnectArgs { op: "connect".into(), method: "local".into(), ..Default::default() };
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("{noise}; {}", script(&offered(&images, "local"), &args)));
    let before = status_bytes("VmRSS:");
    let t0 = Instant::now();
    let result = connect(cmd, &how, &images, &args, TIMEOUT).map_err(|e| e.to_string());
    let took = t0.elapsed();
    let grew = status_bytes("VmHWM:").saturating_sub(before);
    (result, took, grew)
}

/// Close a connected agent's pipes: it shuts down; reap it.
fn close(connected: Connected) {
    let mut stream = connected.stream;
    let mut child = stream.child.take().unwrap();
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent did not end when its pipes closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_flood_without_a_newline_fails_fast_with_a_short_error_in_bounded_memory() {
    let guard = LeakGuard::new();
    let (result, took, grew) = connect_after("head -c 1500000000 /dev/zero");
    let message = match result {
        Ok(c) => {
            close(c);
            panic!("connected through 1.5 GB of noise without a newline")
        }
        Err(e) => e,
    };
    eprintln!("took {took:?}, peak RSS grew {grew} bytes, message {} bytes: {message}", message.len());
    assert!(message.len() <= MESSAGE_LIMIT, "the message is {} bytes", message.len());
    assert!(message.contains("without a newline"), "the message does not name the cause: {message}");
    assert!(took < TIMEOUT, "took {took:?}");
    assert!(grew <= RSS_LIMIT, "the peak RSS grew by {grew} bytes");
    guard.check();
}

#[test]
fn a_noisy_but_valid_start_still_connects() {
    let guard = LeakGuard::new();
    // 50 MB of base64 lines, as a careless .bashrc might print.
    let (result, took, grew) = connect_after("head -c 37500000 /dev/zero | base64");
    let connected = result.unwrap_or_else(|e| panic!("did not connect through 50 MB of noise lines: {e}"));
    eprintln!("took {took:?}, peak RSS grew {grew} bytes");
    assert_eq!(connected.hello.context_id, 1);
    assert!(grew <= RSS_LIMIT, "the peak RSS grew by {grew} bytes");
    close(connected);
    guard.check();
}

#[test]
fn noise_before_the_marker_on_its_own_line_still_connects() {
    let guard = LeakGuard::new();
    // Noise without a newline right before the marker, and on stderr.
    let (result, _, _) = connect_after("printf 'Welcome!'; echo 'to stderr' >&2");
    let connected = result.unwrap_or_else(|e| panic!("did not connect: {e}"));
    close(connected);
    guard.check();
}
