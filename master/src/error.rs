//! What can go wrong, always naming the context (its path in the tree).

use std::fmt;
use std::io;

/// A spore failure.
#[derive(Debug)]
pub enum Error {
    /// A connection could not be made; `cause` carries the remote's last words.
    Connect {
        /// The hop that failed, e.g. `local/local`.
        target: String,
        /// Why, with what the remote printed last.
        cause: String,
    },
    /// The context went away while we waited on it.
    Disconnected {
        /// The context.
        context: String,
        /// What the router saw, e.g. `stream closed`.
        reason: String,
    },
    /// A router could not deliver the request (`no route to 17`, `invalid
    /// handle 1234`, `... is shutting down`).
    Dead {
        /// The context addressed.
        context: String,
        /// The router's reason.
        reason: String,
    },
    /// The operation ran and failed on the remote.
    Remote {
        /// The context.
        context: String,
        /// Class: `not_found`, `permission_denied`, `io`, `invalid`, ...
        kind: String,
        /// The remote's message (names the path or command).
        message: String,
    },
    /// No answer within the deadline.
    Timeout {
        /// The context.
        context: String,
        /// What we waited for.
        what: String,
    },
    /// The router is shutting down or gone.
    ShuttingDown,
    /// The call's [`crate::Cancel`] token was cancelled: the call was
    /// abandoned, and the remote told to kill what it started.
    Cancelled {
        /// The context.
        context: String,
        /// What the call was waiting for, e.g. `the command`.
        what: String,
    },
    /// The peer broke the protocol.
    Protocol {
        /// The context.
        context: String,
        /// What was wrong.
        message: String,
    },
    /// A local failure (reading the file to upload, writing the download).
    Local {
        /// What we were doing.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// Bad arguments: a target we can't parse, a missing agent image.
    Usage(String),
}

impl Error {
    /// The remote's error class, for `Remote` errors.
    pub fn remote_kind(&self) -> Option<&str> {
        match self {
            Error::Remote { kind, .. } => Some(kind),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { target, cause } => write!(f, "{target}: connection failed: {cause}"),
            Error::Disconnected { context, reason } => write!(f, "{context}: disconnected: {reason}"),
            Error::Dead { context, reason } => write!(f, "{context}: {reason}"),
            Error::Remote { context, message, .. } => write!(f, "{context}: {message}"),
            Error::Timeout { context, what } => write!(f, "{context}: timed out waiting for {what}"),
            Error::ShuttingDown => f.write_str("spore is shutting down"),
            Error::Cancelled { context, what } => write!(f, "{context}: cancelled while waiting for {what}"),
            Error::Protocol { context, message } => write!(f, "{context}: protocol error: {message}"),
            Error::Local { what, source } => write!(f, "{what}: {source}"),
            Error::Usage(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Local { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
