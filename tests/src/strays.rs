//! Helpers for the no-strays suite (`tests/tests/strays.rs`): commands that
//! try every way of getting away from their agent — a background job, a
//! double fork, `setsid`, ignoring SIGTERM — each marked so that a walk of
//! this host's `/proc` (or `ps` in a container) finds every process of
//! theirs, and a guard that kills whatever is left when a test fails.
//!
//! The mark is in the arguments of their `sleep`s: `6<i><level>.<pid>9`
//! (611.00123459 for the first sleep at level 1 of test process 12345), so
//! it names the test process and the level of the tree the command runs
//! at, and a stray that escapes even the guard ends within 11 minutes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test harness")]

use spore::Command;
use std::time::{Duration, Instant};

/// How many marked sleeps [`Marks::escapist`] starts.
pub const SLEEPS: usize = 5;

/// The marks of one test, and the guard that kills what carries them.
pub struct Marks {
    pid7: String,
}

impl Default for Marks {
    fn default() -> Self {
        Marks::new()
    }
}

impl Marks {
    /// Marks unique to this test process.
    pub fn new() -> Marks {
        Marks { pid7: format!("{:07}", std::process::id()) }
    }

    /// What every marked process of this test has in its command line.
    pub fn tag(&self) -> String {
        format!(".{}9", self.pid7)
    }

    /// What the marked processes of `level` have in their command lines.
    pub fn level_tag(&self, level: usize) -> String {
        format!("{level}.{}9", self.pid7)
    }

    /// The argument of sleep `i` (1-based) at `level`.
    pub fn arg(&self, level: usize, i: usize) -> String {
        format!("6{i}{}", self.level_tag(level))
    }

    /// `sleep ARG` for every sleep [`Marks::escapist`] starts at `level`.
    pub fn sleeps(&self, level: usize) -> Vec<String> {
        (1..=SLEEPS).map(|i| format!("sleep {}", self.arg(level, i))).collect()
    }

    /// A shell that ignores SIGTERM (as do its children), backgrounds a
    /// sleep, double-forks one (orphaned at once), `setsid`s one, does
    /// both to another, and waits in a fifth.
    pub fn escapist_script(&self, level: usize) -> String {
        let a = |i| self.arg(level, i);
        format!(
            "trap '' TERM; sleep {} & (sleep {} &); setsid sleep {} & (setsid sleep {} &); sleep {}",
            a(1),
            a(2),
            a(3),
            a(4),
            a(5)
        )
    }

    /// [`Marks::escapist_script`] as a command.
    pub fn escapist(&self, level: usize) -> Command {
        Command::new(["sh", "-c", &self.escapist_script(level)])
    }

    /// The same leftovers (output to /dev/null), but the shell returns at
    /// once: sleeps 1 to 4 outlive the call.
    pub fn leaver(&self, level: usize) -> Command {
        let a = |i| self.arg(level, i);
        let q = ">/dev/null 2>&1";
        Command::new([
            "sh".to_string(),
            "-c".to_string(),
            format!(
                "trap '' TERM; sleep {} {q} & (sleep {} {q} &); setsid sleep {} {q} & (setsid sleep {} {q} &); echo started",
                a(1),
                a(2),
                a(3),
                a(4)
            ),
        ])
    }

    /// Marked processes on this host (any namespace): (pid, command line).
    pub fn here(&self) -> Vec<(i32, String)> {
        let tag = self.tag();
        let mut found = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc") else { return found };
        for entry in dir.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmd = crate::cmdline(pid);
            if cmd.contains(&tag) && !is_zombie(pid) {
                found.push((pid, cmd));
            }
        }
        found
    }

    /// Wait (bounded) until every one of `cmds` runs on this host (each
    /// command line exactly).
    pub fn wait_running_here(&self, cmds: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let here = self.here();
            let missing: Vec<&String> = cmds.iter().filter(|c| !here.iter().any(|(_, h)| h == *c)).collect();
            if missing.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "never started: {missing:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait (bounded) until no marked process of `levels` runs on this
    /// host; fail naming what is left (the guard kills it).
    pub fn wait_gone_here(&self, levels: &[usize], within: Duration, when: &str) {
        let start = Instant::now();
        loop {
            crate::reap_zombies();
            let left: Vec<(i32, String)> = self
                .here()
                .into_iter()
                .filter(|(_, c)| levels.iter().any(|&l| c.contains(&self.level_tag(l))))
                .collect();
            if left.is_empty() {
                eprintln!("levels {levels:?}: nothing left {:?} after {when}", start.elapsed());
                return;
            }
            assert!(start.elapsed() < within, "still running {within:?} after {when}: {left:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The guardians (`--spore-guardian`) of this test's commands at
    /// `level` on this host: their command lines carry the marks too.
    pub fn guardians_here(&self, level: usize) -> Vec<i32> {
        let tag = self.level_tag(level);
        self.here()
            .into_iter()
            .filter(|(_, c)| c.contains("--spore-guardian") && c.contains(&tag))
            .map(|(p, _)| p)
            .collect()
    }

    /// Every sleep of `level` still runs here.
    pub fn assert_running_here(&self, level: usize, why: &str) {
        let here = self.here();
        for cmd in self.sleeps(level) {
            assert!(here.iter().any(|(_, h)| *h == cmd), "{cmd} is gone, but {why}");
        }
    }

    /// Marked processes `ps` shows in `container`.
    pub fn in_container(&self, container: &str) -> Vec<String> {
        let out = std::process::Command::new("docker").args(["exec", container, "ps", "-o", "pid,args"]).output();
        let tag = self.tag();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        text.lines().filter(|l| l.contains(&tag) && !l.contains("ps -o")).map(|l| l.trim().to_string()).collect()
    }

    /// Wait (bounded) until every sleep of `levels` runs in `container`.
    pub fn wait_running_in(&self, container: &str, levels: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ps = self.in_container(container);
            let missing: Vec<String> = levels
                .iter()
                .flat_map(|&l| self.sleeps(l))
                .filter(|s| !ps.iter().any(|p| p.ends_with(s.as_str())))
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "never started in {container}: {missing:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait (bounded) until `ps` in `container` shows nothing of `levels`.
    pub fn wait_gone_in(&self, container: &str, levels: &[usize], within: Duration, when: &str) {
        let start = Instant::now();
        loop {
            let left: Vec<String> = self
                .in_container(container)
                .into_iter()
                .filter(|p| levels.iter().any(|&l| p.contains(&self.level_tag(l))))
                .collect();
            if left.is_empty() {
                eprintln!("levels {levels:?} in {container}: nothing left {:?} after {when}", start.elapsed());
                return;
            }
            assert!(start.elapsed() < within, "still running in {container} {within:?} after {when}: {left:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL every marked process on this host (containers' included).
    pub fn kill_all(&self) {
        for _ in 0..10 {
            let left = self.here();
            if left.is_empty() {
                return;
            }
            for (pid, _) in left {
                // SAFETY: kill has no memory effects; these carry our mark.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            crate::reap_zombies();
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Marks {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn is_zombie(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3)) == Some("Z")
}

/// Send `sig` to `pid` on this host.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory effects.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}): {}", std::io::Error::last_os_error());
}
