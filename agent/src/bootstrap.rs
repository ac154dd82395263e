//! Starting an agent at the far end of a connection: the agent's image and
//! command line, the `sh -c` script and the connection method's command.
//! The handshake that follows (HAVE/NEED, upload, hello) is in
//! [`crate::handshake`]. The master and every intermediate agent use this
//! same code.

use crate::spawn::Command;
use spore_protocol::body::ConnectArgs;
use spore_protocol::{hex, posix_cksum, sha256};
use std::sync::{Arc, OnceLock};

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
            let (key, value) =
                arg.split_once('=').ok_or_else(|| format!("unexpected argument {}", crate::logs::quoted(&arg)))?;
            let num = |v: &str| v.parse::<u64>().map_err(|_| format!("bad number in {}", crate::logs::quoted(&arg)));
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
    crate::shutdown::child_grace(std::time::Duration::from_millis(own_grace_ms)).as_millis() as u64
}

/// Quote for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=/.,:@%+".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The marker token for this image: unlikely in any shell start-up noise.
pub(crate) fn marker(image: &Image) -> String {
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
pub(crate) const PROMPT: &str = "spore-become-password:";

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
        other => return Err(format!("unknown connection method {}", crate::logs::quoted(other))),
    };
    Ok(cmd)
}

/// Name the cause of a failed connection from what the remote printed.
pub(crate) fn classify(method: &str, last_words: &[String]) -> Option<&'static str> {
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
