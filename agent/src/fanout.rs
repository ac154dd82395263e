//! One byte stream written to the same file on many contexts, each byte
//! sent once down each stream that leads to a target: the engine behind the
//! `fanout_write` operation (on a hop) and the master's `write_file_many`.
//!
//! The targets are grouped by our child on the path to each ([`plan`]). A
//! child with one target in its group (itself, or one below it) gets a
//! plain `write_file` call for it; a child with several gets one
//! `fanout_write` call naming them, and fans them out in turn, so a byte
//! crosses each link once however many targets lie beyond it.
//!
//! Each leg is flow-controlled on its own. A chunk goes down a leg only
//! when that leg has room in its window, and [`Fanout::send`] returns once
//! every live leg has taken it: the caller goes at the pace of the slowest
//! live target, and nothing here holds more than a window per leg. A leg
//! that fails (its target lost, its disk full, the path refused, silent past
//! the stall limit) is abandoned (its callee removes its temporary file),
//! its targets are reported with the cause, and the others go on.

use crate::broker::Broker;
use crate::flow::{acked, Outflow};
use crate::mailbox::{Mailbox, RecvError};
use spore_protocol::body::{self, Control, FanoutArgs, FanoutReply, FanoutResult, MaybeError, WriteArgs, WriteReply};
use spore_protocol::{handle, Message, FLAG_DEAD};
use std::time::{Duration, Instant};

/// The most targets one fan-out may name.
pub const TARGET_LIMIT: usize = 4096;

/// One call a fan-out makes: to `via`, writing `targets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The context called: the one target of a plain `write_file`, or the
    /// child that fans out to the targets below it.
    pub via: u32,
    /// The targets written through this call.
    pub targets: Vec<u32>,
    /// A `fanout_write` call (else a plain `write_file`).
    pub fan: bool,
}

/// Group `targets` into calls: by the child on the path to each
/// (`child_toward`; a target with none gets a plain call of its own, which
/// fails with the router's reason). A group of one is a plain call; a child
/// that is itself a target gets a plain call for itself beside the fan-out
/// for the rest of its group. Calls come in the order of their first target.
/// A group past [`TARGET_LIMIT`] is split into several fan-outs.
pub fn plan(targets: &[u32], child_toward: impl Fn(u32) -> Option<u32>) -> Vec<Route> {
    let mut groups: Vec<(u32, Vec<u32>)> = Vec::new();
    for &t in targets {
        let key = child_toward(t).unwrap_or(t);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(t),
            None => groups.push((key, vec![t])),
        }
    }
    let mut routes = Vec::new();
    for (child, mut members) in groups {
        if let Some(i) = members.iter().position(|&t| t == child) {
            members.remove(i);
            routes.push(Route { via: child, targets: vec![child], fan: false });
        }
        // Past the limit a callee takes, one more stream per so many.
        for part in members.chunks(TARGET_LIMIT) {
            match part {
                [one] => routes.push(Route { via: *one, targets: vec![*one], fan: false }),
                _ => routes.push(Route { via: child, targets: part.to_vec(), fan: true }),
            }
        }
    }
    routes
}

/// A target's result when its leg failed: the class and the message.
fn failed(kind: &str, error: String) -> FanoutResult {
    FanoutResult { id: 0, size: None, error: Some(crate::routes::bounded(&error)), kind: Some(kind.to_string()) }
}

enum State {
    /// The call is out; its callee has not named its stream yet.
    Opening,
    /// Data flows to the callee's stream.
    Live(Outflow, u32),
    /// The callee's final reply.
    Ended(Message),
    /// Given up, with the result every target of the leg gets.
    Failed(FanoutResult),
}

struct Leg {
    route: Route,
    mb: Mailbox,
    state: State,
    broker: Broker,
}

impl Leg {
    fn is_waiting(&self) -> bool {
        matches!(self.state, State::Opening | State::Live(..))
    }

    fn needs_credit(&self) -> bool {
        matches!(&self.state, State::Opening) || matches!(&self.state, State::Live(out, _) if !out.has_credit())
    }

    /// Take one message from the callee.
    fn on_message(&mut self, msg: Message) {
        if msg.is_dead() {
            let why = String::from_utf8_lossy(&msg.body);
            let (kind, why) = match why.strip_prefix("disconnected: ") {
                Some(reason) => ("disconnected", reason),
                None => ("dead", &*why),
            };
            return self.fail(failed(kind, format!("context {}: {why}", self.route.via)));
        }
        if msg.is_end() {
            self.state = State::Ended(msg);
            return;
        }
        if let State::Live(out, _) = &mut self.state {
            if let Some(a) = acked(&msg) {
                out.on_ack(a);
            }
        } else if let Ok(Control { stream: Some(s), .. }) = body::decode::<Control>(&msg.body, "control") {
            self.state = State::Live(Outflow::new(self.broker.clone(), self.route.via, s), s);
        }
    }

    /// Wait until `done` says so, the leg ends, or `deadline`.
    fn wait(&mut self, deadline: Instant, stall: Duration, done: fn(&Leg) -> bool) {
        while self.is_waiting() && !done(self) {
            match self.mb.recv_deadline(deadline) {
                Ok(msg) => self.on_message(msg),
                Err(RecvError::Timeout) => {
                    let what = format!("context {} (silent for {}s)", self.route.via, stall.as_secs());
                    self.fail(failed("timeout", what));
                }
                Err(RecvError::Closed) => self.fail(failed("shutting_down", "shutting down".into())),
            }
        }
    }

    /// Give up on the leg; a callee still streaming is told, so it removes
    /// its temporary file rather than wait for bytes that won't come.
    fn fail(&mut self, why: FanoutResult) {
        self.abandon(why.error.as_deref().unwrap_or_default());
        self.state = State::Failed(why);
    }

    fn abandon(&mut self, why: &str) {
        if let State::Live(_, stream) = self.state {
            let mut msg = Message::new(self.route.via, stream, b"fan-out abandoned".to_vec());
            msg.header.flags = FLAG_DEAD;
            self.broker.send(msg);
            self.state = State::Failed(failed("abandoned", why.into()));
        }
    }

    /// What the leg did for each of its targets, into `out`, having sent
    /// `sent` bytes. A fan-out's callee speaks only for the targets it was
    /// given, and only a whole copy counts.
    fn results(&self, sent: u64, out: &mut Vec<FanoutResult>) {
        let via = self.route.via;
        let mut reported = Vec::new();
        let failure = match &self.state {
            State::Failed(f) => Some(f.clone()),
            State::Ended(reply) => match body::decode::<MaybeError>(&reply.body, "reply") {
                Ok(MaybeError { error: Some(e), kind }) => Some(failed(kind.as_deref().unwrap_or("remote"), e)),
                // A reply that does not decode reports no copy.
                _ if self.route.fan => {
                    reported = body::decode::<FanoutReply>(&reply.body, "reply").map(|r| r.results).unwrap_or_default();
                    None
                }
                _ => {
                    if let Ok(r) = body::decode::<WriteReply>(&reply.body, "reply") {
                        reported.push(FanoutResult { id: via, size: Some(r.size), error: None, kind: None });
                    }
                    None
                }
            },
            State::Opening | State::Live(..) => None,
        };
        for &t in &self.route.targets {
            let mut r = match (&failure, reported.iter().find(|r| r.id == t)) {
                (Some(f), _) => f.clone(),
                (None, Some(r)) if r.error.is_some() || r.size == Some(sent) => r.clone(),
                (None, _) => failed("protocol", format!("context {via}: no whole copy of {sent} bytes on context {t}")),
            };
            r.id = t;
            out.push(r);
        }
    }
}

impl Drop for Leg {
    fn drop(&mut self) {
        // A fan-out dropped mid-stream (its own caller gave up) lets go of
        // every callee at once.
        self.abandon("the sender gave up");
    }
}

/// A fan-out under way: [`Fanout::open`], [`Fanout::send`] each chunk,
/// then [`Fanout::finish`].
pub struct Fanout {
    legs: Vec<Leg>,
    /// The targets, in the caller's order.
    targets: Vec<u32>,
    sent: u64,
    stall: Duration,
}

impl Fanout {
    /// Call every leg (all at once), and wait until each has named its
    /// stream or failed. `targets` are ids below this broker's context, no
    /// repeats; a peer silent for `stall` is dropped.
    pub fn open(broker: &Broker, targets: &[u32], path: &str, mode: Option<u32>, stall: Duration) -> Fanout {
        let mut legs = Vec::new();
        for route in plan(targets, |t| broker.child_toward(t)) {
            let mb = broker.mailbox(Some(route.via));
            let args = if route.fan {
                body::encode(&FanoutArgs {
                    op: "fanout_write".into(),
                    path: path.into(),
                    mode,
                    targets: route.targets.clone(),
                })
            } else {
                body::encode(&WriteArgs { op: "write_file".into(), path: path.into(), mode })
            };
            let mut msg = Message::new(route.via, handle::CALL_FUNCTION, args);
            msg.header.reply_to = mb.handle;
            broker.send(msg);
            legs.push(Leg { route, mb, state: State::Opening, broker: broker.clone() });
        }
        let mut fan = Fanout { legs, targets: targets.to_vec(), sent: 0, stall };
        fan.wait_all(|leg| !matches!(leg.state, State::Opening));
        fan
    }

    /// The end of a wait of `stall` from now (a year at most: never an
    /// overflow).
    fn deadline(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.stall.min(Duration::from_secs(365 * 24 * 3600))).unwrap_or(now)
    }

    fn wait_all(&mut self, done: fn(&Leg) -> bool) {
        let deadline = self.deadline();
        for leg in &mut self.legs {
            leg.wait(deadline, self.stall, done);
        }
    }

    /// Legs still taking data.
    pub fn live(&self) -> usize {
        self.legs.iter().filter(|l| l.is_waiting()).count()
    }

    /// Send `data` down every live leg, each as soon as it has room:
    /// returns when all have taken it (or failed).
    pub fn send(&mut self, data: &[u8]) {
        let deadline = self.deadline();
        for leg in &mut self.legs {
            leg.wait(deadline, self.stall, |l| !l.needs_credit());
            if let State::Live(out, _) = &mut leg.state {
                out.send(data, false);
            }
        }
        self.sent += data.len() as u64;
    }

    /// Give up on every leg (the data source failed): each callee drops
    /// its temporary file.
    pub fn abandon(&mut self, why: &str) {
        for leg in &mut self.legs {
            leg.abandon(why);
        }
    }

    /// End every live leg's stream, wait for the final replies, and say
    /// how it went for each target, in the order given to `open`.
    pub fn finish(mut self) -> Vec<FanoutResult> {
        for leg in &mut self.legs {
            if let State::Live(out, _) = &mut leg.state {
                out.send(&[], true);
            }
        }
        self.wait_all(|_| false);
        let mut all = Vec::new();
        for leg in &self.legs {
            leg.results(self.sent, &mut all);
        }
        // Each target is in exactly one leg: back in the caller's order.
        let mut ordered = Vec::with_capacity(all.len());
        for t in &self.targets {
            if let Some(i) = all.iter().position(|r| r.id == *t) {
                ordered.push(all.swap_remove(i));
            }
        }
        ordered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 1 and 2 are our children; 3, 4, 5 are below 1; 6 below 2; 9 unknown.
    fn toward(t: u32) -> Option<u32> {
        match t {
            1 | 3 | 4 | 5 => Some(1),
            2 | 6 => Some(2),
            _ => None,
        }
    }

    fn plain(t: u32) -> Route {
        Route { via: t, targets: vec![t], fan: false }
    }

    #[test]
    fn targets_behind_one_child_share_one_call() {
        assert_eq!(plan(&[3, 4, 5], toward), vec![Route { via: 1, targets: vec![3, 4, 5], fan: true }]);
        let by_one = Route { via: 1, targets: vec![3, 4], fan: true };
        assert_eq!(plan(&[3, 6, 4, 2], toward), vec![by_one, plain(2), plain(6)]);
    }

    #[test]
    fn lone_targets_and_hops_that_are_targets_get_plain_calls() {
        assert_eq!(plan(&[4], toward), vec![plain(4)]);
        assert_eq!(plan(&[1, 2], toward), vec![plain(1), plain(2)]);
        assert_eq!(plan(&[1, 3], toward), vec![plain(1), plain(3)]);
        assert_eq!(plan(&[3, 1, 4], toward), vec![plain(1), Route { via: 1, targets: vec![3, 4], fan: true }]);
        assert_eq!(plan(&[9, 3], toward), vec![plain(9), plain(3)], "no route: a call of its own, that fails");
        assert_eq!(plan(&[], toward), vec![]);
        let many: Vec<u32> = (100..100 + TARGET_LIMIT as u32 + 1).collect();
        let split = plan(&many, |_| Some(1));
        assert_eq!(split.len(), 2);
        assert_eq!(split[0].targets.len(), TARGET_LIMIT);
        assert_eq!(split[1], plain(100 + TARGET_LIMIT as u32), "the one left over");
    }
}
