//! The poll loop: the broker thread's fd side. It reads streams and pipes,
//! feeds what it reads to the [`Core`], carries out the core's actions
//! (writes, deliveries, closes, signals) and sleeps until the next event or
//! the core's next deadline. Every rule lives in the core; this file only
//! moves bytes and owns fds and processes.

use crate::core::{Action, Core, CoreConfig, DropReason};
use crate::locks::{lock, read, write};
use crate::logs::{self, LineSource};
use crate::mailbox::Undelivered;
use crate::poller::{Events, Interest, Source};
use crate::procs::Reaper;
use crate::routes::{Origin, Refusal, StreamId, Undeliverable};
use crate::shared::{say_last_words, Cmd, Prepared, Shared};
use crate::shutdown::{self, Facts};
use crate::spawn::Child;
use crate::spin;
use crate::stream::{Out, LOG_HIGH};
use crate::sys;
use crate::vecmap::VecMap;
use spore_protocol::{handle, Decoder, FrameError, Message};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per-event read budget, so one busy stream can't starve the others.
const READ_BUDGET: usize = 256 * 1024;
/// While processes are about to exit, look again this soon.
const BUSY_TICK: Duration = Duration::from_millis(2);
/// The least time between two sweeps of an agent's orphans
/// (`procs::reap_orphans`): a busy broker ticks thousands of times a second.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// While a stream is paused, look again this soon.
const PAUSED_TICK: Duration = Duration::from_millis(10);
/// Consecutive failed waits before the broker gives up (about a second).
const POLL_FAILURES: u32 = 100;
/// The capture's numbers in [`Source::Capture`].
const CAPTURE_STDOUT: usize = 0;
const CAPTURE_STDERR: usize = 1;
/// Where the core's own lines are logged from.
const CORE_TARGET: &str = "spore_agent::broker";

mod finish;
mod lines;
mod pressure;

use pressure::CALL_LIMIT;

/// The fd side of one stream.
struct StreamFds {
    name: String,
    input: File,
    out: Arc<Out>,
    decoder: Decoder,
    stderr: Option<LineSource>,
    child: Option<Child>,
    is_parent: bool,
    /// Reading is paused: what it feeds is full.
    paused: bool,
}

pub(crate) struct Loop {
    shared: Arc<Shared>,
    core: Core,
    streams: VecMap<StreamId, StreamFds>,
    captures: VecMap<usize, LineSource>,
    reaper: Reaper,
    /// When this agent last reaped its orphans.
    swept: Option<Instant>,
    /// Reused for every read: no allocation per event.
    read_buf: Vec<u8>,
    finished: bool,
    /// Why the loop gave up, if it did.
    died: Option<String>,
    /// Since when the call backlog has been over `pressure::CALL_BACKLOG`, and how
    /// long it was then.
    backlog_since: Option<(Instant, usize)>,
}

impl Loop {
    pub(crate) fn new(shared: Arc<Shared>) -> Loop {
        let cfg = &shared.cfg;
        let core_cfg = CoreConfig {
            id: cfg.id,
            name: cfg.name.clone(),
            grace: cfg.grace,
            keepalive: cfg.keepalive,
            keepalive_misses: cfg.keepalive_misses,
        };
        let core = Core::new(core_cfg, cfg.parent_ids.last().copied(), shared.routes.clone(), Instant::now());
        Loop {
            shared,
            core,
            streams: VecMap::new(),
            captures: VecMap::new(),
            reaper: Reaper::default(),
            swept: None,
            read_buf: vec![0; 64 * 1024],
            finished: false,
            died: None,
            backlog_since: None,
        }
    }

    pub(crate) fn run(mut self) {
        crate::shared::mark_broker_thread();
        if self.shared.cfg.exit_process {
            // An agent's process (never the master's: the user's program's
            // other children are none of ours). What a killed or stopped
            // guardian leaves comes to us, and dies at our end
            // (`procs::kill_descendants`).
            if let Err(e) = sys::set_child_subreaper() {
                logs::blog!(log::Level::Debug, "not a child subreaper: {e}");
            }
        }
        if let Some(q) = &self.shared.log_queue {
            logs::use_queue(q.clone());
        }
        let mut events = Events::default();
        let mut failures = 0;
        loop {
            self.take_commands();
            self.tick();
            if self.finished {
                break;
            }
            let timeout = self.next_timeout();
            events.clear();
            let shared = self.shared.clone();
            // The next message may follow within microseconds: look again
            // for a moment before sleeping (see `spin`).
            let start = Instant::now();
            let busy = spin::spin_until(timeout.unwrap_or(Duration::MAX), || {
                let polled = shared.poller.wait(&mut events, Some(Duration::ZERO));
                (polled.is_ok() && !events.is_empty()) || shared.pending.load(Ordering::SeqCst) > 0
            });
            if !busy {
                let timeout = timeout.map(|t| t.saturating_sub(start.elapsed()));
                if let Err(e) = shared.poller.wait(&mut events, timeout) {
                    failures += 1;
                    if failures == 1 {
                        logs::blog!(log::Level::Warn, "broker: poll failed: {e}");
                    }
                    if failures >= POLL_FAILURES {
                        self.died = Some(format!("the broker of {} can't poll: {e}", shared.cfg.name));
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
            failures = 0;
            spin::waited(start);
            for e in events.iter() {
                match e.source {
                    Source::Input(sid) if e.readable => self.read_stream(sid),
                    Source::Output(sid) if e.writable => self.on_writable(sid),
                    Source::Stderr(sid) => self.read_stream_stderr(sid),
                    Source::Capture(n) => self.read_capture(n),
                    _ => {}
                }
            }
            self.drop_failed_outs();
            self.run_actions();
            self.pace();
        }
        self.finish();
    }

    fn next_timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut deadline = self.core.poll_timeout();
        // A paused stream resumes when a queue drains, which nobody
        // announces: look again soon.
        let paused = self.streams.values().any(|s| s.paused).then(|| now + PAUSED_TICK);
        for other in [self.reaper.next_check(now), self.core.shutting_down().then(|| now + BUSY_TICK), paused] {
            deadline = match (deadline, other) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        deadline.map(|d| d.saturating_duration_since(now))
    }

    /// Time passed: reap, and let the core probe and move the shutdown on.
    fn tick(&mut self) {
        let now = Instant::now();
        self.reaper.check(now);
        // An agent's orphans: it ticks on every wake-up (when idle, for
        // its parent's keepalive probe), so at most every SWEEP_EVERY.
        if self.shared.cfg.exit_process && self.swept.is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY) {
            self.swept = Some(now);
            crate::procs::reap_orphans(sys::getpid());
        }
        let facts = if self.core.shutting_down() {
            let parent_pending = self.streams.values().any(|s| s.is_parent && s.out.pending());
            Facts {
                children: false,
                commands_alive: lock(&self.shared.groups).any_alive(),
                captures_open: !self.captures.is_empty(),
                unsent: parent_pending || !lock(&self.shared.queue).is_empty(),
                reaping: !self.reaper.is_empty(),
            }
        } else {
            Facts::default()
        };
        self.core.handle_timeout(now, facts);
        self.run_actions();
    }

    fn take_commands(&mut self) {
        loop {
            let cmds = std::mem::take(&mut *lock(&self.shared.queue));
            if cmds.is_empty() {
                return;
            }
            for cmd in cmds {
                self.command(cmd);
                self.run_actions();
                self.shared.pending.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn command(&mut self, cmd: Cmd) {
        let now = Instant::now();
        match cmd {
            Cmd::Send(msg) => self.core.handle_message(msg, Origin::Local, now),
            Cmd::AddStream(s) => self.add_stream(*s),
            Cmd::Capture { file, target } => self.add_capture(file, target),
            Cmd::Shutdown(why) => self.core.begin_shutdown(&why, now),
            Cmd::Reap(child, what) => {
                let kill_at = self.core.shutting_down().then(|| now + shutdown::COMMAND_TERM_GRACE);
                self.reaper.add(child, what, kill_at);
            }
            #[allow(clippy::panic, reason = "the test hook's whole point")]
            Cmd::Crash => panic!("crash requested by a test"),
        }
    }

    // ---- the core's actions ---------------------------------------------

    fn run_actions(&mut self) {
        while let Some(action) = self.core.poll_action() {
            self.act(action);
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Write(sid, msg) => self.write(sid, &msg),
            Action::Deliver(msg, origin) => self.deliver(msg, origin),
            Action::Emit(rec) => {
                if let Some(q) = &self.shared.log_queue {
                    q.record(&rec);
                }
            }
            Action::Log(level, text) => logs::line(level, CORE_TARGET, &text),
            Action::FailPeer(id, reason) => self.shared.handles.fail_peer(self.shared.cfg.id, id, &reason),
            Action::Close(sid, why) => self.close(sid, why),
            Action::CloseCalls => {
                self.shared.shutting_down.store(true, Ordering::SeqCst);
                self.shared.handles.unregister(handle::CALL_FUNCTION);
            }
            Action::SignalCommands(sig) => lock(&self.shared.groups).signal(sig),
            Action::HalfCloseCapture => self.half_close_capture(),
            Action::Finish => self.finished = true,
        }
    }

    fn write(&mut self, sid: StreamId, msg: &Message) {
        let Some(out) = self.streams.get(&sid).map(|s| s.out.clone()) else { return };
        if msg.header.handle == handle::FORWARD_LOG && out.queued() >= LOG_HIGH {
            // A log flood is dropped, not buffered; `pace` says how much.
            self.shared.dropped_logs.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if !out.send(msg, &self.shared.poller) {
            let why = out.flush(&self.shared.poller).unwrap_or_default();
            self.core.drop_stream(sid, DropReason::WriteFailed(why), Instant::now());
        }
    }

    fn deliver(&mut self, msg: Message, origin: Origin) {
        let (src, dead, h) = (msg.header.src, msg.is_dead(), msg.header.handle);
        if h == handle::CALL_FUNCTION && self.shared.handles.queued(h) >= CALL_LIMIT {
            return self.core.undeliverable(msg, Undeliverable::Busy(CALL_LIMIT));
        }
        let routes = self.shared.routes.clone();
        let delivered = self.shared.handles.deliver(msg, |peer| read(&routes).may_answer(peer, src, origin, dead));
        match delivered {
            Ok(()) => {}
            Err((msg, Undelivered::NoHandle)) => self.core.no_handle(msg),
            Err((_, Undelivered::Foreign(peer))) => {
                self.core.refuse(origin, Refusal::ForeignAnswer { handle: h, peer, src })
            }
        }
    }

    /// Close a stream the core dropped: its fds, its connection process.
    fn close(&mut self, sid: StreamId, why: DropReason) {
        write(&self.shared.outs).remove(&sid);
        let Some(mut s) = self.streams.remove(&sid) else { return };
        let poller = &self.shared.poller;
        let _ = poller.delete(s.input.as_fd());
        s.out.unwatch(poller);
        if let Some(src) = s.stderr.as_mut() {
            // Whatever the process printed last is its explanation.
            let _ = poller.delete(src.file.as_fd());
            let (target, level) = (src.target.clone(), src.level);
            let mut lines = Vec::new();
            src.drain(true, |l| lines.push(l.to_string()));
            for l in lines {
                self.forward_line(&target, level, &l);
            }
        }
        if let Some(child) = s.child.take() {
            for &sig in why.signals() {
                let _ = sys::kill(child.id() as i32, sig);
            }
            self.reaper.add(
                child,
                format!("connection process for {}", s.name),
                Some(Instant::now() + why.kill_delay()),
            );
        }
        if s.is_parent && why != DropReason::Closed {
            say_last_words(&format!("spore-agent {}: {why}; shutting down\n", self.shared.cfg.name));
        }
    }

    fn half_close_capture(&mut self) {
        if self.captures.is_empty() {
            return;
        }
        match File::open("/dev/null") {
            Ok(null) => {
                // No `stdout().flush()`: a call thread may hold std's stdout
                // lock while blocked on the full pipe we are about to drain.
                for fd in [1, 2] {
                    let _ = sys::dup_onto(null.as_fd(), fd);
                }
            }
            Err(e) => logs::blog!(log::Level::Warn, "can't open /dev/null to close stdout/stderr: {e}"),
        }
    }

    // ---- streams ---------------------------------------------------------

    fn add_stream(&mut self, s: Prepared) {
        let sid = s.sid;
        for f in [&s.input].into_iter().chain(s.stderr.as_ref()) {
            if let Err(e) = sys::set_nonblocking(f.as_fd(), true) {
                logs::blog!(log::Level::Warn, "stream {}: can't make fd non-blocking: {e}", s.name);
            }
        }
        let Some(out) = read(&self.shared.outs).get(&sid).cloned() else {
            // Its write side is gone already: it can't be served.
            if !s.is_parent {
                write(&self.shared.routes).forget(s.remote_id);
            }
            if let Some(child) = s.child {
                self.reaper.add(child, format!("connection process for {}", s.name), Some(Instant::now()));
            }
            return;
        };
        let mut decoder = Decoder::new(self.shared.cfg.max_message);
        decoder.push(&s.leftover);
        let stderr = s.stderr.map(|file| LineSource::new(file, format!("{}:stderr", s.name), log::Level::Warn));
        let fds = StreamFds {
            name: s.name.clone(),
            input: s.input,
            out,
            decoder,
            stderr,
            child: s.child,
            is_parent: s.is_parent,
            paused: false,
        };
        let poller = &self.shared.poller;
        // SAFETY (of `Poller::add`): each fd is owned by `fds`, which lives
        // in `self.streams` until `close` deletes it from the poller.
        let watched = unsafe { poller.add(fds.input.as_fd(), Source::Input(sid), Interest::READ) }
            .and_then(|()| fds.out.watch(poller))
            .and_then(|()| match &fds.stderr {
                // SAFETY: as above.
                Some(src) => unsafe { poller.add(src.file.as_fd(), Source::Stderr(sid), Interest::READ) },
                None => Ok(()),
            });
        self.streams.insert(sid, fds);
        let now = Instant::now();
        self.core.add_stream(sid, s.remote_id, &s.name, s.is_parent, now);
        if let Err(e) = watched {
            // A stream we can't poll would never report its end.
            self.core.drop_stream(sid, DropReason::CantWatch(e.to_string()), now);
        }
        self.run_actions();
        // Bytes that arrived with the handshake may already hold messages.
        self.decode(sid);
    }

    fn add_capture(&mut self, file: File, target: &'static str) {
        let n = if target == "stdout" { CAPTURE_STDOUT } else { CAPTURE_STDERR };
        let _ = sys::set_nonblocking(file.as_fd(), true);
        let level = if n == CAPTURE_STDOUT { log::Level::Info } else { log::Level::Warn };
        // SAFETY (of `Poller::add`): the fd is owned by the LineSource in
        // `self.captures`, deleted from the poller before it is dropped.
        if let Err(e) = unsafe { self.shared.poller.add(file.as_fd(), Source::Capture(n), Interest::READ) } {
            logs::blog!(log::Level::Warn, "capture {target}: {e}");
            return;
        }
        self.captures.insert(n, LineSource::new(file, target.to_string(), level));
    }

    fn read_stream(&mut self, sid: StreamId) {
        let mut buf = std::mem::take(&mut self.read_buf);
        buf.resize(64 * 1024, 0);
        let mut total = 0;
        let mut gone = None;
        if let Some(s) = self.streams.get_mut(&sid) {
            while total < READ_BUDGET {
                match (&s.input).read(&mut buf) {
                    Ok(0) => {
                        gone = Some(match s.decoder.finish() {
                            Ok(()) => DropReason::Closed,
                            Err(e) => DropReason::Truncated(e.to_string()),
                        });
                        break;
                    }
                    Ok(n) => {
                        total += n;
                        s.decoder.push(buf.get(..n).unwrap_or_default());
                        if n < buf.len() {
                            // Drained for now; level-triggered polling says
                            // when there is more (no EAGAIN read needed).
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        gone = Some(DropReason::ReadFailed(e.to_string()));
                        break;
                    }
                }
            }
        }
        self.read_buf = buf;
        if total > 0 {
            self.core.heard(sid, Instant::now());
        }
        self.decode(sid);
        if let Some(why) = gone {
            self.core.drop_stream(sid, why, Instant::now());
            self.run_actions();
        }
    }

    fn decode(&mut self, sid: StreamId) {
        loop {
            let Some(s) = self.streams.get_mut(&sid) else { return };
            let next: Result<Option<Message>, FrameError> = s.decoder.next();
            match next {
                Ok(Some(msg)) => {
                    // A record for a full log queue is counted, not read: a
                    // flood costs the broker as little as possible.
                    let for_us = msg.header.handle == handle::FORWARD_LOG && msg.header.dst == self.shared.cfg.id;
                    if let Some(q) = self.shared.log_queue.as_ref().filter(|q| for_us && q.full()) {
                        q.drop_one();
                        continue;
                    }
                    self.core.handle_message(msg, Origin::Stream(sid), Instant::now());
                    self.run_actions();
                }
                Ok(None) => return,
                Err(e) => {
                    let why = DropReason::Corrupt(e.to_string());
                    logs::blog!(log::Level::Warn, "{}: {why}", s.name);
                    self.core.drop_stream(sid, why, Instant::now());
                    self.run_actions();
                    return;
                }
            }
        }
    }

    /// Room in the pipe, or (with nothing pending) the peer closed it.
    fn on_writable(&mut self, sid: StreamId) {
        let Some(out) = self.streams.get(&sid).map(|s| s.out.clone()) else { return };
        let why = if !out.pending() && out.peer_closed() {
            Some(DropReason::PeerClosedInput)
        } else {
            out.flush(&self.shared.poller).map(DropReason::WriteFailed)
        };
        if let Some(why) = why {
            self.core.drop_stream(sid, why, Instant::now());
            self.run_actions();
        }
    }

    /// Drop the streams whose writes failed in a sending thread.
    fn drop_failed_outs(&mut self) {
        if !self.shared.out_failed.swap(false, Ordering::SeqCst) {
            return;
        }
        let failed: Vec<(StreamId, String)> =
            self.streams.iter().filter_map(|(&sid, s)| s.out.failed().map(|why| (sid, why))).collect();
        for (sid, why) in failed {
            self.core.drop_stream(sid, DropReason::WriteFailed(why), Instant::now());
        }
    }
}
