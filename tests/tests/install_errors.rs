//! Issue 12, point 7: a failed install in one candidate cache directory
//! moves on to the next (`$XDG_RUNTIME_DIR/spore`, then `~/.cache/spore`,
//! …), a directory planted at the agent's name is removed when it is ours
//! and skipped (left alone) when it is not, and "Permission denied" in an
//! install's output is not reported as an authentication failure. Needs
//! root (it mounts a tmpfs and makes files of another user).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore_tests::race::{agent_name, dir, file, holds_agent, names, nobody, Start, Tmpfs, Victim};
use spore_tests::{LeakGuard, Scratch};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const ROOT: (u32, u32) = (0, 0);

fn need_root() {
    // SAFETY: getuid has no side effects.
    assert_eq!(unsafe { libc::getuid() }, 0, "these tests mount and make files of other users: run them as root");
}

/// A victim `user` with `HOME` and `XDG_RUNTIME_DIR` (both its own, 0700)
/// under `base`, and its `$XDG_RUNTIME_DIR/spore` (0700) made.
fn victim(base: &Path, user: (u32, u32)) -> Victim {
    let xdg = dir(&base.join("xdg"), 0o700, user);
    dir(&xdg.join("spore"), 0o700, user);
    Victim { home: dir(&base.join("home"), 0o700, user), xdg: Some(xdg), user: (user != ROOT).then_some(user) }
}

fn the_run_fell_back_to_home(what: &str, v: &Victim, start: &Start) {
    assert!(!start.auth_failed(), "{what}: misreported as an authentication failure: {}", start.stderr);
    assert!(start.ok, "{what}: the start failed instead of moving on to ~/.cache/spore: {}", start.stderr);
    let home = v.home_cache().join(agent_name());
    assert!(
        holds_agent(&home),
        "{what}: no agent in {} ({:?}): {}",
        home.display(),
        names(&v.home_cache()),
        start.stderr
    );
}

/// (i) An unprivileged victim whose first candidate ends in "Permission
/// denied" is not told "authentication failed": it moves on and starts.
/// In its own `$XDG_RUNTIME_DIR/spore` there is a directory at the agent's
/// name: its own (so the upload can be moved into it, and the `exec` of the
/// name is refused), or root's (so moving the upload there is refused).
#[test]
fn permission_denied_while_installing_is_not_an_authentication_failure() {
    let guard = LeakGuard::new();
    need_root();
    let scratch = Scratch::new("install-eacces");
    let them = nobody();
    for (tag, owner, what) in [
        ("own", them, "victim nobody, its own directory at the agent's name (exec: Permission denied)"),
        ("root", ROOT, "victim nobody, root's directory at the agent's name (mv: Permission denied)"),
    ] {
        let v = victim(&dir(&scratch.0.join(tag), 0o755, ROOT), them);
        let planted = dir(&v.xdg_cache().join(agent_name()), 0o755, owner);
        let start = v.start();
        assert!(!start.auth_failed(), "{what}: misreported as an authentication failure: {}", start.stderr);
        if owner == them && !planted.is_dir() {
            // Ours, so it may have been replaced by the agent.
            assert!(start.ok, "{what}: {}", start.stderr);
            assert!(holds_agent(&planted), "{what}: {} is neither the directory nor the agent", planted.display());
        } else {
            the_run_fell_back_to_home(what, &v, &start);
            assert!(names(&planted).is_empty(), "{what}: written into it: {:?}", names(&planted));
        }
    }
    drop(scratch);
    guard.check();
}

/// (ii) The first candidate is a full filesystem (a 64 KiB tmpfs on
/// `$XDG_RUNTIME_DIR`; the agent is bigger): the upload fails there, the
/// install moves on to `~/.cache/spore` and the start works. Nothing is
/// left in the full one, and the next start hits the cache.
#[test]
fn an_install_that_runs_out_of_space_moves_on_to_the_next_candidate() {
    let guard = LeakGuard::new();
    need_root();
    let scratch = Scratch::new("install-enospc");
    let xdg = dir(&scratch.0.join("xdg"), 0o700, ROOT);
    let mount = match Tmpfs::mount(&xdg, "size=64k,mode=0700") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: can't mount a tmpfs here ({e})");
            return;
        }
    };
    let v = Victim { home: dir(&scratch.0.join("home"), 0o700, ROOT), xdg: Some(xdg), user: None };
    let start = v.start();
    the_run_fell_back_to_home("a full $XDG_RUNTIME_DIR", &v, &start);
    let left = names(&v.xdg_cache());
    assert!(left.iter().all(|n| !n.contains("spore-agent-")), "left in the full directory: {left:?}");
    let again = v.start();
    assert!(again.ok && !again.uploaded(), "the agent in ~/.cache/spore was not reused: {}", again.stderr);
    drop(mount);
    drop(scratch);
    guard.check();
}

/// (iii) A directory of the victim's own at the agent's name: the start
/// works, the directory replaced by the agent or skipped (then nothing is
/// written into it, and the agent is in the next candidate).
#[test]
fn a_directory_of_ours_at_the_agents_name_is_removed_or_skipped() {
    let guard = LeakGuard::new();
    need_root();
    let scratch = Scratch::new("install-own-dir");
    let v = victim(&scratch.0, ROOT);
    let planted = dir(&v.xdg_cache().join(agent_name()), 0o700, ROOT);
    let start = v.start();
    assert!(!start.auth_failed(), "misreported as an authentication failure: {}", start.stderr);
    assert!(start.ok, "{}", start.stderr);
    if planted.is_dir() {
        assert!(names(&planted).is_empty(), "written into the directory at the agent's name: {:?}", names(&planted));
        the_run_fell_back_to_home("our directory at the agent's name, skipped", &v, &start);
    } else {
        assert!(holds_agent(&planted), "{} is neither the directory nor the agent", planted.display());
    }
    drop(scratch);
    guard.check();
}

/// (iii) A directory of another user's at the agent's name: left alone
/// (same inode, owner and content), and the start works from the next
/// candidate.
#[test]
fn a_foreign_directory_at_the_agents_name_is_left_alone() {
    let guard = LeakGuard::new();
    need_root();
    let scratch = Scratch::new("install-foreign-dir");
    let them = nobody();
    let v = victim(&scratch.0, ROOT);
    let planted = dir(&v.xdg_cache().join(agent_name()), 0o755, them);
    file(&planted.join("keep"), b"theirs\n", 0o644, them);
    let ino = std::fs::symlink_metadata(&planted).unwrap().ino();
    let start = v.start();
    the_run_fell_back_to_home("another user's directory at the agent's name", &v, &start);
    let meta = std::fs::symlink_metadata(&planted).expect("the foreign directory was removed");
    assert!(meta.is_dir() && meta.ino() == ino && meta.uid() == them.0, "the foreign directory was replaced");
    assert_eq!(names(&planted), ["keep"], "written into the foreign directory");
    drop(scratch);
    guard.check();
}
