//! A short busy wait before sleeping, for threads whose waits are short
//! (a worker between sequential calls, a caller waiting for each reply, a
//! broker between messages).
//!
//! Why: waking a thread that sleeps on an idle CPU costs 10–15 µs on a
//! virtual machine (the vCPU halts and the host must schedule it again),
//! and a call crosses four such wake-ups (broker → worker → the master's
//! broker → the caller), more through ssh. A pipe round trip between two
//! processes measured 26–46 µs blocking and 2 µs spinning on the 2-vCPU
//! machine spore is benchmarked on.
//!
//! A thread spins only when its previous wait ended within [`SPIN_MAX`],
//! for twice as long as that wait took (so a spin that comes close catches
//! the next one), yielding the CPU on every turn: an idle agent costs
//! nothing, a busy one gives way to threads with work, and threads that
//! wait long (a fan-out of hundreds of connects) don't spin at all.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The longest a thread spins: a little over a call's round trip through
/// the loopback ssh here (≈ 150–300 µs).
pub const SPIN_MAX: Duration = Duration::from_micros(500);

/// The shortest spin worth starting.
const SPIN_MIN: Duration = Duration::from_micros(50);

thread_local! {
    /// How long this thread's last wait took (`None`: too long to spin for).
    static LAST_WAIT: Cell<Option<Duration>> = const { Cell::new(None) };
}

/// Begin a wait: if this thread's last wait was short, call `ready` until
/// it returns true (true) or the spin — at most `limit` — is over (false),
/// yielding the CPU between tries. Call [`waited`] when the wait is over,
/// however it ended.
pub fn spin_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let Some(last) = LAST_WAIT.get() else { return false };
    let limit = limit.min(last.saturating_mul(2).clamp(SPIN_MIN, SPIN_MAX));
    let start = Instant::now();
    loop {
        if ready() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::yield_now();
    }
}

/// The wait that began at `start` is over: remember how long it took.
pub fn waited(start: Instant) {
    let took = start.elapsed();
    LAST_WAIT.set((took < SPIN_MAX).then_some(took));
}
