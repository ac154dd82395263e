//! The shutdown sequence against every fault we could think of, each run
//! twice: with local agents (`local/local/...`) and over a loopback sshd
//! (`spore-test/spore-test/...`). Every test bounds its own waits and fails
//! if any process or fd of it is left.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore::{Command, Context, Error, Options, Router};
use spore_tests::site::Site;
use spore_tests::{cmdline, descendants, spore_bin, test_agent_path, wait_for_record, LeakGuard, RECORDS};
use std::process::Stdio;
use std::time::{Duration, Instant};

spore_tests::local_and_ssh!(
    a_wide_tree_shuts_down_gracefully_and_fast,
    a_hung_dispatcher_does_not_hold_up_the_tree,
    commands_that_ignore_sigterm_or_fork_away_are_killed,
    a_stopped_agent_does_not_hold_up_the_master,
    a_context_that_stops_reading_is_forced,
    killing_the_master_takes_the_tree_with_it,
    logs_and_output_written_before_shutdown_arrive,
    shutdown_from_a_child_or_sibling_is_ignored,
    a_silent_child_is_declared_dead_by_the_keepalive,
);

fn test_agent_router(grace: Duration) -> Router {
    Router::with_options(Options {
        agent_image: Some(std::fs::read(test_agent_path()).unwrap()),
        agent_log_level: Some(log::LevelFilter::Info),
        shutdown_grace: grace,
        ..Options::default()
    })
    .unwrap()
}

fn finish(mut site: Site, guard: LeakGuard) {
    site.stop();
    drop(site);
    guard.check();
}

/// Wait (bounded) until `n` processes of ours run exactly `cmd`.
fn wait_running(cmd: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = descendants().into_iter().filter(|&p| cmdline(p) == cmd).count();
        if found >= n {
            return;
        }
        assert!(Instant::now() < deadline, "only {found} of {n} `{cmd}` started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn a_wide_tree_shuts_down_gracefully_and_fast(site: Site) {
    let guard = LeakGuard::new();
    let r = Router::new().unwrap();
    let tree = site.tree(&r, 3, 3);
    assert_eq!(tree.len(), 3 + 9 + 27);
    for ctx in &tree {
        ctx.ping().unwrap();
    }
    let start = Instant::now();
    r.shutdown();
    let took = start.elapsed();
    eprintln!("graceful shutdown of 39 {} contexts: {took:?}", site.label());
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(!RECORDS.lock().unwrap().iter().any(|(_, _, m)| m.contains("forced")), "a context had to be forced");
    drop((tree, r));
    finish(site, guard);
}

fn a_hung_dispatcher_does_not_hold_up_the_tree(site: Site) {
    let guard = LeakGuard::new();
    let r = test_agent_router(Duration::from_secs(5));
    let chain = site.chain(&r, 3);
    let hung: Vec<_> = chain.iter().map(|c| c.call_async(br#"{"op":"hang"}"#.to_vec())).collect();
    std::thread::sleep(Duration::from_millis(100));
    chain[2].ping().unwrap();
    let start = Instant::now();
    r.shutdown();
    let took = start.elapsed();
    eprintln!("shutdown with a call hung at every level ({}): {took:?}", site.label());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    for (call, ctx) in hung.into_iter().zip(&chain) {
        let result = call.wait_deadline(Instant::now() + Duration::from_secs(1));
        let err = result.and_then(|m| ctx.decode::<spore_protocol::body::Empty>(&m)).unwrap_err();
        assert!(
            matches!(&err, Error::Disconnected { .. } | Error::ShuttingDown)
                || err.remote_kind() == Some("shutting_down"),
            "{err:?}"
        );
    }
    drop((chain, r));
    finish(site, guard);
}

fn commands_that_ignore_sigterm_or_fork_away_are_killed(site: Site) {
    let guard = LeakGuard::new();
    let r = Router::new().unwrap();
    let chain = site.chain(&r, 3);
    let mut calls = Vec::new();
    for ctx in &chain {
        let stubborn = Command::new(["sh", "-c", "trap '' TERM; sleep 61; sleep 61"]);
        let forked = Command::new(["sh", "-c", "sleep 62 & sleep 63"]);
        for cmd in [stubborn, forked] {
            let ctx = ctx.clone();
            calls.push(std::thread::spawn(move || ctx.exec(&cmd)));
        }
    }
    for cmd in ["sleep 61", "sleep 62", "sleep 63"] {
        wait_running(cmd, 3);
    }
    let start = Instant::now();
    r.shutdown();
    let took = start.elapsed();
    eprintln!("shutdown with stubborn commands at 3 levels ({}): {took:?}", site.label());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    for c in calls {
        assert!(c.join().unwrap().is_err(), "a call killed by shutdown must fail");
    }
    drop((chain, r));
    finish(site, guard);
}

fn a_stopped_agent_does_not_hold_up_the_master(site: Site) {
    let guard = LeakGuard::new();
    let grace = Duration::from_secs(2);
    let r = Router::with_options(Options { shutdown_grace: grace, ..Options::default() }).unwrap();
    let chain = site.chain(&r, 3);
    let middle = chain[1].info().unwrap().pid as i32;
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(middle, libc::SIGSTOP) };
    let start = Instant::now();
    r.shutdown();
    let took = start.elapsed();
    eprintln!("shutdown with a stopped middle agent ({}): {took:?} (grace {grace:?})", site.label());
    assert!(took < grace + Duration::from_millis(900), "took {took:?}");
    if site.is_ssh() {
        // Over ssh nothing on our side can signal a remote process: its
        // session is closed, so once it runs again it sees EOF and ends.
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: as above.
        unsafe { libc::kill(middle, libc::SIGCONT) };
    }
    drop((chain, r));
    finish(site, guard);
}

fn a_context_that_stops_reading_is_forced(site: Site) {
    let guard = LeakGuard::new();
    let grace = Duration::from_secs(1);
    let r = Router::with_options(Options {
        agent_image: Some(std::fs::read(spore_tests::deaf_agent_path()).unwrap()),
        shutdown_grace: grace,
        ..Options::default()
    })
    .unwrap();
    let deaf = r.connect(&site.hop(), site.label()).unwrap();
    let is_agent = |p: i32| cmdline(p).split_whitespace().next().is_some_and(|exe| exe.contains("/spore-agent-"));
    let pid = descendants().into_iter().find(|&p| is_agent(p)).unwrap();
    // Fill its pipe: it never reads.
    for _ in 0..64 {
        let _ = deaf.call_async(vec![b' '; 64 * 1024]);
    }
    let start = Instant::now();
    r.shutdown();
    let took = start.elapsed();
    eprintln!("shutdown with a context that stopped reading ({}): {took:?} (grace {grace:?})", site.label());
    assert!(took < grace + Duration::from_millis(900), "took {took:?}");
    if site.is_ssh() {
        // The ssh client is reaped; the deaf process on the far side is
        // beyond anyone's reach but root's there. Clean it up by hand.
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    drop((deaf, r));
    finish(site, guard);
}

fn killing_the_master_takes_the_tree_with_it(site: Site) {
    let guard = LeakGuard::new();
    // Over ssh the CLI's -F reaches the first hop only; the rest of the
    // tree is local agents on the far side.
    let target = if site.is_ssh() { "spore-test/local/local".to_string() } else { "local/local/local".to_string() };
    let mut args: Vec<String> = Vec::new();
    if site.is_ssh() {
        args.extend([
            "-F".into(),
            site.sshd().config_str(),
            "-o".into(),
            format!("SetEnv=XDG_RUNTIME_DIR={}", site.xdg),
        ]);
    }
    args.extend(["run".into(), target, "--".into(), "sh".into(), "-c".into(), "sleep 64 & sleep 65".into()]);
    let mut master = std::process::Command::new(spore_bin())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_running("sleep 65", 1);
    wait_running("sleep 64", 1);
    master.kill().unwrap();
    master.wait().unwrap();
    let start = Instant::now();
    let listener = if site.is_ssh() { site.sshd().pid() } else { None };
    let sshd_pid = |p: i32| Some(p) == listener;
    loop {
        spore_tests::reap_zombies();
        let left: Vec<i32> = descendants().into_iter().filter(|&p| !sshd_pid(p)).collect();
        if left.is_empty() {
            break;
        }
        let names: Vec<String> = left.iter().map(|&p| cmdline(p)).collect();
        assert!(start.elapsed() < Duration::from_secs(6), "still running 6 s after the master died: {names:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("tree gone {:?} after the master was killed ({})", start.elapsed(), site.label());
    finish(site, guard);
}

fn logs_and_output_written_before_shutdown_arrive(site: Site) {
    let guard = LeakGuard::new();
    let r = test_agent_router(Duration::from_secs(5));
    let chain = site.chain(&r, 2);
    let deep: &Context = &chain[1];
    let records = 2000;
    let msg = deep.call_async(format!(r#"{{"op":"burst","records":{records},"stderr_bytes":1048576}}"#).into_bytes());
    let reply = msg.wait_deadline(Instant::now() + Duration::from_secs(30)).unwrap();
    let lines: u64 = String::from_utf8_lossy(&reply.body).trim_matches(|c: char| !c.is_ascii_digit()).parse().unwrap();
    // Shut down at once: nothing may be lost on the way out.
    r.shutdown();
    let target = format!("spore@{}", deep.name());
    let got = RECORDS.lock().unwrap().clone();
    let burst_records = got.iter().filter(|(_, t, m)| *t == target && m.starts_with("burst record")).count();
    let burst_lines: Vec<&String> =
        got.iter().filter(|(_, t, m)| *t == target && m.starts_with("burst line")).map(|(_, _, m)| m).collect();
    assert_eq!(burst_records, records, "log records lost");
    assert_eq!(burst_lines.len() as u64, lines, "stderr lines lost");
    let bytes: usize = burst_lines.iter().map(|l| l.len() + 1).sum();
    assert!(bytes >= 1 << 20, "only {bytes} bytes of stderr arrived");
    drop((chain, r));
    finish(site, guard);
}

fn shutdown_from_a_child_or_sibling_is_ignored(site: Site) {
    let guard = LeakGuard::new();
    let r = test_agent_router(Duration::from_secs(5));
    let parent = r.connect(&site.hop(), site.label()).unwrap();
    let a = parent.connect_hop(&site.hop(), &format!("{}/a", site.label())).unwrap();
    let b = parent.connect_hop(&site.hop(), &format!("{}/b", site.label())).unwrap();
    for dst in [parent.id(), b.id(), 0] {
        let m = a.call_async(format!(r#"{{"op":"send_shutdown","dst":{dst}}}"#).into_bytes());
        m.wait_deadline(Instant::now() + Duration::from_secs(5)).unwrap();
    }
    assert!(wait_for_record(
        &format!("spore@{}", parent.name()),
        &format!("ignored SHUTDOWN from context {}", a.id()),
        Duration::from_secs(5)
    ));
    assert!(wait_for_record(
        "spore_agent::broker",
        &format!("ignored SHUTDOWN from context {}", a.id()),
        Duration::from_secs(5)
    ));
    std::thread::sleep(Duration::from_millis(200));
    for ctx in [&parent, &a, &b] {
        ctx.ping().unwrap_or_else(|e| panic!("{} was stopped by a SHUTDOWN it should ignore: {e}", ctx.name()));
    }
    r.shutdown();
    drop((parent, a, b, r));
    finish(site, guard);
}

fn a_silent_child_is_declared_dead_by_the_keepalive(site: Site) {
    let guard = LeakGuard::new();
    let every = Duration::from_millis(200);
    let r = Router::with_options(Options { keepalive: every, keepalive_misses: 3, ..Options::default() }).unwrap();
    let chain = site.chain(&r, 2);
    let stuck = chain[1].info().unwrap().pid as i32;
    let pending = chain[1]
        .call_async(br#"{"op":"exec","argv":["sleep","30"],"stdin":false,"stream":false,"stderr_handle":0}"#.to_vec());
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(stuck, libc::SIGSTOP) };
    let start = Instant::now();
    let err = pending.wait_deadline(Instant::now() + Duration::from_secs(10)).unwrap_err();
    let took = start.elapsed();
    eprintln!("a stopped agent declared dead after {took:?} (keepalive {every:?} x 3, {})", site.label());
    assert!(
        matches!(&err, Error::Disconnected { context, reason } if context == chain[1].name() && reason.contains("silent for")),
        "{err:?}"
    );
    assert!(took < every * 3 + Duration::from_secs(1), "took {took:?}");
    // The rest of the tree carries on.
    chain[0].ping().unwrap();
    assert!(chain[0].exec(&Command::new(["true"])).unwrap().status.success());
    // Over ssh the stopped process is out of our reach; once it runs again
    // it finds its parent gone and ends.
    // SAFETY: as above.
    unsafe { libc::kill(stuck, libc::SIGCONT) };
    r.shutdown();
    drop((chain, r));
    finish(site, guard);
}

#[test]
fn a_child_that_closes_its_input_is_dropped_without_spinning() {
    let guard = LeakGuard::new();
    let r = Router::with_options(Options {
        agent_image: Some(std::fs::read(spore_tests::deaf_agent_path()).unwrap()),
        shutdown_grace: Duration::from_secs(1),
        ..Options::default()
    })
    .unwrap();
    let cpu = || {
        // SAFETY: getrusage fills a plain struct.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
        Duration::from_secs(u.ru_utime.tv_sec as u64) + Duration::from_micros(u.ru_utime.tv_usec as u64)
    };
    let ctx = r.connect(&spore::Hop::Local, "halfclose").unwrap();
    // Idle: nothing is sent, yet the broker must notice and not spin.
    let before = cpu();
    std::thread::sleep(Duration::from_millis(500));
    let used = cpu() - before;
    assert!(used < Duration::from_millis(200), "the master spun: {used:?} of CPU in 0.5 s");
    let err = ctx.ping().unwrap_err();
    assert!(err.to_string().contains("the peer closed its input"), "{err}");
    r.shutdown();
    drop((ctx, r));
    guard.check();
}

/// Wait (bounded) until no process runs `mark`; those left are killed
/// (so a failing test leaves nothing) and named.
fn gone_within(mark: &str, within: Duration) -> Result<(), Vec<(i32, String)>> {
    spore_tests::none_running_within(mark, within).inspect_err(|left| {
        for &(pid, _) in left {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    })
}

/// An ssh hop whose connection never answers: its ProxyCommand is a
/// `sleep` the test finds by its length.
fn hanging_ssh(mark: &str) -> spore::Hop {
    spore::Hop::Ssh(spore::SshHop {
        host: "hang.invalid".into(),
        user: None,
        port: None,
        config: None,
        options: vec![format!("ProxyCommand=sleep {mark}"), "ConnectTimeout=120".into()],
    })
}

/// A shutdown while connects are still in their handshake (one from the
/// master, one from an agent) ends their connection processes at once —
/// ssh and the ProxyCommand below it — rather than leaving them to the
/// connect timeout (or, once the master has exited, to nobody).
#[test]
fn a_shutdown_ends_the_connects_under_way() {
    let guard = LeakGuard::new();
    let (top, below) = ("115.31", "115.32");
    let r = Router::with_options(Options { connect_timeout: Duration::from_secs(100), ..Options::default() }).unwrap();
    let local = r.local().unwrap();
    std::thread::scope(|s| {
        let first = s.spawn(|| r.connect(&hanging_ssh(top), "hang-top"));
        let nested = s.spawn(|| local.connect_hop(&hanging_ssh(below), "local/hang-below"));
        // ssh is connecting once its ProxyCommand runs.
        for mark in [top, below] {
            let started = spore_tests::wait_for_command(&format!("sleep {mark}"), 1, Duration::from_secs(20));
            assert!(started, "the connect never started");
        }
        r.shutdown();
        let left = (gone_within(top, Duration::from_secs(3)), gone_within(below, Duration::from_secs(3)));
        assert_eq!(left, (Ok(()), Ok(())), "connection processes left after the shutdown");
        assert!(first.join().unwrap().is_err());
        assert!(nested.join().unwrap().is_err());
    });
    drop((local, r));
    guard.check();
}

/// The same through the CLI: SIGTERM while a target is still connecting
/// leaves no ssh behind once spore has exited.
#[test]
fn a_signal_during_a_connect_leaves_no_ssh_behind() {
    let guard = LeakGuard::new();
    let mark = "115.33";
    let child = std::process::Command::new(spore_bin())
        .args(["-o", &format!("ProxyCommand=sleep {mark}"), "--connect-timeout", "100", "run", "hang.invalid"])
        .args(["--", "true"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // ssh is connecting once its ProxyCommand runs (spore's own command
    // line holds the mark too).
    let started = spore_tests::wait_for_command(&format!("sleep {mark}"), 1, Duration::from_secs(20));
    assert!(started, "the connect never started");
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = spore_tests::wait_bounded(child, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(143), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(gone_within(mark, Duration::from_secs(3)), Ok(()), "ssh left after spore exited");
    guard.check();
}
