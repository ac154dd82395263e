//! `exec`: run a command in its own process group, feed it stdin from the
//! caller, send its stdout/stderr back (streamed or collected), and kill the
//! group when the timeout expires.

use crate::call::{ok, Call, OpError, OpResult};
use crate::flow::{ack, acked, Outflow};
use crate::sys::{self, pollfd};
use spore_protocol::body::{ExecArgs, ExecReply, CHUNK_SIZE, WINDOW};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// After SIGTERM on timeout, SIGKILL follows this much later.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// After the command exits, output still held open by a background
/// grandchild is read until it has been idle this long, then left behind.
const LINGER: Duration = Duration::from_millis(200);
/// Collected output is held until the command exits, up to this much per
/// stream; past it the agent sends what it has (within the window) rather
/// than grow without bound.
const COLLECT_LIMIT: usize = 8 << 20;

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

pub(crate) fn exec(call: &Call) -> OpResult {
    let args: ExecArgs = call.args("exec arguments")?;
    let cmdline = args.argv.join(" ");
    let (program, rest) = args.argv.split_first().ok_or_else(|| OpError::new("invalid", "exec: empty command line"))?;
    let mut cmd = Command::new(program);
    cmd.args(rest)
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
    // If this agent is killed outright (SIGKILL, OOM), its command must not
    // outlive it. The thread that spawns the command waits for it, so the
    // parent-death signal fires only when the agent itself is gone.
    // SAFETY: the closure runs between fork and exec and only calls
    // sigemptyset, pthread_sigmask, signal and prctl, all async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            sys::reset_signals();
            sys::set_parent_death_signal(libc::SIGKILL)
        });
    }
    let mut child = cmd.spawn().map_err(|e| OpError::io(format!("exec {cmdline}"), &e))?;
    let pgid = child.id() as i32;
    call.broker.track_group(pgid);
    let result = Runner::new(call, &args, &mut child).and_then(|r| r.run(call, &args, &mut child));
    if result.is_err() {
        let _ = sys::killpg(pgid, libc::SIGKILL);
        let _ = child.wait();
    }
    if !sys::group_alive(pgid) {
        call.broker.untrack_group(pgid);
    }
    result.map_err(|e| OpError::new(e.kind, format!("{cmdline}: {}", e.message)))
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

    fn run(mut self, call: &Call, args: &ExecArgs, child: &mut Child) -> Result<Vec<u8>, OpError> {
        let pgid = child.id() as i32;
        let deadline = args.timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        let mut timed_out = false;
        let mut kill_at: Option<Instant> = None;
        let mut exited: Option<ExitStatus> = None;
        // The last time output moved, or waited on the caller's acks: the
        // linger after exit counts from here, so nothing is cut off merely
        // because the window was full.
        let mut progress = Instant::now();
        loop {
            self.take_messages(call)?;
            self.feed_stdin(call);
            if exited.is_none() {
                if let Some(status) = child.try_wait().map_err(|e| OpError::io("wait", &e))? {
                    exited = Some(status);
                    self.stdin = None;
                    progress = Instant::now();
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
            if exited.is_none() {
                if deadline.is_some_and(|d| now >= d) && !timed_out {
                    log::debug!("timeout: SIGTERM to group {pgid}");
                    timed_out = true;
                    let _ = sys::killpg(pgid, libc::SIGTERM);
                    kill_at = Some(now + KILL_GRACE);
                }
                if kill_at.is_some_and(|k| now >= k) {
                    let _ = sys::killpg(pgid, libc::SIGKILL);
                    kill_at = None;
                }
            }
            if self.wait(args.stream, exited.is_some(), deadline.filter(|_| !timed_out).or(kill_at))? {
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

    /// Poll the command's pipes (those we may read now) and our mailbox
    /// until something happens or a tick passes (exit is noticed by
    /// `try_wait` on each turn). True if output was read.
    fn wait(&mut self, stream: bool, exited: bool, deadline: Option<Instant>) -> Result<bool, OpError> {
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
        ];
        sys::poll(&mut fds, tick.as_millis() as i32).map_err(|e| OpError::io("poll", &e))?;
        let [o, e, _, _] = fds;
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
