//! A context: one agent in the tree, and the calls you can make on it.

use crate::error::{Error, Result};
use crate::hop::Hop;
use crate::router::{deadline_after, millis, Router, MAX_WAIT};
use miniserde::{Deserialize, Serialize};
use spore_agent::flow::{ack, acked, Outflow};
use spore_agent::{Broker, Mailbox, RecvError};
use spore_protocol::body::{
    self, ConnectReply, Control, Empty, ExecArgs, ExecReply, InfoReply, ListReply, MaybeError, MkdirArgs, PathArgs,
    ReadArgs, ReadLinkReply, ReadReply, RemoveArgs, StatArgs, StatReply, SymlinkArgs, WriteArgs, WriteReply,
    CHUNK_SIZE, MAX_SCRIPT, SCRIPT_PATH,
};
use spore_protocol::MASTER_ID;
use spore_protocol::{handle, Message};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Without a deadline of its own, a call waits this long at most. A lost
/// context fails the call at once; this bounds a context that is alive
/// but never answers.
const FOREVER: Duration = MAX_WAIT;

/// How much of each of stdout and stderr [`Context::exec`] keeps unless
/// [`Command::output_limit`] says otherwise: 64 MiB.
pub const DEFAULT_OUTPUT_LIMIT: usize = 64 << 20;

/// How long past a command's own timeout the master waits for the remote
/// to report it killed (SIGTERM, 2 s, SIGKILL, then the reply's trip back).
const EXEC_TIMEOUT_SLACK: Duration = Duration::from_secs(5);

/// How long, after a call was cancelled before the remote named its
/// stream, a thread of its own waits for it (the remote names it as soon as
/// the work started) to tell the remote to stop: the agent's own bound on
/// a command's start is 10 s.
const CANCEL_START_WAIT: Duration = Duration::from_secs(12);

/// Why a cancelled call's stream is abandoned (the remote logs it).
const CANCELLED: &str = "the call was cancelled";

/// A cancel token: [`Cancel::cancel`] makes the calls run under it (see
/// [`Command::cancel`]) give up at once with [`Error::Cancelled`], and the
/// remote kill what they started. Cheap to clone; every clone is the same
/// token. Calls on the same context under another token (or none) are
/// not touched.
#[derive(Clone, Default)]
pub struct Cancel(Arc<CancelState>);

#[derive(Default)]
struct CancelState {
    cancelled: AtomicBool,
    /// The mailboxes of the calls waiting under the token, to wake when it
    /// is cancelled: (their broker, their handle).
    waiting: Mutex<Vec<(Broker, u32)>>,
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel").field("cancelled", &self.is_cancelled()).finish()
    }
}

impl Cancel {
    /// A token not cancelled yet.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Cancel every call under this token, now and later (it can't be
    /// reset: make a new token for the next run). The calls waiting are
    /// woken at once. Takes a lock: call it from a thread (as the CLI's
    /// signal thread does), never from inside a signal handler.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        for (broker, handle) in std::mem::take(&mut *lock(&self.0.waiting)) {
            // An empty control message to the call's own mailbox, from the
            // master to itself: the call wakes, ignores it and sees the
            // token. One for a call that just ended finds no mailbox and is
            // dropped.
            broker.send(Message::new(broker.id(), handle, b"{}".to_vec()));
        }
    }

    /// Has [`Cancel::cancel`] been called (on any clone)?
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Wake the mailbox `handle` when cancelled, until the guard drops.
    /// Registered before the call first looks at the token, so a cancel
    /// either finds it here or is seen by that look.
    fn watch(&self, broker: &Broker, handle: u32) -> Watch {
        lock(&self.0.waiting).push((broker.clone(), handle));
        Watch { cancel: self.clone(), handle }
    }
}

/// A mailbox [`Cancel::watch`] wakes; unregistered when dropped.
struct Watch {
    cancel: Cancel,
    handle: u32,
}

impl Drop for Watch {
    fn drop(&mut self) {
        lock(&self.cancel.0.waiting).retain(|(_, h)| *h != self.handle);
    }
}

/// Contexts are started from the router (those from other contexts, by
/// [`Context::connect`]).
impl Router {
    /// Start an agent as a local child process (over a pipe pair, through
    /// the same bootstrap script ssh uses).
    pub fn local(&self) -> Result<Context> {
        self.connect(&Hop::Local, "local")
    }

    /// Start an agent at the end of `hop` from this machine: a local child,
    /// ssh, sudo, a container. `name` is its path in the tree.
    pub fn connect(&self, hop: &Hop, name: &str) -> Result<Context> {
        self.connect_with(hop, name, self.inner.opts.become_password.as_deref(), self.inner.opts.connect_timeout)
    }

    /// [`Router::connect`] with this become password (for a `sudo`, `su`
    /// or `doas` hop) and connect timeout instead of the router's
    /// [`Options::become_password`](crate::Options) and
    /// [`Options::connect_timeout`](crate::Options) (at most
    /// [`MAX_WAIT`](crate::router::MAX_WAIT)): for a caller whose runs each
    /// have their own, as a session's do.
    pub fn connect_with(
        &self,
        hop: &Hop,
        name: &str,
        become_password: Option<&str>,
        connect_timeout: Duration,
    ) -> Result<Context> {
        if self.inner.shut.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        let timeout = connect_timeout.min(MAX_WAIT);
        let id = self.allocate_child_id(MASTER_ID, name)?;
        let args = self.agent_args(id, name, vec![MASTER_ID], self.inner.opts.shutdown_grace);
        let mut how = hop.connect_args(become_password);
        how.connect_timeout_ms = millis(timeout);
        how.images = self.images_for_connect(false);
        let images = &self.inner.images;
        // On this host the master checks the cache itself and runs a
        // verified agent directly; else (and for every other method) the
        // bootstrap script does.
        let cached = matches!(hop, Hop::Local).then(|| crate::local_cache::find(images)).flatten();
        // The same handshake either way, but for the script's marker.
        let (command, handshake): (_, fn(_, _, _, _, _, _) -> _) = match &cached {
            Some((file, path)) => {
                log::debug!("{name}: the agent cached at {}, checked here, runs without the script", path.display());
                let mut command = spore_agent::spawn::Command::new(format!("/proc/self/fd/{}", file.as_raw_fd()));
                command.arg0(path).args(args.to_argv());
                (Ok(command), spore_agent::handshake::connect_direct)
            }
            None => {
                (spore_agent::bootstrap::method_command(&how, images, &args), spore_agent::handshake::connect_noted)
            }
        };
        let started = command.map_err(|e| Error::Connect { target: name.to_string(), cause: e }).and_then(|command| {
            handshake(command, &how, images, &args, timeout, &self.inner.connecting)
                .map_err(|e| Error::Connect { target: name.to_string(), cause: e.to_string() })
        });
        drop(cached);
        let connected = started.inspect_err(|_| self.inner.broker.forget_child_id(id))?;
        log::debug!(
            "connected {name} (context {id}, pid {}, {})",
            connected.hello.pid,
            if connected.uploaded { "agent uploaded" } else { "agent cached" }
        );
        self.inner.broker.add_stream(connected.stream);
        Ok(Context::new(self.clone(), id, name.to_string(), connected.image_bytes))
    }
}

/// A remote agent. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    router: Router,
    id: u32,
    name: Arc<str>,
    /// Bytes of agent image its connect sent (0: the target's cache hit).
    image_bytes: u64,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("id", &self.id).field("name", &self.name).finish()
    }
}

/// A call in flight: the async form. [`Pending::wait`] blocks for the reply.
pub struct Pending {
    mb: Mailbox,
    context: Arc<str>,
}

impl Pending {
    /// Wait for the final reply.
    pub fn wait(self) -> Result<Message> {
        self.wait_deadline(deadline_after(FOREVER))
    }

    /// Wait for the final reply until `deadline`.
    pub fn wait_deadline(self, deadline: Instant) -> Result<Message> {
        loop {
            let msg = recv(&self.mb, &self.context, deadline, "the reply")?;
            if msg.is_end() {
                return Ok(msg);
            }
        }
    }
}

fn recv(mb: &Mailbox, context: &str, deadline: Instant, what: &str) -> Result<Message> {
    match mb.recv_deadline(deadline) {
        Ok(msg) if msg.is_dead() => Err(dead(context, &msg)),
        Ok(msg) => Ok(msg),
        Err(RecvError::Timeout) => Err(Error::Timeout { context: context.to_string(), what: what.to_string() }),
        Err(RecvError::Closed) => Err(Error::ShuttingDown),
    }
}

fn dead(context: &str, msg: &Message) -> Error {
    let reason = String::from_utf8_lossy(&msg.body).into_owned();
    match reason.strip_prefix("disconnected: ") {
        Some(r) => Error::Disconnected { context: context.to_string(), reason: r.to_string() },
        None => Error::Dead { context: context.to_string(), reason },
    }
}

/// What to run with [`Context::exec`].
#[derive(Clone, Debug)]
pub struct Command {
    /// Program and arguments; the program is looked up in the remote `PATH`.
    pub argv: Vec<String>,
    /// Variables to set in the command's environment.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Kill the command's process group after this long. At most
    /// [`MAX_WAIT`] (a year): a longer one, `Duration::MAX` included, is
    /// taken as that.
    pub timeout: Option<Duration>,
    /// [`Context::exec`] keeps at most this many bytes of stdout, and as
    /// many of stderr (default [`DEFAULT_OUTPUT_LIMIT`], 64 MiB). Past it the
    /// command runs on to its end, the rest of its output is read and
    /// dropped, and [`Output::truncated`] is set. [`Context::exec_streaming`]
    /// keeps nothing and ignores it.
    pub output_limit: usize,
    /// A script the command finds open as its fd 3 (`/dev/fd/3`), in an
    /// anonymous file on the target: see [`Command::script`], which sets it
    /// and the argv that reads it.
    pub script: Option<String>,
    /// Give up on the call once this token is cancelled: see
    /// [`Command::cancel`].
    pub cancel: Option<Cancel>,
}

impl Default for Command {
    fn default() -> Self {
        Command {
            argv: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            timeout: None,
            output_limit: DEFAULT_OUTPUT_LIMIT,
            script: None,
            cancel: None,
        }
    }
}

impl Command {
    /// A command line.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(argv: I) -> Command {
        Command { argv: argv.into_iter().map(Into::into).collect(), ..Default::default() }
    }

    /// Run a local script on the target without leaving a file there:
    /// `source` is the whole script, `args` its arguments.
    ///
    /// Its `#!` line names the interpreter, read as Linux reads it: a path
    /// and at most one argument (the rest of the line, spaces and all), so
    /// `#!/bin/bash -e`, `#!/usr/bin/perl` and `#!/usr/bin/env python3`
    /// work; without one it is `/bin/sh`. The command is
    /// `INTERPRETER [ARG] /dev/fd/3 ARGS...`: the agent puts the script in
    /// an anonymous file (a sealed memfd; on kernels before 3.17 an
    /// `O_TMPFILE` in `/dev/shm`, which never has a name) that the command
    /// gets as its fd 3, so nothing is left on the target, even if the
    /// agent is killed, and the command's stdin stays its own. So `$0` (in
    /// sh; `sys.argv[0]` in Python) is `/dev/fd/3`, and what the script
    /// starts inherits fd 3 unless it closes it (`exec 3<&-`). An
    /// interpreter that can't be run makes the command end with 127 (126:
    /// there but not executable), as in a shell, with a line on its stderr
    /// naming the target and the interpreter (the agent answers an error of
    /// kind `no_interpreter` or `bad_interpreter`; [`Context::exec`] and
    /// [`Context::exec_streaming`] turn it into that).
    ///
    /// A [`Error::Usage`] when the script is not UTF-8 (it travels as JSON
    /// text; the error says where), is over [`MAX_SCRIPT`] (4 MiB), or has
    /// a `#!` line that names no interpreter or is longer than Linux reads
    /// (255 bytes).
    pub fn script<I: IntoIterator<Item = S>, S: Into<String>>(source: &[u8], args: I) -> Result<Command> {
        if source.len() > MAX_SCRIPT {
            return Err(Error::Usage(format!(
                "the script is {} bytes: at most {MAX_SCRIPT} (4 MiB) travel in a call; copy a larger one with put",
                source.len()
            )));
        }
        let text = std::str::from_utf8(source).map_err(|e| {
            let at = e.valid_up_to();
            let line = source.get(..at).unwrap_or_default().iter().filter(|&&b| b == b'\n').count() + 1;
            Error::Usage(format!(
                "the script is not UTF-8 (line {line}, byte {}): spore sends scripts as text; convert it (iconv -t UTF-8)",
                at + 1
            ))
        })?;
        let (interpreter, arg) = interpreter(text).map_err(Error::Usage)?;
        let argv = [interpreter].into_iter().chain(arg).chain([SCRIPT_PATH.to_string()]);
        let argv = argv.chain(args.into_iter().map(Into::into)).collect();
        Ok(Command { argv, script: Some(text.to_string()), ..Default::default() })
    }

    /// Set the timeout.
    pub fn timeout(mut self, t: Duration) -> Command {
        self.timeout = Some(t);
        self
    }

    /// Set how much of each output stream [`Context::exec`] keeps.
    pub fn output_limit(mut self, bytes: usize) -> Command {
        self.output_limit = bytes;
        self
    }

    /// Set an environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Command {
        self.env.insert(k.to_string(), v.to_string());
        self
    }

    /// Set the working directory.
    pub fn cwd(mut self, dir: &str) -> Command {
        self.cwd = Some(dir.to_string());
        self
    }

    /// Run under `token`: once it is cancelled, [`Context::exec`] and
    /// [`Context::exec_streaming`] return [`Error::Cancelled`] at once
    /// (the command printing or not), and the remote kills the command's
    /// whole process tree, as when the caller stops reading its output. A
    /// command cancelled before the remote started it is killed too: a
    /// thread waits (bounded) for the remote to start it, and then tells
    /// it.
    pub fn cancel(mut self, token: &Cancel) -> Command {
        self.cancel = Some(token.clone());
        self
    }
}

/// The longest `#!` line Linux reads (`BINPRM_BUF_SIZE`, 256 bytes, with
/// its newline).
const MAX_SHEBANG: usize = 255;

/// A script's interpreter and its optional argument, from its `#!` line as
/// Linux's `binfmt_script` reads it: after `#!` and any spaces or tabs, the
/// interpreter runs to the next space, tab or NUL; the argument, if any, is
/// the rest of the line after spaces and tabs, without trailing ones (up to
/// a NUL). Nothing else is stripped: a DOS line end (`\r`) stays part of
/// the name, which is then not found, as on the target itself. No `#!`:
/// `/bin/sh`.
fn interpreter(text: &str) -> std::result::Result<(String, Option<String>), String> {
    let Some(rest) = text.strip_prefix("#!") else { return Ok(("/bin/sh".into(), None)) };
    let line = rest.split('\n').next().unwrap_or_default();
    if line.len() + 2 > MAX_SHEBANG {
        return Err(format!("the script's #! line is over {MAX_SHEBANG} bytes, more than Linux reads"));
    }
    let blank: &[char] = &[' ', '\t'];
    let line = line.trim_matches(blank);
    let end = line.find([' ', '\t', '\0']).unwrap_or(line.len());
    let (name, after) = line.split_at(end);
    if name.is_empty() {
        return Err("the script's #! line names no interpreter".into());
    }
    let arg = match after.strip_prefix(blank) {
        Some(arg) => {
            let arg = arg.trim_start_matches(blank);
            Some(arg.split('\0').next().unwrap_or_default()).filter(|a| !a.is_empty())
        }
        // The name ended at a NUL (or the line did): no argument.
        None => None,
    };
    Ok((name.to_string(), arg.map(str::to_string)))
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal, if one killed it.
    pub signal: Option<i32>,
    /// Its timeout expired and spore killed it.
    pub timed_out: bool,
}

impl ExitStatus {
    /// Exited with 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// As a shell reports it: the code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            _ => 255,
        }
    }
}

/// A finished command with its collected output.
#[derive(Clone, Debug)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// What it wrote to stdout: all of it, or the first
    /// [`Command::output_limit`] bytes.
    pub stdout: Vec<u8>,
    /// What it wrote to stderr, likewise.
    pub stderr: Vec<u8>,
    /// stdout or stderr (or both) wrote more than the limit, and what is
    /// here is only its first [`Command::output_limit`] bytes.
    pub truncated: bool,
}

/// Which output a streamed chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// stdout
    Stdout,
    /// stderr
    Stderr,
}

/// Credit for the stdin feeder: acks from the remote, and whether to stop.
#[derive(Default)]
struct Credit {
    acked: u64,
    stop: bool,
}

impl Context {
    pub(crate) fn new(router: Router, id: u32, name: String, image_bytes: u64) -> Context {
        Context { router, id, name: name.into(), image_bytes }
    }

    /// The context id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The context's path in the tree, e.g. `local/local`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The agent image had to be uploaded to start this context.
    pub fn uploaded(&self) -> bool {
        self.image_bytes > 0
    }

    /// Bytes of agent image its connect sent over its last hop: the gzip
    /// form where the target can unpack it; 0 when the target's cache hit.
    pub fn image_bytes(&self) -> u64 {
        self.image_bytes
    }

    /// Bytes the master has written so far to the connection this context
    /// is reached through (its own, or that of its first hop), headers
    /// included: what crossed the master's link to it.
    pub fn link_bytes_written(&self) -> u64 {
        self.router.broker().bytes_written_toward(self.id).unwrap_or(0)
    }

    /// Is the context still there, as far as this master knows, without a
    /// round trip: false once the router shut down, or the master's route
    /// to it is gone: its stream (or a stream on the way to it) closed, its
    /// parent reported it gone, or keepalive declared it dead. True is no
    /// promise that the next call succeeds (the host may have died a
    /// moment ago, unnoticed until keepalive's next verdict).
    pub fn is_connected(&self) -> bool {
        !self.router.is_shut_down() && self.router.broker().is_below(self.id)
    }

    /// Tell the agent to shut down, its subtree with it, and return at once
    /// (it ends within its shutdown bound). Only a context's parent may
    /// stop it: a first hop gets the master's own `SHUTDOWN`; any other is
    /// stopped by its parent, asked with `SHUTDOWN_CHILD`. Nothing if it
    /// is gone already.
    pub(crate) fn shutdown(&self) {
        let msg = match self.router.broker().parent_of(self.id) {
            None => return,
            Some(MASTER_ID) => Message::new(self.id, handle::SHUTDOWN, Vec::new()),
            Some(parent) => Message::new(parent, handle::SHUTDOWN_CHILD, body::to_json(&self.id)),
        };
        log::debug!("{}: shutting it down", self.name);
        self.router.send(msg);
    }

    /// The router this context belongs to.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Send a call (a JSON body with an `op` field) and return at once.
    pub fn call_async(&self, body: Vec<u8>) -> Pending {
        let mb = self.router.broker().mailbox(Some(self.id));
        self.send_call(&mb, body);
        Pending { mb, context: self.name.clone() }
    }

    fn send_call(&self, mb: &Mailbox, body: Vec<u8>) {
        let mut msg = Message::new(self.id, handle::CALL_FUNCTION, body);
        msg.header.reply_to = mb.handle;
        self.router.send(msg);
    }

    /// Send a call and decode its result as `T`.
    pub fn call<A: Serialize, T: Deserialize>(&self, args: &A) -> Result<T> {
        let msg = self.call_async(body::to_json(args)).wait()?;
        self.result(&msg)
    }

    /// Turn a final reply into `T` or the remote's error.
    fn result<T: Deserialize>(&self, msg: &Message) -> Result<T> {
        if let Ok(MaybeError { error: Some(message), kind }) = body::from_json(&msg.body, "reply") {
            return Err(Error::Remote { context: self.name.to_string(), kind: kind.unwrap_or_default(), message });
        }
        body::from_json(&msg.body, "the reply")
            .map_err(|e| Error::Protocol { context: self.name.to_string(), message: e.to_string() })
    }

    /// Is it alive and routable? Returns the round-trip time.
    pub fn ping(&self) -> Result<Duration> {
        let start = Instant::now();
        let _: Empty = self.call(&OpOnly { op: "ping".into() })?;
        Ok(start.elapsed())
    }

    /// Host name, arch, kernel, uid, pid and version of the agent.
    pub fn info(&self) -> Result<InfoReply> {
        self.call(&OpOnly { op: "info".into() })
    }

    /// Metadata of a remote path.
    pub fn stat(&self, path: &str, follow: bool) -> Result<StatReply> {
        self.call(&StatArgs { op: "stat".into(), path: path.into(), follow })
    }

    /// Entries of a remote directory, sorted by name.
    pub fn list_dir(&self, path: &str) -> Result<ListReply> {
        self.call(&PathArgs { op: "list_dir".into(), path: path.into() })
    }

    /// Remove a remote file, or a directory (`recursive` for a tree).
    pub fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        let _: Empty = self.call(&RemoveArgs { op: "remove".into(), path: path.into(), recursive })?;
        Ok(())
    }

    /// Make a remote directory (`parents`: and its missing parents), or
    /// take the one there; either way it ends with exactly `mode`. A
    /// symlink there is an error, never followed.
    pub fn mkdir(&self, path: &str, mode: u32, parents: bool) -> Result<()> {
        let _: Empty = self.call(&MkdirArgs { op: "mkdir".into(), path: path.into(), mode, parents })?;
        Ok(())
    }

    /// Make a remote symlink `path` -> `target`, atomically: made at a
    /// temporary name beside it, then renamed over what is there.
    pub fn symlink(&self, path: &str, target: &str) -> Result<()> {
        let _: Empty = self.call(&SymlinkArgs { op: "symlink".into(), path: path.into(), target: target.into() })?;
        Ok(())
    }

    /// A remote symlink's target (marked `lossy` if it is not UTF-8).
    pub fn read_link(&self, path: &str) -> Result<ReadLinkReply> {
        self.call(&PathArgs { op: "read_link".into(), path: path.into() })
    }

    /// Start a child context from this one, through `hop` (`local`,
    /// `sudo:postgres`, `db1`, `docker:web1`, ...): `local/local` is a
    /// two-level tree. The new context's name is this one's plus the hop.
    pub fn connect(&self, hop: &str) -> Result<Context> {
        let parsed = Hop::parse(hop)?;
        self.connect_hop(&parsed, &format!("{}/{hop}", self.name))
    }

    /// Start a child context through a parsed hop, named `name`.
    pub fn connect_hop(&self, hop: &Hop, name: &str) -> Result<Context> {
        let opts = self.router.options();
        self.connect_hop_with(hop, name, opts.become_password.as_deref(), opts.connect_timeout)
    }

    /// [`Context::connect_hop`] with this become password and connect
    /// timeout instead of the router's (see [`Router::connect_with`]).
    pub fn connect_hop_with(
        &self,
        hop: &Hop,
        name: &str,
        become_password: Option<&str>,
        connect_timeout: Duration,
    ) -> Result<Context> {
        let id = self.router.allocate_child_id(self.id, name)?;
        let timeout = connect_timeout.min(MAX_WAIT);
        let mut args = hop.connect_args(become_password);
        args.context_id = id;
        args.name = name.to_string();
        args.connect_timeout_ms = millis(timeout);
        args.images = self.router.images_for_connect(true);
        let pending = self.call_async(body::to_json(&args));
        drop(args);
        let reply: ConnectReply = pending
            .wait_deadline(deadline_after(timeout.saturating_add(Duration::from_secs(5))))
            .and_then(|msg| self.result(&msg))
            .map_err(|e| match e {
                Error::Remote { message, .. } => {
                    let cause = message.strip_prefix(&format!("connect {name}: ")).unwrap_or(&message).to_string();
                    Error::Connect { target: name.to_string(), cause }
                }
                other => other,
            })
            // A connect that failed (or that we gave up on) never adds its id.
            .inspect_err(|_| self.router.broker().forget_child_id(id))?;
        log::debug!("connected {name} (context {id}, pid {})", reply.hello.pid);
        Ok(Context::new(self.router.clone(), id, name.to_string(), reply.image_bytes))
    }

    /// Run a command and collect its output: up to
    /// [`Command::output_limit`] bytes of each stream; past that the
    /// command runs to its end, the rest is read (and acknowledged, so the
    /// remote never stalls) but dropped, and [`Output::truncated`] is set.
    pub fn exec(&self, cmd: &Command) -> Result<Output> {
        let limit = cmd.output_limit;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut truncated = false;
        let status = self.exec_inner(cmd, None, false, &mut |which, data| {
            let buf = match which {
                Stream::Stdout => &mut stdout,
                Stream::Stderr => &mut stderr,
            };
            let room = limit.saturating_sub(buf.len());
            let kept = data.get(..room).unwrap_or(data);
            truncated |= kept.len() < data.len();
            if buf.capacity() - buf.len() < kept.len() {
                // Grow by doubling, but never past the limit.
                let want = buf.capacity().max(kept.len()).min(room);
                buf.reserve_exact(want);
            }
            buf.extend_from_slice(kept);
            Ok(())
        })?;
        Ok(Output { status, stdout, stderr, truncated })
    }

    /// Run a command, feeding it `stdin` (if any) and handing its output to
    /// `sink` chunk by chunk as it is produced. If `sink` fails (a closed
    /// pipe), the call is abandoned: the remote kills the command's group,
    /// and the error is returned as `Error::Local`.
    pub fn exec_streaming(
        &self,
        cmd: &Command,
        stdin: Option<Box<dyn Read + Send>>,
        sink: &mut dyn FnMut(Stream, &[u8]) -> std::io::Result<()>,
    ) -> Result<ExitStatus> {
        self.exec_inner(cmd, stdin, true, sink)
    }

    fn exec_inner(
        &self,
        cmd: &Command,
        stdin: Option<Box<dyn Read + Send>>,
        stream: bool,
        sink: &mut dyn FnMut(Stream, &[u8]) -> std::io::Result<()>,
    ) -> Result<ExitStatus> {
        let timeout = cmd.timeout.map(|t| t.min(MAX_WAIT));
        let mut mb = self.router.broker().mailbox(Some(self.id));
        let err_handle = self.router.broker().alias(&mut mb);
        let args = ExecArgs {
            op: "exec".into(),
            argv: cmd.argv.clone(),
            env: if cmd.env.is_empty() { None } else { Some(cmd.env.clone()) },
            cwd: cmd.cwd.clone(),
            stdin: stdin.is_some(),
            timeout_ms: timeout.map(millis),
            stream,
            stderr_handle: err_handle,
            script: cmd.script.clone(),
        };
        let call = body::to_json(&args);
        drop(args);
        let max = self.router.options().max_message;
        if call.len() > max as usize {
            return Err(Error::Usage(format!(
                "{}: the command's call is {} bytes, over the largest message ({max} bytes, Options::max_message)",
                self.name,
                call.len()
            )));
        }
        let _watch = cmd.cancel.as_ref().map(|c| c.watch(self.router.broker(), mb.handle));
        self.send_call(&mb, call);
        let credit = Arc::new((Mutex::new(Credit::default()), Condvar::new()));
        let mut stdin = stdin;
        let mut consumed: u64 = 0;
        let mut peer_stream: Option<u32> = None;
        // The remote enforces the command's timeout; if the remote itself
        // is stuck (a paused host), we stop waiting a little after it.
        let deadline = deadline_after(timeout.map_or(FOREVER, |t| t.saturating_add(EXEC_TIMEOUT_SLACK)));
        let result = loop {
            let msg = match self.recv_or_cancel(&mb, deadline, "the command", cmd.cancel.as_ref()) {
                Ok(Some(m)) => m,
                Ok(None) => break Err(self.cancelled(mb, peer_stream, "the command")),
                Err(e) => break Err(e),
            };
            if msg.is_binary() {
                let which = if msg.header.handle == err_handle { Stream::Stderr } else { Stream::Stdout };
                if let Err(e) = sink(which, &msg.body) {
                    if let Some(s) = peer_stream {
                        self.abandon(s, &format!("the caller stopped reading: {e}"));
                    }
                    break Err(Error::Local { what: "write the command's output".into(), source: e });
                }
                consumed += msg.body.len() as u64;
                if let Some(s) = peer_stream {
                    ack(self.router.broker(), self.id, s, consumed);
                }
                continue;
            }
            if msg.is_end() {
                break self.result::<ExecReply>(&msg);
            }
            match body::from_json::<Control>(&msg.body, "control") {
                Ok(Control { stream: Some(s), .. }) => {
                    peer_stream = Some(s);
                    if let Some(reader) = stdin.take() {
                        self.spawn_stdin_feeder(reader, s, credit.clone());
                    }
                }
                Ok(Control { ack: Some(a), .. }) => {
                    let (m, cv) = &*credit;
                    lock(m).acked = a;
                    cv.notify_all();
                }
                _ => {}
            }
        };
        {
            let (m, cv) = &*credit;
            lock(m).stop = true;
            cv.notify_all();
        }
        let reply = match result {
            Err(Error::Remote { kind, message, .. })
                if cmd.script.is_some() && matches!(kind.as_str(), "no_interpreter" | "bad_interpreter") =>
            {
                return self.interpreter_failed(cmd, &kind, &message, sink);
            }
            other => other?,
        };
        Ok(ExitStatus { code: reply.status, signal: reply.signal, timed_out: reply.timed_out })
    }

    /// A script's interpreter could not be run: end as a shell does, 127
    /// when it is not there (`no_interpreter`), else 126, with a line on
    /// stderr naming this target and the interpreter.
    fn interpreter_failed(
        &self,
        cmd: &Command,
        kind: &str,
        why: &str,
        sink: &mut dyn FnMut(Stream, &[u8]) -> std::io::Result<()>,
    ) -> Result<ExitStatus> {
        let interpreter = cmd.argv.first().map_or("", String::as_str);
        // The agent's message starts with the command line; this line
        // names the interpreter instead.
        let why = why.strip_prefix(&format!("exec {}: ", cmd.argv.join(" "))).unwrap_or(why);
        let line = format!("spore: {}: can't run the script's interpreter {interpreter:?}: {why}\n", self.name);
        sink(Stream::Stderr, line.as_bytes())
            .map_err(|e| Error::Local { what: "write the command's output".into(), source: e })?;
        let code = if kind == "no_interpreter" { 127 } else { 126 };
        Ok(ExitStatus { code: Some(code), signal: None, timed_out: false })
    }

    /// Feed stdin from a thread of its own: reading the local source may
    /// block, and must not hold up the output.
    fn spawn_stdin_feeder(
        &self,
        mut reader: Box<dyn Read + Send>,
        peer_handle: u32,
        credit: Arc<(Mutex<Credit>, Condvar)>,
    ) {
        let broker = self.router.broker().clone();
        let id = self.id;
        let spawned = std::thread::Builder::new().name("spore-stdin".into()).spawn(move || {
            let mut out = Outflow::new(broker, id, peer_handle);
            let mut buf = vec![0u8; CHUNK_SIZE];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::warn!("reading stdin: {e}");
                        0
                    }
                };
                {
                    let (m, cv) = &*credit;
                    let mut c = lock(m);
                    loop {
                        out.on_ack(c.acked);
                        if c.stop || out.has_credit() {
                            break;
                        }
                        c = cv.wait_timeout(c, Duration::from_secs(1)).map_or_else(|p| p.into_inner().0, |r| r.0);
                    }
                    if c.stop {
                        return;
                    }
                }
                out.send(buf.get(..n).unwrap_or_default(), n == 0);
                if n == 0 {
                    return;
                }
            }
        });
        if let Err(e) = spawned {
            log::error!("can't start the stdin thread: {e}");
        }
    }

    /// Stream a remote file into `sink`; returns the bytes read.
    pub fn read_file(&self, path: &str, sink: &mut dyn Write) -> Result<u64> {
        self.download(path, sink).map(|r| r.size)
    }

    /// Stream a remote file into `sink`; returns its size and mode.
    pub fn download(&self, path: &str, sink: &mut dyn Write) -> Result<ReadReply> {
        self.download_with(path, None, sink, None)
    }

    /// [`Context::download`] under `cancel`: once it is cancelled the call
    /// returns [`Error::Cancelled`] (what `sink` got stays there) and the
    /// remote stops reading.
    pub fn download_cancellable(&self, path: &str, sink: &mut dyn Write, cancel: &Cancel) -> Result<ReadReply> {
        self.download_with(path, None, sink, Some(cancel))
    }

    /// [`Context::download`], but a symlink (never followed) or anything
    /// other than a regular file is an error: for tree copies.
    pub fn download_nofollow(&self, path: &str, sink: &mut dyn Write) -> Result<ReadReply> {
        self.download_with(path, Some(true), sink, None)
    }

    fn download_with(
        &self,
        path: &str,
        nofollow: Option<bool>,
        sink: &mut dyn Write,
        cancel: Option<&Cancel>,
    ) -> Result<ReadReply> {
        let mb = self.router.broker().mailbox(Some(self.id));
        let _watch = cancel.map(|c| c.watch(self.router.broker(), mb.handle));
        self.send_call(&mb, body::to_json(&ReadArgs { op: "read_file".into(), path: path.into(), nofollow }));
        let mut peer_stream = None;
        let mut consumed = 0u64;
        loop {
            let Some(msg) = self.recv_or_cancel(&mb, deadline_after(FOREVER), "file data", cancel)? else {
                return Err(self.cancelled(mb, peer_stream, "file data"));
            };
            if msg.is_binary() {
                if let Err(e) = sink.write_all(&msg.body) {
                    if let Some(s) = peer_stream {
                        self.abandon(s, &format!("the download failed here: {e}"));
                    }
                    return Err(Error::Local { what: "write the download".into(), source: e });
                }
                consumed += msg.body.len() as u64;
                if let Some(s) = peer_stream {
                    ack(self.router.broker(), self.id, s, consumed);
                }
            } else if msg.is_end() {
                let reply: ReadReply = self.result(&msg)?;
                if reply.size != consumed {
                    return Err(Error::Protocol {
                        context: self.name.to_string(),
                        message: format!("read {path}: {consumed} bytes arrived of {}", reply.size),
                    });
                }
                return Ok(reply);
            } else if let Ok(Control { stream: Some(s), .. }) = body::from_json(&msg.body, "control") {
                peer_stream = Some(s);
            }
        }
    }

    /// Stream `source` into a remote file (written to a temporary name,
    /// then renamed into place); returns the bytes written.
    pub fn write_file(&self, path: &str, source: &mut dyn Read, mode: Option<u32>) -> Result<u64> {
        self.write_file_with(path, source, mode, None)
    }

    /// [`Context::write_file`] under `cancel`: once it is cancelled the
    /// call returns [`Error::Cancelled`] and the remote removes its
    /// temporary file (a file already renamed into place stays). A read
    /// of `source` that blocks is waited for: the token is looked at
    /// between reads.
    pub fn write_file_cancellable(
        &self,
        path: &str,
        source: &mut dyn Read,
        mode: Option<u32>,
        cancel: &Cancel,
    ) -> Result<u64> {
        self.write_file_with(path, source, mode, Some(cancel))
    }

    fn write_file_with(
        &self,
        path: &str,
        source: &mut dyn Read,
        mode: Option<u32>,
        cancel: Option<&Cancel>,
    ) -> Result<u64> {
        let mb = self.router.broker().mailbox(Some(self.id));
        let _watch = cancel.map(|c| c.watch(self.router.broker(), mb.handle));
        self.send_call(&mb, body::to_json(&WriteArgs { op: "write_file".into(), path: path.into(), mode }));
        // The remote opens the temporary file first, then names its stream.
        let peer = loop {
            let Some(msg) = self.recv_or_cancel(&mb, deadline_after(FOREVER), "the remote file", cancel)? else {
                return Err(self.cancelled(mb, None, "the remote file"));
            };
            if msg.is_end() {
                let _: WriteReply = self.result(&msg)?;
                return Err(Error::Protocol { context: self.name.to_string(), message: "write ended early".into() });
            }
            if let Ok(Control { stream: Some(s), .. }) = body::from_json(&msg.body, "control") {
                break s;
            }
        };
        let result = self.upload(&mb, peer, source, cancel);
        if let Err(e) = &result {
            // The remote removes its temporary file rather than wait for
            // bytes that will never come.
            self.abandon(peer, &format!("upload abandoned: {e}"));
        }
        result
    }

    /// The call's next message, waiting until `deadline`; `None` once
    /// `cancel` is cancelled (whose [`Cancel::watch`] on `mb` wakes the
    /// wait).
    fn recv_or_cancel(
        &self,
        mb: &Mailbox,
        deadline: Instant,
        what: &str,
        cancel: Option<&Cancel>,
    ) -> Result<Option<Message>> {
        if cancel.is_some_and(Cancel::is_cancelled) {
            return Ok(None);
        }
        recv(mb, &self.name, deadline, what).map(Some)
    }

    /// Give up on a call that was cancelled: tell the remote side of its
    /// stream (the path a failing sink takes, so the remote kills what the
    /// call started). If the remote has not named it yet, a thread waits
    /// for it (bounded: the remote names it as soon as the work started)
    /// or for the call's end, with the call's mailbox `mb`; the caller has
    /// its answer now.
    fn cancelled(&self, mb: Mailbox, peer_stream: Option<u32>, what: &str) -> Error {
        log::debug!("{}: {what}: cancelled", self.name);
        let err = Error::Cancelled { context: self.name.to_string(), what: what.to_string() };
        if let Some(s) = peer_stream {
            self.abandon(s, CANCELLED);
            return err;
        }
        let slot = Arc::new(Mutex::new(Some(mb)));
        let (ctx, theirs) = (self.clone(), Arc::clone(&slot));
        let spawned = std::thread::Builder::new().name("spore-cancel".into()).spawn(move || {
            if let Some(mb) = lock(&theirs).take() {
                ctx.abandon_when_named(&mb);
            }
        });
        if let Err(e) = spawned {
            log::warn!("{}: no thread to finish a cancel ({e}): waiting here", self.name);
            if let Some(mb) = lock(&slot).take() {
                self.abandon_when_named(&mb);
            }
        }
        err
    }

    /// Wait (bounded) for the remote to name the stream of the call whose
    /// mailbox is `mb`, and abandon it; nothing if the call ends first.
    fn abandon_when_named(&self, mb: &Mailbox) {
        let deadline = deadline_after(CANCEL_START_WAIT);
        loop {
            match recv(mb, &self.name, deadline, "the cancelled call's stream") {
                Ok(msg) if msg.is_end() => return,
                Ok(msg) if msg.is_binary() => {}
                Ok(msg) => {
                    if let Ok(Control { stream: Some(s), .. }) = body::from_json(&msg.body, "control") {
                        return self.abandon(s, CANCELLED);
                    }
                }
                Err(e) => return log::debug!("{}: cancelled before it started, and then: {e}", self.name),
            }
        }
    }

    /// Tell the remote side of a stream that we have given up on it.
    fn abandon(&self, peer_handle: u32, why: &str) {
        let mut msg = Message::new(self.id, peer_handle, why.as_bytes().to_vec());
        msg.header.flags = spore_protocol::FLAG_DEAD;
        self.router.send(msg);
    }

    fn upload(&self, mb: &Mailbox, peer: u32, source: &mut dyn Read, cancel: Option<&Cancel>) -> Result<u64> {
        let mut out = Outflow::new(self.router.broker().clone(), self.id, peer);
        let mut buf = vec![0u8; CHUNK_SIZE];
        let cancelled = || Error::Cancelled { context: self.name.to_string(), what: "the remote file".into() };
        loop {
            if cancel.is_some_and(Cancel::is_cancelled) {
                return Err(cancelled());
            }
            let n = loop {
                match source.read(&mut buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::Local { what: "read the upload".into(), source: e }),
                }
            };
            while !out.has_credit() {
                let msg = self
                    .recv_or_cancel(mb, deadline_after(FOREVER), "the remote file", cancel)?
                    .ok_or_else(cancelled)?;
                if msg.is_end() {
                    // An early end is a failure (disk full, permission).
                    let _: WriteReply = self.result(&msg)?;
                }
                if let Some(a) = acked(&msg) {
                    out.on_ack(a);
                }
            }
            out.send(buf.get(..n).unwrap_or_default(), n == 0);
            if n == 0 {
                break;
            }
        }
        loop {
            let msg =
                self.recv_or_cancel(mb, deadline_after(FOREVER), "the remote file", cancel)?.ok_or_else(cancelled)?;
            if msg.is_end() {
                let reply: WriteReply = self.result(&msg)?;
                return Ok(reply.size);
            }
        }
    }

    /// Decode the final reply of a [`Context::call_async`] call as `T`, or
    /// the remote's error.
    pub fn decode<T: Deserialize>(&self, reply: &Message) -> Result<T> {
        self.result(reply)
    }
}

/// The arguments of an operation that takes none.
#[derive(Serialize)]
struct OpOnly {
    op: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn parsed(text: &str) -> (String, Option<String>) {
        interpreter(text).unwrap()
    }

    fn of(name: &str, arg: Option<&str>) -> (String, Option<String>) {
        (name.to_string(), arg.map(str::to_string))
    }

    #[test]
    fn the_interpreter_line_is_read_as_linux_reads_it() {
        assert_eq!(parsed("echo hi\n"), of("/bin/sh", None));
        assert_eq!(parsed(""), of("/bin/sh", None));
        assert_eq!(parsed(" #!/bin/bash\n"), of("/bin/sh", None));
        assert_eq!(parsed("#!/bin/sh\necho"), of("/bin/sh", None));
        assert_eq!(parsed("#!/usr/bin/perl"), of("/usr/bin/perl", None));
        assert_eq!(parsed("#!/bin/bash -e\n"), of("/bin/bash", Some("-e")));
        assert_eq!(parsed("#! \t/usr/bin/env  python3 -u \t\nx"), of("/usr/bin/env", Some("python3 -u")));
        assert_eq!(parsed("#!/usr/bin/env -S a  b\n"), of("/usr/bin/env", Some("-S a  b")));
        assert_eq!(parsed("#!/bin/sh\r\n"), of("/bin/sh\r", None));
        assert_eq!(parsed("#!/bin/sh \r\n"), of("/bin/sh", Some("\r")));
        assert_eq!(parsed("#!/bin/sh\0 -x\n"), of("/bin/sh", None));
        assert_eq!(parsed("#!/bin/sh -a\0b\n"), of("/bin/sh", Some("-a")));
        assert_eq!(parsed("#!/bin/sh \0\n"), of("/bin/sh", None));
        assert_eq!(parsed("#!perl\n"), of("perl", None));
        for none in ["#!", "#!\n/bin/sh", "#!  \t \n", "#!\0/bin/sh\n"] {
            assert_eq!(interpreter(none).unwrap_err(), "the script's #! line names no interpreter", "{none:?}");
        }
        let longest = format!("#!/{}\n", "x".repeat(252));
        assert_eq!(parsed(&longest).0.len(), 253);
        let over = format!("#!/{}\n", "x".repeat(253));
        assert!(interpreter(&over).unwrap_err().contains("over 255 bytes"));
        assert!(interpreter(&format!("#!/bin/sh {}", "y".repeat(300))).is_err());
    }

    #[test]
    fn a_script_command_reads_its_script_from_fd_3() {
        let cmd = Command::script(b"#!/bin/bash -e\necho \"$@\"\n", ["a b", "c"]).unwrap();
        assert_eq!(cmd.argv, ["/bin/bash", "-e", "/dev/fd/3", "a b", "c"]);
        assert_eq!(cmd.script.as_deref(), Some("#!/bin/bash -e\necho \"$@\"\n"));
        let cmd = Command::script(b"echo hi\n", Vec::<String>::new()).unwrap().timeout(Duration::from_secs(1));
        assert_eq!(
            (cmd.argv, cmd.timeout),
            (vec!["/bin/sh".to_string(), "/dev/fd/3".to_string()], Some(Duration::from_secs(1)))
        );
        let err = Command::script(b"echo ok\necho caf\xe9\n", ["x"]).unwrap_err().to_string();
        assert!(err.contains("not UTF-8 (line 2, byte 17)"), "{err}");
        let big = vec![b'#'; MAX_SCRIPT + 1];
        let err = Command::script(&big, ["x"]).unwrap_err().to_string();
        assert!(err.contains("4194305 bytes") && err.contains("4 MiB"), "{err}");
        assert!(Command::script(&big[1..], ["x"]).is_ok());
        assert!(matches!(Command::script(b"#!\n", ["x"]), Err(Error::Usage(_))));
    }
}
