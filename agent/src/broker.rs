//! The broker: one thread polling every fd of a context (see
//! `event_loop`), and [`Broker`], the cheap handle other threads use to
//! send, register handles and hand over streams. The master runs this same
//! code as context 0; its only differences are its policy (it allocates
//! ids) and that its logger runs on a thread of its own.
//!
//! A thread's message goes straight into its stream's pipe when no broker
//! command is pending (a call's request and its reply go out without
//! waking the broker); the broker keeps the full pipes, local delivery,
//! DEAD replies and the ordering after commands.

use crate::event_loop::Loop;
use crate::locks::{lock, read, write};
use crate::logs::LogQueue;
use crate::mailbox::{Handles, Mailbox};
use crate::poller::{Poller, Source};
use crate::procs::{self, Groups};
use crate::routes::Routes;
use crate::shared::{on_broker_thread, Cmd, Prepared, Shared};
use crate::shutdown;
use crate::spawn::Child;
use crate::stream::{NewStream, Out, LOG_HIGH, OUT_HIGH, SEND_STALL};
use crate::sys;
use crate::vecmap::VecMap;
use spore_protocol::body::{self, AllocatedId};
use spore_protocol::{handle, Message};
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
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

impl Config {
    /// Is this the master (context 0, no parent)?
    pub fn is_master(&self) -> bool {
        self.parent_ids.is_empty()
    }
}

/// A handle on the broker thread, cheap to clone.
#[derive(Clone)]
pub struct Broker {
    pub(crate) shared: Arc<Shared>,
}

impl Broker {
    /// Start the broker thread.
    pub fn start(cfg: Config) -> io::Result<Broker> {
        let log_queue = if cfg.is_master() { Some(LogQueue::start()?) } else { None };
        let routes = Arc::new(RwLock::new(Routes::new(cfg.id, cfg.parent_ids.clone())));
        let shared = Arc::new(Shared {
            cfg,
            poller: Poller::new()?,
            queue: Mutex::new(Vec::new()),
            handles: Handles::new(),
            routes,
            outs: RwLock::new(VecMap::new()),
            groups: Mutex::new(Groups::default()),
            temps: Mutex::new(Vec::new()),
            shutting_down: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            out_failed: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
            next_sid: AtomicUsize::new(1),
            log_queue,
            dropped_logs: AtomicU64::new(0),
            done: (Mutex::new(false), Condvar::new()),
        });
        let looper = Loop::new(shared.clone());
        let guarded = shared.clone();
        std::thread::Builder::new().name("spore-broker".into()).spawn(move || {
            // A broker that dies must not leave anyone waiting: every call
            // fails at once, naming the cause.
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| looper.run())) {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                guarded.mark_done(Some(&format!("the broker thread of {} died: {what}", guarded.cfg.name)));
            }
        })?;
        Ok(Broker { shared })
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
            // Too late: the broker is gone. A process handed over now must
            // not outlive us unwatched.
            match cmd {
                Cmd::AddStream(mut s) => {
                    if let Some(child) = s.child.as_mut() {
                        procs::kill_and_reap(child);
                    }
                }
                Cmd::Reap(mut child, _) => procs::kill_and_reap(&mut child),
                _ => {}
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
        if msg.header.dst == me {
            return self.push(Cmd::Send(msg));
        }
        let sid = read(&self.shared.routes).route(msg.header.dst);
        let out = sid.and_then(|sid| read(&self.shared.outs).get(&sid).cloned());
        if let Some(out) = &out {
            // Back-pressure: a full stream's log records are dropped (and
            // counted); other senders wait for room.
            let queued = out.queued();
            if msg.header.handle == handle::FORWARD_LOG && queued >= LOG_HIGH {
                self.shared.dropped_logs.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if queued >= OUT_HIGH && !on_broker_thread() {
                out.wait_room(Instant::now() + SEND_STALL);
            }
        }
        if let Some(out) = out.filter(|_| self.shared.pending.load(Ordering::SeqCst) == 0) {
            if out.send(&msg, &self.shared.poller) {
                return;
            }
            self.shared.out_failed.store(true, Ordering::SeqCst);
        }
        self.push(Cmd::Send(msg));
    }

    /// Bytes written so far to the stream a message to context `id` takes
    /// (its own, the child's it is reached through, or the parent's),
    /// headers included: what crossed that link. `None` without a route.
    pub fn bytes_written_toward(&self, id: u32) -> Option<u64> {
        let sid = read(&self.shared.routes).route(id)?;
        read(&self.shared.outs).get(&sid).map(|out| out.written())
    }

    /// Our child on the path down to context `id` (`id` itself when it is
    /// our child); `None` when `id` is not below us.
    pub fn child_toward(&self, id: u32) -> Option<u32> {
        read(&self.shared.routes).child_toward(id)
    }

    /// The context that started context `id`, while it is below us or
    /// joining (see [`Broker::is_below`]).
    pub fn parent_of(&self, id: u32) -> Option<u32> {
        read(&self.shared.routes).parent_of(id)
    }

    /// Is context `id` below us, or joining: its connect has succeeded and
    /// the broker thread (or, for a context further down, its parent's
    /// announcement) has yet to add it? What a caller holding a connected
    /// context asks; `false` once it is lost or its connect failed.
    pub fn is_below(&self, id: u32) -> bool {
        let routes = read(&self.shared.routes);
        routes.child_toward(id).is_some() || routes.is_joining(id)
    }

    /// Hand a connected stream to the broker. From the moment this returns,
    /// messages to its context go out through it (the greeting first).
    pub fn add_stream(&self, s: NewStream) {
        let sid = self.shared.next_sid.fetch_add(1, Ordering::SeqCst);
        let NewStream { remote_id, name, input, output, stderr, mut child, leftover, is_parent, greeting } = s;
        let refuse = |child: &mut Option<Child>, why: String| {
            crate::logs::line(log::Level::Warn, module_path!(), &format!("stream {name}: {why}"));
            if !is_parent {
                self.forget_child_id(remote_id);
            }
            if let Some(c) = child.as_mut() {
                procs::kill_and_reap(c);
            }
        };
        // A blocking write would stall every thread that sends through it.
        if let Err(e) = sys::set_nonblocking(output.as_fd(), true) {
            return refuse(&mut child, format!("can't make its pipe non-blocking: {e}"));
        }
        let out = Arc::new(Out::new(output, Source::Output(sid)));
        if let Some(mut hello) = greeting {
            hello.header.src = self.id();
            hello.header.auth = self.id();
            if !out.send(&hello, &self.shared.poller) {
                self.shared.out_failed.store(true, Ordering::SeqCst);
            }
        }
        {
            let mut outs = write(&self.shared.outs);
            // `finish` sets `finished` before it clears `outs`: checked under
            // the lock, a stream is never registered with a gone broker.
            if self.shared.finished.load(Ordering::SeqCst) {
                drop(outs);
                return refuse(&mut child, "the broker has finished".into());
            }
            outs.insert(sid, out);
        }
        let prepared = Prepared { sid, remote_id, name, input, stderr, child, leftover, is_parent };
        self.push(Cmd::AddStream(Box::new(prepared)));
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

    /// The longest this broker's shutdown takes.
    pub fn shutdown_bound(&self) -> Duration {
        shutdown::bound(self.shared.cfg.grace)
    }

    /// Master: a fresh id for a context that `parent` will start; only
    /// `parent`'s stream may announce it, once. Every router on the way to
    /// `parent` is told first (`ALLOCATE_ID`). `None` in an agent, or once
    /// the id space is spent.
    pub fn allocate_child_id(&self, parent: u32) -> Option<u32> {
        let id = write(&self.shared.routes).allocate(parent)?;
        if parent != self.id() {
            self.send(Message::new(parent, handle::ALLOCATE_ID, body::encode(&AllocatedId { id, parent })));
        }
        Some(id)
    }

    /// The connect `id` was allocated for failed: nobody may add it now.
    pub fn forget_child_id(&self, id: u32) {
        write(&self.shared.routes).forget(id);
    }

    /// Register a fresh handle. `peer` is the remote context it waits on:
    /// only it (or a router on the path reporting it lost) may answer, and
    /// its loss fails the handle with a `DEAD` "disconnected" message.
    pub fn mailbox(&self, peer: Option<u32>) -> Mailbox {
        self.shared.handles.mailbox(peer)
    }

    /// Like [`Broker::mailbox`], with a pipe that turns readable on delivery.
    pub fn mailbox_with_waker(&self, peer: Option<u32>) -> io::Result<Mailbox> {
        self.shared.handles.mailbox_with_waker(peer)
    }

    /// A second handle delivering into `mb`'s queue (e.g. an `exec`'s
    /// stderr beside its stdout), unregistered when `mb` is dropped.
    pub fn alias(&self, mb: &mut Mailbox) -> u32 {
        self.shared.handles.alias(mb)
    }

    /// A mailbox for a well-known handle.
    pub fn listen(&self, handle: u32) -> Mailbox {
        self.shared.handles.listen(handle)
    }

    /// Forget a handle (its mailbox sees `Closed`); later messages for it
    /// get a `DEAD` reply.
    pub fn unregister(&self, handle: u32) {
        self.shared.handles.unregister(handle);
    }

    /// Remember a process group to signal at shutdown (SIGTERM at once,
    /// SIGKILL `shutdown::COMMAND_TERM_GRACE` later).
    pub fn track_group(&self, pgid: i32) {
        lock(&self.shared.groups).insert(pgid);
    }

    /// Forget a process group that has no members left.
    pub fn untrack_group(&self, pgid: i32) {
        lock(&self.shared.groups).remove(pgid);
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
        lock(&self.shared.temps).push(path.to_path_buf());
    }

    /// The temporary file was renamed into place or removed.
    pub fn untrack_temp(&self, path: &std::path::Path) {
        lock(&self.shared.temps).retain(|p| p != path);
    }

    /// Test hook: make the broker thread panic, to check that every waiting
    /// call fails at once.
    #[doc(hidden)]
    pub fn crash_for_test(&self) {
        self.push(Cmd::Crash);
    }
}
