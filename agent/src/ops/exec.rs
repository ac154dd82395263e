//! `exec`: run a command under a guardian (`crate::guardian`), feed it
//! stdin from the caller, send its stdout/stderr back (streamed or
//! collected), and have the guardian kill its tree when the timeout
//! expires. A command may come with a script, which it finds as its fd 3
//! (`/dev/fd/3`) in an anonymous file: see [`script_file`].

use crate::call::{ok, Call, OpError, OpResult};
use crate::flow::{ack, acked, Outflow};
use crate::guardian;
use crate::spawn::{Child, Command, ExitStatus, Stdio};
use crate::sys::{self, pollfd};
use spore_protocol::body::{ExecArgs, ExecReply, CHUNK_SIZE, MAX_SCRIPT, WINDOW};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// After the command exits, output still held open by a background
/// grandchild is read until it has been idle this long, then left behind.
const LINGER: Duration = Duration::from_millis(200);
/// Collected output is held until the command exits, up to this much per
/// stream; past it the agent sends what it has (within the window) rather
/// than grow without bound.
const COLLECT_LIMIT: usize = 8 << 20;
/// How long a guardian may take to start its command and say so.
const START_LIMIT: Duration = Duration::from_secs(10);
/// How long a guardian that said it is done, or was told to kill, may take
/// to exit before the broker is left to reap it.
const EXIT_LIMIT: Duration = Duration::from_millis(500);

/// The lifeline: a pipe whose write end only this agent holds (both ends
/// close-on-exec) and whose read end every guardian inherits. When the agent
/// dies, however it dies, its guardians read EOF.
static LIFELINE: OnceLock<(File, File)> = OnceLock::new();

fn lifeline() -> io::Result<RawFd> {
    if LIFELINE.get().is_none() {
        // A racing thread may win: its pipe is kept, this one closed.
        let _ = LIFELINE.set(sys::pipe()?);
    }
    LIFELINE.get().map(|(r, _)| r.as_raw_fd()).ok_or_else(|| io::Error::from(io::ErrorKind::Other))
}

struct Output {
    file: Option<File>,
    flow: Outflow,
    /// Read from the command, not yet sent.
    pending: Vec<u8>,
    /// Collected mode gave up holding everything back.
    spilled: bool,
}

impl Output {
    fn new(file: Option<File>, flow: Outflow) -> Output {
        Output { file, flow, pending: Vec::new(), spilled: false }
    }

    /// How much may wait here before we stop reading the pipe.
    fn limit(&self, stream: bool) -> usize {
        if stream || self.spilled {
            CHUNK_SIZE
        } else {
            COLLECT_LIMIT
        }
    }

    /// Read what the pipe has (within the limit); bytes read.
    fn read(&mut self, stream: bool) -> usize {
        let Some(file) = self.file.as_ref() else { return 0 };
        let room = self.limit(stream).saturating_sub(self.pending.len()).min(CHUNK_SIZE);
        if room == 0 {
            return 0;
        }
        let mut buf = vec![0u8; room];
        match (&*file).read(&mut buf) {
            Ok(0) => {
                self.file = None;
                0
            }
            Ok(n) => {
                self.pending.extend_from_slice(buf.get(..n).unwrap_or_default());
                if !stream && self.pending.len() >= COLLECT_LIMIT {
                    self.spilled = true;
                }
                n
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => 0,
            Err(_) => {
                self.file = None;
                0
            }
        }
    }
}

/// The agent's end of a guardian's control socket (non-blocking).
struct Control {
    sock: UnixStream,
    /// A report read in part: `got` bytes of it.
    buf: [u8; guardian::REPORT],
    got: usize,
    /// The guardian closed its end.
    eof: bool,
    /// The guardian said nothing of the tree is left, or was told to kill
    /// it: it exits in a moment.
    done: bool,
}

impl Control {
    /// The next whole report, if one has arrived: (kind, flag, value).
    fn report(&mut self) -> Option<(u8, u8, i32)> {
        while !self.eof && self.got < guardian::REPORT {
            match self.sock.read(self.buf.get_mut(self.got..).unwrap_or_default()) {
                Ok(0) => self.eof = true,
                Ok(n) => self.got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(_) => self.eof = true,
            }
        }
        if self.got < guardian::REPORT {
            return None;
        }
        self.got = 0;
        let [kind, flag, _, _, a, b, c, d] = self.buf;
        Some((kind, flag, i32::from_le_bytes([a, b, c, d])))
    }

    /// Wait (bounded) for the next report.
    fn wait_report(&mut self, deadline: Instant) -> Option<(u8, u8, i32)> {
        loop {
            if let Some(r) = self.report() {
                return Some(r);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if self.eof || left.is_zero() {
                return None;
            }
            let mut fds = [pollfd(self.sock.as_raw_fd(), libc::POLLIN)];
            let _ = sys::poll(&mut fds, left.as_millis().min(1000) as i32 + 1);
        }
    }

    fn send(&mut self, what: u8) {
        let _ = self.sock.write(&[what]);
    }

    /// Wait (bounded) for a guardian that is done to exit, and reap it.
    fn wait_exit(&mut self, child: &mut Child) -> bool {
        let deadline = Instant::now() + EXIT_LIMIT;
        loop {
            if !matches!(child.try_wait(), Ok(None)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if self.eof {
                // Its fds close just before it becomes a zombie.
                std::thread::sleep(Duration::from_micros(50));
            } else {
                let _ = self.wait_report(deadline);
            }
        }
    }
}

/// `n` in decimal (without the formatting machinery).
fn decimal(n: RawFd) -> String {
    let mut n = n.unsigned_abs();
    let mut s = String::new();
    loop {
        s.insert(0, char::from(b'0' + (n % 10) as u8));
        n /= 10;
        if n == 0 {
            return s;
        }
    }
}

pub(crate) fn exec(call: &Call) -> OpResult {
    let args: ExecArgs = call.args("exec arguments")?;
    let cmdline = args.argv.join(" ");
    if args.argv.is_empty() {
        return Err(OpError::new("invalid", "exec: empty command line"));
    }
    let spawn_err = |e: io::Error| OpError::io(format!("exec {cmdline}"), &e);
    let script = args.script.as_deref().map(script_file).transpose()?;
    let script_fd = script.as_ref().map(|f| f.as_raw_fd());
    // The guardian: this binary again, with the command's stdio,
    // environment and directory, in a process group of its own. It must
    // outlive this thread and the agent, so no parent-death signal.
    let (sock, theirs) = UnixStream::pair().map_err(spawn_err)?;
    let (ctl_fd, life_fd) = (theirs.as_raw_fd(), lifeline().map_err(spawn_err)?);
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(guardian::MARKER)
        .arg(decimal(ctl_fd))
        .arg(decimal(life_fd))
        .arg(script_fd.map_or_else(String::new, decimal))
        .args(&args.argv)
        .stdin(if args.stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(env) = &args.env {
        cmd.envs(env);
    }
    if let Some(cwd) = &args.cwd {
        cmd.current_dir(cwd);
    }
    // SAFETY: the closure runs between fork and exec and only calls
    // sigemptyset, pthread_sigmask, signal and fcntl, all async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            sys::reset_signals();
            sys::keep_across_exec(ctl_fd)?;
            if let Some(fd) = script_fd {
                sys::keep_across_exec(fd)?;
            }
            sys::keep_across_exec(life_fd)
        });
    }
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // The guardian has its copy, the command will have the only other.
    drop((theirs, script));
    let pgid = child.id() as i32;
    call.broker.track_group(pgid);
    let mut ctl = Control { sock, buf: [0; guardian::REPORT], got: 0, eof: false, done: false };
    // The command's own group too: should the guardian be too slow for the
    // broker's SIGKILL at shutdown, what stayed in the group dies with it.
    let mut command_pgid = pgid;
    let result = match ctl.wait_report(Instant::now() + START_LIMIT) {
        Some((guardian::STARTED, _, command)) => {
            call.broker.track_group(command);
            command_pgid = command;
            sys::set_nonblocking(ctl.sock.as_fd(), true)
                .map_err(|e| OpError::io("set up the guardian", &e))
                .and_then(|()| Runner::new(call, &args, &mut child)?.run(call, &args, &mut ctl))
                .map_err(|e| OpError::new(e.kind, format!("{cmdline}: {}", e.message)))
        }
        Some((guardian::FAILED, _, errno)) => {
            let mut e = spawn_err(io::Error::from_raw_os_error(errno));
            if args.script.is_some() {
                // The interpreter: the caller says so as a shell would
                // (127, 126), apart from the script's own failures.
                e.kind = if errno == libc::ENOENT { "no_interpreter" } else { "bad_interpreter" };
            }
            Err(e)
        }
        _ => {
            let _ = child.kill();
            Err(OpError::new("io", format!("exec {cmdline}: its guardian did not start it")))
        }
    };
    // The guardian exits once nothing of the command's tree is left; what
    // is left (a background job) it keeps, and kills when the agent dies or
    // shuts down: the broker reaps it then.
    if result.is_err() {
        ctl.send(guardian::KILL);
        ctl.done = true;
    }
    if !(ctl.done && ctl.wait_exit(&mut child)) {
        call.broker.reap_later(child, format!("guardian of {cmdline}"));
    }
    for g in [pgid, command_pgid] {
        if !sys::group_alive(g) {
            call.broker.untrack_group(g);
        }
    }
    result
}

/// An anonymous file holding `text`, for a command to read as its fd 3:
/// a sealed memfd (so nothing can change the script under its
/// interpreter), or, where the kernel has none (before Linux 3.17), an
/// `O_TMPFILE` in `/dev/shm` (memory too): a file that never has a name,
/// so no one can reach it without an fd for it (the directory only says
/// which file system holds it). Nothing of it is on a disk or left behind,
/// even if the agent is killed. Close-on-exec: only the command's fd 3 is
/// inherited.
#[inline(never)] // Cold, and out of `exec`'s way.
fn script_file(text: &str) -> Result<File, OpError> {
    if text.len() > MAX_SCRIPT {
        return Err(OpError::new("invalid", "exec: the script is over 4 MiB"));
    }
    let hold = |e: io::Error| OpError::io("exec: hold the script", &e);
    let file = match sys::memfd(c"spore-script") {
        Ok(f) => f,
        Err(_) => unnamed_file("/dev/shm").map_err(hold)?,
    };
    // One write: a file in memory takes it all, or fails. At offset 0 and
    // leaving the file's offset there: perl reads `/dev/fd/3` from the fd
    // itself, not a fresh open.
    if file.write_at(text.as_bytes(), 0).map_err(hold)? < text.len() {
        return Err(hold(io::ErrorKind::WriteZero.into()));
    }
    // A memfd seals; a file without a name has none to reach it by but ours.
    let _ = sys::seal(&file);
    Ok(file)
}

/// A new file in `dir` that has no name there, read-only to anyone who
/// reopens it (`/dev/fd/3`): Linux 3.11, and not every file system.
#[inline(never)]
fn unnamed_file<P: AsRef<std::path::Path>>(dir: P) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).custom_flags(libc::O_TMPFILE).mode(0o400).open(dir)
}

struct Runner {
    mb: crate::Mailbox,
    stdin: Option<File>,
    stdin_queue: VecDeque<u8>,
    stdin_end: bool,
    stdin_consumed: u64,
    out: Output,
    err: Output,
    acked: u64,
}

fn take<T: Into<OwnedFd>>(t: Option<T>) -> io::Result<Option<File>> {
    let Some(t) = t else { return Ok(None) };
    let f = File::from(t.into());
    sys::set_nonblocking(f.as_fd(), true)?;
    Ok(Some(f))
}

impl Runner {
    fn new(call: &Call, args: &ExecArgs, child: &mut Child) -> Result<Runner, OpError> {
        let pipes = |e: io::Error| OpError::io("set up pipes", &e);
        let stdin = take(child.stdin.take()).map_err(pipes)?;
        let stdout = take(child.stdout.take()).map_err(pipes)?;
        let stderr = take(child.stderr.take()).map_err(pipes)?;
        let mb = call.open_stream()?;
        let broker = call.broker.clone();
        Ok(Runner {
            mb,
            stdin,
            stdin_queue: VecDeque::new(),
            stdin_end: !args.stdin,
            stdin_consumed: 0,
            out: Output::new(stdout, Outflow::new(broker.clone(), call.caller(), call.request.header.reply_to)),
            err: Output::new(stderr, Outflow::new(broker, call.caller(), args.stderr_handle)),
            acked: 0,
        })
    }

    fn in_flight(&self) -> u64 {
        (self.out.flow.sent() + self.err.flow.sent()).saturating_sub(self.acked)
    }

    fn run(mut self, call: &Call, args: &ExecArgs, ctl: &mut Control) -> Result<Vec<u8>, OpError> {
        let deadline = args.timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        let mut timed_out = false;
        let mut exited: Option<ExitStatus> = None;
        // The last time output moved, or waited on the caller's acks: the
        // linger after exit counts from here, so nothing is cut off merely
        // because the window was full.
        let mut progress = Instant::now();
        loop {
            self.take_messages(call)?;
            self.feed_stdin(call);
            if exited.is_none() {
                if let Some((kind, flag, value)) = ctl.report() {
                    if kind != guardian::EXITED {
                        return Err(OpError::new("io", "a garbled report from the command's guardian"));
                    }
                    exited = Some(ExitStatus::from_raw(value));
                    ctl.done = flag == 1;
                    self.stdin = None;
                    progress = Instant::now();
                } else if ctl.eof {
                    return Err(OpError::new("io", "lost track of the command: its guardian ended"));
                }
            }
            if self.send_pending(args.stream, exited.is_some()) {
                progress = Instant::now();
            }
            let now = Instant::now();
            let unsent = !self.out.pending.is_empty() || !self.err.pending.is_empty();
            if unsent && self.in_flight() >= WINDOW {
                progress = now;
            }
            if exited.is_some() && !unsent {
                let pipes_open = self.out.file.is_some() || self.err.file.is_some();
                if !pipes_open || now.duration_since(progress) >= LINGER {
                    break;
                }
            }
            if exited.is_none() && !timed_out && deadline.is_some_and(|d| now >= d) {
                // SIGTERM to the whole tree now, SIGKILL after the grace:
                // the guardian sees to both.
                log::debug!("timeout: killing the command's tree");
                timed_out = true;
                ctl.send(guardian::TERM);
            }
            let ctl_fd = if exited.is_none() { ctl.sock.as_raw_fd() } else { -1 };
            if self.wait(args.stream, exited.is_some(), deadline.filter(|_| !timed_out), ctl_fd)? {
                progress = Instant::now();
            }
        }
        let Some(status) = exited else {
            return Err(OpError::new("io", "lost track of the command"));
        };
        ok(&ExecReply {
            status: status.code(),
            signal: status.signal(),
            timed_out,
            stdout_len: self.out.flow.sent(),
            stderr_len: self.err.flow.sent(),
        })
    }

    /// Send what we hold, as the mode and the window allow: streaming sends
    /// at once; collecting holds back until exit (or the limit). True if
    /// anything went out.
    fn send_pending(&mut self, stream: bool, exited: bool) -> bool {
        let mut sent = false;
        for which in [0, 1] {
            loop {
                let in_flight = self.in_flight();
                let o = if which == 0 { &mut self.out } else { &mut self.err };
                if o.pending.is_empty() || !(stream || o.spilled || exited) || in_flight >= WINDOW {
                    break;
                }
                let n = o.pending.len().min(CHUNK_SIZE);
                let chunk: Vec<u8> = o.pending.drain(..n).collect();
                o.flow.send(&chunk, false);
                sent = true;
            }
        }
        sent
    }

    /// Acks for our output, stdin chunks, or the news that the caller is gone.
    fn take_messages(&mut self, call: &Call) -> Result<(), OpError> {
        while let Some(msg) = self.mb.try_recv().map_err(|_| OpError::new("shutting_down", "shutting down"))? {
            if msg.is_dead() {
                return Err(OpError::new("disconnected", String::from_utf8_lossy(&msg.body).into_owned()));
            }
            if msg.is_binary() {
                self.stdin_end |= msg.is_end();
                if self.stdin.is_some() {
                    self.stdin_queue.extend(msg.body.iter());
                } else {
                    // The command is gone or closed stdin: discard, but keep
                    // acking so the caller never waits on us.
                    self.stdin_consumed += msg.body.len() as u64;
                    ack(&call.broker, call.caller(), call.request.header.reply_to, self.stdin_consumed);
                }
            } else if let Some(a) = acked(&msg) {
                self.acked = self.acked.max(a);
            }
        }
        Ok(())
    }

    /// Write what stdin data we hold; ack what the command took.
    fn feed_stdin(&mut self, call: &Call) {
        let Some(stdin) = self.stdin.as_ref() else { return };
        let mut wrote = 0u64;
        let mut closed = false;
        while !self.stdin_queue.is_empty() {
            let (front, _) = self.stdin_queue.as_slices();
            match (&*stdin).write(front) {
                Ok(n) => {
                    self.stdin_queue.drain(..n);
                    wrote += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // EPIPE: the command closed its stdin; discard the rest.
                    wrote += self.stdin_queue.len() as u64;
                    self.stdin_queue.clear();
                    closed = true;
                    break;
                }
            }
        }
        if closed || (self.stdin_queue.is_empty() && self.stdin_end) {
            self.stdin = None;
        }
        if wrote > 0 {
            self.stdin_consumed += wrote;
            ack(&call.broker, call.caller(), call.request.header.reply_to, self.stdin_consumed);
        }
    }

    /// Poll the command's pipes (those we may read now), our mailbox and
    /// the guardian's reports (`ctl`, -1 once it said the command ended)
    /// until something happens or a tick passes. True if output was read.
    fn wait(&mut self, stream: bool, exited: bool, deadline: Option<Instant>, ctl: RawFd) -> Result<bool, OpError> {
        let readable = |o: &Output| match &o.file {
            Some(f) if o.pending.len() < o.limit(stream) => f.as_raw_fd(),
            _ => -1,
        };
        let pipes_open = self.out.file.is_some() || self.err.file.is_some();
        let mut tick = if pipes_open && !exited { Duration::from_millis(50) } else { Duration::from_millis(2) };
        if let Some(d) = deadline {
            tick = tick.min(d.saturating_duration_since(Instant::now()));
        }
        let waker = self.mb.waker().map_or(-1, |w| w.as_raw_fd());
        let stdin_fd = match &self.stdin {
            Some(f) if !self.stdin_queue.is_empty() => f.as_raw_fd(),
            _ => -1,
        };
        let mut fds = [
            pollfd(readable(&self.out), libc::POLLIN),
            pollfd(readable(&self.err), libc::POLLIN),
            pollfd(stdin_fd, libc::POLLOUT),
            pollfd(waker, libc::POLLIN),
            pollfd(ctl, libc::POLLIN),
        ];
        sys::poll(&mut fds, tick.as_millis() as i32).map_err(|e| OpError::io("poll", &e))?;
        let [o, e, _, _, _] = fds;
        let mut read = 0;
        if o.revents != 0 {
            read += self.out.read(stream);
        }
        if e.revents != 0 {
            read += self.err.read(stream);
        }
        Ok(read > 0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    /// Only the command's copy may survive an exec: a spawn on another
    /// thread must not take this one along.
    fn close_on_exec(f: &File) -> bool {
        // SAFETY: F_GETFD only reads the flags of an fd we own.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFD) == libc::FD_CLOEXEC }
    }

    #[test]
    fn a_script_file_is_anonymous_and_sealed() {
        let mut f = script_file("#!/bin/sh\necho hi\n").unwrap();
        let path = format!("/proc/self/fd/{}", f.as_raw_fd());
        let link = std::fs::read_link(&path).unwrap();
        assert_eq!(link.display().to_string(), "/memfd:spore-script (deleted)");
        // As the interpreter opens `/dev/fd/3` (from its start), and as
        // perl reads it (from the fd itself).
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "#!/bin/sh\necho hi\n");
        let mut text = String::new();
        f.read_to_string(&mut text).unwrap();
        assert_eq!(text, "#!/bin/sh\necho hi\n");
        assert_eq!(f.write(b"x").unwrap_err().raw_os_error(), Some(libc::EPERM));
        assert!(close_on_exec(&f));
    }

    #[test]
    fn the_fallback_file_has_no_name() {
        let dir = std::env::temp_dir().join(format!("spore-script-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = unnamed_file(&dir).unwrap();
        f.write_all(b"text").unwrap();
        assert!(close_on_exec(&f));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let reopened = std::fs::read_to_string(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
        assert_eq!(reopened, "text");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(unnamed_file(&dir).is_err());
    }
}
