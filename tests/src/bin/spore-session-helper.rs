//! The other processes of the session transport tests
//! (`tests/tests/session_transport.rs`):
//!
//! - `spore-session-helper listen DIR`: bind a session listener in DIR,
//!   print `ready`, and accept (and drop) clients for 60 s; a test kills it.
//! - `spore-session-helper serve DIR IDLE_MS`: bind (print `lost` and exit
//!   when another holds the lock), answer each client with our pid, and
//!   exit after IDLE_MS without a client.
//! - `spore-session-helper listen-fd FD`: `listen` on the bound socket FD
//!   (inherited), print `ready`, and hold it until stdin closes: run as
//!   another user, it serves a socket file that is ours.
//! - `spore-session-helper knock PATH`: connect to PATH directly (as an
//!   intruder would, without the directory checks) and print what came
//!   back: `eof`, `data`, `error ...` or `connect-error ...`.

use spore::session::{Listener, Recv};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

fn say(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn bind(dir: &str) -> Option<Listener> {
    match Listener::bind(Path::new(dir)) {
        Ok(Some(l)) => Some(l),
        Ok(None) => {
            say("lost");
            None
        }
        Err(e) => {
            say(&format!("bind-error {e}"));
            std::process::exit(1);
        }
    }
}

fn listen(dir: &str) {
    let Some(l) = bind(dir) else { return };
    say("ready");
    let end = Instant::now() + Duration::from_secs(60);
    while let Ok(Some(_)) = l.accept(end) {}
}

fn serve(dir: &str, idle_ms: &str) {
    let idle = Duration::from_millis(idle_ms.parse().unwrap_or(500));
    let Some(l) = bind(dir) else { return };
    let pid = std::process::id().to_string();
    while let Ok(Some(mut c)) = l.accept(Instant::now() + idle) {
        let _ = c.send(pid.as_bytes(), &[]);
        // Wait for the client to hang up, bounded.
        let _ = matches!(c.recv(Some(Instant::now() + Duration::from_secs(5))), Ok(Recv::Eof));
    }
}

fn listen_fd(fd: &str) {
    let Ok(fd) = fd.parse::<i32>() else { return say("bad fd") };
    // SAFETY: listen on an inherited descriptor touches no memory.
    if unsafe { libc::listen(fd, 8) } != 0 {
        say(&format!("listen-error {}", std::io::Error::last_os_error()));
        std::process::exit(1);
    }
    say("ready");
    let _ = std::io::stdin().read(&mut [0u8; 1]);
}

fn knock(path: &str) {
    let mut s = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) => return say(&format!("connect-error {e}")),
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(&[0, 0, 0, 1, b'x']);
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => say("eof"),
        Ok(_) => say("data"),
        Err(e) => say(&format!("error {e}")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["listen", dir] => listen(dir),
        ["serve", dir, idle] => serve(dir, idle),
        ["listen-fd", fd] => listen_fd(fd),
        ["knock", path] => knock(path),
        _ => {
            say("usage: spore-session-helper listen DIR | serve DIR IDLE_MS | listen-fd FD | knock PATH");
            std::process::exit(2);
        }
    }
}
