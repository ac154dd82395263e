//! Opening the targets of a command line: targets sharing a prefix share
//! its connection (`bastion/web1 bastion/web2` opens `bastion` once), and
//! at most [`Targets::forks`] connections are being set up at any moment.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::hop::{self, Hop};
use crate::router::Router;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// A prefix's connection, or (the hop that failed, why).
type Opened = std::result::Result<Context, (String, String)>;

/// The default limit on connections being set up at once (like Ansible's
/// forks, but only the setup counts: a connected target runs at once).
pub const DEFAULT_FORKS: usize = 64;

/// The contexts opened for a set of targets, each prefix opened once.
/// Shared by the threads that open them (`&self` everywhere).
pub struct Targets {
    router: Router,
    /// `ssh -F` for first hops.
    pub first_hop_config: Option<String>,
    /// `ssh -o` options for first hops.
    pub first_hop_options: Vec<String>,
    /// Each prefix asked for: filled once, by the first thread to need it;
    /// the others wait for that one.
    open: Mutex<HashMap<String, Arc<OnceLock<Opened>>>>,
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
    /// at once; each handshake holds one of the forks slots.
    pub fn open(&self, target: &str) -> Result<Context> {
        let hops = hop::parse(target)?;
        let parts: Vec<&str> = target.split('/').collect();
        let mut parent: Option<Context> = None;
        for (level, hop) in hops.iter().enumerate() {
            let path = parts[..=level].join("/");
            let cell = {
                let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
                Arc::clone(open.entry(path.clone()).or_default())
            };
            let opened = cell.get_or_init(|| self.connect(parent.as_ref(), hop, level, &path));
            match opened {
                Ok(ctx) => parent = Some(ctx.clone()),
                Err((hop, cause)) => return Err(Error::Connect { target: hop.clone(), cause: cause.clone() }),
            }
        }
        parent.ok_or_else(|| Error::Usage(format!("target {target:?} has no hops")))
    }

    fn connect(&self, parent: Option<&Context>, hop: &Hop, level: usize, path: &str) -> Opened {
        let mut hop = hop.clone();
        if let (0, Hop::Ssh(ssh)) = (level, &mut hop) {
            // -F and -o on the command line are for the first hop.
            ssh.config = self.first_hop_config.clone();
            ssh.options = self.first_hop_options.clone();
        }
        let r = self.slots.acquire(&self.router).and_then(|_slot| match parent {
            None => self.router.connect(&hop, path),
            Some(ctx) => ctx.connect_hop(&hop, path),
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
