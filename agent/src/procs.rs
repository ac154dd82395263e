//! Processes the broker is responsible for: connection processes (ssh,
//! sudo, a local agent) and command guardians handed to it, reaped without
//! ever blocking the broker thread; the commands' process groups,
//! signalled at shutdown; and, in an agent, every process left below it,
//! killed at its very end ([`kill_descendants`]).

use crate::logs::blog;
use crate::spawn::Child;
use crate::sys;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

/// How often a process without a deadline is looked at.
const IDLE_CHECK: Duration = Duration::from_millis(250);
/// How often one about to exit (or be killed) is looked at.
const BUSY_CHECK: Duration = Duration::from_millis(2);
/// How soon one just handed over is looked at again, for [`BUSY_CHECK`].
const FRESH_CHECK: Duration = Duration::from_micros(100);
/// A process still unreaped this long after SIGKILL (in D state, say) is
/// left to a thread of its own, so the broker never waits on it.
const STUCK_AFTER_KILL: Duration = Duration::from_secs(1);

/// End a process (its whole group) and reap it. Blocking: only for a
/// process that was never handed to the broker.
pub(crate) fn kill_and_reap(child: &mut Child) {
    kill(child);
    let _ = child.wait();
}

/// SIGKILL a process and its group.
fn kill(child: &mut Child) {
    let _ = sys::killpg(child.id() as i32, libc::SIGKILL);
    let _ = child.kill();
}

struct Reaping {
    child: Child,
    what: String,
    /// When it was handed over: most are gone within a millisecond.
    added: Instant,
    /// SIGKILL if it still runs then.
    kill_at: Option<Instant>,
    killed: Option<Instant>,
}

/// Processes waiting to be reaped.
#[derive(Default)]
pub(crate) struct Reaper {
    procs: Vec<Reaping>,
}

impl Reaper {
    /// Reap `child` once it exits; SIGKILL it (and its group) at `kill_at`.
    pub(crate) fn add(&mut self, child: Child, what: String, kill_at: Option<Instant>) {
        self.procs.push(Reaping { child, what, added: Instant::now(), kill_at, killed: None });
    }

    /// Anything left to reap?
    pub(crate) fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Kill everything still running no later than `at`.
    pub(crate) fn deadline_all(&mut self, at: Instant) {
        for p in &mut self.procs {
            p.kill_at = Some(p.kill_at.map_or(at, |k| k.min(at)));
        }
    }

    /// When to look again: soon after a process is handed over (it is
    /// usually exiting already: its pipes closed), every [`BUSY_CHECK`]
    /// while one is about to be killed, else every [`IDLE_CHECK`].
    pub(crate) fn next_check(&self, now: Instant) -> Option<Instant> {
        let fresh = self.procs.iter().any(|p| now.saturating_duration_since(p.added) < BUSY_CHECK);
        if fresh {
            return Some(now + FRESH_CHECK);
        }
        let busy = self.procs.iter().any(|p| p.kill_at.is_some());
        match (self.procs.is_empty(), busy) {
            (true, _) => None,
            (false, true) => Some(now + BUSY_CHECK),
            (false, false) => Some(now + IDLE_CHECK),
        }
    }

    /// Reap what has exited, kill what is due, and give up on (hand to a
    /// thread of its own) what SIGKILL did not end within a second.
    pub(crate) fn check(&mut self, now: Instant) {
        for mut p in std::mem::take(&mut self.procs) {
            match p.child.try_wait() {
                Ok(Some(status)) => blog!(log::Level::Debug, "{} exited: {status}", p.what),
                Err(_) => {}
                Ok(None) if p.killed.is_some_and(|k| now.saturating_duration_since(k) >= STUCK_AFTER_KILL) => {
                    wait_elsewhere(p.child)
                }
                Ok(None) => {
                    if p.killed.is_none() && p.kill_at.is_some_and(|k| now >= k) {
                        blog!(log::Level::Debug, "{} still running; killing it", p.what);
                        kill(&mut p.child);
                        p.killed = Some(now);
                    }
                    self.procs.push(p);
                }
            }
        }
    }

    /// The end: kill everything and reap it, waiting at most `limit`. A
    /// process just told to end is usually gone within a fraction of a
    /// millisecond: look again after 50 µs, then less and less often, up
    /// to [`BUSY_CHECK`] (a flat 2 ms was most of a local run's shutdown).
    pub(crate) fn finish(&mut self, limit: Duration) {
        let start = Instant::now();
        self.deadline_all(start);
        let mut pause = Duration::from_micros(50);
        loop {
            self.check(Instant::now());
            if self.procs.is_empty() || start.elapsed() >= limit {
                break;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(BUSY_CHECK);
        }
        for mut p in self.procs.drain(..) {
            let _ = p.child.kill();
            wait_elsewhere(p.child);
        }
    }
}

/// Reap `child` on a thread of its own: a process stuck in the kernel must
/// not hold up the broker. (Without a thread it stays a zombie until we end.)
fn wait_elsewhere(mut child: Child) {
    let _ = std::thread::Builder::new().name("spore-reaper".into()).spawn(move || child.wait());
}

/// Process groups of the commands this context started.
#[derive(Default)]
pub(crate) struct Groups {
    set: Vec<i32>,
}

impl Groups {
    pub(crate) fn insert(&mut self, pgid: i32) {
        if !self.set.contains(&pgid) {
            self.set.push(pgid);
        }
    }

    pub(crate) fn remove(&mut self, pgid: i32) {
        self.set.retain(|&g| g != pgid);
    }

    /// Signal every group that still has members (a group whose members
    /// are all gone is forgotten first: its id may be reused).
    pub(crate) fn signal(&mut self, sig: i32) {
        self.any_alive();
        for &g in &self.set {
            let _ = sys::killpg(g, sig);
        }
    }

    /// Forget the groups with no members left; is any left?
    pub(crate) fn any_alive(&mut self) -> bool {
        self.set.retain(|&g| sys::group_alive(g));
        !self.set.is_empty()
    }
}

/// Reap every ended child of thread `task` of this process that no
/// [`Child`] waits for (see `spawn::owned`). An agent is a child
/// subreaper: what is orphaned below it — what a killed guardian's command
/// left, what a connection process (ssh, sudo) forked and left — becomes a
/// child of its first live thread, the main one (which serves calls to the
/// end), and nothing else waits for it: it would stay a zombie for the
/// agent's whole life. One `waitpid` (WNOHANG) for each child in the
/// list, as long as that thread has children.
pub(crate) fn reap_orphans(task: u32) {
    let owned = crate::spawn::owned();
    // "PID PID ... "
    let mut pid = 0;
    for b in std::fs::read(format!("/proc/self/task/{task}/children")).unwrap_or_default() {
        if b != b' ' {
            pid = pid * 10 + (b & 15) as u32;
            continue;
        }
        if !owned.contains(&pid) {
            sys::reap(pid as i32);
        }
        pid = 0;
    }
}

/// SIGKILL every process below this one, walk after walk of `/proc` (what
/// one forked while we walked shows in the next), until none is left alive
/// or `deadline` passes (one walk at least). An agent is a child subreaper
/// (`event_loop`), so this reaches what a killed or stopped guardian left:
/// its orphans are ours. Zombies count as gone (the kernel's init reaps
/// them once we end); so does what we may not signal.
pub(crate) fn kill_descendants(deadline: Instant) {
    let me = sys::getpid() as i32;
    while signal_descendants(me, &[libc::SIGKILL]) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Send `sigs` to every live descendant of `root`; true if any took them.
/// The tree is one walk of `/proc`; each process is signalled only after a
/// second look at its own entry, just before, shows it still alive and the
/// child of `root` or of one found below it. So a pid freed and reused by
/// an unrelated process meanwhile is left alone (its parent is not ours).
pub(crate) fn signal_descendants(root: i32, sigs: &[i32]) -> bool {
    let mut links: Vec<(i32, i32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = digits(entry.file_name().as_bytes()) else { continue };
            if let Some(ppid) = live_parent(pid) {
                links.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while let Some(&parent) = found.get(i) {
        found.extend(links.iter().filter(|&&(_, pp)| pp == parent).map(|&(pid, _)| pid));
        i += 1;
    }
    let mut any = false;
    for &pid in found.iter().skip(1) {
        // Its parent may have died since: then it is ours (a subreaper's).
        if live_parent(pid).is_some_and(|pp| found.contains(&pp)) {
            for &sig in sigs {
                any |= sys::kill(pid, sig).is_ok();
            }
        }
    }
    any
}

/// The parent of `pid`, if it is alive (not a zombie), from
/// `/proc/PID/stat`: `pid (comm) state ppid ...`, where comm (at most 15
/// bytes) may hold anything, so count from its last ')'.
fn live_parent(pid: i32) -> Option<i32> {
    let mut path = b"/proc/".to_vec();
    let at = path.len();
    let mut n = pid.unsigned_abs();
    loop {
        path.insert(at, b'0' + (n % 10) as u8);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    path.extend_from_slice(b"/stat\0");
    let mut stat = [0u8; 64];
    let n = std::ffi::CStr::from_bytes_with_nul(&path).map_or(0, |p| sys::read_start(p, &mut stat));
    let stat = stat.get(..n)?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    if matches!(stat.get(close + 2), Some(b'Z' | b'X') | None) {
        return None;
    }
    let ppid = stat.get(close + 4..)?;
    digits(ppid.get(..ppid.iter().position(|&b| b == b' ')?)?)
}

/// A non-negative decimal number, all of `s`.
pub(crate) fn digits(s: &[u8]) -> Option<i32> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0i32, |n, &b| {
        let d = b.checked_sub(b'0').filter(|&d| d <= 9)?;
        n.checked_mul(10)?.checked_add(d as i32)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use crate::spawn::Command;
    use std::io;

    #[test]
    fn a_live_process_has_its_parent_and_a_zombie_none() {
        assert_eq!(live_parent(sys::getpid() as i32), Some(sys::getppid()));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(10);
        // Not reaped: it stays a zombie, which counts as gone.
        while live_parent(pid).is_some() {
            assert!(Instant::now() < deadline, "{pid} never became a zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.wait().unwrap();
        assert_eq!(live_parent(pid), None);
        assert_eq!(
            (digits(b"12345"), digits(b""), digits(b"12a"), digits(b"99999999999")),
            (Some(12345), None, None, None)
        );
    }

    /// This thread's id, from `/proc/thread-self` (`PID/task/TID`).
    fn own_tid() -> u32 {
        let link = std::fs::read_link("/proc/thread-self").unwrap();
        link.file_name().unwrap().to_str().unwrap().parse().unwrap()
    }

    fn wait_zombie(pid: i32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while live_parent(pid).is_some() {
            assert!(Instant::now() < deadline, "{pid} never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_sweep_reaps_an_unowned_child_and_never_an_owned_one() {
        // Two children of this thread: one a `Child` waits for, and one
        // nobody owns (as an orphan reparented to an agent).
        let mut owned = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let orphan = Command::new("true").spawn().unwrap().id();
        crate::spawn::owned().retain(|&p| p != orphan);
        for pid in [owned.id(), orphan] {
            wait_zombie(pid as i32);
        }
        reap_orphans(own_tid());
        // The orphan is gone (reaped: no longer our child); the owned
        // child's status is still its own to take.
        // SAFETY: waitpid with a null status pointer writes nothing.
        let rc = unsafe { libc::waitpid(orphan as i32, std::ptr::null_mut(), libc::WNOHANG) };
        assert_eq!((rc, io::Error::last_os_error().raw_os_error()), (-1, Some(libc::ECHILD)));
        assert_eq!(owned.wait().unwrap().code(), Some(7));
        assert!(!crate::spawn::owned().contains(&owned.id()), "reaped, so forgotten");
    }
}
