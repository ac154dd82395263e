//! The built-in operations.

mod connect;
mod exec;
mod fanout;
mod fs;
mod info;

use crate::call::{Call, OpError, OpResult};
use crate::mailbox::{Mailbox, RecvError};
use spore_protocol::Message;
use std::time::{Duration, Instant};

/// How long an operation waits for its peer (an ack, the next chunk)
/// before giving up. A lost peer ends the wait at once with a `DEAD`
/// message; this bounds the wait on a peer that is alive but stuck.
pub(crate) const STALL: Duration = Duration::from_secs(300);

/// Every built-in operation and its name.
/// A built-in operation.
pub(crate) type Op = fn(&Call) -> OpResult;

pub(crate) fn builtins() -> Vec<(&'static str, Op)> {
    vec![
        ("ping", info::ping),
        ("info", info::info),
        ("exec", exec::exec),
        ("read_file", fs::read_file),
        ("write_file", fs::write_file),
        ("stat", fs::stat),
        ("list_dir", fs::list_dir),
        ("remove", fs::remove),
        ("mkdir", fs::mkdir),
        ("symlink", fs::symlink),
        ("read_link", fs::read_link),
        ("connect", connect::connect),
        ("fanout_write", fanout::fanout_write),
    ]
}

/// The next message on a call's stream, or an error naming what we waited for.
pub(crate) fn next_message(mb: &Mailbox, what: &str) -> Result<Message, OpError> {
    match mb.recv_deadline(Instant::now() + STALL) {
        Ok(msg) if msg.is_dead() => {
            Err(OpError::new("disconnected", format!("{what}: {}", String::from_utf8_lossy(&msg.body))))
        }
        Ok(msg) => Ok(msg),
        Err(RecvError::Timeout) => {
            Err(OpError::new("timeout", format!("{what}: peer silent for {}s", STALL.as_secs())))
        }
        Err(RecvError::Closed) => Err(OpError::new("shutting_down", format!("{what}: shutting down"))),
    }
}
