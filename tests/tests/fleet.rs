//! spore on a fleet of constrained Docker hosts built from scratch
//! (busybox, sshd, sudo; no Python, no bash, no coreutils), reached
//! directly and through a bastion, with the faults a fleet really has:
//! killed nodes, partitions, paused hosts. After each test nothing of
//! spore runs in any container and no container or network is left.
//!
//! Needs a Docker engine; `make test-local` runs everything else.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore::{Command, Error, Hop, Options, Router, SshHop};
use spore_tests::fleet::{self, Fleet, FleetOptions, SUDO_PASSWORD};
use spore_tests::{LeakGuard, PatternChecker, PatternReader};
use std::time::{Duration, Instant};

/// Fast keepalive for the fault tests: dead after 3 silent seconds.
fn router(fleet_keepalive: bool) -> Router {
    let mut opts = Options::default();
    if fleet_keepalive {
        opts.keepalive = Duration::from_secs(1);
        opts.keepalive_misses = 3;
    }
    Router::with_options(opts).unwrap()
}

fn bastion_hop(f: &Fleet) -> Hop {
    Hop::Ssh(SshHop { host: "bastion".into(), config: Some(f.config_str()), ..SshHop::default() })
}

fn cli(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    spore_tests::run_spore(args, stdin.map(str::as_bytes))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn finish(f: Fleet, guard: LeakGuard) {
    f.assert_clean(Duration::from_secs(5));
    drop(f);
    assert_eq!(fleet::leftovers(), Vec::<String>::new(), "containers or networks left");
    guard.check();
}

#[test]
fn direct_run_info_and_a_100_mib_round_trip() {
    let guard = LeakGuard::new();
    let f = Fleet::start(1, FleetOptions::default());
    let cfg = f.config_str();
    let out = cli(&["-F", &cfg, "run", "target1", "--", "uname", "-a"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("Linux target1 "), "{}", text(&out.stdout));
    let out = cli(&["-F", &cfg, "--json", "info", "target1"], None);
    assert!(text(&out.stdout).contains(r#""hostname":"target1""#), "{}", text(&out.stdout));
    // Nothing but busybox there: the agent needs no Python, no bash.
    let r = router(false);
    let t = r
        .connect(
            &Hop::Ssh(SshHop { host: "target1".into(), config: Some(cfg.clone()), ..SshHop::default() }),
            "target1",
        )
        .unwrap();
    let out = t.exec(&Command::new(["sh", "-c", "command -v python3 python bash perl; readlink /bin/sh"])).unwrap();
    assert_eq!(text(&out.stdout), "busybox\n");
    // 100 MiB each way, checked by content.
    const LEN: u64 = 100 << 20;
    let n = t.write_file("/root/big", &mut PatternReader::new(LEN, 17), None).unwrap();
    assert_eq!(n, LEN);
    let mut check = PatternChecker::new(LEN, 17);
    assert_eq!(t.read_file("/root/big", &mut check).unwrap(), LEN);
    assert_eq!(check.first_mismatch, None);
    t.remove("/root/big", false).unwrap();
    r.shutdown();
    drop((t, r));
    // And through the CLI.
    let local = std::env::temp_dir().join(format!("spore-fleet-big-{}", std::process::id()));
    std::io::copy(&mut PatternReader::new(LEN, 18), &mut std::fs::File::create(&local).unwrap()).unwrap();
    let back = local.with_extension("back");
    let out = cli(&["-F", &cfg, "put", "target1", local.to_str().unwrap(), "/root/big2"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli(&["-F", &cfg, "get", "target1", "/root/big2", back.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut check = PatternChecker::new(LEN, 18);
    std::io::copy(&mut std::fs::File::open(&back).unwrap(), &mut check).unwrap();
    assert_eq!((check.checked, check.first_mismatch), (LEN, None));
    let _ = std::fs::remove_file(&local);
    let _ = std::fs::remove_file(&back);
    finish(f, guard);
}

#[test]
fn eight_targets_through_one_bastion_connection() {
    let guard = LeakGuard::new();
    let f = Fleet::start(8, FleetOptions::default());
    let cfg = f.config_str();
    let targets: Vec<String> = (1..=8).map(|i| format!("bastion/target{i}")).collect();
    let mut args: Vec<&str> = vec!["-F", &cfg, "-v", "run"];
    args.extend(targets.iter().map(String::as_str));
    args.extend(["--", "hostname"]);
    let start = Instant::now();
    let out = cli(&args, None);
    eprintln!("8 targets through the bastion: {:?}", start.elapsed());
    assert!(out.status.success(), "{}", text(&out.stderr));
    for i in 1..=8 {
        assert!(text(&out.stdout).contains(&format!("bastion/target{i}: target{i}\n")), "{}", text(&out.stdout));
    }
    let err = text(&out.stderr);
    assert_eq!(err.matches("connected bastion (").count(), 1, "one connection to the bastion");
    // sudo with a password, at the far hop.
    let out = cli(
        &["-F", &cfg, "-K", "run", "bastion/sporepw@target3/sudo", "--", "id", "-u"],
        Some(&format!("{SUDO_PASSWORD}\n")),
    );
    assert_eq!(text(&out.stdout), "0\n", "{}", text(&out.stderr));
    let out = cli(&["-F", &cfg, "run", "bastion/sporepw@target3/sudo", "--", "id", "-u"], None);
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("sudo needs a password"), "{}", text(&out.stderr));
    finish(f, guard);
}

#[test]
fn a_noexec_tmp_is_skipped() {
    let guard = LeakGuard::new();
    let f = Fleet::start(1, FleetOptions { noexec_tmp: vec![1] });
    let r = router(false);
    // User spore can't write its home, so /tmp (noexec) would be next.
    let hop = Hop::Ssh(SshHop {
        host: "target1".into(),
        user: Some("spore".into()),
        config: Some(f.config_str()),
        ..SshHop::default()
    });
    let t = r.connect(&hop, "spore@target1").unwrap();
    let out = t.exec(&Command::new(["sh", "-c", "readlink /proc/$PPID/exe; grep ' /tmp ' /proc/mounts"])).unwrap();
    let said = text(&out.stdout);
    assert!(said.starts_with("/var/tmp/spore-1000/spore-agent-"), "{said}");
    assert!(said.contains("noexec"), "{said}");
    r.shutdown();
    drop((t, r));
    finish(f, guard);
}

/// Start `sleep SECS` on every target through the bastion, in threads.
type Call = std::thread::JoinHandle<(Result<spore::Output, Error>, Instant)>;

fn sleep_everywhere(r: &Router, f: &Fleet, secs: u32) -> (Vec<spore::Context>, Vec<Call>) {
    let b = r.connect(&bastion_hop(f), "bastion").unwrap();
    let ctxs: Vec<spore::Context> = f.targets.iter().map(|t| b.connect(&t.name).unwrap()).collect();
    let calls = ctxs
        .iter()
        .map(|c| {
            let c = c.clone();
            let cmd = Command::new(["sleep".to_string(), secs.to_string()]);
            std::thread::spawn(move || (c.exec(&cmd), Instant::now()))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut all = vec![b];
    all.extend(ctxs);
    (all, calls)
}

#[test]
fn a_killed_node_fails_its_call_and_the_others_finish() {
    let guard = LeakGuard::new();
    let f = Fleet::start(3, FleetOptions::default());
    let r = router(true);
    let (ctxs, calls) = sleep_everywhere(&r, &f, 6);
    let start = Instant::now();
    f.docker(&["kill", &f.target(2).container]);
    let mut results: Vec<_> = calls.into_iter().map(|c| c.join().unwrap()).map(|(r, at)| (r, at - start)).collect();
    let (lost, when) = results.remove(1);
    let err = lost.unwrap_err();
    eprintln!("killed node detected after {when:?}: {err}");
    assert!(matches!(&err, Error::Disconnected { context, .. } if context == "bastion/target2"), "{err:?}");
    assert!(when < Duration::from_secs(5), "took {when:?}");
    for (res, _) in results {
        assert!(res.unwrap().status.success());
    }
    // The rest of the tree is fine.
    ctxs[1].ping().unwrap();
    r.shutdown();
    drop((ctxs, r));
    finish(f, guard);
}

#[test]
fn a_partition_is_detected_and_healed() {
    let guard = LeakGuard::new();
    let f = Fleet::start(3, FleetOptions::default());
    let r = router(true);
    let (ctxs, calls) = sleep_everywhere(&r, &f, 8);
    let start = Instant::now();
    f.docker(&["network", "disconnect", &f.network, &f.target(2).container]);
    let mut results: Vec<_> = calls.into_iter().map(|c| c.join().unwrap()).map(|(r, at)| (r, at - start)).collect();
    let (lost, when) = results.remove(1);
    let err = lost.unwrap_err();
    eprintln!("partition detected after {when:?}: {err}");
    assert!(
        matches!(&err, Error::Disconnected { context, reason } if context == "bastion/target2" && reason.contains("silent for")),
        "{err:?}"
    );
    assert!(when < Duration::from_secs(5), "keepalive 1 s x 3 took {when:?}");
    for (res, _) in results {
        assert!(res.unwrap().status.success());
    }
    // Healed: a new connection works.
    f.docker(&["network", "connect", "--alias", "target2", &f.network, &f.target(2).container]);
    let again = ctxs[0].connect("target2").unwrap();
    assert_eq!(text(&again.exec(&Command::new(["hostname"])).unwrap().stdout), "target2\n");
    r.shutdown();
    drop((again, ctxs, r));
    finish(f, guard);
}

#[test]
fn a_paused_host_times_out_and_shutdown_stays_bounded() {
    let guard = LeakGuard::new();
    let f = Fleet::start(2, FleetOptions::default());
    // Default keepalive (a minute): the call's own timeout must end it.
    let r = router(false);
    let b = r.connect(&bastion_hop(&f), "bastion").unwrap();
    let t1 = b.connect("target1").unwrap();
    let t2 = b.connect("target2").unwrap();
    f.docker(&["pause", &f.target(1).container]);
    let start = Instant::now();
    let err = t1.exec(&Command::new(["true"]).timeout(Duration::from_secs(2))).unwrap_err();
    eprintln!("call to a paused host gave up after {:?}: {err}", start.elapsed());
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(t2.exec(&Command::new(["true"])).unwrap().status.success());
    let start = Instant::now();
    r.shutdown();
    let took = start.elapsed();
    eprintln!("shutdown with a paused host: {took:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    f.docker(&["unpause", &f.target(1).container]);
    drop((b, t1, t2, r));
    finish(f, guard);
}
