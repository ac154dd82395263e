//! A short busy wait before sleeping, for threads whose last wait was short
//! (a worker between sequential calls, a caller waiting for each reply, a
//! broker between messages).
//!
//! Why: waking a thread that sleeps on an idle CPU costs 10–15 µs on a
//! virtual machine (the vCPU halts and the host must schedule it again),
//! and a call crosses four such wake-ups (broker → worker → the master's
//! broker → the caller). A pipe round trip between two processes measured
//! 26–46 µs blocking and 2 µs spinning on the 2-vCPU machine spore is
//! benchmarked on. A thread spins only when its previous wait ended within
//! [`SPIN`] (so spinning would have caught it), for at most [`SPIN`], and
//! yields the CPU on every turn: an idle agent costs nothing, and threads
//! that wait long (a fan-out of hundreds of connects) don't spin at all.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How long a thread keeps looking before it sleeps: longer than a local
/// round trip through one intermediate (≈ 40 µs), so sequential calls
/// never sleep between each other.
pub const SPIN: Duration = Duration::from_micros(100);

thread_local! {
    /// This thread's last wait ended within `SPIN`.
    static LAST_WAIT_SHORT: Cell<bool> = const { Cell::new(false) };
}

/// Begin a wait: if this thread's last wait was short, call `ready` until
/// it returns true (true) or [`SPIN`] — at most `limit` — has passed
/// (false), yielding the CPU between tries. Call [`waited`] when the wait
/// is over, however it ended.
pub fn spin_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    if !LAST_WAIT_SHORT.get() {
        return false;
    }
    let limit = limit.min(SPIN);
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

/// The wait that began at `start` is over: remember whether spinning would
/// have caught its end.
pub fn waited(start: Instant) {
    LAST_WAIT_SHORT.set(start.elapsed() < SPIN);
}
