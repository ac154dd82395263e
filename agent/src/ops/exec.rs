//! `exec`: run a command in its own process group, feed it stdin from the
//! caller, send its stdout/stderr back (streamed or collected), and kill the
//! group when the timeout expires.

use super::next_message;
use crate::call::{ok, Call, OpError, OpResult};
use crate::flow::{ack, Outflow};
use crate::sys;
use spore_protocol::body::{self, Control, ExecArgs, ExecReply, CHUNK_SIZE, WINDOW};
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
/// grandchild is read for this long, then left behind.
const LINGER: Duration = Duration::from_millis(200);

struct Output {
    file: Option<File>,
    flow: Outflow,
    collected: Vec<u8>,
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
    // SAFETY: the closure runs between fork and exec and only calls prctl,
    // which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| sys::set_parent_death_signal(libc::SIGKILL));
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
            out: Output {
                file: stdout,
                flow: Outflow::new(broker.clone(), call.caller(), call.request.header.reply_to),
                collected: Vec::new(),
            },
            err: Output {
                file: stderr,
                flow: Outflow::new(broker, call.caller(), args.stderr_handle),
                collected: Vec::new(),
            },
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
        let mut exited: Option<(ExitStatus, Instant)> = None;
        loop {
            self.take_messages(call)?;
            self.feed_stdin(call);
            if exited.is_none() {
                if let Some(status) = child.try_wait().map_err(|e| OpError::io("wait", &e))? {
                    exited = Some((status, Instant::now() + LINGER));
                    self.stdin = None;
                }
            }
            let now = Instant::now();
            if let Some((_, linger)) = exited {
                let pipes_open = self.out.file.is_some() || self.err.file.is_some();
                if !pipes_open || now >= linger {
                    break;
                }
            }
            if exited.is_none() {
                if let Some(d) = deadline.filter(|&d| now >= d && !timed_out) {
                    log::debug!("timeout after {:?}; SIGTERM to group {pgid}", d.duration_since(now));
                    timed_out = true;
                    let _ = sys::killpg(pgid, libc::SIGTERM);
                    kill_at = Some(now + KILL_GRACE);
                }
                if kill_at.is_some_and(|k| now >= k) {
                    let _ = sys::killpg(pgid, libc::SIGKILL);
                    kill_at = None;
                }
            }
            self.wait(args.stream, exited.is_some(), deadline.filter(|_| !timed_out).or(kill_at))?;
        }
        let Some((status, _)) = exited else {
            return Err(OpError::new("io", "lost track of the command"));
        };
        self.out.file = None;
        self.err.file = None;
        if !args.stream {
            self.flush_collected(call)?;
        }
        ok(&ExecReply {
            status: status.code(),
            signal: status.signal(),
            timed_out,
            stdout_len: self.out.flow.sent(),
            stderr_len: self.err.flow.sent(),
        })
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
            } else if let Ok(Control { ack: Some(a), .. }) = body::from_json(&msg.body, "ack") {
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

    /// Poll the command's pipes and our mailbox until something happens or
    /// a tick passes (exit is noticed by `try_wait` on each turn).
    fn wait(&mut self, stream: bool, exited: bool, deadline: Option<Instant>) -> Result<(), OpError> {
        let credit = !stream || self.in_flight() < WINDOW;
        let fd = |f: &Option<File>, on: bool| match f {
            Some(f) if on => f.as_raw_fd(),
            _ => -1,
        };
        let pipes_open = self.out.file.is_some() || self.err.file.is_some();
        let mut tick = if pipes_open && !exited { Duration::from_millis(50) } else { Duration::from_millis(2) };
        if let Some(d) = deadline {
            tick = tick.min(d.saturating_duration_since(Instant::now()));
        }
        let waker = self.mb.waker().map_or(-1, |w| w.as_raw_fd());
        let mut fds = [
            pollfd(fd(&self.out.file, credit), libc::POLLIN),
            pollfd(fd(&self.err.file, credit), libc::POLLIN),
            pollfd(fd(&self.stdin, !self.stdin_queue.is_empty()), libc::POLLOUT),
            pollfd(waker, libc::POLLIN),
        ];
        sys::poll(&mut fds, tick.as_millis() as i32).map_err(|e| OpError::io("poll", &e))?;
        let [o, e, _, _] = fds;
        if o.revents != 0 {
            read_output(&mut self.out, stream);
        }
        if e.revents != 0 {
            read_output(&mut self.err, stream);
        }
        Ok(())
    }

    /// Collected mode: everything goes out after the command has exited,
    /// still in chunks and still within the window.
    fn flush_collected(&mut self, call: &Call) -> Result<(), OpError> {
        for which in [0, 1] {
            let data = std::mem::take(if which == 0 { &mut self.out.collected } else { &mut self.err.collected });
            for chunk in data.chunks(CHUNK_SIZE) {
                while self.in_flight() >= WINDOW {
                    let msg = next_message(&self.mb, "send output")?;
                    if let Ok(Control { ack: Some(a), .. }) = body::from_json(&msg.body, "ack") {
                        self.acked = self.acked.max(a);
                    }
                }
                let flow = if which == 0 { &mut self.out.flow } else { &mut self.err.flow };
                flow.send(chunk, false);
            }
        }
        let _ = call;
        Ok(())
    }
}

/// Read one chunk of output: send it (streaming) or keep it (collecting).
fn read_output(out: &mut Output, stream: bool) {
    let Some(file) = out.file.as_ref() else { return };
    let mut buf = vec![0u8; CHUNK_SIZE];
    match (&*file).read(&mut buf) {
        Ok(0) => out.file = None,
        Ok(n) => {
            let data = buf.get(..n).unwrap_or_default();
            if stream {
                out.flow.send(data, false);
            } else {
                out.collected.extend_from_slice(data);
            }
        }
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
        Err(_) => out.file = None,
    }
}

fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}
