//! The spore agent as a library.
//!
//! The same code runs in two places: in every agent process (the
//! `spore-agent` binary is [`Agent::new`]`().run()`), and in the master, which
//! starts a [`Broker`] of its own as context 0 and adds only what only it
//! does. Parts, named after mitogen's:
//!
//! - [`core`]: every rule of routing, authority, keepalive and shutdown,
//!   with no I/O (fed messages and the time, it returns actions);
//! - [`routes`]: the one routing table and who may claim what;
//! - [`shutdown`]: the shutdown sequence's phases and time budget;
//! - [`broker`]: the handle other threads use, and `event_loop`, the one
//!   thread polling every fd and carrying out the core's actions;
//! - `stream`, `procs`, `logs`: a stream's write side, the processes the
//!   broker reaps and signals, log lines shown safely;
//! - [`mailbox`]: where replies for a local handle land;
//! - [`bootstrap`] and [`handshake`]: starting an agent across a
//!   connection (script, HAVE/NEED, upload, hello);
//! - [`Agent`] and [`Call`]: the dispatcher and the operations it runs;
//! - [`flow`]: flow control for bulk bytes;
//! - [`fanout`]: one file to many contexts, each byte once down each link.
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
//! and hand its bytes to the master (`spore::Options::agent_image`). A
//! handler that starts processes starts them with [`spawn::Command`]: an
//! agent reaps, now and then, the ended children it did not start that
//! way (the orphans reparented to it), so a `std::process::Child` of a
//! handler could find its status taken.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod bootstrap;
pub mod broker;
mod call;
pub mod core;
mod dispatch;
mod event_loop;
pub mod fanout;
pub mod flow;
mod guardian;
pub mod handshake;
pub mod images;
mod locks;
pub mod logs;
pub mod mailbox;
mod ops;
mod poller;
mod procs;
pub mod reasons;
pub mod routes;
mod runtime;
mod shared;
pub mod shutdown;
mod sort;
pub mod spawn;
mod spin;
mod stream;
pub mod sys;
mod vecmap;

pub use broker::{Broker, Config};
pub use call::{Call, OpError, OpResult};
pub use dispatch::Agent;
pub use mailbox::{Mailbox, RecvError};
pub use stream::NewStream;

/// This agent's version, reported in its hello and by `info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
