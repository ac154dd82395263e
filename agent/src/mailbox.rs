//! Where messages for a local handle land: a channel the broker fills, with
//! an optional pipe that becomes readable when a message arrives, so a
//! thread can `poll` a mailbox together with its own fds.

use crate::broker::Broker;
use spore_protocol::Message;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Instant;

/// Why a receive returned without a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvError {
    /// The deadline passed.
    Timeout,
    /// The broker is gone.
    Closed,
}

/// A registered handle and its queue. Dropping it unregisters the handle.
pub struct Mailbox {
    /// The handle peers address.
    pub handle: u32,
    pub(crate) rx: Receiver<Message>,
    pub(crate) broker: Broker,
    pub(crate) wake: Option<File>,
    pub(crate) aliases: Vec<u32>,
}

impl Mailbox {
    /// Wait for the next message until `deadline`.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Message, RecvError> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        let msg = match self.rx.recv_timeout(timeout) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => return Err(RecvError::Timeout),
            Err(RecvTimeoutError::Disconnected) => return Err(RecvError::Closed),
        };
        self.drain_wake();
        Ok(msg)
    }

    /// The next message if one is queued.
    pub fn try_recv(&self) -> Result<Option<Message>, RecvError> {
        match self.rx.try_recv() {
            Ok(msg) => Ok(Some(msg)),
            Err(TryRecvError::Empty) => {
                self.drain_wake();
                Ok(None)
            }
            Err(TryRecvError::Disconnected) => Err(RecvError::Closed),
        }
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
