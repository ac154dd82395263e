//! A 1 GiB file through a real agent and back, checked byte for byte,
//! with the memory of both ends bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore::Router;
use spore_tests::{peak_rss_kib, LeakGuard, PatternChecker, PatternReader, Scratch};

const GIB: u64 = 1 << 30;

#[test]
fn a_gibibyte_round_trips_intact_in_bounded_memory() {
    let guard = LeakGuard::new();
    let dir = Scratch::new("big");
    let r = Router::new().unwrap();
    let ctx = r.local().unwrap();
    let agent_pid = ctx.info().unwrap().pid;
    let path = dir.path("gib.bin");
    let written = ctx.write_file(&path, &mut PatternReader::new(GIB, 42), None).unwrap();
    assert_eq!(written, GIB);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), GIB);
    let mut check = PatternChecker::new(GIB, 42);
    assert_eq!(ctx.read_file(&path, &mut check).unwrap(), GIB);
    assert_eq!(check.first_mismatch, None, "content differs");
    assert_eq!(check.checked, GIB);
    let agent_peak = peak_rss_kib(agent_pid);
    let master_peak = peak_rss_kib(std::process::id());
    eprintln!("peak RSS: agent {agent_peak} KiB, master (test process) {master_peak} KiB");
    assert!(agent_peak > 0 && agent_peak < 32 * 1024, "agent peaked at {agent_peak} KiB");
    assert!(master_peak < 64 * 1024, "master peaked at {master_peak} KiB");
    ctx.remove(&path, false).unwrap();
    r.shutdown();
    drop((ctx, r));
    guard.check();
}
