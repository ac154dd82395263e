//! The handshake across a fresh connection: run the method's command, read
//! up to the script's HAVE/NEED marker (logging start-up noise), upload the
//! image if asked, answer a become prompt, and wait for the agent's hello.
//! Every failure names its cause with the remote's last words.

use crate::bootstrap::{classify, marker, AgentArgs, Image, PROMPT};
use crate::procs::kill_and_reap;
use crate::stream::NewStream;
use crate::sys::{self, pollfd};
use spore_protocol::body::{self, ConnectArgs, Hello};
use spore_protocol::{handle, Header, HEADER_LEN};
use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
}

/// Run `command` (the connection method's argv, with the script as its last
/// argument) and bootstrap an agent through it.
pub fn connect(
    mut command: Command,
    how: &ConnectArgs,
    image: &Image,
    args: &AgentArgs,
    timeout: Duration,
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
        // Its own process group: a Ctrl-C on the operator's terminal reaches
        // the master, which shuts the tree down in order, not every agent
        // at once. (A pty child gets a session of its own instead.)
        command.process_group(0);
    }
    command.stderr(Stdio::piped());
    let program = format!("{:?}", command.get_program());
    let mut child = command
        .spawn()
        .map_err(|e| ConnectError { cause: format!("can't start {program}: {e}"), last_words: Vec::new() })?;
    // The command holds the pty's slave side now; ours closed with `command`.
    drop(command);
    let pipes = match master {
        Some(m) => m.try_clone().map(|w| (w, m)),
        None => take_fd(child.stdin.take()).and_then(|w| take_fd(child.stdout.take()).map(|r| (w, r))),
    };
    let pipes = pipes.and_then(|(w, r)| take_fd(child.stderr.take()).map(|e| (w, r, e)));
    let hs = pipes.and_then(|(w, r, e)| Handshake::new(w, r, e, image, args, deadline, how.password.clone(), pty));
    let mut hs = match hs {
        Ok(hs) => hs,
        Err(e) => {
            kill_and_reap(&mut child);
            return Err(ConnectError { cause: format!("can't set up pipes: {e}"), last_words: Vec::new() });
        }
    };
    match hs.run() {
        Ok(hello) => {
            let uploaded = hs.uploaded;
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
            Ok(Connected { stream, hello, uploaded })
        }
        Err(cause) => {
            kill_and_reap(&mut child);
            hs.collect_rest();
            let status = child.try_wait().ok().flatten();
            let last_words: Vec<String> = hs.last_words.into_iter().collect();
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
    image: &'a Image,
    args: &'a AgentArgs,
    deadline: Instant,
    stdin: File,
    stdout: File,
    stderr: File,
    /// stdout bytes read but not yet consumed.
    buf: Vec<u8>,
    err_buf: Vec<u8>,
    last_words: VecDeque<String>,
    uploaded: bool,
    /// The become password, and whether it has been typed already.
    password: Option<String>,
    typed: bool,
    /// stdin/stdout are a pty where su/doas prompt for the password.
    pty: bool,
}

const LAST_WORDS: usize = 8;

fn take_fd<T: Into<OwnedFd>>(t: Option<T>) -> io::Result<File> {
    t.map(|t| File::from(t.into())).ok_or_else(|| io::Error::other("child has no pipe"))
}

impl<'a> Handshake<'a> {
    #[allow(clippy::too_many_arguments, reason = "one constructor, called once")]
    fn new(
        stdin: File,
        stdout: File,
        stderr: File,
        image: &'a Image,
        args: &'a AgentArgs,
        deadline: Instant,
        password: Option<String>,
        pty: bool,
    ) -> io::Result<Self> {
        for f in [&stdin, &stdout, &stderr] {
            sys::set_nonblocking(f.as_fd(), true)?;
        }
        Ok(Handshake {
            image,
            args,
            deadline,
            stdin,
            stdout,
            stderr,
            buf: Vec::new(),
            err_buf: Vec::new(),
            last_words: VecDeque::new(),
            uploaded: false,
            password,
            typed: false,
            pty,
        })
    }

    fn run(&mut self) -> Result<Hello, String> {
        let have = format!("{}:HAVE", marker(self.image));
        let need = format!("{}:NEED", marker(self.image));
        // 1. Up to the marker, skipping shell start-up noise.
        let needed = loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                // The marker ends its line; noise without a newline may
                // come before it on the same line.
                let (noise, needed) = if let Some(n) = line.strip_suffix(&have) {
                    (n, Some(false))
                } else if let Some(n) = line.strip_suffix(&need) {
                    (n, Some(true))
                } else {
                    (line.as_str(), None)
                };
                if !noise.is_empty() {
                    log::debug!("{}: noise before the marker: {noise}", self.args.name);
                    let noise = noise.to_string();
                    self.remember(noise);
                }
                if let Some(needed) = needed {
                    break needed;
                }
                continue;
            }
            if self.pty && !self.typed && is_password_prompt(&self.buf) {
                // su's "Password: ", doas's "doas (me@host) password: ".
                self.buf.clear();
                self.type_password()?;
                continue;
            }
            self.wait_io(false, "the bootstrap marker")?;
        };
        // 2. The image, only when asked for.
        if needed {
            log::debug!("{}: uploading agent ({} bytes)", self.args.name, self.image.bytes().len());
            let mut sent = 0;
            let bytes = self.image.bytes();
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
            self.uploaded = true;
        }
        // 3. The hello: the first protocol message.
        loop {
            if self.buf.len() >= HEADER_LEN {
                let mut raw = [0u8; HEADER_LEN];
                raw.copy_from_slice(self.buf.get(..HEADER_LEN).unwrap_or(&[0; HEADER_LEN]));
                let header = Header::decode(&raw, self.args.max_message).map_err(|e| {
                    let text = String::from_utf8_lossy(&self.buf).trim().to_string();
                    self.remember(text);
                    format!("the agent did not answer with a hello: {e}")
                })?;
                let end = HEADER_LEN + header.len as usize;
                if self.buf.len() >= end {
                    let body: Vec<u8> = self.buf.drain(..end).skip(HEADER_LEN).collect();
                    if header.handle != handle::HELLO {
                        return Err(format!("the agent's first message was not a hello (handle {})", header.handle));
                    }
                    let hello: Hello = body::from_json(&body, "hello").map_err(|e| e.to_string())?;
                    if hello.context_id != self.args.id {
                        return Err(format!("the agent says it is context {}, not {}", hello.context_id, self.args.id));
                    }
                    return Ok(hello);
                }
            }
            self.wait_io(false, "the agent's hello")?;
        }
    }

    fn remember(&mut self, line: String) {
        if line.is_empty() {
            return;
        }
        if self.last_words.len() == LAST_WORDS {
            self.last_words.pop_front();
        }
        self.last_words.push_back(line);
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
            let mut chunk = [0u8; 16 * 1024];
            match (&self.stdout).read(&mut chunk) {
                Ok(0) => return Err(format!("connection closed while waiting for {what}")),
                Ok(n) => self.buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) => return Err(format!("read failed while waiting for {what}: {e}")),
            }
        }
        Ok(())
    }

    fn read_stderr(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = (&self.stderr).read(&mut chunk) {
            if n == 0 {
                break;
            }
            self.err_buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
        // A password prompt ends without a newline: sudo's own marker, or
        // (with a pty) su's PAM prompt, which goes to stderr.
        if let Some(at) = find(&self.err_buf, PROMPT.as_bytes()) {
            self.err_buf.drain(..at + PROMPT.len());
            self.type_password()?;
        } else if self.pty && !self.typed && is_password_prompt(&self.err_buf) {
            self.err_buf.clear();
            self.type_password()?;
        }
        while let Some(nl) = self.err_buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.err_buf.drain(..=nl).collect();
            self.remember(String::from_utf8_lossy(&line).trim_end().to_string());
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
        self.remember(String::from_utf8_lossy(&rest).trim().to_string());
        let out = std::mem::take(&mut self.buf);
        for line in String::from_utf8_lossy(&out).lines() {
            self.remember(line.trim().to_string());
        }
    }
}

/// A partial line that asks for a password.
fn is_password_prompt(partial: &[u8]) -> bool {
    let text = String::from_utf8_lossy(partial).to_ascii_lowercase();
    text.contains("password") && text.trim_end().ends_with(':')
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
