//! The spore agent as a library.
//!
//! The same code runs in two places: in every agent process (the
//! `spore-agent` binary is [`Agent::new`]`().run()`), and in the master, which
//! starts a [`Broker`] of its own as context 0 and adds only what only it
//! does. Parts, named after mitogen's:
//!
//! - [`broker`]: the one thread polling every fd, and the shutdown sequence;
//! - [`router`]: where each message goes and whether it may;
//! - [`mailbox`]: where replies for a local handle land;
//! - [`bootstrap`]: starting an agent across a connection (script,
//!   HAVE/NEED, upload, hello);
//! - [`Agent`] and [`Call`]: the dispatcher and the operations it runs;
//! - [`flow`]: flow control for bulk bytes.
//!
//! To ship extra operations, build your own agent binary:
//!
//! ```no_run
//! use spore_agent::{Agent, Call, OpResult};
//! fn hello(call: &Call) -> OpResult {
//!     Ok(br#"{"greeting":"hi"}"#.to_vec())
//! }
//! fn main() {
//!     Agent::new().handler("hello", hello).run()
//! }
//! ```
//! and hand its bytes to the master (`spore::Options::agent_image`).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod bootstrap;
pub mod broker;
mod call;
mod dispatch;
pub mod flow;
mod guardian;
pub mod mailbox;
mod ops;
mod poller;
pub mod router;
mod spin;
pub mod sys;

pub use broker::{Broker, Config, NewStream};
pub use call::{Call, OpError, OpResult};
pub use dispatch::Agent;
pub use mailbox::{Mailbox, RecvError};

/// This agent's version, reported in its hello and by `info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
