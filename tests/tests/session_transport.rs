//! Issue 14: the transport between a CLI client and the background session
//! (`spore::session`): the private directory and the socket file are
//! checked and never trusted or repaired when wrong, a stale socket left
//! by a killed session reads as "no session" and is replaced, a client of
//! another uid is refused and logged, descriptors cross intact, frames and
//! descriptor counts are bounded, the lock makes one session, waits end at
//! their deadlines, and racing clients meet on one session. Needs root (it
//! makes files of another user and runs a client as `nobody`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore::session::{self, Conn, Listener, Recv, MAX_FDS, MAX_FRAME};
use spore_tests::race::nobody;
use spore_tests::{exit_within, wait_for_record, LeakGuard, Scratch};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn need_root() {
    // SAFETY: getuid has no side effects.
    assert_eq!(unsafe { libc::getuid() }, 0, "these tests chown files and run a client as nobody: run them as root");
}

fn helper() -> PathBuf {
    let p = spore_tests::target_dir().join("debug/spore-session-helper");
    assert!(p.is_file(), "{} is missing: run `cargo build -p spore-tests`", p.display());
    p
}

/// A fresh session directory, 0700, ours.
fn session_dir(scratch: &Scratch) -> PathBuf {
    let dir = scratch.0.join("s");
    session::check_dir(&dir).unwrap();
    dir
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

/// A listener, a client and the server's end of that client.
fn pair(dir: &Path) -> (Listener, Conn, Conn) {
    let listener = Listener::bind(dir).unwrap().expect("the lock was free");
    let client = session::connect(dir).unwrap().expect("a session listens");
    let server = listener.accept(Instant::now() + Duration::from_secs(5)).unwrap().expect("the client is ours");
    (listener, client, server)
}

fn message(r: Recv) -> (Vec<u8>, Vec<OwnedFd>) {
    match r {
        Recv::Message(body, fds) => (body, fds),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Both `bind` and `connect` refuse `dir` with an error naming `path` and
/// containing `why`.
fn refused(dir: &Path, path: &Path, why: &str) {
    let e = Listener::bind(dir).err().unwrap_or_else(|| panic!("bind in {} was not refused", dir.display()));
    let text = e.to_string();
    assert!(text.contains(&path.display().to_string()) && text.contains(why), "bind: {text} (wanted {why:?})");
    let e = session::connect(dir).err().unwrap_or_else(|| panic!("connect in {} was not refused", dir.display()));
    let text = e.to_string();
    assert!(text.contains(&path.display().to_string()) && text.contains(why), "connect: {text} (wanted {why:?})");
}

#[test]
fn the_directory_is_checked_and_never_repaired() {
    need_root();
    let guard = LeakGuard::new();
    let scratch = Scratch::new("sess-dir");

    // Made when missing: 0700 whatever the umask.
    let made = scratch.0.join("made");
    // SAFETY: umask only sets the process's file creation mask.
    let old = unsafe { libc::umask(0o077) };
    session::check_dir(&made).unwrap();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    assert_eq!(mode_of(&made), 0o700);

    // A symlink to a good directory.
    let link = scratch.0.join("link");
    std::os::unix::fs::symlink(&made, &link).unwrap();
    refused(&link, &link, "is a symlink");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());

    // Mode 0755: left as it is.
    let open = scratch.0.join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o755);
    refused(&open, &open, "has mode 0755, not 0700");
    assert_eq!(mode_of(&open), 0o755, "the directory was changed");

    // Another user's, even at mode 0700.
    let theirs = scratch.0.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    chmod(&theirs, 0o700);
    chown(&theirs, nobody());
    refused(&theirs, &theirs, &format!("is owned by uid {}", nobody().0));
    assert_eq!(std::fs::symlink_metadata(&theirs).unwrap().uid(), nobody().0);

    // A regular file.
    let file = scratch.0.join("file");
    std::fs::write(&file, b"").unwrap();
    refused(&file, &file, "is not a directory");

    // The runtime directory under $XDG_RUNTIME_DIR.
    let xdg = scratch.0.join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    std::env::set_var("XDG_RUNTIME_DIR", &xdg);
    assert_eq!(session::runtime_dir().unwrap(), xdg.join("spore"));
    assert_eq!(mode_of(&xdg.join("spore")), 0o700);
    assert_eq!(session::socket_path(&xdg.join("spore")), xdg.join("spore/session.sock"));
    // A planted symlink there is refused, not followed.
    std::fs::remove_dir(xdg.join("spore")).unwrap();
    std::os::unix::fs::symlink(&made, xdg.join("spore")).unwrap();
    let e = session::runtime_dir().unwrap_err().to_string();
    assert!(e.contains("spore") && e.contains("is a symlink"), "{e}");
    std::env::remove_var("XDG_RUNTIME_DIR");

    drop(scratch);
    guard.check();
}

#[test]
fn the_socket_file_is_checked() {
    need_root();
    let guard = LeakGuard::new();
    let scratch = Scratch::new("sess-sock");

    // A regular file where the socket goes: neither removed nor used.
    let dir = scratch.0.join("file");
    session::check_dir(&dir).unwrap();
    let sock = session::socket_path(&dir);
    std::fs::write(&sock, b"x").unwrap();
    refused(&dir, &sock, "is not a socket");
    assert_eq!(std::fs::read(&sock).unwrap(), b"x");

    // A symlink to a live session elsewhere: never followed.
    let real = session_dir(&scratch);
    let live = Listener::bind(&real).unwrap().unwrap();
    let dir = scratch.0.join("link");
    session::check_dir(&dir).unwrap();
    let sock = session::socket_path(&dir);
    std::os::unix::fs::symlink(live.path(), &sock).unwrap();
    refused(&dir, &sock, "is a symlink");
    assert!(std::fs::symlink_metadata(&sock).unwrap().file_type().is_symlink());

    // Another user's socket: neither removed (as stale) nor trusted.
    let dir = scratch.0.join("theirs");
    let other = Listener::bind(&dir).unwrap().unwrap();
    let sock = session::socket_path(&dir);
    chown(&sock, nobody());
    assert!(session::connect(&dir).unwrap_err().to_string().contains("is owned by uid"));
    // Its lock is taken; another lock file shows bind refusing the socket.
    drop(other);
    let e = Listener::bind(&dir).expect_err("bind over another user's socket").to_string();
    assert!(e.contains(&sock.display().to_string()) && e.contains("is owned by uid"), "{e}");
    assert!(sock.exists(), "another user's socket was removed");

    drop(live);
    drop(scratch);
    guard.check();
}

/// A socket bound (not listening) at `path`, inheritable.
fn bound_socket(path: &Path) -> OwnedFd {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: plain data, zeroed; then filled within its bounds.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: socket creates a descriptor, which we own at once.
    let fd = unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0)) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: a valid sockaddr_un of `len` bytes.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    fd
}

#[test]
fn a_socket_served_by_another_user_is_not_trusted() {
    need_root();
    let guard = LeakGuard::new();
    let scratch = Scratch::new("sess-server");
    chmod(&scratch.0, 0o755);
    let dir = session_dir(&scratch);
    // Our socket file in our directory, but nobody listens on it: every
    // check on the file passes, only SO_PEERCRED tells.
    let sock = bound_socket(&session::socket_path(&dir));
    let serve = scratch.0.join("spore-session-helper");
    std::fs::copy(helper(), &serve).unwrap();
    chmod(&serve, 0o755);
    let (uid, gid) = nobody();
    let mut server = Command::new("setpriv")
        .args([&format!("--reuid={uid}"), &format!("--regid={gid}"), "--clear-groups"])
        .arg(&serve)
        .args(["listen-fd", &sock.as_raw_fd().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    drop(sock);
    let mut line = [0u8; 6];
    server.stdout.take().unwrap().read_exact(&mut line).unwrap();
    assert_eq!(&line, b"ready\n");

    let e = session::connect(&dir).expect_err("a session of another user was trusted").to_string();
    assert!(e.contains(&format!("is served by uid {uid} (pid {})", server.id())), "{e}");
    let e = session::connect_or_start(&dir, &mut || Ok(()), Duration::from_secs(1))
        .expect_err("a session of another user was trusted")
        .to_string();
    assert!(e.contains("is served by uid"), "{e}");

    drop(server.stdin.take());
    assert!(exit_within(&mut server, Duration::from_secs(5)).unwrap().success());
    drop(scratch);
    guard.check();
}

#[test]
fn a_stale_socket_reads_as_no_session_and_is_replaced() {
    need_root();
    let guard = LeakGuard::new();
    let scratch = Scratch::new("sess-stale");
    let dir = session_dir(&scratch);
    assert!(session::connect(&dir).unwrap().is_none(), "no socket yet");

    let mut child = Command::new(helper())
        .args(["listen", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = [0u8; 6];
    child.stdout.take().unwrap().read_exact(&mut line).unwrap();
    assert_eq!(&line, b"ready\n");
    assert!(session::connect(&dir).unwrap().is_some(), "the helper listens");
    assert!(Listener::bind(&dir).unwrap().is_none(), "the helper holds the lock");

    child.kill().unwrap();
    child.wait().unwrap();
    assert!(session::socket_path(&dir).exists(), "a killed session leaves its socket");
    let t = Instant::now();
    assert!(session::connect(&dir).unwrap().is_none(), "a stale socket is no session");
    assert!(t.elapsed() < Duration::from_secs(1), "connect to a stale socket took {:?}", t.elapsed());

    let (listener, mut client, mut server) = pair(&dir);
    client.send(b"hello", &[]).unwrap();
    assert_eq!(message(server.recv(Some(Instant::now() + Duration::from_secs(5))).unwrap()).0, b"hello");
    drop((client, server, listener));
    assert!(!session::socket_path(&dir).exists(), "a dropped listener removes its socket");

    drop(scratch);
    guard.check();
}

#[test]
fn a_client_of_another_uid_is_refused_and_logged() {
    need_root();
    let guard = LeakGuard::new();
    let scratch = Scratch::new("sess-uid");
    chmod(&scratch.0, 0o755);
    let dir = session_dir(&scratch);
    let listener = Listener::bind(&dir).unwrap().unwrap();
    // Walls down (as a careless admin might), so only SO_PEERCRED is left.
    chmod(&dir, 0o711);
    chmod(listener.path(), 0o666);
    // A copy nobody can run.
    let knock = scratch.0.join("spore-session-helper");
    std::fs::copy(helper(), &knock).unwrap();
    chmod(&knock, 0o755);
    let (uid, gid) = nobody();

    let intruder = Command::new("setpriv")
        .args([&format!("--reuid={uid}"), &format!("--regid={gid}"), "--clear-groups"])
        .arg(&knock)
        .args(["knock", listener.path().to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Never handed out: the accept waits out its deadline.
    let got = listener.accept(Instant::now() + Duration::from_secs(2)).unwrap();
    assert!(got.is_none(), "a client of uid {uid} was handed out as {:?}", got.map(|c| c.peer()));
    let out = spore_tests::wait_bounded(intruder, Duration::from_secs(10));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("eof") || said.starts_with("error"), "the intruder got: {said} {:?}", out.stderr);
    assert!(
        wait_for_record("spore::session", &format!("refused a client of uid {uid} (pid "), Duration::from_secs(1)),
        "no warning logged"
    );

    // The same helper as ourselves is let in.
    let friend = Command::new(&knock)
        .args(["knock", listener.path().to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut conn = listener.accept(Instant::now() + Duration::from_secs(5)).unwrap().expect("our own uid");
    assert_eq!(conn.peer().unwrap(), (0, friend.id() as i32));
    assert_eq!(message(conn.recv(Some(Instant::now() + Duration::from_secs(5))).unwrap()).0, b"x");
    conn.send(b"y", &[]).unwrap();
    let out = spore_tests::wait_bounded(friend, Duration::from_secs(10));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "data\n");

    drop((conn, listener));
    drop(scratch);
    guard.check();
}

#[test]
fn descriptors_cross_intact() {
    need_root();
    let guard = LeakGuard::new();
    let scratch = Scratch::new("sess-fds");
    let dir = session_dir(&scratch);
    let (listener, mut client, mut server) = pair(&dir);
    let soon = || Some(Instant::now() + Duration::from_secs(5));

    let (mut r, w) = std::io::pipe().unwrap();
    client.send(b"take this", &[w.as_fd()]).unwrap();
    drop(w);
    let (body, mut fds) = message(server.recv(soon()).unwrap());
    assert_eq!((body.as_slice(), fds.len()), (&b"take this"[..], 1));
    let fd = fds.pop().unwrap();
    // SAFETY: F_GETFD reads a descriptor's flags.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    assert!(flags & libc::FD_CLOEXEC != 0, "a received descriptor is not close-on-exec");
    let mut w = File::from(fd);
    w.write_all(b"written through\n").unwrap();
    drop(w);
    let mut got = String::new();
    r.read_to_string(&mut got).unwrap();
    assert_eq!(got, "written through\n");
    drop(r);

    // The other way, several descriptors, and no descriptors.
    let files: Vec<File> = (0..MAX_FDS).map(|_| File::open("/dev/null").unwrap()).collect();
    let borrowed: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
    server.send(b"", &borrowed).unwrap();
    server.send(b"plain", &[]).unwrap();
    let (body, fds) = message(client.recv(soon()).unwrap());
    assert_eq!((body.len(), fds.len()), (0, MAX_FDS));
    drop(fds);
    let (body, fds) = message(client.recv(soon()).unwrap());
    assert_eq!((body.as_slice(), fds.len()), (&b"plain"[..], 0));

    // A message far bigger than the socket's buffer, read by a clone in
    // another thread while this one writes.
    let big = spore_tests::pattern(MAX_FRAME, 14);
    let mut reader = server.try_clone().unwrap();
    let t = std::thread::spawn(move || message(reader.recv(Some(Instant::now() + Duration::from_secs(20))).unwrap()));
    client.send(&big, &[]).unwrap();
    let (body, fds) = t.join().unwrap();
    assert!(body == big && fds.is_empty(), "the big message came back different ({} bytes)", body.len());

    // Each end sees the other's end of stream.
    drop(client);
    assert!(matches!(server.recv(soon()).unwrap(), Recv::Eof));

    drop((server, listener, files));
    drop(scratch);
    guard.check();
}

/// `sendmsg` of `body` with `fds`, bypassing `Conn::send`'s bounds.
fn raw_send(sock: &Conn, body: &[u8], fds: &[RawFd]) {
    let mut iov = libc::iovec { iov_base: body.as_ptr() as *mut libc::c_void, iov_len: body.len() };
    let bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: arithmetic.
    let space = unsafe { libc::CMSG_SPACE(bytes) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: plain data, zeroed.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the control buffer holds one header with `bytes` of data;
    // `msg` points at live buffers for the sendmsg.
    let n = unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(bytes) as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), bytes as usize);
        libc::sendmsg(sock.as_fd().as_raw_fd(), &msg, 0)
    };
    assert_eq!(n, body.len() as isize, "sendmsg: {}", std::io::Error::last_os_error());
}

/// The read end sees end of file within a second: every write end closed.
fn all_closed(r: &mut std::io::PipeReader) {
    let mut p = libc::pollfd { fd: r.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, 1000) };
    assert_eq!(n, 1, "a passed write end is still open somewhere");
    let mut buf = [0u8; 8];
    assert_eq!(r.read(&mut buf).unwrap(), 0);
}

#[test]
fn too_many_descriptors_are_refused_and_closed() {
    need_root();
    let guard = LeakGuard::new();
    let scratch = Scratch::new("sess-manyfds");
    let dir = session_dir(&scratch);
    let soon = || Some(Instant::now() + Duration::from_secs(5));

    // Our own send refuses before anything leaves.
    let (listener, mut client, _server) = pair(&dir);
    let files: Vec<File> = (0..=MAX_FDS).map(|_| File::open("/dev/null").unwrap()).collect();
    let borrowed: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
    let e = client.send(b"x", &borrowed).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    drop((listener, client, _server, files));

    // A peer that sends one too many (fits our control buffer) or far too
    // many (cut by the kernel): an error, and every copy closed.
    for count in [MAX_FDS + 1, MAX_FDS + 20] {
        let (listener, client, mut server) = pair(&dir);
        let (mut r, w) = std::io::pipe().unwrap();
        raw_send(&client, &[0, 0, 0, 1, b'x'], &vec![w.as_raw_fd(); count]);
        drop(w);
        let e = server.recv(soon()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{count}: {e}");
        assert!(e.to_string().contains("descriptors"), "{e}");
        all_closed(&mut r);
        drop((listener, client, server));
    }

    // Descriptors sent apart from a message's first byte count too.
    let (listener, client, mut server) = pair(&dir);
    let (mut r, w) = std::io::pipe().unwrap();
    raw_send(&client, &[0, 0, 0, 2], &[w.as_raw_fd(); MAX_FDS]);
    raw_send(&client, b"a", &[w.as_raw_fd()]);
    drop(w);
    let e = server.recv(soon()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    all_closed(&mut r);
    drop((r, listener, client, server));

    drop(scratch);
    guard.check();
}

#[test]
fn an_oversized_frame_is_refused_without_allocating_it() {
    need_root();
    let guard = LeakGuard::new();
    let scratch = Scratch::new("sess-big");
    let dir = session_dir(&scratch);
    let (listener, mut client, mut server) = pair(&dir);

    // Our own send refuses.
    let e = client.send(&vec![0; MAX_FRAME + 1], &[]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");

    // A peer announcing 4 GiB and sending nothing more: refused at once.
    let mut raw = File::from(client.as_fd().try_clone_to_owned().unwrap());
    raw.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let t = Instant::now();
    let e = server.recv(Some(Instant::now() + Duration::from_secs(5))).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(1), "waited {:?} for a body it should refuse", t.elapsed());
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains(&u32::MAX.to_string()), "{e}");
    drop((server, raw, client));

    // The largest allowed length, announced with nothing behind it, costs
    // no memory: bodies grow as bytes arrive.
    let mut client = session::connect(&dir).unwrap().unwrap();
    let mut server = listener.accept(Instant::now() + Duration::from_secs(5)).unwrap().unwrap();
    let mut raw = File::from(client.as_fd().try_clone_to_owned().unwrap());
    raw.write_all(&(MAX_FRAME as u32).to_be_bytes()).unwrap();
    raw.write_all(&[7; 1000]).unwrap();
    let before = spore_tests::rss_kib(std::process::id());
    let got = server.recv(Some(Instant::now() + Duration::from_millis(300))).unwrap();
    assert!(matches!(got, Recv::TimedOut), "{got:?}");
    let grew = spore_tests::rss_kib(std::process::id()).saturating_sub(before);
    assert!(grew < 4096, "a 16 MiB announcement cost {grew} KiB");
    drop((raw, server));
    let _ = client.recv(Some(Instant::now()));

    drop((client, listener));
    drop(scratch);
    guard.check();
}

#[test]
fn one_session_holds_the_lock() {
    need_root();
    let guard = LeakGuard::new();
    let scratch = Scratch::new("sess-lock");
    let dir = session_dir(&scratch);

    let first = Listener::bind(&dir).unwrap().expect("the lock was free");
    assert!(Listener::bind(&dir).unwrap().is_none(), "a second bind in the same process");
    let mut child = Command::new(helper())
        .args(["listen", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut said = String::new();
    child.stdout.take().unwrap().read_to_string(&mut said).unwrap();
    assert_eq!(said, "lost\n", "a second bind in another process");
    assert!(exit_within(&mut child, Duration::from_secs(5)).unwrap().success());
    // The loser left the winner's socket alone.
    assert!(session::connect(&dir).unwrap().is_some());

    drop(first);
    let second = Listener::bind(&dir).unwrap().expect("the lock is free again");
    assert!(session::connect(&dir).unwrap().is_some());
    drop(second);

    drop(scratch);
    guard.check();
}

#[test]
fn waits_end_at_their_deadlines() {
    need_root();
    let guard = LeakGuard::new();
    let scratch = Scratch::new("sess-deadline");
    let dir = session_dir(&scratch);
    let (listener, client, mut server) = pair(&dir);

    // recv: nothing comes.
    let t = Instant::now();
    assert!(matches!(server.recv(Some(t + Duration::from_millis(200))).unwrap(), Recv::TimedOut));
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(200) && took < Duration::from_millis(1500), "recv took {took:?}");

    // Half a message: timed out, then finished where it stopped.
    let mut raw = File::from(client.as_fd().try_clone_to_owned().unwrap());
    raw.write_all(&[0, 0, 0, 6, b'h', b'a']).unwrap();
    assert!(matches!(server.recv(Some(Instant::now() + Duration::from_millis(100))).unwrap(), Recv::TimedOut));
    raw.write_all(b"lves").unwrap();
    assert_eq!(message(server.recv(Some(Instant::now() + Duration::from_secs(5))).unwrap()).0, b"halves");

    // A hang-up inside a message is an error, not an end of stream.
    raw.write_all(&[0, 0, 0, 9, b'x']).unwrap();
    drop((raw, client));
    let e = server.recv(Some(Instant::now() + Duration::from_secs(5))).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    drop(server);

    // accept: nobody comes.
    let t = Instant::now();
    assert!(listener.accept(t + Duration::from_millis(200)).unwrap().is_none());
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(200) && took < Duration::from_millis(1500), "accept took {took:?}");

    // send: the peer never reads.
    let mut client = session::connect(&dir).unwrap().unwrap();
    let server = listener.accept(Instant::now() + Duration::from_secs(5)).unwrap().unwrap();
    client.set_send_timeout(Duration::from_millis(300));
    let t = Instant::now();
    let e = client.send(&vec![1; 8 << 20], &[]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert!(t.elapsed() < Duration::from_secs(3), "send took {:?}", t.elapsed());

    // connect_or_start: a start that starts nothing.
    drop((client, server, listener));
    let mut starts = 0;
    let t = Instant::now();
    let e = session::connect_or_start(
        &dir,
        &mut || {
            starts += 1;
            Ok(())
        },
        Duration::from_millis(300),
    )
    .expect_err("no session came up");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "connect_or_start took {:?}", t.elapsed());
    assert_eq!(starts, 1);

    drop(scratch);
    guard.check();
}

#[test]
fn racing_clients_meet_on_one_session() {
    need_root();
    let guard = LeakGuard::new();
    let scratch = Scratch::new("sess-race");
    let dir = session_dir(&scratch);
    let children: Arc<Mutex<Vec<Child>>> = Arc::default();

    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (dir, children) = (dir.clone(), children.clone());
            std::thread::spawn(move || {
                let mut start = || {
                    let child = Command::new(helper())
                        .args(["serve", dir.to_str().unwrap(), "500"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::inherit())
                        .spawn()?;
                    children.lock().unwrap().push(child);
                    Ok(())
                };
                let mut conn = session::connect_or_start(&dir, &mut start, Duration::from_secs(10)).unwrap();
                let (body, _) = message(conn.recv(Some(Instant::now() + Duration::from_secs(5))).unwrap());
                String::from_utf8(body).unwrap()
            })
        })
        .collect();
    let pids: Vec<String> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(pids[0], pids[1], "two clients, two sessions");

    let mut children = std::mem::take(&mut *children.lock().unwrap());
    assert!(!children.is_empty() && children.len() <= 2, "{} starts", children.len());
    assert!(children.iter().any(|c| c.id().to_string() == pids[0]), "the session is not one the clients started");
    for c in &mut children {
        let status = exit_within(c, Duration::from_secs(10)).expect("a session outlived its idle time");
        assert!(status.success(), "{status}");
    }
    assert!(!session::socket_path(&dir).exists(), "the session left its socket");

    drop(scratch);
    guard.check();
}

#[test]
fn a_round_trip_costs_microseconds() {
    need_root();
    let guard = LeakGuard::new();
    let scratch = Scratch::new("sess-rtt");
    let dir = session_dir(&scratch);
    let listener = Listener::bind(&dir).unwrap().unwrap();
    let echo = std::thread::spawn(move || {
        let mut served = 0;
        while let Some(mut conn) = listener.accept(Instant::now() + Duration::from_secs(2)).unwrap() {
            served += 1;
            while let Recv::Message(body, _) = conn.recv(Some(Instant::now() + Duration::from_secs(5))).unwrap() {
                conn.send(&body, &[]).unwrap();
            }
        }
        served
    });
    let soon = || Some(Instant::now() + Duration::from_secs(5));

    const N: u32 = 200;
    let t = Instant::now();
    for _ in 0..N {
        let mut c = session::connect(&dir).unwrap().unwrap();
        c.send(b"ping", &[]).unwrap();
        assert_eq!(message(c.recv(soon()).unwrap()).0, b"ping");
    }
    let connect_rtt = t.elapsed() / N;
    let mut c = session::connect(&dir).unwrap().unwrap();
    let t = Instant::now();
    for _ in 0..N * 10 {
        c.send(b"ping", &[]).unwrap();
        assert_eq!(message(c.recv(soon()).unwrap()).0, b"ping");
    }
    let rtt = t.elapsed() / (N * 10);
    drop(c);
    eprintln!("connect + round trip: {connect_rtt:?}; round trip: {rtt:?}");
    assert!(connect_rtt < Duration::from_millis(5) && rtt < Duration::from_millis(2), "{connect_rtt:?} {rtt:?}");
    assert_eq!(echo.join().unwrap(), N + 1);

    drop(scratch);
    guard.check();
}
