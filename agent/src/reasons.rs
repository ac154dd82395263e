//! Why things end or are refused, one enum each, with the text the
//! operator (or the caller, in a `DEAD` reply) reads. Behaviour is chosen
//! by matching these, never by comparing strings.

use crate::routes::StreamId;
use crate::shutdown;
use std::fmt;
use std::time::Duration;

/// Why a stream ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs, reason = "each variant's doc names its fields")]
pub enum DropReason {
    /// The peer closed it.
    Closed,
    /// The peer closed it in the middle of a message.
    Truncated(String),
    /// Bytes that are not the protocol (bad magic, version, length).
    Corrupt(String),
    /// Reading failed.
    ReadFailed(String),
    /// Writing failed.
    WriteFailed(String),
    /// The peer closed its input while we had nothing to send.
    PeerClosedInput,
    /// The fds could not be polled.
    CantWatch(String),
    /// The shutdown grace ran out.
    Forced { grace: Duration },
    /// Keepalive: nothing heard for this long.
    Silent { silent: Duration, every: Duration },
    /// The stream claimed a context it may not.
    Refused(RouteRefusal),
}

impl DropReason {
    /// Signals for the connection process before its pipes close (a stopped
    /// process acts on SIGTERM only once continued).
    pub fn signals(&self) -> &'static [i32] {
        match self {
            DropReason::Forced { .. } => &[libc::SIGTERM, libc::SIGCONT],
            DropReason::Silent { .. } | DropReason::Refused(_) => &[libc::SIGTERM],
            _ => &[],
        }
    }

    /// How long the connection process gets to exit before SIGKILL: one
    /// whose stream just ended is about to exit anyway.
    pub fn kill_delay(&self) -> Duration {
        match self {
            DropReason::Forced { .. } => shutdown::FORCED_KILL_DELAY,
            _ => Duration::from_millis(500),
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::Closed => f.write_str("stream closed"),
            DropReason::Truncated(e) => write!(f, "stream closed: {e}"),
            DropReason::Corrupt(e) => write!(f, "corrupt stream: {e}"),
            DropReason::ReadFailed(e) => write!(f, "read failed: {e}"),
            DropReason::WriteFailed(e) => write!(f, "write failed: {e}"),
            DropReason::PeerClosedInput => f.write_str("the peer closed its input"),
            DropReason::CantWatch(e) => write!(f, "can't watch its fds: {e}"),
            DropReason::Forced { .. } => f.write_str("forced at shutdown"),
            // Whole milliseconds: no float formatting in the agent.
            DropReason::Silent { silent, every } => {
                write!(
                    f,
                    "silent for {} ms (keepalive every {} ms)",
                    silent.as_millis() as u64,
                    every.as_millis() as u64
                )
            }
            DropReason::Refused(why) => write!(f, "refused: {why}"),
        }
    }
}

/// Why a message can't be delivered; the text of its `DEAD` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs, reason = "each variant's doc names its fields")]
pub enum Undeliverable {
    /// No route to the context, and none ever known.
    NoRoute(u32),
    /// The context was reachable once; why it is not any more.
    Lost(u32, String),
    /// Unidirectional routing: a child reaches its ancestors only.
    Isolated(u32),
    /// Nobody listens on the handle here.
    InvalidHandle { handle: u32, at: u32 },
    /// A call from a context without authority over this one.
    NotAllowed { auth: u32, at: u32 },
    /// A call that arrived after the shutdown began.
    ShuttingDown(String),
    /// The body could not be decoded.
    BadBody { what: &'static str, error: String },
    /// Only the master allocates context ids, and only parents say so.
    NotAllocator,
    /// Too many calls are waiting for a worker.
    Busy(usize),
    /// A request only a direct child may make (`GET_IMAGE`).
    NotDirectChild { src: u32, at: u32 },
}

impl fmt::Display for Undeliverable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Undeliverable::NoRoute(dst) => write!(f, "no route to {dst}"),
            Undeliverable::Lost(dst, why) => write!(f, "no route to {dst}: {why}"),
            Undeliverable::Isolated(dst) => write!(f, "no route to {dst} (children can't message each other)"),
            Undeliverable::InvalidHandle { handle, at } => write!(f, "invalid handle {handle} at context {at}"),
            Undeliverable::NotAllowed { auth, at } => write!(f, "context {auth} may not call context {at}"),
            Undeliverable::ShuttingDown(name) => write!(f, "context {name} is shutting down"),
            Undeliverable::BadBody { what, error } => write!(f, "{what}: {error}"),
            Undeliverable::NotAllocator => f.write_str("only the master allocates context ids"),
            Undeliverable::Busy(n) => write!(f, "busy: {n} calls are waiting already"),
            Undeliverable::NotDirectChild { src, at } => {
                write!(f, "context {src} is not a direct child of context {at}: no image for it")
            }
        }
    }
}

/// Why a message was dropped without a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs, reason = "each variant's doc names its fields")]
pub enum Refusal {
    /// A child stream spoke as a context not behind it.
    Spoofed { sid: StreamId, src: u32 },
    /// The parent stream spoke as us or a context below us.
    ParentSpoofed(u32),
    /// A message for a context came back on the stream that leads to it.
    Loop(u32),
    /// A reply for a handle that waits on another context.
    ForeignAnswer { handle: u32, peer: u32, src: u32 },
    /// An `ADD_ROUTE` that the rules refuse.
    Route { id: u32, src: u32, why: RouteRefusal },
    /// A `DEL_ROUTE` that the rules refuse.
    DelRoute { id: u32, src: u32, why: RouteRefusal },
    /// A control message from a stream that may not send it.
    Control { handle: u32, src: u32 },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Spoofed { sid, src } => write!(f, "stream {sid} can't speak as context {src}"),
            Refusal::ParentSpoofed(src) => write!(f, "parent stream claimed to be context {src}"),
            Refusal::Loop(dst) => write!(f, "message for {dst} came back on its own stream"),
            Refusal::ForeignAnswer { handle, peer, src } => {
                write!(f, "context {src} answered handle {handle}, which waits on context {peer}")
            }
            Refusal::Route { id, src, why } => {
                write!(f, "refused ADD_ROUTE for context {id} from context {src}: {why}")
            }
            Refusal::DelRoute { id, src, why } => {
                write!(f, "refused DEL_ROUTE for context {id} from context {src}: {why}")
            }
            Refusal::Control { handle, src } => write!(f, "ignored handle {handle} from context {src}"),
        }
    }
}

/// Why an `ADD_ROUTE` (or a new child stream) is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteRefusal {
    /// The id is ours or an ancestor's.
    UsOrAncestor,
    /// The context was lost; a lost id stays lost.
    Lost,
    /// The id is already routed.
    AlreadyAdded,
    /// No connect by that parent was announced for this id.
    NotAllocated,
    /// The announced parent is not behind the stream.
    WrongStream,
    /// Our own children are added by our own connects, never announced.
    OurChild,
    /// Route changes come from the stream's own context, which re-announces
    /// its subtree's.
    NotFromChild,
}

impl fmt::Display for RouteRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RouteRefusal::UsOrAncestor => "that is us or an ancestor",
            RouteRefusal::Lost => "that context was lost, and a lost id stays lost",
            RouteRefusal::AlreadyAdded => "that context is already routed",
            RouteRefusal::NotAllocated => "the master allocated no such context for that parent",
            RouteRefusal::WrongStream => "its parent is not behind that stream",
            RouteRefusal::OurChild => "only our own connect adds our children",
            RouteRefusal::NotFromChild => "route changes come from the child at the end of the stream",
        })
    }
}
