//! The master's broker thread never waits on the user's logger, and a
//! broker that dies fails every waiting call at once. Each test installs
//! its own logger (nextest runs every test in a process of its own).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore::{Command, Error, Options, Router};
use spore_tests::{test_agent_path, LeakGuard};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// A logger like a CLI writing to a paused pager: while `PAUSED`, every
/// record from the tree blocks (until the test releases it).
struct Stuck;

static PAUSED: AtomicBool = AtomicBool::new(false);
static BLOCKED: AtomicUsize = AtomicUsize::new(0);
static GATE: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());

impl log::Log for Stuck {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        if !r.target().starts_with("spore@") {
            return;
        }
        let (m, cv) = &GATE;
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        if PAUSED.load(Ordering::SeqCst) {
            BLOCKED.fetch_add(1, Ordering::SeqCst);
        }
        while PAUSED.load(Ordering::SeqCst) {
            g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn flush(&self) {}
}

/// A logger that panics on every record from the tree.
struct Panicky;

impl log::Log for Panicky {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        if r.target().starts_with("spore@") {
            panic!("the user's logger panicked on {:?}", r.args().to_string());
        }
    }

    fn flush(&self) {}
}

fn router() -> Router {
    Router::with_options(Options {
        agent_image: Some(std::fs::read(test_agent_path()).unwrap()),
        agent_log_level: Some(log::LevelFilter::Info),
        shutdown_grace: Duration::from_secs(2),
        keepalive: Duration::from_millis(300),
        keepalive_misses: 3,
        ..Options::default()
    })
    .unwrap()
}

fn release() {
    PAUSED.store(false, Ordering::SeqCst);
    GATE.1.notify_all();
}

#[test]
fn a_logger_that_blocks_stalls_neither_calls_keepalives_nor_shutdown() {
    log::set_logger(&Stuck).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
    let guard = LeakGuard::new();
    let r = router();
    let top = r.local().unwrap();
    let inner = top.connect("local").unwrap();
    PAUSED.store(true, Ordering::SeqCst);
    // The agent logs (stdout, stderr, a record): the logger blocks on them.
    top.call_async(br#"{"op":"say"}"#.to_vec()).wait_deadline(Instant::now() + Duration::from_secs(10)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while BLOCKED.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the logger was never reached");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Longer than the keepalive's 0.9 s limit: the children must still be
    // heard (the broker reads and probes), calls still answered.
    for _ in 0..15 {
        top.ping().unwrap();
        inner.ping().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = inner.exec(&Command::new(["echo", "still here"])).unwrap();
    assert_eq!(out.stdout, b"still here\n");
    let started = Instant::now();
    r.shutdown();
    let took = started.elapsed();
    release();
    assert!(took < Duration::from_secs(4), "shutdown took {took:?} behind a blocked logger");
    drop((top, inner, r));
    guard.check();
}

#[test]
fn a_logger_that_panics_does_not_take_the_broker_with_it() {
    log::set_logger(&Panicky).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
    let guard = LeakGuard::new();
    let r = router();
    let top = r.local().unwrap();
    for _ in 0..3 {
        top.call_async(br#"{"op":"say"}"#.to_vec()).wait_deadline(Instant::now() + Duration::from_secs(10)).unwrap();
        top.ping().unwrap();
    }
    let out = top.exec(&Command::new(["echo", "fine"])).unwrap();
    assert_eq!(out.stdout, b"fine\n");
    r.shutdown();
    drop((top, r));
    guard.check();
}

#[test]
fn a_broker_that_dies_fails_every_waiting_call_at_once() {
    let guard = LeakGuard::new();
    let r = router();
    let top = r.local().unwrap();
    let waiting = {
        let top = top.clone();
        std::thread::spawn(move || top.exec(&Command::new(["sleep", "30"])))
    };
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    r.crash_broker_for_test();
    let got = waiting.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "the waiting call took {:?}", started.elapsed());
    match got {
        Err(Error::Dead { reason, .. }) => assert!(reason.contains("broker thread of master died"), "{reason}"),
        other => panic!("expected a DEAD naming the broker's death, got {other:?}"),
    }
    // New calls fail at once too.
    let started = Instant::now();
    assert!(top.ping().is_err());
    assert!(started.elapsed() < Duration::from_secs(1));
    r.shutdown();
    drop((top, r));
    guard.check();
}
