//! The handshake across a fresh connection: run the method's command, read
//! up to the script's HAVE/NEED marker (logging start-up noise), upload the
//! image if asked, answer a become prompt, and wait for the agent's hello.
//! Every failure names its cause with the remote's last words.

use crate::bootstrap::{classify, marker, offered, AgentArgs, PROMPT};
use crate::images::Images;
use crate::procs::kill_and_reap;
use crate::spawn::{Command, Stdio};
use crate::stream::NewStream;
use crate::sys::{self, pollfd};
use spore_protocol::body::{ConnectArgs, Hello};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod scan;
pub use scan::{
    parse_hello, shown, Found, LastWords, MarkerScan, Need, AFTER_MARKER_LIMIT, HELLO_LIMIT, KEEP, LAST_WORDS,
    LINE_LIMIT, LOGGED_LINES, NOISE_LIMIT, WORD_LEN,
};

/// The connection processes of the connects under way (each leads a
/// process group of its own), so that a shutdown ends them at once: a
/// handshake waits until its deadline, and a master that exits meanwhile
/// would leave its ssh, and a ProxyCommand below it, running.
pub struct Connecting {
    state: Mutex<Leaders>,
}

struct Leaders {
    pids: Vec<i32>,
    ended: bool,
}

impl Connecting {
    /// None under way yet.
    pub const fn new() -> Connecting {
        Connecting { state: Mutex::new(Leaders { pids: Vec::new(), ended: false }) }
    }

    /// SIGKILL the group of every connection process under way, and of
    /// every one started from now on. Their handshakes then fail at once.
    pub fn end_all(&self) {
        let mut s = crate::locks::lock(&self.state);
        s.ended = true;
        for &pid in &s.pids {
            // Not reaped yet (it is removed first): the pid is still its.
            let _ = sys::killpg(pid, libc::SIGKILL);
        }
    }
}

impl Note for Connecting {
    fn add(&self, pid: i32) -> bool {
        let mut s = crate::locks::lock(&self.state);
        if !s.ended {
            s.pids.push(pid);
        }
        !s.ended
    }

    fn remove(&self, pid: i32) {
        crate::locks::lock(&self.state).pids.retain(|&p| p != pid);
    }
}

impl Default for Connecting {
    fn default() -> Self {
        Connecting::new()
    }
}

/// A failed bootstrap: the cause and what the remote printed last.
#[derive(Debug, Clone)]
pub struct ConnectError {
    /// What went wrong, e.g. `timed out after 30s waiting for the agent's hello`.
    pub cause: String,
    /// The last lines the connection printed (stderr, and stray stdout).
    pub last_words: Vec<String>,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.cause)?;
        if !self.last_words.is_empty() {
            write!(f, "; the remote said: {}", self.last_words.join(" | "))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConnectError {}

/// A connected agent: its stream, ready for the broker, and its hello.
pub struct Connected {
    /// Hand this to `Broker::add_stream`.
    pub stream: NewStream,
    /// The agent's hello.
    pub hello: Hello,
    /// The image was uploaded (the target's cache missed).
    pub uploaded: bool,
    /// Bytes of images written to the connection (0 on a cache hit).
    pub image_bytes: u64,
}

/// Run `command` (the connection method's argv, with the script as its last
/// argument) and bootstrap an agent through it.
pub fn connect(
    command: Command,
    how: &ConnectArgs,
    images: &Images,
    args: &AgentArgs,
    timeout: Duration,
) -> Result<Connected, ConnectError> {
    start(command, how, images, args, (timeout, &Unnoted), true)
}

/// [`connect`], its connection process noted in `connecting` while it
/// lasts, for a shutdown to end.
pub fn connect_noted(
    command: Command,
    how: &ConnectArgs,
    images: &Images,
    args: &AgentArgs,
    timeout: Duration,
    connecting: &Connecting,
) -> Result<Connected, ConnectError> {
    start(command, how, images, args, (timeout, connecting), true)
}

/// Run `command`, a checked cached agent itself (no script, no marker),
/// and wait for its hello: a `local` context the master found in the
/// cache. Noted in `connecting` while it lasts.
pub fn connect_direct(
    command: Command,
    how: &ConnectArgs,
    images: &Images,
    args: &AgentArgs,
    timeout: Duration,
    connecting: &Connecting,
) -> Result<Connected, ConnectError> {
    start(command, how, images, args, (timeout, connecting), false)
}

/// Where a connect notes its connection process: [`Connecting`] in the
/// master; nowhere in an agent, whose exit ends what its connects started
/// (it is their subreaper, and sweeps what is left below it).
trait Note {
    /// False: a shutdown has begun, end it now.
    fn add(&self, pid: i32) -> bool;
    /// Forget it, before it is reaped: its pid may be reused after.
    fn remove(&self, pid: i32);
}

struct Unnoted;

impl Note for Unnoted {
    fn add(&self, _: i32) -> bool {
        true
    }
    fn remove(&self, _: i32) {}
}

fn start(
    mut command: Command,
    how: &ConnectArgs,
    images: &Images,
    args: &AgentArgs,
    (timeout, connecting): (Duration, &impl Note),
    scripted: bool,
) -> Result<Connected, ConnectError> {
    let deadline = Instant::now() + timeout;
    let setup = |e: io::Error| ConnectError { cause: format!("can't set up pipes: {e}"), last_words: Vec::new() };
    // su and doas read a password only from a terminal: give them a pty
    // (raw, so the agent passes through unchanged) as stdin and stdout.
    let pty = how.password.is_some() && matches!(how.method.as_str(), "su" | "doas");
    let mut master = None;
    if pty {
        let (m, slave) = sys::raw_pty().map_err(setup)?;
        let other = slave.try_clone().map_err(setup)?;
        command.stdin(Stdio::from(OwnedFd::from(slave))).stdout(Stdio::from(OwnedFd::from(other)));
        // SAFETY: the closure runs between fork and exec and calls only
        // setsid and ioctl, which are async-signal-safe.
        unsafe {
            command.pre_exec(sys::take_terminal);
        }
        master = Some(m);
    } else {
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        if how.method == "ssh" {
            // A session of its own, as parallel-ssh and Ansible start theirs:
            // where the kernel shares the CPU out by session (autogroup) a
            // busy machine gives each ssh its own share, not one for all
            // of spore's (64 at once: 13.6 s in one session, 4.6 s each
            // in its own). ssh runs with BatchMode, so it has no use for
            // the terminal (and, in a background group, could not read it).
            // SAFETY: the closure runs between fork and exec and calls only
            // setsid, which is async-signal-safe.
            unsafe {
                command.pre_exec(sys::new_session);
            }
        } else {
            // Its own process group: a Ctrl-C on the operator's terminal
            // reaches the master, which shuts the tree down in order, not
            // every agent at once. (A pty child gets a session of its own
            // instead.)
            command.process_group(0);
        }
    }
    command.stderr(Stdio::piped());
    let program = crate::logs::quoted(&command.get_program().to_string_lossy());
    let mut child = command
        .spawn()
        .map_err(|e| ConnectError { cause: format!("can't start {program}: {e}"), last_words: Vec::new() })?;
    // The command holds the pty's slave side now; ours closed with `command`.
    drop(command);
    let pid = child.id() as i32;
    if !connecting.add(pid) {
        kill_and_reap(&mut child);
        return Err(ConnectError { cause: "shutting down".into(), last_words: Vec::new() });
    }
    let pipes = match master {
        Some(m) => m.try_clone().map(|w| (w, m)),
        None => take_fd(child.stdin.take()).and_then(|w| take_fd(child.stdout.take()).map(|r| (w, r))),
    };
    let pipes = pipes.and_then(|(w, r)| take_fd(child.stderr.take()).map(|e| (w, r, e)));
    let hs = pipes
        .and_then(|(w, r, e)| Handshake::new(w, r, e, images, &how.method, args, deadline, how.password.clone(), pty));
    let mut hs = match hs {
        // Without a script there is no marker: the hello comes first.
        Ok(hs) => Handshake { marked: !scripted, ..hs },
        Err(e) => {
            connecting.remove(pid);
            kill_and_reap(&mut child);
            return Err(ConnectError { cause: format!("can't set up pipes: {e}"), last_words: Vec::new() });
        }
    };
    let outcome = hs.run();
    connecting.remove(pid);
    match outcome {
        Ok(hello) => {
            let image_bytes = hs.image_bytes;
            let Handshake { stdin, stdout, stderr, buf, .. } = hs;
            let stream = NewStream {
                remote_id: args.id,
                name: args.name.clone(),
                input: stdout,
                output: stdin,
                stderr: Some(stderr),
                child: Some(child),
                leftover: buf,
                is_parent: false,
                greeting: None,
            };
            Ok(Connected { stream, hello, uploaded: image_bytes > 0, image_bytes })
        }
        Err(cause) => {
            kill_and_reap(&mut child);
            hs.collect_rest();
            let status = child.try_wait().ok().flatten();
            let last_words = hs.last_words.lines();
            let cause = match (classify(&how.method, &last_words), status) {
                (Some(named), _) if !cause.starts_with(named) => format!("{named} ({cause})"),
                (_, Some(s)) if cause.starts_with("connection closed") => format!("{cause} ({s})"),
                _ => cause,
            };
            Err(ConnectError { cause, last_words })
        }
    }
}

struct Handshake<'a> {
    images: &'a Images,
    /// The bootstrap's marker.
    marker: String,
    args: &'a AgentArgs,
    deadline: Instant,
    stdin: File,
    stdout: File,
    stderr: File,
    /// stdout bytes read but not yet consumed: at most a read before the
    /// marker, at most [`AFTER_MARKER_LIMIT`] after it.
    buf: Vec<u8>,
    /// Found the marker: `buf` holds protocol bytes now.
    marked: bool,
    /// What came before the marker.
    scan: MarkerScan,
    /// The partial stderr line: at most [`KEEP`] bytes plus a read.
    err_buf: Vec<u8>,
    /// Its whole length so far.
    err_len: u64,
    last_words: LastWords,
    /// Bytes of images uploaded (none: the cache hit).
    image_bytes: u64,
    /// The become password, and whether it has been typed already.
    password: Option<String>,
    typed: bool,
    /// stdin/stdout are a pty where su/doas prompt for the password.
    pty: bool,
}

fn take_fd<T: Into<OwnedFd>>(t: Option<T>) -> io::Result<File> {
    t.map(|t| File::from(t.into())).ok_or_else(|| io::Error::other("child has no pipe"))
}

/// One read from the connection's stdout or stderr.
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// Uploads one bootstrap may ask for: one per candidate directory.
const UPLOAD_LIMIT: u32 = 5;
/// Reads of stderr in one go, so a flood of it can't hold up the rest.
const STDERR_READS: usize = 16;

impl<'a> Handshake<'a> {
    #[allow(clippy::too_many_arguments, reason = "one constructor, called once")]
    fn new(
        stdin: File,
        stdout: File,
        stderr: File,
        images: &'a Images,
        method: &str,
        args: &'a AgentArgs,
        deadline: Instant,
        password: Option<String>,
        pty: bool,
    ) -> io::Result<Self> {
        for f in [&stdin, &stdout, &stderr] {
            sys::set_nonblocking(f.as_fd(), true)?;
        }
        let infos: Vec<_> = offered(images, method).into_iter().cloned().collect();
        let marker = marker(&infos);
        Ok(Handshake {
            images,
            scan: MarkerScan::new(&marker),
            marker,
            args,
            deadline,
            stdin,
            stdout,
            stderr,
            buf: Vec::new(),
            marked: false,
            err_buf: Vec::new(),
            err_len: 0,
            last_words: LastWords::default(),
            image_bytes: 0,
            password,
            typed: false,
            pty,
        })
    }

    fn run(&mut self) -> Result<Hello, String> {
        let mut uploads = 0;
        // 1. Up to the marker: HAVE, or NEED and the image it wants.
        while let Some(need) = if self.marked { None } else { self.until_marker()? } {
            // 2. The image, only when asked for.
            uploads += 1;
            if uploads > UPLOAD_LIMIT {
                return Err(format!("the bootstrap asked for the agent {uploads} times"));
            }
            self.upload(&need)?;
            // The hello follows, or (an install failed after the upload, and
            // the script moved on to another directory) another marker.
            while self.buf.is_empty() {
                self.wait_io(false, "the agent's hello")?;
            }
            if !self.buf.starts_with(b"s") {
                break;
            }
            self.marked = false;
            self.scan = MarkerScan::new(&self.marker);
        }
        // 3. The hello: the first protocol message.
        loop {
            match parse_hello(&self.buf, self.args.id) {
                Ok(Some((hello, used))) => {
                    self.buf.drain(..used);
                    return Ok(hello);
                }
                Ok(None) => {}
                Err(e) => {
                    let text = std::mem::take(&mut self.buf);
                    self.last_words.remember(text.trim_ascii(), text.len() as u64);
                    return Err(e);
                }
            }
            self.wait_io(false, "the agent's hello")?;
        }
    }

    /// Read up to the marker, skipping shell start-up noise: each byte is
    /// looked at once, and only the end of the current line is kept.
    fn until_marker(&mut self) -> Result<Option<Need>, String> {
        loop {
            let bytes = std::mem::take(&mut self.buf);
            let found = self.scan.push(&bytes, &mut self.last_words);
            for line in self.scan.take_logged() {
                log::debug!("{}: noise before the marker: {line}", self.args.name);
            }
            if let Some(found) = found? {
                self.buf = bytes.get(found.rest..).unwrap_or_default().to_vec();
                self.marked = true;
                let (lines, bytes) = self.scan.unlogged();
                if lines > 0 {
                    log::debug!(
                        "{}: and {lines} more lines of noise ({bytes} bytes) before the marker",
                        self.args.name
                    );
                }
                return Ok(found.need);
            }
            if self.pty && !self.typed && is_password_prompt(self.scan.partial()) {
                // su's "Password: ", doas's "doas (me@host) password: ".
                self.scan.clear_partial();
                self.type_password()?;
                continue;
            }
            self.wait_io(false, "the bootstrap marker")?;
        }
    }

    /// Send the image the script asked for.
    fn upload(&mut self, need: &Need) -> Result<(), String> {
        let info = self.images.for_arch(&need.arch).ok_or_else(|| {
            format!("the target needs an agent for {}, and spore has {}", need.arch, self.images.arch_list())
        })?;
        let gz = need.gz && info.gz_size > 0;
        let bytes = self.images.bytes(info, gz, self.deadline)?;
        log::debug!(
            "{}: uploading the {} agent ({} bytes{})",
            self.args.name,
            info.arch,
            bytes.len(),
            if gz { ", gzip" } else { "" }
        );
        let mut sent = 0;
        while sent < bytes.len() {
            match (&self.stdin).write(bytes.get(sent..).unwrap_or_default()) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait_io(true, "the upload to be read")?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("upload cut short after {sent} of {} bytes: {e}", bytes.len())),
            }
        }
        self.image_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Wait for stdout (and stdin, when writing) to be ready, reading
    /// stderr meanwhile. Errors on EOF of stdout and on the deadline.
    fn wait_io(&mut self, writing: bool, what: &str) -> Result<(), String> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        let ms = self.deadline.duration_since(now).as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [
            pollfd(self.stdout.as_raw_fd(), libc::POLLIN),
            pollfd(self.stderr.as_raw_fd(), libc::POLLIN),
            pollfd(if writing { self.stdin.as_raw_fd() } else { -1 }, libc::POLLOUT),
        ];
        sys::poll(&mut fds, ms.max(1)).map_err(|e| format!("poll failed: {e}"))?;
        let [out, err, _] = fds;
        if err.revents != 0 {
            self.read_stderr()?;
        }
        if out.revents != 0 {
            if self.marked && self.buf.len() >= AFTER_MARKER_LIMIT {
                return Err(format!(
                    "the remote printed more than {AFTER_MARKER_LIMIT} bytes after the marker while waiting for {what}"
                ));
            }
            let at = self.buf.len();
            self.buf.resize(at + READ_CHUNK, 0);
            let read = (&self.stdout).read(self.buf.get_mut(at..).unwrap_or_default());
            self.buf.truncate(at + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => return Err(format!("connection closed while waiting for {what}")),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) => return Err(format!("read failed while waiting for {what}: {e}")),
            }
        }
        Ok(())
    }

    fn read_stderr(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        for _ in 0..STDERR_READS {
            match (&self.stderr).read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let got = chunk.get(..n).unwrap_or_default();
                    self.err_buf.extend_from_slice(got);
                    self.err_len += n as u64;
                }
            }
        }
        // A password prompt ends without a newline: sudo's own marker, or
        // (with a pty) su's PAM prompt, which goes to stderr.
        if let Some(at) = find(&self.err_buf, PROMPT.as_bytes()) {
            self.err_buf.drain(..at + PROMPT.len());
            self.err_len = self.err_buf.len() as u64;
            self.type_password()?;
        } else if self.pty && !self.typed && is_password_prompt(&self.err_buf) {
            self.err_buf.clear();
            self.err_len = 0;
            self.type_password()?;
        }
        let mut start = 0;
        while let Some(nl) = self.err_buf.get(start..).and_then(|rest| rest.iter().position(|&b| b == b'\n')) {
            let line = self.err_buf.get(start..start + nl).unwrap_or_default();
            // The line's whole length: what came before `err_buf` too.
            let len =
                if start == 0 { self.err_len.saturating_sub((self.err_buf.len() - nl) as u64) } else { nl as u64 };
            self.last_words.remember(line.trim_ascii_end(), len);
            start += nl + 1;
        }
        if start > 0 {
            self.err_buf.drain(..start);
            self.err_len = self.err_buf.len() as u64;
        }
        // A line without an end: keep its tail, enough for a prompt.
        if self.err_buf.len() > KEEP {
            let cut = self.err_buf.len() - KEEP;
            self.err_buf.drain(..cut);
        }
        Ok(())
    }

    /// Answer the become prompt, once: a second prompt means it was wrong.
    fn type_password(&mut self) -> Result<(), String> {
        if self.typed {
            return Err("wrong password: asked again after it was typed".into());
        }
        let Some(pw) = self.password.take() else {
            return Err("a password is required, and none was given (use --ask-become-pass)".into());
        };
        self.typed = true;
        let mut line = pw.into_bytes();
        line.push(b'\n');
        sys::set_nonblocking(self.stdin.as_fd(), false).map_err(|e| format!("typing the password: {e}"))?;
        let written = (&self.stdin).write_all(&line);
        line.fill(0);
        sys::set_nonblocking(self.stdin.as_fd(), true).map_err(|e| format!("typing the password: {e}"))?;
        written.map_err(|e| format!("typing the password: {e}"))
    }

    /// After a failure: whatever the remote still had to say.
    fn collect_rest(&mut self) {
        let _ = self.read_stderr();
        let rest = std::mem::take(&mut self.err_buf);
        self.last_words.remember(rest.trim_ascii(), self.err_len);
        if self.marked {
            let out = std::mem::take(&mut self.buf);
            for line in out.split(|&b| b == b'\n') {
                self.last_words.remember(line.trim_ascii(), line.len() as u64);
            }
        } else {
            self.scan.finish(&mut self.last_words);
        }
    }
}

/// A partial line that asks for a password.
fn is_password_prompt(partial: &[u8]) -> bool {
    let text = String::from_utf8_lossy(partial).to_ascii_lowercase();
    find(text.as_bytes(), b"password").is_some() && text.trim_end().ends_with(':')
}

/// Where `needle` (not empty) first is in `haystack`: a plain search, in
/// place of `str::contains`'s two-way one (1.4 KB of agent) for these short
/// texts.
pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---- the pure parts: what the remote printed, and the hello ------------
//
// No I/O and no clock: the fuzz target `bootstrap` (fuzz/src/bootstrap.rs)
// drives them with arbitrary bytes in arbitrary splits.
