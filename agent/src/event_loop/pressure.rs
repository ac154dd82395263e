//! Back-pressure: what the poll loop stops reading while a queue is full.

use super::Loop;
use crate::poller::{Interest, Source};
use crate::stream::{LOG_HIGH, OUT_HIGH};
use spore_protocol::handle;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Calls waiting for a worker past which the broker stops reading its
/// parent (back-pressure), and below which it reads again.
pub const CALL_BACKLOG: usize = 4096;
/// Calls waiting past which more get a `DEAD` "busy" reply. Reached only
/// when the backlog made no progress for [`BACKLOG_STALL`] and the broker
/// read on (the calls running may be waiting for messages from the parent).
pub const CALL_LIMIT: usize = 4 * CALL_BACKLOG;
/// How long a paused parent stream may wait on a backlog that doesn't move.
const BACKLOG_STALL: Duration = Duration::from_secs(1);

impl Loop {
    // ---- back-pressure ---------------------------------------------------
    //
    // Nothing grows without bound because a peer stops reading: a stream
    // with OUT_HIGH bytes queued stops the reading of what feeds it (the
    // parent feeds the children, the children feed the parent), and calls
    // queued past CALL_BACKLOG stop the reading of the parent.

    pub(super) fn pace(&mut self) {
        let now = Instant::now();
        let backlog = self.shared.handles.queued(handle::CALL_FUNCTION);
        self.backlog_since = match self.backlog_since {
            _ if backlog < CALL_BACKLOG / 2 => None,
            None if backlog >= CALL_BACKLOG => Some((now, backlog)),
            // Progress: start the clock again.
            Some((_, at)) if backlog < at => Some((now, backlog)),
            other => other,
        };
        let parent_full = self.streams.values().any(|s| s.is_parent && s.out.queued() >= OUT_HIGH);
        // A backlog that doesn't move while the parent reads may be waiting
        // for the parent itself (a running call's acks): read on, up to
        // CALL_LIMIT. While the parent reads nothing, wait for it.
        let backlog_full =
            self.backlog_since.is_some_and(|(since, _)| parent_full || now.duration_since(since) < BACKLOG_STALL);
        let child_full = self.streams.values().any(|s| !s.is_parent && s.out.queued() >= OUT_HIGH);
        let poller = &self.shared.poller;
        for (&sid, s) in self.streams.iter_mut() {
            let pause = if s.is_parent { backlog_full || child_full } else { parent_full };
            if pause != s.paused {
                let interest = if pause { Interest::NONE } else { Interest::READ };
                if poller.modify(s.input.as_fd(), Source::Input(sid), interest).is_ok() {
                    s.paused = pause;
                }
            }
        }
        // Say how many log records a full parent stream cost.
        let dropped = self.shared.dropped_logs.load(Ordering::SeqCst);
        if dropped > 0 && !parent_full && self.shared.log_queue.is_none() {
            let room = self.streams.values().any(|s| s.is_parent && s.out.queued() < LOG_HIGH);
            if room {
                self.shared.dropped_logs.fetch_sub(dropped, Ordering::SeqCst);
                let text = format!("{dropped} log records dropped (the stream to the parent was full)");
                self.forward_line("spore_agent::logs", log::Level::Warn, &text);
            }
        }
    }
}
