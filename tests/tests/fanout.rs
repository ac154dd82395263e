//! One file to many targets behind a shared hop: the bytes cross the hop's
//! link once and the hop fans them out (`spore::fanout::write_file_many`,
//! the agent's `fanout_write`). Real agents over real pipes: a local
//! context plays the bastion, with local children under it. The agents on
//! one host share a file system, so each target first moves to a directory
//! of its own (the test agent's `chdir`) and the file is written by a
//! relative path: every copy can be checked on its own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore::fanout::write_file_many;
use spore::{Context, Error, Hop, Options, Router};
use spore_protocol::body::{FanoutArgs, FanoutReply};
use spore_tests::{rss_kib, LeakGuard, PatternChecker, PatternReader, Scratch};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn router(keepalive: Option<Duration>) -> Router {
    let mut opts =
        Options { agent_image: Some(std::fs::read(spore_tests::test_agent_path()).unwrap()), ..Options::default() };
    if let Some(k) = keepalive {
        opts.keepalive = k;
    }
    Router::with_options(opts).unwrap()
}

#[derive(miniserde::Serialize)]
struct Chdir {
    op: String,
    path: String,
}

/// Move `ctx` into a fresh directory `dir/name` of its own.
fn settle(ctx: &Context, dir: &Scratch, name: &str) -> String {
    let path = dir.path(name);
    std::fs::create_dir_all(&path).unwrap();
    let _: spore_protocol::body::Empty = ctx.call(&Chdir { op: "chdir".into(), path: path.clone() }).unwrap();
    path
}

/// A hop named `hop` under the master, and `n` children under it, each in
/// a directory of its own (returned beside it).
fn bastion(r: &Router, hop: &str, n: usize, dir: &Scratch) -> (Context, Vec<(Context, String)>) {
    let b = r.connect(&Hop::Local, hop).unwrap();
    let children = (0..n)
        .map(|i| {
            let name = format!("{hop}/t{i}");
            let c = b.connect_hop(&Hop::Local, &name).unwrap();
            let d = settle(&c, dir, &name.replace('/', "_"));
            (c, d)
        })
        .collect();
    (b, children)
}

/// The file at `path` holds exactly `len` bytes of pattern `seed`.
fn check_copy(path: &str, len: u64, seed: u64) {
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut checker = PatternChecker::new(len, seed);
    std::io::copy(&mut file, &mut checker).unwrap();
    assert_eq!(checker.checked, len, "{path}: size");
    assert_eq!(checker.first_mismatch, None, "{path}: first wrong byte");
}

/// Only `copy.bin` in each directory: no temporary file left behind.
fn only_the_copy(dir: &str) {
    let names: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("copy.bin")], "in {dir}");
}

#[test]
fn a_hundred_mib_to_eight_targets_crosses_the_shared_hop_once() {
    let guard = LeakGuard::new();
    let dir = Scratch::new("fanout-once");
    let r = router(None);
    let (b, children) = bastion(&r, "bastion", 8, &dir);
    let contexts: Vec<Context> = children.iter().map(|(c, _)| c.clone()).collect();
    let len = 100 * MIB;

    // Today's way, for the comparison: one plain write per target. One
    // is measured; eight cost eight times as much.
    let before = b.link_bytes_written();
    let size = contexts[0].write_file("plain.bin", &mut PatternReader::new(len, 1), None).unwrap();
    assert_eq!(size, len);
    let plain = b.link_bytes_written() - before;
    std::fs::remove_file(format!("{}/plain.bin", children[0].1)).unwrap();

    let before = b.link_bytes_written();
    let started = Instant::now();
    let results = write_file_many(&contexts, "copy.bin", &mut PatternReader::new(len, 7), Some(0o640));
    let took = started.elapsed();
    let carried = b.link_bytes_written() - before;
    for (i, res) in results.iter().enumerate() {
        assert_eq!(res.as_ref().map_err(|e| e.to_string()), Ok(&len), "target {i}");
    }
    eprintln!(
        "fan-out: 100 MiB to 8 targets behind one hop in {took:?}; the master's link to the hop carried {:.2} MiB \
         ({:.3} x the file); 8 plain writes would carry {:.2} MiB ({:.3} x)",
        carried as f64 / MIB as f64,
        carried as f64 / len as f64,
        8.0 * plain as f64 / MIB as f64,
        8.0 * plain as f64 / len as f64,
    );
    assert!(carried as f64 <= 1.05 * len as f64, "the hop's link carried {carried} bytes for a {len}-byte file");
    assert!(carried >= len, "every byte crossed the link: {carried}");
    for (_, d) in &children {
        let path = format!("{d}/copy.bin");
        check_copy(&path, len, 7);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o640, "{path}");
        only_the_copy(d);
    }
    r.shutdown();
    drop((b, children, contexts, r));
    guard.check();
}

/// A source that calls `at` once, when `after` bytes have been read.
struct Trigger<F: FnMut()> {
    inner: PatternReader,
    read: u64,
    after: u64,
    at: Option<F>,
}

impl<F: FnMut()> Read for Trigger<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.read >= self.after {
            if let Some(mut f) = self.at.take() {
                f();
            }
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory effects; the pid is an agent this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

#[test]
fn a_target_killed_mid_transfer_fails_alone_and_the_others_complete() {
    let guard = LeakGuard::new();
    let dir = Scratch::new("fanout-kill");
    let r = router(None);
    let (b, children) = bastion(&r, "bastion", 4, &dir);
    let contexts: Vec<Context> = children.iter().map(|(c, _)| c.clone()).collect();
    let victim = contexts[2].info().unwrap().pid;
    let len = 32 * MIB;
    let mut source =
        Trigger { inner: PatternReader::new(len, 3), read: 0, after: 8 * MIB, at: Some(|| signal(victim, 9)) };
    let results = write_file_many(&contexts, "copy.bin", &mut source, None);
    assert!(source.at.is_none(), "the target was killed");
    for (i, res) in results.iter().enumerate() {
        if i == 2 {
            let err = res.as_ref().unwrap_err();
            assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
            assert!(err.to_string().starts_with("bastion/t2: "), "the error names the target: {err}");
        } else {
            assert_eq!(res.as_ref().map_err(|e| e.to_string()), Ok(&len), "target {i}");
            check_copy(&format!("{}/copy.bin", children[i].1), len, 3);
            only_the_copy(&children[i].1);
        }
    }
    assert!(!std::path::Path::new(&format!("{}/copy.bin", children[2].1)).exists(), "no half file in place");
    // The hop and the others carry on.
    b.ping().unwrap();
    contexts[3].ping().unwrap();
    r.shutdown();
    drop((b, children, contexts, r));
    guard.check();
}

#[test]
fn a_target_that_stops_reading_holds_the_hop_to_a_window() {
    let guard = LeakGuard::new();
    let dir = Scratch::new("fanout-deaf");
    // No keepalive: the stopped target stays "alive" as long as we like.
    let r = router(Some(Duration::ZERO));
    let (b, children) = bastion(&r, "bastion", 3, &dir);
    let contexts: Vec<Context> = children.iter().map(|(c, _)| c.clone()).collect();
    let hop_pid = b.info().unwrap().pid;
    let stopped = contexts[1].info().unwrap().pid;
    let rss_before = rss_kib(hop_pid);
    let len = 100 * MIB;
    let stop_now = Arc::new(AtomicBool::new(false));
    let flag = stop_now.clone();
    let mut source = Trigger {
        inner: PatternReader::new(len, 5),
        read: 0,
        after: 4 * MIB,
        at: Some(move || {
            signal(stopped, libc::SIGSTOP);
            flag.store(true, Ordering::SeqCst);
        }),
    };
    // While the target is stopped: how far the master got, and the hop's
    // memory. Then the target is killed, and the rest must go on.
    let watch_hop = b.clone();
    let watcher = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop_now.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the source never reached the stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_secs(1));
        let settled = watch_hop.link_bytes_written();
        let mut peak = 0;
        for _ in 0..20 {
            peak = peak.max(rss_kib(hop_pid));
            std::thread::sleep(Duration::from_millis(100));
        }
        let after = watch_hop.link_bytes_written();
        signal(stopped, libc::SIGKILL);
        (settled, after, peak)
    });
    let results = write_file_many(&contexts, "copy.bin", &mut source, None);
    let (settled, after, peak) = watcher.join().unwrap();
    eprintln!(
        "a stopped target: the master had sent {:.1} MiB of 100 MiB, then {} bytes in 2 s; the hop's RSS went \
         from {rss_before} KiB to at most {peak} KiB",
        settled as f64 / MIB as f64,
        after - settled
    );
    assert!(settled < 16 * MIB, "the master ran ahead of the stopped target: {settled} bytes sent");
    assert!(after - settled < MIB, "the fan-out went on past the stopped target: {} bytes", after - settled);
    assert!(peak < rss_before + 32 * 1024, "the hop buffered: {rss_before} KiB, then {peak} KiB");
    let err = results[1].as_ref().unwrap_err();
    assert!(err.to_string().starts_with("bastion/t1: "), "{err}");
    for i in [0, 2] {
        assert_eq!(results[i].as_ref().map_err(|e| e.to_string()), Ok(&len), "target {i}");
        check_copy(&format!("{}/copy.bin", children[i].1), len, 5);
    }
    r.shutdown();
    drop((b, children, contexts, r));
    guard.check();
}

#[test]
fn a_fanout_may_name_only_the_hops_own_descendants() {
    let guard = LeakGuard::new();
    let dir = Scratch::new("fanout-refuse");
    let r = router(None);
    let (a, below_a) = bastion(&r, "a", 2, &dir);
    let (b, below_b) = bastion(&r, "b", 1, &dir);
    let deep = below_a[0].0.connect_hop(&Hop::Local, "a/t0/deep").unwrap();
    let (a1, a2, b1) = (below_a[0].0.id(), below_a[1].0.id(), below_b[0].0.id());
    let call = |targets: Vec<u32>| {
        let args = FanoutArgs { op: "fanout_write".into(), path: "copy.bin".into(), mode: None, targets };
        a.call::<_, FanoutReply>(&args).unwrap_err()
    };
    for (targets, kind, says) in [
        (vec![a1, b1], "refused", format!("context {b1} is not below a")),
        (vec![0], "refused", "context 0 is not below a".to_string()),
        (vec![a.id(), a1], "refused", format!("context {} is not below a", a.id())),
        (vec![a2, b.id()], "refused", format!("context {} is not below a", b.id())),
        (vec![9999, a1], "refused", "context 9999 is not below a".to_string()),
        (vec![a1, deep.id(), a1], "invalid", format!("context {a1} is named twice for a")),
        (vec![], "invalid", "0 targets".to_string()),
        ((0..5000).collect(), "invalid", "5000 targets".to_string()),
    ] {
        let err = call(targets.clone());
        assert_eq!(err.remote_kind(), Some(kind), "{targets:?}: {err}");
        assert!(err.to_string().contains(&says), "{targets:?}: {err}");
    }
    // Refused before a byte was taken: nothing written anywhere.
    for (_, d) in below_a.iter().chain(&below_b) {
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 0, "{d}");
    }
    // Its own descendants, at any depth, are fine.
    let settled = settle(&deep, &dir, "deep");
    let targets = vec![a1, deep.id(), a2];
    let results = write_file_many(
        &[below_a[0].0.clone(), deep.clone(), below_a[1].0.clone()],
        "copy.bin",
        &mut PatternReader::new(MIB, 2),
        None,
    );
    assert!(results.iter().all(|r| r.as_ref().ok() == Some(&MIB)), "{targets:?}: {results:?}");
    check_copy(&format!("{settled}/copy.bin"), MIB, 2);
    r.shutdown();
    drop((a, b, below_a, below_b, deep, r));
    guard.check();
}

#[test]
fn mixed_groups_give_one_result_per_context_in_order() {
    let guard = LeakGuard::new();
    let dir = Scratch::new("fanout-mixed");
    let r = router(None);
    // Direct: d. Behind h: h itself, h/t0 (with x0, x1 below it: a fan-out
    // through a fan-out), h/t1, h/t2 (whose directory is gone). Behind g:
    // one target alone.
    let d = r.connect(&Hop::Local, "d").unwrap();
    let d_dir = settle(&d, &dir, "d");
    let (h, hs) = bastion(&r, "h", 3, &dir);
    let h_dir = settle(&h, &dir, "h");
    let x0 = hs[0].0.connect_hop(&Hop::Local, "h/t0/x0").unwrap();
    let x0_dir = settle(&x0, &dir, "x0");
    let x1 = hs[0].0.connect_hop(&Hop::Local, "h/t0/x1").unwrap();
    let x1_dir = settle(&x1, &dir, "x1");
    let (g, gs) = bastion(&r, "g", 1, &dir);
    std::fs::remove_dir(&hs[2].1).unwrap();
    let list = [
        hs[0].0.clone(),
        d.clone(),
        x0.clone(),
        h.clone(),
        gs[0].0.clone(),
        hs[2].0.clone(),
        x1.clone(),
        hs[1].0.clone(),
        d.clone(),
    ];
    let dirs = [&hs[0].1, &d_dir, &x0_dir, &h_dir, &gs[0].1, &hs[2].1, &x1_dir, &hs[1].1, &d_dir];
    let len = 3 * MIB + 17;
    let before = h.link_bytes_written();
    let results = write_file_many(&list, "copy.bin", &mut PatternReader::new(len, 11), None);
    let carried = h.link_bytes_written() - before;
    assert_eq!(results.len(), list.len());
    for (i, res) in results.iter().enumerate() {
        if i == 5 {
            let err = res.as_ref().unwrap_err();
            assert_eq!(err.remote_kind(), Some("not_found"), "{err}");
            assert!(err.to_string().starts_with("h/t2: "), "the error names the target: {err}");
            assert!(err.to_string().contains("copy.bin"), "and the path: {err}");
        } else {
            assert_eq!(res.as_ref().map_err(|e| e.to_string()), Ok(&len), "{}", list[i].name());
            check_copy(&format!("{}/copy.bin", dirs[i]), len, 11);
        }
    }
    // h is a target itself (a plain write) and the hop for five more (one
    // fan-out): two copies on its link, not six.
    assert!((carried as f64) < 2.1 * len as f64, "h's link carried {carried} bytes for {len}");
    // Every target refuses the path: the hop says so before any data
    // flows, and none crosses its link.
    let before = h.link_bytes_written();
    let two = [hs[0].0.clone(), hs[1].0.clone()];
    let results = write_file_many(&two, "no/such/dir", &mut PatternReader::new(64 * MIB, 1), None);
    for (res, name) in results.iter().zip(["h/t0", "h/t1"]) {
        let err = res.as_ref().unwrap_err();
        assert_eq!(err.remote_kind(), Some("not_found"), "{err}");
        assert!(err.to_string().starts_with(name), "{err}");
    }
    let carried = h.link_bytes_written() - before;
    assert!(carried < 4096, "{carried} bytes crossed the link for targets that refused");
    // An empty file, and no contexts at all.
    let results = write_file_many(&[hs[0].0.clone(), hs[1].0.clone()], "empty", &mut std::io::empty(), None);
    assert!(results.iter().all(|r| r.as_ref().ok() == Some(&0)), "{results:?}");
    assert_eq!(std::fs::read(format!("{}/empty", hs[1].1)).unwrap(), b"");
    assert!(write_file_many(&[], "x", &mut std::io::empty(), None).is_empty());
    r.shutdown();
    drop((d, h, hs, x0, x1, g, gs, list, two, r));
    guard.check();
}

/// A source that fails after `after` bytes.
struct Failing(PatternReader, u64);

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.1 == 0 {
            return Err(std::io::Error::other("disk on fire"));
        }
        let room = buf.len().min(self.1 as usize);
        let n = self.0.read(&mut buf[..room])?;
        self.1 -= n as u64;
        Ok(n)
    }
}

#[test]
fn a_source_that_fails_leaves_no_file_on_any_target() {
    let guard = LeakGuard::new();
    let dir = Scratch::new("fanout-abandon");
    let r = router(None);
    let (b, children) = bastion(&r, "bastion", 3, &dir);
    let d = r.connect(&Hop::Local, "d").unwrap();
    let d_dir = settle(&d, &dir, "d");
    let mut list: Vec<Context> = children.iter().map(|(c, _)| c.clone()).collect();
    list.push(d.clone());
    let results = write_file_many(&list, "copy.bin", &mut Failing(PatternReader::new(64 * MIB, 1), 5 * MIB), None);
    for res in &results {
        let err = res.as_ref().unwrap_err();
        assert!(matches!(err, Error::Local { .. }) && err.to_string().contains("disk on fire"), "{err}");
    }
    // Each target drops its temporary file when the stream is abandoned
    // (through the hop for three of them), while the agents live on.
    let dirs: Vec<&String> = children.iter().map(|(_, d)| d).chain([&d_dir]).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<_> =
            dirs.iter().flat_map(|d| std::fs::read_dir(d).unwrap().flatten()).map(|e| e.path()).collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    b.ping().unwrap();
    r.shutdown();
    drop((b, children, d, list, r));
    guard.check();
}

#[test]
fn a_hop_killed_mid_transfer_fails_its_targets_and_the_rest_complete() {
    let guard = LeakGuard::new();
    let dir = Scratch::new("fanout-hop-kill");
    let r = router(None);
    let (b, children) = bastion(&r, "bastion", 3, &dir);
    let (_g, others) = bastion(&r, "g", 2, &dir);
    let hop = b.info().unwrap().pid;
    let mut list: Vec<Context> = children.iter().map(|(c, _)| c.clone()).collect();
    list.extend(others.iter().map(|(c, _)| c.clone()));
    let len = 32 * MIB;
    let mut source =
        Trigger { inner: PatternReader::new(len, 4), read: 0, after: 8 * MIB, at: Some(|| signal(hop, 9)) };
    let results = write_file_many(&list, "copy.bin", &mut source, None);
    for (i, res) in results.iter().enumerate() {
        if i < 3 {
            let err = res.as_ref().unwrap_err();
            assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
            assert!(err.to_string().starts_with(&format!("bastion/t{i}: ")), "the error names the target: {err}");
        } else {
            assert_eq!(res.as_ref().map_err(|e| e.to_string()), Ok(&len), "{}", list[i].name());
            check_copy(&format!("{}/copy.bin", others[i - 3].1), len, 4);
        }
    }
    r.shutdown();
    drop((b, children, _g, others, list, r));
    guard.check();
}

#[test]
fn the_shipped_agent_fans_out_too() {
    let guard = LeakGuard::new();
    let dir = Scratch::new("fanout-shipped");
    // The default image (the static agent), not the test agent: the agents
    // share this host's file system, so both write the same file.
    let r = Router::new().unwrap();
    let b = r.connect(&Hop::Local, "bastion").unwrap();
    let list: Vec<Context> = (0..2).map(|i| b.connect_hop(&Hop::Local, &format!("bastion/t{i}")).unwrap()).collect();
    let path = dir.path("copy.bin");
    let len = 8 * MIB + 1;
    let before = b.link_bytes_written();
    let results = write_file_many(&list, &path, &mut PatternReader::new(len, 9), None);
    let carried = b.link_bytes_written() - before;
    assert!(results.iter().all(|r| r.as_ref().ok() == Some(&len)), "{results:?}");
    assert!((carried as f64) < 1.05 * len as f64, "the hop's link carried {carried} bytes for {len}");
    check_copy(&path, len, 9);
    r.shutdown();
    drop((b, list, r));
    guard.check();
}
