//! The `spore-agent` binary: started by spore on a target, never by hand.
//!
//! Its `main` is the C one, for size: std's start-up (a handler that names
//! a stack overflow before the process dies of it, the main thread's name,
//! the arguments kept for `std::env::args`) stays out of the binary. What of
//! it the agent needs, [`spore_agent::sys::start`] does.

#![cfg_attr(not(test), no_main)]

/// The process's entry, called by the C runtime.
///
/// # Safety
///
/// `argv` must hold `argc` pointers to NUL-terminated strings, as the C
/// runtime passes them.
#[cfg(not(test))]
#[no_mangle]
pub unsafe extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: our caller's contract is c_args'.
    let args = unsafe { spore_agent::sys::c_args(argc, argv) };
    spore_agent::sys::start();
    spore_agent::Agent::new().run_with(args)
}

/// The static agent's own `pthread_setname_np`, in place of musl's (see
/// [`spore_agent::sys::set_own_thread_name`]): the standard library calls
/// it to name a new thread, from that thread.
///
/// # Safety
///
/// `name` must point to a NUL-terminated string.
#[cfg(target_env = "musl")]
#[no_mangle]
pub unsafe extern "C" fn pthread_setname_np(thread: libc::pthread_t, name: *const libc::c_char) -> libc::c_int {
    // SAFETY: our caller's contract is the wrapper's.
    unsafe { spore_agent::sys::set_own_thread_name(thread, name) }
}
