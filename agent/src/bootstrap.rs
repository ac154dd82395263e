//! Starting an agent at the far end of a connection: the `sh -c` script,
//! the HAVE/NEED handshake, the upload, and the hello. The master and every
//! intermediate agent use this same code.

use crate::broker::NewStream;
use crate::sys;
use spore_protocol::body::{self, Hello};
use spore_protocol::{handle, hex, sha256, Header, HEADER_LEN};
use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// An agent binary, named by its content.
pub struct Image {
    bytes: Arc<Vec<u8>>,
    hash: OnceLock<String>,
}

impl Image {
    /// Wrap the bytes of a static agent binary.
    pub fn new(bytes: Vec<u8>) -> Image {
        Image { bytes: Arc::new(bytes), hash: OnceLock::new() }
    }

    /// The binary.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Lower-case hex SHA-256 of the binary.
    pub fn hash(&self) -> &str {
        self.hash.get_or_init(|| hex(&sha256(&self.bytes)))
    }
}

/// What an agent is told on its command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentArgs {
    /// Its context id.
    pub id: u32,
    /// Its path in the tree.
    pub name: String,
    /// Its ancestors, master first.
    pub parent_ids: Vec<u32>,
    /// Most verbose log level forwarded: 0 off, 1 error … 5 trace.
    pub log_level: u8,
    /// Largest message body accepted.
    pub max_message: u32,
    /// Grace for its own children at shutdown, in milliseconds.
    pub grace_ms: u64,
}

impl AgentArgs {
    /// The arguments after the program name.
    pub fn to_argv(&self) -> Vec<String> {
        let parents: Vec<String> = self.parent_ids.iter().map(u32::to_string).collect();
        vec![
            format!("--id={}", self.id),
            format!("--name={}", self.name),
            format!("--parents={}", parents.join(",")),
            format!("--log={}", self.log_level),
            format!("--max-message={}", self.max_message),
            format!("--grace-ms={}", self.grace_ms),
        ]
    }

    /// Parse what [`AgentArgs::to_argv`] produced.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<AgentArgs, String> {
        let mut a = AgentArgs {
            id: u32::MAX,
            name: String::new(),
            parent_ids: Vec::new(),
            log_level: 2,
            max_message: spore_protocol::DEFAULT_MAX_MESSAGE,
            grace_ms: 4000,
        };
        for arg in args {
            let (key, value) = arg.split_once('=').ok_or_else(|| format!("unexpected argument {arg:?}"))?;
            let num = |v: &str| v.parse::<u64>().map_err(|_| format!("bad number in {arg:?}"));
            match key {
                "--id" => a.id = num(value)? as u32,
                "--name" => a.name = value.to_string(),
                "--parents" => {
                    for p in value.split(',').filter(|p| !p.is_empty()) {
                        a.parent_ids.push(num(p)? as u32);
                    }
                }
                "--log" => a.log_level = num(value)?.min(5) as u8,
                "--max-message" => a.max_message = num(value)? as u32,
                "--grace-ms" => a.grace_ms = num(value)?,
                _ => return Err(format!("unknown option {key}")),
            }
        }
        if a.id == u32::MAX || a.parent_ids.is_empty() {
            return Err("spore-agent is started by spore, not by hand (missing --id/--parents)".into());
        }
        Ok(a)
    }
}

/// Quote for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=/.,:@%+".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The marker token for this image: unlikely in any shell start-up noise.
fn marker(image: &Image) -> String {
    format!("spore-{}", image.hash().get(..16).unwrap_or_default())
}

/// The POSIX `sh` script run on the target (see DESIGN.md, Bootstrap).
pub fn script(image: &Image, args: &AgentArgs) -> String {
    let argv: Vec<String> = args.to_argv().iter().map(|a| sh_quote(a)).collect();
    let argv = argv.join(" ");
    format!(
        r#"h={hash} n={size} m={marker}
umask 077
d=
for b in "${{XDG_RUNTIME_DIR:-}}" "${{HOME:+$HOME/.cache}}" /tmp /var/tmp /dev/shm; do
  [ -n "$b" ] || continue
  c=$b/spore
  [ -d "$c" ] || mkdir -p "$c" 2>/dev/null || continue
  [ -O "$c" ] && [ ! -L "$c" ] && chmod 700 "$c" 2>/dev/null || continue
  t=$c/.probe.$$
  if printf '#!/bin/sh\n' >"$t" 2>/dev/null && chmod 700 "$t" && "$t" 2>/dev/null; then rm -f "$t"; d=$c; break; fi
  rm -f "$t"
done
if [ -z "$d" ]; then echo "spore: no writable exec directory (tried XDG_RUNTIME_DIR, ~/.cache, /tmp, /var/tmp, /dev/shm)" >&2; exit 97; fi
f=$d/spore-agent-$h
ok=
if [ -f "$f" ] && [ -O "$f" ] && [ ! -L "$f" ] && [ "$(wc -c <"$f")" -eq $n ]; then
  ok=1
  if command -v sha256sum >/dev/null 2>&1; then set -- $(sha256sum <"$f"); [ "$1" = "$h" ] || ok=; fi
fi
if [ -n "$ok" ] && chmod 700 "$f"; then echo "$m:HAVE"; exec "$f" {argv}; fi
rm -f "$f"
echo "$m:NEED"
t=$f.$$.part
if command -v head >/dev/null 2>&1; then head -c $n >"$t"; else dd bs=$n count=1 iflag=fullblock >"$t" 2>/dev/null; fi
if [ "$(wc -c <"$t")" -ne $n ]; then rm -f "$t"; echo "spore: upload cut short" >&2; exit 98; fi
chmod 700 "$t" && mv -f "$t" "$f" || {{ rm -f "$t"; echo "spore: can't install the agent in $d" >&2; exit 99; }}
exec "$f" {argv}
"#,
        hash = image.hash(),
        size = image.bytes().len(),
        marker = marker(image),
    )
}

/// The command that runs the bootstrap script through connection `method`.
/// Only `local` so far: `sh -c SCRIPT` as a child of this process.
pub fn method_command(method: &str, image: &Image, args: &AgentArgs) -> Result<Command, String> {
    match method {
        "local" => {
            let mut cmd = Command::new("sh");
            cmd.arg("-c").arg(script(image, args));
            Ok(cmd)
        }
        other => Err(format!("unknown connection method {other:?}")),
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
}

/// Run `command` (the connection method's argv, with the script as its last
/// argument) and bootstrap an agent through it.
pub fn connect(
    mut command: Command,
    image: &Image,
    args: &AgentArgs,
    timeout: Duration,
) -> Result<Connected, ConnectError> {
    let deadline = Instant::now() + timeout;
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Its own process group: a Ctrl-C on the operator's terminal reaches
    // the master, which shuts the tree down in order, not every agent at once.
    command.process_group(0);
    let program = format!("{:?}", command.get_program());
    let mut child = command
        .spawn()
        .map_err(|e| ConnectError { cause: format!("can't start {program}: {e}"), last_words: Vec::new() })?;
    let mut hs = match Handshake::new(&mut child, image, args, deadline) {
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
            let cause = match status {
                Some(s) if cause.starts_with("connection closed") => format!("{cause} ({s})"),
                _ => cause,
            };
            Err(ConnectError { cause, last_words: hs.last_words.into_iter().collect() })
        }
    }
}

fn kill_and_reap(child: &mut Child) {
    let _ = sys::killpg(child.id() as i32, libc::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
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
}

const LAST_WORDS: usize = 8;

fn take_fd<T: Into<OwnedFd>>(t: Option<T>) -> io::Result<File> {
    t.map(|t| File::from(t.into())).ok_or_else(|| io::Error::other("child has no pipe"))
}

impl<'a> Handshake<'a> {
    fn new(child: &mut Child, image: &'a Image, args: &'a AgentArgs, deadline: Instant) -> io::Result<Self> {
        let stdin = take_fd(child.stdin.take())?;
        let stdout = take_fd(child.stdout.take())?;
        let stderr = take_fd(child.stderr.take())?;
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
                if line == have {
                    break false;
                } else if line == need {
                    break true;
                }
                log::debug!("{}: noise before the marker: {line}", self.args.name);
                self.remember(line);
                continue;
            }
            self.wait_io(None, "the bootstrap marker")?;
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
                        self.wait_io(Some(()), "the upload to be read")?;
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
            self.wait_io(None, "the agent's hello")?;
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
    fn wait_io(&mut self, writing: Option<()>, what: &str) -> Result<(), String> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        let ms = self.deadline.duration_since(now).as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [
            pollfd(self.stdout.as_raw_fd(), libc::POLLIN),
            pollfd(self.stderr.as_raw_fd(), libc::POLLIN),
            pollfd(if writing.is_some() { self.stdin.as_raw_fd() } else { -1 }, libc::POLLOUT),
        ];
        sys::poll(&mut fds, ms.max(1)).map_err(|e| format!("poll failed: {e}"))?;
        let [out, err, _] = fds;
        if err.revents != 0 {
            self.read_stderr();
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

    fn read_stderr(&mut self) {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = (&self.stderr).read(&mut chunk) {
            if n == 0 {
                break;
            }
            self.err_buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
        while let Some(nl) = self.err_buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.err_buf.drain(..=nl).collect();
            self.remember(String::from_utf8_lossy(&line).trim_end().to_string());
        }
    }

    /// After a failure: whatever the remote still had to say.
    fn collect_rest(&mut self) {
        self.read_stderr();
        let rest = std::mem::take(&mut self.err_buf);
        self.remember(String::from_utf8_lossy(&rest).trim().to_string());
        let out = std::mem::take(&mut self.buf);
        for line in String::from_utf8_lossy(&out).lines() {
            self.remember(line.trim().to_string());
        }
    }
}

fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let a = AgentArgs {
            id: 7,
            name: "local/sudo:postgres".into(),
            parent_ids: vec![0, 3],
            log_level: 4,
            max_message: 1 << 20,
            grace_ms: 3500,
        };
        assert_eq!(AgentArgs::parse(a.to_argv()).unwrap(), a);
        assert!(AgentArgs::parse(vec!["--bogus=1".to_string()]).is_err());
        assert!(AgentArgs::parse(Vec::<String>::new()).is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("--name=a/b:c"), "--name=a/b:c");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
