//! Real agents over real pipes, through the master library: calls, nested
//! contexts, files, exec, logs, dead contexts. Every test checks that it
//! left no process and no fd behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore::{Command, Error, Options, Router, Stream};
use spore_tests::{pattern, wait_for_record, LeakGuard, Scratch};
use std::io::Read;
use std::time::{Duration, Instant};

fn router() -> Router {
    Router::new().unwrap()
}

fn sh(script: &str) -> Command {
    Command::new(["sh", "-c", script])
}

#[test]
fn ping_info_and_exec_on_a_local_context() {
    let guard = LeakGuard::new();
    let r = router();
    let ctx = r.local().unwrap();
    assert_eq!(ctx.name(), "local");
    ctx.ping().unwrap();
    let info = ctx.info().unwrap();
    assert_ne!(info.pid, std::process::id());
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.arch, std::env::consts::ARCH);
    assert_eq!(info.name, "local");
    let out = ctx.exec(&sh("echo out; echo err >&2; exit 3")).unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.status.code, Some(3));
    let out = ctx.exec(&sh("kill -KILL $$")).unwrap();
    assert_eq!((out.status.code, out.status.signal), (None, Some(9)));
    assert_eq!(out.status.shell_code(), 137);
    let out = ctx.exec(&Command::new(["sh", "-c", "echo $GREETING; pwd"]).env("GREETING", "hi").cwd("/")).unwrap();
    assert_eq!(out.stdout, b"hi\n/\n");
    let err = ctx.exec(&Command::new(["/no/such/program"])).unwrap_err();
    assert!(matches!(&err, Error::Remote { kind, .. } if kind == "not_found"), "{err}");
    assert!(err.to_string().contains("/no/such/program"), "{err}");
    r.shutdown();
    drop((ctx, r));
    guard.check();
}

#[test]
fn nested_contexts_route_through_their_parents() {
    let guard = LeakGuard::new();
    let r = router();
    let a = r.local().unwrap();
    let b = a.connect("local").unwrap();
    let c = b.connect("local").unwrap();
    assert_eq!(c.name(), "local/local/local");
    let pids: Vec<u32> = [&a, &b, &c].iter().map(|x| x.info().unwrap().pid).collect();
    assert!(pids[0] != pids[1] && pids[1] != pids[2]);
    assert_eq!(c.info().unwrap().name, "local/local/local");
    // c's agent is a child of b's agent, which is a child of a's; the
    // command runs under its guardian, a child of c's agent.
    let out = c.exec(&sh("g=$(cut -d' ' -f4 /proc/$PPID/stat); echo $g; cut -d' ' -f4 /proc/$g/stat")).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let ppids: Vec<u32> = text.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(ppids, vec![pids[2], pids[1]], "exec runs under the deepest agent, a child of the middle one");
    for _ in 0..100 {
        c.ping().unwrap();
    }
    r.shutdown();
    drop((a, b, c, r));
    guard.check();
}

#[test]
fn exec_streams_stdin_and_output_with_flow_control() {
    let guard = LeakGuard::new();
    let r = router();
    let ctx = r.local().unwrap().connect("local").unwrap();
    let data = pattern(5 << 20, 7);
    let mut got = Vec::new();
    let mut chunks = 0;
    let status = ctx
        .exec_streaming(&Command::new(["cat"]), Some(Box::new(std::io::Cursor::new(data.clone()))), &mut |w, d| {
            assert_eq!(w, Stream::Stdout);
            got.extend_from_slice(d);
            chunks += 1;
            Ok(())
        })
        .unwrap();
    assert!(status.success());
    assert!(got == data, "echoed {} of {} bytes, content differs", got.len(), data.len());
    assert!(chunks > 10, "output came in {chunks} chunks");
    // A command that never reads its stdin still ends.
    let status = ctx
        .exec_streaming(&sh("exec 0<&-; echo done"), Some(Box::new(std::io::Cursor::new(data))), &mut |_, _| Ok(()))
        .unwrap();
    assert!(status.success());
    r.shutdown();
    drop((ctx, r));
    guard.check();
}

#[test]
fn exec_timeout_kills_the_process_group() {
    let guard = LeakGuard::new();
    let r = router();
    let ctx = r.local().unwrap();
    let start = Instant::now();
    // The background child is in the same group: it dies too.
    let out = ctx.exec(&sh("sleep 60 & sleep 60").timeout(Duration::from_millis(300))).unwrap();
    assert!(out.status.timed_out);
    assert_eq!(out.status.signal, Some(libc::SIGTERM));
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    // One that ignores SIGTERM gets SIGKILL after the grace.
    let start = Instant::now();
    let out = ctx.exec(&sh("trap '' TERM; while :; do sleep 0.05; done").timeout(Duration::from_millis(200))).unwrap();
    assert!(out.status.timed_out);
    assert_eq!(out.status.signal, Some(libc::SIGKILL));
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    r.shutdown();
    drop((ctx, r));
    guard.check();
}

#[test]
fn commands_inherit_no_spore_fds() {
    let guard = LeakGuard::new();
    let r = router();
    let ctx = r.local().unwrap().connect("local").unwrap();
    let out = ctx.exec(&sh("ls /proc/self/fd")).unwrap();
    let fds: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
    // 0, 1, 2 and the fd ls itself opened to read the directory.
    assert!(fds.len() <= 4, "command inherited fds: {fds:?}");
    r.shutdown();
    drop((ctx, r));
    guard.check();
}

#[test]
fn files_round_trip_intact() {
    let guard = LeakGuard::new();
    let dir = Scratch::new("files");
    let r = router();
    let ctx = r.local().unwrap().connect("local").unwrap();
    let data = pattern((9 << 20) + 12345, 3);
    let remote = dir.path("f.bin");
    assert_eq!(ctx.write_file(&remote, &mut &data[..], Some(0o640)).unwrap(), data.len() as u64);
    let mut back = Vec::new();
    assert_eq!(ctx.read_file(&remote, &mut back).unwrap(), data.len() as u64);
    assert!(back == data, "content differs");
    let st = ctx.stat(&remote, true).unwrap();
    assert_eq!((st.kind.as_str(), st.size, st.mode), ("file", data.len() as u64, 0o640));
    // An empty file, and an overwrite keeping the old mode.
    ctx.write_file(&remote, &mut &b""[..], None).unwrap();
    assert_eq!(ctx.stat(&remote, true).unwrap().mode, 0o640);
    assert_eq!(ctx.read_file(&remote, &mut Vec::new()).unwrap(), 0);
    let names: Vec<String> = ctx.list_dir(&dir.path("")).unwrap().entries.into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec!["f.bin"], "no temporary file left beside it");
    ctx.remove(&remote, false).unwrap();
    let err = ctx.read_file(&remote, &mut Vec::new()).unwrap_err();
    assert_eq!(err.remote_kind(), Some("not_found"));
    assert!(err.to_string().contains(&remote), "{err}");
    // Into a directory that does not exist: a clear error, nothing lost.
    let err = ctx.write_file(&dir.path("no/such/dir/f"), &mut &data[..], None).unwrap_err();
    assert_eq!(err.remote_kind(), Some("not_found"), "{err}");
    // A tree.
    std::fs::create_dir_all(dir.0.join("t/u")).unwrap();
    std::fs::write(dir.0.join("t/u/x"), b"x").unwrap();
    assert!(ctx.remove(&dir.path("t"), false).is_err());
    ctx.remove(&dir.path("t"), true).unwrap();
    assert!(!dir.0.join("t").exists());
    r.shutdown();
    drop((ctx, r));
    guard.check();
}

#[test]
fn a_failed_upload_leaves_no_partial_file() {
    let guard = LeakGuard::new();
    let dir = Scratch::new("partial");
    let r = router();
    let ctx = r.local().unwrap();
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
    }
    let target = dir.path("half");
    let err = ctx.write_file(&target, &mut Failing(3 << 20), None).unwrap_err();
    assert!(err.to_string().contains("disk on fire"), "{err}");
    // The remote gives up when the stream is abandoned; the temp file goes.
    r.shutdown();
    drop((ctx, r));
    let left: Vec<_> = std::fs::read_dir(&dir.0).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    guard.check();
}

#[test]
fn logs_and_stray_output_are_forwarded_with_the_context_path() {
    let guard = LeakGuard::new();
    let opts = Options {
        agent_image: Some(std::fs::read(spore_tests::test_agent_path()).unwrap()),
        agent_log_level: Some(log::LevelFilter::Debug),
        ..Options::default()
    };
    let r = Router::with_options(opts).unwrap();
    let ctx = r.local().unwrap().connect("local").unwrap();
    let _: spore_protocol::body::Empty = ctx.call(&Say { op: "say".into() }).unwrap();
    let within = Duration::from_secs(5);
    assert!(wait_for_record("spore@local/local", "hello from the log", within));
    assert!(wait_for_record("spore@local/local", "hello on stdout", within));
    assert!(wait_for_record("spore@local/local", "hello on stderr", within));
    assert!(wait_for_record("spore@local/local", "call say from context 0", within));
    r.shutdown();
    drop((ctx, r));
    guard.check();
}

#[derive(miniserde::Serialize)]
struct Say {
    op: String,
}

#[test]
fn a_call_to_a_context_that_has_gone_gets_a_dead_reply() {
    let guard = LeakGuard::new();
    let r = router();
    let a = r.local().unwrap();
    let b = a.connect("local").unwrap();
    let pid = b.info().unwrap().pid as i32;
    // A call in flight when the agent dies fails at once, naming the context.
    let pending =
        b.call_async(br#"{"op":"exec","argv":["sleep","30"],"stdin":false,"stream":false,"stderr_handle":0}"#.to_vec());
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let start = Instant::now();
    let err = pending.wait_deadline(Instant::now() + Duration::from_secs(10)).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(matches!(&err, Error::Disconnected { context, .. } if context == "local/local"), "{err:?}");
    // Later calls: the route is gone, the router answers DEAD.
    let deadline = Instant::now() + Duration::from_secs(5);
    let err = loop {
        match b.ping() {
            Err(e @ Error::Dead { .. }) => break e,
            Err(Error::Disconnected { .. }) if Instant::now() < deadline => continue,
            other => panic!("expected a DEAD reply, got {other:?}"),
        }
    };
    assert!(err.to_string().contains("no route to"), "{err}");
    assert!(err.to_string().starts_with("local/local:"), "{err}");
    // The parent is fine.
    a.ping().unwrap();
    r.shutdown();
    drop((a, b, r));
    guard.check();
}

#[test]
fn unknown_operations_and_bad_bodies_get_clear_errors() {
    let guard = LeakGuard::new();
    let r = router();
    let ctx = r.local().unwrap();
    let msg = ctx.call_async(br#"{"op":"frobnicate"}"#.to_vec()).wait().unwrap();
    let err = ctx.decode::<spore_protocol::body::Empty>(&msg).unwrap_err();
    assert_eq!(err.remote_kind(), Some("unsupported"));
    assert!(err.to_string().contains("frobnicate"));
    // A body that does not decode gets a DEAD reply naming what failed.
    let err = ctx.call_async(b"\xff not json".to_vec()).wait().unwrap_err();
    assert!(matches!(&err, spore::Error::Dead { reason, .. } if reason.contains("does not decode as a call")), "{err}");
    let err = ctx.call_async(br#"{"op":"exec","argv":7}"#.to_vec()).wait().unwrap_err();
    assert!(matches!(&err, spore::Error::Dead { reason, .. } if reason.contains("exec arguments")), "{err}");
    r.shutdown();
    drop((ctx, r));
    guard.check();
}

#[test]
fn shutdown_ends_every_agent_and_command() {
    let guard = LeakGuard::new();
    let r = router();
    let a = r.local().unwrap();
    let b = a.connect("local").unwrap();
    // Commands still running at shutdown, one in the background.
    let p1 = b.call_async(
        br#"{"op":"exec","argv":["sh","-c","sleep 60 & sleep 60"],"stdin":false,"stream":true,"stderr_handle":0}"#
            .to_vec(),
    );
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    r.shutdown();
    assert!(start.elapsed() < Duration::from_secs(2), "shutdown took {:?}", start.elapsed());
    // The call fails clearly: the agent's own "shutting down" answer if it
    // got out before the stream closed, else the master's "disconnected".
    let err = p1.wait().and_then(|msg| b.decode::<spore_protocol::body::Empty>(&msg)).unwrap_err();
    match &err {
        Error::Remote { kind, message, .. } => {
            assert_eq!(kind, "shutting_down");
            assert!(message.contains("local/local is shutting down"), "{err}");
        }
        Error::Disconnected { context, .. } => assert_eq!(context, "local/local"),
        other => panic!("unexpected {other:?}"),
    }
    drop((a, b, r));
    guard.check();
}

#[test]
fn streamed_output_to_a_slow_reader_arrives_whole() {
    let guard = LeakGuard::new();
    let r = router();
    let ctx = r.local().unwrap();
    let mut got = 0usize;
    let status = ctx
        .exec_streaming(&Command::new(["head", "-c", "3000000", "/dev/zero"]), None, &mut |_, d| {
            got += d.len();
            std::thread::sleep(Duration::from_millis(3));
            Ok(())
        })
        .unwrap();
    assert!(status.success());
    assert_eq!(got, 3_000_000, "output was cut short");
    r.shutdown();
    drop((ctx, r));
    guard.check();
}

#[test]
fn collected_output_is_bounded_in_the_agent() {
    let guard = LeakGuard::new();
    let r = router();
    let ctx = r.local().unwrap();
    let pid = ctx.info().unwrap().pid;
    let out = ctx.exec(&Command::new(["head", "-c", "200000000", "/dev/zero"]).output_limit(200_000_000)).unwrap();
    assert_eq!(out.stdout.len(), 200_000_000);
    let peak = spore_tests::peak_rss_kib(pid);
    assert!(peak < 48 * 1024, "the agent held {peak} KiB for a collected command");
    r.shutdown();
    drop((ctx, r, out));
    guard.check();
}

#[test]
fn calls_after_shutdown_fail_at_once() {
    let guard = LeakGuard::new();
    let r = router();
    let ctx = r.local().unwrap();
    r.shutdown();
    let start = Instant::now();
    let err = ctx.ping().unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(matches!(err, Error::ShuttingDown | Error::Disconnected { .. } | Error::Dead { .. }), "{err:?}");
    assert!(matches!(r.local(), Err(Error::ShuttingDown)));
    drop((ctx, r));
    guard.check();
}

#[test]
fn a_child_cannot_claim_other_contexts() {
    let guard = LeakGuard::new();
    let opts = Options {
        agent_image: Some(std::fs::read(spore_tests::test_agent_path()).unwrap()),
        agent_log_level: Some(log::LevelFilter::Info),
        ..Options::default()
    };
    let r = Router::with_options(opts).unwrap();
    let top = r.local().unwrap();
    let a = top.connect("local").unwrap();
    let b = top.connect("local").unwrap();
    // a claims the master, its parent, its sibling; top claims an id the
    // master never gave out.
    for (who, id) in [(&a, 0), (&a, top.id()), (&a, b.id()), (&top, 999)] {
        let body = format!(r#"{{"op":"claim_route","id":{id}}}"#);
        who.call_async(body.into_bytes()).wait_deadline(Instant::now() + Duration::from_secs(5)).unwrap();
    }
    assert!(wait_for_record("spore@local", "refused ADD_ROUTE for context 0", Duration::from_secs(5)));
    assert!(wait_for_record(
        "spore@local",
        &format!("refused ADD_ROUTE for context {}", b.id()),
        Duration::from_secs(5)
    ));
    assert!(wait_for_record("spore_agent::broker", "refused ADD_ROUTE for context 999", Duration::from_secs(5)));
    for ctx in [&top, &a, &b] {
        ctx.ping().unwrap();
    }
    r.shutdown();
    drop((top, a, b, r));
    guard.check();
}
