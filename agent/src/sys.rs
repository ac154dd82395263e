//! Every libc call spore makes, each behind a small safe wrapper.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Turn a `-1` return into the thread's `errno`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The count a `poll`-like wait returned; EINTR counts as a wake with
/// nothing ready, so callers re-check their deadline.
fn ready_count(ret: libc::c_int) -> io::Result<usize> {
    match cvt(ret) {
        Ok(n) => Ok(n as usize),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

/// The arguments of a C `main`, after the program's name.
///
/// # Safety
///
/// `argv` must hold `argc` pointers to NUL-terminated strings, as the C
/// runtime passes them to `main`.
pub unsafe fn c_args(argc: libc::c_int, argv: *const *const libc::c_char) -> Vec<std::ffi::OsString> {
    use std::os::unix::ffi::OsStrExt;
    (1..usize::try_from(argc).unwrap_or(0))
        .map(|i| {
            // SAFETY: i < argc: argv[i] is a NUL-terminated string (our
            // caller's contract).
            let arg = unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) };
            std::ffi::OsStr::from_bytes(arg.to_bytes()).to_os_string()
        })
        .collect()
}

/// What std's start-up does that the agent needs, for a `main` of its own:
/// SIGPIPE ignored (a write to a closed pipe is an `EPIPE` error), and fds
/// 0 to 2 open, on `/dev/null` if they were not, so that no file the agent
/// opens becomes its standard input or output.
pub fn start() {
    ignore_signal(libc::SIGPIPE);
    for fd in 0..3 {
        // SAFETY: F_GETFD reads a descriptor's flags; no memory is touched.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1
            && io::Error::last_os_error().raw_os_error() == Some(libc::EBADF)
        {
            // SAFETY: a NUL-terminated constant path. The descriptor (the
            // lowest free one: `fd`) stays open for the process's life.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(File, File)> {
    let (r, w) = io::pipe()?;
    Ok((File::from(OwnedFd::from(r)), File::from(OwnedFd::from(w))))
}

/// Switch `O_NONBLOCK` on or off.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a borrowed, open fd touch only its flags.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    let flags = if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) })?;
    Ok(())
}

/// Duplicate `fd` (which the caller still owns) to the lowest free fd at or
/// above `min`, close-on-exec.
pub fn dup_at_least(fd: RawFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new fd; a bad `fd` yields EBADF.
    let new = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })?;
    // SAFETY: `new` was just created by fcntl and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Make `target` (0, 1 or 2) refer to what `fd` refers to. The new fd is
/// inheritable, as standard streams must be.
pub fn dup_onto(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: dup2 atomically replaces `target`; both are plain fds and
        // `target` is one of the standard streams this process owns.
        match cvt(unsafe { libc::dup2(fd.as_raw_fd(), target) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(drop),
        }
    }
}

/// Mark every fd from 3 up close-on-exec: fds this process inherited by
/// accident must not reach the commands it runs.
pub fn cloexec_inherited() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<RawFd> = dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    for fd in fds.into_iter().filter(|&fd| fd > 2) {
        // SAFETY: F_GETFD/F_SETFD only touch the fd's flags; a stale fd
        // (the read_dir's own, now closed) yields EBADF, which we ignore.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// A new pseudo-terminal, close-on-exec, its slave side in raw mode (so
/// the agent image and the protocol pass through it byte for byte):
/// (master, slave).
///
/// What `openpty` does, without it: musl's formats the slave's name with
/// `snprintf`, which links printf's whole engine (~9 KB) into the agent.
pub fn raw_pty() -> io::Result<(File, File)> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: the path is NUL-terminated; open returns a new fd.
    let master = cvt(unsafe { libc::open(c"/dev/ptmx".as_ptr(), flags) })?;
    // SAFETY: `master` was just created and is owned by nobody else.
    let master = unsafe { File::from_raw_fd(master) };
    let (mut unlock, mut n): (libc::c_int, libc::c_uint) = (0, 0);
    // SAFETY: TIOCSPTLCK reads an int, TIOCGPTN writes an unsigned int,
    // both valid for the calls; `master` is a pty master we own.
    unsafe {
        cvt(libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK as _, &mut unlock))?;
        cvt(libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN as _, &mut n))?;
    }
    let mut path = b"/dev/pts/".to_vec();
    let digits = n.to_string();
    path.extend_from_slice(digits.as_bytes());
    path.push(0);
    let path = std::ffi::CStr::from_bytes_with_nul(&path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `path` is NUL-terminated; open returns a new fd.
    let slave = cvt(unsafe { libc::open(path.as_ptr(), flags) })?;
    // SAFETY: `slave` was just created and is owned by nobody else.
    let slave = unsafe { File::from_raw_fd(slave) };
    // SAFETY: termios is plain data; tcgetattr fills it, cfmakeraw edits
    // it, tcsetattr applies it to the slave we own.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        cvt(libc::tcgetattr(slave.as_raw_fd(), &mut t))?;
        libc::cfmakeraw(&mut t);
        cvt(libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t))?;
    }
    Ok((master, slave))
}

/// Between fork and exec: start a session with fd 0 (a pty slave) as its
/// controlling terminal, so `su` and `doas` can ask for a password on it.
pub fn take_terminal() -> io::Result<()> {
    // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe and touch
    // only this (child) process.
    unsafe {
        cvt(libc::setsid())?;
        cvt(libc::ioctl(0, libc::TIOCSCTTY as _, 0))?;
    }
    Ok(())
}

/// Between fork and exec: start a session (and process group) of its own,
/// without a controlling terminal.
pub fn new_session() -> io::Result<()> {
    // SAFETY: setsid is async-signal-safe and touches only this (child)
    // process.
    cvt(unsafe { libc::setsid() })?;
    Ok(())
}

/// Write `text` to fd 2 (whatever it is now), ignoring errors: the last
/// word of an agent that can't start, without `std`'s stderr machinery.
pub fn write_stderr(text: &str) {
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        // SAFETY: write reads at most `rest.len()` bytes from a valid slice.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        match usize::try_from(n) {
            Ok(n) if n > 0 => rest = rest.get(n..).unwrap_or_default(),
            _ if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => return,
        }
    }
}

/// `pthread_setname_np` for the calling thread (the only one the standard
/// library names): `prctl(PR_SET_NAME)`, as musl does for it, without
/// musl's path for other threads, whose `snprintf` links printf's whole
/// engine (~9 KB) into the agent. ERANGE for a name over 15 bytes or
/// another thread.
///
/// # Safety
///
/// `name` must point to a NUL-terminated string.
pub unsafe fn set_own_thread_name(thread: libc::pthread_t, name: *const libc::c_char) -> libc::c_int {
    // SAFETY: the caller passes a NUL-terminated string.
    let len = unsafe { std::ffi::CStr::from_ptr(name) }.to_bytes().len();
    // SAFETY: pthread_self cannot fail.
    if len > 15 || thread != unsafe { libc::pthread_self() } {
        return libc::ERANGE;
    }
    // SAFETY: PR_SET_NAME copies at most 16 bytes from a NUL-terminated
    // string of at most 16.
    match cvt(unsafe {
        libc::prctl(libc::PR_SET_NAME, name, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong)
    }) {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(libc::EINVAL),
    }
}

/// Ignore `sig`.
pub fn ignore_signal(sig: i32) {
    // SAFETY: installing SIG_IGN has no memory effects.
    unsafe {
        libc::signal(sig, libc::SIG_IGN);
    }
}

/// Send `sig` to a process.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill has no memory effects; a bad pid yields ESRCH.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Send `sig` to every process of group `pgid`.
pub fn killpg(pgid: i32, sig: i32) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: as kill; pgid > 1 so this can never mean "every process".
    cvt(unsafe { libc::killpg(pgid, sig) }).map(drop)
}

/// Does process group `pgid` still have members?
pub fn group_alive(pgid: i32) -> bool {
    killpg(pgid, 0).is_ok()
}

/// This process's id.
pub fn getpid() -> u32 {
    std::process::id()
}

/// Real uid and gid.
pub fn ids() -> (u32, u32) {
    // SAFETY: getuid and getgid cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// `uname`: (sysname, nodename, release, machine).
pub fn uname() -> (String, String, String, String) {
    // SAFETY: utsname is plain old data; all-zero is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return Default::default();
    }
    fn field(chars: &[libc::c_char]) -> String {
        let bytes: Vec<u8> = chars.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
    (field(&u.sysname), field(&u.nodename), field(&u.release), field(&u.machine))
}

/// Ask the kernel to send `sig` to this process when its parent thread dies.
pub fn set_parent_death_signal(sig: i32) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and nothing else.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// A `pollfd` asking for `events` on `fd` (-1: ignored by `poll`).
pub fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

/// `poll(2)` over `fds` for at most `timeout_ms` (−1: forever). Retries EINTR
/// as a zero-event wake so callers re-check their deadline.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: the pointer and length describe a valid, writable slice.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    ready_count(n)
}

/// End this process now: no destructors, no atexit handlers, no flushing of
/// buffers another thread may hold locked.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// Terminate this process the way DESIGN.md asks: SIGTERM to itself (so a
/// dispatcher stuck in a call can't keep it alive), then `_exit` in case the
/// signal is blocked or ignored.
pub fn terminate_self() -> ! {
    let _ = kill(getpid() as i32, libc::SIGTERM);
    exit_now(0)
}

/// Start from a clean slate whatever the parent left: no blocked signals,
/// and the default action for the signals that end processes. (A master
/// that blocks SIGINT/SIGTERM for its own signal thread must not pass that
/// on to the agent, or through it to the commands it runs.)
pub fn reset_signals() {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; setting an
    // empty mask and default dispositions has no memory effects.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM] {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

/// A new epoll instance, close-on-exec.
pub fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: epoll_create1 takes only flags and returns a new fd.
    let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add, change or remove `fd` in the epoll set `epfd` (level-triggered),
/// tagged with `data`.
pub fn epoll_ctl(epfd: RawFd, op: libc::c_int, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call (the
    // kernel copies it; DEL ignores it); bad fds yield EBADF.
    cvt(unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) }).map(drop)
}

/// Wait on the epoll set `epfd` for at most `timeout_ms` (−1: forever),
/// filling `ready`; the number of entries filled. EINTR counts as a wake
/// with nothing ready.
pub fn epoll_wait(epfd: RawFd, ready: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
    let max = ready.len().min(i32::MAX as usize) as libc::c_int;
    // SAFETY: the pointer and length describe a valid, writable slice.
    let n = unsafe { libc::epoll_wait(epfd, ready.as_mut_ptr(), max, timeout_ms) };
    ready_count(n)
}

/// A non-blocking, close-on-exec eventfd (a counter other threads write to
/// wake a poller).
pub fn eventfd() -> io::Result<File> {
    // SAFETY: eventfd takes an initial count and flags and returns a new fd.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

// ---- the command guardian (guardian.rs) and its spawn (ops/exec.rs) ----

/// Become a child subreaper: descendants orphaned by their parent are
/// re-parented to this process, not to init.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes a flag and nothing else.
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// The parent process's id.
pub fn getppid() -> i32 {
    // SAFETY: getppid cannot fail and is async-signal-safe.
    unsafe { libc::getppid() }
}

/// Block `sigs` in this (single-threaded) process and return a
/// non-blocking, close-on-exec signalfd that reads them instead.
pub fn signal_fd(sigs: &[i32]) -> io::Result<File> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; the mask
    // change touches only this thread's signal state; signalfd returns a
    // new fd.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in sigs {
            libc::sigaddset(&mut set, sig);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let fd = cvt(libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC))?;
        Ok(File::from_raw_fd(fd))
    }
}

/// What `waitpid(-1, WNOHANG)` found.
pub enum Reaped {
    /// A child ended: its pid and raw wait status.
    Child(i32, i32),
    /// Children remain, none has ended.
    Running,
    /// No child is left.
    Nothing,
}

/// Reap one ended child, if any, without blocking.
pub fn reap_any() -> Reaped {
    let mut status = 0;
    // SAFETY: waitpid writes the status into a valid c_int.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    match pid {
        0 => Reaped::Running,
        p if p > 0 => Reaped::Child(p, status),
        _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => Reaped::Running,
        _ => Reaped::Nothing,
    }
}

/// Reap child `pid` if it has ended, without blocking (its status unread).
pub fn reap(pid: i32) {
    // SAFETY: waitpid takes a null status pointer, and writes nothing then.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
}

/// Take ownership of an fd our parent opened for us and named on our
/// command line (above 2); close-on-exec from now on.
pub fn adopt_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: F_SETFD on an fd number only touches its flags; a closed one
    // yields EBADF.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) })?;
    // SAFETY: the fd is open (F_SETFD succeeded) and was opened by our
    // parent for this process alone; nothing else here owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Between fork and exec: let `fd` (close-on-exec in the parent) survive
/// the exec.
pub fn keep_across_exec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_SETFD is async-signal-safe and only touches the fd's flags.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }).map(drop)
}

/// A new anonymous file in memory (`memfd_create`, Linux 3.17), close-on-exec,
/// that can be sealed: ENOSYS on older kernels.
pub fn memfd(name: &std::ffi::CStr) -> io::Result<File> {
    // SAFETY: `name` is NUL-terminated; memfd_create returns a new fd.
    let fd = cvt(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Seal a [`memfd`] for good: no write, no resize, no more seals.
pub fn seal(file: &File) -> io::Result<()> {
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS only changes what may be done to the file.
    cvt(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) }).map(drop)
}

/// Read the start of a small file (a `/proc` entry) into `buf`: the bytes
/// read, 0 on any error.
pub fn read_start(path: &std::ffi::CStr, buf: &mut [u8]) -> usize {
    // SAFETY: `path` is NUL-terminated; the fd is ours alone and closed
    // before returning; read writes at most `buf.len()` bytes into `buf`.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return 0;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n.max(0) as usize
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_raw_pty_passes_bytes_through_unchanged() {
        let (mut master, mut slave) = raw_pty().unwrap();
        slave.write_all(b"a\nb\r\x03").unwrap();
        let mut got = [0u8; 5];
        master.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"a\nb\r\x03");
    }

    #[test]
    fn a_thread_names_itself() {
        let named = std::thread::spawn(|| {
            // SAFETY: the name is NUL-terminated.
            let rc = unsafe { set_own_thread_name(libc::pthread_self(), c"spore-test".as_ptr()) };
            let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
            // SAFETY: as above.
            let long = unsafe { set_own_thread_name(libc::pthread_self(), c"sixteen-bytes-xx".as_ptr()) };
            (rc, comm, long)
        });
        assert_eq!(named.join().unwrap(), (0, "spore-test\n".to_string(), libc::ERANGE));
    }
}
