//! spore: run work on many machines from one.
//!
//! The master starts a tiny static agent on each target by piping it down
//! the connection's own stdin, then talks to it over a length-prefixed
//! protocol. This crate is the master: a [`Router`] (context 0, with its
//! own broker thread), [`Context`] handles with blocking calls (and
//! [`Context::call_async`] for the async form), typed [`Error`]s that name
//! the context, [`Targets`] for paths like `local/local`, and the `spore`
//! CLI. [`fanout::write_file_many`] writes one file to many contexts,
//! sending each byte once over each link (a hop fans it out).
//!
//! ```no_run
//! use spore::{Command, Router};
//!
//! let router = Router::new()?;
//! let host = router.local()?;                 // an agent as a local child
//! let inner = host.connect("local")?;         // and one below it
//! let out = inner.exec(&Command::new(["uname", "-a"]))?;
//! print!("{}", String::from_utf8_lossy(&out.stdout));
//! host.write_file("/tmp/greeting", &mut &b"hello\n"[..], Some(0o644))?;
//! println!("{:?}", inner.info()?);
//! router.shutdown();
//! # Ok::<(), spore::Error>(())
//! ```

pub mod context;
pub mod error;
pub mod fanout;
pub mod hop;
pub mod image;
pub mod inventory;
mod local_cache;
pub mod persist;
pub mod range;
pub mod router;
pub mod select;
pub mod session;
pub mod target;
pub mod tree;

pub use context::{Cancel, Command, Context, ExitStatus, Output, Pending, Stream};
pub use error::{Error, Result};
pub use hop::{Hop, SshHop};
pub use image::default_image;
pub use router::{Options, Router};
pub use spore_protocol::body::{DirEntry, InfoReply, ListReply, ReadReply, StatReply};
pub use target::Targets;
