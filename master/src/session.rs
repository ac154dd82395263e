//! The transport between a CLI client and the background session: a Unix
//! socket in the user's private runtime directory, carrying framed
//! messages with file descriptors attached.
//!
//! Trust comes from three checks, each enough alone against another user:
//! the directory (a real directory, ours, mode 0700: checked before every
//! bind and connect, never repaired), the socket file (ours, a socket, not
//! a symlink), and the peer's credentials (`SO_PEERCRED`) on both ends. A
//! lock file (`flock`) decides which of two racing sessions serves; the
//! loser gets `None` and exits. A socket left by a killed session refuses
//! connections (`ECONNREFUSED`), which a client reads as "no session", and
//! the next session removes it under the lock.
//!
//! A message is a big-endian `u32` length (at most [`MAX_FRAME`]) and that
//! many bytes, with up to [`MAX_FDS`] descriptors attached to its first
//! byte. Every wait has a deadline and every buffer a bound. An error from
//! [`Conn::recv`] or [`Conn::send`] leaves the stream out of step: drop the
//! connection.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The largest message body: bigger lengths are refused before anything
/// is allocated.
pub const MAX_FRAME: usize = 16 << 20;
/// The most descriptors one message may carry.
pub const MAX_FDS: usize = 8;
/// How long [`Conn::send`] waits for the peer to make room, by default.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`connect`] waits for a session whose backlog is full.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read per `recvmsg` into a growing body: a peer announcing a big
/// frame and sending nothing costs us nothing.
const CHUNK: usize = 64 << 10;

const SOCKET: &str = "session.sock";
const LOCK: &str = "session.lock";

/// Turn a `-1` return into the thread's `errno`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Turn a `-1` from a size-returning call into the thread's `errno`.
fn cvt_size(ret: isize) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

fn euid() -> u32 {
    // SAFETY: geteuid has no side effects and cannot fail.
    unsafe { libc::geteuid() }
}

fn untrusted(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, format!("session: {}: {what}", path.display()))
}

/// The user's private directory for the session: `$XDG_RUNTIME_DIR/spore`
/// when `XDG_RUNTIME_DIR` is set, absolute and a directory owned by us,
/// else `/tmp/spore-$EUID`; created and checked by [`check_dir`].
pub fn runtime_dir() -> io::Result<PathBuf> {
    let me = euid();
    let xdg = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute() && std::fs::metadata(d).is_ok_and(|m| m.is_dir() && m.uid() == me));
    let dir = match xdg {
        Some(d) => d.join("spore"),
        None => PathBuf::from(format!("/tmp/spore-{me}")),
    };
    check_dir(&dir)?;
    Ok(dir)
}

/// Create `dir` (mode 0700) if missing, then judge it with `lstat` as the
/// agent cache is judged: a real directory (never a symlink), owned by the
/// effective uid, mode exactly 0700. Anything else is an error naming the
/// path and what is wrong; nothing found there is ever changed.
pub fn check_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        // Ours, just made: only the umask may have taken bits away.
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io::Error::new(e.kind(), format!("session: {}: chmod 0700: {e}", dir.display())))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("session: {}: mkdir: {e}", dir.display()))),
    }
    let m = std::fs::symlink_metadata(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("session: {}: {e}", dir.display())))?;
    let me = euid();
    if m.file_type().is_symlink() {
        return Err(untrusted(dir, "is a symlink, not a directory"));
    }
    if !m.is_dir() {
        return Err(untrusted(dir, "is not a directory"));
    }
    if m.uid() != me {
        return Err(untrusted(dir, format_args!("is owned by uid {}, not by us (uid {me})", m.uid())));
    }
    if m.mode() & 0o7777 != 0o700 {
        return Err(untrusted(dir, format_args!("has mode {:04o}, not 0700", m.mode() & 0o7777)));
    }
    Ok(())
}

/// Where the session listens in `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

/// What is at the socket's path: nothing, or our own socket (dev, ino);
/// anything else is an error.
fn socket_file(path: &Path) -> io::Result<Option<(u64, u64)>> {
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("session: {}: {e}", path.display()))),
    };
    if m.file_type().is_symlink() {
        return Err(untrusted(path, "is a symlink, not a socket"));
    }
    if !m.file_type().is_socket() {
        return Err(untrusted(path, "is not a socket"));
    }
    if m.uid() != euid() {
        return Err(untrusted(path, format_args!("is owned by uid {}, not by us (uid {})", m.uid(), euid())));
    }
    Ok(Some((m.dev(), m.ino())))
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: false when another holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    loop {
        // SAFETY: flock on an open descriptor touches no memory.
        match cvt(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Wait until `fd` has any of `events` (or an error or hangup), or
/// `deadline` (None: forever). False when the deadline passed first.
fn wait_for(fd: BorrowedFd<'_>, events: libc::c_short, deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    0
                } else {
                    // Round up, so a wait never ends just before the deadline.
                    libc::c_int::try_from(left.as_millis() + 1).unwrap_or(libc::c_int::MAX)
                }
            }
        };
        let mut p = libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        match cvt(unsafe { libc::poll(&mut p, 1, timeout) }) {
            Ok(n) if n > 0 => return Ok(true),
            Ok(_) if timeout == 0 => return Ok(false),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
    }
}

/// `SO_PEERCRED`: the peer's (uid, pid) as of its connect or listen.
fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<(u32, i32)> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` holds the
    // size of `cred`, so the kernel writes within it.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok((cred.uid, cred.pid))
}

/// A non-blocking `connect` to `path` with a fresh close-on-exec socket.
/// `EAGAIN` (the listener's backlog is full) is returned as is.
fn connect_now(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "session: {}: too long for a socket path (at most {} bytes)",
                path.display(),
                addr.sun_path.len() - 1
            ),
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: socket creates a descriptor; no memory is touched.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid, NUL-terminated sockaddr_un of `len` bytes.
    cvt(unsafe { libc::connect(sock.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) })?;
    let stream = UnixStream::from(sock);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// The session's end: the lock that makes it the one session, and the
/// listening socket. Dropping it removes the socket (if it is still ours)
/// and then releases the lock.
pub struct Listener {
    // Field order is drop order: the socket closes before the lock goes.
    listener: UnixListener,
    _lock: File,
    path: PathBuf,
    id: (u64, u64),
}

impl Listener {
    /// Check `dir`, take an exclusive `flock` on `dir/session.lock`
    /// (non-blocking): `Ok(None)` when another session holds it. Then
    /// remove a stale socket (only a socket owned by us; a symlink or any
    /// other file there is an error), bind, chmod 0600 and listen.
    pub fn bind(dir: &Path) -> io::Result<Option<Listener>> {
        check_dir(dir)?;
        let lock_path = dir.join(LOCK);
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(|e| io::Error::new(e.kind(), format!("session: {}: {e}", lock_path.display())))?;
        let lm = lock.metadata()?;
        if !lm.is_file() || lm.uid() != euid() {
            return Err(untrusted(&lock_path, "is not a regular file of ours"));
        }
        if !try_lock(&lock)
            .map_err(|e| io::Error::new(e.kind(), format!("session: {}: flock: {e}", lock_path.display())))?
        {
            return Ok(None);
        }
        let path = socket_path(dir);
        if socket_file(&path)?.is_some() {
            // We hold the lock: whoever bound it is gone.
            log::debug!("session: removing the stale socket {}", path.display());
            std::fs::remove_file(&path)
                .map_err(|e| io::Error::new(e.kind(), format!("session: {}: remove: {e}", path.display())))?;
        }
        let listener = UnixListener::bind(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("session: {}: bind: {e}", path.display())))?;
        // The directory keeps others out already; this is the second wall.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let id = socket_file(&path)?.ok_or_else(|| untrusted(&path, "vanished right after bind"))?;
        Ok(Some(Listener { listener, _lock: lock, path, id }))
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wait for a client until `deadline`: `Ok(None)` then (the idle
    /// timer). A client of another uid (`SO_PEERCRED`) is closed at once
    /// and logged at warn with its uid and pid; it is never handed out.
    pub fn accept(&self, deadline: Instant) -> io::Result<Option<Conn>> {
        loop {
            if !wait_for(self.listener.as_fd(), libc::POLLIN, Some(deadline))? {
                return Ok(None);
            }
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                // Gone between poll and accept, or a signal: wait again.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    return Err(io::Error::new(e.kind(), format!("session: {}: accept: {e}", self.path.display())))
                }
            };
            match peer_cred(stream.as_fd()) {
                Ok((uid, _)) if uid == euid() => {
                    stream.set_nonblocking(false)?;
                    return Ok(Some(Conn::new(stream)));
                }
                Ok((uid, pid)) => {
                    log::warn!("session: {}: refused a client of uid {uid} (pid {pid}): not ours", self.path.display())
                }
                Err(e) => {
                    log::warn!("session: {}: refused a client whose credentials are unknown: {e}", self.path.display())
                }
            }
        }
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").field("path", &self.path).finish()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Only our own socket: a later session may have replaced it.
        if socket_file(&self.path).ok().flatten() == Some(self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What [`Conn::recv`] got.
#[derive(Debug)]
pub enum Recv {
    /// A whole message and the descriptors that came with it
    /// (close-on-exec).
    Message(Vec<u8>, Vec<OwnedFd>),
    /// The peer closed the connection between messages.
    Eof,
    /// The deadline passed first. What was read of a message is kept: the
    /// next `recv` goes on with it.
    TimedOut,
}

/// A connected socket, either side.
pub struct Conn {
    stream: UnixStream,
    send_timeout: Duration,
    // The message being received: its length prefix, its body once the
    // length is known, and descriptors that came with it.
    head: [u8; 4],
    head_len: usize,
    body: Option<(Vec<u8>, usize)>,
    fds: Vec<OwnedFd>,
}

impl Conn {
    fn new(stream: UnixStream) -> Conn {
        Conn { stream, send_timeout: SEND_TIMEOUT, head: [0; 4], head_len: 0, body: None, fds: Vec::new() }
    }

    /// How long [`Conn::send`] waits for the peer to take the bytes
    /// ([`SEND_TIMEOUT`] by default).
    pub fn set_send_timeout(&mut self, timeout: Duration) {
        self.send_timeout = timeout;
    }

    /// Send one message: `body` (at most [`MAX_FRAME`] bytes) with `fds`
    /// (at most [`MAX_FDS`]) attached; the descriptors stay ours too.
    pub fn send(&mut self, body: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if body.len() > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("session: a message of {} bytes (at most {MAX_FRAME})", body.len()),
            ));
        }
        if fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("session: a message with {} descriptors (at most {MAX_FDS})", fds.len()),
            ));
        }
        let head = (body.len() as u32).to_be_bytes();
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let total = head.len() + body.len();
        let deadline = Instant::now() + self.send_timeout;
        let mut sent = 0;
        while sent < total {
            if !wait_for(self.stream.as_fd(), libc::POLLOUT, Some(deadline))? {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("session: the peer took no data for {:?}", self.send_timeout),
                ));
            }
            let parts: [&[u8]; 2] = if sent < head.len() { [&head[sent..], body] } else { [&[], &body[sent - 4..]] };
            let with = if sent == 0 { &raw[..] } else { &[] };
            match send_with_fds(self.stream.as_fd(), parts, with) {
                Ok(n) => sent += n,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next message and its descriptors, waiting until `deadline`
    /// (None: no deadline). A length over [`MAX_FRAME`], more than
    /// [`MAX_FDS`] descriptors (all received ones are closed) or an end of
    /// stream inside a message is an error.
    pub fn recv(&mut self, deadline: Option<Instant>) -> io::Result<Recv> {
        loop {
            if self.head_len == 4 {
                let (body, want) = match self.body.take() {
                    Some(b) => b,
                    None => {
                        let len = u32::from_be_bytes(self.head) as usize;
                        if len > MAX_FRAME {
                            self.fds.clear();
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("session: a message of {len} bytes announced (at most {MAX_FRAME})"),
                            ));
                        }
                        (Vec::with_capacity(len.min(CHUNK)), len)
                    }
                };
                if body.len() == want {
                    self.head_len = 0;
                    return Ok(Recv::Message(body, std::mem::take(&mut self.fds)));
                }
                self.body = Some((body, want));
            }
            if !wait_for(self.stream.as_fd(), libc::POLLIN, deadline)? {
                return Ok(Recv::TimedOut);
            }
            let got = match &mut self.body {
                None => recv_with_fds(self.stream.as_fd(), &mut self.head[self.head_len..]),
                Some((body, want)) => {
                    let start = body.len();
                    body.resize(start + (*want - start).min(CHUNK), 0);
                    let got = recv_with_fds(self.stream.as_fd(), &mut body[start..]);
                    body.truncate(start + got.as_ref().map_or(0, |(n, _)| *n));
                    got
                }
            };
            let (n, fds) = match got {
                Ok(g) => g,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => continue,
                Err(e) => {
                    self.fds.clear();
                    return Err(e);
                }
            };
            self.fds.extend(fds);
            if self.fds.len() > MAX_FDS {
                let count = self.fds.len();
                self.fds.clear();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("session: a message with {count} descriptors (at most {MAX_FDS})"),
                ));
            }
            if n == 0 {
                if self.head_len == 0 && self.fds.is_empty() {
                    return Ok(Recv::Eof);
                }
                self.fds.clear();
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "session: the peer hung up inside a message"));
            }
            if self.body.is_none() {
                self.head_len += n;
            }
        }
    }

    /// The peer's (uid, pid), from `SO_PEERCRED`.
    pub fn peer(&self) -> io::Result<(u32, i32)> {
        peer_cred(self.stream.as_fd())
    }

    /// Another handle on the same socket, for a second thread: one reads
    /// (a cancel), the other writes (the result). Each handle keeps its
    /// own partly received message: only one of them should read.
    pub fn try_clone(&self) -> io::Result<Conn> {
        Ok(Conn::new(self.stream.try_clone()?))
    }

    /// Shut down both directions: the peer reads an end of stream, and a
    /// thread of ours blocked in `recv` on a clone wakes up.
    pub fn shutdown(&self) -> io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Both)
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("fd", &self.stream.as_raw_fd()).field("peer", &self.peer().ok()).finish()
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// The space a control message with `MAX_FDS + 1` descriptors takes: one
/// more than allowed, so a message with too many is seen as such, not
/// just cut (the kernel closes what does not fit and says `MSG_CTRUNC`).
fn cmsg_space() -> usize {
    let bytes = ((MAX_FDS + 1) * std::mem::size_of::<RawFd>()) as u32;
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    unsafe { libc::CMSG_SPACE(bytes) as usize }
}

/// `sendmsg` of `parts`, with `fds` in an `SCM_RIGHTS` message when there
/// are any. Never blocks, never raises SIGPIPE.
fn send_with_fds(sock: BorrowedFd<'_>, parts: [&[u8]; 2], fds: &[RawFd]) -> io::Result<usize> {
    let mut iov = parts.map(|p| libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() });
    // u64s: aligned as a cmsghdr needs.
    let mut control = vec![0u64; cmsg_space().div_ceil(8)];
    // SAFETY: msghdr is plain data; all zeroes is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len();
    if !fds.is_empty() {
        let bytes = std::mem::size_of_val(fds) as u32;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is arithmetic; fds.len() <= MAX_FDS, so this
        // fits within `control`, which is cmsg_space() bytes or more.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(bytes) } as usize;
        // SAFETY: msg_control points at a zeroed, aligned buffer of
        // msg_controllen bytes: the first header and its data lie within.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), bytes as usize);
        }
    }
    // SAFETY: `msg` points at `iov` (valid slices, only read) and at
    // `control`, all alive for the call.
    cvt_size(unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) })
}

/// `recvmsg` into `buf`, taking any descriptors that come (close-on-exec).
/// A cut control message is an error; what did arrive is closed.
fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = vec![0u64; cmsg_space().div_ceil(8)];
    // SAFETY: msghdr is plain data; all zeroes is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() * 8;
    // SAFETY: `msg` points at `buf` and `control`, valid for writes of the
    // lengths given and alive for the call.
    let n =
        cvt_size(unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) })?;
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of
    // well-formed control messages; CMSG_FIRSTHDR/NXTHDR stay within them.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: `c` is a header within the control buffer (see above).
        let (level, kind, len) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN is arithmetic.
            let data = len.saturating_sub(unsafe { libc::CMSG_LEN(0) } as usize);
            for i in 0..data / std::mem::size_of::<RawFd>() {
                // SAFETY: the data holds `data` bytes of descriptors, each
                // new in this process and owned by nobody else; the data
                // may be unaligned.
                let fd = unsafe { libc::CMSG_DATA(c).cast::<RawFd>().add(i).read_unaligned() };
                // SAFETY: as above: a fresh descriptor, ours alone.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: `c` is within the buffer `msg` describes.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("session: a message with more than {MAX_FDS} descriptors"),
        ));
    }
    Ok((n, fds))
}

/// Connect to the session in `dir`: `Ok(None)` when none listens (no
/// socket, or `ECONNREFUSED`: a socket left by a killed session). The
/// directory and the socket file are checked first, and the server's
/// `SO_PEERCRED` uid after: a socket served by another user is an error.
pub fn connect(dir: &Path) -> io::Result<Option<Conn>> {
    check_dir(dir)?;
    let path = socket_path(dir);
    if socket_file(&path)?.is_none() {
        return Ok(None);
    }
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let stream = loop {
        match connect_now(&path) {
            Ok(s) => break s,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ECONNREFUSED)) => return Ok(None),
            // The backlog is full: the session is busy or stuck.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("session: {}: accepted no connection within {CONNECT_TIMEOUT:?}", path.display()),
                ))
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("session: {}: connect: {e}", path.display()))),
        }
    };
    let (uid, pid) = peer_cred(stream.as_fd())?;
    if uid != euid() {
        return Err(untrusted(&path, format_args!("is served by uid {uid} (pid {pid}), not by us (uid {})", euid())));
    }
    Ok(Some(Conn::new(stream)))
}

/// [`connect`], else run `start` (the caller spawns the session process,
/// detached) once and retry until `within` has passed. Two clients racing
/// here both end up on the one session that won the lock.
pub fn connect_or_start(dir: &Path, start: &mut dyn FnMut() -> io::Result<()>, within: Duration) -> io::Result<Conn> {
    let deadline = Instant::now() + within;
    let mut started = false;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(conn) = connect(dir)? {
            return Ok(conn);
        }
        if !started {
            start()?;
            started = true;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("session: no session listened at {} within {within:?}", socket_path(dir).display()),
            ));
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
