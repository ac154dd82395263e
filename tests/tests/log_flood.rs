//! A child that floods the master with log records (raw FORWARD_LOG frames
//! from the hostile agent) while the user's logger is slow: its sibling's
//! calls stay fast, the master's memory stays bounded, and the records the
//! logger could not take are counted, not buffered.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use miniserde::Serialize;
use spore::{Hop, Options, Router};
use spore_protocol::body::{self, LogRecord};
use spore_protocol::handle;
use spore_tests::{rss_kib, LeakGuard};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A logger that waits 20 µs on each record (a slow terminal, say) and
/// keeps only what the test looks for.
struct Slow;

static SEEN: AtomicU64 = AtomicU64::new(0);
static DROPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl log::Log for Slow {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        let text = r.args().to_string();
        if text.contains("log records dropped") {
            DROPPED.lock().unwrap().push(text);
        } else if r.target().starts_with("spore@") {
            SEEN.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    fn flush(&self) {}
}

#[derive(Serialize)]
struct Frame {
    dst: u32,
    handle: u32,
    body: String,
    repeat: u32,
}

#[derive(Serialize)]
struct RawCall {
    op: String,
    frames: Vec<Frame>,
}

#[test]
fn a_childs_log_flood_does_not_slow_its_sibling_or_grow_the_master() {
    log::set_logger(&Slow).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    let guard = LeakGuard::new();
    let image = std::fs::read(spore_tests::target_dir().join("debug/spore-hostile-agent")).unwrap();
    let r = Router::with_options(Options {
        agent_image: Some(image),
        agent_log_level: Some(log::LevelFilter::Info),
        shutdown_grace: Duration::from_secs(2),
        ..Options::default()
    })
    .unwrap();
    let h = r.connect(&Hop::Local, "hostile").unwrap();
    let s = r.connect(&Hop::Local, "s").unwrap();
    s.ping().unwrap();
    let before = rss_kib(std::process::id());
    let rec = LogRecord { level: 3, name: "hostile".into(), target: "flood".into(), msg: "x".repeat(200) };
    let body = String::from_utf8(body::to_json(&rec)).unwrap();
    let call = RawCall {
        op: "raw".into(),
        frames: vec![Frame { dst: 0, handle: handle::FORWARD_LOG, body, repeat: 50_000_000 }],
    };
    let flood = h.call_async(miniserde::json::to_string(&call).into_bytes());
    // Ten seconds of flood: the sibling's pings, and our memory.
    let (mut worst, mut pings, mut max_rss) = (Duration::ZERO, 0, 0);
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let t = Instant::now();
        s.ping().unwrap();
        worst = worst.max(t.elapsed());
        pings += 1;
        max_rss = max_rss.max(rss_kib(std::process::id()));
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = SEEN.load(Ordering::SeqCst);
    eprintln!(
        "during the flood: {pings} pings, the slowest {worst:?}; master RSS {before} → {max_rss} KiB; {seen} records shown"
    );
    // Timing is the bench's business (`make stress`, on a quiet machine):
    // here, only that the sibling is never starved.
    assert!(worst < Duration::from_secs(1), "a sibling's ping took {worst:?}");
    assert!(max_rss < before + 64 * 1024, "the master grew from {before} to {max_rss} KiB");
    r.shutdown();
    drop(flood);
    let reports = DROPPED.lock().unwrap().clone();
    assert!(!reports.is_empty(), "no count of dropped records was reported ({seen} shown)");
    let counted: u64 = reports.iter().filter_map(|r| r.split(' ').next()?.parse::<u64>().ok()).sum();
    eprintln!("{counted} records dropped and counted in {} reports", reports.len());
    assert!(reports.len() <= 20, "{} reports of dropped records in ~10 s", reports.len());
    drop((h, s, r));
    guard.check();
}
