//! Fuzz target `core`: the broker's routing and authority core fed
//! sequences of messages from several streams (the parent's and
//! children's), streams joining and ending, and time passing, all derived
//! from the input. The core is context 1 under the master, or the master.
//!
//! Checks, after every step: no panic and no runaway (a step queues a
//! bounded number of actions); nothing is delivered that the rules refuse
//! (a `CALL_FUNCTION` is delivered only with an ancestor's authority and
//! never once the shutdown began; control messages are never delivered);
//! no message is written back to the stream it came from unless it is the
//! core's own (a DEAD reply, an echo); a message forwarded from a child
//! carries the child's authority; a refused request that wants a reply
//! gets a DEAD or a logged refusal, never silence; ids join the routes only
//! after their allocation, never as us or an ancestor, and an id lost stays
//! lost.

use crate::input::Input;
use spore_agent::core::{Action, Core, CoreConfig, DropReason};
use spore_agent::routes::{Origin, Routes, StreamId};
use spore_agent::shutdown::Facts;
use spore_protocol::body::{self, AddRoute, AllocatedId, DelRoute, LogRecord};
use spore_protocol::{handle, Message, FLAG_BINARY, FLAG_DEAD, FLAG_END};
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

const UP: StreamId = 1;
/// Context ids the input picks from.
const IDS: [u32; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1000, u32::MAX];
const HANDLES: [u32; 12] = [
    handle::CALL_FUNCTION,
    handle::FORWARD_LOG,
    handle::ADD_ROUTE,
    handle::ALLOCATE_ID,
    handle::SHUTDOWN,
    handle::DEL_ROUTE,
    handle::HELLO,
    handle::KEEPALIVE,
    1000,
    1001,
    0,
    u32::MAX,
];
const NAMES: [&str; 7] = ["master", "bastion", "bastion/c2", "bastion/c2/x", "x/../y", "", "bastion//c3"];
/// Actions one step may queue, at most.
const RUNAWAY: usize = 10_000;

struct Fuzz {
    me: u32,
    ancestors: Vec<u32>,
    routes: Arc<RwLock<Routes>>,
    core: Core,
    now: Instant,
    next_sid: StreamId,
    /// Every stream ever added (ids the input picks from).
    sids: Vec<StreamId>,
    /// Ids the master allocated (master) or announced to us (agent).
    allocated: HashSet<u32>,
    /// Ids ever routed, and ids routed once and not any more.
    routed: HashSet<u32>,
    gone: HashSet<u32>,
    /// Messages delivered, to hand back as undeliverable.
    delivered: Vec<Message>,
}

fn message(input: &mut Input) -> Message {
    let handle = input.pick(&HANDLES);
    let body = match input.byte() % 7 {
        0 => body::to_json(&AllocatedId { id: input.pick(&IDS), parent: input.pick(&IDS) }),
        1 => body::to_json(&AddRoute {
            id: input.pick(&IDS),
            parent: input.pick(&IDS),
            name: input.pick(&NAMES).to_string(),
        }),
        2 => body::to_json(&DelRoute { id: input.pick(&IDS), reason: "gone".into() }),
        3 => body::to_json(&LogRecord {
            level: input.byte(),
            name: input.pick(&NAMES).to_string(),
            target: "t".into(),
            msg: "m".into(),
        }),
        4 => b"{}".to_vec(),
        5 => br#"{"op":"ping"}"#.to_vec(),
        _ => input.bytes(64).to_vec(),
    };
    let mut m = Message::new(input.pick(&IDS), handle, body);
    m.header.src = input.pick(&IDS);
    m.header.auth = input.pick(&IDS);
    m.header.reply_to = input.pick(&[0, 1000, 1001, handle::KEEPALIVE, handle::CALL_FUNCTION]);
    m.header.flags = input.pick(&[0, FLAG_DEAD, FLAG_END, FLAG_BINARY, FLAG_DEAD | FLAG_END]);
    m
}

impl Fuzz {
    fn new(master: bool) -> Fuzz {
        let t0 = Instant::now();
        let (me, ancestors, parent) = if master { (0, vec![], None) } else { (1, vec![0], Some(0)) };
        let routes = Arc::new(RwLock::new(Routes::new(me, ancestors.clone())));
        let cfg = CoreConfig {
            id: me,
            name: if master { "master".into() } else { "bastion".into() },
            grace: Duration::from_secs(2),
            keepalive: Duration::from_secs(1),
            keepalive_misses: 3,
        };
        let mut core = Core::new(cfg, parent, Arc::clone(&routes), t0);
        let mut sids = Vec::new();
        if !master {
            core.add_stream(UP, 0, "parent", true, t0);
            sids.push(UP);
        }
        let mut fuzz = Fuzz {
            me,
            ancestors,
            routes,
            core,
            now: t0,
            next_sid: 2,
            sids,
            allocated: HashSet::new(),
            routed: HashSet::new(),
            gone: HashSet::new(),
            delivered: Vec::new(),
        };
        fuzz.check(None, false);
        fuzz
    }

    fn via(&self, id: u32) -> Option<StreamId> {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).via(id)
    }

    fn pick_sid(&self, input: &mut Input) -> StreamId {
        let i = usize::from(input.byte());
        // Now and then a stream that never was.
        self.sids.get(i % (self.sids.len() + 1)).copied().unwrap_or(99)
    }

    fn step(&mut self, input: &mut Input) {
        let shutting = self.core.shutting_down();
        match input.byte() % 12 {
            0 | 1 => {
                // A connect of ours joins.
                let remote = if self.me == 0 && input.byte() & 3 != 0 {
                    let parent = input.pick(&IDS);
                    let id = self.routes.write().unwrap_or_else(|p| p.into_inner()).allocate(parent);
                    if let Some(id) = id {
                        self.allocated.insert(id);
                    }
                    id.unwrap_or(u32::MAX)
                } else {
                    input.pick(&IDS)
                };
                let sid = self.next_sid;
                self.next_sid += 1;
                self.sids.push(sid);
                self.core.add_stream(sid, remote, &format!("bastion/c{remote}"), false, self.now);
                self.check(None, shutting);
            }
            2..=5 => {
                let sid = self.pick_sid(input);
                let m = message(input);
                if sid == UP && self.me != 0 && m.header.handle == handle::ALLOCATE_ID {
                    if let Ok(a) = body::from_json::<AllocatedId>(&m.body, "ALLOCATE_ID") {
                        self.allocated.insert(a.id);
                    }
                }
                self.core.handle_message(m.clone(), Origin::Stream(sid), self.now);
                self.check(Some((m, Origin::Stream(sid))), shutting);
            }
            6 => {
                let m = message(input);
                self.core.handle_message(m.clone(), Origin::Local, self.now);
                self.check(Some((m, Origin::Local)), shutting);
            }
            7 => {
                let sid = self.pick_sid(input);
                self.core.drop_stream(sid, DropReason::Closed, self.now);
                self.check(None, shutting);
            }
            8 => {
                self.now += Duration::from_millis(u64::from(input.u16()));
                let bits = input.byte();
                let facts = Facts {
                    children: bits & 1 != 0,
                    commands_alive: bits & 2 != 0,
                    captures_open: bits & 4 != 0,
                    unsent: bits & 8 != 0,
                    reaping: bits & 16 != 0,
                };
                self.core.handle_timeout(self.now, facts);
                self.check(None, shutting);
            }
            9 => {
                self.core.begin_shutdown("fuzz", self.now);
                self.check(None, shutting);
            }
            10 => {
                let sid = self.pick_sid(input);
                self.core.heard(sid, self.now);
                self.check(None, shutting);
            }
            _ => {
                // Nobody took a delivered message.
                if let Some(m) = self.delivered.pop() {
                    self.core.no_handle(m);
                }
                self.check(None, shutting);
            }
        }
    }

    /// Drain the actions of one step and check them; `input` is the message
    /// handled, `shutting` whether the shutdown had begun before it.
    fn check(&mut self, input: Option<(Message, Origin)>, shutting: bool) {
        let mut actions = Vec::new();
        while let Some(a) = self.core.poll_action() {
            actions.push(a);
            assert!(actions.len() <= RUNAWAY, "runaway: {} actions from one step", actions.len());
        }
        for a in &actions {
            match a {
                Action::Deliver(m, origin) => {
                    let h = m.header.handle;
                    assert!(
                        ![
                            handle::FORWARD_LOG,
                            handle::ADD_ROUTE,
                            handle::ALLOCATE_ID,
                            handle::SHUTDOWN,
                            handle::DEL_ROUTE,
                            handle::KEEPALIVE
                        ]
                        .contains(&h),
                        "control message delivered: {m:?}"
                    );
                    if h == handle::CALL_FUNCTION {
                        assert!(self.ancestors.contains(&m.header.auth), "call delivered without authority: {m:?}");
                        assert!(!shutting, "call delivered during the shutdown: {m:?}");
                    }
                    assert_eq!(m.header.dst, self.me, "delivered here for another context: {m:?}");
                    if let Some((_, from)) = &input {
                        assert_eq!(origin, from, "delivered with another origin");
                    }
                    self.delivered.push(m.clone());
                }
                // A forward, not our own message.
                Action::Write(sid, m) if m.header.src != self.me => {
                    if let Some((_, Origin::Stream(from))) = &input {
                        assert_ne!(sid, from, "written back to the stream it came from: {m:?}");
                        if Some(*from) != self.routes.read().unwrap_or_else(|p| p.into_inner()).parent() {
                            assert_eq!(m.header.auth, m.header.src, "a child's message keeps another authority");
                        }
                    }
                    assert!(self.core.has_stream(*sid), "forwarded to a stream we don't have: {sid}");
                }
                _ => {}
            }
        }
        if let Some((m, origin)) = &input {
            // A reply to a well-known handle is the core's to take (a DEAD to
            // KEEPALIVE is read and forgotten): only run-time handles wait.
            let wants =
                m.header.reply_to >= handle::FIRST_DYNAMIC && !m.is_dead() && m.header.handle != handle::FORWARD_LOG;
            if wants && actions.is_empty() {
                // Only control messages the core takes itself may pass
                // without a word.
                let quiet = [handle::ALLOCATE_ID, handle::KEEPALIVE, handle::ADD_ROUTE, handle::DEL_ROUTE];
                assert!(quiet.contains(&m.header.handle), "request from {origin:?} met silence: {m:?}");
            }
            let refused_call = wants
                && m.header.handle == handle::CALL_FUNCTION
                && !actions.iter().any(|a| matches!(a, Action::Deliver(..) | Action::Write(..)));
            if refused_call {
                assert!(
                    actions.iter().any(|a| matches!(a, Action::Log(..))),
                    "a refused call got neither a DEAD nor a logged refusal: {m:?} {actions:?}"
                );
            }
        }
        for a in &actions {
            if let Action::FailPeer(id, _) = a {
                assert!(self.via(*id).is_none(), "failed context {id} still routed");
            }
        }
        let candidates: BTreeSet<u32> = IDS.iter().copied().chain(self.allocated.iter().copied()).collect();
        for id in candidates {
            match self.via(id) {
                Some(_) => {
                    assert!(!self.gone.contains(&id), "context {id} came back after it was lost");
                    assert!(id != self.me && !self.ancestors.contains(&id), "routed to us or an ancestor: {id}");
                    assert!(self.allocated.contains(&id), "context {id} routed without an allocation");
                    self.routed.insert(id);
                }
                None => {
                    if self.routed.contains(&id) {
                        self.gone.insert(id);
                    }
                }
            }
        }
    }
}

/// The fuzz body.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mut fuzz = Fuzz::new(input.byte() & 1 == 1);
    for _ in 0..512 {
        if input.is_empty() {
            break;
        }
        fuzz.step(&mut input);
    }
}
