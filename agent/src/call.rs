//! One call being served: its request, how to answer it, how it fails.

use crate::broker::Broker;
use crate::mailbox::Mailbox;
use spore_protocol::body::{self, ErrorReply, StreamOpen};
use spore_protocol::{Message, FLAG_DEAD, FLAG_END};
use std::fmt;
use std::io;

/// The [`OpError::kind`] of a request whose body does not decode: its
/// answer is a `DEAD` reply, as for any message that can't be handled.
pub const UNDECODABLE: &str = "undecodable";

/// What an operation returns: the JSON body of its final reply, or an error.
pub type OpResult = Result<Vec<u8>, OpError>;

/// A failed operation, sent to the caller as an [`ErrorReply`].
#[derive(Debug, Clone)]
pub struct OpError {
    /// Short class: `not_found`, `permission_denied`, `invalid`, `io`, ...
    pub kind: &'static str,
    /// What failed, naming the path or command.
    pub message: String,
}

impl OpError {
    /// An error of class `kind`.
    pub fn new(kind: &'static str, message: impl Into<String>) -> OpError {
        OpError { kind, message: message.into() }
    }

    /// An I/O error while doing `what` (e.g. `open /etc/x`).
    pub fn io(what: impl fmt::Display, e: &io::Error) -> OpError {
        let kind = match e.kind() {
            io::ErrorKind::NotFound => "not_found",
            io::ErrorKind::PermissionDenied => "permission_denied",
            io::ErrorKind::AlreadyExists => "already_exists",
            io::ErrorKind::InvalidInput => "invalid",
            _ => "io",
        };
        OpError { kind, message: format!("{what}: {e}") }
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A call being served by an operation.
pub struct Call {
    /// The broker, to send and register handles.
    pub broker: Broker,
    /// The request message (`CALL_FUNCTION`).
    pub request: Message,
}

impl Call {
    /// Decode the request body as the operation's arguments. A body that
    /// does not decode is answered with a `DEAD` reply naming what failed.
    pub fn args<T: spore_protocol::json::Decode>(&self, what: &'static str) -> Result<T, OpError> {
        body::decode(&self.request.body, what).map_err(|e| OpError::new(UNDECODABLE, e.to_string()))
    }

    /// The caller's context id.
    pub fn caller(&self) -> u32 {
        self.request.header.src
    }

    /// Send a message to the caller's reply handle.
    pub fn reply(&self, body: Vec<u8>, flags: u8) {
        self.send_to(self.request.header.reply_to, body, flags);
    }

    /// Send a message to one of the caller's handles.
    pub fn send_to(&self, handle: u32, body: Vec<u8>, flags: u8) {
        if handle == 0 {
            return;
        }
        let mut msg = Message::new(self.caller(), handle, body);
        msg.header.flags = flags;
        self.broker.send(msg);
    }

    /// Open this call's stream: register a handle (with a waker, so it can
    /// be polled with other fds) and tell the caller about it.
    pub fn open_stream(&self) -> Result<Mailbox, OpError> {
        let mb = self
            .broker
            .mailbox_with_waker(Some(self.caller()))
            .map_err(|e| OpError::io("can't make a stream handle", &e))?;
        self.reply(body::encode(&StreamOpen { stream: mb.handle }), 0);
        Ok(mb)
    }

    /// Send the final reply for `result`.
    pub(crate) fn finish(&self, result: OpResult) {
        let result = match result {
            // Whatever the operation saw (a command killed by SIGTERM, a
            // stream cut), the real cause is the shutdown: say so.
            _ if self.broker.is_shutting_down() => Err(OpError::new(
                "shutting_down",
                format!("{} is shutting down; the call was abandoned", self.broker.name()),
            )),
            other => other,
        };
        match result {
            Ok(body) => self.reply(body, FLAG_END),
            Err(e) if e.kind == UNDECODABLE => self.reply(e.message.into_bytes(), FLAG_DEAD),
            Err(e) => self.reply(body::encode(&ErrorReply { error: e.message, kind: e.kind.to_string() }), FLAG_END),
        }
    }
}

/// Serialize a result for [`OpResult`].
pub fn ok<T: spore_protocol::json::Encode>(value: &T) -> OpResult {
    Ok(body::encode(value))
}
