//! Where messages for a local handle land: a channel the broker fills, with
//! an optional pipe that becomes readable when a message arrives, so a
//! thread can `poll` a mailbox together with its own fds.

use crate::broker::Broker;
use crate::spin;
use spore_protocol::Message;
use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
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
pub(crate) struct Queue {
    state: Mutex<(VecDeque<Message>, bool)>,
    cv: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, (VecDeque<Message>, bool)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a message; false if the queue is closed.
    pub(crate) fn push(&self, msg: Message) -> bool {
        let mut st = self.lock();
        if st.1 {
            return false;
        }
        st.0.push_back(msg);
        self.cv.notify_one();
        true
    }

    /// No more messages will come.
    pub(crate) fn close(&self) {
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

/// A registered handle and its queue. Dropping it unregisters the handle.
pub struct Mailbox {
    /// The handle peers address.
    pub handle: u32,
    pub(crate) queue: Arc<Queue>,
    pub(crate) broker: Broker,
    pub(crate) wake: Option<File>,
    pub(crate) aliases: Vec<u32>,
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
        self.broker.unregister(self.handle);
        for &h in &self.aliases {
            self.broker.unregister(h);
        }
    }
}
