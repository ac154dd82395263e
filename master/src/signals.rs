//! Ctrl-C, SIGTERM and SIGHUP in the CLI: a bounded, orderly shutdown of the
//! tree instead of sudden death.
//!
//! The signals are blocked in every thread (the mask is set before any
//! thread starts and inherited by each), and one thread takes them with
//! `sigwait`, so no code runs in a signal handler. Child processes start
//! with a clean mask (std resets it before exec).

use spore::Router;
use std::sync::atomic::{AtomicI32, Ordering};

/// The signal that ended the run, 0 while none has. Set before the tree
/// is shut down, so `main`, whose calls fail because of that shutdown,
/// exits with the signal's status too, whichever thread exits first.
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

/// The signal that ended the run, if one did.
pub fn signalled() -> Option<i32> {
    Some(SIGNALLED.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
    }
    set
}

/// Block the signals in this thread and every thread started after it.
/// Call first thing in `main`.
pub fn block() {
    let set = signal_set();
    // SAFETY: a valid set; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Start the thread that turns a signal into `router.shutdown()` and an
/// exit with 128 + the signal number, as a shell reports it; `before_exit`
/// runs just before that exit (to erase the progress line).
pub fn shut_down_on_signal(router: Router, before_exit: impl FnOnce() + Send + 'static) {
    on_signal(move |sig| {
        log::warn!("signal {sig}: shutting the tree down");
        router.shutdown();
        // Downloads cut short leave no temporary files behind.
        spore::tree::remove_temps();
        before_exit();
        std::process::exit(128 + sig);
    });
}

/// Start the thread that, on a signal, records it (see [`signalled`]) and
/// calls `then` with it. A session's client passes a `then` that asks the
/// session to cancel its run; it exits when the session answers.
pub fn on_signal(then: impl FnOnce(i32) + Send + 'static) {
    let spawned = std::thread::Builder::new().name("spore-signals".into()).spawn(move || {
        let set = signal_set();
        let mut sig: libc::c_int = 0;
        // SAFETY: a valid set and a valid out-pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        SIGNALLED.store(sig, Ordering::SeqCst);
        then(sig);
    });
    if let Err(e) = spawned {
        log::warn!("can't watch for Ctrl-C: {e}");
    }
}
