//! Processes the broker is responsible for: connection processes (ssh,
//! sudo, a local agent) and command guardians handed to it, reaped without
//! ever blocking the broker thread; and the commands' process groups,
//! signalled at shutdown.

use crate::logs::blog;
use crate::spawn::Child;
use crate::sys;
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
