//! The shutdown sequence and its time budget, with no I/O.
//!
//! One context's shutdown: close the call channel, SHUTDOWN to the
//! children, SIGTERM to the commands; wait for the children (at most the
//! grace), force the rest; SIGKILL the commands still running
//! [`COMMAND_TERM_GRACE`] after the start; half-close the captured
//! stdout/stderr and drain it, flush the parent stream (at most
//! [`FLUSH_LIMIT`]); then the last writes, the reaping of connection
//! processes and, in an agent, the SIGKILL of every process still below it
//! (what a guardian too slow, stopped or killed left: [`FINAL_WRITE_LIMIT`],
//! [`REAP_LIMIT`]), and the end: the parent stream closes last.
//!
//! The budget: a context ends within [`bound`]`(grace)`, and a child gets
//! [`child_grace`] of its parent's grace, so its whole shutdown fits inside
//! the time its parent waits for it (asserted in the tests below).

use std::time::{Duration, Instant};

/// Commands get SIGTERM at the start and SIGKILL this much later.
pub const COMMAND_TERM_GRACE: Duration = Duration::from_millis(300);
/// Draining the captured output and the parent stream.
pub const FLUSH_LIMIT: Duration = Duration::from_millis(300);
/// The broker's last writes to its parent.
pub const FINAL_WRITE_LIMIT: Duration = Duration::from_millis(100);
/// Waiting for connection processes to exit before SIGKILL, then (in an
/// agent) killing whatever is left below it.
pub const REAP_LIMIT: Duration = Duration::from_millis(300);
/// A forced child's connection process gets SIGTERM, then SIGKILL this
/// much later (within [`REAP_LIMIT`]).
pub const FORCED_KILL_DELAY: Duration = Duration::from_millis(200);
/// Room for the SHUTDOWN to travel down and the streams' ends to travel up.
pub const LEVEL_MARGIN: Duration = Duration::from_millis(300);
/// What a context spends after its children's phase, at most.
pub const TAIL: Duration = FLUSH_LIMIT.saturating_add(FINAL_WRITE_LIMIT).saturating_add(REAP_LIMIT);
/// The smallest grace a child is given.
pub const MIN_GRACE: Duration = Duration::from_millis(300);

/// The longest a context with this grace takes to shut down.
pub fn bound(grace: Duration) -> Duration {
    grace.max(COMMAND_TERM_GRACE).saturating_add(TAIL)
}

/// The grace a context gives its children: its own, less what it spends
/// after them and the travel, so a child's [`bound`] fits in its parent's
/// grace (with grace to spare above [`MIN_GRACE`]).
pub fn child_grace(parent: Duration) -> Duration {
    parent.saturating_sub(TAIL.saturating_add(LEVEL_MARGIN)).max(MIN_GRACE)
}

/// Where a shutdown stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs, reason = "each variant's doc names its fields")]
pub enum Phase {
    /// Not shutting down.
    Running,
    /// SHUTDOWN sent to children; waiting for them until the deadline.
    Children { deadline: Instant },
    /// Commands sent SIGTERM; SIGKILL at the deadline.
    Commands { deadline: Instant },
    /// Capture half-closed; draining it and flushing the parent stream.
    Flush { deadline: Instant },
    /// The sequence is complete: the broker ends.
    Done,
}

/// What the broker knows that the sequence waits on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Facts {
    /// Child streams still connected.
    pub children: bool,
    /// Commands' process groups still alive.
    pub commands_alive: bool,
    /// Captured stdout/stderr still open.
    pub captures_open: bool,
    /// Bytes still queued for the parent (or commands for the broker).
    pub unsent: bool,
    /// Connection processes not yet reaped.
    pub reaping: bool,
}

/// A step the broker carries out as the sequence moves on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Force every child still connected.
    ForceChildren,
    /// SIGKILL the commands still running.
    KillCommands,
    /// Half-close the captured stdout/stderr.
    HalfCloseCapture,
    /// End the broker.
    Finish,
}

impl Phase {
    /// The phase's deadline, if it has one.
    pub fn deadline(self) -> Option<Instant> {
        match self {
            Phase::Children { deadline } | Phase::Commands { deadline } | Phase::Flush { deadline } => Some(deadline),
            Phase::Running | Phase::Done => None,
        }
    }

    /// Move on as far as `facts` and the time allow (`started`: when the
    /// shutdown began), pushing the steps to take.
    pub fn advance(&mut self, now: Instant, started: Instant, facts: Facts, steps: &mut Vec<Step>) {
        loop {
            let next = match *self {
                Phase::Running | Phase::Done => return,
                Phase::Children { deadline } => {
                    if facts.children && now < deadline {
                        return;
                    }
                    if facts.children {
                        steps.push(Step::ForceChildren);
                    }
                    Phase::Commands { deadline: started + COMMAND_TERM_GRACE }
                }
                Phase::Commands { deadline } => {
                    if facts.commands_alive && now < deadline {
                        return;
                    }
                    if facts.commands_alive {
                        steps.push(Step::KillCommands);
                    }
                    steps.push(Step::HalfCloseCapture);
                    Phase::Flush { deadline: now + FLUSH_LIMIT }
                }
                Phase::Flush { deadline } => {
                    let busy = facts.captures_open || facts.unsent || facts.reaping;
                    if busy && now < deadline {
                        return;
                    }
                    steps.push(Step::Finish);
                    Phase::Done
                }
            };
            *self = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_finishes_inside_its_parents_grace() {
        for ms in [1_300u64, 2_000, 5_000, 30_000] {
            let grace = Duration::from_millis(ms);
            let child = child_grace(grace);
            assert!(bound(child) + LEVEL_MARGIN <= grace, "grace {ms} ms: child bound {:?}", bound(child));
        }
        // A four-level tree under the default 5 s grace.
        let mut g = Duration::from_secs(5);
        for _ in 0..4 {
            let c = child_grace(g);
            assert!(bound(c) <= g || c == MIN_GRACE);
            g = c;
        }
        assert!(FORCED_KILL_DELAY <= REAP_LIMIT);
    }

    #[test]
    fn the_sequence_runs_in_order_on_a_simulated_clock() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(2);
        let mut phase = Phase::Children { deadline: t0 + grace };
        let mut steps = Vec::new();
        let busy = Facts { children: true, commands_alive: true, captures_open: true, unsent: true, reaping: true };
        // Children still there before the grace: nothing happens.
        phase.advance(t0 + Duration::from_secs(1), t0, busy, &mut steps);
        assert_eq!((phase, steps.len()), (Phase::Children { deadline: t0 + grace }, 0));
        // Grace over: force them; the commands' 300 ms are long past.
        let t1 = t0 + grace;
        phase.advance(t1, t0, busy, &mut steps);
        assert_eq!(steps, [Step::ForceChildren, Step::KillCommands, Step::HalfCloseCapture]);
        assert_eq!(phase, Phase::Flush { deadline: t1 + FLUSH_LIMIT });
        steps.clear();
        phase.advance(t1 + FLUSH_LIMIT, t0, busy, &mut steps);
        assert_eq!((phase, steps), (Phase::Done, vec![Step::Finish]));
    }

    #[test]
    fn a_quiet_tree_finishes_at_once_and_commands_get_their_term_grace() {
        let t0 = Instant::now();
        let mut phase = Phase::Children { deadline: t0 + Duration::from_secs(5) };
        let mut steps = Vec::new();
        let commands = Facts { commands_alive: true, ..Facts::default() };
        phase.advance(t0, t0, commands, &mut steps);
        assert_eq!(phase, Phase::Commands { deadline: t0 + COMMAND_TERM_GRACE });
        phase.advance(t0 + Duration::from_millis(100), t0, Facts::default(), &mut steps);
        assert_eq!((phase, steps), (Phase::Done, vec![Step::HalfCloseCapture, Step::Finish]));
    }
}
