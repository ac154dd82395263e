//! spore's wire format, sans-IO: bytes in, messages out.
//!
//! Every spore message is a 28-byte big-endian [`Header`] followed by
//! `len` body bytes. This crate encodes and decodes that framing and
//! nothing else: it does no I/O, reads no clock and starts no threads. The
//! agent's broker and the master own the file descriptors; they hand the
//! bytes they read to a [`Decoder`] and write the bytes of
//! [`Message::encode`] themselves.
//!
//! # Driving the decoder
//!
//! Push bytes as they arrive, in whatever pieces the pipe delivers them,
//! then pop messages until [`Decoder::next`] says it needs more:
//!
//! - `Ok(Some(message))`: a whole frame arrived; pop again, there may be more.
//! - `Ok(None)`: the buffered bytes end inside a frame; read more and push.
//! - `Err(error)`: the stream is corrupt (bad magic or version, unknown flag
//!   bits, a length over the limit). Drop the stream and log the reason; the
//!   decoder is poisoned and returns the same error from then on.
//!
//! At end of file, [`Decoder::finish`] tells a clean end from a stream cut
//! inside a frame.
//!
//! ```
//! use spore_protocol::{handle, Decoder, Message, DEFAULT_MAX_MESSAGE};
//!
//! let wire = Message::new(1, handle::CALL_FUNCTION, br#"{"op":"ping"}"#.to_vec()).encode();
//!
//! let mut decoder = Decoder::new(DEFAULT_MAX_MESSAGE);
//! let mut received = Vec::new();
//! for piece in wire.chunks(5) {
//!     // e.g. what one read(2) returned
//!     decoder.push(piece);
//!     while let Some(message) = decoder.next()? {
//!         received.push(message);
//!     }
//! }
//! decoder.finish()?; // EOF: nothing left half-read
//!
//! assert_eq!(received.len(), 1);
//! assert_eq!(received[0].header.handle, handle::CALL_FUNCTION);
//! assert_eq!(received[0].body, br#"{"op":"ping"}"#);
//! # Ok::<(), spore_protocol::FrameError>(())
//! ```
//!
//! # Scope
//!
//! In scope: the header layout and its validation, the incremental frame
//! decoder with its length limit, the well-known [`handle`]s and context
//! ids, the message [`body`] types, and a small SHA-256 ([`sha256`]) used to
//! name the cached agent binary.
//!
//! Out of scope: reading and writing file descriptors, routing, `auth_id`
//! stamping, flow control, timeouts and logging. Those belong to the agent
//! library, which runs the same code in the master.

#![forbid(unsafe_code)]

pub mod body;
mod decoder;
mod header;
pub mod json;
mod sha256;

pub use decoder::Decoder;
pub use header::{FrameError, Header, Message};
pub use sha256::{hex, posix_cksum, sha256, Sha256};

/// Length of the fixed header.
pub const HEADER_LEN: usize = 28;

/// The first two bytes of every frame: `0x5350`, "SP".
pub const MAGIC: u16 = 0x5350;

/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;

/// Flag bit 0: the body is a reason, the reply could not be delivered.
pub const FLAG_DEAD: u8 = 1;

/// Flag bit 1: the body is raw bytes, not miniserde JSON.
pub const FLAG_BINARY: u8 = 2;

/// Flag bit 2: the last message of a stream.
pub const FLAG_END: u8 = 4;

/// Default (and CLI default) maximum body length: 128 MiB.
pub const DEFAULT_MAX_MESSAGE: u32 = 128 * 1024 * 1024;

/// The master's context id.
pub const MASTER_ID: u32 = 0;

/// Well-known handles.
///
/// They keep mitogen's numbering. Handles from [`FIRST_DYNAMIC`] up are
/// allocated at run time, for replies and streams.
///
/// [`FIRST_DYNAMIC`]: handle::FIRST_DYNAMIC
pub mod handle {
    /// Run an operation (`ping`, `exec`, `read_file`, ...) and reply to `reply_to`.
    pub const CALL_FUNCTION: u32 = 101;
    /// A log record, forwarded towards the master.
    pub const FORWARD_LOG: u32 = 102;
    /// A new context is reachable through the sender.
    pub const ADD_ROUTE: u32 = 103;
    /// The master's notice, travelling down the tree, that it allocated an
    /// id for a connect (only the master allocates; only a parent may say so).
    pub const ALLOCATE_ID: u32 = 104;
    /// Shut down this context and its subtree.
    pub const SHUTDOWN: u32 = 105;
    /// A context is no longer reachable through the sender.
    pub const DEL_ROUTE: u32 = 106;
    /// spore's addition: the agent's first message, naming version, pid, arch, context id.
    pub const HELLO: u32 = 107;
    /// spore's addition: a parent's keepalive probe (`reply_to` set), and
    /// the child broker's echo (`reply_to` 0). Answered by the broker itself,
    /// so a busy dispatcher never looks like a dead host.
    pub const KEEPALIVE: u32 = 108;
    /// spore's addition: a child's request to its parent for an agent image
    /// ([`crate::body::ImageRequest`]) it must send further down; answered
    /// with the bytes, or `DEAD`. Accepted only from a direct child.
    pub const GET_IMAGE: u32 = 109;
    /// spore's addition: the receiver sends `SHUTDOWN` to its child named
    /// by the body (its id, a JSON number), which takes one from its
    /// immediate parent only; no reply. Only the master or an ancestor may
    /// ask (as for a call), so the master can end a context it did not
    /// start, and a context can't end its sibling.
    pub const SHUTDOWN_CHILD: u32 = 110;
    /// Handles from here up are allocated at run time.
    pub const FIRST_DYNAMIC: u32 = 1000;
}
