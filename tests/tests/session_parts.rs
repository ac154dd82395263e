//! What a persistent session needs from the library: a run's calls
//! cancelled (the command's whole tree killed, another run's calls on the
//! same context untouched), liveness without a round trip, `Targets` that
//! reconnect what died, forget failures, list and drop contexts, and a
//! become password held for one run's connects only. With local agents
//! and over a loopback sshd; nothing is left behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore::target::{OpenWith, Opened};
use spore::{Cancel, Command, Context, Error, Hop, Options, Router, Stream, Targets};
use spore_tests::site::Site;
use spore_tests::sshd::{PASSWORD, USER_PW};
use spore_tests::strays::{signal, Marks};
use spore_tests::{LeakGuard, Scratch};
use std::time::{Duration, Instant};

spore_tests::local_and_ssh!(
    cancel_kills_the_command_tree_and_spares_the_other_run,
    a_call_cancelled_before_its_command_started_kills_it_too,
    liveness_is_known_without_a_round_trip,
    a_context_is_connected_from_the_moment_its_connect_returns,
    targets_reconnect_a_killed_agent_and_what_was_below_it,
    targets_list_and_drop_contexts,
    file_transfers_cancelled,
);

fn router() -> Router {
    Router::with_options(Options { shutdown_grace: Duration::from_secs(2), ..Options::default() }).unwrap()
}

/// Targets for `site`: its first hops go to the test's sshd (as root, with
/// the test's agent cache), or are local.
fn targets(site: &Site, r: &Router) -> Targets {
    let mut t = Targets::new(r.clone());
    if site.is_ssh() {
        t.first_hop_config = Some(site.sshd().config_str());
        t.first_hop_options = vec![format!("SetEnv=XDG_RUNTIME_DIR={}", site.xdg)];
    }
    t
}

fn finish(mut site: Site, marks: Option<Marks>, guard: LeakGuard) {
    drop(marks);
    site.stop();
    drop(site);
    guard.check();
}

fn stdout(ctx: &Context, line: &str) -> String {
    let out = ctx.exec(&Command::new(["sh", "-c", line])).unwrap();
    assert!(out.status.success(), "{line}: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Wait (bounded) for `what` to hold.
fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn pid_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Gone, or a zombie its parent has yet to reap.
    !stat.is_empty() && stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3)) != Some("Z")
}

/// A streamed command under `token` on its own thread: what it printed,
/// and how it ended.
type Run = std::thread::JoinHandle<(Vec<u8>, spore::Result<spore::ExitStatus>)>;

fn start(ctx: &Context, cmd: Command) -> Run {
    let ctx = ctx.clone();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let r = ctx.exec_streaming(&cmd, None, &mut |which, data| {
            if which == Stream::Stdout {
                out.extend_from_slice(data);
            }
            Ok(())
        });
        (out, r)
    })
}

/// The escapist (SIGTERM ignored, `setsid` and double-forked sleeps, the
/// last one in the foreground, nothing printed) cancelled: the call
/// returns at once, nothing of the command is left, and a call of
/// another run on the same context, started before and ending after,
/// completes with all its output; the context takes new calls.
fn cancel_kills_the_command_tree_and_spares_the_other_run(site: Site) {
    let guard = LeakGuard::new();
    let marks = Marks::new();
    let r = router();
    let ctx = site.chain(&r, 1).remove(0);
    let ours = Cancel::new();
    let theirs = Cancel::new();
    let other = start(&ctx, Command::new(["sh", "-c", "echo begun; sleep 2; echo done"]).cancel(&theirs));
    let collected = {
        // The same under `exec` (collecting), on the same token.
        let (ctx, cmd) = (ctx.clone(), marks.escapist(2).cancel(&ours));
        std::thread::spawn(move || ctx.exec(&cmd))
    };
    let call = start(&ctx, marks.escapist(1).cancel(&ours));
    let all: Vec<String> = [1, 2].iter().flat_map(|&l| marks.sleeps(l)).collect();
    marks.wait_running_here(&all);
    let cancelled = Instant::now();
    ours.cancel();
    assert!(ours.is_cancelled() && ours.clone().is_cancelled() && !theirs.is_cancelled());
    let (printed, result) = call.join().unwrap();
    let took = cancelled.elapsed();
    eprintln!("cancelled ({}): returned after {took:?}", site.label());
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(printed.is_empty());
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err:?}");
    assert_eq!(err.to_string(), format!("{}: cancelled while waiting for the command", ctx.name()));
    let err = collected.join().unwrap().unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err:?}");
    assert!(cancelled.elapsed() < Duration::from_secs(1), "took {:?}", cancelled.elapsed());
    // SIGTERM is ignored: the guardian's SIGKILL after its grace.
    marks.wait_gone_here(&[1, 2], Duration::from_secs(5), "the cancel");
    let (printed, result) = other.join().unwrap();
    assert!(result.unwrap().success());
    assert_eq!(printed, b"begun\ndone\n");
    assert_eq!(stdout(&ctx, "echo after"), "after");
    // A token stays cancelled: a new call under it gives up too.
    let err = ctx.exec(&marks.escapist(3).cancel(&ours)).unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err:?}");
    marks.wait_gone_here(&[3], Duration::from_secs(5), "a call under a cancelled token");
    assert!(ctx.is_connected());
    r.shutdown();
    drop((ctx, r));
    finish(site, Some(marks), guard);
}

/// A token cancelled while the call is on its way: the remote names the
/// command's stream only once the command started, and the call waits for
/// that to tell it to kill the command. Two levels down, for the route.
fn a_call_cancelled_before_its_command_started_kills_it_too(site: Site) {
    let guard = LeakGuard::new();
    let marks = Marks::new();
    let r = router();
    let chain = site.chain(&r, 2);
    for round in 0..5 {
        let token = Cancel::new();
        let call = start(&chain[1], marks.escapist(2).cancel(&token));
        // From at once to a little after the command began.
        std::thread::sleep(Duration::from_millis(round * 3));
        let cancelled = Instant::now();
        token.cancel();
        let (_, result) = call.join().unwrap();
        assert!(cancelled.elapsed() < Duration::from_secs(1), "round {round}: took {:?}", cancelled.elapsed());
        match result {
            Err(Error::Cancelled { .. }) => {}
            other => panic!("round {round}: {other:?}"),
        }
        marks.wait_gone_here(&[2], Duration::from_secs(5), &format!("a cancel after {} ms", round * 3));
    }
    assert_eq!(stdout(&chain[1], "echo fine"), "fine");
    r.shutdown();
    drop((chain, r));
    finish(site, Some(marks), guard);
}

/// `is_connected` follows the master's routes: a killed agent (and what
/// was below it) is seen gone without a call; a shut-down router has none.
fn liveness_is_known_without_a_round_trip(site: Site) {
    let guard = LeakGuard::new();
    let r = router();
    let chain = site.chain(&r, 3);
    assert!(chain.iter().all(Context::is_connected));
    let pid = chain[1].info().unwrap().pid;
    signal(pid, libc::SIGKILL);
    wait_until("the killed agent and the one below it seen gone", Duration::from_secs(5), || {
        !chain[1].is_connected() && !chain[2].is_connected()
    });
    assert!(chain[0].is_connected());
    chain[0].ping().unwrap();
    r.shutdown();
    assert!(!chain[0].is_connected());
    drop((chain, r));
    // A stopped agent: its stream stays open, and keepalive declares it
    // dead.
    let opts = Options {
        keepalive: Duration::from_millis(200),
        keepalive_misses: 2,
        shutdown_grace: Duration::from_secs(1),
        ..Options::default()
    };
    let r = Router::with_options(opts).unwrap();
    let ctx = site.chain(&r, 1).remove(0);
    let pid = ctx.info().unwrap().pid;
    std::thread::sleep(Duration::from_millis(600));
    assert!(ctx.is_connected(), "a live agent answers keepalive");
    signal(pid, libc::SIGSTOP);
    let stopped = Instant::now();
    wait_until("the stopped agent declared dead", Duration::from_secs(5), || !ctx.is_connected());
    eprintln!("stopped agent seen gone after {:?}", stopped.elapsed());
    if pid_alive(pid) {
        signal(pid, libc::SIGCONT);
    }
    r.shutdown();
    drop((ctx, r));
    finish(site, None, guard);
}

/// A context handed out by a connect reads as connected at once, before
/// the broker thread has taken its stream in (a first hop) or its
/// parent's announcement has arrived (a hop below): else `Targets` would
/// take a context just connected for a lost one and connect it again.
fn a_context_is_connected_from_the_moment_its_connect_returns(site: Site) {
    let guard = LeakGuard::new();
    let r = router();
    let top = r.connect(&site.hop(), site.label()).unwrap();
    assert!(top.is_connected());
    for i in 0..40 {
        let first = r.connect(&Hop::Local, &format!("local#{i}")).unwrap();
        assert!(first.is_connected(), "a first hop, round {i}");
        let below = top.connect_hop(&Hop::Local, &format!("{}/local#{i}", site.label())).unwrap();
        assert!(below.is_connected(), "a hop below, round {i}");
    }
    r.shutdown();
    drop((top, r));
    finish(site, None, guard);
}

/// The agent of a target's first hop SIGKILLed between two opens: the
/// second open connects it (and the hop below it) again, and the new
/// contexts work. Then the second hop alone: only it is replaced.
fn targets_reconnect_a_killed_agent_and_what_was_below_it(site: Site) {
    let guard = LeakGuard::new();
    let r = router();
    let t = targets(&site, &r);
    let first = site.label().to_string();
    let target = format!("{first}/local");
    let before = t.open(&target).unwrap();
    let top = t.open(&first).unwrap();
    let (top_pid, pid) = (top.info().unwrap().pid, before.info().unwrap().pid);
    assert_eq!(t.open(&target).unwrap().id(), before.id(), "cached");
    signal(top_pid, libc::SIGKILL);
    wait_until("the killed agent seen gone", Duration::from_secs(5), || !top.is_connected());
    let after = t.open(&target).unwrap();
    assert_ne!(after.id(), before.id());
    let info = after.info().unwrap();
    assert_ne!(info.pid, pid);
    assert_eq!(stdout(&after, "echo again"), "again");
    let new_top = t.open(&first).unwrap();
    assert_ne!(new_top.id(), top.id());
    assert_ne!(new_top.info().unwrap().pid, top_pid);
    // The lower hop alone: its parent stays.
    signal(info.pid, libc::SIGKILL);
    wait_until("the lower agent seen gone", Duration::from_secs(5), || !after.is_connected());
    let third = t.open(&target).unwrap();
    assert_ne!(third.id(), after.id());
    assert_eq!(t.open(&first).unwrap().id(), new_top.id());
    assert_eq!(stdout(&third, "echo third"), "third");
    let paths: Vec<String> = t.contexts().into_iter().map(|o| o.path).collect();
    assert_eq!(paths, [first.clone(), target.clone()]);
    // Many opens at once of a target whose agent died: one reconnect.
    let pid = third.info().unwrap().pid;
    signal(new_top.info().unwrap().pid, libc::SIGKILL);
    wait_until("the agents seen gone", Duration::from_secs(5), || !third.is_connected());
    let many = t.open_all(&vec![target.clone(); 8]);
    let ids: Vec<u32> = many.iter().map(|c| c.as_ref().unwrap().id()).collect();
    assert!(ids.iter().all(|&i| i == ids[0] && i != third.id()), "{ids:?}");
    assert_ne!(many[0].as_ref().unwrap().info().unwrap().pid, pid);
    r.shutdown();
    drop((before, top, after, new_top, third, many, t, r));
    finish(site, None, guard);
}

/// `contexts` lists what is live, with when it connected and was last
/// used; `drop_context` forgets a path and what is below it, and shuts
/// its agent down (with its subtree): a first hop by the master, a nested
/// one by its parent, which stays.
fn targets_list_and_drop_contexts(site: Site) {
    let guard = LeakGuard::new();
    let r = router();
    let t = targets(&site, &r);
    let first = site.label().to_string();
    let (a, b) = (format!("{first}/local"), format!("{first}/local/local"));
    let began = Instant::now();
    t.open(&b).unwrap();
    let listed = t.contexts();
    let paths: Vec<&str> = listed.iter().map(|o| o.path.as_str()).collect();
    assert_eq!(paths, [first.as_str(), a.as_str(), b.as_str()]);
    for Opened { connected_since, last_used, context, .. } in &listed {
        assert!(began <= *connected_since && connected_since <= last_used, "{context:?}");
        assert!(context.is_connected());
    }
    std::thread::sleep(Duration::from_millis(20));
    let used = Instant::now();
    t.open(&a).unwrap();
    let now = t.contexts();
    assert!(now[0].last_used >= used && now[1].last_used >= used, "a and its prefix were used");
    assert!(now[2].last_used < used, "b was not");
    assert_eq!(now[0].connected_since, listed[0].connected_since);
    // Dropping the middle: it and b go, their agents end (its parent, the
    // first hop, stops it); the first hop stays, and serves.
    let (a_pid, b_pid) = (listed[1].context.info().unwrap().pid, listed[2].context.info().unwrap().pid);
    assert!(t.drop_context(&a));
    assert!(!t.drop_context(&a));
    let paths: Vec<String> = t.contexts().into_iter().map(|o| o.path).collect();
    assert_eq!(paths, [first.as_str()]);
    wait_until("the dropped nested agents gone", Duration::from_secs(5), || {
        !pid_alive(a_pid) && !pid_alive(b_pid) && !listed[1].context.is_connected()
    });
    assert!(listed[0].context.is_connected());
    assert_eq!(stdout(&listed[0].context, "echo still here"), "still here");
    let again = t.open(&b).unwrap();
    assert_ne!(again.id(), listed[2].context.id());
    assert_eq!(stdout(&again, "echo here"), "here");
    // Dropping the first hop shuts its agent down, and the tree below it.
    let top_pid = listed[0].context.info().unwrap().pid;
    assert!(t.drop_context(&first));
    assert!(t.contexts().is_empty());
    wait_until("the dropped first hop gone", Duration::from_secs(5), || !pid_alive(top_pid) && !again.is_connected());
    let fresh = t.open(&b).unwrap();
    assert_eq!(stdout(&fresh, "echo fresh"), "fresh");
    r.shutdown();
    drop((listed, now, again, fresh, t, r));
    finish(site, None, guard);
}

/// A password for one run's connects: with it, `sudo` as the user who
/// needs one; a run without it at the same time on the same `Targets`
/// fails as without one, and the context the first opened stays live and
/// usable. A failed connect is remembered until `forget_failures`.
#[test]
fn a_become_password_serves_one_run_and_failures_are_retried_when_forgotten() {
    let guard = LeakGuard::new();
    let site = Site::ssh();
    let r = router();
    let t = targets(&site, &r);
    let root = format!("{USER_PW}@spore-test/sudo");
    let nobody = format!("{USER_PW}@spore-test/sudo:nobody");
    let with_pw = OpenWith { become_password: Some(PASSWORD), ..OpenWith::default() };
    // No password: sudo refuses, and the failure is cached.
    let err = t.open(&root).unwrap_err().to_string();
    assert!(err.contains("sudo needs a password"), "{err}");
    let err = t.open_with(&root, with_pw).unwrap_err().to_string();
    assert!(err.contains("sudo needs a password"), "cached: {err}");
    t.forget_failures();
    // Two runs at once, one with the password: the other's sudo does
    // not get it.
    let (ctx, other) = std::thread::scope(|s| {
        let other = s.spawn(|| t.open(&nobody));
        (t.open_with(&root, with_pw), other.join().unwrap())
    });
    let ctx = ctx.unwrap();
    assert_eq!(stdout(&ctx, "id -u"), "0");
    let err = other.unwrap_err().to_string();
    assert!(err.contains("sudo needs a password"), "{err}");
    assert!(!err.contains(PASSWORD), "the password leaked into an error: {err}");
    // The next run: the live sudo context needs no password.
    let again = t.open(&root).unwrap();
    assert_eq!(again.id(), ctx.id());
    assert_eq!(stdout(&again, "id -u"), "0");
    // Forgetting failures retries them, without a password still.
    t.forget_failures();
    let start = Instant::now();
    let err = t.open(&nobody).unwrap_err().to_string();
    assert!(err.contains("sudo needs a password"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    // Another run with the password: its connects use it.
    t.forget_failures();
    let other = t.open_with(&nobody, with_pw).unwrap();
    assert_eq!(stdout(&other, "id -un"), "nobody");
    r.shutdown();
    drop((ctx, again, other, t, r));
    finish(site, None, guard);
}

/// Two runs at once on one `Targets`, one with a connect timeout of its
/// own, one without: each connect waits its own run's (ssh is told it as
/// its `ConnectTimeout`), neither takes the other's.
#[test]
fn each_open_connects_with_its_own_timeout() {
    let guard = LeakGuard::new();
    let r = Router::with_options(Options { connect_timeout: Duration::from_secs(3), ..Options::default() }).unwrap();
    let mut t = Targets::new(r.clone());
    // ssh waits for a banner that never comes.
    t.first_hop_options = vec!["ProxyCommand=sleep 117.3".into()];
    let ssh_of = |host: &str| {
        let tail = format!("-T -- {host} ");
        spore_tests::descendants().into_iter().map(spore_tests::cmdline).find(|c| c.contains(&tail))
    };
    std::thread::scope(|s| {
        let own = s.spawn(|| {
            t.open_with(
                "own.invalid",
                OpenWith { connect_timeout: Some(Duration::from_secs(1)), ..OpenWith::default() },
            )
        });
        let router_s = s.spawn(|| t.open("routers.invalid"));
        let mut seen = (None, None);
        wait_until("both ssh started", Duration::from_secs(10), || {
            seen.0 = seen.0.take().or_else(|| ssh_of("own.invalid"));
            seen.1 = seen.1.take().or_else(|| ssh_of("routers.invalid"));
            seen.0.is_some() && seen.1.is_some()
        });
        let (own_ssh, routers_ssh) = (seen.0.unwrap(), seen.1.unwrap());
        assert!(own_ssh.contains("-o ConnectTimeout=1 -T"), "{own_ssh}");
        assert!(routers_ssh.contains("-o ConnectTimeout=3 -T"), "{routers_ssh}");
        for (what, opened) in [("own", own.join().unwrap()), ("router's", router_s.join().unwrap())] {
            let err = opened.unwrap_err().to_string();
            assert!(err.contains(".invalid: connection failed:"), "{what}: {err}");
        }
    });
    r.shutdown();
    drop((t, r));
    guard.check();
}

/// Endless bytes, for an upload that never ends by itself.
struct Endless;

impl std::io::Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        buf.fill(b'x');
        Ok(buf.len())
    }
}

/// An endless upload cancelled: the call returns at once and the remote
/// removes its temporary file; a download cancelled from its sink ends
/// there. The context takes new transfers.
fn file_transfers_cancelled(site: Site) {
    let guard = LeakGuard::new();
    let scratch = Scratch::new(&format!("cancel-{}", site.label()));
    let r = router();
    let ctx = site.chain(&r, 2).remove(1);
    let dest = scratch.path("endless");
    let token = Cancel::new();
    let call = {
        let (ctx, dest, token) = (ctx.clone(), dest.clone(), token.clone());
        std::thread::spawn(move || ctx.write_file_cancellable(&dest, &mut Endless, Some(0o644), &token))
    };
    // Wait until bytes are flowing: the temporary file grows.
    wait_until("the upload under way", Duration::from_secs(10), || {
        ctx.list_dir(&scratch.0.display().to_string()).unwrap().entries.iter().any(|e| e.size > 1 << 20)
    });
    let cancelled = Instant::now();
    token.cancel();
    let err = call.join().unwrap().unwrap_err();
    assert!(cancelled.elapsed() < Duration::from_secs(1), "took {:?}", cancelled.elapsed());
    assert!(matches!(err, Error::Cancelled { .. }), "{err:?}");
    wait_until("the temporary file removed", Duration::from_secs(5), || {
        ctx.list_dir(&scratch.0.display().to_string()).unwrap().entries.is_empty()
    });
    // A download whose sink cancels it after its first chunk.
    let big = scratch.path("big");
    let n = ctx.write_file(&big, &mut std::io::Read::take(Endless, 64 << 20), Some(0o644)).unwrap();
    assert_eq!(n, 64 << 20);
    let token = Cancel::new();
    struct Cancelling(Cancel, u64);
    impl std::io::Write for Cancelling {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.cancel();
            self.1 += b.len() as u64;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut sink = Cancelling(token.clone(), 0);
    let err = ctx.download_cancellable(&big, &mut sink, &token).unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err:?}");
    assert!(sink.1 < 64 << 20, "got it all: {}", sink.1);
    // And the context is fine.
    let mut all = Vec::new();
    assert_eq!(ctx.download(&big, &mut all).unwrap().size, 64 << 20);
    assert_eq!(stdout(&ctx, "echo ok"), "ok");
    r.shutdown();
    drop((ctx, r, scratch));
    finish(site, None, guard);
}
