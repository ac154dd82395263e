//! Another user, for the bootstrap race and install-error tests
//! (`tests/tests/bootstrap_race.rs`, `tests/tests/install_errors.rs`):
//!
//! - `spore-race-helper renamer UID GID A B`: become UID:GID (no
//!   supplementary groups) and exchange the names A and B with
//!   `renameat2(RENAME_EXCHANGE)` as fast as it can, until its stdin closes
//!   (or its parent dies). Prints `ready` after the first exchange and
//!   `swaps N failed M` at the end.
//! - `spore-race-helper as UID GID PROGRAM ARGS...`: become UID:GID and
//!   exec PROGRAM.

use std::ffi::CString;
use std::io::Write;

fn die(what: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "spore-race-helper: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(111);
}

fn become_user(uid: &str, gid: &str) {
    let (Ok(uid), Ok(gid)) = (uid.parse::<libc::uid_t>(), gid.parse::<libc::gid_t>()) else {
        die("bad uid or gid");
    };
    // SAFETY: plain system calls on integers (a null list for no groups).
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            die("setgroups");
        }
        if libc::setgid(gid) != 0 {
            die("setgid");
        }
        if libc::setuid(uid) != 0 {
            die("setuid");
        }
    }
}

fn cstring(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| die("NUL in an argument"))
}

fn exchange(a: &CString, b: &CString) -> bool {
    // SAFETY: two NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    rc == 0
}

/// Has our stdin closed (or turned readable: the test wrote to it)?
fn told_to_stop() -> bool {
    let mut p = libc::pollfd { fd: 0, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n != 0
}

fn renamer(a: &str, b: &str) -> ! {
    let (a, b) = (cstring(a), cstring(b));
    if !exchange(&a, &b) {
        die("renameat2(RENAME_EXCHANGE)");
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    let (mut swaps, mut failed) = (1u64, 0u64);
    loop {
        for _ in 0..256 {
            if exchange(&a, &b) {
                swaps += 1;
            } else {
                failed += 1;
            }
        }
        if told_to_stop() {
            break;
        }
    }
    // Leave the names as they were if we can: an even number of exchanges.
    if swaps % 2 == 1 && exchange(&a, &b) {
        swaps += 1;
    }
    println!("swaps {swaps} failed {failed}");
    std::process::exit(0);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("renamer") if args.len() == 6 => {
            become_user(&args[2], &args[3]);
            // Set after the change of user, which clears it. (The test
            // stops us through stdin; this is for a test that dies.)
            // SAFETY: a flag and a signal number.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            renamer(&args[4], &args[5]);
        }
        Some("as") if args.len() >= 5 => {
            become_user(&args[2], &args[3]);
            let argv: Vec<CString> = args[4..].iter().map(|a| cstring(a)).collect();
            let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
            ptrs.push(std::ptr::null());
            // SAFETY: a NUL-terminated program name and argv array.
            unsafe { libc::execvp(ptrs[0], ptrs.as_ptr()) };
            die("exec");
        }
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "usage: spore-race-helper renamer UID GID A B | as UID GID PROGRAM ARGS..."
            );
            std::process::exit(2);
        }
    }
}
