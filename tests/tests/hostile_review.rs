//! A security review of the broker's core (DESIGN.md, Security and
//! Bounds): holes a hostile child or grandchild can use, each as a test
//! that fails while the hole is open, on the harness of `hostile.rs`
//! (`spore_tests::hostile`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore::{Context, Hop};
use spore_protocol::body::{self, LogRecord};
use spore_protocol::{handle, MASTER_ID};
use spore_tests::hostile::*;
use spore_tests::{LeakGuard, RECORDS};
use std::time::{Duration, Instant};

// ---- harness (the rest is in spore_tests::hostile) ---------------------

/// Records (from any target) whose message contains `text`, once their
/// number has stopped growing (bounded).
fn settled_count(text: &str, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let count = || RECORDS.lock().unwrap().iter().filter(|(_, _, m)| m.contains(text)).count();
    let mut last = count();
    let mut stable_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = count();
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if stable_since.elapsed() > Duration::from_millis(700) {
            break;
        }
    }
    last
}

// ---- DEL_ROUTE from a grandchild ----------------------------------------

/// The master applies a DEL_ROUTE from any context behind a child stream
/// (it checks only that the id is behind the stream the message came by),
/// so `i/hostile` can make the master forget its parent `i` and its sibling
/// `i/s`: calls to them fail "no route", every handle waiting on them is
/// failed, and the ids stay lost for good.
#[test]
fn del_route_from_a_grandchild_does_not_cut_off_its_parent_or_sibling() {
    let guard = LeakGuard::new();
    let fx = Fixture::new();
    let i = fx.connect("i");
    let s = below(&i, "s");
    let h = below(&i, "hostile");
    let frames = [&i, &s]
        .iter()
        .map(|victim| frame(MASTER_ID, handle::DEL_ROUTE, &del_route(victim.id(), "forged by i/hostile")))
        .collect();
    let _ = send_frames(&h, frames);
    let mut problems = Vec::new();
    for ctx in [&i, &s] {
        if let Err(e) = ping_within(ctx, Duration::from_secs(5)) {
            problems.push(format!("{} (id {}) after i/hostile's DEL_ROUTE: {e:?}", ctx.name(), ctx.id()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    drop((i, s, h));
    fx.finish(guard);
}

/// The same one level down: `j/k/hostile` tells `j` (not its own parent)
/// to forget `j/k` and `j/k/s`.
#[test]
fn del_route_from_a_grandchild_is_refused_by_an_intermediate() {
    let guard = LeakGuard::new();
    let fx = Fixture::new();
    let j = fx.connect("j");
    let k = below(&j, "k");
    let s = below(&k, "s");
    let h = below(&k, "hostile");
    let frames = [&k, &s]
        .iter()
        .map(|victim| frame(j.id(), handle::DEL_ROUTE, &del_route(victim.id(), "forged by j/k/hostile")))
        .collect();
    let _ = send_frames(&h, frames);
    let mut problems = Vec::new();
    for ctx in [&j, &k, &s] {
        if let Err(e) = ping_within(ctx, Duration::from_secs(5)) {
            problems.push(format!("{} (id {}) after j/k/hostile's DEL_ROUTE: {e:?}", ctx.name(), ctx.id()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    drop((j, k, s, h));
    fx.finish(guard);
}

// ---- ADD_ROUTE naming the router itself as the parent -------------------

/// `Routes::may_add` skips the stream check when the announced parent is
/// the router itself, and `route_change` takes ADD_ROUTE from any child
/// stream: while the router's own connect is under way (its id allocated,
/// the stream not yet added), a child that announces that id "as the
/// router's child" gets it. The real stream is then refused as already
/// added, and every call to the new context reaches the hostile child.
fn add_route_race(parent: Option<&Context>, fx: &Fixture) {
    let h = match parent {
        Some(p) => below(p, "hostile"),
        None => fx.connect("hostile"),
    };
    // The next id the master allocates is the connect below.
    let next = h.id() + 1;
    let (router, name) = match parent {
        Some(p) => (p.id(), format!("{}/c", p.name())),
        None => (MASTER_ID, "c".to_string()),
    };
    let claim = Frame { repeat: Some(300_000), ..frame(router, handle::ADD_ROUTE, &add_route(next, router, &name)) };
    let spray = {
        let h = h.clone();
        std::thread::spawn(move || {
            let r = send_frames(&h, vec![claim]);
            (r, Instant::now())
        })
    };
    std::thread::sleep(Duration::from_millis(150));
    let started = Instant::now();
    let c = match parent {
        Some(p) => below(p, "c"),
        None => fx.connect("c"),
    };
    let connected = Instant::now();
    let (sprayed, spray_done) = spray.join().unwrap();
    eprintln!(
        "connect took {:?}; the spray ended {:?} after it started ({:?})",
        connected - started,
        spray_done.saturating_duration_since(started),
        sprayed.as_ref().map(|_| "ok")
    );
    assert_eq!(c.id(), next, "the test guessed the next id wrong");
    assert!(spray_done > connected, "the spray ended before the connect did: the race was not run");
    let mut problems = Vec::new();
    match info_within(&c, Duration::from_secs(5)) {
        Ok(info) if info.hostname == "hostile-impersonator" || info.context_id != c.id() || info.name != c.name() => {
            problems.push(format!("{} (id {}) is answered by another: {info:?}", c.name(), c.id()))
        }
        Ok(_) => {}
        Err(e) => problems.push(format!("{} (id {}) does not answer: {e:?}", c.name(), c.id())),
    }
    if let Ok(st) = stats(&h, 0) {
        if st.impersonated > 0 {
            problems.push(format!("{} calls for {} were routed to {}", st.impersonated, c.name(), h.name()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    drop((c, h));
}

#[test]
fn a_child_cant_claim_the_id_of_the_masters_next_connect() {
    let guard = LeakGuard::new();
    let fx = Fixture::new();
    add_route_race(None, &fx);
    fx.finish(guard);
}

#[test]
fn a_child_cant_claim_the_id_of_its_parents_next_connect() {
    let guard = LeakGuard::new();
    let fx = Fixture::new();
    let i = fx.connect("i");
    add_route_race(Some(&i), &fx);
    drop(i);
    fx.finish(guard);
}

/// Deterministic form: a connect that fails leaves its id expected (for the
/// router as parent) for ever, and any child of the router may then add it
/// with an ADD_ROUTE naming the router as the parent.
#[test]
fn an_id_left_by_a_failed_connect_cant_be_claimed_by_a_child() {
    let guard = LeakGuard::new();
    let fx = Fixture::new();
    let h = fx.connect("hostile");
    // ssh to a closed port fails at once.
    let bad = Hop::parse("nobody@127.0.0.1:1").unwrap();
    let failed = fx.r.connect(&bad, "unreachable");
    assert!(failed.is_err(), "ssh to port 1 connected?");
    let stale = h.id() + 1;
    let claim = frame(MASTER_ID, handle::ADD_ROUTE, &add_route(stale, MASTER_ID, "unreachable"));
    let _ = send_frames(&h, vec![claim]);
    // The master's broker logs each route it adds (debug) and each refusal
    // (warning).
    let added = format!("route to {stale} ");
    let refused = format!("refused ADD_ROUTE for context {stale} ");
    let n_added = settled_count(&added, Duration::from_secs(3));
    let n_refused = settled_count(&refused, Duration::from_secs(1));
    assert!(
        n_added == 0,
        "the id of the failed connect ({stale}) was added for the hostile child: {n_added} 'route to' records, {n_refused} refusals"
    );
    drop(h);
    fx.finish(guard);
}

// ---- warnings a child can have logged without bound ---------------------

/// `refuse` logs the first `LOUD_REFUSALS` (16) refusals of a stream as
/// warnings and the rest at debug level; an ignored SHUTDOWN and a call
/// without authority are logged as a warning every time.
#[test]
fn a_flood_of_ignored_shutdowns_and_calls_is_not_a_flood_of_warnings() {
    let guard = LeakGuard::new();
    let fx = Fixture::new();
    let h = fx.connect("hostile");
    let i = fx.connect("i");
    let h2 = below(&i, "hostile");
    const N: u32 = 3000;
    for (hostile, dst) in [(&h, MASTER_ID), (&h2, i.id())] {
        let frames = vec![
            Frame { repeat: Some(N), ..frame(dst, handle::SHUTDOWN, "") },
            Frame { repeat: Some(N), ..frame(dst, handle::CALL_FUNCTION, r#"{"op":"ping"}"#) },
        ];
        let _ = send_frames(hostile, frames);
    }
    let mut problems = Vec::new();
    for (hostile, dst) in [(&h, MASTER_ID), (&h2, i.id())] {
        let shutdowns =
            settled_count(&format!("ignored SHUTDOWN from context {}", hostile.id()), Duration::from_secs(10));
        let calls =
            settled_count(&format!("context {} may not call context {dst}", hostile.id()), Duration::from_secs(10));
        let warnings = RECORDS
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, _, m)| {
                *l <= log::Level::Warn
                    && (m.contains(&format!("from context {}", hostile.id()))
                        || m.contains(&format!("context {} may not call", hostile.id())))
            })
            .count();
        eprintln!("{}: {shutdowns} SHUTDOWN lines, {calls} call lines, {warnings} warnings", hostile.name());
        if warnings > 100 {
            problems.push(format!(
                "{} sent {N} SHUTDOWNs and {N} calls to context {dst}: {warnings} warnings logged ({shutdowns} \"ignored SHUTDOWN\", {calls} \"may not call\")",
                hostile.name()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    drop((h, i, h2));
    fx.finish(guard);
}

// ---- the master's log queue is bounded in records, not bytes ------------

static BLOCK_LOGGER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A logger that stalls while `BLOCK_LOGGER` is set (a paused pager).
struct Stalling;

impl log::Log for Stalling {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, _: &log::Record<'_>) {
        let until = Instant::now() + Duration::from_secs(60);
        while BLOCK_LOGGER.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn flush(&self) {}
}

/// With the logger stalled (DESIGN.md: "a logger that blocks (a paused
/// pager)"), the master queues up to 65,536 records of up to
/// `max_message` (128 MiB) each: a child holds the master's memory to
/// ransom with a few large records. 400 records of 1 MiB are sent; the
/// master should not keep them all.
#[test]
fn large_log_records_for_a_stalled_logger_are_bounded_in_bytes() {
    // Before LeakGuard installs the recording logger: this process's logger.
    log::set_logger(&Stalling).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    let guard = LeakGuard::new();
    let fx = Fixture::new();
    let h = fx.connect("hostile");
    BLOCK_LOGGER.store(true, std::sync::atomic::Ordering::SeqCst);
    let before = spore_tests::rss_kib(std::process::id());
    let rec = LogRecord { level: 3, name: "hostile".into(), target: "x".into(), msg: "a".repeat(1 << 20) };
    let big = Frame {
        repeat: Some(400),
        ..frame(MASTER_ID, handle::FORWARD_LOG, &String::from_utf8(body::to_json(&rec)).unwrap())
    };
    let start = Instant::now();
    let sent = send_frames(&h, vec![big]);
    // Let the master take in what is on its way.
    let _ = ping_within(&h, Duration::from_secs(60));
    let after = spore_tests::rss_kib(std::process::id());
    BLOCK_LOGGER.store(false, std::sync::atomic::Ordering::SeqCst);
    let grew_mib = after.saturating_sub(before) / 1024;
    eprintln!("400 MiB of records in {:?} ({:?}); the master grew by {grew_mib} MiB", start.elapsed(), sent.is_ok());
    assert!(grew_mib < 128, "the master holds {grew_mib} MiB of log records for a stalled logger");
    drop(h);
    fx.finish(guard);
}

// ---- a handle's queue is unbounded ---------------------------------------

/// A context may answer its own calls, but nothing bounds how much: while
/// a caller holds a call it has not waited on yet (`call_async`, then
/// `wait` later), the answering context can queue any amount in the
/// master's mailbox, ignoring flow control. 300 replies of 1 MiB to a
/// pending call; the master should not keep them all.
#[test]
fn replies_piling_up_for_a_pending_call_are_bounded() {
    let guard = LeakGuard::new();
    let fx = Fixture::new();
    let h = fx.connect("hostile");
    // The master's first dynamic handle (no call was made yet): this call
    // is answered at once, and its mailbox stays until `pending` is dropped.
    let pending = h.call_async(br#"{"op":"ping"}"#.to_vec());
    let target = spore_protocol::handle::FIRST_DYNAMIC;
    std::thread::sleep(Duration::from_millis(200));
    let before = spore_tests::rss_kib(std::process::id());
    let big = Frame { repeat: Some(300), ..frame(MASTER_ID, target, &"a".repeat(1 << 20)) };
    let sent = send_frames(&h, vec![big]);
    let _ = ping_within(&h, Duration::from_secs(30));
    let after = spore_tests::rss_kib(std::process::id());
    let grew_mib = after.saturating_sub(before) / 1024;
    eprintln!("300 MiB of replies ({:?}); the master grew by {grew_mib} MiB", sent.is_ok());
    drop(pending);
    assert!(grew_mib < 128, "the master holds {grew_mib} MiB of replies queued for one pending call");
    drop(h);
    fx.finish(guard);
}
