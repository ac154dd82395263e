//! Starting an agent at the far end of a connection: the `sh -c` script,
//! the HAVE/NEED handshake, the upload, and the hello. The master and every
//! intermediate agent use this same code.

use crate::broker::NewStream;
use crate::sys::{self, pollfd};
use spore_protocol::body::{self, ConnectArgs, Hello};
use spore_protocol::{handle, hex, posix_cksum, sha256, Header, HEADER_LEN};
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
    cksum: OnceLock<u32>,
}

impl Image {
    /// Wrap the bytes of a static agent binary.
    pub fn new(bytes: Vec<u8>) -> Image {
        Image { bytes: Arc::new(bytes), hash: OnceLock::new(), cksum: OnceLock::new() }
    }

    /// The binary.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Lower-case hex SHA-256 of the binary: its name in the cache.
    pub fn hash(&self) -> &str {
        self.hash.get_or_init(|| hex(&sha256(&self.bytes)))
    }

    /// Its POSIX `cksum`: how the target checks a cached copy, cheaply.
    pub fn cksum(&self) -> u32 {
        *self.cksum.get_or_init(|| posix_cksum(&self.bytes))
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
    /// Keepalive interval for its children, in milliseconds (0: off).
    pub keepalive_ms: u64,
    /// Missed intervals before a child is declared dead.
    pub keepalive_misses: u32,
}

/// Default keepalive: probe an idle child every 15 s, declare it dead after
/// a minute of silence. Brokers answer probes themselves, so only a dead
/// host or a cut network is that quiet.
pub const KEEPALIVE_MS: u64 = 15_000;
/// Default missed intervals before a child is declared dead.
pub const KEEPALIVE_MISSES: u32 = 4;

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
            format!("--keepalive-ms={}", self.keepalive_ms),
            format!("--keepalive-misses={}", self.keepalive_misses),
        ]
    }

    /// Parse what [`AgentArgs::to_argv`] produced. A process started as a
    /// command's guardian (by `exec`) becomes one here and never returns:
    /// so does any agent binary that parses its arguments first.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<AgentArgs, String> {
        crate::guardian::run_if_asked();
        let mut a = AgentArgs {
            id: u32::MAX,
            name: String::new(),
            parent_ids: Vec::new(),
            log_level: 2,
            max_message: spore_protocol::DEFAULT_MAX_MESSAGE,
            grace_ms: 4000,
            keepalive_ms: KEEPALIVE_MS,
            keepalive_misses: KEEPALIVE_MISSES,
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
                "--keepalive-ms" => a.keepalive_ms = num(value)?,
                "--keepalive-misses" => a.keepalive_misses = num(value)?.min(1000) as u32,
                _ => return Err(format!("unknown option {key}")),
            }
        }
        if a.id == u32::MAX || a.parent_ids.is_empty() {
            return Err("spore-agent is started by spore, not by hand (missing --id/--parents)".into());
        }
        Ok(a)
    }
}

/// The shutdown grace a context gives its children: a second less than its
/// own, so each level finishes, forcing included, inside its parent's bound.
pub fn child_grace_ms(own_grace_ms: u64) -> u64 {
    own_grace_ms.saturating_sub(1000).max(300)
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

/// The POSIX `sh` script run on the target (see DESIGN.md, Bootstrap), as
/// one line: some login shells (csh) reject newlines inside a quoted
/// remote command.
pub fn script(image: &Image, args: &AgentArgs) -> String {
    one_line(&script_lines(image, args))
}

/// Join a script's lines with `; `, or a space after a line that can't end
/// a command (`then`, `do`, `else`, `{`, `&&`, `||`, `|`).
fn one_line(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            let open = ["then", "do", "else", "{", "&&", "||", "|"].iter().any(|w| out.ends_with(w));
            out.push_str(if open { " " } else { "; " });
        }
        out.push_str(line);
    }
    out
}

/// `ok DIR`: may `DIR/spore-agent-<hash>`, a cached agent, be run? Every
/// time (built-ins, and one `ls` run in DIR): DIR is the user's, not a
/// symlink, writable by nobody else (so nobody else can swap the file
/// between this check and the `exec`); the file is a regular file, the
/// user's, not a symlink, executable, writable by nobody else and of the
/// right size. Without `ls` the answer is no. `ls` runs with `-n` and the
/// C locale, and its output is split at the `.` that ends DIR's line, so
/// group names with spaces, `TIME_STYLE` and `BLOCK_SIZE` can't shift the
/// fields. Then the content: its stamp `FILE.ok` (the user's, not a
/// symlink; written only after a `cksum` passed, at upload or here) names
/// FILE's inode and is newer than FILE, or FILE's `cksum` is right now.
/// The stamp saves the `cksum` process (a third of a local connect) on
/// every later start and can't vouch for other bytes: writing to FILE sets
/// its mtime to now, which only the owner (or root) can set back, and
/// another file renamed onto the name has another inode. Without `cksum`,
/// size and mode decide, and no stamp is written.
///
/// An install never removes the cached name first: bootstraps racing on a
/// cold cache each rename a complete, checked copy over it, so whichever
/// copy a sibling's `exec` finds is whole. Names it writes are removed
/// first, so a symlink planted while a directory was open can't redirect a
/// write.
fn script_lines(image: &Image, args: &AgentArgs) -> String {
    let argv: Vec<String> = args.to_argv().iter().map(|a| sh_quote(a)).collect();
    let argv = argv.join(" ");
    format!(
        r#"h={hash} n={size} k={cksum} m={marker}
umask 077
ok() {{
  [ -n "$1" ] && [ -O "$1" ] && [ ! -L "$1" ] || return 1
  a=$1/spore-agent-$h
  [ -f "$a" ] && [ -O "$a" ] && [ ! -L "$a" ] && [ -x "$a" ] || return 1
  set -- $(cd "$1" 2>/dev/null && LC_ALL=C BLOCK_SIZE=1 LS_BLOCK_SIZE=1 ls -ldin . "spore-agent-$h" 2>/dev/null)
  case $2 in d????[!w]??[!w]*) ;; *) return 1;; esac
  while [ $# -gt 0 ] && [ "$1" != . ]; do shift; done
  [ $# -gt 7 ] || return 1
  shift
  case $2 in -????[!w]??[!w]*) ;; *) return 1;; esac
  [ "$6" = "$n" ] || return 1
  i=$1 o=
  [ -f "$a.ok" ] && [ -O "$a.ok" ] && [ ! -L "$a.ok" ] && [ "$a.ok" -nt "$a" ] && {{ read -r o <"$a.ok"; }} 2>/dev/null
  [ "$o" = "$i" ] && return
  command -v cksum >/dev/null 2>&1 || return 0
  set -- $(cksum <"$a")
  [ "$1 $2" = "$k $n" ] || return 1
  {{ rm -f "$a.ok"; echo "$i" >"$a.ok"; }} 2>/dev/null
  return 0
}}
for c in "${{XDG_RUNTIME_DIR:+$XDG_RUNTIME_DIR/spore}}" "${{HOME:+$HOME/.cache/spore}}"; do
  if ok "$c"; then echo "$m:HAVE"; exec "$c/spore-agent-$h" {argv}; fi
done
u=$(id -u 2>/dev/null) || u=x
d=
for c in "${{XDG_RUNTIME_DIR:+$XDG_RUNTIME_DIR/spore}}" "${{HOME:+$HOME/.cache/spore}}" /tmp/spore-$u /var/tmp/spore-$u /dev/shm/spore-$u; do
  [ -n "$c" ] || continue
  if ok "$c"; then echo "$m:HAVE"; exec "$c/spore-agent-$h" {argv}; fi
  [ -d "$c" ] || mkdir -p "$c" 2>/dev/null || continue
  [ -O "$c" ] && [ ! -L "$c" ] && chmod 700 "$c" 2>/dev/null || continue
  t=$c/.probe.$$
  if printf '#!/bin/sh\n' >"$t" 2>/dev/null && chmod 700 "$t" && "$t" 2>/dev/null; then rm -f "$t"; d=$c; break; fi
  rm -f "$t"
done
if [ -z "$d" ]; then echo "spore: no writable exec directory (tried \$XDG_RUNTIME_DIR/spore, ~/.cache/spore, /tmp, /var/tmp and /dev/shm)" >&2; exit 97; fi
f=$d/spore-agent-$h
if command -v find >/dev/null 2>&1; then find "$d" -maxdepth 1 -name 'spore-agent-*' ! -name "spore-agent-$h*" -mtime +30 -exec rm -f {{}} \; 2>/dev/null; find "$d" -maxdepth 1 -name 'spore-agent-*.part' -mmin +60 -exec rm -f {{}} \; 2>/dev/null; fi
echo "$m:NEED"
t=$f.$$.part
rm -f "$t"
if command -v head >/dev/null 2>&1; then head -c $n >"$t"
elif dd if=/dev/null of=/dev/null iflag=fullblock 2>/dev/null; then dd bs=$n count=1 iflag=fullblock >"$t" 2>/dev/null
else dd bs=1 count=$n >"$t" 2>/dev/null; fi
s=$(wc -c <"$t")
if [ "$((s))" -ne $n ]; then rm -f "$t"; echo "spore: upload cut short ($((s)) of $n bytes)" >&2; exit 98; fi
v=
if command -v cksum >/dev/null 2>&1; then set -- $(cksum <"$t"); if [ "$1 $2" != "$k $n" ]; then rm -f "$t"; echo "spore: upload damaged (cksum $1, expected $k)" >&2; exit 98; fi; v=1; fi
chmod 700 "$t" && mv -f "$t" "$f" || {{ rm -f "$t"; echo "spore: can't install the agent in $d" >&2; exit 99; }}
if [ -n "$v" ]; then set -- $(ls -ldi "$f" 2>/dev/null); [ -n "$1" ] && {{ rm -f "$f.ok"; echo "$1" >"$f.ok"; }} 2>/dev/null; fi
exec "$f" {argv}
"#,
        hash = image.hash(),
        size = image.bytes().len(),
        cksum = image.cksum(),
        marker = marker(image),
    )
}

/// The sudo prompt spore asks for, so it can tell a password prompt from
/// anything else on stderr.
const PROMPT: &str = "spore-become-password:";

/// The command that runs the bootstrap script through the connection
/// method `how` describes.
pub fn method_command(how: &ConnectArgs, image: &Image, args: &AgentArgs) -> Result<Command, String> {
    let script = script(image, args);
    let user = how.user.as_deref();
    let need_host = || how.host.clone().filter(|h| !h.is_empty()).ok_or(format!("{}: no host given", how.method));
    let cmd = match how.method.as_str() {
        "local" => {
            let mut cmd = Command::new("sh");
            cmd.arg("-c").arg(script);
            cmd
        }
        "ssh" => {
            let host = need_host()?;
            let mut cmd = Command::new("ssh");
            if let Some(cfg) = &how.ssh_config {
                cmd.arg("-F").arg(cfg);
            }
            // ssh takes the first value given for an option: the caller's
            // options come before our defaults so they can override them.
            for o in &how.ssh_options {
                cmd.arg("-o").arg(o);
            }
            let secs = how.connect_timeout_ms.div_ceil(1000).max(1);
            cmd.args(["-o", "BatchMode=yes", "-o"]).arg(format!("ConnectTimeout={secs}")).arg("-T");
            if let Some(port) = how.port {
                cmd.arg("-p").arg(port.to_string());
            }
            if let Some(u) = user {
                cmd.arg("-l").arg(u);
            }
            cmd.arg("--").arg(host).arg(format!("sh -c {}", sh_quote(&script)));
            cmd
        }
        "sudo" => {
            let mut cmd = Command::new("sudo");
            if how.password.is_some() {
                cmd.args(["-S", "-p", PROMPT]);
            } else {
                cmd.arg("-n");
            }
            cmd.args(["-H", "-u", user.unwrap_or("root"), "--", "sh", "-c"]).arg(script);
            cmd
        }
        "su" => {
            let mut cmd = Command::new("su");
            cmd.args(["-s", "/bin/sh", user.unwrap_or("root"), "-c"]).arg(script);
            cmd
        }
        "doas" => {
            let mut cmd = Command::new("doas");
            if how.password.is_none() {
                cmd.arg("-n");
            }
            cmd.args(["-u", user.unwrap_or("root"), "sh", "-c"]).arg(script);
            cmd
        }
        "docker" | "podman" => {
            let container = need_host()?;
            let mut cmd = Command::new(&how.method);
            cmd.args(["exec", "-i"]);
            if let Some(u) = user {
                cmd.args(["-u", u]);
            }
            cmd.arg("--").arg(container).args(["sh", "-c"]).arg(script);
            cmd
        }
        other => return Err(format!("unknown connection method {other:?}")),
    };
    Ok(cmd)
}

/// Name the cause of a failed connection from what the remote printed.
fn classify(method: &str, last_words: &[String]) -> Option<&'static str> {
    let said = |needle: &str| last_words.iter().any(|l| l.contains(needle));
    if said("Host key verification failed") || said("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        Some("host key rejected")
    } else if said("Permission denied") || said("Too many authentication failures") {
        Some("authentication failed")
    } else if said("Could not resolve hostname")
        || said("Connection refused")
        || said("No route to host")
        || said("Network is unreachable")
        || said("Connection timed out")
        || said("Operation timed out")
    {
        Some("host unreachable")
    } else if said("a password is required") || said("a terminal is required") || said("must be run from a terminal") {
        Some(match method {
            "sudo" => "sudo needs a password (use --ask-become-pass)",
            _ => "a password is required (use --ask-become-pass)",
        })
    } else if said("incorrect password") || said("Authentication failure") || said("Authentication failed") {
        Some("wrong password")
    } else if said("is not in the sudoers file") || said("is not allowed to") || said("Operation not permitted") {
        Some("not allowed to become that user")
    } else if said("No such container") || said("is not running") {
        Some("no such running container")
    } else if said("no writable exec directory") {
        Some("no writable exec directory")
    } else if said("upload cut short") {
        Some("upload cut short")
    } else if said("upload damaged") {
        Some("upload damaged")
    } else {
        None
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

/// End a connection process (its whole group) and reap it.
pub(crate) fn kill_and_reap(child: &mut Child) {
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
            keepalive_ms: 1500,
            keepalive_misses: 3,
        };
        assert_eq!(AgentArgs::parse(a.to_argv()).unwrap(), a);
        assert!(AgentArgs::parse(vec!["--bogus=1".to_string()]).is_err());
        assert!(AgentArgs::parse(Vec::<String>::new()).is_err());
    }

    #[test]
    fn the_script_is_one_line_of_valid_sh() {
        let image = Image::new(b"not really an agent".to_vec());
        let args = AgentArgs::parse(vec!["--id=1".to_string(), "--parents=0".to_string()]).unwrap();
        let text = script(&image, &args);
        assert!(!text.contains('\n'));
        let checked = std::process::Command::new("sh").args(["-n", "-c", &text]).status().unwrap();
        assert!(checked.success(), "sh -n rejects: {text}");
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("--name=a/b:c"), "--name=a/b:c");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
