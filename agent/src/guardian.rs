//! The guardian: every command `exec` runs has one, which outlives its
//! agent long enough to kill the command's whole tree.
//!
//! It is this agent's own binary, re-executed by `exec` as
//! `/proc/self/exe --spore-guardian CTL LIFE SCRIPT ARGV...` with the
//! command's environment, directory and stdio (`SCRIPT`: empty, or the fd of
//! a script the command gets as its fd 3, and the guardian closes once the
//! command has it). It becomes a child subreaper (so every
//! descendant of the command stays in its subtree, however it forks or
//! `setsid`s), starts the command in a process group of its own (signals
//! reset, SIGKILL when the guardian dies), points its own fds 0-2 at
//! `/dev/null` (so the agent sees EOF when the command's tree closes them),
//! and then reaps every child until none is left. It kills the tree —
//! SIGTERM (and SIGCONT) to the command's group and to every descendant,
//! [`TERM_GRACE`], then SIGKILL until nothing is left — when:
//!
//! - the agent dies, even by SIGKILL: `LIFE` is the read end of a pipe whose
//!   write end only the agent holds, so it reads EOF;
//! - it gets SIGTERM (the broker's shutdown signals the guardian's group);
//! - the agent asks on the control socket `CTL`: [`TERM`] (a timeout:
//!   SIGTERM now, SIGKILL after [`KILL_GRACE`]) or [`KILL`] (at once).
//!
//! Should it be too slow for the broker's SIGKILL at shutdown (a loaded
//! machine), stopped or killed, its orphans go to the agent (a child
//! subreaper too), which kills every process left below it at its end
//! (`procs::kill_descendants`).
//!
//! On `CTL` it reports [`STARTED`] or [`FAILED`] (errno), then [`EXITED`]
//! with the command's wait status once it ends. EOF on `CTL` only means the
//! agent stopped listening. When the command has ended and no descendant is
//! left, the guardian exits; descendants that remain keep it (a command may
//! outlive its call, never its context).

use crate::procs;
use crate::spawn::Command;
use crate::sys::{self, pollfd, Reaped};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// `argv[1]` of a guardian.
pub(crate) const MARKER: &str = "--spore-guardian";
/// After SIGTERM on timeout, SIGKILL follows this much later.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(2);
/// When the agent dies or at shutdown, SIGKILL follows SIGTERM this much
/// later (the broker SIGKILLs the guardian 300 ms after its shutdown began).
const TERM_GRACE: Duration = Duration::from_millis(200);
/// The longest the loop sleeps (signals and fds wake it sooner).
const TICK_MS: i32 = 1000;
/// Walks of `/proc` that SIGKILL what is left, before giving up.
const KILL_ROUNDS: usize = 40;

/// Agent → guardian (one byte): SIGTERM the tree, SIGKILL after [`KILL_GRACE`].
pub(crate) const TERM: u8 = b'T';
/// Agent → guardian (one byte): SIGKILL the tree now.
pub(crate) const KILL: u8 = b'K';
/// Guardian → agent: reports are [`REPORT`] bytes: kind, flag, 0, 0, value
/// (i32, little-endian). The command runs (value: its pid).
pub(crate) const STARTED: u8 = b's';
/// The command could not be started (value: errno).
pub(crate) const FAILED: u8 = b'e';
/// The command ended (value: its raw wait status; flag 1: nothing of its
/// tree is left and the guardian exits).
pub(crate) const EXITED: u8 = b'x';
/// Length of a report.
pub(crate) const REPORT: usize = 8;

/// If this process was started as a guardian, be one and never return.
pub(crate) fn run_if_asked() {
    run_if_asked_by(&std::env::args_os().skip(1).collect::<Vec<_>>());
}

/// The same, given the process's arguments after its name.
pub(crate) fn run_if_asked_by(args: &[std::ffi::OsString]) {
    if args.first().is_some_and(|a| a == MARKER) {
        // Its arguments came from `exec` as JSON strings: UTF-8.
        sys::exit_now(guard(args[1..].iter().map(|a| a.to_string_lossy().into_owned())))
    }
}

fn fd_arg(arg: Option<String>) -> Option<File> {
    let fd = procs::digits(arg?.as_bytes())?;
    sys::adopt_fd(fd as RawFd).ok().map(File::from)
}

fn guard(mut args: impl Iterator<Item = String>) -> i32 {
    let (Some(ctl), Some(life)) = (fd_arg(args.next()), fd_arg(args.next())) else { return 2 };
    let mut ctl = UnixStream::from(std::os::fd::OwnedFd::from(ctl));
    // Empty (not an fd): no script.
    let script = fd_arg(args.next());
    let argv: Vec<String> = args.collect();
    let Some((program, rest)) = argv.split_first() else {
        report(&mut ctl, FAILED, 0, libc::EINVAL);
        return 2;
    };
    // Both before the command starts: its orphans must come to us, and its
    // exit must not be missed.
    let sigs = match sys::set_child_subreaper().and_then(|()| sys::signal_fd(&[libc::SIGTERM, libc::SIGCHLD])) {
        Ok(s) => s,
        Err(e) => {
            report(&mut ctl, FAILED, 0, e.raw_os_error().unwrap_or(libc::EIO));
            return 1;
        }
    };
    let me = sys::getpid() as i32;
    let mut cmd = Command::new(program);
    cmd.args(rest).process_group(0);
    if let Some(script) = script {
        cmd.fd3(script);
    }
    // SAFETY: the closure runs between fork and exec and only calls
    // sigemptyset, pthread_sigmask, signal, prctl and getppid, all
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            sys::reset_signals();
            sys::set_parent_death_signal(libc::SIGKILL)?;
            // We died before the line above: nobody would kill it.
            if sys::getppid() != me {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let main = match cmd.spawn() {
        Ok(child) => child.id() as i32,
        Err(e) => {
            report(&mut ctl, FAILED, 0, e.raw_os_error().unwrap_or(libc::EIO));
            return 1;
        }
    };
    report(&mut ctl, STARTED, 0, main);
    if let Ok(null) = File::open("/dev/null") {
        for fd in 0..3 {
            let _ = sys::dup_onto(null.as_fd(), fd);
        }
    }
    Guardian { me, main, main_done: false, ctl: Some(ctl), life: Some(life), sigs, kill_at: None }.watch()
}

fn report(ctl: &mut UnixStream, kind: u8, flag: u8, value: i32) {
    let v = value.to_le_bytes();
    // Eight bytes into an empty socket buffer: one write takes them all.
    let _ = ctl.write(&[kind, flag, 0, 0, v[0], v[1], v[2], v[3]]);
}

struct Guardian {
    me: i32,
    /// The command's pid, and its process group.
    main: i32,
    /// The command was reaped (and reported).
    main_done: bool,
    /// None once the agent closed it.
    ctl: Option<UnixStream>,
    /// None once it failed (EOF ends the guardian at once).
    life: Option<File>,
    sigs: File,
    /// A timeout's SIGKILL.
    kill_at: Option<Instant>,
}

impl Guardian {
    fn watch(mut self) -> i32 {
        loop {
            if self.reap() {
                return 0;
            }
            if self.kill_at.is_some_and(|k| Instant::now() >= k) {
                self.kill_at = None;
                self.kill_all();
                continue;
            }
            let timeout = self.kill_at.map_or(TICK_MS, |k| ms_until(k).min(TICK_MS));
            let fd = |f: Option<RawFd>| pollfd(f.unwrap_or(-1), libc::POLLIN);
            let mut fds = [
                fd(Some(self.sigs.as_raw_fd())),
                fd(self.ctl.as_ref().map(|c| c.as_raw_fd())),
                fd(self.life.as_ref().map(|l| l.as_raw_fd())),
            ];
            if sys::poll(&mut fds, timeout).is_err() {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            let [s, c, l] = fds;
            if s.revents != 0 && self.take_signals() {
                return self.end();
            }
            if l.revents != 0 && self.lifeline_cut() {
                return self.end();
            }
            if c.revents != 0 {
                self.read_ctl();
            }
        }
    }

    /// Reap every ended child, reporting the command's end. True when no
    /// child is left (so nothing of the tree: we are its subreaper).
    fn reap(&mut self) -> bool {
        loop {
            match sys::reap_any() {
                Reaped::Child(pid, status) if pid == self.main => {
                    self.main_done = true;
                    // Is anything left? Reap on before we say.
                    let empty = self.reap();
                    if let Some(ctl) = self.ctl.as_mut() {
                        report(ctl, EXITED, empty as u8, status);
                    }
                    return empty;
                }
                Reaped::Child(..) => {}
                Reaped::Running => return false,
                Reaped::Nothing => return true,
            }
        }
    }

    /// Drain the signalfd; true if SIGTERM came (SIGCHLD only wakes us).
    fn take_signals(&mut self) -> bool {
        let mut term = false;
        let mut info = [0u8; 128];
        while let Ok(128) = (&self.sigs).read(&mut info) {
            let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
            term |= signo == libc::SIGTERM as u32;
        }
        term
    }

    fn lifeline_cut(&mut self) -> bool {
        let Some(life) = self.life.as_ref() else { return false };
        match (&*life).read(&mut [0u8; 16]) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
            Err(_) => {
                self.life = None;
                false
            }
        }
    }

    fn read_ctl(&mut self) {
        let Some(ctl) = self.ctl.as_mut() else { return };
        let mut buf = [0u8; 16];
        let n = match ctl.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(_) => 0,
        };
        if n == 0 {
            self.ctl = None;
        }
        for &b in buf.iter().take(n) {
            if b == TERM && self.kill_at.is_none() {
                self.signal_all(libc::SIGTERM);
                self.kill_at = Some(Instant::now() + KILL_GRACE);
            } else if b == KILL {
                self.kill_all();
            }
        }
    }

    /// The agent is gone or shutting down: SIGTERM, a grace, SIGKILL, exit.
    fn end(mut self) -> i32 {
        self.signal_all(libc::SIGTERM);
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if self.reap() {
                return 0;
            }
            self.nap(ms_until(deadline));
        }
        self.kill_all();
        0
    }

    /// SIGKILL the tree until nothing is left of it (bounded).
    fn kill_all(&mut self) {
        for _ in 0..KILL_ROUNDS {
            self.signal_all(libc::SIGKILL);
            if self.reap() {
                return;
            }
            self.nap(5);
        }
    }

    /// Sleep until a child ends or `ms` pass.
    fn nap(&mut self, ms: i32) {
        let mut fds = [pollfd(self.sigs.as_raw_fd(), libc::POLLIN)];
        let _ = sys::poll(&mut fds, ms);
        let _ = self.take_signals();
    }

    /// `sig` to the command's group (while its leader is unreaped, the
    /// group id can't be reused) and to every descendant.
    fn signal_all(&self, sig: i32) {
        if !self.main_done {
            let _ = sys::killpg(self.main, sig);
        }
        // A stopped process acts on SIGTERM only once continued.
        let sigs: &[i32] = if sig == libc::SIGTERM { &[libc::SIGTERM, libc::SIGCONT] } else { &[sig] };
        procs::signal_descendants(self.me, sigs);
    }
}

fn ms_until(t: Instant) -> i32 {
    let ms = t.saturating_duration_since(Instant::now()).as_millis() + 1;
    ms.min(i32::MAX as u128) as i32
}
