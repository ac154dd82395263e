//! The core's rules, on a simulated clock: nothing here sleeps or does I/O.

use super::*;
use crate::routes::{RouteRefusal, Routes};
use crate::shutdown;
use spore_protocol::body::{self, AddRoute, AllocatedId, LogRecord};
use spore_protocol::{handle, Message};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

const UP: StreamId = 1;

fn cfg(id: u32) -> CoreConfig {
    CoreConfig {
        id,
        name: if id == 0 { "master".into() } else { "bastion".into() },
        grace: Duration::from_secs(2),
        keepalive: Duration::from_secs(1),
        keepalive_misses: 3,
    }
}

/// Context 1 under the master, with its parent stream connected.
fn agent(t0: Instant) -> Core {
    let routes = Arc::new(RwLock::new(Routes::new(1, vec![0])));
    let mut core = Core::new(cfg(1), Some(0), routes, t0);
    core.add_stream(UP, 0, "parent", true, t0);
    core
}

fn master(t0: Instant) -> Core {
    Core::new(cfg(0), None, Arc::new(RwLock::new(Routes::new(0, vec![]))), t0)
}

fn drain(core: &mut Core) -> Vec<Action> {
    std::iter::from_fn(|| core.poll_action()).collect()
}

fn from(src: u32, dst: u32, handle: u32, body: Vec<u8>) -> Message {
    let mut m = Message::new(dst, handle, body);
    m.header.src = src;
    m.header.auth = src;
    m
}

/// The master tells context 1 (through its parent stream) that it will
/// start `id`, then 1's connect joins as stream `sid`.
fn connect_child(core: &mut Core, id: u32, sid: StreamId, now: Instant) {
    let notice = from(0, 1, handle::ALLOCATE_ID, body::encode(&AllocatedId { id, parent: 1 }));
    core.handle_message(notice, Origin::Stream(UP), now);
    core.add_stream(sid, id, &format!("bastion/c{id}"), false, now);
}

fn writes(actions: &[Action]) -> Vec<(StreamId, u32, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Write(sid, m) => Some((*sid, m.header.dst, m.header.handle)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_connect_is_announced_once_and_a_lost_id_stays_lost() {
    let t0 = Instant::now();
    let mut core = agent(t0);
    connect_child(&mut core, 7, 5, t0);
    let acts = drain(&mut core);
    assert_eq!(writes(&acts), [(UP, 0, handle::ADD_ROUTE)]);
    // An id nobody announced joins as a stream: refused and closed.
    core.add_stream(6, 8, "bastion/x", false, t0);
    let acts = drain(&mut core);
    assert!(acts.iter().any(|a| matches!(a, Action::Close(6, DropReason::Refused(RouteRefusal::NotAllocated)))));
    // 7 is lost; a sibling's claim on it later is refused.
    core.drop_stream(5, DropReason::Closed, t0);
    let acts = drain(&mut core);
    assert!(acts.iter().any(|a| matches!(a, Action::FailPeer(7, _))));
    assert_eq!(writes(&acts), [(UP, 0, handle::DEL_ROUTE)]);
    connect_child(&mut core, 9, 6, t0);
    drain(&mut core);
    let claim = from(9, 1, handle::ADD_ROUTE, body::encode(&AddRoute { id: 7, parent: 9, name: "x".into() }));
    core.handle_message(claim, Origin::Stream(6), t0);
    let acts = drain(&mut core);
    assert!(writes(&acts).is_empty(), "the claim went up: {acts:?}");
    assert!(core.routes().via(7).is_none());
}

#[test]
fn allocate_id_is_a_parents_notice_never_a_childs_request() {
    let t0 = Instant::now();
    let mut core = agent(t0);
    connect_child(&mut core, 7, 5, t0);
    drain(&mut core);
    let mut ask = from(7, 1, handle::ALLOCATE_ID, body::encode(&AllocatedId { id: 50, parent: 7 }));
    ask.header.reply_to = 1000;
    core.handle_message(ask, Origin::Stream(5), t0);
    let acts = drain(&mut core);
    // A DEAD reply, and nothing recorded: 7 can't then announce 50.
    assert!(matches!(&acts[..], [Action::Write(5, m)] if m.is_dead()), "{acts:?}");
    let claim = from(7, 1, handle::ADD_ROUTE, body::encode(&AddRoute { id: 50, parent: 7, name: "x".into() }));
    core.handle_message(claim, Origin::Stream(5), t0);
    assert!(core.routes().via(50).is_none());
    // The master's notice passing down to 7 lets 7 announce 50, once.
    let notice = from(0, 7, handle::ALLOCATE_ID, body::encode(&AllocatedId { id: 50, parent: 7 }));
    core.handle_message(notice, Origin::Stream(UP), t0);
    assert_eq!(writes(&drain(&mut core)), [(5, 7, handle::ALLOCATE_ID)]);
    let claim = from(7, 1, handle::ADD_ROUTE, body::encode(&AddRoute { id: 50, parent: 7, name: "x".into() }));
    core.handle_message(claim, Origin::Stream(5), t0);
    assert_eq!(core.routes().via(50), Some(5));
    assert_eq!(writes(&drain(&mut core)), [(UP, 0, handle::ADD_ROUTE)]);
}

#[test]
fn shutdown_is_taken_from_the_immediate_parent_only() {
    let t0 = Instant::now();
    let mut core = agent(t0);
    connect_child(&mut core, 7, 5, t0);
    drain(&mut core);
    core.handle_message(from(7, 1, handle::SHUTDOWN, Vec::new()), Origin::Stream(5), t0);
    assert!(!core.shutting_down());
    // The parent stream speaking as a context below us is dropped too.
    core.handle_message(from(7, 1, handle::SHUTDOWN, Vec::new()), Origin::Stream(UP), t0);
    assert!(!core.shutting_down());
    core.handle_message(from(0, 1, handle::SHUTDOWN, Vec::new()), Origin::Stream(UP), t0);
    assert!(core.shutting_down());
}

#[test]
fn shutdown_child_needs_authority_and_stops_a_child_as_its_parent() {
    let t0 = Instant::now();
    let mut core = agent(t0);
    connect_child(&mut core, 7, 5, t0);
    connect_child(&mut core, 8, 6, t0);
    drain(&mut core);
    let ask = |src: u32, body: &[u8]| {
        let mut m = from(src, 1, handle::SHUTDOWN_CHILD, body.to_vec());
        m.header.reply_to = 1234;
        m
    };
    // A child, for its sibling (even claiming the master's authority: the
    // router stamps it anew), gets a DEAD reply; the sibling is told nothing.
    core.handle_message(ask(7, b"8"), Origin::Stream(5), t0);
    let mut spoofed = ask(7, b"8");
    spoofed.header.auth = 0;
    core.handle_message(spoofed, Origin::Stream(5), t0);
    let acts = drain(&mut core);
    assert_eq!(writes(&acts), [(5, 7, 1234), (5, 7, 1234)], "{acts:?}");
    // The master may: the child gets a SHUTDOWN from us, its parent.
    core.handle_message(ask(0, b"8"), Origin::Stream(UP), t0);
    let acts = drain(&mut core);
    let [Action::Write(6, stop)] = &acts[..] else { panic!("{acts:?}") };
    let h = &stop.header;
    assert_eq!((h.dst, h.handle, h.src, h.auth), (8, handle::SHUTDOWN, 1, 1));
    // A body that is not an id: the SHUTDOWN comes to us, not from our
    // parent, and is ignored.
    core.handle_message(ask(0, b"x"), Origin::Stream(UP), t0);
    assert!(writes(&drain(&mut core)).is_empty());
    assert!(!core.shutting_down());
}

#[test]
fn log_records_carry_the_path_of_the_stream_they_came_by() {
    let t0 = Instant::now();
    let mut core = master(t0);
    let id = core.routes_mut().allocate(0).unwrap();
    core.add_stream(5, id, "web1", false, t0);
    drain(&mut core);
    let cases = [
        ("master", "web1"),
        ("web1/sudo", "web1/sudo"),
        ("web10", "web1"),
        ("web1", "web1"),
        ("web1/../master", "web1"),
        ("web1//x", "web1"),
    ];
    for (claimed, shown) in cases {
        let rec = LogRecord { level: 1, name: claimed.into(), target: "t".into(), msg: "m".into() };
        core.handle_message(from(id, 0, handle::FORWARD_LOG, body::encode(&rec)), Origin::Stream(5), t0);
        let acts = drain(&mut core);
        assert!(matches!(&acts[..], [Action::Emit(r)] if r.name == shown), "{claimed}: {acts:?}");
    }
}

#[test]
fn an_undecodable_control_body_gets_a_dead_reply_naming_it() {
    let t0 = Instant::now();
    let mut core = agent(t0);
    connect_child(&mut core, 7, 5, t0);
    drain(&mut core);
    let mut bad = from(7, 1, handle::ADD_ROUTE, b"{not json".to_vec());
    bad.header.reply_to = 1234;
    core.handle_message(bad, Origin::Stream(5), t0);
    let acts = drain(&mut core);
    let [Action::Write(5, reply)] = &acts[..] else { panic!("{acts:?}") };
    assert!(reply.is_dead() && reply.header.handle == 1234);
    assert!(String::from_utf8_lossy(&reply.body).contains("does not decode as ADD_ROUTE"));
}

#[test]
fn calls_need_authority() {
    let t0 = Instant::now();
    let mut core = agent(t0);
    connect_child(&mut core, 7, 5, t0);
    drain(&mut core);
    let mut call = from(7, 1, handle::CALL_FUNCTION, b"{}".to_vec());
    call.header.reply_to = 1000;
    core.handle_message(call, Origin::Stream(5), t0);
    let acts = drain(&mut core);
    assert!(acts.iter().any(|a| matches!(a, Action::Write(5, m) if m.is_dead())), "{acts:?}");
    let call = from(0, 1, handle::CALL_FUNCTION, b"{}".to_vec());
    core.handle_message(call, Origin::Stream(UP), t0);
    assert!(matches!(&drain(&mut core)[..], [Action::Deliver(_, Origin::Stream(UP))]));
}

#[test]
fn keepalive_probes_then_declares_a_silent_child_dead() {
    let t0 = Instant::now();
    let mut core = agent(t0);
    connect_child(&mut core, 7, 5, t0);
    drain(&mut core);
    let every = Duration::from_secs(1);
    assert_eq!(core.poll_timeout(), Some(t0 + every));
    core.handle_timeout(t0 + every, Facts::default());
    assert_eq!(writes(&drain(&mut core)), [(5, 7, handle::KEEPALIVE)]);
    // Heard from at 1.5 s: no probe at 2 s, one at 2.5 s.
    core.heard(5, t0 + Duration::from_millis(1500));
    core.handle_timeout(t0 + Duration::from_secs(2), Facts::default());
    assert!(writes(&drain(&mut core)).is_empty());
    core.handle_timeout(t0 + Duration::from_millis(2500), Facts::default());
    assert_eq!(writes(&drain(&mut core)), [(5, 7, handle::KEEPALIVE)]);
    // Three silent intervals after 1.5 s: dead.
    core.handle_timeout(t0 + Duration::from_millis(4499), Facts::default());
    assert!(!drain(&mut core).iter().any(|a| matches!(a, Action::Close(..))));
    core.handle_timeout(t0 + Duration::from_millis(4500), Facts::default());
    let acts = drain(&mut core);
    assert!(acts.iter().any(|a| matches!(a, Action::Close(5, DropReason::Silent { .. }))), "{acts:?}");
    assert!(acts.iter().any(|a| matches!(a, Action::FailPeer(7, _))));
}

#[test]
fn the_shutdown_sequence_keeps_its_bound() {
    let t0 = Instant::now();
    let mut core = agent(t0);
    connect_child(&mut core, 7, 5, t0);
    drain(&mut core);
    core.begin_shutdown("test", t0);
    let acts = drain(&mut core);
    assert!(acts.iter().any(|a| matches!(a, Action::CloseCalls)));
    assert_eq!(writes(&acts), [(5, 7, handle::SHUTDOWN)]);
    assert!(acts.iter().any(|a| matches!(a, Action::SignalCommands(libc::SIGTERM))));
    // Everything stays busy: each phase runs to its deadline, and the end
    // comes within the bound.
    let busy = Facts { children: true, commands_alive: true, captures_open: true, unsent: true, reaping: true };
    let mut now = t0;
    let mut finished = None;
    while now <= t0 + Duration::from_secs(10) {
        core.handle_timeout(now, busy);
        for a in drain(&mut core) {
            match a {
                Action::Close(5, DropReason::Forced { .. }) => assert!(now >= t0 + Duration::from_secs(2)),
                Action::SignalCommands(libc::SIGKILL) => assert!(now >= t0 + shutdown::COMMAND_TERM_GRACE),
                Action::Finish => finished = finished.or(Some(now)),
                _ => {}
            }
        }
        if finished.is_some() {
            break;
        }
        now = core.poll_timeout().unwrap_or(now + Duration::from_millis(1)).max(now + Duration::from_millis(1));
    }
    let took = finished.expect("never finished") - t0;
    assert!(took <= shutdown::bound(Duration::from_secs(2)), "took {took:?}");
    // Calls arriving now are refused as shutting down.
    let mut call = from(0, 1, handle::CALL_FUNCTION, b"{}".to_vec());
    call.header.reply_to = 1000;
    core.handle_message(call, Origin::Stream(UP), now);
    let acts = drain(&mut core);
    assert!(matches!(&acts[..], [Action::Write(UP, m)] if String::from_utf8_lossy(&m.body).contains("shutting down")));
}

#[test]
fn losing_the_parent_shuts_the_context_down() {
    let t0 = Instant::now();
    let mut core = agent(t0);
    core.drop_stream(UP, DropReason::Closed, t0);
    assert!(core.shutting_down());
    assert!(core.routes().parent().is_none());
}
