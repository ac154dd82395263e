//! The broker: one thread running an epoll loop over raw non-blocking fds
//! (the parent stream, child streams, captured stdout/stderr, connection
//! processes' stderr), moving messages between streams and local handles,
//! and carrying out the shutdown sequence. The master runs this same code.
//!
//! Other threads talk to the broker through [`Broker`], a cheap handle:
//! they queue commands and wake the loop with `Poller::notify`.

use crate::bootstrap::kill_and_reap;
use crate::mailbox::{Mailbox, Queue};
use crate::poller::{Events, Interest, Poller};
use crate::router::{Origin, Routes, Verdict};
use crate::spin;
use crate::sys;
use log::{debug, info, warn};
use spore_protocol::body::{self, AddRoute, AllocatedId, DelRoute, LogRecord};
use spore_protocol::{handle, Decoder, Message, FLAG_DEAD};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// How this broker sits in the tree.
#[derive(Clone, Debug)]
pub struct Config {
    /// This context's id (0 for the master).
    pub id: u32,
    /// This context's path in the tree, e.g. `local/local`.
    pub name: String,
    /// Ancestors, the master first and the immediate parent last. Empty in
    /// the master. Messages whose `auth_id` is one of these carry authority.
    pub parent_ids: Vec<u32>,
    /// Largest body accepted on any stream.
    pub max_message: u32,
    /// How long a shutdown waits for children before forcing them.
    pub grace: Duration,
    /// Probe each idle child this often (zero: never).
    pub keepalive: Duration,
    /// Declare a child dead after this many intervals without a word from it.
    pub keepalive_misses: u32,
    /// End the process when the shutdown sequence completes (agents), or
    /// just stop the broker thread (the master).
    pub exit_process: bool,
}

/// Where an agent writes its last words when its parent stream breaks
/// (the original stderr: the connection's, which the parent may still read).
static LAST_WORDS: std::sync::OnceLock<File> = std::sync::OnceLock::new();

/// Keep `file` (a dup of the original stderr) for [`Config`]-less last words.
pub fn set_last_words(file: File) {
    let _ = LAST_WORDS.set(file);
}

fn say_last_words(text: &str) {
    if let Some(mut f) = LAST_WORDS.get() {
        let _ = f.write_all(text.as_bytes());
    }
}

/// A connection handed to the broker once its handshake is done.
pub struct NewStream {
    /// The context at the other end.
    pub remote_id: u32,
    /// Its path in the tree.
    pub name: String,
    /// Bytes from the peer.
    pub input: File,
    /// Bytes to the peer.
    pub output: File,
    /// The connection process's stderr, forwarded as log lines.
    pub stderr: Option<File>,
    /// The connection process (ssh, sudo, a local agent), reaped by the broker.
    pub child: Option<Child>,
    /// Protocol bytes already read during the handshake.
    pub leftover: Vec<u8>,
    /// This is the stream to our parent.
    pub is_parent: bool,
    /// A first message to write before anything else (an agent's hello).
    pub greeting: Option<Message>,
}

enum Cmd {
    Send(Message),
    AddStream(Box<Prepared>),
    Capture { file: File, target: &'static str },
    Shutdown(String),
    Reap(Child, String),
}

struct HandleEntry {
    queue: Arc<Queue>,
    /// A remote context this handle waits on: its loss fails the handle.
    peer: Option<u32>,
    wake: Option<File>,
}

/// The write side of a stream. The broker and the threads sending from this
/// context append to it; whoever finds it drained writes at once, so a
/// call's request and its reply go out without waking the broker.
struct Out {
    file: File,
    key: usize,
    state: Mutex<OutState>,
}

#[derive(Default)]
struct OutState {
    buf: Vec<u8>,
    pos: usize,
    /// Writable interest is set in the poller.
    armed: bool,
    /// The poller knows the fd (from registration until the stream drops).
    watched: bool,
    /// A write failed; the broker drops the stream.
    failed: Option<String>,
}

impl Out {
    /// Queue a message and write what the pipe takes now. False if the
    /// stream has failed.
    fn send(&self, msg: &Message, poller: &Poller) -> bool {
        let mut st = lock(&self.state);
        if st.failed.is_some() {
            return false;
        }
        msg.encode_into(&mut st.buf);
        self.write(&mut st, poller);
        st.failed.is_none()
    }

    /// Write what is pending (on a writable event); the failure, if any.
    fn flush(&self, poller: &Poller) -> Option<String> {
        let mut st = lock(&self.state);
        self.write(&mut st, poller);
        st.failed.clone()
    }

    fn write(&self, st: &mut OutState, poller: &Poller) {
        while st.pos < st.buf.len() {
            match (&self.file).write(st.buf.get(st.pos..).unwrap_or_default()) {
                Ok(n) => st.pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    st.failed = Some(format!("write failed: {e}"));
                    st.buf = Vec::new();
                    st.pos = 0;
                }
            }
        }
        if st.pos == st.buf.len() {
            st.buf.clear();
            st.pos = 0;
        } else if st.pos > 1 << 20 {
            let done = st.pos;
            st.buf.drain(..done);
            st.pos = 0;
        }
        let want = st.pos < st.buf.len();
        if want != st.armed && st.watched {
            let interest = if want { Interest::WRITE } else { Interest::NONE };
            match poller.modify(self.file.as_fd(), self.key, interest) {
                Ok(()) => st.armed = want,
                // Without writable interest a full buffer would never drain.
                Err(e) if want => st.failed = Some(format!("can't watch for room in the pipe: {e}")),
                Err(_) => {}
            }
        }
    }

    /// Has the peer closed its end? (Epoll reports ERR/HUP on an output fd
    /// even with no interest set; a zero-timeout poll tells them apart from
    /// a stale writable event.)
    fn peer_closed(&self) -> bool {
        let mut fds = [sys::pollfd(self.file.as_raw_fd(), 0)];
        matches!(sys::poll(&mut fds, 0), Ok(n) if n > 0)
            && fds.iter().any(|f| f.revents & (libc::POLLERR | libc::POLLHUP) != 0)
    }

    fn pending(&self) -> bool {
        let st = lock(&self.state);
        st.pos < st.buf.len()
    }

    /// Start polling the fd (broker thread, once).
    fn watch(&self, poller: &Poller) -> io::Result<()> {
        let mut st = lock(&self.state);
        // `unwatch` deletes the fd from the poller before the stream lets go
        // of it; the Out (and its fd) outlives any Arc a sender still holds.
        poller.add(self.file.as_fd(), self.key, Interest::NONE)?;
        st.watched = true;
        if st.pos < st.buf.len() {
            poller.modify(self.file.as_fd(), self.key, Interest::WRITE)?;
            st.armed = true;
        }
        Ok(())
    }

    fn unwatch(&self, poller: &Poller) {
        let mut st = lock(&self.state);
        if st.watched {
            let _ = poller.delete(self.file.as_fd());
            st.watched = false;
        }
    }
}

/// Which `Out` a message from this context takes: the route's, else the
/// parent's (the same decision `Routes::decide` makes for local messages).
#[derive(Default)]
struct OutRoutes {
    parent: Option<Arc<Out>>,
    via: HashMap<u32, Arc<Out>>,
}

/// A stream prepared by `Broker::add_stream` in the caller's thread.
struct Prepared {
    sid: usize,
    remote_id: u32,
    name: String,
    input: File,
    out: Arc<Out>,
    stderr: Option<File>,
    child: Option<Child>,
    leftover: Vec<u8>,
    is_parent: bool,
}

/// Local handles; once `closed` (the broker has finished) new ones are
/// born closed, so nobody waits on a broker that is gone.
#[derive(Default)]
struct Handles {
    map: HashMap<u32, HandleEntry>,
    closed: bool,
}

impl Handles {
    fn insert(&mut self, handle: u32, entry: HandleEntry) {
        if self.closed {
            entry.queue.close();
        }
        self.map.insert(handle, entry);
    }
}

struct Shared {
    cfg: Config,
    poller: Poller,
    queue: Mutex<Vec<Cmd>>,
    handles: Mutex<Handles>,
    next_handle: AtomicU32,
    next_context: AtomicU32,
    groups: Mutex<HashSet<i32>>,
    /// Master only: context id → the context asked to start it.
    expected: Mutex<HashMap<u32, u32>>,
    temps: Mutex<HashSet<std::path::PathBuf>>,
    shutting_down: AtomicBool,
    /// The loop has ended; commands are no longer taken.
    finished: AtomicBool,
    /// Where this context's own messages go without waking the broker.
    outs: RwLock<OutRoutes>,
    /// A sending thread saw a stream's write fail: the broker drops it.
    out_failed: AtomicBool,
    /// Commands queued or being carried out. A thread takes the fast path
    /// only when there are none, so its message can't overtake what they
    /// send (a connect's reply must follow its ADD_ROUTE).
    pending: AtomicUsize,
    next_sid: AtomicUsize,
    done: (Mutex<bool>, Condvar),
}

/// A handle on the broker thread, cheap to clone.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder can't leave these maps inconsistent: every update
    // is a single insert or remove.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Broker {
    /// Start the broker thread.
    pub fn start(cfg: Config) -> io::Result<Broker> {
        let shared = Arc::new(Shared {
            cfg,
            poller: Poller::new()?,
            queue: Mutex::new(Vec::new()),
            handles: Mutex::new(Handles::default()),
            next_handle: AtomicU32::new(handle::FIRST_DYNAMIC),
            next_context: AtomicU32::new(1),
            groups: Mutex::new(HashSet::new()),
            expected: Mutex::new(HashMap::new()),
            temps: Mutex::new(HashSet::new()),
            shutting_down: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            outs: RwLock::new(OutRoutes::default()),
            out_failed: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
            next_sid: AtomicUsize::new(1),
            done: (Mutex::new(false), Condvar::new()),
        });
        let broker = Broker { shared };
        let looper = Loop::new(broker.clone());
        std::thread::Builder::new().name("spore-broker".into()).spawn(move || looper.run())?;
        Ok(broker)
    }

    /// This context's id.
    pub fn id(&self) -> u32 {
        self.shared.cfg.id
    }

    /// This context's path in the tree.
    pub fn name(&self) -> &str {
        &self.shared.cfg.name
    }

    /// The configuration the broker was started with.
    pub fn config(&self) -> &Config {
        &self.shared.cfg
    }

    fn push(&self, cmd: Cmd) {
        let mut queue = lock(&self.shared.queue);
        if self.shared.finished.load(Ordering::SeqCst) {
            drop(queue);
            // Too late: the broker is gone. A connection handed over now
            // must not outlive us unwatched.
            if let Cmd::AddStream(mut s) = cmd {
                if let Some(child) = s.child.as_mut() {
                    kill_and_reap(child);
                }
            }
            return;
        }
        self.shared.pending.fetch_add(1, Ordering::SeqCst);
        queue.push(cmd);
        drop(queue);
        let _ = self.shared.poller.notify();
    }

    /// Send a message from this context (`src`/`auth` are stamped). It is
    /// written at once from this thread when its stream's pipe has room;
    /// the broker handles the rest (local delivery, DEAD replies, a full
    /// pipe).
    pub fn send(&self, mut msg: Message) {
        let me = self.id();
        msg.header.src = me;
        msg.header.auth = me;
        if msg.header.dst != me && self.shared.pending.load(Ordering::SeqCst) == 0 {
            let out = {
                let outs = self.shared.outs.read().unwrap_or_else(|p| p.into_inner());
                outs.via.get(&msg.header.dst).cloned().or_else(|| outs.parent.clone())
            };
            if let Some(out) = out {
                if out.send(&msg, &self.shared.poller) {
                    return;
                }
                self.shared.out_failed.store(true, Ordering::SeqCst);
            }
        }
        self.push(Cmd::Send(msg));
    }

    /// Hand a connected stream to the broker. From the moment this returns,
    /// messages to its context go out through it (the greeting first).
    pub fn add_stream(&self, s: NewStream) {
        let sid = self.shared.next_sid.fetch_add(1, Ordering::SeqCst);
        let NewStream { remote_id, name, input, output, stderr, mut child, leftover, is_parent, greeting } = s;
        let refuse = |child: &mut Option<Child>, why: String| {
            warn!("stream {name}: {why}");
            if let Some(c) = child.as_mut() {
                kill_and_reap(c);
            }
        };
        // A blocking write would stall every thread that sends through it.
        if let Err(e) = sys::set_nonblocking(std::os::fd::AsFd::as_fd(&output), true) {
            return refuse(&mut child, format!("can't make its pipe non-blocking: {e}"));
        }
        let out = Arc::new(Out { file: output, key: sid << 2 | ROLE_OUT, state: Mutex::new(OutState::default()) });
        if let Some(mut hello) = greeting {
            hello.header.src = self.id();
            hello.header.auth = self.id();
            if !out.send(&hello, &self.shared.poller) {
                self.shared.out_failed.store(true, Ordering::SeqCst);
            }
        }
        {
            let mut outs = self.shared.outs.write().unwrap_or_else(|p| p.into_inner());
            // `finish` sets `finished` before it clears `outs`: checked under
            // the lock, a stream is never registered with a gone broker.
            if self.shared.finished.load(Ordering::SeqCst) {
                drop(outs);
                return refuse(&mut child, "the broker has finished".into());
            }
            if is_parent {
                outs.parent = Some(out.clone());
            } else {
                outs.via.insert(remote_id, out.clone());
            }
        }
        let prepared = Prepared { sid, remote_id, name, input, out, stderr, child, leftover, is_parent };
        self.push(Cmd::AddStream(Box::new(prepared)));
    }

    fn set_route(&self, id: u32, out: Option<Arc<Out>>) {
        let mut outs = self.shared.outs.write().unwrap_or_else(|p| p.into_inner());
        match out {
            Some(out) => outs.via.insert(id, out),
            None => outs.via.remove(&id),
        };
    }

    /// Forward lines written to `file` as log records tagged `target`.
    pub fn add_capture(&self, file: File, target: &'static str) {
        self.push(Cmd::Capture { file, target });
    }

    /// Start the shutdown sequence (idempotent).
    pub fn shutdown(&self, why: &str) {
        self.push(Cmd::Shutdown(why.to_string()));
    }

    /// Has the shutdown sequence begun?
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::SeqCst)
    }

    /// Wait until the broker thread has finished its shutdown sequence.
    pub fn wait_done(&self, deadline: Instant) -> bool {
        let (m, cv) = &self.shared.done;
        let mut done = lock(m);
        while !*done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            done = cv.wait_timeout(done, left).map_or_else(|p| p.into_inner().0, |r| r.0);
        }
        true
    }

    /// A fresh context id (meaningful in the master, which owns the space).
    pub fn allocate_context_id(&self) -> u32 {
        self.shared.next_context.fetch_add(1, Ordering::SeqCst)
    }

    /// Master: a fresh id for a context that `parent` will start. Only
    /// `parent`'s stream may announce it (`ADD_ROUTE`).
    pub fn allocate_child_id(&self, parent: u32) -> u32 {
        let id = self.allocate_context_id();
        lock(&self.shared.expected).insert(id, parent);
        id
    }

    /// Register a fresh handle. `peer` is the remote context whose loss
    /// should fail this handle with a `DEAD` "disconnected" message.
    pub fn mailbox(&self, peer: Option<u32>) -> Mailbox {
        let handle = self.shared.next_handle.fetch_add(1, Ordering::SeqCst);
        let queue = Arc::new(Queue::default());
        lock(&self.shared.handles).insert(handle, HandleEntry { queue: queue.clone(), peer, wake: None });
        Mailbox { handle, queue, broker: self.clone(), wake: None, aliases: Vec::new() }
    }

    /// Like [`Broker::mailbox`], with a pipe that turns readable on delivery.
    pub fn mailbox_with_waker(&self, peer: Option<u32>) -> io::Result<Mailbox> {
        let (r, w) = sys::pipe()?;
        sys::set_nonblocking(std::os::fd::AsFd::as_fd(&r), true)?;
        sys::set_nonblocking(std::os::fd::AsFd::as_fd(&w), true)?;
        let handle = self.shared.next_handle.fetch_add(1, Ordering::SeqCst);
        let queue = Arc::new(Queue::default());
        let entry = HandleEntry { queue: queue.clone(), peer, wake: Some(w) };
        lock(&self.shared.handles).insert(handle, entry);
        Ok(Mailbox { handle, queue, broker: self.clone(), wake: Some(r), aliases: Vec::new() })
    }

    /// A second handle delivering into `mb`'s queue (e.g. an `exec`'s
    /// stderr beside its stdout), unregistered when `mb` is dropped.
    pub fn alias(&self, mb: &mut Mailbox) -> u32 {
        let handle = self.shared.next_handle.fetch_add(1, Ordering::SeqCst);
        let mut handles = lock(&self.shared.handles);
        if let Some(entry) = handles.map.get(&mb.handle) {
            let alias = HandleEntry { queue: entry.queue.clone(), peer: entry.peer, wake: None };
            handles.insert(handle, alias);
            mb.aliases.push(handle);
        }
        handle
    }

    /// A mailbox for a well-known handle.
    pub fn listen(&self, handle: u32) -> Mailbox {
        let queue = Arc::new(Queue::default());
        lock(&self.shared.handles).insert(handle, HandleEntry { queue: queue.clone(), peer: None, wake: None });
        Mailbox { handle, queue, broker: self.clone(), wake: None, aliases: Vec::new() }
    }

    /// Forget a handle (its mailbox sees `Closed`); later messages for it
    /// get a `DEAD` reply.
    pub fn unregister(&self, handle: u32) {
        if let Some(entry) = lock(&self.shared.handles).map.remove(&handle) {
            entry.queue.close();
        }
    }

    /// Remember a process group to kill at shutdown.
    pub fn track_group(&self, pgid: i32) {
        lock(&self.shared.groups).insert(pgid);
    }

    /// Forget a process group that has no members left.
    pub fn untrack_group(&self, pgid: i32) {
        lock(&self.shared.groups).remove(&pgid);
    }

    /// Hand a process to the broker to reap (it outlives the caller's
    /// interest, e.g. a guardian whose command left children behind); at
    /// the end of a shutdown it is killed if it still runs.
    pub fn reap_later(&self, child: Child, what: String) {
        self.push(Cmd::Reap(child, what));
    }

    /// Remember a temporary file to remove if the process ends before the
    /// operation writing it does (an upload cut off by shutdown).
    pub fn track_temp(&self, path: &std::path::Path) {
        lock(&self.shared.temps).insert(path.to_path_buf());
    }

    /// The temporary file was renamed into place or removed.
    pub fn untrack_temp(&self, path: &std::path::Path) {
        lock(&self.shared.temps).remove(path);
    }

    /// Deliver to a local handle. Returns the message back if nobody listens.
    fn deliver(&self, msg: Message) -> Result<(), Message> {
        let handles = lock(&self.shared.handles);
        let Some(entry) = handles.map.get(&msg.header.handle) else {
            return Err(msg);
        };
        // A handle waiting on one context takes answers from it alone. A
        // DEAD notice may come from any router on the way (it can only fail
        // the call, never answer it).
        if entry.peer.is_some_and(|p| p != msg.header.src) && !msg.is_dead() {
            return Err(msg);
        }
        if entry.queue.push(msg) {
            if let Some(mut w) = entry.wake.as_ref() {
                let _ = w.write(&[1]);
            }
        }
        Ok(())
    }

    /// Fail every handle waiting on `peer` with a `DEAD` message.
    fn fail_peer(&self, peer: u32, reason: &str) {
        let handles = lock(&self.shared.handles);
        for (&h, entry) in handles.map.iter() {
            if entry.peer == Some(peer) {
                let mut msg = Message::new(self.id(), h, format!("disconnected: {reason}").into_bytes());
                msg.header.src = peer;
                msg.header.flags = FLAG_DEAD;
                entry.queue.push(msg);
                if let Some(mut w) = entry.wake.as_ref() {
                    let _ = w.write(&[1]);
                }
            }
        }
    }
}

// Event keys: stream id << 2 | role. Stream id 0 is the broker's own
// capture pipes.
const ROLE_IN: usize = 0;
const ROLE_OUT: usize = 1;
const ROLE_ERR: usize = 2;
const ROLE_CAPTURE_OUT: usize = 0;
const ROLE_CAPTURE_ERR: usize = 1;
/// Why a child stream was dropped when the shutdown grace ran out.
const FORCED: &str = "forced at shutdown";
/// Per-event read budget, so one busy stream can't starve the others.
const READ_BUDGET: usize = 256 * 1024;

struct Stream {
    remote_id: u32,
    name: String,
    input: File,
    out: Arc<Out>,
    decoder: Decoder,
    stderr: Option<LineSource>,
    child: Option<Child>,
    is_parent: bool,
    /// When we last read anything from the peer.
    last_heard: Instant,
    /// When we last probed it.
    last_probe: Instant,
}

struct LineSource {
    file: File,
    buf: Vec<u8>,
    target: String,
    level: log::Level,
}

enum Phase {
    Running,
    /// SHUTDOWN sent to children; waiting for them to disconnect.
    Children {
        deadline: Instant,
    },
    /// Process groups sent SIGTERM; SIGKILL at the deadline.
    Groups {
        deadline: Instant,
    },
    /// Capture half-closed; draining it and flushing the parent stream.
    Flush {
        deadline: Instant,
    },
}

struct Loop {
    broker: Broker,
    streams: HashMap<usize, Stream>,
    parent: Option<usize>,
    routes: Routes,
    captures: HashMap<usize, LineSource>,
    reaping: Vec<(Child, String, Instant)>,
    phase: Phase,
    shutdown_started: Option<Instant>,
    /// Reused for every read: no allocation per event.
    read_buf: Vec<u8>,
}

impl Loop {
    fn new(broker: Broker) -> Loop {
        let cfg = &broker.shared.cfg;
        let routes = Routes::new(cfg.id, cfg.parent_ids.clone());
        Loop {
            broker,
            streams: HashMap::new(),
            parent: None,
            routes,
            captures: HashMap::new(),
            reaping: Vec::new(),
            phase: Phase::Running,
            shutdown_started: None,
            read_buf: vec![0; 64 * 1024],
        }
    }

    fn cfg(&self) -> &Config {
        &self.broker.shared.cfg
    }

    fn run(mut self) {
        let mut events = Events::default();
        loop {
            self.take_commands();
            if self.step_shutdown() {
                break;
            }
            let timeout = self.next_timeout();
            events.clear();
            let shared = &self.broker.shared;
            // The next message may follow within microseconds: look again
            // for a moment before sleeping (see `spin`).
            let start = Instant::now();
            let busy = spin::spin_until(timeout.unwrap_or(Duration::MAX), || {
                let polled = shared.poller.wait(&mut events, Some(Duration::ZERO));
                (polled.is_ok() && !events.is_empty()) || shared.pending.load(Ordering::SeqCst) > 0
            });
            if !busy {
                let timeout = timeout.map(|t| t.saturating_sub(start.elapsed()));
                if let Err(e) = shared.poller.wait(&mut events, timeout) {
                    warn!("broker: poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
            spin::waited(start);
            for e in events.iter() {
                self.on_event(e.key, e.readable, e.writable);
            }
            self.drop_failed_outs();
            self.keepalive();
            self.reap();
        }
        self.finish();
    }

    fn next_timeout(&self) -> Option<Duration> {
        let mut deadline = match self.phase {
            Phase::Running => None,
            Phase::Children { deadline } | Phase::Groups { deadline } => Some(deadline),
            Phase::Flush { deadline } => Some(deadline),
        };
        if !self.reaping.is_empty() || matches!(self.phase, Phase::Groups { .. } | Phase::Flush { .. }) {
            // A process whose pipes just closed is a zombie within a moment:
            // look again soon, so a shutdown costs milliseconds, not ticks.
            let tick = Instant::now() + Duration::from_millis(2);
            deadline = Some(deadline.map_or(tick, |d| d.min(tick)));
        }
        if let Some(probe) = self.next_probe() {
            deadline = Some(deadline.map_or(probe, |d| d.min(probe)));
        }
        deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    // ---- keepalive ------------------------------------------------------
    //
    // A child that has said nothing for a whole interval gets a probe; one
    // silent for `keepalive_misses` intervals is declared dead: its stream
    // is dropped (pending calls fail, DEL_ROUTE goes up, its connection
    // process is killed) and the rest of the tree carries on.

    fn next_probe(&self) -> Option<Instant> {
        let every = self.cfg().keepalive;
        if every.is_zero() || !matches!(self.phase, Phase::Running) {
            return None;
        }
        self.streams
            .values()
            .filter(|s| !s.is_parent)
            .filter_map(|s| s.last_heard.max(s.last_probe).checked_add(every))
            .min()
    }

    fn keepalive(&mut self) {
        let every = self.cfg().keepalive;
        if every.is_zero() || !matches!(self.phase, Phase::Running) {
            return;
        }
        let limit = every.saturating_mul(self.cfg().keepalive_misses.max(1));
        let now = Instant::now();
        let mut dead = Vec::new();
        let mut probe = Vec::new();
        for (&sid, s) in self.streams.iter_mut().filter(|(_, s)| !s.is_parent) {
            let silent = now.saturating_duration_since(s.last_heard);
            if silent >= limit {
                dead.push((sid, silent));
            } else if silent >= every && now.saturating_duration_since(s.last_probe) >= every {
                s.last_probe = now;
                probe.push((sid, s.remote_id));
            }
        }
        for (sid, remote) in probe {
            let mut msg = Message::new(remote, handle::KEEPALIVE, Vec::new());
            msg.header.src = self.cfg().id;
            msg.header.auth = self.cfg().id;
            msg.header.reply_to = handle::KEEPALIVE;
            self.enqueue(sid, &msg);
        }
        for (sid, silent) in dead {
            // Whole milliseconds: no float formatting in the agent.
            let why = format!("silent for {} ms (keepalive every {} ms)", silent.as_millis(), every.as_millis());
            warn!("{}: {why}; declaring it dead", self.streams.get(&sid).map_or("", |s| s.name.as_str()));
            if let Some(child) = self.streams.get_mut(&sid).and_then(|s| s.child.as_mut()) {
                let _ = sys::kill(child.id() as i32, libc::SIGTERM);
            }
            self.drop_stream(sid, &why);
        }
    }

    fn take_commands(&mut self) {
        loop {
            let cmds = std::mem::take(&mut *lock(&self.broker.shared.queue));
            if cmds.is_empty() {
                return;
            }
            for cmd in cmds {
                match cmd {
                    Cmd::Send(msg) => self.route(msg, Origin::Local),
                    Cmd::AddStream(s) => self.add_stream(*s),
                    Cmd::Capture { file, target } => self.add_capture(file, target),
                    Cmd::Shutdown(why) => self.begin_shutdown(&why),
                    Cmd::Reap(child, what) => self.reaping.push((child, what, Instant::now() + Duration::from_secs(3600 * 24 * 365))),
                }
                self.broker.shared.pending.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    // ---- streams -------------------------------------------------------

    fn add_stream(&mut self, s: Prepared) {
        let sid = s.sid;
        for f in [&s.input].into_iter().chain(s.stderr.as_ref()) {
            if let Err(e) = sys::set_nonblocking(std::os::fd::AsFd::as_fd(f), true) {
                warn!("stream {}: can't make fd non-blocking: {e}", s.name);
            }
        }
        let mut decoder = Decoder::new(self.cfg().max_message);
        decoder.push(&s.leftover);
        let stderr = s.stderr.map(|file| LineSource {
            file,
            buf: Vec::new(),
            target: format!("{}:stderr", s.name),
            level: log::Level::Warn,
        });
        let stream = Stream {
            remote_id: s.remote_id,
            name: s.name,
            input: s.input,
            out: s.out,
            decoder,
            stderr,
            child: s.child,
            is_parent: s.is_parent,
            last_heard: Instant::now(),
            last_probe: Instant::now(),
        };
        let poller = &self.broker.shared.poller;
        // Each fd is owned by `stream`, which lives in `self.streams` until
        // `drop_stream` deletes it from the poller before dropping it.
        let added = poller
            .add(stream.input.as_fd(), sid << 2 | ROLE_IN, Interest::READ)
            .and_then(|()| stream.out.watch(poller))
            .and_then(|()| match &stream.stderr {
                Some(src) => poller.add(src.file.as_fd(), sid << 2 | ROLE_ERR, Interest::READ),
                None => Ok(()),
            });
        let unwatched = added.err();
        debug!("stream {} (context {}) connected", stream.name, stream.remote_id);
        if stream.is_parent {
            self.parent = Some(sid);
        } else {
            self.routes.add(stream.remote_id, sid);
            self.announce_route(stream.remote_id, &stream.name);
        }
        self.streams.insert(sid, stream);
        if let Some(e) = unwatched {
            // A stream we can't poll would never report its end.
            let why = format!("can't watch its fds: {e}");
            warn!("stream {}: {why}", self.streams.get(&sid).map_or("", |s| s.name.as_str()));
            self.drop_stream(sid, &why);
            return;
        }
        // Bytes that arrived with the handshake may already hold messages.
        self.decode(sid);
    }

    fn add_capture(&mut self, file: File, target: &'static str) {
        let role = if target == "stdout" { ROLE_CAPTURE_OUT } else { ROLE_CAPTURE_ERR };
        let _ = sys::set_nonblocking(std::os::fd::AsFd::as_fd(&file), true);
        let level = if role == ROLE_CAPTURE_OUT { log::Level::Info } else { log::Level::Warn };
        // The fd is owned by the LineSource stored in `self.captures`,
        // deleted from the poller before it is dropped.
        if let Err(e) = self.broker.shared.poller.add(file.as_fd(), role, Interest::READ) {
            warn!("capture {target}: {e}");
            return;
        }
        self.captures.insert(role, LineSource { file, buf: Vec::new(), target: target.to_string(), level });
    }

    fn announce_route(&mut self, id: u32, name: &str) {
        if self.parent.is_some() {
            let body = body::to_json(&AddRoute { id, name: name.to_string() });
            let msg = Message::new(self.parent_id(), handle::ADD_ROUTE, body);
            self.send_up(msg);
        }
    }

    /// Route changes are addressed to the immediate parent, which applies
    /// them and re-announces them to its own parent.
    fn parent_id(&self) -> u32 {
        self.cfg().parent_ids.last().copied().unwrap_or(0)
    }

    fn send_up(&mut self, mut msg: Message) {
        msg.header.src = self.cfg().id;
        msg.header.auth = self.cfg().id;
        if let Some(p) = self.parent {
            self.enqueue(p, &msg);
        }
    }

    fn on_event(&mut self, key: usize, readable: bool, writable: bool) {
        let sid = key >> 2;
        let role = key & 3;
        if sid == 0 {
            self.read_capture(role);
            return;
        }
        match role {
            ROLE_IN if readable => self.read_stream(sid),
            ROLE_OUT if writable => self.on_writable(sid),
            ROLE_ERR => self.read_stream_stderr(sid),
            _ => {}
        }
    }

    fn read_stream(&mut self, sid: usize) {
        let mut buf = std::mem::take(&mut self.read_buf);
        buf.resize(64 * 1024, 0);
        let mut total = 0;
        let mut gone: Option<String> = None;
        {
            let Some(stream) = self.streams.get_mut(&sid) else { return };
            while total < READ_BUDGET {
                match (&stream.input).read(&mut buf) {
                    Ok(0) => {
                        gone = Some(match stream.decoder.finish() {
                            Ok(()) => "stream closed".to_string(),
                            Err(e) => format!("stream closed: {e}"),
                        });
                        break;
                    }
                    Ok(n) => {
                        total += n;
                        stream.last_heard = Instant::now();
                        stream.decoder.push(buf.get(..n).unwrap_or_default());
                        if n < buf.len() {
                            // Drained for now; level-triggered polling says
                            // when there is more (no EAGAIN read needed).
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        gone = Some(format!("read failed: {e}"));
                        break;
                    }
                }
            }
        }
        self.read_buf = buf;
        self.decode(sid);
        if let Some(why) = gone {
            self.drop_stream(sid, &why);
        }
    }

    fn decode(&mut self, sid: usize) {
        loop {
            let Some(stream) = self.streams.get_mut(&sid) else { return };
            match stream.decoder.next() {
                Ok(Some(msg)) => self.route(msg, Origin::Stream(sid)),
                Ok(None) => return,
                Err(e) => {
                    let why = format!("corrupt stream from {}: {e}", stream.name);
                    warn!("{why}");
                    self.drop_stream(sid, &why);
                    return;
                }
            }
        }
    }

    fn enqueue(&mut self, sid: usize, msg: &Message) {
        let Some(out) = self.streams.get(&sid).map(|s| s.out.clone()) else { return };
        if !out.send(msg, &self.broker.shared.poller) {
            let why = out.flush(&self.broker.shared.poller).unwrap_or_default();
            self.drop_stream(sid, &why);
        }
    }

    /// Room in the pipe, or (with nothing pending) the peer closed it.
    fn on_writable(&mut self, sid: usize) {
        let Some(out) = self.streams.get(&sid).map(|s| s.out.clone()) else { return };
        if !out.pending() && out.peer_closed() {
            self.drop_stream(sid, "the peer closed its input");
            return;
        }
        self.flush(sid);
    }

    fn flush(&mut self, sid: usize) {
        let Some(out) = self.streams.get(&sid).map(|s| s.out.clone()) else { return };
        if let Some(why) = out.flush(&self.broker.shared.poller) {
            self.drop_stream(sid, &why);
        }
    }

    /// Drop the streams whose writes failed in a sending thread.
    fn drop_failed_outs(&mut self) {
        if !self.broker.shared.out_failed.swap(false, Ordering::SeqCst) {
            return;
        }
        let failed: Vec<(usize, String)> = self
            .streams
            .iter()
            .filter_map(|(&sid, s)| lock(&s.out.state).failed.clone().map(|why| (sid, why)))
            .collect();
        for (sid, why) in failed {
            self.drop_stream(sid, &why);
        }
    }

    fn drop_stream(&mut self, sid: usize, why: &str) {
        let Some(mut stream) = self.streams.remove(&sid) else { return };
        let poller = &self.broker.shared.poller;
        let _ = poller.delete(stream.input.as_fd());
        stream.out.unwatch(poller);
        {
            let mut outs = self.broker.shared.outs.write().unwrap_or_else(|p| p.into_inner());
            if outs.parent.as_ref().is_some_and(|o| Arc::ptr_eq(o, &stream.out)) {
                outs.parent = None;
            }
            outs.via.retain(|_, o| !Arc::ptr_eq(o, &stream.out));
        }
        if let Some(src) = stream.stderr.as_mut() {
            // Whatever the process printed last is its explanation.
            drain_lines(src, self.cfg(), &self.broker, true);
            let _ = poller.delete(src.file.as_fd());
        }
        if let Some(child) = stream.child.take() {
            // A process that closed its stream is about to exit; one we
            // forced gets a moment to act on SIGTERM. Then SIGKILL (`reap`).
            let forced = why == FORCED;
            let grace = Instant::now() + Duration::from_millis(if forced { 200 } else { 500 });
            self.reaping.push((child, stream.name.clone(), grace));
        }
        if let Some(started) = self.shutdown_started.filter(|_| !stream.is_parent) {
            if why == FORCED {
                warn!("{}: forced after the grace of {} ms", stream.name, self.cfg().grace.as_millis());
            } else {
                info!(
                    "{}: disconnected gracefully, {} ms into the shutdown",
                    stream.name,
                    started.elapsed().as_millis()
                );
            }
        }
        if stream.is_parent {
            self.parent = None;
            if why != "stream closed" {
                say_last_words(&format!("spore-agent {}: {why}; shutting down\n", self.cfg().name));
            }
            info!("parent stream gone ({why}); shutting down");
            self.begin_shutdown("parent gone");
            return;
        }
        let reason = format!("context {} ({}) {why}", stream.remote_id, stream.name);
        let lost = self.routes.remove_stream(sid, &reason);
        for id in lost {
            debug!("lost context {id}: {reason}");
            self.broker.fail_peer(id, &reason);
            if self.parent.is_some() {
                let body = body::to_json(&DelRoute { id, reason: reason.clone() });
                self.send_up(Message::new(self.parent_id(), handle::DEL_ROUTE, body));
            }
        }
    }

    fn read_stream_stderr(&mut self, sid: usize) {
        let cfg = self.broker.shared.cfg.clone();
        let Some(stream) = self.streams.get_mut(&sid) else { return };
        let Some(src) = stream.stderr.as_mut() else { return };
        let open = drain_lines(src, &cfg, &self.broker, false);
        if !open {
            let _ = self.broker.shared.poller.delete(src.file.as_fd());
            stream.stderr = None;
        }
    }

    fn read_capture(&mut self, role: usize) {
        let cfg = self.broker.shared.cfg.clone();
        let Some(src) = self.captures.get_mut(&role) else { return };
        if !drain_lines(src, &cfg, &self.broker, false) {
            let _ = self.broker.shared.poller.delete(src.file.as_fd());
            self.captures.remove(&role);
        }
    }

    fn reap(&mut self) {
        let now = Instant::now();
        self.reaping.retain_mut(|(child, name, deadline)| match child.try_wait() {
            Ok(Some(status)) => {
                debug!("connection process for {name} exited: {status}");
                false
            }
            Ok(None) if now >= *deadline => {
                debug!("connection process for {name} still running; killing it");
                let _ = child.kill();
                let _ = child.wait();
                false
            }
            Ok(None) => true,
            Err(_) => false,
        });
    }

    // ---- routing -------------------------------------------------------

    fn route(&mut self, mut msg: Message, origin: Origin) {
        let from_parent = match origin {
            Origin::Stream(sid) => Some(sid) == self.parent,
            Origin::Local => false,
        };
        match self.routes.decide(&mut msg, origin, from_parent, self.parent.is_some()) {
            Verdict::Local => self.deliver_local(msg, origin, from_parent),
            Verdict::Forward(sid) => self.enqueue(sid, &msg),
            Verdict::Up => {
                if let Some(p) = self.parent {
                    self.enqueue(p, &msg);
                }
            }
            Verdict::Dead(reason) => self.dead(&msg, reason),
            Verdict::Drop(reason) => warn!("dropped message from {}: {reason}", msg.header.src),
        }
    }

    /// Answer an undeliverable message, unless it is itself a DEAD reply or
    /// expects no reply.
    fn dead(&mut self, msg: &Message, reason: String) {
        if msg.header.handle == handle::FORWARD_LOG {
            // A log record with nowhere to go (the parent is gone). Logging
            // that would queue another record: drop it silently.
            return;
        }
        if msg.is_dead() || msg.header.reply_to == 0 {
            debug!("dropped undeliverable message (handle {}): {reason}", msg.header.handle);
            return;
        }
        let mut reply = Message::new(msg.header.src, msg.header.reply_to, reason.into_bytes());
        reply.header.flags = FLAG_DEAD;
        self.route(reply, Origin::Local);
    }

    fn deliver_local(&mut self, msg: Message, origin: Origin, from_parent: bool) {
        let h = msg.header.handle;
        match h {
            handle::ADD_ROUTE | handle::DEL_ROUTE => {
                let Origin::Stream(sid) = origin else { return };
                if from_parent {
                    warn!("ignored route change from our parent");
                    return;
                }
                self.route_change(msg, sid);
            }
            handle::SHUTDOWN => {
                let parent_id = self.cfg().parent_ids.last().copied();
                if from_parent && Some(msg.header.src) == parent_id {
                    self.begin_shutdown("SHUTDOWN from parent");
                } else {
                    warn!(
                        "ignored SHUTDOWN from context {} (only our parent {:?} may stop us)",
                        msg.header.src, parent_id
                    );
                }
            }
            handle::ALLOCATE_ID if self.cfg().parent_ids.is_empty() => {
                let id = self.broker.allocate_context_id();
                let reply = Message::new(msg.header.src, msg.header.reply_to, body::to_json(&AllocatedId { id }));
                self.route(reply, Origin::Local);
            }
            handle::FORWARD_LOG if self.cfg().parent_ids.is_empty() => emit_remote_log(&msg),
            handle::KEEPALIVE => {
                // A probe from our parent: echo it. An echo: reading it was
                // the point (`last_heard`).
                if from_parent && msg.header.reply_to == handle::KEEPALIVE {
                    let echo = Message::new(msg.header.src, handle::KEEPALIVE, msg.body);
                    self.route(echo, Origin::Local);
                }
            }
            handle::CALL_FUNCTION if !self.routes.privileged(msg.header.auth) => {
                let reason = format!("context {} may not call context {}", msg.header.auth, self.cfg().id);
                warn!("{reason}");
                self.dead(&msg, reason);
            }
            _ => {
                if let Err(msg) = self.broker.deliver(msg) {
                    let reason = if h == handle::CALL_FUNCTION && self.broker.is_shutting_down() {
                        format!("context {} is shutting down", self.cfg().name)
                    } else {
                        format!("invalid handle {h} at context {}", self.cfg().id)
                    };
                    self.dead(&msg, reason);
                }
            }
        }
    }

    fn route_change(&mut self, msg: Message, sid: usize) {
        if msg.header.handle == handle::ADD_ROUTE {
            let Ok(add) = body::from_json::<AddRoute>(&msg.body, "ADD_ROUTE") else {
                warn!("bad ADD_ROUTE body from {}", msg.header.src);
                return;
            };
            if let Err(why) = self.may_add_route(add.id, sid) {
                warn!("refused ADD_ROUTE for context {} from context {}: {why}", add.id, msg.header.src);
                return;
            }
            debug!("route to {} ({}) via stream {sid}", add.id, add.name);
            self.routes.add(add.id, sid);
            self.broker.set_route(add.id, self.streams.get(&sid).map(|s| s.out.clone()));
            self.announce_route(add.id, &add.name);
        } else {
            let Ok(del) = body::from_json::<DelRoute>(&msg.body, "DEL_ROUTE") else {
                warn!("bad DEL_ROUTE body from {}", msg.header.src);
                return;
            };
            if self.routes.via(del.id) == Some(sid) {
                self.routes.remove(del.id, &del.reason);
                self.broker.set_route(del.id, None);
                self.broker.fail_peer(del.id, &del.reason);
                if self.parent.is_some() {
                    self.send_up(Message::new(self.parent_id(), handle::DEL_ROUTE, msg.body));
                }
            }
        }
    }

    /// A child may announce only contexts below it: never us, an ancestor,
    /// or a context already reached through another stream; and in the
    /// master, only ids it allocated for a connect through that stream.
    fn may_add_route(&self, id: u32, sid: usize) -> Result<(), &'static str> {
        if id == self.cfg().id || self.cfg().parent_ids.contains(&id) {
            return Err("that is us or an ancestor");
        }
        if self.routes.via(id).is_some_and(|s| s != sid) {
            return Err("that context is reached through another stream");
        }
        if self.cfg().parent_ids.is_empty() {
            let expected = lock(&self.broker.shared.expected).get(&id).copied();
            let via_ok = expected.is_some_and(|parent| {
                self.routes.via(parent) == Some(sid) || self.streams.get(&sid).is_some_and(|s| s.remote_id == parent)
            });
            if !via_ok {
                return Err("the master allocated no such context below that stream");
            }
        }
        Ok(())
    }

    // ---- shutdown ------------------------------------------------------
    //
    // The whole sequence lives here: close the call channel, SHUTDOWN to
    // children, wait for them (bounded by the grace), force the rest, kill
    // the commands' process groups, half-close and drain the captured
    // stdout/stderr, flush every pending log record to the parent, close
    // the parent stream, and end (the process, in an agent).

    fn begin_shutdown(&mut self, why: &str) {
        if self.shutdown_started.is_some() {
            return;
        }
        self.shutdown_started = Some(Instant::now());
        self.broker.shared.shutting_down.store(true, Ordering::SeqCst);
        debug!("shutting down: {why}");
        self.broker.unregister(handle::CALL_FUNCTION);
        let children: Vec<(usize, u32)> =
            self.streams.iter().filter(|(_, s)| !s.is_parent).map(|(&sid, s)| (sid, s.remote_id)).collect();
        for (sid, remote) in children {
            let mut msg = Message::new(remote, handle::SHUTDOWN, Vec::new());
            msg.header.src = self.cfg().id;
            msg.header.auth = self.cfg().id;
            self.enqueue(sid, &msg);
        }
        // Our commands get SIGTERM now, while the children shut down, so
        // every level's 300 ms before SIGKILL runs at once, not one after
        // the other. What they wrote still arrives: their pipes drain.
        for g in lock(&self.broker.shared.groups).iter() {
            let _ = sys::killpg(*g, libc::SIGTERM);
        }
        self.phase = Phase::Children { deadline: Instant::now() + self.cfg().grace };
    }

    /// Advance the shutdown sequence; true when the broker should stop.
    fn step_shutdown(&mut self) -> bool {
        let now = Instant::now();
        match self.phase {
            Phase::Running => false,
            Phase::Children { deadline } => {
                let children: Vec<usize> =
                    self.streams.iter().filter(|(_, s)| !s.is_parent).map(|(&sid, _)| sid).collect();
                if !children.is_empty() && now < deadline {
                    return false;
                }
                for sid in children {
                    self.force_child(sid);
                }
                let started = self.shutdown_started.unwrap_or(now);
                self.phase = Phase::Groups { deadline: started + Duration::from_millis(300) };
                self.step_shutdown()
            }
            Phase::Groups { deadline } => {
                let mut groups = lock(&self.broker.shared.groups);
                groups.retain(|&g| sys::group_alive(g));
                if !groups.is_empty() && now < deadline {
                    return false;
                }
                for g in groups.drain() {
                    debug!("process group {g} ignored SIGTERM; killing it");
                    let _ = sys::killpg(g, libc::SIGKILL);
                }
                drop(groups);
                self.half_close_capture();
                self.phase = Phase::Flush { deadline: now + Duration::from_millis(500) };
                self.step_shutdown()
            }
            Phase::Flush { deadline } => {
                let captures_open = !self.captures.is_empty();
                let parent_pending = self.parent.and_then(|p| self.streams.get(&p)).is_some_and(|s| s.out.pending());
                let queue_pending = !lock(&self.broker.shared.queue).is_empty();
                let reaping = !self.reaping.is_empty();
                (!captures_open && !parent_pending && !queue_pending && !reaping) || now >= deadline
            }
        }
    }

    /// Close a child's pipes and end its connection process: SIGTERM now,
    /// SIGKILL from `reap` if it lingers.
    fn force_child(&mut self, sid: usize) {
        if let Some(child) = self.streams.get_mut(&sid).and_then(|s| s.child.as_mut()) {
            let pid = child.id() as i32;
            let _ = sys::kill(pid, libc::SIGTERM);
            // A stopped process only acts on SIGTERM once continued.
            let _ = sys::kill(pid, libc::SIGCONT);
        }
        self.drop_stream(sid, FORCED);
    }

    fn half_close_capture(&mut self) {
        if self.captures.is_empty() {
            return;
        }
        match File::open("/dev/null") {
            Ok(null) => {
                // No `stdout().flush()`: a call thread may hold std's stdout
                // lock while blocked on the full pipe we are about to drain.
                for fd in [1, 2] {
                    let _ = sys::dup_onto(std::os::fd::AsFd::as_fd(&null), fd);
                }
            }
            Err(e) => warn!("can't open /dev/null to close stdout/stderr: {e}"),
        }
    }

    fn finish(mut self) {
        // Whatever the logger queued during the last steps goes out too;
        // after this, `push` handles late commands itself.
        self.take_commands();
        let late = {
            let mut queue = lock(&self.broker.shared.queue);
            self.broker.shared.finished.store(true, Ordering::SeqCst);
            std::mem::take(&mut *queue)
        };
        for cmd in late {
            self.broker.shared.pending.fetch_sub(1, Ordering::SeqCst);
            match cmd {
                Cmd::Send(msg) => self.route(msg, Origin::Local),
                Cmd::AddStream(mut s) => {
                    if let Some(child) = s.child.as_mut() {
                        kill_and_reap(child);
                    }
                }
                Cmd::Reap(child, what) => self.reaping.push((child, what, Instant::now())),
                Cmd::Capture { .. } | Cmd::Shutdown(_) => {}
            }
        }
        if let Some(p) = self.parent {
            let deadline = Instant::now() + Duration::from_millis(200);
            while self.streams.get(&p).is_some_and(|s| s.out.pending()) && Instant::now() < deadline {
                self.flush(p);
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        {
            // From here on, a thread's message takes the slow path, which
            // the finished broker drops.
            let mut outs = self.broker.shared.outs.write().unwrap_or_else(|p| p.into_inner());
            outs.parent = None;
            outs.via.clear();
        }
        let sids: Vec<usize> = self.streams.keys().copied().collect();
        for sid in sids {
            if let Some(child) = self.streams.get_mut(&sid).and_then(|s| s.child.as_mut()) {
                let _ = sys::kill(child.id() as i32, libc::SIGTERM);
            }
            if let Some(s) = self.streams.remove(&sid) {
                let _ = self.broker.shared.poller.delete(s.input.as_fd());
                s.out.unwatch(&self.broker.shared.poller);
                if let Some(src) = &s.stderr {
                    let _ = self.broker.shared.poller.delete(src.file.as_fd());
                }
                if let Some(child) = s.child {
                    self.reaping.push((child, s.name, Instant::now() + Duration::from_millis(300)));
                }
            }
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        while !self.reaping.is_empty() && Instant::now() < deadline {
            self.reap();
            std::thread::sleep(Duration::from_millis(5));
        }
        for (mut child, _, _) in self.reaping.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        {
            let mut handles = lock(&self.broker.shared.handles);
            handles.closed = true;
            for (_, entry) in handles.map.drain() {
                entry.queue.close();
            }
        }
        for path in lock(&self.broker.shared.temps).drain() {
            let _ = std::fs::remove_file(path);
        }
        if self.cfg().exit_process {
            sys::terminate_self();
        }
        let (m, cv) = &self.broker.shared.done;
        *lock(m) = true;
        cv.notify_all();
    }
}

/// Read what `src` has and forward complete lines as log records. Returns
/// false at EOF or on error. With `last`, a trailing partial line goes too.
fn drain_lines(src: &mut LineSource, cfg: &Config, broker: &Broker, last: bool) -> bool {
    let mut buf = [0u8; 16 * 1024];
    let mut open = true;
    loop {
        match (&src.file).read(&mut buf) {
            Ok(0) => {
                open = false;
                break;
            }
            Ok(n) => src.buf.extend_from_slice(buf.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                open = false;
                break;
            }
        }
        if src.buf.len() > 64 * 1024 {
            break;
        }
    }
    while let Some(nl) = src.buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = src.buf.drain(..=nl).collect();
        forward_line(src, cfg, broker, line.get(..nl).unwrap_or_default());
    }
    if (!open || last || src.buf.len() > 64 * 1024) && !src.buf.is_empty() {
        let line = std::mem::take(&mut src.buf);
        forward_line(src, cfg, broker, &line);
    }
    open
}

fn forward_line(src: &LineSource, cfg: &Config, broker: &Broker, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let rec = LogRecord {
        level: src.level as u8,
        name: cfg.name.clone(),
        target: src.target.clone(),
        msg: text.into_owned(),
    };
    if cfg.parent_ids.is_empty() {
        emit(&rec);
    } else {
        broker.send(Message::new(0, handle::FORWARD_LOG, body::to_json(&rec)));
    }
}

fn emit_remote_log(msg: &Message) {
    match body::from_json::<LogRecord>(&msg.body, "FORWARD_LOG") {
        Ok(rec) => emit(&rec),
        Err(e) => warn!("log record from context {}: {e}", msg.header.src),
    }
}

/// Hand a record to this process's `log` logger, tagged with its context.
fn emit(rec: &LogRecord) {
    let level = match rec.level {
        1 => log::Level::Error,
        2 => log::Level::Warn,
        3 => log::Level::Info,
        4 => log::Level::Debug,
        _ => log::Level::Trace,
    };
    let target = format!("spore@{}", rec.name);
    log::logger().log(
        &log::Record::builder()
            .level(level)
            .target(&target)
            .module_path(Some(&rec.target))
            .args(format_args!("{}", rec.msg))
            .build(),
    );
}
