//! The fleet CLI at fleet scale (issue 13's "Done means"): 200 ssh targets
//! (aliases of one test sshd on loopback, `Sshd::aliases`) through ranges,
//! inventories, gather, out-dir, JSON, `@failed`, `script`, forks checked
//! from outside, `put -r`/`get -r` round trips; and a Docker bastion with 8
//! targets behind it, where a 100 MiB `put` is measured crossing the
//! master's link once.
//!
//! Cost: a handshake costs a few tens of ms of CPU on each side, and 200 of
//! them per run, several runs per test, would take minutes on 2 cores. So
//! where the handshakes are not what is tested, the aliases share five
//! ssh connection masters the test starts itself (`ControlPath`): each
//! target is still its own ssh client, its own session on the real sshd,
//! its own agent. The forks test, the trees, the Docker test and the 30
//! odd aliases of the failures test take real handshakes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore_tests::fleet::{self, Fleet, FleetOptions};
use spore_tests::sshd::{Sshd, USER_FLEET};
use spore_tests::{pattern, spore_bin, wait_bounded, LeakGuard, PatternReader, Scratch};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const N: usize = 200;
/// Connection masters shared by the aliases (each under sshd's
/// `MaxSessions 100`: 40 sessions apiece).
const MASTERS: usize = 5;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `h001` … for these numbers.
fn names(nums: impl IntoIterator<Item = usize>) -> Vec<String> {
    nums.into_iter().map(|i| format!("h{i:03}")).collect()
}

/// `h[005,015,…]`: how spore folds names that are not consecutive.
fn folded(nums: &[usize]) -> String {
    let parts: Vec<String> = nums.iter().map(|i| format!("{i:03}")).collect();
    format!("h[{}]", parts.join(","))
}

/// A port nothing listens on (bound, then let go).
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// 200 aliases of one test sshd, in a client config of the test's own:
/// each alias first gets its own block (ssh takes the first value it
/// finds), then the aliases' shared settings from `Sshd::alias_config`.
struct Aliases {
    /// Kept running while the aliases are in use.
    _sshd: Sshd,
    scratch: Scratch,
    /// The client config (`-F`).
    cfg: String,
    masters: Vec<Child>,
    /// The alias each master was opened for: a session through master `k`
    /// carries that alias's XDG_RUNTIME_DIR (ssh sends SetEnv when it opens
    /// a connection, not for each session over it).
    via: Vec<String>,
}

/// What an alias's own block says beyond its identity.
#[derive(Clone, Copy, PartialEq)]
enum Special {
    Plain,
    /// Through a port with no listener: unreachable.
    Dead,
    /// Logs in as this user instead of the fleet user.
    User(&'static str),
}

impl Aliases {
    /// `n` aliases; `special(i)` for alias `i` (1-based); `mux`: plain
    /// aliases share [`MASTERS`] connection masters.
    fn start(tag: &str, n: usize, mux: bool, special: impl Fn(usize) -> Special) -> Aliases {
        let sshd = Sshd::start();
        let scratch = Scratch::new(tag);
        let (base, hosts) = sshd.aliases(n);
        // Which alias a session came from: sshd takes only
        // XDG_RUNTIME_DIR from a client, so that carries it (a path the
        // fleet user can't create, so the agent keeps using its home's
        // cache, found by every alias).
        let ids = scratch.0.join("id");
        fs::create_dir_all(&ids).unwrap();
        fs::set_permissions(&scratch.0, fs::Permissions::from_mode(0o755)).unwrap();
        let dead = dead_port();
        let mut cfg = String::from("# fleet_scale: each alias's own block first\n");
        for (i, h) in hosts.iter().enumerate() {
            let i = i + 1;
            cfg.push_str(&format!("Host {h}\n  SetEnv XDG_RUNTIME_DIR={}/{h}\n", ids.display()));
            match special(i) {
                Special::Plain if mux => {
                    cfg.push_str(&format!("  ControlPath {}/mux-{}\n", scratch.0.display(), i % MASTERS));
                }
                Special::Plain => {}
                Special::Dead => cfg.push_str(&format!("  Port {dead}\n  ControlPath none\n")),
                Special::User(u) => cfg.push_str(&format!("  User {u}\n  ControlPath none\n")),
            }
        }
        cfg.push_str(&fs::read_to_string(&base).unwrap());
        let path = scratch.path("config");
        fs::write(&path, cfg).unwrap();
        let mut a = Aliases { _sshd: sshd, scratch, cfg: path, masters: Vec::new(), via: Vec::new() };
        if mux {
            for k in 0..MASTERS {
                // The first plain alias of each master's share.
                let i = (1..=n).find(|&i| i % MASTERS == k && special(i) == Special::Plain).unwrap();
                a.start_master(&hosts[i - 1], k);
                a.via.push(hosts[i - 1].clone());
            }
        }
        a
    }

    fn start_master(&mut self, host: &str, k: usize) {
        let child = Command::new("ssh")
            .args(["-F", &self.cfg, "-o", "BatchMode=yes", "-o", "ControlMaster=yes", "-N", host])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.masters.push(child);
        let socket = self.scratch.0.join(format!("mux-{k}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = socket.exists()
                && Command::new("ssh")
                    .args(["-F", &self.cfg, "-O", "check", host])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .unwrap()
                    .success();
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the ssh master for {host} never came up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whose XDG_RUNTIME_DIR alias `i` (1-based) shows.
    fn id_of(&self, i: usize) -> &str {
        &self.via[i % MASTERS]
    }

    /// Run spore with this config, `@failed` kept in the scratch dir.
    fn spore(&self, args: &[&str]) -> Output {
        self.spore_env(args, &[])
    }

    fn spore_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(spore_bin());
        cmd.env_remove("SPORE_LOG").env("XDG_CACHE_HOME", self.scratch.path("cache"));
        cmd.envs(env.iter().copied());
        // A connect timeout well past the default: many handshakes at once
        // on a busy 2-core machine can take longer than 30 s.
        cmd.args(["-F", &self.cfg, "--connect-timeout", "100"]).args(args);
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let started = Instant::now();
        let out = wait_bounded(child, Duration::from_secs(120));
        eprintln!(
            "spore {}: {:.1}s",
            args.join(" ").chars().take(100).collect::<String>(),
            started.elapsed().as_secs_f64()
        );
        out
    }

    /// Stop the masters and the sshd, then check for leaks.
    fn finish(mut self, guard: LeakGuard) {
        for mut m in self.masters.drain(..) {
            let _ = m.kill();
            let _ = m.wait();
        }
        drop(self);
        guard.check();
    }
}

impl Drop for Aliases {
    fn drop(&mut self) {
        for m in &mut self.masters {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

/// The `--json` result objects: target -> the object's line.
fn results(stdout: &str) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    for line in stdout.lines().filter(|l| l.contains("\"result\":")) {
        let target = field(line, "target").unwrap();
        assert!(found.insert(target.clone(), line.to_string()).is_none(), "{target} twice");
    }
    found
}

/// A string field of a JSON line (our names need no unescaping).
fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    Some(line[start..].split('"').next()?.to_string())
}

/// A target's `--json` chunks of one stream, joined (still escaped).
fn chunks(stdout: &str, target: &str, stream: &str) -> String {
    stdout
        .lines()
        .filter(|l| field(l, "target").as_deref() == Some(target) && field(l, "stream").as_deref() == Some(stream))
        .map(|l| field(l, "data").unwrap())
        .collect()
}

/// A numeric (or null) field of a JSON line, as written.
fn raw(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    Some(line[start..].split([',', '}']).next()?.to_string())
}

/// The `---` framed heads of `--gather` output.
fn heads(stdout: &str) -> Vec<String> {
    let lines: Vec<&str> = stdout.lines().collect();
    let mut out = Vec::new();
    for w in lines.windows(3) {
        if w[0].starts_with("---") && w[2] == w[0] && !w[1].starts_with("---") {
            out.push(w[1].to_string());
        }
    }
    out
}

/// One range of 200 ssh aliases: `-b` gives one group; `--json` 200
/// results and each target's own output; `--out-dir` 200 directories; a
/// plain run 400 prefixed lines, each its target's.
#[test]
fn two_hundred_aliases_gathered_json_out_dir_and_prefixed() {
    let guard = LeakGuard::new();
    let a = Aliases::start("scale-output", N, true, |_| Special::Plain);
    let all = names(1..=N);
    // Who says it: the alias of its master (see `Aliases::via`), and a
    // number of its own (a pid could come back in a busy run).
    let me = "id=${XDG_RUNTIME_DIR##*/}-$(cat /proc/sys/kernel/random/uuid)";

    let out = a.spore(&["-b", "run", "h[001-200]", "--", "sh", "-c", "echo same; echo err >&2"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{:?} {}", out.status, text(&out.stderr));
    assert_eq!(heads(&stdout), ["h[001-200] (200)"], "{stdout}");
    let rule = "-".repeat("h[001-200] (200)".len());
    assert_eq!(stdout, format!("{rule}\nh[001-200] (200)\n{rule}\nsame\nerr\n"));

    // Each session's output is its own, and said once.
    let dir = a.scratch.path("out");
    let cmd = format!("{me}; echo $id; echo err-$id >&2; exit 0");
    let out = a.spore(&["--json", "--out-dir", &dir, "run", "h[001-200]", "--", "sh", "-c", &cmd]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{:?} {}", out.status, text(&out.stderr));
    let res = results(&stdout);
    assert_eq!(res.keys().cloned().collect::<Vec<_>>(), all);
    let mut seen = BTreeSet::new();
    for (i, (t, line)) in res.iter().enumerate() {
        assert!(line.contains("\"ok\":true") && line.contains("\"result\":\"ok\""), "{line}");
        assert_eq!(raw(line, "status").as_deref(), Some("0"), "{line}");
        let said = chunks(&stdout, t, "stdout");
        let mine = said.strip_suffix("\\n").unwrap_or_else(|| panic!("{t}: {said}"));
        assert!(mine.starts_with(&format!("{}-", a.id_of(i + 1))), "{t}: {said}");
        assert!(seen.insert(mine.to_string()), "{t}: {mine} came twice");
        assert_eq!(raw(line, "stdout_bytes"), Some((mine.len() + 1).to_string()), "{line}");
        assert_eq!(chunks(&stdout, t, "stderr"), format!("err-{said}"));
        let read = |f: &str| fs::read_to_string(format!("{dir}/{t}/{f}")).unwrap();
        assert_eq!(
            (read("stdout"), read("stderr"), read("status")),
            (format!("{mine}\n"), format!("err-{mine}\n"), "0\n".into())
        );
    }
    assert_eq!(fs::read_dir(&dir).unwrap().count(), N);

    let cmd = format!("{me}; echo one-$id; echo two-$id");
    let out = a.spore(&["run", "h[001-200]", "--", "sh", "-c", &cmd]);
    assert!(out.status.success(), "{:?} {}", out.status, text(&out.stderr));
    let got: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(got.len(), 2 * N);
    // Each target's two lines in their order, its own; targets interleave.
    let mut seen = BTreeSet::new();
    for (i, t) in all.iter().enumerate() {
        let prefix = format!("{t}: ");
        let mine: Vec<&str> = got.iter().filter_map(|l| l.strip_prefix(&prefix)).collect();
        assert_eq!(mine.len(), 2, "{t}: {mine:?}");
        let x = mine[0].strip_prefix("one-").unwrap();
        assert_eq!(mine[1], format!("two-{x}"), "{t}");
        assert!(x.starts_with(&format!("{}-", a.id_of(i + 1))) && seen.insert(x.to_string()), "{t}: {x}");
    }
    a.finish(guard);
}

/// Ten aliases unreachable (a port with no listener), twenty whose
/// command fails (as root: exit 3; as another user: exit 5): the exit
/// status, the summary's folded lists, and `@failed` on the next runs.
#[test]
fn failures_set_the_exit_status_summary_and_at_failed() {
    let guard = LeakGuard::new();
    let special = |i: usize| match i % 20 {
        5 => Special::User("root"),
        10 => Special::Dead,
        15 => Special::User("spore-nopw"),
        _ => Special::Plain,
    };
    let a = Aliases::start("scale-failed", N, true, special);
    let of = |k: usize| -> Vec<usize> { (1..=N).filter(|i| i % 20 == k).collect() };
    let (root, dead, other) = (of(5), of(10), of(15));
    let cmd = ["--", "sh", "-c", "case $(id -un) in root) exit 3;; spore-nopw) exit 5;; esac"];

    let mut args = vec!["--summary", "--json", "run", "h[001-200]"];
    args.extend(cmd);
    let out = a.spore(&args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "some unreachable: {err}");
    let res = results(&text(&out.stdout));
    assert_eq!(res.len(), N);
    for (i, t) in names(1..=N).iter().enumerate() {
        let line = &res[t];
        let (result, status) = match special(i + 1) {
            Special::Plain => ("ok", "0"),
            Special::Dead => ("unreachable", ""),
            Special::User("root") => ("failed", "3"),
            Special::User(_) => ("failed", "5"),
        };
        assert_eq!(field(line, "result").as_deref(), Some(result), "{line}");
        if !status.is_empty() {
            assert_eq!(raw(line, "status").as_deref(), Some(status), "{line}");
        }
    }
    let mut failed = [root.clone(), other.clone()].concat();
    failed.sort();
    assert!(err.contains(": 170 ok, 20 failed, 10 unreachable\n"), "{err}");
    assert!(err.contains(&format!("  failed       {}\n", folded(&failed))), "{err}");
    assert!(err.contains(&format!("  unreachable  {}\n", folded(&dead))), "{err}");

    // @failed: exactly those 30.
    let mut args = vec!["--json", "run", "@failed"];
    args.extend(cmd);
    let out = a.spore(&args);
    assert_eq!(out.status.code(), Some(255));
    let mut bad = [failed.clone(), dead.clone()].concat();
    bad.sort();
    assert_eq!(results(&text(&out.stdout)).keys().cloned().collect::<Vec<_>>(), names(bad));

    // Without the unreachable ones: the highest remote status, and each
    // status's targets gathered apart.
    let x = folded(&dead);
    let mut args = vec!["-b", "--summary", "run", "@failed", "-x", &x];
    args.extend(cmd);
    let out = a.spore(&args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("20 targets in ") && err.contains(": 20 failed\n"), "{err}");
    assert_eq!(
        heads(&text(&out.stdout)),
        [format!("{} (10): exit 3", folded(&root)), format!("{} (10): exit 5", folded(&other))],
        "{}",
        text(&out.stdout)
    );
    // Now @failed is those 20; when they succeed, it is empty.
    let out = a.spore(&["--json", "run", "@failed", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(results(&text(&out.stdout)).keys().cloned().collect::<Vec<_>>(), names(failed));
    let out = a.spore(&["run", "@failed", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "nothing failed last time: {}", text(&out.stderr));
    a.finish(guard);
}

/// The 200 aliases in an Ansible INI and a YAML inventory, with groups,
/// children, ranges, exclusion and intersection: both select the same
/// targets, the expected ones; the whole fleet really runs.
#[test]
fn inventories_in_ini_and_yaml_select_the_same_two_hundred() {
    let guard = LeakGuard::new();
    let a = Aliases::start("scale-inventory", N, true, |_| Special::Plain);
    let odd: Vec<String> = names((1..=N).step_by(2));
    let ini = a.scratch.path("hosts.ini");
    let mut text_ini = String::from(
        "# 200 aliases of one sshd\n[web]\nh[001:100]\n\n[db]\nh[101:200]\n\n[canary]\nh[095:105]\n\n[odd]\n",
    );
    for h in &odd {
        text_ini.push_str(&format!("{h}\n"));
    }
    text_ini.push_str("\n[fleet:children]\nweb\ndb\n\n[fleet:vars]\nntp_server=ntp.example\n");
    fs::write(&ini, text_ini).unwrap();
    let yaml = a.scratch.path("hosts.yml");
    let mut text_yaml = String::from(
        "all:\n  children:\n    fleet:\n      vars:\n        ntp_server: ntp.example\n      children:\n\
         \x20       web:\n          hosts:\n            h[001:100]:\n        db:\n          hosts:\n\
         \x20           h[101:200]:\n    canary:\n      hosts:\n        h[095:105]:\n    odd:\n      hosts:\n",
    );
    for h in &odd {
        text_yaml.push_str(&format!("        {h}:\n"));
    }
    fs::write(&yaml, text_yaml).unwrap();

    let cases: Vec<(Vec<&str>, Vec<String>)> = vec![
        (vec!["@fleet,!@odd"], names((1..=N).filter(|i| i % 2 == 0))),
        (vec!["@web,&@odd"], names((1..=100).filter(|i| i % 2 == 1))),
        (vec!["@fleet", "-x", "@canary", "-x", "h1*"], names((1..=N).filter(|i| !(95..=199).contains(i)))),
        (vec!["@canary,&@db,!h103"], names([101, 102, 104, 105])),
        // Ansible's order, whatever the words' order: the union first, then
        // each `&`, then each `!`: h150 is not in @canary.
        (vec!["h150", "@odd,&@canary"], names([95, 97, 99, 101, 103, 105])),
    ];
    // Selection alone: through a port with nothing behind it (and no
    // master), every target is unreachable at once and named in its result.
    let port = dead_port().to_string();
    let unreachable = ["-o", "ControlPath=none", "-o"];
    let port_opt = format!("Port={port}");
    for inv in [&ini, &yaml] {
        // The whole fleet, for real.
        let out = a.spore(&["-i", inv, "--json", "run", "@fleet", "--", "true"]);
        assert!(out.status.success(), "{inv}: {}", text(&out.stderr));
        let res = results(&text(&out.stdout));
        assert_eq!(res.keys().cloned().collect::<Vec<_>>(), names(1..=N), "{inv}");
        assert!(res.values().all(|l| l.contains("\"ok\":true")), "{inv}");
        for (words, want) in &cases {
            let mut args = vec!["-i", inv.as_str(), "--json"];
            args.extend(unreachable);
            args.push(&port_opt);
            args.push("run");
            args.extend(words);
            args.extend(["--", "true"]);
            let out = a.spore(&args);
            assert_eq!(out.status.code(), Some(255), "{inv} {words:?}: {}", text(&out.stderr));
            let got: Vec<String> = results(&text(&out.stdout)).keys().cloned().collect();
            assert_eq!(&got, want, "{inv} {words:?}");
        }
    }
    // Variables spore has no use for are noted under -v.
    let out = a.spore(&["-v", "-i", &ini, "-o", "ControlPath=none", "-o", &port_opt, "run", "h001", "--", "true"]);
    assert!(text(&out.stderr).contains("ntp_server"), "{}", text(&out.stderr));
    a.finish(guard);
}

/// `--forks`, checked from outside spore: an `ssh` first on its PATH
/// counts the connections being set up. With `-f 8` the count never passes
/// 8 (and reaches it); with the default (64) over 48 targets it does pass.
#[test]
fn forks_bound_the_handshakes_in_flight() {
    let guard = LeakGuard::new();
    const TARGETS: usize = 48;
    let a = Aliases::start("scale-forks", TARGETS, false, |_| Special::Plain);
    let bin = a.scratch.0.join("bin");
    fs::create_dir_all(&bin).unwrap();
    // The counter is a lower bound on the handshakes in flight: spore
    // takes a forks slot before it spawns ssh and frees it only when that
    // connection's agent has said hello, which needs ssh's handshake, which
    // comes after the wrapper's rmdir. So every slot.PID directory that
    // exists at a moment belongs to a connection being set up then, and
    // the count a wrapper sees right after its own mkdir can't exceed the
    // handshakes in flight. The 0.5 s sleep makes those that overlap be
    // seen together: if spore let more than N through, some wrapper would
    // count more than N.
    let slots = a.scratch.0.join("slots");
    let log = a.scratch.0.join("starts.log");
    let wrapper = format!(
        "#!/bin/sh\nmkdir '{s}/slot.'$$\nn=$(ls '{s}' | wc -l)\necho $n >>'{l}'\nsleep 0.5\nrmdir '{s}/slot.'$$\n\
         exec /usr/bin/ssh \"$@\"\n",
        s = slots.display(),
        l = log.display()
    );
    fs::write(bin.join("ssh"), wrapper).unwrap();
    fs::set_permissions(bin.join("ssh"), fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let range = format!("h[001-{TARGETS:03}]");
    let mut peaks = Vec::new();
    for forks in [Some("8"), None] {
        fs::create_dir_all(&slots).unwrap();
        let _ = fs::remove_file(&log);
        let mut args = vec!["-v"];
        if let Some(f) = forks {
            args.extend(["-f", f]);
        }
        args.extend(["run", &range, "--", "true"]);
        let out = a.spore_env(&args, &[("PATH", &path)]);
        assert!(out.status.success(), "{:?}: {}", out.status, text(&out.stderr));
        let counts: Vec<usize> = fs::read_to_string(&log).unwrap().lines().map(|l| l.trim().parse().unwrap()).collect();
        assert_eq!(counts.len(), TARGETS, "one ssh per target");
        let peak = counts.iter().copied().max().unwrap();
        eprintln!("forks {forks:?}: at most {peak} ssh starting at once (seen from outside)");
        if forks.is_some() {
            // And spore's own count agrees.
            assert!(
                text(&out.stderr).contains("at most 8 connections were being set up at once"),
                "{}",
                text(&out.stderr)
            );
        }
        peaks.push(peak);
    }
    assert_eq!(peaks[0], 8, "-f 8: at most 8 at once, and all 8 used");
    assert!(peaks[1] > 8, "the default (64) lets more than 8 through: {}", peaks[1]);
    a.finish(guard);
}

/// `script` on 200 targets: a `#!` line with an argument, arguments of its
/// own, output gathered into one group, and no file of it on any disk.
#[test]
fn a_script_runs_on_two_hundred_targets_and_leaves_nothing() {
    let guard = LeakGuard::new();
    let a = Aliases::start("scale-script", N, true, |_| Special::Plain);
    let token = format!("spore-scale-script-{}", std::process::id());
    let script = a.scratch.path("check.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/bash -eu\n# {token}\nprintf '[%s]' \"$@\"; echo\necho \"bash ${{BASH_VERSINFO[0]}}\" | sed 's/[0-9]*$/N/'\n\
             case $(readlink /proc/$$/fd/${{0##*/}}) in /memfd:*) echo 'script in memory';; *) echo \"script on disk: $0\";; esac\n"
        ),
    )
    .unwrap();
    // Anything the fleet user writes from now on is newer than this.
    let marker = a.scratch.path("marker");
    fs::write(&marker, "").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let out = a.spore(&["-b", "script", "h[001-200]", &script, "--", "a b", "c", "$HOME"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{:?} {}", out.status, text(&out.stderr));
    assert_eq!(heads(&stdout), ["h[001-200] (200)"], "{stdout}");
    assert!(stdout.ends_with("\n[a b][c][$HOME]\nbash N\nscript in memory\n"), "{stdout}");
    // Nothing of it left where the fleet user may write.
    let home = format!("/home/{USER_FLEET}");
    let out = Command::new("find")
        .args(["/tmp", "/var/tmp", "/dev/shm", &home, "-xdev", "-type", "f", "-user", USER_FLEET, "-newer", &marker])
        .args(["-exec", "grep", "-l", &token, "{}", "+"])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "", "the script was left on disk");
    a.finish(guard);
}

/// A tree for the round trips: directories (one 0555, one 0700), files of
/// several modes and sizes (`files` of them, one of `big` bytes), and
/// symlinks (relative, absolute, dangling, to a directory).
fn make_tree(root: &Path, files: usize, big: u64) {
    let modes = [0o644, 0o600, 0o755, 0o640, 0o700, 0o444];
    for i in 0..files {
        let dir = root.join(format!("d{}/sub{}", i % 7, i % 3));
        fs::create_dir_all(&dir).unwrap();
        let name = if i == 5 { "a name with spaces, é".to_string() } else { format!("f{i}") };
        let p = dir.join(name);
        fs::write(&p, pattern((i * 37) % 5000, i as u64)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(modes[i % modes.len()])).unwrap();
    }
    fs::write(root.join("empty"), "").unwrap();
    let mut f = fs::File::create(root.join("big")).unwrap();
    std::io::copy(&mut PatternReader::new(big, 99), &mut f).unwrap();
    fs::set_permissions(root.join("big"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("d1/sub1/f1", root.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("no/such/file", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink("d2", root.join("dir-link")).unwrap();
    fs::set_permissions(root.join("d3"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(root.join("d4/sub0"), fs::Permissions::from_mode(0o555)).unwrap();
}

/// Every entry under `root`: relative path -> (kind and mode, content or
/// link target).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (String, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let mode = m.mode() & 0o7777;
            let entry = if m.file_type().is_symlink() {
                ("link".to_string(), fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes())
            } else if m.is_dir() {
                stack.push(p.clone());
                (format!("dir {mode:o}"), Vec::new())
            } else {
                (format!("file {mode:o}"), fs::read(&p).unwrap())
            };
            out.insert(rel, entry);
        }
    }
    out
}

fn assert_same_tree(want: &Path, got: &Path) {
    let (w, g) = (snapshot(want), snapshot(got));
    let wk: BTreeSet<_> = w.keys().collect();
    let gk: BTreeSet<_> = g.keys().collect();
    assert_eq!(wk, gk, "{} vs {}", want.display(), got.display());
    for (k, (kind, data)) in &w {
        let (gkind, gdata) = &g[k];
        assert_eq!(kind, gkind, "{}: {}", got.display(), k.display());
        assert!(data == gdata, "{}: {} differs", got.display(), k.display());
    }
}

/// `put -r` of a tree (modes, symlinks, 300 files, a 4 MiB file) to 20
/// aliases, then `get -r` of it from all 20 into DIR/<target>/: byte for
/// byte, mode for mode. The aliases share one filesystem, so the put is 20
/// writers of one destination at once; each writes every file atomically,
/// so what is there must be the tree exactly, with no temporary file left.
#[test]
fn put_r_and_get_r_round_trip_a_tree_with_twenty_targets() {
    let guard = LeakGuard::new();
    let a = Aliases::start("scale-tree", 20, false, |_| Special::Plain);
    let src = a.scratch.0.join("src/tree");
    make_tree(&src, 300, 4 << 20);
    let remote = a.scratch.0.join("remote");
    fs::create_dir_all(&remote).unwrap();
    let chown = Command::new("chown").arg(format!("{USER_FLEET}:")).arg(&remote).status().unwrap();
    assert!(chown.success());
    let out = a.spore(&["--json", "put", "-r", "h[001-020]", src.to_str().unwrap(), remote.to_str().unwrap()]);
    assert!(out.status.success(), "{:?} {}", out.status, text(&out.stderr));
    let res = results(&text(&out.stdout));
    assert_eq!(res.len(), 20);
    for line in res.values() {
        assert_eq!((raw(line, "files"), raw(line, "symlinks")), (Some("302".into()), Some("4".into())), "{line}");
    }
    assert_same_tree(&src, &remote.join("tree"));
    let back = a.scratch.0.join("back");
    let out =
        a.spore(&["--json", "get", "-r", "h[001-020]", remote.join("tree").to_str().unwrap(), back.to_str().unwrap()]);
    assert!(out.status.success(), "{:?} {}", out.status, text(&out.stderr));
    assert_eq!(fs::read_dir(&back).unwrap().count(), 20);
    for t in names(1..=20) {
        assert_same_tree(&src, &back.join(&t).join("tree"));
    }
    a.finish(guard);
}

/// One container's network counter.
fn net_bytes(f: &Fleet, container: &str, which: &str) -> u64 {
    f.docker(&["exec", container, "cat", &format!("/sys/class/net/eth0/statistics/{which}")]).parse().unwrap()
}

/// Docker: `put` of 100 MiB to 8 targets behind one bastion crosses the
/// master's link once (measured from outside, at the bastion's network
/// interface), every copy checked by its sha256 through `run`; then `put -r`
/// and `get -r` of a tree into DIR/<target>/.
#[test]
fn docker_put_crosses_the_bastion_link_once_and_get_r_lands_per_target() {
    const LEN: u64 = 100 << 20;
    let guard = LeakGuard::new();
    let scratch = Scratch::new("scale-docker");
    let since = Instant::now();
    let f = Fleet::start(8, FleetOptions::default());
    let cfg = f.config_str();
    let cli = |args: &[&str]| {
        let child = Command::new(spore_bin())
            .env_remove("SPORE_LOG")
            .env("XDG_CACHE_HOME", scratch.path("cache"))
            .args(["-F", &cfg])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_bounded(child, Duration::from_secs(100))
    };
    // The big file and its sha256 by the system's tools: the test
    // profile's own code would take seconds for them.
    let big = scratch.path("big");
    let dd = Command::new("dd").args(["if=/dev/urandom", &format!("of={big}"), "bs=1M", "count=100"]).output().unwrap();
    assert!(dd.status.success(), "{}", text(&dd.stderr));
    assert_eq!(fs::metadata(&big).unwrap().len(), LEN);
    let sum = text(&Command::new("sha256sum").arg(&big).output().unwrap().stdout);
    let sum = sum.split_whitespace().next().unwrap().to_string();
    eprintln!("fleet up and the file made: {:.1}s", since.elapsed().as_secs_f64());

    // What enters the bastion is what the master sends plus what the
    // targets send it (acknowledgements, TCP ACKs); the targets' own
    // counters give the latter, so the difference is the master's link.
    let counters = |f: &Fleet| {
        let rx = net_bytes(f, &f.bastion.container, "rx_bytes");
        let tx: u64 = f.targets.iter().map(|t| net_bytes(f, &t.container, "tx_bytes")).sum();
        (rx, tx)
    };
    let before = counters(&f);
    let started = Instant::now();
    let out = cli(&["--json", "put", "bastion/target[1-8]", &big, "/root/big"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{:?} {}", out.status, text(&out.stderr));
    let after = counters(&f);
    let res = results(&text(&out.stdout));
    assert_eq!(res.len(), 8);
    assert!(res.values().all(|l| l.contains("\"ok\":true") && raw(l, "bytes") == Some(LEN.to_string())), "{res:?}");
    let into_bastion = after.0 - before.0;
    let from_targets = after.1 - before.1;
    let link = into_bastion - from_targets.min(into_bastion);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "put 100 MiB to 8 targets behind the bastion in {:.1}s: the master's link carried {:.2} MiB \
         ({:.2} MiB into the bastion, {:.2} MiB of it from the targets); naive: 8 x 100 = 800 MiB",
        took.as_secs_f64(),
        mib(link),
        mib(into_bastion),
        mib(from_targets)
    );
    // The allowance beyond 1.05 x: Ethernet, IP and TCP headers (66 bytes
    // a segment, at worst 66 per 1448 = 4.6%, far less with the large
    // segments veth passes), ssh's packets (length, padding, MAC: under
    // 1%), and the agents' images the master sends (the bastion's, and one
    // copy for its targets: under 1 MiB together).
    let allowance = LEN / 20 + LEN / 100 + (1 << 20);
    assert!(link <= LEN + LEN / 20 + allowance, "{:.2} MiB crossed the master's link", mib(link));
    assert!(link >= LEN, "{:.2} MiB: the counters missed the copy", mib(link));

    let out = cli(&["-b", "run", "bastion/target[1-8]", "--", "sha256sum", "/root/big"]);
    eprintln!("checked: {:.1}s", since.elapsed().as_secs_f64());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(heads(&stdout), ["bastion/target[1-8] (8)"], "{stdout}");
    assert!(stdout.ends_with(&format!("\n{sum}  /root/big\n")), "{stdout}");

    let src = scratch.0.join("src/tree");
    make_tree(&src, 40, 1 << 20);
    let out = cli(&["put", "-r", "bastion/target[1-8]", src.to_str().unwrap(), "/root"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let back = scratch.0.join("back");
    let out = cli(&["get", "-r", "bastion/target[1-8]", "/root/tree", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for i in 1..=8 {
        assert_same_tree(&src, &back.join(format!("bastion/target{i}/tree")));
    }
    eprintln!("trees: {:.1}s", since.elapsed().as_secs_f64());
    f.assert_clean(Duration::from_secs(5));
    drop(f);
    assert_eq!(fleet::leftovers(), Vec::<String>::new(), "containers or networks left");
    drop(scratch);
    guard.check();
}
