//! Where messages for a local handle land: the table of handles the
//! broker delivers into, and the [`Mailbox`] a thread receives from (with
//! an optional pipe that becomes readable when a message arrives, so a
//! thread can `poll` a mailbox together with its own fds).

use crate::locks::lock;
use crate::spin;
use crate::sys;
use spore_protocol::{handle, Message, FLAG_DEAD};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Why a receive returned without a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvError {
    /// The deadline passed.
    Timeout,
    /// The broker is gone.
    Closed,
}

/// The queue behind a handle: the broker pushes, one thread pops. Closed
/// when the handle is unregistered (or the broker ends), which wakes the
/// waiting thread with [`RecvError::Closed`].
#[derive(Default)]
struct Queue {
    state: Mutex<(VecDeque<Message>, bool)>,
    /// Body bytes queued and not yet taken.
    bytes: AtomicUsize,
    cv: Condvar,
}

/// The most a handle waiting on a peer holds unread. Flow control keeps an
/// honest peer within a window of 1 MiB; one past this is flooding.
pub const MAILBOX_LIMIT: usize = 8 << 20;

impl Queue {
    fn lock(&self) -> MutexGuard<'_, (VecDeque<Message>, bool)> {
        lock(&self.state)
    }

    /// Queue a message; false if the queue is closed.
    fn push(&self, msg: Message) -> bool {
        let mut st = self.lock();
        if st.1 {
            return false;
        }
        self.bytes.fetch_add(msg.body.len(), Ordering::SeqCst);
        st.0.push_back(msg);
        self.cv.notify_one();
        true
    }

    /// Queue a last message (why the handle fails) and close.
    fn fail(&self, msg: Message) {
        let mut st = self.lock();
        if !st.1 {
            st.0.push_back(msg);
            st.1 = true;
            self.cv.notify_all();
        }
    }

    /// No more messages will come.
    fn close(&self) {
        self.lock().1 = true;
        self.cv.notify_all();
    }

    fn pop(&self, deadline: Option<Instant>) -> Result<Option<Message>, RecvError> {
        let Some(deadline) = deadline else { return self.pop_blocking(None) };
        let start = Instant::now();
        // A reply or the next call may be microseconds away.
        spin::spin_until(deadline.saturating_duration_since(start), || {
            let st = self.lock();
            !st.0.is_empty() || st.1
        });
        let got = self.pop_blocking(Some(deadline));
        spin::waited(start);
        got
    }

    fn pop_blocking(&self, deadline: Option<Instant>) -> Result<Option<Message>, RecvError> {
        let mut st = self.lock();
        loop {
            if let Some(msg) = st.0.pop_front() {
                self.bytes.fetch_sub(msg.body.len().min(self.bytes.load(Ordering::SeqCst)), Ordering::SeqCst);
                return Ok(Some(msg));
            }
            if st.1 {
                return Err(RecvError::Closed);
            }
            let Some(deadline) = deadline else { return Ok(None) };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvError::Timeout);
            }
            st = self.cv.wait_timeout(st, left).map_or_else(|p| p.into_inner().0, |r| r.0);
        }
    }
}

struct Entry {
    queue: Arc<Queue>,
    /// The remote context this handle waits on: only it (or a router on
    /// the path to it) may answer, and its loss fails the handle.
    peer: Option<u32>,
    wake: Option<File>,
}

impl Entry {
    fn push(&self, msg: Message) {
        if let Some(peer) =
            self.peer.filter(|_| self.queue.bytes.load(Ordering::SeqCst) + msg.body.len() > MAILBOX_LIMIT)
        {
            // A peer that ignores flow control: fail the handle, keep nothing.
            let why = format!("context {peer} sent more than {} MiB that was not read yet", MAILBOX_LIMIT >> 20);
            let mut dead = Message::new(msg.header.dst, msg.header.handle, why.into_bytes());
            dead.header.src = peer;
            dead.header.flags = FLAG_DEAD;
            self.queue.fail(dead);
        } else if self.queue.push(msg) {
            if let Some(mut w) = self.wake.as_ref() {
                let _ = w.write(&[1]);
            }
        }
    }
}

#[derive(Default)]
struct Entries {
    map: HashMap<u32, Entry, BuildHasherDefault<HandleHash>>,
    /// The broker has ended: new handles are born closed, so nobody waits
    /// on a broker that is gone.
    closed: bool,
}

/// Why a message was not delivered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Undelivered {
    /// Nobody listens on the handle.
    NoHandle,
    /// The handle waits on `peer`, and the sender may not answer for it.
    Foreign(u32),
}

/// The hash of a handle: a multiplication (Fibonacci hashing). Handles are
/// ours (a message can only look one up, never add one), so nothing can
/// flood the table; and the standard library's random SipHash would cost
/// the static agent its only use of it (~2 KB).
#[derive(Default)]
pub(crate) struct HandleHash(u64);

impl Hasher for HandleHash {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u32(u32::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(n)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The local handles of one context.
pub(crate) struct Handles {
    entries: Mutex<Entries>,
    next: AtomicU32,
}

impl Handles {
    pub(crate) fn new() -> Arc<Handles> {
        Arc::new(Handles { entries: Mutex::new(Entries::default()), next: AtomicU32::new(handle::FIRST_DYNAMIC) })
    }

    fn insert(self: &Arc<Self>, handle: u32, peer: Option<u32>, wake: Option<File>) -> Arc<Queue> {
        let queue = Arc::new(Queue::default());
        let mut entries = lock(&self.entries);
        if entries.closed {
            queue.close();
        }
        entries.map.insert(handle, Entry { queue: queue.clone(), peer, wake });
        queue
    }

    /// A fresh handle waiting on `peer`.
    pub(crate) fn mailbox(self: &Arc<Self>, peer: Option<u32>) -> Mailbox {
        let handle = self.next.fetch_add(1, Ordering::SeqCst);
        let queue = self.insert(handle, peer, None);
        Mailbox { handle, queue, table: self.clone(), wake: None, aliases: Vec::new() }
    }

    /// Like [`Handles::mailbox`], with a pipe that turns readable on delivery.
    pub(crate) fn mailbox_with_waker(self: &Arc<Self>, peer: Option<u32>) -> io::Result<Mailbox> {
        let (r, w) = sys::pipe()?;
        sys::set_nonblocking(r.as_fd(), true)?;
        sys::set_nonblocking(w.as_fd(), true)?;
        let handle = self.next.fetch_add(1, Ordering::SeqCst);
        let queue = self.insert(handle, peer, Some(w));
        Ok(Mailbox { handle, queue, table: self.clone(), wake: Some(r), aliases: Vec::new() })
    }

    /// A mailbox for a well-known handle.
    pub(crate) fn listen(self: &Arc<Self>, handle: u32) -> Mailbox {
        let queue = self.insert(handle, None, None);
        Mailbox { handle, queue, table: self.clone(), wake: None, aliases: Vec::new() }
    }

    /// A second handle delivering into `mb`'s queue.
    pub(crate) fn alias(self: &Arc<Self>, mb: &mut Mailbox) -> u32 {
        let handle = self.next.fetch_add(1, Ordering::SeqCst);
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.map.get(&mb.handle) {
            let alias = Entry { queue: entry.queue.clone(), peer: entry.peer, wake: None };
            entries.map.insert(handle, alias);
            mb.aliases.push(handle);
        }
        handle
    }

    /// Messages waiting at `handle`.
    pub(crate) fn queued(&self, handle: u32) -> usize {
        lock(&self.entries).map.get(&handle).map_or(0, |e| e.queue.lock().0.len())
    }

    /// Forget a handle (its mailbox sees `Closed`).
    pub(crate) fn unregister(&self, handle: u32) {
        if let Some(entry) = lock(&self.entries).map.remove(&handle) {
            entry.queue.close();
        }
    }

    /// Deliver `msg` to its handle if `may_answer(peer)` allows a handle
    /// waiting on `peer` to take it; else hand it back with the reason.
    pub(crate) fn deliver(&self, msg: Message, may_answer: impl Fn(u32) -> bool) -> Result<(), (Message, Undelivered)> {
        let entries = lock(&self.entries);
        let Some(entry) = entries.map.get(&msg.header.handle) else {
            return Err((msg, Undelivered::NoHandle));
        };
        if let Some(peer) = entry.peer.filter(|&p| !may_answer(p)) {
            return Err((msg, Undelivered::Foreign(peer)));
        }
        entry.push(msg);
        Ok(())
    }

    /// Fail every handle waiting on `peer` with a `DEAD` message (from
    /// this broker, `me`).
    pub(crate) fn fail_peer(&self, me: u32, peer: u32, reason: &str) {
        let entries = lock(&self.entries);
        for (&h, entry) in entries.map.iter().filter(|(_, e)| e.peer == Some(peer)) {
            let mut msg = Message::new(me, h, format!("disconnected: {reason}").into_bytes());
            msg.header.src = peer;
            msg.header.flags = FLAG_DEAD;
            entry.push(msg);
        }
    }

    /// The broker is gone: every waiter gets `why` (if any) as a `DEAD`
    /// message, then `Closed`; later handles are born closed.
    pub(crate) fn close_all(&self, me: u32, why: Option<&str>) {
        let mut entries = lock(&self.entries);
        entries.closed = true;
        for (h, entry) in entries.map.drain() {
            if let Some(why) = why {
                let mut msg = Message::new(me, h, why.as_bytes().to_vec());
                msg.header.src = me;
                msg.header.flags = FLAG_DEAD;
                entry.push(msg);
            }
            entry.queue.close();
        }
    }
}

/// A registered handle and its queue. Dropping it unregisters the handle.
pub struct Mailbox {
    /// The handle peers address.
    pub handle: u32,
    queue: Arc<Queue>,
    table: Arc<Handles>,
    wake: Option<File>,
    aliases: Vec<u32>,
}

impl Mailbox {
    /// Wait for the next message until `deadline`.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Message, RecvError> {
        let msg = self.queue.pop(Some(deadline))?.ok_or(RecvError::Timeout)?;
        self.drain_wake();
        Ok(msg)
    }

    /// The next message if one is queued.
    pub fn try_recv(&self) -> Result<Option<Message>, RecvError> {
        // Drain the wake pipe first: a message arriving after this leaves
        // its byte in the pipe, so a poller waiting on it can't miss it.
        self.drain_wake();
        self.queue.pop(None)
    }

    /// The pipe that turns readable when a message arrives (only for
    /// mailboxes made with [`Broker::mailbox_with_waker`]).
    pub fn waker(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.wake.as_ref().map(|f| f.as_fd())
    }

    fn drain_wake(&self) {
        if let Some(mut f) = self.wake.as_ref() {
            let mut buf = [0u8; 64];
            while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
        }
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.table.unregister(self.handle);
        for &h in &self.aliases {
            self.table.unregister(h);
        }
    }
}
