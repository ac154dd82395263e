//! The broker's core: what every message and every tick means, with no I/O
//! and no clock of its own (sans-IO, in the manner of quinn-proto's
//! `Connection`).
//!
//! The poll loop (`event_loop`) feeds it what happened — a stream joined or
//! ended, a message arrived on a stream or was handed over by a thread, the
//! time passed — and carries out the [`Action`]s it queues: write to a
//! stream, deliver to a handle, fail the handles waiting on a lost context,
//! close a stream, signal the commands, end. It owns the routes and their
//! authority (with [`Routes`]), keepalive, and the shutdown phases (with
//! [`crate::shutdown`]).

use crate::locks::{read, write};
pub use crate::reasons::DropReason;
use crate::routes::{Origin, Refusal, RouteRefusal, Routes, StreamId, Undeliverable, Verdict};
use crate::shutdown::{Facts, Phase, Step};
use crate::vecmap::VecMap;
use spore_protocol::body::{self, AddRoute, AllocatedId, DelRoute, LogRecord};
use spore_protocol::{handle, Message, FLAG_DEAD};
use std::collections::VecDeque;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// What the core needs to know about its context.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// This context's id (0 for the master).
    pub id: u32,
    /// Its path in the tree.
    pub name: String,
    /// How long a shutdown waits for the children.
    pub grace: Duration,
    /// Probe each idle child this often (zero: never)...
    pub keepalive: Duration,
    /// ...and declare it dead after this many silent intervals.
    pub keepalive_misses: u32,
}

/// Something for the poll loop to do.
#[derive(Debug)]
pub enum Action {
    /// Write a message to a stream.
    Write(StreamId, Message),
    /// Deliver to a local handle; if nobody may take it, hand it back with
    /// [`Core::undeliverable`].
    Deliver(Message, Origin),
    /// A log record from a descendant, its tag checked, for this process's
    /// logger (the master's).
    Emit(LogRecord),
    /// A line of the broker's own log.
    Log(log::Level, String),
    /// Fail every handle waiting on this context.
    FailPeer(u32, String),
    /// Close the stream's fds and end its connection process as the reason
    /// says.
    Close(StreamId, DropReason),
    /// Stop taking calls.
    CloseCalls,
    /// Signal the commands' process groups.
    SignalCommands(i32),
    /// Point stdout/stderr at /dev/null, so the capture drains to its end.
    HalfCloseCapture,
    /// The shutdown is complete: end the broker.
    Finish,
}

/// Refused messages from one stream logged as warnings.
pub const LOUD_REFUSALS: u32 = 16;

struct Peer {
    remote: u32,
    name: String,
    is_parent: bool,
    last_heard: Instant,
    last_probe: Instant,
    /// Refused messages so far: the first is a warning, the rest debug.
    refusals: u32,
}

/// The rules of one context's broker.
pub struct Core {
    cfg: CoreConfig,
    /// The parent's id (`None` in the master).
    parent_id: Option<u32>,
    routes: Arc<RwLock<Routes>>,
    peers: VecMap<StreamId, Peer>,
    phase: Phase,
    started: Option<Instant>,
    /// The time of the input being handled.
    now: Instant,
    actions: VecDeque<Action>,
    steps: Vec<Step>,
}

impl Core {
    /// A core for context `cfg.id` under `parent_id` (none: the master),
    /// sharing `routes` with the threads that send directly.
    pub fn new(cfg: CoreConfig, parent_id: Option<u32>, routes: Arc<RwLock<Routes>>, now: Instant) -> Core {
        Core {
            now,
            cfg,
            parent_id,
            routes,
            peers: VecMap::new(),
            phase: Phase::Running,
            started: None,
            actions: VecDeque::new(),
            steps: Vec::new(),
        }
    }

    fn routes(&self) -> RwLockReadGuard<'_, Routes> {
        read(&self.routes)
    }

    fn routes_mut(&self) -> RwLockWriteGuard<'_, Routes> {
        write(&self.routes)
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Is a shutdown under way?
    pub fn shutting_down(&self) -> bool {
        self.started.is_some()
    }

    /// Is this stream still one of ours?
    pub fn has_stream(&self, sid: StreamId) -> bool {
        self.peers.contains_key(&sid)
    }

    /// A stream's path in the tree, for messages.
    pub fn stream_name(&self, sid: StreamId) -> &str {
        self.peers.get(&sid).map_or("", |p| p.name.as_str())
    }

    fn log(&mut self, level: log::Level, text: String) {
        self.actions.push_back(Action::Log(level, text));
    }

    // ---- streams -------------------------------------------------------

    /// A stream joined: the parent's, or a child's whose connect we made.
    pub fn add_stream(&mut self, sid: StreamId, remote: u32, name: &str, is_parent: bool, now: Instant) {
        self.now = now;
        let peer = Peer { remote, name: name.to_string(), is_parent, last_heard: now, last_probe: now, refusals: 0 };
        if is_parent {
            self.routes_mut().set_parent(Some(sid));
            self.peers.insert(sid, peer);
            return;
        }
        let refused = {
            let mut routes = self.routes_mut();
            let checked = routes.may_add_direct(remote, sid);
            match checked {
                Ok(()) => routes.add(remote, self.cfg.id, sid),
                // Its connect failed after all: nobody may add it now.
                Err(_) => routes.forget(remote),
            }
            checked.err()
        };
        self.peers.insert(sid, peer);
        if let Some(why) = refused {
            self.log(log::Level::Warn, format!("stream {name}: context {remote}: {why}"));
            self.drop_stream(sid, DropReason::Refused(why), now);
            return;
        }
        self.log(log::Level::Debug, format!("stream {name} (context {remote}) connected"));
        if self.shutting_down() {
            // Too late to join: it shuts down with the rest.
            self.write(sid, self.control(remote, handle::SHUTDOWN, Vec::new()));
        }
        self.announce(AddRoute { id: remote, parent: self.cfg.id, name: name.to_string() });
    }

    /// Bytes arrived on a stream (keepalive counts any).
    pub fn heard(&mut self, sid: StreamId, now: Instant) {
        if let Some(p) = self.peers.get_mut(&sid) {
            p.last_heard = now;
        }
    }

    /// A stream ended (or the core ends it): close it, forget what was
    /// behind it, tell the parent, fail whoever waited on it.
    pub fn drop_stream(&mut self, sid: StreamId, why: DropReason, now: Instant) {
        self.now = now;
        let Some(peer) = self.peers.remove(&sid) else { return };
        if let Some(started) = self.started.filter(|_| !peer.is_parent) {
            match why {
                DropReason::Forced { grace } => self.log(
                    log::Level::Warn,
                    format!("{}: forced after the grace of {} ms", peer.name, grace.as_millis() as u64),
                ),
                _ => self.log(
                    log::Level::Info,
                    format!(
                        "{}: disconnected gracefully, {} ms into the shutdown",
                        peer.name,
                        now.saturating_duration_since(started).as_millis() as u64
                    ),
                ),
            }
        }
        let text = why.to_string();
        let parent_gone = peer.is_parent;
        self.actions.push_back(Action::Close(sid, why));
        if parent_gone {
            self.routes_mut().set_parent(None);
            self.log(log::Level::Info, format!("parent stream gone ({text}); shutting down"));
            self.begin_shutdown("parent gone", now);
            return;
        }
        let reason = format!("context {} ({}) {text}", peer.remote, peer.name);
        let lost = self.routes_mut().remove_stream(sid, &reason);
        for id in lost {
            self.log(log::Level::Debug, format!("lost context {id}: {reason}"));
            self.actions.push_back(Action::FailPeer(id, reason.clone()));
            self.tell_parent(handle::DEL_ROUTE, body::encode(&DelRoute { id, reason: reason.clone() }));
        }
    }

    fn control(&self, dst: u32, handle: u32, body: Vec<u8>) -> Message {
        let mut msg = Message::new(dst, handle, body);
        msg.header.src = self.cfg.id;
        msg.header.auth = self.cfg.id;
        msg
    }

    fn write(&mut self, sid: StreamId, msg: Message) {
        self.actions.push_back(Action::Write(sid, msg));
    }

    /// Route changes go to the immediate parent, which applies them and
    /// re-announces them to its own.
    fn tell_parent(&mut self, handle: u32, body: Vec<u8>) {
        let (Some(up), Some(parent)) = (self.routes().parent(), self.parent_id) else { return };
        self.write(up, self.control(parent, handle, body));
    }

    fn announce(&mut self, add: AddRoute) {
        self.tell_parent(handle::ADD_ROUTE, body::encode(&add));
    }

    // ---- messages ------------------------------------------------------

    /// A message from a stream or from a thread of this process.
    pub fn handle_message(&mut self, mut msg: Message, origin: Origin, now: Instant) {
        self.now = now;
        if let Origin::Stream(sid) = origin {
            self.heard(sid, now);
        }
        // One look at the table for the verdict and what it depends on.
        let (verdict, from_parent, privileged) = {
            let routes = self.routes();
            let verdict = routes.decide(&mut msg, origin);
            let from_parent = matches!(origin, Origin::Stream(sid) if Some(sid) == routes.parent());
            (verdict, from_parent, routes.privileged(msg.header.auth))
        };
        let from_child = matches!(origin, Origin::Stream(_)) && !from_parent;
        // Passing down from the parent: the master's notice of an id it
        // allocated for a connect below (every router on the way learns it).
        let refused = matches!(verdict, Verdict::Drop(_));
        if from_parent && !refused && msg.header.handle == handle::ALLOCATE_ID && privileged {
            match body::decode::<AllocatedId>(&msg.body, "ALLOCATE_ID") {
                Ok(a) => self.routes_mut().expect(a.id, a.parent),
                Err(e) => {
                    let error = e.to_string();
                    return self.undeliverable(msg, Undeliverable::BadBody { what: "ALLOCATE_ID", error });
                }
            }
        }
        // Passing up from a child: a log record names only paths under the
        // stream it came by.
        if let (Origin::Stream(sid), true, handle::FORWARD_LOG) = (origin, from_child, msg.header.handle) {
            if !refused {
                match self.checked_record(sid, &msg) {
                    Ok(rec) if msg.header.dst == self.cfg.id => return self.actions.push_back(Action::Emit(rec)),
                    Ok(rec) => msg.body = body::encode(&rec),
                    Err(e) => return self.undeliverable(msg, Undeliverable::BadBody { what: "FORWARD_LOG", error: e }),
                }
            }
        }
        match verdict {
            Verdict::Local => self.local(msg, origin, from_parent, privileged),
            Verdict::Forward(sid) => self.write(sid, msg),
            Verdict::Dead(why) => self.undeliverable(msg, why),
            Verdict::Drop(why) => self.refuse(origin, why),
        }
    }

    /// Route a message of our own.
    fn route(&mut self, msg: Message, origin: Origin) {
        self.handle_message(msg, origin, self.now);
    }

    /// A refused message: a warning for the first [`LOUD_REFUSALS`] of a
    /// stream, then debug lines (a hostile peer can't flood the log).
    pub fn refuse(&mut self, origin: Origin, why: Refusal) {
        self.complain(origin, format!("dropped message: {why}"));
    }

    /// A warning about what a stream sent, counted against its
    /// [`LOUD_REFUSALS`].
    fn complain(&mut self, origin: Origin, text: String) {
        let count = match origin {
            Origin::Stream(sid) => self.peers.get_mut(&sid).map_or(0, |p| {
                p.refusals = p.refusals.saturating_add(1);
                p.refusals
            }),
            Origin::Local => 1,
        };
        match count {
            0..LOUD_REFUSALS => self.log(log::Level::Warn, text),
            LOUD_REFUSALS => self
                .log(log::Level::Warn, format!("{text} (further refusals on this stream are logged at debug level)")),
            _ => self.log(log::Level::Debug, text),
        }
    }

    fn checked_record(&self, sid: StreamId, msg: &Message) -> Result<LogRecord, String> {
        let mut rec: LogRecord = body::decode(&msg.body, "FORWARD_LOG").map_err(|e| e.to_string())?;
        let own = self.stream_name(sid);
        let plain = rec.name.split('/').all(|hop| !matches!(hop, "" | "." | ".."));
        let under = plain && (rec.name == own || rec.name.strip_prefix(own).is_some_and(|rest| rest.starts_with('/')));
        if !under {
            rec.name = own.to_string();
        }
        Ok(rec)
    }

    /// Answer an undeliverable message with a DEAD reply, unless it is
    /// itself a DEAD reply or expects none.
    pub fn undeliverable(&mut self, msg: Message, why: Undeliverable) {
        if msg.header.handle == handle::FORWARD_LOG {
            // A record with nowhere to go; logging it would make another.
            return;
        }
        if msg.is_dead() || msg.header.reply_to == 0 {
            self.log(log::Level::Debug, format!("dropped undeliverable message (handle {}): {why}", msg.header.handle));
            return;
        }
        let mut reply = Message::new(msg.header.src, msg.header.reply_to, why.to_string().into_bytes());
        reply.header.flags = FLAG_DEAD;
        self.route(reply, Origin::Local);
    }

    fn local(&mut self, msg: Message, origin: Origin, from_parent: bool, privileged: bool) {
        let (h, src) = (msg.header.handle, msg.header.src);
        match h {
            handle::ADD_ROUTE | handle::DEL_ROUTE => match origin {
                Origin::Stream(sid) if !from_parent => self.route_change(msg, sid),
                _ => self.refuse(origin, Refusal::Control { handle: h, src }),
            },
            handle::SHUTDOWN => {
                if from_parent && Some(src) == self.parent_id {
                    self.begin_shutdown("SHUTDOWN from parent", self.now);
                } else {
                    let parent = self.parent_id.map_or("none".to_string(), |p| p.to_string());
                    let text = format!("ignored SHUTDOWN from context {src} (only our parent, {parent}, may stop us)");
                    self.complain(origin, text);
                }
            }
            // The notice was recorded on the way in.
            handle::ALLOCATE_ID if from_parent => {}
            handle::ALLOCATE_ID => self.undeliverable(msg, Undeliverable::NotAllocator),
            // Records for the master are emitted on the way in; anywhere
            // else they are not ours to show.
            handle::FORWARD_LOG => {}
            handle::KEEPALIVE => {
                // A probe from our parent: echo it. An echo: reading it was
                // the point (`heard`).
                if from_parent && msg.header.reply_to == handle::KEEPALIVE {
                    let echo = Message::new(src, handle::KEEPALIVE, msg.body);
                    self.route(echo, Origin::Local);
                }
            }
            // A child asks for an image to start its own children with:
            // only a direct child, on its own stream.
            handle::GET_IMAGE => match origin {
                Origin::Stream(sid) if !from_parent && self.peers.get(&sid).map(|p| p.remote) == Some(src) => {
                    self.actions.push_back(Action::Deliver(msg, origin))
                }
                _ => {
                    let why = Undeliverable::NotDirectChild { src, at: self.cfg.id };
                    self.complain(origin, why.to_string());
                    self.undeliverable(msg, why);
                }
            },
            handle::CALL_FUNCTION | handle::SHUTDOWN_CHILD if !privileged => {
                let why = Undeliverable::NotAllowed { auth: msg.header.auth, at: self.cfg.id };
                self.complain(origin, why.to_string());
                self.undeliverable(msg, why);
            }
            // The master (or an ancestor) ends a context it did not start:
            // only we, its parent, may tell it to. A SHUTDOWN of ours goes
            // wherever that id is, but a context takes one from its
            // immediate parent only: any other (or we, for a body that is
            // not a number) ignores it.
            handle::SHUTDOWN_CHILD => {
                let id = crate::procs::digits(&msg.body).map_or(self.cfg.id, |id| id as u32);
                self.route(Message::new(id, handle::SHUTDOWN, Vec::new()), Origin::Local);
            }
            handle::CALL_FUNCTION if self.shutting_down() => {
                self.undeliverable(msg, Undeliverable::ShuttingDown(self.cfg.name.clone()))
            }
            _ => self.actions.push_back(Action::Deliver(msg, origin)),
        }
    }

    /// Nobody here may take a delivered message.
    pub fn no_handle(&mut self, msg: Message) {
        let why = Undeliverable::InvalidHandle { handle: msg.header.handle, at: self.cfg.id };
        self.undeliverable(msg, why);
    }

    fn route_change(&mut self, msg: Message, sid: StreamId) {
        let src = msg.header.src;
        // Each level re-announces its subtree's changes as its own: only
        // the child at the end of the stream may speak of them.
        let from_child = self.peers.get(&sid).map(|p| p.remote) == Some(src);
        if msg.header.handle == handle::ADD_ROUTE {
            let add = match body::decode::<AddRoute>(&msg.body, "ADD_ROUTE") {
                Ok(add) => add,
                Err(e) => {
                    return self.undeliverable(msg, Undeliverable::BadBody { what: "ADD_ROUTE", error: e.to_string() })
                }
            };
            let checked = if from_child {
                let mut routes = self.routes_mut();
                let checked = routes.may_add(add.id, add.parent, sid);
                if checked.is_ok() {
                    routes.add(add.id, add.parent, sid);
                }
                checked
            } else {
                Err(RouteRefusal::NotFromChild)
            };
            match checked {
                Ok(()) => {
                    self.log(log::Level::Debug, format!("route to {} ({}) via stream {sid}", add.id, add.name));
                    self.announce(add);
                }
                Err(why) => self.refuse(Origin::Stream(sid), Refusal::Route { id: add.id, src, why }),
            }
        } else {
            let del = match body::decode::<DelRoute>(&msg.body, "DEL_ROUTE") {
                Ok(del) => del,
                Err(e) => {
                    return self.undeliverable(msg, Undeliverable::BadBody { what: "DEL_ROUTE", error: e.to_string() })
                }
            };
            if !from_child || del.id == src {
                let why = RouteRefusal::NotFromChild;
                return self.refuse(Origin::Stream(sid), Refusal::DelRoute { id: del.id, src, why });
            }
            let reason = crate::routes::bounded(&del.reason);
            if self.routes_mut().remove(del.id, sid, &reason) {
                self.actions.push_back(Action::FailPeer(del.id, reason.clone()));
                self.tell_parent(handle::DEL_ROUTE, body::encode(&DelRoute { id: del.id, reason }));
            }
        }
    }

    // ---- time: keepalive and shutdown ------------------------------------
    //
    // A child that has said nothing for a whole interval gets a probe; one
    // silent for `keepalive_misses` intervals is declared dead: its stream
    // is dropped (pending calls fail, DEL_ROUTE goes up, its connection
    // process is killed) and the rest of the tree carries on.

    /// When [`Core::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let every = self.cfg.keepalive;
        let probe = if every.is_zero() || self.shutting_down() {
            None
        } else {
            self.peers
                .values()
                .filter(|p| !p.is_parent)
                .filter_map(|p| p.last_heard.max(p.last_probe).checked_add(every))
                .min()
        };
        match (probe, self.phase.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: probe, declare dead, move the shutdown on. `facts` are
    /// what the poll loop knows of processes and buffers.
    pub fn handle_timeout(&mut self, now: Instant, facts: Facts) {
        self.now = now;
        self.keepalive(now);
        let Some(started) = self.started else { return };
        let facts = Facts { children: self.peers.values().any(|p| !p.is_parent), ..facts };
        let mut steps = std::mem::take(&mut self.steps);
        self.phase.advance(now, started, facts, &mut steps);
        for step in steps.drain(..) {
            match step {
                Step::ForceChildren => {
                    let children: Vec<StreamId> =
                        self.peers.iter().filter(|(_, p)| !p.is_parent).map(|(&sid, _)| sid).collect();
                    for sid in children {
                        self.drop_stream(sid, DropReason::Forced { grace: self.cfg.grace }, now);
                    }
                }
                Step::KillCommands => self.actions.push_back(Action::SignalCommands(libc::SIGKILL)),
                Step::HalfCloseCapture => self.actions.push_back(Action::HalfCloseCapture),
                Step::Finish => self.actions.push_back(Action::Finish),
            }
        }
        self.steps = steps;
    }

    fn keepalive(&mut self, now: Instant) {
        let every = self.cfg.keepalive;
        if every.is_zero() || self.shutting_down() {
            return;
        }
        let limit = every.saturating_mul(self.cfg.keepalive_misses.max(1));
        let mut dead = Vec::new();
        let mut probe = Vec::new();
        for (&sid, p) in self.peers.iter_mut().filter(|(_, p)| !p.is_parent) {
            let silent = now.saturating_duration_since(p.last_heard);
            if silent >= limit {
                dead.push((sid, silent));
            } else if silent >= every && now.saturating_duration_since(p.last_probe) >= every {
                p.last_probe = now;
                probe.push((sid, p.remote));
            }
        }
        for (sid, remote) in probe {
            let mut msg = self.control(remote, handle::KEEPALIVE, Vec::new());
            msg.header.reply_to = handle::KEEPALIVE;
            self.write(sid, msg);
        }
        crate::sort::sort(&mut dead);
        for (sid, silent) in dead {
            let why = DropReason::Silent { silent, every };
            self.log(log::Level::Warn, format!("{}: {why}; declaring it dead", self.stream_name(sid)));
            self.drop_stream(sid, why, now);
        }
    }

    /// Start the shutdown sequence (idempotent).
    pub fn begin_shutdown(&mut self, why: &str, now: Instant) {
        self.now = now;
        if self.started.is_some() {
            return;
        }
        self.started = Some(now);
        self.log(log::Level::Debug, format!("shutting down: {why}"));
        self.actions.push_back(Action::CloseCalls);
        let mut children: Vec<(StreamId, u32)> =
            self.peers.iter().filter(|(_, p)| !p.is_parent).map(|(&sid, p)| (sid, p.remote)).collect();
        crate::sort::sort(&mut children);
        for (sid, remote) in children {
            self.write(sid, self.control(remote, handle::SHUTDOWN, Vec::new()));
        }
        // Our commands get SIGTERM now, while the children shut down, so
        // every level's SIGKILL delay runs at once, not one after another.
        self.actions.push_back(Action::SignalCommands(libc::SIGTERM));
        self.phase = Phase::Children { deadline: now + self.cfg.grace };
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
