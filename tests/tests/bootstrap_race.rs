//! Issue 12, point 6: the bootstrap script's cache directory against a user
//! who can write one of its parents. Such a user can swap the `spore`
//! directory for their own with `renameat2(RENAME_EXCHANGE)` between the
//! script's checks and its `exec`. So a directory whose parent others can
//! write (without the sticky bit) is never used, and the check and the
//! `exec` see the same directory.
//!
//! The victim is root, running `spore run local -- true` with its own
//! `HOME` and an `XDG_RUNTIME_DIR` of the test's making; the other user is
//! `nobody`. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore_tests::race::{
    agent_name, cached_agent, dir, fake_agent, holds_agent, names, nobody, not_owned_by, proofs, Renamer, Start, Victim,
};
use spore_tests::{LeakGuard, Scratch};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

const ROOT: (u32, u32) = (0, 0);

fn need_root() {
    // SAFETY: getuid has no side effects.
    assert_eq!(unsafe { libc::getuid() }, 0, "these tests make files of other users: run them as root");
}

/// One way of racing the victim: the two names the attacker swaps and the
/// victim's environment.
struct Scenario {
    what: &'static str,
    /// The victim's name (where its directory is at the start).
    ours: PathBuf,
    /// The attacker's name for its own directory.
    theirs: PathBuf,
    victim: Victim,
}

/// What the starts of one scenario did.
#[derive(Default)]
struct Tally {
    starts: usize,
    ok: usize,
    uploaded: usize,
    auth_failed: Vec<String>,
    other_failures: Vec<String>,
    renamer: String,
    /// Victim-made entries found in the attacker's directory.
    planted: Vec<String>,
    secs: f64,
}

/// (a) `XDG_RUNTIME_DIR` is the attacker's: its `spore` is swapped with the
/// attacker's `evil`, which holds a convincing fake agent.
fn attacker_owns_xdg(base: &Path, proof_dir: &Path) -> Scenario {
    let them = nobody();
    let root = dir(&base.join("a"), 0o755, ROOT);
    let xdg = dir(&root.join("xdg"), 0o755, them);
    let ours = dir(&xdg.join("spore"), 0o700, ROOT);
    cached_agent(&ours, ROOT);
    let theirs = dir(&xdg.join("evil"), 0o700, them);
    fake_agent(&theirs, proof_dir, them);
    let home = dir(&root.join("home"), 0o700, ROOT);
    Scenario {
        what: "XDG_RUNTIME_DIR owned by the attacker",
        ours,
        theirs,
        victim: Victim { home, xdg: Some(xdg), user: None },
    }
}

/// (b) A grandparent is the attacker's: `XDG_RUNTIME_DIR=X/run`, `run` the
/// victim's (0700) but `X` the attacker's, who swaps `run` with its own
/// `X/evil` holding `spore/` and a convincing fake agent.
fn attacker_owns_a_grandparent(base: &Path, proof_dir: &Path) -> Scenario {
    let them = nobody();
    let root = dir(&base.join("b"), 0o755, ROOT);
    let x = dir(&root.join("X"), 0o755, them);
    let run = dir(&x.join("run"), 0o700, ROOT);
    cached_agent(&dir(&run.join("spore"), 0o700, ROOT), ROOT);
    let evil = dir(&x.join("evil"), 0o700, them);
    fake_agent(&dir(&evil.join("spore"), 0o700, them), proof_dir, them);
    let home = dir(&root.join("home"), 0o700, ROOT);
    Scenario {
        what: "XDG_RUNTIME_DIR's parent owned by the attacker",
        ours: run.clone(),
        theirs: evil,
        victim: Victim { home, xdg: Some(run), user: None },
    }
}

fn race(s: &Scenario, starts: usize) -> Tally {
    let them = nobody();
    let began = Instant::now();
    let renamer = Renamer::start(&s.ours, &s.theirs, them);
    let mut t = Tally { starts, ..Tally::default() };
    for i in 0..starts {
        let start: Start = s.victim.start();
        t.ok += usize::from(start.ok);
        t.uploaded += usize::from(start.uploaded());
        if start.auth_failed() {
            t.auth_failed.push(format!("start {i}: {}", start.stderr.trim()));
        } else if !start.ok {
            t.other_failures.push(format!("start {i}: {}", start.stderr.trim()));
        }
    }
    t.renamer = renamer.stop();
    t.secs = began.elapsed().as_secs_f64();
    // The attacker's directory is whichever of the two names holds the
    // directory it owns; nothing in it may be the victim's.
    for name in [&s.ours, &s.theirs] {
        if std::fs::symlink_metadata(name).is_ok_and(|m| m.uid() == them.0) {
            t.planted
                .extend(not_owned_by(name, them.0).into_iter().map(|(p, uid)| format!("{} (uid {uid})", p.display())));
        }
    }
    t
}

fn summary(what: &str, t: &Tally) -> String {
    let first = |v: &[String]| v.iter().take(2).cloned().collect::<Vec<_>>().join("\n    ");
    format!(
        "{what}: {} starts in {:.1}s, {} ok ({} uploaded), renamer: {}\n  \
         'authentication failed': {}\n    {}\n  other failures: {}\n    {}\n  victim's files in the attacker's directory: {:?}",
        t.starts,
        t.secs,
        t.ok,
        t.uploaded,
        t.renamer,
        t.auth_failed.len(),
        first(&t.auth_failed),
        t.other_failures.len(),
        first(&t.other_failures),
        t.planted,
    )
}

/// 200 starts (100 per scenario) against a concurrent renamer: the
/// attacker's fake agent never runs, no start is misreported as an
/// authentication failure, and the victim writes nothing into the
/// attacker's directory.
#[test]
fn a_renamer_swapping_the_cache_directory_never_gets_its_agent_run() {
    need_root();
    let guard = LeakGuard::new();
    let scratch = Scratch::new("bootstrap-race");
    let proof_dir = dir(&scratch.0.join("proofs"), 0o755, ROOT);
    let scenarios = [attacker_owns_xdg(&scratch.0, &proof_dir), attacker_owns_a_grandparent(&scratch.0, &proof_dir)];
    let mut report = Vec::new();
    let mut bad = false;
    for s in &scenarios {
        let before = proofs(&proof_dir).len();
        let t = race(s, 100);
        let ran = proofs(&proof_dir).len() - before;
        let text = format!("{}\n  foreign executions: {ran}", summary(s.what, &t));
        eprintln!("{text}");
        bad |= ran > 0 || !t.auth_failed.is_empty() || !t.planted.is_empty();
        report.push(text);
    }
    let ran = proofs(&proof_dir);
    assert!(
        !bad && ran.is_empty(),
        "the attacker won (proofs, with the uid they ran as: {ran:?}):\n{}",
        report.join("\n")
    );
    drop(scratch);
    guard.check();
}

/// A fresh start where `XDG_RUNTIME_DIR` has this mode and owner: what the
/// run did, and the victim.
fn fresh_start(base: &Path, tag: &str, mode: u32, owner: (u32, u32)) -> (Start, Victim) {
    let root = dir(&base.join(tag), 0o755, ROOT);
    let xdg = dir(&root.join("xdg"), mode, owner);
    let home = dir(&root.join("home"), 0o700, ROOT);
    let victim = Victim { home, xdg: Some(xdg), user: None };
    (victim.start(), victim)
}

/// `XDG_RUNTIME_DIR` writable by others (0777, no sticky bit) or owned by
/// another user: `$XDG_RUNTIME_DIR/spore` is never used; the agent is
/// installed in `$HOME/.cache/spore`.
#[test]
fn no_cache_is_made_under_a_parent_others_can_write() {
    need_root();
    let guard = LeakGuard::new();
    let scratch = Scratch::new("parent-writable");
    for (tag, mode, owner, what) in
        [("w", 0o777, ROOT, "mode 0777, no sticky bit"), ("o", 0o755, nobody(), "owned by another user (0755)")]
    {
        let (start, victim) = fresh_start(&scratch.0, tag, mode, owner);
        assert!(start.ok, "{what}: {}", start.stderr);
        let used = victim.xdg_cache();
        assert!(
            !holds_agent(&used.join(agent_name())),
            "{what}: the agent was installed in {} ({:?}), under a parent others can write",
            used.display(),
            names(&used)
        );
        assert!(
            holds_agent(&victim.home_cache().join(agent_name())),
            "{what}: no agent in {} ({:?}); {}",
            victim.home_cache().display(),
            names(&victim.home_cache()),
            start.stderr
        );
    }
    drop(scratch);
    guard.check();
}

/// A cached agent that passes every check of its own (the victim's, 0700,
/// right size, stamped) in a `spore` directory that is the victim's (0700)
/// is still never run when the directory's parent is writable by others:
/// anyone could have swapped it in.
#[test]
fn a_cached_agent_under_a_parent_others_can_write_is_never_run() {
    need_root();
    let guard = LeakGuard::new();
    let scratch = Scratch::new("parent-writable-cached");
    let proof_dir = dir(&scratch.0.join("proofs"), 0o755, ROOT);
    let xdg = dir(&scratch.0.join("xdg"), 0o777, ROOT);
    let cache = dir(&xdg.join("spore"), 0o700, ROOT);
    fake_agent(&cache, &proof_dir, ROOT);
    let victim = Victim { home: dir(&scratch.0.join("home"), 0o700, ROOT), xdg: Some(xdg), user: None };
    let start = victim.start();
    assert!(proofs(&proof_dir).is_empty(), "the agent in {} was run: {}", cache.display(), start.stderr);
    assert!(start.ok, "{}", start.stderr);
    assert!(
        holds_agent(&victim.home_cache().join(agent_name())),
        "no agent in {}: {}",
        victim.home_cache().display(),
        start.stderr
    );
    drop(scratch);
    guard.check();
}

/// A sticky `XDG_RUNTIME_DIR` (1777, like /tmp) may hold the cache: the
/// start works, wherever it installs the agent.
#[test]
fn a_sticky_parent_others_can_write_may_hold_the_cache() {
    need_root();
    let guard = LeakGuard::new();
    let scratch = Scratch::new("parent-sticky");
    let (start, victim) = fresh_start(&scratch.0, "s", 0o1777, ROOT);
    assert!(start.ok, "{}", start.stderr);
    let in_xdg = holds_agent(&victim.xdg_cache().join(agent_name()));
    let in_home = holds_agent(&victim.home_cache().join(agent_name()));
    assert!(in_xdg || in_home, "no agent installed in either cache: {}", start.stderr);
    eprintln!(
        "sticky XDG_RUNTIME_DIR: agent installed in {}",
        if in_xdg { "$XDG_RUNTIME_DIR/spore" } else { "~/.cache/spore" }
    );
    // A second start finds it.
    let again = victim.start();
    assert!(again.ok && !again.uploaded(), "the cached agent was not reused: {}", again.stderr);
    drop(scratch);
    guard.check();
}
