//! The no-strays suite: a command never outlives the context that started
//! it, however hard it tries. Each command here backgrounds a sleep,
//! double-forks one, `setsid`s one, does both to another and ignores
//! SIGTERM (`spore_tests::strays`); then its agent is SIGKILLed, stopped
//! and forced, its timeout expires, or the router shuts down after it
//! returned — and afterwards nothing of it runs (a walk of this host's
//! `/proc`, or `ps` in a container). With local agents, over a loopback
//! sshd, and in a Docker host of the fleet.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore::{Context, Options, Router, SshHop};
use spore_tests::fleet::{self, Fleet, FleetOptions};
use spore_tests::site::Site;
use spore_tests::strays::{signal, Marks};
use spore_tests::LeakGuard;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The agent running the commands, killed at each depth of a chain of
/// three.
fn sigkill_at_depth_1(site: Site) {
    sigkill_at_depth(site, 1)
}
fn sigkill_at_depth_2(site: Site) {
    sigkill_at_depth(site, 2)
}
fn sigkill_at_depth_3(site: Site) {
    sigkill_at_depth(site, 3)
}

spore_tests::local_and_ssh!(
    sigkill_at_depth_1,
    sigkill_at_depth_2,
    sigkill_at_depth_3,
    a_stopped_agent_forced_at_shutdown,
    a_timeout_kills_the_whole_tree,
    shutdown_kills_what_a_finished_command_left,
    a_stopped_guardian_at_shutdown,
    a_killed_guardian_at_shutdown,
    a_killed_guardians_orphans_are_reaped_by_the_agent,
);

/// The routers' shutdown grace.
const GRACE: Duration = Duration::from_secs(2);

fn router() -> Router {
    Router::with_options(Options { shutdown_grace: GRACE, ..Options::default() }).unwrap()
}

fn finish(mut site: Site, marks: Marks, guard: LeakGuard) {
    drop(marks);
    site.stop();
    drop(site);
    guard.check();
}

/// Start `marks.escapist(level)` at every context of `chain` (level = depth).
fn start_escapists(marks: &Marks, chain: &[Context]) -> Vec<JoinHandle<spore::Result<spore::Output>>> {
    chain
        .iter()
        .enumerate()
        .map(|(i, ctx)| {
            let (ctx, cmd) = (ctx.clone(), marks.escapist(i + 1));
            std::thread::spawn(move || ctx.exec(&cmd))
        })
        .collect()
}

fn join_all(calls: Vec<JoinHandle<spore::Result<spore::Output>>>) {
    for c in calls {
        // The calls fail (their agent died, or the router shut down); that
        // they return at all is what matters here.
        let _ = c.join().unwrap();
    }
}

fn sigkill_at_depth(site: Site, depth: usize) {
    let guard = LeakGuard::new();
    let marks = Marks::new();
    let r = router();
    let chain = site.chain(&r, 3);
    let calls = start_escapists(&marks, &chain);
    let all: Vec<String> = (1..=3).flat_map(|l| marks.sleeps(l)).collect();
    marks.wait_running_here(&all);
    let pid = chain[depth - 1].info().unwrap().pid;
    signal(pid, libc::SIGKILL);
    let below: Vec<usize> = (depth..=3).collect();
    marks.wait_gone_here(&below, Duration::from_secs(5), &format!("SIGKILL of the agent at depth {depth}"));
    for level in 1..depth {
        marks.assert_running_here(level, "its agent is alive");
    }
    r.shutdown();
    join_all(calls);
    marks.wait_gone_here(&[1, 2, 3], Duration::from_secs(3), "the router's shutdown");
    drop((chain, r));
    finish(site, marks, guard);
}

fn a_stopped_agent_forced_at_shutdown(site: Site) {
    let guard = LeakGuard::new();
    let marks = Marks::new();
    let r = router();
    let chain = site.chain(&r, 3);
    let calls = start_escapists(&marks, &chain);
    let all: Vec<String> = (1..=3).flat_map(|l| marks.sleeps(l)).collect();
    marks.wait_running_here(&all);
    let pid = chain[0].info().unwrap().pid;
    signal(pid, libc::SIGSTOP);
    let start = Instant::now();
    r.shutdown();
    eprintln!("shutdown with the first agent stopped ({}): {:?}", site.label(), start.elapsed());
    if site.is_ssh() {
        // Over ssh nothing on our side can signal the remote agent (see the
        // README's limits); once it runs again it finds its parent gone.
        signal(pid, libc::SIGCONT);
    }
    join_all(calls);
    marks.wait_gone_here(&[1, 2, 3], Duration::from_secs(8), "a shutdown that forced a stopped agent");
    drop((chain, r));
    finish(site, marks, guard);
}

fn a_timeout_kills_the_whole_tree(site: Site) {
    let guard = LeakGuard::new();
    let marks = Marks::new();
    let r = router();
    let chain = site.chain(&r, 2);
    let start = Instant::now();
    let out = chain[1].exec(&marks.escapist(2).timeout(Duration::from_millis(500))).unwrap();
    let took = start.elapsed();
    eprintln!("timed out and killed ({}): {took:?}", site.label());
    assert!(out.status.timed_out, "{:?}", out.status);
    // It ignores SIGTERM: SIGKILL after the grace.
    assert_eq!(out.status.signal, Some(libc::SIGKILL), "{:?}", out.status);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // Before any shutdown: the timeout alone ended every process of it.
    marks.wait_gone_here(&[2], Duration::from_secs(2), "the command's timeout");
    chain[1].ping().unwrap();
    r.shutdown();
    drop((chain, r));
    finish(site, marks, guard);
}

fn shutdown_kills_what_a_finished_command_left(site: Site) {
    let guard = LeakGuard::new();
    let marks = Marks::new();
    let r = router();
    let chain = site.chain(&r, 2);
    let out = chain[1].exec(&marks.leaver(2)).unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(out.stdout, b"started\n");
    // A command may outlive its call (not its context).
    let left: Vec<String> = marks.sleeps(2).into_iter().take(4).collect();
    marks.wait_running_here(&left);
    chain[1].ping().unwrap();
    let start = Instant::now();
    r.shutdown();
    let took = start.elapsed();
    eprintln!("shutdown with leftovers ({}): {took:?}", site.label());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    marks.wait_gone_here(&[2], Duration::from_secs(2), "the router's shutdown");
    drop((chain, r));
    finish(site, marks, guard);
}

/// The leftovers of a finished command at depth 2, whose guardian is
/// stopped (as if never scheduled under load) before the router's
/// shutdown: it can't act on its SIGTERM, and the broker's SIGKILL leaves
/// the `setsid` sleeps without it. Its agent ends them itself.
fn a_stopped_guardian_at_shutdown(site: Site) {
    guardian_out_of_the_way_at_shutdown(site, libc::SIGSTOP)
}

/// The same with the guardian SIGKILLed (the OOM killer) before the
/// shutdown: its orphans go to its agent, which ends them at its shutdown.
fn a_killed_guardian_at_shutdown(site: Site) {
    guardian_out_of_the_way_at_shutdown(site, libc::SIGKILL)
}

fn guardian_out_of_the_way_at_shutdown(site: Site, sig: i32) {
    let guard = LeakGuard::new();
    let marks = Marks::new();
    let r = router();
    let chain = site.chain(&r, 2);
    let out = chain[1].exec(&marks.leaver(2)).unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let left: Vec<String> = marks.sleeps(2).into_iter().take(4).collect();
    marks.wait_running_here(&left);
    let guardians = marks.guardians_here(2);
    assert_eq!(guardians.len(), 1, "one guardian of the leftovers: {:?}", marks.here());
    signal(guardians[0] as u32, sig);
    if sig == libc::SIGKILL {
        let deadline = Instant::now() + Duration::from_secs(5);
        while marks.here().iter().any(|&(p, _)| p == guardians[0]) {
            assert!(Instant::now() < deadline, "the SIGKILLed guardian still runs");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    chain[1].ping().unwrap();
    // Nothing is left within the shutdown's bound, counted from its start.
    let bound = spore_agent::shutdown::bound(GRACE);
    let start = Instant::now();
    r.shutdown();
    let took = start.elapsed();
    eprintln!("shutdown with the guardian out of the way by signal {sig} ({}): {took:?}", site.label());
    assert!(took < bound, "took {took:?}");
    marks.wait_gone_here(&[2], bound - took, "the router's shutdown, within its bound");
    drop((chain, r));
    finish(site, marks, guard);
}

/// A process's state letter and parent, from `/proc/PID/stat`.
fn state_and_parent(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat.get(stat.rfind(')')? + 2..)?.split(' ');
    Some((rest.next()?.chars().next()?, rest.next()?.parse().ok()?))
}

/// The children of `pid` (every thread's) that are zombies.
fn zombie_children(pid: i32) -> Vec<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let children = tasks.flatten().flat_map(|t| {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        list.split_whitespace().map(|c| c.parse::<i32>().unwrap()).collect::<Vec<_>>()
    });
    children.filter(|&c| state_and_parent(c).is_some_and(|(state, _)| state == 'Z')).collect()
}

/// A guardian SIGKILLed (the OOM killer) while what its command left
/// runs: the leftovers are orphaned to the agent (a child subreaper), and
/// once they end nothing else would ever wait for them. The agent reaps
/// them while it lives on: no zombie stays below it.
fn a_killed_guardians_orphans_are_reaped_by_the_agent(site: Site) {
    let guard = LeakGuard::new();
    let marks = Marks::new();
    let r = router();
    let ctx = site.chain(&r, 1).remove(0);
    let agent = ctx.info().unwrap().pid as i32;
    let out = ctx.exec(&marks.leaver(1)).unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let left: Vec<String> = marks.sleeps(1).into_iter().take(4).collect();
    marks.wait_running_here(&left);
    let guardians = marks.guardians_here(1);
    assert_eq!(guardians.len(), 1, "one guardian of the leftovers: {:?}", marks.here());
    signal(guardians[0] as u32, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sleeps: Vec<(i32, String)> = marks.here().into_iter().filter(|(_, c)| left.contains(c)).collect();
        let parents: Vec<Option<i32>> = sleeps.iter().map(|&(p, _)| state_and_parent(p).map(|(_, pp)| pp)).collect();
        if sleeps.len() == left.len() && parents.iter().all(|&pp| pp == Some(agent)) {
            break;
        }
        assert!(Instant::now() < deadline, "the leftovers never became the agent's ({agent}): {sleeps:?} {parents:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    // They end: zombies of the agent, until it reaps them. It sweeps on
    // its broker's ticks, which the pings bring.
    marks.kill_all();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        ctx.ping().unwrap();
        let zombies = zombie_children(agent);
        if zombies.is_empty() {
            break;
        }
        let listed: Vec<String> = zombies.iter().map(|&z| format!("{z} {}", spore_tests::cmdline(z))).collect();
        assert!(Instant::now() < deadline, "zombies below the agent {agent} ({}): {listed:?}", site.label());
        std::thread::sleep(Duration::from_millis(100));
    }
    ctx.ping().unwrap();
    r.shutdown();
    drop((ctx, r));
    finish(site, marks, guard);
}

/// Only agents kill what is left below them: the master (here, the test
/// process) leaves its program's other children alone at shutdown.
#[test]
fn the_masters_own_children_outlive_its_shutdown() {
    let guard = LeakGuard::new();
    let marks = Marks::new();
    let mut own = std::process::Command::new("sleep").arg(marks.arg(9, 1)).spawn().unwrap();
    let r = router();
    let site = Site::local();
    let chain = site.chain(&r, 1);
    let out = chain[0].exec(&marks.leaver(1)).unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    r.shutdown();
    marks.wait_gone_here(&[1], Duration::from_secs(3), "the router's shutdown");
    let alive = marks.here().iter().any(|&(pid, _)| pid == own.id() as i32);
    assert!(alive, "the program's own child was killed at the router's shutdown");
    own.kill().unwrap();
    own.wait().unwrap();
    drop((chain, r));
    finish(site, marks, guard);
}

/// In a Docker host of the fleet (busybox, reached over ssh), a chain
/// `target1/local/local`: SIGKILL the middle agent, then the first; `ps`
/// in the container shows nothing of the commands below each.
#[test]
fn docker_sigkill_in_a_fleet_host() {
    let guard = LeakGuard::new();
    let marks = Marks::new();
    let f = Fleet::start(1, FleetOptions::default());
    let container = f.target(1).container.clone();
    let r = router();
    let first = r
        .connect(
            &spore::Hop::Ssh(SshHop { host: "target1".into(), config: Some(f.config_str()), ..SshHop::default() }),
            "target1",
        )
        .unwrap();
    let second = first.connect("local").unwrap();
    let third = second.connect("local").unwrap();
    let chain = [first, second, third];
    let calls = start_escapists(&marks, &chain);
    marks.wait_running_in(&container, &[1, 2, 3]);
    let pids: Vec<String> = chain.iter().map(|c| c.info().unwrap().pid.to_string()).collect();
    f.docker(&["exec", &container, "kill", "-KILL", &pids[1]]);
    marks.wait_gone_in(&container, &[2, 3], Duration::from_secs(5), "SIGKILL of the agent at depth 2");
    let ps = marks.in_container(&container);
    assert!(
        marks.sleeps(1).iter().all(|s| ps.iter().any(|p| p.ends_with(s.as_str()))),
        "level 1 must still run: {ps:?}"
    );
    f.docker(&["exec", &container, "kill", "-KILL", &pids[0]]);
    marks.wait_gone_in(&container, &[1], Duration::from_secs(5), "SIGKILL of the agent at depth 1");
    r.shutdown();
    join_all(calls);
    drop((chain, r));
    drop(marks);
    f.assert_clean(Duration::from_secs(5));
    drop(f);
    assert_eq!(fleet::leftovers(), Vec::<String>::new(), "containers or networks left");
    guard.check();
}
