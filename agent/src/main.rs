//! The `spore-agent` binary: started by spore on a target, never by hand.

fn main() {
    spore_agent::Agent::new().run()
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
