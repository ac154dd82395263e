//! Opening the targets of a command line: targets sharing a prefix share
//! its connection (`bastion/web1 bastion/web2` opens `bastion` once), and
//! at most [`Targets::forks`] connections are being set up at any moment.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::hop::{self, Hop};
use crate::router::Router;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// A prefix's connection and when it was made, or (the hop that failed,
/// why).
type Outcome = std::result::Result<(Context, Instant), (String, String)>;

/// The default limit on connections being set up at once (like Ansible's
/// forks, but only the setup counts: a connected target runs at once).
pub const DEFAULT_FORKS: usize = 64;

/// A live context [`Targets`] holds, for a listing.
#[derive(Clone, Debug)]
pub struct Opened {
    /// Its target path (a prefix of what was opened, or all of it).
    pub path: String,
    /// The context.
    pub context: Context,
    /// When its connect succeeded.
    pub connected_since: Instant,
    /// When [`Targets::open`] last handed it out (itself or below it).
    pub last_used: Instant,
}

/// One prefix asked for: filled once, by the first thread to need it; the
/// others wait for that one.
struct Cell {
    outcome: OnceLock<Outcome>,
    last_used: Mutex<Instant>,
}

impl Cell {
    fn new() -> Arc<Cell> {
        Arc::new(Cell { outcome: OnceLock::new(), last_used: Mutex::new(Instant::now()) })
    }

    /// Holds a context that is gone (not one still being connected, nor a
    /// failure: those stay until [`Targets::forget_failures`]).
    fn is_lost(&self) -> bool {
        matches!(self.outcome.get(), Some(Ok((ctx, _))) if !ctx.is_connected())
    }
}

/// How one run opens its targets, where runs at once share one
/// [`Targets`] (a session) and each has its own connect timeout and become
/// password. `None`: the router's
/// [`Options::connect_timeout`](crate::Options) and
/// [`Options::become_password`](crate::Options).
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenWith<'a> {
    /// How long each connect waits for its agent.
    pub connect_timeout: Option<Duration>,
    /// The password for the `sudo`, `su` and `doas` hops this open
    /// connects. Only borrowed: the caller holds it for the run and drops
    /// it after (contexts it opened stay connected, so the next run needs
    /// none). The copies made on its way to the agent (the connect call's
    /// arguments, their JSON, the message) are freed when the connect is
    /// done; a process that must keep none of them zeroes every block
    /// before freeing it, as the `spore` session does (its global
    /// allocator).
    pub become_password: Option<&'a str>,
}

/// The contexts opened for a set of targets, each prefix opened once.
/// Shared by the threads that open them (`&self` everywhere). Fit for a
/// long life (a session): a context that is gone is connected again on
/// the next [`Targets::open`], failures can be forgotten, contexts listed
/// and dropped.
pub struct Targets {
    router: Router,
    /// `ssh -F` for first hops.
    pub first_hop_config: Option<String>,
    /// `ssh -o` options for first hops.
    pub first_hop_options: Vec<String>,
    /// Each prefix asked for, by path.
    open: Mutex<HashMap<String, Arc<Cell>>>,
    slots: Slots,
}

impl Targets {
    /// Nothing opened yet; [`DEFAULT_FORKS`] handshakes at once.
    pub fn new(router: Router) -> Targets {
        Targets {
            router,
            first_hop_config: None,
            first_hop_options: Vec::new(),
            open: Mutex::new(HashMap::new()),
            slots: Slots::new(DEFAULT_FORKS),
        }
    }

    /// At most `n` (at least 1) connections being set up at once; the rest
    /// wait for a slot.
    pub fn set_forks(&mut self, n: usize) {
        self.slots = Slots::new(n.max(1));
    }

    /// The limit set by [`Targets::set_forks`].
    pub fn forks(&self) -> usize {
        self.slots.limit
    }

    /// The most handshakes that were ever under way at once.
    pub fn peak_handshakes(&self) -> usize {
        self.slots.state.lock().unwrap_or_else(PoisonError::into_inner).peak
    }

    /// Open one target: each hop of its path in turn, each prefix shared
    /// with every other target that has it. Safe to call from many threads
    /// at once; each handshake holds one of the forks slots. A cached
    /// context that is no longer connected ([`Context::is_connected`]) is
    /// replaced by a fresh connect, and every cached path below it
    /// forgotten; a failed connect is remembered (and returned again) until
    /// [`Targets::forget_failures`].
    pub fn open(&self, target: &str) -> Result<Context> {
        self.open_with(target, OpenWith::default())
    }

    /// [`Targets::open`] on one run's terms: its connects wait its connect
    /// timeout and use its become password. A prefix another thread is
    /// connecting already is waited for on that thread's terms.
    pub fn open_with(&self, target: &str, with: OpenWith<'_>) -> Result<Context> {
        let hops = hop::parse(target)?;
        let parts: Vec<&str> = target.split('/').collect();
        let mut parent: Option<Context> = None;
        for (level, hop) in hops.iter().enumerate() {
            let path = parts[..=level].join("/");
            let cell = self.cell(&path);
            let opened = cell.outcome.get_or_init(|| {
                self.connect(parent.as_ref(), hop, level, &path, with).map(|ctx| (ctx, Instant::now()))
            });
            match opened {
                Ok((ctx, _)) => {
                    *lock(&cell.last_used) = Instant::now();
                    parent = Some(ctx.clone());
                }
                Err((hop, cause)) => return Err(Error::Connect { target: hop.clone(), cause: cause.clone() }),
            }
        }
        parent.ok_or_else(|| Error::Usage(format!("target {target:?} has no hops")))
    }

    /// The cell for `path`: the cached one, or a new one if there was none
    /// or its context is gone (then every path below it goes too: they
    /// were reached through it).
    fn cell(&self, path: &str) -> Arc<Cell> {
        let mut open = lock(&self.open);
        if open.get(path).is_some_and(|c| c.is_lost()) {
            log::debug!("{path}: its context is gone; connecting again");
            remove_below(&mut open, path);
        }
        Arc::clone(open.entry(path.to_string()).or_insert_with(Cell::new))
    }

    /// Forget every failed connect, so that the next [`Targets::open`] of
    /// it tries again. Connects under way are left alone.
    pub fn forget_failures(&self) {
        lock(&self.open).retain(|_, c| !matches!(c.outcome.get(), Some(Err(_))));
    }

    /// The connected contexts held, sorted by path.
    pub fn contexts(&self) -> Vec<Opened> {
        let open = lock(&self.open);
        let mut list: Vec<Opened> = open
            .iter()
            .filter_map(|(path, cell)| match cell.outcome.get() {
                Some(Ok((ctx, since))) if ctx.is_connected() => Some(Opened {
                    path: path.clone(),
                    context: ctx.clone(),
                    connected_since: *since,
                    last_used: *lock(&cell.last_used),
                }),
                _ => None,
            })
            .collect();
        list.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        list
    }

    /// Forget the context at `path` and every one below it (the next open
    /// connects them again), and shut its agent down with its subtree
    /// (through its parent, for a context below a first hop): calls still
    /// running on any of them then fail. Its parent stays connected. False
    /// if nothing was held at `path`.
    pub fn drop_context(&self, path: &str) -> bool {
        let cell = {
            let mut open = lock(&self.open);
            let cell = open.get(path).cloned();
            remove_below(&mut open, path);
            cell
        };
        let Some(cell) = cell else { return false };
        if let Some(Ok((ctx, _))) = cell.outcome.get() {
            ctx.shutdown();
        }
        true
    }

    fn connect(
        &self,
        parent: Option<&Context>,
        hop: &Hop,
        level: usize,
        path: &str,
        with: OpenWith<'_>,
    ) -> std::result::Result<Context, (String, String)> {
        let mut hop = hop.clone();
        if let (0, Hop::Ssh(ssh)) = (level, &mut hop) {
            // -F and -o on the command line are for the first hop.
            ssh.config = self.first_hop_config.clone();
            ssh.options = self.first_hop_options.clone();
        }
        let options = self.router.options();
        let timeout = with.connect_timeout.unwrap_or(options.connect_timeout);
        let password = with.become_password.or(options.become_password.as_deref());
        let r = self.slots.acquire(&self.router).and_then(|_slot| match parent {
            None => self.router.connect_with(&hop, path, password, timeout),
            Some(ctx) => ctx.connect_hop_with(&hop, path, password, timeout),
        });
        r.map_err(|e| match e {
            Error::Connect { target, cause } => (target, out_of_fds(cause)),
            other => (path.to_string(), out_of_fds(other.to_string())),
        })
    }

    /// Open every target, in parallel (within the forks limit). Returns
    /// one result per target, in order.
    pub fn open_all(&self, targets: &[String]) -> Vec<Result<Context>> {
        std::thread::scope(|s| {
            let handles: Vec<_> = targets.iter().map(|t| s.spawn(move || self.open(t))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(Error::ShuttingDown))).collect()
        })
    }
}

/// Forget `path` and every path below it.
fn remove_below(open: &mut HashMap<String, Arc<Cell>>, path: &str) {
    let below = format!("{path}/");
    open.retain(|p, _| p != path && !p.starts_with(&below));
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A failure for want of file descriptors (here, or in an agent, whose
/// libc words it differently) says what to do about it.
fn out_of_fds(cause: String) -> String {
    if !cause.contains("(os error 24)") {
        return cause;
    }
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we pass, which lives for the call.
    let limit = (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur);
    let limit = limit.map_or_else(String::new, |l| format!(", {l} here"));
    format!("{cause} (out of file descriptors{limit}: raise `ulimit -n`, or lower --forks)")
}

/// Counting semaphore for handshakes under way.
struct Slots {
    limit: usize,
    state: Mutex<SlotState>,
    freed: Condvar,
}

#[derive(Default)]
struct SlotState {
    busy: usize,
    peak: usize,
}

/// A slot held; given back when dropped.
struct Slot<'a>(&'a Slots);

impl Slots {
    fn new(limit: usize) -> Slots {
        Slots { limit, state: Mutex::new(SlotState::default()), freed: Condvar::new() }
    }

    /// Wait for a slot. The wait has no deadline of its own, since every
    /// holder's handshake has one (the connect timeout), but it ends once
    /// the router shuts down (checked every 50 ms).
    fn acquire(&self, router: &Router) -> Result<Slot<'_>> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if router.is_shut_down() {
                return Err(Error::ShuttingDown);
            }
            if st.busy < self.limit {
                st.busy += 1;
                st.peak = st.peak.max(st.busy);
                return Ok(Slot(self));
            }
            st = self.freed.wait_timeout(st, Duration::from_millis(50)).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.busy -= 1;
        self.0.freed.notify_one();
    }
}
