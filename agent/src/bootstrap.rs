//! Starting an agent at the far end of a connection: the agent's image and
//! command line, the `sh -c` script and the connection method's command.
//! The handshake that follows (HAVE/NEED, upload, hello) is in
//! [`crate::handshake`]. The master and every intermediate agent use this
//! same code.

use crate::images::{machines, Images, OWN_ARCH};
use crate::spawn::Command;
use spore_protocol::body::{ConnectArgs, ImageInfo};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

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
    /// The directory the bootstrap started in: the script runs the agent
    /// from inside its cache directory (so the checks and the `exec` see
    /// the same one) and passes this (`--cwd=`) for the agent to return
    /// to. Not part of [`AgentArgs::to_argv`]: the script adds it.
    pub cwd: Option<OsString>,
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
    pub fn parse<I: IntoIterator<Item = T>, T: Into<OsString>>(args: I) -> Result<AgentArgs, String> {
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
            cwd: None,
        };
        for arg in args {
            let arg: OsString = arg.into();
            // A directory is bytes on Unix; everything else spore wrote.
            if let Some(dir) = arg.as_bytes().strip_prefix(b"--cwd=") {
                a.cwd = Some(std::ffi::OsStr::from_bytes(dir).to_os_string());
                continue;
            }
            let arg = arg
                .into_string()
                .map_err(|a| format!("argument {} is not UTF-8", crate::logs::quoted(&a.to_string_lossy())))?;
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

/// The marker token for these images: unlikely in any shell start-up noise.
pub(crate) fn marker(images: &[ImageInfo]) -> String {
    let first = images.first().map_or("", |i| i.hash.as_str());
    format!("spore-{}", first.get(..16).unwrap_or("0000000000000000"))
}

/// The images a script offers: for a method that stays on this host
/// (`local`, `sudo`, `su`, `doas`) only our own architecture's, when we
/// have it (no `uname` to run); for the rest, all of them.
pub fn offered<'a>(images: &'a Images, method: &str) -> Vec<&'a ImageInfo> {
    let same_host = matches!(method, "local" | "sudo" | "su" | "doas");
    match images.for_arch(OWN_ARCH) {
        Some(own) if same_host => vec![own],
        _ => images.infos().iter().collect(),
    }
}

/// The POSIX `sh` script run on the target (see DESIGN.md, Bootstrap), as
/// one line: some login shells (csh) reject newlines inside a quoted
/// remote command.
pub fn script(images: &[&ImageInfo], args: &AgentArgs) -> String {
    one_line(&script_lines(images, args))
}

/// Join a script's lines with `; `, or a space after a line that can't end
/// a command (`then`, `do`, `else`, `{`, `&&`, `||`, `|`). A `case` stays
/// on one line.
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

/// The line that sets the chosen image's variables: `r` its architecture,
/// `h` its hash, `n` its size, `k` its `cksum`, `z` its gzip size (0:
/// none). With more than one image, `uname -m` chooses; without `uname`,
/// the ELF header of `/bin/sh` (its `e_machine`, the last byte of the
/// first 19 once the shell has dropped the NULs).
fn choose(images: &[&ImageInfo]) -> String {
    let set = |i: &ImageInfo| format!("r={} h={} n={} k={} z={}", i.arch, i.hash, i.size, i.cksum, i.gz_size);
    if let [only] = images {
        return set(only);
    }
    let have: Vec<&str> = images.iter().map(|i| i.arch.as_str()).collect();
    let mut out = String::from(
        "a=$(uname -m 2>/dev/null) || a=\n\
         if [ -z \"$a\" ]; then\n\
         { e=$(head -c 19 /bin/sh || dd bs=19 count=1 if=/bin/sh); } 2>/dev/null\n\
         case $e in *'>') a=x86_64;; *\"$(printf '\\267')\") a=aarch64;; *'(') a=armv7l;; esac\n\
         fi\n\
         case $a in",
    );
    for i in images {
        out.push_str(&format!(" {}) {};;", machines(&i.arch), set(i)));
    }
    out.push_str(&format!(
        " *) echo \"spore: unsupported architecture ${{a:-unknown (no uname, and /bin/sh unreadable)}}: spore has {}\" >&2; exit 96;; esac",
        have.join(", ")
    ));
    out
}

/// The script, one command or clause a line.
///
/// Tools: a POSIX `sh` and `ls` for a cache hit; `mkdir`, `chmod`, `mv`,
/// `rm`, and `head` or `dd` to install; `uname`, `cksum`, `find`, `id` and
/// `gzip`/`gunzip` when present. A missing one is named.
///
/// Every candidate directory is entered (`cd -P`) and then judged and used
/// as `.`: whoever renames it or its parents afterwards changes nothing we
/// see, check or `exec` (`./name`). `look` runs one `ls -ldin . .. FILE`
/// (numeric ids, the C locale, UTC so no zone file is read, literal names;
/// fields split at the names,
/// so group names, `TIME_STYLE` and `BLOCK_SIZE` can't shift them).
/// `safe`: `.` is ours and writable by nobody else, and its parent is ours
/// or root's and writable by nobody else unless sticky (a directory others
/// may rename is never used). `ok`: FILE is a regular file, ours, not a
/// symlink, executable, writable by nobody else, of the right size; and
/// its stamp `FILE.ok` (ours, newer than FILE, written only after a
/// `cksum` passed) names FILE's inode, or FILE's `cksum` is right now.
/// The stamp saves the `cksum` process on every later start and can't
/// vouch for other bytes: writing to FILE sets its mtime to now, which
/// only the owner (or root) can set back, and another file renamed onto
/// the name has another inode. Without `cksum`, size and mode decide, and
/// no stamp is written.
///
/// An install first fills the file with as many zeros as the agent and
/// its gzip form take, so a full disk sends the script on to the next
/// directory before anything is read; the gzip form is kept whole before
/// it is unpacked, so a short upload and a damaged one are told apart; after the upload (exactly its length is read) a
/// failed `mv` does too, asking for the agent again (`NEED`). It never removes the cached name first: bootstraps racing on
/// a cold cache each rename a complete, checked copy over it, so whichever
/// copy a sibling's `exec` finds is whole. A directory planted at the
/// agent's name is removed when it is ours, and the candidate skipped when
/// it is not. The agent is started with `--cwd=` the directory the script
/// began in, and returns there.
fn script_lines(images: &[&ImageInfo], args: &AgentArgs) -> String {
    let argv: Vec<String> = args.to_argv().iter().map(|a| sh_quote(a)).collect();
    let run = format!("exec \"./$f\" {} \"--cwd=$o\"", argv.join(" "));
    let infos: Vec<ImageInfo> = images.iter().map(|i| (*i).clone()).collect();
    format!(
        r#"m={marker}
umask 077
{choose}
f=spore-agent-$h o=${{PWD:-/}} y=
look() {{
  j=$1 P= Q= U= I= W= S=
  set -- $(LC_ALL=C TZ=UTC0 BLOCK_SIZE=1 LS_BLOCK_SIZE=1 QUOTING_STYLE=literal ls -ldin . .. "$j" 2>/dev/null)
  while [ $# -gt 6 ]; do
    q1=$1 q2=$2 q4=$4 q6=$6
    shift 6
    while [ $# -gt 0 ]; do q=$1; shift; case $q in .|..|"$j") break;; esac; done
    case $q in .) P=$q2;; ..) Q=$q2 U=$q4;; "$j") I=$q1 W=$q2 S=$q6;; esac
  done
  return 0
}}
safe() {{
  [ -O . ] || return 1
  case $P in d????[!w]??[!w]*) ;; *) return 1;; esac
  [ -O .. ] || [ "$U" = 0 ] || return 1
  case $Q in d????[!w]??[!w]*|d????????[tT]*) ;; *) return 1;; esac
}}
ok() {{
  safe && [ -f "$f" ] && [ -O "$f" ] && [ ! -L "$f" ] && [ -x "$f" ] || return 1
  case $W in -????[!w]??[!w]*) ;; *) return 1;; esac
  [ "$S" = "$n" ] || return 1
  i=
  [ -f "$f.ok" ] && [ -O "$f.ok" ] && [ ! -L "$f.ok" ] && [ "$f.ok" -nt "$f" ] && {{ read -r i <"$f.ok"; }} 2>/dev/null
  [ -n "$i" ] && [ "$i" = "$I" ] && return 0
  command -v cksum >/dev/null 2>&1 || return 0
  set -- $(cksum <"$f")
  [ "$1 $2" = "$k $n" ] || return 1
  {{ rm -f "$f.ok"; echo "$I" >"$f.ok"; }} 2>/dev/null
  return 0
}}
for c in "${{XDG_RUNTIME_DIR:+$XDG_RUNTIME_DIR/spore}}" "${{HOME:+$HOME/.cache/spore}}"; do
  case $c in /*) cd -P "$c" 2>/dev/null && look "$f" && ok && {{ echo "$m:HAVE"; {run}; }};; esac
done
for x in ls mkdir chmod mv rm; do command -v $x >/dev/null 2>&1 || {{ echo "spore: this host has no $x, which the bootstrap needs" >&2; exit 95; }}; done
command -v head >/dev/null 2>&1 || command -v dd >/dev/null 2>&1 || {{ echo "spore: this host has neither head nor dd, which the bootstrap needs" >&2; exit 95; }}
g=plain x=$n
if command -v head >/dev/null 2>&1; then rd() {{ head -c $x; }}
elif dd if=/dev/null of=/dev/null iflag=fullblock 2>/dev/null; then rd() {{ dd bs=$x count=1 iflag=fullblock 2>/dev/null; }}
else rd() {{ dd bs=1 count=$x 2>/dev/null; }}; fi
if [ "$z" -gt 0 ] && command -v gzip >/dev/null 2>&1; then g=gz x=$z; un() {{ gzip -dc; }}
elif [ "$z" -gt 0 ] && command -v gunzip >/dev/null 2>&1; then g=gz x=$z; un() {{ gunzip -c; }}; fi
u=$(id -u 2>/dev/null) || u=x
for c in "${{XDG_RUNTIME_DIR:+$XDG_RUNTIME_DIR/spore}}" "${{HOME:+$HOME/.cache/spore}}" /tmp/spore-$u /var/tmp/spore-$u /dev/shm/spore-$u; do
  case $c in /*) ;; *) continue;; esac
  [ -d "$c" ] || mkdir -p "$c" 2>/dev/null || {{ y="$y $c: can't create it;"; continue; }}
  cd -P "$c" 2>/dev/null || {{ y="$y $c: can't enter it;"; continue; }}
  look "$f"
  if ok; then echo "$m:HAVE"; {run}; fi
  [ -O . ] && chmod 700 . 2>/dev/null || {{ y="$y $c: not ours;"; continue; }}
  look "$f"
  safe || {{ y="$y $c: others may write its parent;"; continue; }}
  if [ -d "$f" ] && [ ! -L "$f" ]; then
    [ -O "$f" ] && rm -rf "$f" 2>/dev/null || {{ y="$y $c: a directory of another user is in the way;"; continue; }}
  fi
  t=.probe.$$
  if printf '#!/bin/sh\n' >"$t" 2>/dev/null && chmod 700 "$t" && "./$t" 2>/dev/null; then rm -f "$t"; else rm -f "$t"; y="$y $c: can't write and run a file there;"; continue; fi
  if command -v find >/dev/null 2>&1; then find . -maxdepth 1 -name 'spore-agent-*' ! -name "$f*" -mtime +30 -exec rm -f {{}} \; 2>/dev/null; find . -maxdepth 1 -name 'spore-agent-*.part' -mmin +60 -exec rm -f {{}} \; 2>/dev/null; fi
  t=$f.$$.part
  rm -f "$t" "$t.gz"
  {{ if command -v dd >/dev/null 2>&1; then dd bs=$((n + z)) count=1; else head -c $((n + z)); fi; }} </dev/zero >"$t" 2>/dev/null
  look "$t"
  if [ "$S" != $((n + z)) ]; then rm -f "$t"; y="$y $c: no room for $((n + z)) bytes;"; continue; fi
  echo "$m:NEED:$r:$g"
  if [ $g = gz ]; then
    rd >"$t.gz" 2>/dev/null
    look "$t.gz"
    if [ "$S" != "$z" ]; then rm -f "$t" "$t.gz"; echo "spore: upload cut short (${{S:-0}} of $z bytes)" >&2; exit 98; fi
    un <"$t.gz" >"$t" 2>/dev/null || {{ rm -f "$t" "$t.gz"; echo "spore: upload damaged (it does not unpack)" >&2; exit 98; }}
    rm -f "$t.gz"
  else
    rd >"$t" 2>/dev/null
  fi
  look "$t"
  if [ "$S" != "$n" ]; then rm -f "$t"; echo "spore: upload cut short (${{S:-0}} of $n bytes)" >&2; exit 98; fi
  if command -v cksum >/dev/null 2>&1; then set -- $(cksum <"$t"); if [ "$1 $2" != "$k $n" ]; then rm -f "$t"; echo "spore: upload damaged (cksum $1, expected $k)" >&2; exit 98; fi; v=1; else v=; fi
  chmod 700 "$t" && mv -f "$t" "$f" || {{ rm -f "$t"; y="$y $c: can't install the agent there;"; continue; }}
  if [ -n "$v" ]; then look "$f"; [ -n "$I" ] && {{ rm -f "$f.ok"; echo "$I" >"$f.ok"; }} 2>/dev/null; fi
  {run}
done
echo "spore: no usable directory for the agent:$y" >&2
exit 97
"#,
        marker = marker(&infos),
        choose = choose(images),
    )
}

/// The sudo prompt spore asks for, so it can tell a password prompt from
/// anything else on stderr.
pub(crate) const PROMPT: &str = "spore-become-password:";

/// The command that runs the bootstrap script through the connection
/// method `how` describes.
pub fn method_command(how: &ConnectArgs, images: &Images, args: &AgentArgs) -> Result<Command, String> {
    let script = script(&offered(images, &how.method), args);
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
            // `exec`: a login shell that does not exec its last command
            // itself (dash, Debian's /bin/sh and useradd's default) would
            // stay as the agent's parent, a process per host, and print
            // "Terminated" on stderr when the agent ends itself.
            cmd.arg("--").arg(host).arg(format!("exec sh -c {}", sh_quote(&script)));
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
    let said =
        |needle: &str| last_words.iter().any(|l| crate::handshake::find(l.as_bytes(), needle.as_bytes()).is_some());
    if said("Host key verification failed") || said("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        Some("host key rejected")
    } else if said("Permission denied (")
        || said("Permission denied, please try again")
        || said("Too many authentication failures")
    {
        // ssh's own words: "Permission denied" alone may come from any
        // command (a mkdir in the install) and says nothing of the login.
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
    } else if said("which the bootstrap needs") {
        Some("the host lacks a tool the bootstrap needs")
    } else if said("spore: unsupported architecture") {
        Some("unsupported architecture")
    } else if said("no usable directory for the agent") {
        Some("no usable directory for the agent")
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
            cwd: None,
        };
        assert_eq!(AgentArgs::parse(a.to_argv()).unwrap(), a);
        let mut with_cwd = a.to_argv().into_iter().map(OsString::from).collect::<Vec<_>>();
        with_cwd.push(OsString::from(std::ffi::OsStr::from_bytes(b"--cwd=/tmp/caf\xe9 x")));
        assert_eq!(AgentArgs::parse(with_cwd).unwrap().cwd.unwrap().as_bytes(), b"/tmp/caf\xe9 x");
        assert!(AgentArgs::parse(vec!["--bogus=1".to_string()]).is_err());
        assert!(AgentArgs::parse(Vec::<String>::new()).is_err());
    }

    #[test]
    fn the_script_is_one_line_of_valid_sh() {
        let args = AgentArgs::parse(vec!["--id=1".to_string(), "--parents=0".to_string()]).unwrap();
        let image = |arch: &str| ImageInfo {
            arch: arch.into(),
            hash: "0123456789abcdef0123".into(),
            size: 10,
            cksum: 7,
            gz_size: 5,
        };
        let (x86, arm) = (image("x86_64"), image("aarch64"));
        for images in [vec![&x86], vec![&x86, &arm]] {
            let text = script(&images, &args);
            assert!(!text.contains('\n'));
            assert_eq!(text.contains("uname"), images.len() > 1);
            for shell in ["sh", "bash", "busybox"] {
                let mut cmd = std::process::Command::new(shell);
                if shell == "busybox" {
                    cmd.arg("sh");
                }
                let Ok(checked) = cmd.args(["-n", "-c", &text]).status() else { continue };
                assert!(checked.success(), "{shell} -n rejects: {text}");
            }
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("--name=a/b:c"), "--name=a/b:c");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
