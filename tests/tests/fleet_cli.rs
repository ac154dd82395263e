//! The fleet CLI on local targets (hops of this machine, as several users):
//! gathered output, out-dir, the run deadline, the summary and exit
//! statuses, the progress line on a real terminal (tmux), completions and
//! man pages.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore_tests::{run_spore, spore_bin, sshd, LeakGuard, Scratch};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn spore(args: &[&str]) -> Output {
    run_spore(args, None)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Five targets: two as root, two as one user, one as another.
const FIVE: [&str; 5] =
    ["local", "local/local", "local/sudo:spore-nopw", "local/local/sudo:spore-nopw", "local/su:spore-bash"];

#[test]
fn gather_prints_identical_output_and_status_once_under_its_targets() {
    sshd::setup_machine();
    let guard = LeakGuard::new();
    let mut args = vec!["-b", "run"];
    args.extend(FIVE);
    args.extend(["--", "sh", "-c", "id -un; [ $(id -u) = 0 ]"]);
    let out = spore(&args);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    // Three groups, in the order of their first target, each once.
    let heads: Vec<&str> = stdout.lines().filter(|l| l.contains(" (")).collect();
    assert_eq!(
        heads,
        [
            "local,local/local (2)",
            "local/local/sudo:spore-nopw,local/sudo:spore-nopw (2): exit 1",
            "local/su:spore-bash (1): exit 1"
        ],
        "{stdout}"
    );
    for (who, n) in [("root", 1), ("spore-nopw", 1), ("spore-bash", 1)] {
        assert_eq!(stdout.lines().filter(|l| *l == who).count(), n, "{stdout}");
    }
    guard.check();
}

#[test]
fn out_dir_keeps_each_targets_stdout_stderr_and_status() {
    sshd::setup_machine();
    let guard = LeakGuard::new();
    let dir = Scratch::new("fleet-outdir");
    let root = dir.path("out");
    let out = spore(&[
        "--out-dir",
        &root,
        "run",
        "local",
        "local/sudo:spore-nopw",
        "--",
        "sh",
        "-c",
        "id -un; echo to-err >&2; [ $(id -u) = 0 ] || exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "", "output goes to the files only");
    let read = |p: &str| std::fs::read_to_string(format!("{root}/{p}")).unwrap();
    assert_eq!(read("local/stdout"), "root\n");
    assert_eq!(read("local/stderr"), "to-err\n");
    assert_eq!(read("local/status"), "0\n");
    assert_eq!(read("local/sudo:spore-nopw/stdout"), "spore-nopw\n");
    assert_eq!(read("local/sudo:spore-nopw/status"), "3\n");
    // A target whose hop is named like one of the files would overwrite
    // them: refused before anything runs.
    let out = spore(&["--out-dir", &root, "run", "local", "local/stdout", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("would land on"), "{}", text(&out.stderr));
    guard.check();
}

#[test]
fn the_run_deadline_ends_everything_in_time_and_counts_it_timed_out() {
    let guard = LeakGuard::new();
    let started = Instant::now();
    let out = spore(&["--deadline", "1", "--summary", "run", "local", "local/local", "--", "sleep", "30"]);
    let took = started.elapsed();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(err.contains("local: cut off by the run's --deadline"), "{err}");
    assert!(err.contains("2 timed out"), "{err}");
    guard.check();
}

/// 0 when all succeed; else the highest remote status; 255 as soon as one
/// target can't be reached. The summary names each kind's targets.
#[test]
fn exit_status_and_summary_follow_the_worst_target() {
    sshd::setup_machine();
    let guard = LeakGuard::new();
    let cmd = ["--", "sh", "-c", "[ $(id -u) = 0 ] && exit 0; exit 7"];
    let mut args = vec!["--summary", "run", "local", "local/sudo:spore-nopw"];
    args.extend(cmd);
    let out = spore(&args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(err.contains("spore: 2 targets in ") && err.contains(": 1 ok, 1 failed"), "{err}");
    assert!(err.contains("  ok           local\n") && err.contains("  failed       local/sudo:spore-nopw\n"), "{err}");
    let mut args = vec!["--summary", "run", "local", "local/sudo:spore-nopw", "local/nosuchmethod:x"];
    args.extend(cmd);
    let out = spore(&args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a bad hop is a usage error: {err}");
    let mut args = vec!["--summary", "--connect-timeout", "5", "run", "local", "local/su:nosuchuser-spore"];
    args.extend(cmd);
    let out = spore(&args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("1 ok, 1 unreachable") && err.contains("  unreachable  local/su:nosuchuser-spore"), "{err}");
    guard.check();
}

#[test]
fn completions_and_man_pages_come_from_the_same_definitions() {
    let dir = Scratch::new("fleet-completions");
    for shell in ["bash", "zsh", "fish"] {
        let out = spore(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for word in ["run", "script", "put", "get", "forks", "gather", "out-dir"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    // bash parses the bash one.
    let file = dir.path("spore.bash");
    std::fs::write(&file, spore(&["completions", "bash"]).stdout).unwrap();
    let out = Command::new("bash").args(["-n", &file]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = text(&spore(&["manpage"]).stdout);
    assert!(page.contains(".TH spore 1"), "{page}");
    for word in ["run", "script", "completions", "\\-\\-forks"] {
        assert!(page.contains(word), "the man page lacks {word}");
    }
    let page = text(&spore(&["manpage", "put"]).stdout);
    assert!(page.contains(".TH spore-put 1") && page.contains("\\-\\-recursive"), "{page}");
    let out = spore(&["manpage", "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    // Every command's --help has examples.
    for cmd in ["run", "script", "info", "put", "get", "completions", "manpage"] {
        let out = spore(&[cmd, "--help"]);
        assert!(out.status.success() && text(&out.stdout).contains("Example"), "{cmd} --help");
    }
}

/// The progress line, on a real terminal: drawn while targets run, gone
/// when the run ends; on a pipe, never a byte of it.
#[test]
fn progress_is_drawn_on_a_terminal_and_gone_at_the_end() {
    if Command::new("tmux").arg("-V").output().is_err() {
        panic!("tmux is not installed (tests/scripts/install-deps.sh installs it)");
    }
    let session = format!("spore-progress-{}", std::process::id());
    let tmux = |args: &[&str]| Command::new("tmux").args(args).output().unwrap();
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).output();
        }
    }
    let out = tmux(&["new-session", "-d", "-s", &session, "-x", "150", "-y", "20"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _kill = Kill(session.clone());
    let line = format!(
        "clear; {} run local local/local local/local/local -- sh -c 'sleep 3; echo finished'; echo status=$?",
        spore_bin().display()
    );
    tmux(&["send-keys", "-t", &session, &line, "Enter"]);
    let capture = || text(&tmux(&["capture-pane", "-p", "-t", &session]).stdout);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut during = String::new();
    while Instant::now() < deadline {
        during = capture();
        if during.contains("[0/3]") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(during.contains("[0/3] 0 failed, 3 running") && during.contains("slowest local"), "{during}");
    let mut after = String::new();
    while Instant::now() < deadline {
        after = capture();
        if after.contains("status=") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(after.contains("status=0"), "{after}");
    assert_eq!(after.matches(": finished").count(), 3, "{after}");
    assert!(!after.contains("running"), "the progress line was left: {after}");
    assert!(after.contains("spore: 3 targets in") && after.contains("3 ok"), "a terminal gets the summary: {after}");
    // Not a terminal: no progress, no summary.
    let out = spore(&["run", "local", "local/local", "--", "sleep", "0.5"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stderr), "");
}

/// Out of file descriptors: spore raises its soft limit to the hard one
/// first; what still runs out fails those targets with a clear error,
/// never a hang.
#[test]
fn running_out_of_file_descriptors_fails_those_targets_clearly() {
    let guard = LeakGuard::new();
    let targets = "local local/local local/local/local local/sudo local/sudo/local local/local/sudo";
    let spore = spore_bin().display().to_string();
    let sh = |script: String| {
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        spore_tests::wait_bounded(child, Duration::from_secs(30))
    };
    // A soft limit of 12 under a hard one of 4096: raised, all run.
    let out = sh(format!("ulimit -H -n 4096; ulimit -S -n 12; {spore} run {targets} -- true"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A hard limit of 12: every target fails, each saying why.
    let out = sh(format!("ulimit -n 12; {spore} run {targets} -- true"));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("out of file descriptors, 12 here: raise `ulimit -n`, or lower --forks"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    guard.check();
}

/// Groups from an inventory file in both formats, exclusion and
/// intersection, and `@failed` after a run where some targets failed.
#[test]
fn inventory_groups_exclusion_and_failed_select_the_targets() {
    sshd::setup_machine();
    let guard = LeakGuard::new();
    let dir = Scratch::new("fleet-inventory");
    let ini = dir.path("hosts.ini");
    std::fs::write(
        &ini,
        "# spore's own format is this plain INI\n[roots]\nlocal\nlocal/local\n\n[users]\nlocal/sudo:spore-nopw\n\
         local/su:spore-bash\n\n[everyone:children]\nroots\nusers\n",
    )
    .unwrap();
    let yaml = dir.path("hosts.yml");
    std::fs::write(
        &yaml,
        "all:\n  children:\n    roots:\n      hosts:\n        local:\n        local/local:\n    users:\n      hosts:\n\
         \x20       local/sudo:spore-nopw:\n        local/su:spore-bash:\n    everyone:\n      children:\n\
         \x20       roots:\n        users:\n",
    )
    .unwrap();
    let cache = dir.path("cache");
    let who = |inv: &str, words: &[&str]| -> (Option<i32>, Vec<String>) {
        let mut cmd = Command::new(spore_bin());
        cmd.env("XDG_CACHE_HOME", &cache).env_remove("SPORE_LOG").args(["-i", inv, "--json", "run"]);
        cmd.args(words).args(["--", "sh", "-c", "[ $(id -u) = 0 ]"]);
        let out = cmd.output().unwrap();
        let stdout = text(&out.stdout);
        let mut targets: Vec<String> = stdout
            .lines()
            .filter(|l| l.contains("\"result\""))
            .map(|l| l.split("\"target\":\"").nth(1).unwrap().split('"').next().unwrap().to_string())
            .collect();
        targets.sort();
        (out.status.code(), targets)
    };
    for inv in [&ini, &yaml] {
        let (code, all) = who(inv, &["@everyone"]);
        assert_eq!(code, Some(1), "{inv}");
        assert_eq!(all, ["local", "local/local", "local/su:spore-bash", "local/sudo:spore-nopw"], "{inv}");
        // @failed: the two that are not root.
        let (_, failed) = who(inv, &["@failed"]);
        assert_eq!(failed, ["local/su:spore-bash", "local/sudo:spore-nopw"], "{inv}");
        let (code, some) = who(inv, &["@everyone,!@users,!local/local"]);
        assert_eq!((code, some), (Some(0), vec!["local".to_string()]), "{inv}");
        let (_, both) = who(inv, &["@everyone,&@users", "-x", "local/su:*"]);
        assert_eq!(both, ["local/sudo:spore-nopw"], "{inv}");
        // After a run where all succeeded, @failed selects nothing.
        let (_, _) = who(inv, &["@roots"]);
        let (code, none) = who(inv, &["@failed"]);
        assert_eq!((code, none), (Some(2), Vec::<String>::new()), "{inv}");
    }
    let out = run_spore(&["-i", &ini, "run", "@nosuch", "--", "true"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("nosuch") && text(&out.stderr).contains("roots"), "{}", text(&out.stderr));
    guard.check();
}
