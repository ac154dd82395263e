//! What the broker thread and the threads using [`crate::Broker`] share:
//! the command queue, the handles, the one routing table, the streams'
//! write sides, the process groups.

use crate::broker::Config;
use crate::locks::lock;
use crate::logs::LogQueue;
use crate::mailbox::Handles;
use crate::poller::Poller;
use crate::procs::Groups;
use crate::routes::{Routes, StreamId};
use crate::spawn::Child;
use crate::stream::Out;
use crate::vecmap::VecMap;
use spore_protocol::Message;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

/// Where an agent writes its last words when its parent stream breaks
/// (the original stderr: the connection's, which the parent may still read).
static LAST_WORDS: std::sync::OnceLock<File> = std::sync::OnceLock::new();

/// Keep `file` (a dup of the original stderr) for last words.
pub fn set_last_words(file: File) {
    let _ = LAST_WORDS.set(file);
}

pub(crate) fn say_last_words(text: &str) {
    if let Some(mut f) = LAST_WORDS.get() {
        let _ = f.write_all(text.as_bytes());
    }
}

/// What threads ask of the broker thread.
pub(crate) enum Cmd {
    Send(Message),
    AddStream(Box<Prepared>),
    Capture {
        file: File,
        target: &'static str,
    },
    Shutdown(String),
    Reap(Child, String),
    /// Test hook: make the broker thread panic.
    Crash,
}

/// A stream prepared by `Broker::add_stream` in the caller's thread: the
/// write side is already shared, the rest goes to the broker thread.
pub(crate) struct Prepared {
    pub(crate) sid: StreamId,
    pub(crate) remote_id: u32,
    pub(crate) name: String,
    pub(crate) input: File,
    pub(crate) stderr: Option<File>,
    pub(crate) child: Option<Child>,
    pub(crate) leftover: Vec<u8>,
    pub(crate) is_parent: bool,
}

pub(crate) struct Shared {
    pub(crate) cfg: Config,
    pub(crate) poller: Poller,
    pub(crate) queue: Mutex<Vec<Cmd>>,
    pub(crate) handles: Arc<Handles>,
    /// The one routing table: the core writes it, senders read it.
    pub(crate) routes: Arc<RwLock<Routes>>,
    /// Every stream's write side, by stream id.
    pub(crate) outs: RwLock<VecMap<StreamId, Arc<Out>>>,
    pub(crate) groups: Mutex<Groups>,
    pub(crate) temps: Mutex<Vec<std::path::PathBuf>>,
    pub(crate) shutting_down: AtomicBool,
    /// The loop has ended; commands are no longer taken.
    pub(crate) finished: AtomicBool,
    /// A sending thread saw a stream's write fail: the broker drops it.
    pub(crate) out_failed: AtomicBool,
    /// Commands queued or being carried out. A thread takes the fast path
    /// only when there are none, so its message can't overtake what they
    /// send (a connect's reply must follow its ADD_ROUTE).
    pub(crate) pending: AtomicUsize,
    pub(crate) next_sid: AtomicUsize,
    /// The master's logging thread.
    pub(crate) log_queue: Option<Arc<LogQueue>>,
    /// Log records dropped because the stream to the parent was full.
    pub(crate) dropped_logs: AtomicU64,
    pub(crate) done: (Mutex<bool>, Condvar),
}

impl Shared {
    pub(crate) fn temps(&self) -> Vec<std::path::PathBuf> {
        lock(&self.temps).drain(..).collect()
    }

    /// The broker thread has ended (`why`: it died): fail every waiter.
    pub(crate) fn mark_done(&self, why: Option<&str>) {
        self.finished.store(true, Ordering::SeqCst);
        self.handles.close_all(self.cfg.id, why);
        let (m, cv) = &self.done;
        *lock(m) = true;
        cv.notify_all();
    }
}

thread_local! {
    /// Set on a broker thread, which must never wait for room.
    static ON_BROKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// This thread is a broker's.
pub(crate) fn mark_broker_thread() {
    ON_BROKER.with(|b| b.set(true));
}

/// Is this thread a broker's?
pub(crate) fn on_broker_thread() -> bool {
    ON_BROKER.with(|b| b.get())
}
