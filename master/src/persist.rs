//! A run handed to the user's session: what a client sends, what the
//! session answers, and [`Client`], the handle for Rust code.
//!
//! The session (`spore session serve`, started on first use) keeps its
//! contexts between runs; a client sends a `spore` command line with its
//! working directory and three descriptors for the run's stdin, stdout and
//! stderr, and gets the exit status back. The CLI's `--persist` passes its
//! own; [`Client`] passes pipes and collects the output.
//!
//! ```no_run
//! use spore::persist::Client;
//! use std::time::Duration;
//!
//! // The session is started from this binary when none runs, and ends
//! // after ten minutes without a client.
//! let client = Client::new("/usr/local/bin/spore", Duration::from_secs(600))?;
//! let out = client.run(&["run", "web[01-04]", "--", "uptime"])?;   // cold: connects
//! let out = client.run(&["run", "web[01-04]", "--", "uptime"])?;   // warm: calls only
//! print!("{}", String::from_utf8_lossy(&out.stdout));
//! assert_eq!(out.status, 0);
//! # Ok::<(), std::io::Error>(())
//! ```

use crate::session::{self, Conn, Recv};
use miniserde::{Deserialize, Serialize};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a client waits for a session it started, and for the session
/// to take its request.
pub const START_WAIT: Duration = Duration::from_secs(10);

/// What a client asks.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct Request {
    /// `run` (a command line), `status` or `stop`.
    pub kind: String,
    /// The command line (program name first), each argument in hex:
    /// arguments are bytes.
    pub argv: Vec<String>,
    /// The client's working directory, in hex.
    pub cwd: String,
    /// `-K`: the become password, for this run's connects only (the
    /// socket is private to the user).
    pub password: Option<String>,
    /// The most verbose log records the client shows (`WARN`, `DEBUG`,
    /// ...; its `-v`, or `SPORE_LOG`); without it, the command line's
    /// `-v` says.
    pub log_level: Option<String>,
}

/// The session's answer at the end.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct Reply {
    /// The exit status the run would have had without the session.
    pub status: i32,
}

/// What a client sends while its run goes on: cancel it.
pub const CANCEL: &[u8] = b"cancel";
/// What the session says first: the request was taken (without it, a
/// client whose session was just ending connects again).
pub const TAKEN: &[u8] = b"taken";

/// Bytes as lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// [`hex`] back to bytes; `None` for anything else.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

/// Send `request` with the run's three descriptors to the session in
/// `dir` (started by `start` when none listens), and wait until it took
/// it. A session that was just ending never takes it: then once more.
pub fn hand_over(
    dir: &Path,
    request: &Request,
    fds: [BorrowedFd<'_>; 3],
    start: &mut dyn FnMut() -> io::Result<()>,
) -> io::Result<Conn> {
    let body = miniserde::json::to_string(request);
    for _ in 0..2 {
        let mut c = session::connect_or_start(dir, start, START_WAIT)?;
        c.send(body.as_bytes(), &fds)?;
        if let Recv::Message(m, _) = c.recv(Some(Instant::now() + START_WAIT))? {
            if m == TAKEN {
                return Ok(c);
            }
        }
    }
    Err(io::Error::other("the session did not take the run"))
}

/// The session's answer, however long the run takes.
pub fn wait_reply(conn: &mut Conn) -> io::Result<Reply> {
    let body = loop {
        match conn.recv(None)? {
            Recv::Message(body, _) => break body,
            Recv::TimedOut => {}
            Recv::Eof => return Err(io::Error::other("the session ended before the run did")),
        }
    };
    miniserde::json::from_str(&String::from_utf8_lossy(&body))
        .map_err(|_| io::Error::other("the session's answer is not understood"))
}

/// Start `spore session serve` from `spore` in the background: a session
/// of its own, its output to `session.log` in `dir`. Not waited for: it
/// outlives its starter.
pub fn start_session(spore: &Path, dir: &Path, idle: Duration) -> io::Result<()> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("session.log"))?;
    let mut cmd = std::process::Command::new(spore);
    cmd.args(["session", "serve", "--idle", &format!("{}", idle.as_secs_f64())])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid between fork and exec touches only the child, and is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| if libc::setsid() < 0 { Err(io::Error::last_os_error()) } else { Ok(()) });
    }
    cmd.spawn().map(drop)
}

/// What a run in the session gave.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Its exit status, as the CLI would have exited.
    pub status: i32,
    /// What it wrote to stdout.
    pub stdout: Vec<u8>,
    /// What it wrote to stderr.
    pub stderr: Vec<u8>,
}

/// A handle on the user's session for Rust code: every [`Client::run`]
/// goes to the one session (started from the `spore` binary given when
/// none runs), whose contexts outlive each run.
pub struct Client {
    spore: PathBuf,
    idle: Duration,
    dir: PathBuf,
}

impl Client {
    /// A client of the user's session; `spore` is the binary that starts
    /// one when none runs, which ends after `idle` without a client.
    pub fn new(spore: impl Into<PathBuf>, idle: Duration) -> io::Result<Client> {
        Ok(Client { spore: spore.into(), idle, dir: session::runtime_dir()? })
    }

    /// Run a `spore` command line (without the program's name, e.g.
    /// `["run", "web1", "--", "uptime"]`) in the session, stdin empty;
    /// its output collected.
    pub fn run(&self, args: &[&str]) -> io::Result<RunOutput> {
        let mut argv = vec![hex(b"spore")];
        argv.extend(args.iter().map(|a| hex(a.as_bytes())));
        let cwd = std::env::current_dir()?;
        let request = Request {
            kind: "run".into(),
            argv,
            cwd: hex(cwd.as_os_str().as_bytes()),
            ..<Request as Default>::default()
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let null = std::fs::File::open("/dev/null")?;
        let (spore, dir, idle) = (&self.spore, &self.dir, self.idle);
        let mut conn = hand_over(dir, &request, [null.as_fd(), out_w.as_fd(), err_w.as_fd()], &mut || {
            start_session(spore, dir, idle)
        })?;
        // Ours closed, the session's copies are the only writers left: the
        // readers end when the run does.
        drop((out_w, err_w));
        let reader = |mut r: std::fs::File| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                r.read_to_end(&mut v).map(|_| v)
            })
        };
        let (out, err) = (reader(out_r), reader(err_r));
        let reply = wait_reply(&mut conn)?;
        let joined = |h: std::thread::JoinHandle<io::Result<Vec<u8>>>| {
            h.join().map_err(|_| io::Error::other("an output reader panicked"))?
        };
        Ok(RunOutput { status: reply.status, stdout: joined(out)?, stderr: joined(err)? })
    }
}

/// A pipe, both ends close-on-exec.
fn pipe() -> io::Result<(std::fs::File, std::fs::File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just made by pipe2 and are owned by nothing else.
    Ok(unsafe { (std::os::fd::FromRawFd::from_raw_fd(fds[0]), std::os::fd::FromRawFd::from_raw_fd(fds[1])) })
}
