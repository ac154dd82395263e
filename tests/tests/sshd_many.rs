//! Many ssh targets on one test sshd (`Sshd::aliases`): 200 of them take
//! their handshakes at once, with plain ssh and with the spore CLI. The
//! fleet tests and `make bench` stand on this.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore_tests::sshd::{Sshd, USER_FLEET};
use spore_tests::{spore_bin, wait_bounded, LeakGuard};
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

const N: usize = 200;

#[test]
fn aliases_are_distinct_names_in_one_client_config() {
    let guard = LeakGuard::new();
    let sshd = Sshd::start();
    let (cfg, hosts) = sshd.aliases(N);
    assert_eq!(hosts.len(), N);
    assert_eq!((hosts[0].as_str(), hosts[N - 1].as_str()), ("h001", "h200"));
    assert_eq!(hosts.iter().collect::<BTreeSet<_>>().len(), N, "names repeat");
    // What ssh makes of two of them, and of a name that is not one.
    let resolved = |host: &str| {
        let out = Command::new("ssh").arg("-G").arg("-F").arg(&cfg).arg(host).output().unwrap();
        assert!(out.status.success(), "ssh -G {host}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for host in ["h001", "h200"] {
        let g = resolved(host);
        let port = format!("port {}", sshd.port);
        let user = format!("user {USER_FLEET}");
        for line in ["hostname 127.0.0.1", &port, &user, "hostkeyalias spore-fleet"] {
            assert!(g.lines().any(|l| l == line), "{host}: no {line:?} in\n{g}");
        }
    }
    assert!(!resolved("h201").lines().any(|l| l == "hostname 127.0.0.1"), "h201 is not an alias");
    // Wider numbers past 999, and a config of its own per call.
    let (cfg2, wide) = sshd.aliases(1000);
    assert_eq!((wide[0].as_str(), wide[999].as_str()), ("h0001", "h1000"));
    assert_ne!(cfg, cfg2);
    drop(sshd);
    guard.check();
}

#[test]
fn two_hundred_plain_ssh_connections_at_once() {
    let guard = LeakGuard::new();
    let sshd = Sshd::start();
    let (cfg, hosts) = sshd.aliases(N);
    // All started before any is waited for: each says its name.
    let children: Vec<_> = hosts
        .iter()
        .map(|h| {
            Command::new("ssh")
                .arg("-F")
                .arg(&cfg)
                .args(["-o", "BatchMode=yes", h, "echo", h])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut failed = Vec::new();
    for (h, child) in hosts.iter().zip(children) {
        let out = wait_bounded(child, Duration::from_secs(100));
        if !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() != h {
            failed.push(format!("{h}: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
        }
    }
    assert!(failed.is_empty(), "{} of {N} plain ssh connections failed: {failed:?}", failed.len());
    drop(sshd);
    guard.check();
}

#[test]
fn the_cli_runs_on_two_hundred_aliases_at_once() {
    let guard = LeakGuard::new();
    let sshd = Sshd::start();
    let (cfg, hosts) = sshd.aliases(N);
    let cfg = cfg.display().to_string();
    // A connect timeout well past the default: 200 handshakes at once on a
    // busy 2-core machine can take longer than 30 s, and the sshd's limits
    // are what is tested here.
    let mut args = vec!["-F", cfg.as_str(), "--connect-timeout", "100", "run"];
    args.extend(hosts.iter().map(String::as_str));
    args.extend(["--", "echo", "up"]);
    // run_spore's bound (60 s) is too tight for that too.
    let child = Command::new(spore_bin())
        .args(&args)
        .env_remove("SPORE_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_bounded(child, Duration::from_secs(100));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "spore run of {N}: {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let want: BTreeSet<String> = hosts.iter().map(|h| format!("{h}: up")).collect();
    assert_eq!(stdout.lines().count(), N, "{stdout}");
    assert_eq!(stdout.lines().map(String::from).collect::<BTreeSet<_>>(), want);
    // The aliases' login shell is dash: left as the agent's parent it
    // said "Terminated" for each host as the agent ended itself.
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    drop(sshd);
    guard.check();
}

#[test]
fn each_ssh_runs_in_a_session_of_its_own() {
    let guard = LeakGuard::new();
    let sshd = Sshd::start();
    let (cfg, hosts) = sshd.aliases(3);
    let cfg = cfg.display().to_string();
    let mut args = vec!["-F", cfg.as_str(), "run"];
    args.extend(hosts.iter().map(String::as_str));
    args.extend(["--", "sleep", "30"]);
    let mut spore = Command::new(spore_bin())
        .args(&args)
        .env_remove("SPORE_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Fields after the command's closing parenthesis: state, ppid, pgrp,
    // session.
    let ids = |pid: i32| -> Option<(i32, i32, i32)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let f: Vec<i32> =
            stat[stat.rfind(')')? + 2..].split(' ').skip(1).take(3).filter_map(|x| x.parse().ok()).collect();
        (f.len() == 3).then(|| (f[0], f[1], f[2]))
    };
    let spore_pid = spore.id() as i32;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let ssh = loop {
        let ssh: Vec<i32> = spore_tests::descendants()
            .into_iter()
            .filter(|&p| ids(p).is_some_and(|(ppid, _, _)| ppid == spore_pid))
            .filter(|&p| spore_tests::cmdline(p).starts_with("ssh "))
            .collect();
        if ssh.len() == 3 && spore_tests::wait_for_command("sleep 30", 3, Duration::from_millis(10)) {
            break ssh;
        }
        assert!(std::time::Instant::now() < deadline, "3 ssh with `sleep 30` behind them");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (_, _, spore_session) = ids(spore_pid).unwrap();
    for pid in ssh {
        let (_, pgrp, session) = ids(pid).unwrap();
        // Its own session (where the kernel shares CPU by session, each
        // ssh gets a share), and so its own process group: a Ctrl-C on the
        // terminal reaches the master alone.
        assert_eq!((pgrp, session), (pid, pid), "ssh {pid}");
        assert_ne!(session, spore_session);
    }
    // SAFETY: kill has no memory effects; it is our own child.
    unsafe { libc::kill(spore_pid, libc::SIGTERM) };
    assert!(spore_tests::exit_within(&mut spore, Duration::from_secs(20)).is_some(), "spore ends on SIGTERM");
    drop(sshd);
    guard.check();
}
