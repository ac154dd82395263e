//! A stream's two halves: the connection handed to the broker
//! ([`NewStream`]), and the write side ([`Out`]) that the broker and the
//! threads sending from this context share.

use crate::locks::lock;
use crate::poller::{Interest, Poller, Source};
use crate::spawn::Child;
use crate::sys;
use spore_protocol::Message;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

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

/// The write side of a stream. The broker and the threads sending from this
/// context append to it; whoever finds it drained writes at once, so a
/// call's request and its reply go out without waking the broker.
pub(crate) struct Out {
    file: File,
    key: Source,
    state: Mutex<OutState>,
    /// Signalled when the buffer falls below [`OUT_HIGH`].
    room: Condvar,
    /// Bytes written to the fd so far (what crossed this link).
    written: AtomicU64,
}

/// Bytes queued for a stream past which its feeders stop: the broker stops
/// reading what feeds it, threads sending into it wait (up to
/// [`SEND_STALL`]), and log records for it are dropped and counted.
pub const OUT_HIGH: usize = 8 << 20;
/// Log records are dropped already past this much queued.
pub const LOG_HIGH: usize = 4 << 20;
/// The longest a thread waits for room in a full stream before it queues
/// anyway (a peer that reads nothing for this long is being cut off by its
/// keepalive, or by the operator).
pub const SEND_STALL: Duration = Duration::from_secs(300);

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
    /// The write side of `file`, polled under `key`.
    pub(crate) fn new(file: File, key: Source) -> Out {
        Out { file, key, state: Mutex::new(OutState::default()), room: Condvar::new(), written: AtomicU64::new(0) }
    }

    /// Bytes written to the fd so far, headers included.
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued(&self) -> usize {
        let st = lock(&self.state);
        st.buf.len().saturating_sub(st.pos)
    }

    /// Wait (a sending thread, never the broker) until fewer than
    /// [`OUT_HIGH`] bytes are queued, the stream failed, or `deadline`.
    pub(crate) fn wait_room(&self, deadline: Instant) {
        let mut st = lock(&self.state);
        while st.buf.len().saturating_sub(st.pos) >= OUT_HIGH && st.failed.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            st = self.room.wait_timeout(st, left).map_or_else(|p| p.into_inner().0, |r| r.0);
        }
    }

    /// The failure a sending thread saw, if any.
    pub(crate) fn failed(&self) -> Option<String> {
        lock(&self.state).failed.clone()
    }

    /// Queue a message and write what the pipe takes now. False if the
    /// stream has failed.
    pub(crate) fn send(&self, msg: &Message, poller: &Poller) -> bool {
        let mut st = lock(&self.state);
        if st.failed.is_some() {
            return false;
        }
        msg.encode_into(&mut st.buf);
        self.write(&mut st, poller);
        st.failed.is_none()
    }

    /// Write what is pending (on a writable event); the failure, if any.
    pub(crate) fn flush(&self, poller: &Poller) -> Option<String> {
        let mut st = lock(&self.state);
        self.write(&mut st, poller);
        st.failed.clone()
    }

    fn write(&self, st: &mut OutState, poller: &Poller) {
        while st.pos < st.buf.len() {
            match (&self.file).write(st.buf.get(st.pos..).unwrap_or_default()) {
                Ok(n) => {
                    st.pos += n;
                    self.written.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    st.failed = Some(format!("write failed: {e}"));
                    st.buf = Vec::new();
                    st.pos = 0;
                }
            }
        }
        if st.buf.len().saturating_sub(st.pos) < OUT_HIGH || st.failed.is_some() {
            self.room.notify_all();
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
    pub(crate) fn peer_closed(&self) -> bool {
        let mut fds = [sys::pollfd(self.file.as_raw_fd(), 0)];
        matches!(sys::poll(&mut fds, 0), Ok(n) if n > 0)
            && fds.iter().any(|f| f.revents & (libc::POLLERR | libc::POLLHUP) != 0)
    }

    pub(crate) fn pending(&self) -> bool {
        let st = lock(&self.state);
        st.pos < st.buf.len()
    }

    /// Start polling the fd (broker thread, once).
    pub(crate) fn watch(&self, poller: &Poller) -> io::Result<()> {
        let mut st = lock(&self.state);
        // SAFETY (of the poller's rule): `unwatch` deletes the fd before the
        // stream lets go of it, and the Out (owning the fd) outlives any Arc
        // a sender still holds.
        unsafe { poller.add(self.file.as_fd(), self.key, Interest::NONE)? };
        st.watched = true;
        if st.pos < st.buf.len() {
            poller.modify(self.file.as_fd(), self.key, Interest::WRITE)?;
            st.armed = true;
        }
        Ok(())
    }

    pub(crate) fn unwatch(&self, poller: &Poller) {
        let mut st = lock(&self.state);
        if st.watched {
            let _ = poller.delete(self.file.as_fd());
            st.watched = false;
        }
    }
}
