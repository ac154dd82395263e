//! Argument parsing, the commands, and the CLI's logger.
//!
//! Adding a command: a variant in [`Cmd`], a line in [`parse`], a function
//! `cmd_x` that returns one [`Outcome`] per target.

use miniserde::json::{Number, Object, Value};
use spore::{Command, Context, Error, Options, Router, Stream, Targets};
use spore_agent::logs::safe_lines;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::sync::Mutex;
use std::time::Duration;

const USAGE: &str = "\
usage: spore [OPTIONS] COMMAND ...

commands:
  run TARGET... -- PROG [ARGS...]   run a command; one target: its output and exit
                                    status pass through; several: lines prefixed
  info TARGET...                    hostname, agent arch, machine, kernel, uid, pid, version
  put TARGET... LOCAL REMOTE        copy a local file to every target
  get TARGET REMOTE LOCAL           copy a remote file here

targets: hops separated by '/', e.g. local, host, user@host:2222, bastion/db1,
  bastion/db1/sudo:postgres, docker:web1. A bare hop is ssh (the system OpenSSH
  client, so ~/.ssh/config, ProxyJump and agents work). Become: sudo, sudo:USER,
  su:USER, doas:USER. Containers: docker:NAME, podman:NAME. Targets sharing a
  prefix share its connection.

options:
  -F, --ssh-config FILE  ssh config file for the first hop (ssh -F)
  -o OPTION              ssh option for the first hop (ssh -o), repeatable;
                         BatchMode=yes unless you say otherwise
  -K, --ask-become-pass  ask once for the sudo password (from the terminal, or
                         a line of stdin without one); sent to every hop that
                         runs sudo, over the protocol only
  --json                 JSON lines; run streams an object per output chunk
                         (target, stream, and data, or data_b64 when the
                         bytes are not UTF-8), then an object per target
                         with its status
  -v, --verbose          show debug logs of the master and every agent (SPORE_LOG=debug)
  --timeout SECS         kill a command still running after SECS (run)
  --connect-timeout SECS wait this long for an agent's hello (default 30)
  --mode OCTAL           permission bits for put (default 0644)
  -h, --help             this text
  -V, --version          print the version
";

/// Exit status for failures of spore itself, like ssh.
const EXIT_SPORE: i32 = 255;

#[derive(Debug)]
enum Cmd {
    Run { targets: Vec<String>, argv: Vec<String> },
    Info { targets: Vec<String> },
    Put { targets: Vec<String>, local: String, remote: String },
    Get { target: String, remote: String, local: String },
}

#[derive(Debug)]
struct Args {
    cmd: Cmd,
    json: bool,
    verbose: u8,
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    mode: Option<u32>,
    ssh_config: Option<String>,
    ssh_options: Vec<String>,
    ask_become_pass: bool,
}

fn seconds(flag: &str, v: Option<String>) -> Result<Duration, String> {
    let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
    let s: f64 = v.parse().map_err(|_| format!("{flag}: not a number of seconds: {v:?}"))?;
    if !(0.0..=spore::router::MAX_WAIT.as_secs_f64()).contains(&s) {
        return Err(format!("{flag}: out of range: {v}"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn parse(argv: Vec<String>) -> Result<Option<Args>, String> {
    let mut json = false;
    let mut verbose = 0;
    let mut timeout = None;
    let mut connect_timeout = None;
    let mut mode = None;
    let mut ssh_config = None;
    let mut ssh_options = Vec::new();
    let mut ask_become_pass = false;
    let mut words = Vec::new();
    let mut after_dashes: Option<Vec<String>> = None;
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--" => {
                after_dashes = Some(it.by_ref().collect());
                break;
            }
            "-h" | "--help" => return Ok(None),
            "-V" | "--version" => {
                let code =
                    say(&format!("spore {}", env!("CARGO_PKG_VERSION"))).map_or_else(|e| write_failed(&e), |()| 0);
                std::process::exit(code);
            }
            "--json" => json = true,
            "-F" | "--ssh-config" => ssh_config = Some(it.next().ok_or("-F needs a file")?),
            "-o" => ssh_options.push(it.next().ok_or("-o needs an option")?),
            "-K" | "--ask-become-pass" => ask_become_pass = true,
            "-v" | "--verbose" => verbose += 1,
            "-vv" => verbose += 2,
            "--timeout" => timeout = Some(seconds("--timeout", it.next())?),
            "--connect-timeout" => connect_timeout = Some(seconds("--connect-timeout", it.next())?),
            "--mode" => {
                let v = it.next().ok_or("--mode needs a value")?;
                let bits = u32::from_str_radix(&v, 8).map_err(|_| format!("--mode: not octal: {v:?}"))?;
                // Permission bits only: a larger number is a typo, not a mode.
                if bits > 0o7777 {
                    return Err(format!("--mode: {v} is not a file mode (at most 7777)"));
                }
                mode = Some(bits);
            }
            s if s.starts_with("-o") && s.len() > 2 => ssh_options.push(s[2..].to_string()),
            s if s.starts_with("-F") && s.len() > 2 => ssh_config = Some(s[2..].to_string()),
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option {s}")),
            _ => words.push(a),
        }
    }
    let mut words = words.into_iter();
    let name = words.next().ok_or("no command given")?;
    let rest: Vec<String> = words.collect();
    let had_dashes = after_dashes.is_some();
    let cmd = match name.as_str() {
        "run" => {
            let argv = after_dashes.ok_or("run: put the command after `--`: spore run TARGET... -- PROG [ARGS...]")?;
            if rest.is_empty() || argv.is_empty() {
                return Err("run: need at least one target and a command: spore run TARGET... -- PROG [ARGS...]".into());
            }
            Cmd::Run { targets: rest, argv }
        }
        "info" if !rest.is_empty() => Cmd::Info { targets: rest },
        "put" if rest.len() >= 3 => {
            let mut rest = rest;
            let remote = rest.pop().unwrap_or_default();
            let local = rest.pop().unwrap_or_default();
            Cmd::Put { targets: rest, local, remote }
        }
        "get" if rest.len() == 3 => {
            let mut r = rest.into_iter();
            let (target, remote, local) =
                (r.next().unwrap_or_default(), r.next().unwrap_or_default(), r.next().unwrap_or_default());
            Cmd::Get { target, remote, local }
        }
        "info" | "put" | "get" => return Err(format!("{name}: wrong number of arguments")),
        other => return Err(format!("unknown command {other:?}")),
    };
    if had_dashes && !matches!(cmd, Cmd::Run { .. }) {
        return Err(format!("{name}: unexpected `--`"));
    }
    Ok(Some(Args { cmd, json, verbose, timeout, connect_timeout, mode, ssh_config, ssh_options, ask_become_pass }))
}

/// One target's result.
struct Outcome {
    target: String,
    /// Exit status contribution: 0 ok, the command's status, or 255.
    code: i32,
    json: Object,
    /// Text for the human form (already printed for `run`).
    text: Option<String>,
    error: Option<String>,
}

impl Outcome {
    fn new(target: &str) -> Outcome {
        let mut json = Object::new();
        json.insert("target".into(), Value::String(target.into()));
        Outcome { target: target.into(), code: 0, json, text: None, error: None }
    }

    fn failed(target: &str, e: &Error) -> Outcome {
        let mut o = Outcome::new(target);
        o.fail(e);
        o
    }

    fn fail(&mut self, e: &Error) {
        self.code = EXIT_SPORE;
        self.error = Some(e.to_string());
    }

    fn set(&mut self, k: &str, v: Value) {
        self.json.insert(k.into(), v);
    }
}

fn num(n: u64) -> Value {
    Value::Number(Number::U64(n))
}

fn int(n: Option<i32>) -> Value {
    n.map_or(Value::Null, |n| Value::Number(Number::I64(n.into())))
}

pub fn main() -> i32 {
    let argv = match utf8_args(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            complain(&format!("spore: {e}"));
            return 2;
        }
    };
    let args = match parse(argv) {
        Ok(Some(a)) => a,
        Ok(None) => {
            return say(USAGE.trim_end()).map_or_else(|e| write_failed(&e), |()| 0);
        }
        Err(e) => {
            complain(&format!("spore: {e}\n\n{}", USAGE.trim_end()));
            return 2;
        }
    };
    init_logger(args.verbose);
    let mut opts = Options::default();
    if let Some(t) = args.connect_timeout {
        opts.connect_timeout = t;
    }
    if args.ask_become_pass {
        match crate::tty::ask_password("become password: ") {
            Ok(pw) => opts.become_password = Some(pw),
            Err(e) => {
                complain(&format!("spore: --ask-become-pass: {e}"));
                return 2;
            }
        }
    }
    // From here on Ctrl-C means an orderly shutdown. (At the prompt it just
    // ends spore: nothing has started yet.) No thread exists before this.
    crate::signals::block();
    let router = match Router::with_options(opts) {
        Ok(r) => r,
        Err(e) => {
            complain(&format!("spore: {e}"));
            return EXIT_SPORE;
        }
    };
    crate::signals::shut_down_on_signal(router.clone());
    let targets: Vec<String> = match &args.cmd {
        Cmd::Run { targets, .. } | Cmd::Info { targets } | Cmd::Put { targets, .. } => targets.clone(),
        Cmd::Get { target, .. } => vec![target.clone()],
    };
    let mut tree = Targets::new(router.clone());
    tree.first_hop_config = args.ssh_config.clone();
    tree.first_hop_options = args.ssh_options.clone();
    let contexts = tree.open_all(&targets);
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .zip(contexts)
            .map(|(t, ctx)| {
                let args = &args;
                let many = targets.len() > 1;
                s.spawn(move || match ctx {
                    Ok(ctx) => run_one(args, t, &ctx, many),
                    Err(e) => {
                        let o = Outcome::failed(t, &e);
                        if !args.json {
                            complain(&format!("spore: {}", shown(o.error.as_deref().unwrap_or_default())));
                        }
                        o
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Outcome::failed("?", &Error::ShuttingDown))).collect()
    });
    router.shutdown();
    let mut code = 0;
    for o in &outcomes {
        code = code.max(o.code);
        let line = if args.json {
            let mut json = o.json.clone();
            json.insert("ok".into(), Value::Bool(o.error.is_none() && o.code == 0));
            if let Some(e) = &o.error {
                json.insert("error".into(), Value::String(e.clone()));
            }
            Some(miniserde::json::to_string(&Value::Object(json)))
        } else {
            o.text.clone()
        };
        if let Some(Err(e)) = line.map(|l| say(&l)) {
            return write_failed(&e);
        }
    }
    // Interrupted: the shell's status for the signal, however the calls
    // ended (they fail because of the shutdown the signal began).
    crate::signals::signalled().map_or(code, |sig| 128 + sig)
}

fn run_one(args: &Args, target: &str, ctx: &Context, many: bool) -> Outcome {
    let mut o = Outcome::new(target);
    let result = match &args.cmd {
        Cmd::Run { argv, .. } => cmd_run(args, ctx, argv, many, &mut o),
        Cmd::Info { .. } => cmd_info(ctx, &mut o),
        Cmd::Put { local, remote, .. } => cmd_put(args, ctx, local, remote, &mut o),
        Cmd::Get { remote, local, .. } => cmd_get(ctx, remote, local, &mut o),
    };
    if let Err(e) = result {
        // Local errors say what and where; the target says for whom.
        let e = match e {
            Error::Local { what, source } => Error::Local { what: format!("{target}: {what}"), source },
            Error::Usage(m) => Error::Usage(format!("{target}: {m}")),
            other => other,
        };
        if let Error::Local { source, .. } = &e {
            if source.kind() == std::io::ErrorKind::BrokenPipe {
                o.code = 128 + libc::SIGPIPE;
                return o;
            }
        }
        if !args.json {
            complain(&format!("spore: {}", shown(&e.to_string())));
        }
        o.fail(&e);
    }
    o
}

/// Lines from several targets, each prefixed with its target.
struct Prefixed<'a> {
    prefix: &'a str,
    partial: [Vec<u8>; 2],
}

static OUTPUT: Mutex<()> = Mutex::new(());

impl Prefixed<'_> {
    fn write(&mut self, which: Stream, data: &[u8], flush_all: bool) -> std::io::Result<()> {
        let idx = usize::from(which == Stream::Stderr);
        let buf = &mut self.partial[idx];
        buf.extend_from_slice(data);
        let cut = if flush_all { buf.len() } else { buf.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1) };
        if cut == 0 {
            return Ok(());
        }
        let lines: Vec<u8> = buf.drain(..cut).collect();
        let mut text = Vec::new();
        for line in lines.split_inclusive(|&b| b == b'\n') {
            text.extend_from_slice(self.prefix.as_bytes());
            text.extend_from_slice(b": ");
            text.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                text.push(b'\n');
            }
        }
        let _guard = OUTPUT.lock();
        if idx == 0 {
            std::io::stdout().write_all(&text)
        } else {
            std::io::stderr().write_all(&text)
        }
    }
}

fn cmd_run(args: &Args, ctx: &Context, argv: &[String], many: bool, o: &mut Outcome) -> spore::Result<()> {
    let mut cmd = Command::new(argv.iter().cloned());
    cmd.timeout = args.timeout;
    let status = if args.json {
        // Streamed as it comes, an object per chunk: nothing is collected.
        let target = o.target.clone();
        let mut chunks = JsonChunks::new(&target);
        let result = ctx.exec_streaming(&cmd, None, &mut |which, data| chunks.write(which, data)).and_then(|status| {
            chunks.finish().map(|()| status).map_err(|e| Error::Local { what: "write output".into(), source: e })
        });
        o.set("stdout_bytes", num(chunks.bytes[0]));
        o.set("stderr_bytes", num(chunks.bytes[1]));
        result?
    } else if many {
        let mut p = Prefixed { prefix: &o.target, partial: [Vec::new(), Vec::new()] };
        let status = ctx.exec_streaming(&cmd, None, &mut |which, data| p.write(which, data, false))?;
        let flushed = p.write(Stream::Stdout, &[], true).and_then(|()| p.write(Stream::Stderr, &[], true));
        flushed.map_err(|e| Error::Local { what: "write output".into(), source: e })?;
        status
    } else {
        // Like ssh: stdin goes to the command unless it is a terminal (or
        // it gave us the password).
        let stdin: Option<Box<dyn Read + Send>> = if std::io::stdin().is_terminal() || args.ask_become_pass {
            None
        } else {
            Some(Box::new(std::io::stdin()))
        };
        // A closed stdout (`| head`) ends the run, as it would end ssh: the
        // call is abandoned and the remote kills the command.
        ctx.exec_streaming(&cmd, stdin, &mut |which, data| match which {
            Stream::Stdout => std::io::stdout().write_all(data).and_then(|()| std::io::stdout().flush()),
            Stream::Stderr => std::io::stderr().write_all(data),
        })?
    };
    o.code = status.shell_code();
    o.set("status", int(status.code));
    o.set("signal", int(status.signal));
    o.set("timed_out", Value::Bool(status.timed_out));
    if status.timed_out && !args.json {
        complain(&format!("spore: {}: {} timed out and was killed", o.target, argv.join(" ")));
    }
    Ok(())
}

/// `--json` output of `run`: a line per chunk, `{"target":..,"stream":..,
/// "data":..}` when the bytes are UTF-8, `"data_b64"` (standard base64)
/// when not. A UTF-8 character split between two chunks is held back (at
/// most 3 bytes) and sent with the next, so text stays text.
struct JsonChunks<'a> {
    target: &'a str,
    /// Per stream: the start of a character whose end is yet to come.
    carry: [Vec<u8>; 2],
    /// Per stream: bytes received.
    bytes: [u64; 2],
    /// The line being built (reused: a chunk's worth at most).
    line: Vec<u8>,
}

impl<'a> JsonChunks<'a> {
    fn new(target: &'a str) -> JsonChunks<'a> {
        JsonChunks { target, carry: [Vec::new(), Vec::new()], bytes: [0, 0], line: Vec::new() }
    }

    fn write(&mut self, which: Stream, data: &[u8]) -> std::io::Result<()> {
        let idx = usize::from(which == Stream::Stderr);
        self.bytes[idx] += data.len() as u64;
        let joined = if self.carry[idx].is_empty() {
            data.to_vec()
        } else {
            let mut j = std::mem::take(&mut self.carry[idx]);
            j.extend_from_slice(data);
            j
        };
        match std::str::from_utf8(&joined) {
            Ok(_) => self.emit(which, &joined, true),
            Err(e) if e.error_len().is_none() => {
                // Valid up to a character cut short at the end.
                let (text, rest) = joined.split_at(e.valid_up_to());
                self.carry[idx] = rest.to_vec();
                self.emit(which, text, true)
            }
            Err(_) => self.emit(which, &joined, false),
        }
    }

    /// Send what is held back (a character the command never finished).
    fn finish(&mut self) -> std::io::Result<()> {
        for which in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut self.carry[usize::from(which == Stream::Stderr)]);
            self.emit(which, &rest, false)?;
        }
        Ok(())
    }

    fn emit(&mut self, which: Stream, data: &[u8], utf8: bool) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let line = &mut self.line;
        line.clear();
        line.extend_from_slice(b"{\"target\":");
        json_string(line, self.target.as_bytes());
        line.extend_from_slice(if which == Stream::Stdout {
            b",\"stream\":\"stdout\""
        } else {
            b",\"stream\":\"stderr\""
        });
        if utf8 {
            line.extend_from_slice(b",\"data\":");
            json_string(line, data);
        } else {
            line.extend_from_slice(b",\"data_b64\":\"");
            base64(line, data);
            line.push(b'"');
        }
        line.extend_from_slice(b"}\n");
        let _guard = OUTPUT.lock();
        let mut out = std::io::stdout().lock();
        out.write_all(line).and_then(|()| out.flush())
    }
}

/// Append `s` (UTF-8) as a JSON string, quotes included. Clean runs are
/// found eight bytes at a time and copied whole. (Written with plain
/// slice indexing: the tests run a debug build through a gibibyte.)
fn json_string(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let base = out.len();
    // At most six bytes out for one in (`\u001f`), and the quotes.
    out.resize(base + 2 + s.len() * 6, 0);
    let Some(dst) = out.get_mut(base..) else { return };
    let n = s.len();
    dst[0] = b'"';
    let mut o = 1;
    let mut i = 0;
    while i < n {
        // Skip to the first byte that needs escaping, a word at a time.
        let mut j = i;
        while j + 8 <= n
            && !needs_escape(u64::from_le_bytes([
                s[j],
                s[j + 1],
                s[j + 2],
                s[j + 3],
                s[j + 4],
                s[j + 5],
                s[j + 6],
                s[j + 7],
            ]))
        {
            j += 8;
        }
        while j < n && !matches!(s[j], 0..=0x1f | b'"' | b'\\') {
            j += 1;
        }
        dst[o..o + (j - i)].copy_from_slice(&s[i..j]);
        o += j - i;
        if j == n {
            break;
        }
        let b = s[j];
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            _ => 0,
        };
        dst[o] = b'\\';
        if short != 0 {
            dst[o + 1] = short;
            o += 2;
        } else {
            dst[o + 1] = b'u';
            dst[o + 2] = b'0';
            dst[o + 3] = b'0';
            dst[o + 4] = HEX[usize::from(b >> 4)];
            dst[o + 5] = HEX[usize::from(b & 15)];
            o += 6;
        }
        i = j + 1;
    }
    dst[o] = b'"';
    out.truncate(base + o + 1);
}

/// Does any byte of `w` need escaping in a JSON string (a control
/// character, `"` or `\`)?
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w;
    let quote = w ^ (ONES * 0x22);
    let backslash = w ^ (ONES * 0x5c);
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    (below_space | quote | backslash) & HIGH != 0
}

/// Pairs of base64 symbols for every 12 bits.
static BASE64_PAIRS: [[u8; 2]; 4096] = {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut t = [[0u8; 2]; 4096];
    let mut i = 0;
    while i < 4096 {
        t[i] = [ABC[i >> 6], ABC[i & 63]];
        i += 1;
    }
    t
};

/// Append standard base64 (RFC 4648, padded).
fn base64(out: &mut Vec<u8>, data: &[u8]) {
    let base = out.len();
    out.resize(base + data.len().div_ceil(3) * 4, b'=');
    let Some(dst) = out.get_mut(base..) else { return };
    let t = &BASE64_PAIRS;
    let (mut i, mut o) = (0, 0);
    while i + 3 <= data.len() {
        let v = (data[i] as usize) << 16 | (data[i + 1] as usize) << 8 | data[i + 2] as usize;
        let (a, b) = (t[v >> 12], t[v & 0xfff]);
        dst[o] = a[0];
        dst[o + 1] = a[1];
        dst[o + 2] = b[0];
        dst[o + 3] = b[1];
        i += 3;
        o += 4;
    }
    // One or two bytes left: their symbols, the rest stays `=`.
    if i < data.len() {
        let second = data.get(i + 1).copied().unwrap_or(0);
        let v = (data[i] as usize) << 16 | (second as usize) << 8;
        let (a, b) = (t[v >> 12], t[v & 0xfff]);
        dst[o] = a[0];
        dst[o + 1] = a[1];
        if i + 2 == data.len() {
            dst[o + 2] = b[0];
        }
    }
}

fn cmd_info(ctx: &Context, o: &mut Outcome) -> spore::Result<()> {
    let i = ctx.info()?;
    o.text = Some(format!(
        "{}: hostname={} arch={} machine={} kernel={:?} uid={} gid={} pid={} version={}",
        o.target, i.hostname, i.arch, i.machine, i.kernel, i.uid, i.gid, i.pid, i.version
    ));
    let text = [("hostname", &i.hostname), ("arch", &i.arch), ("machine", &i.machine), ("kernel", &i.kernel)];
    for (k, v) in text.into_iter().chain([("version", &i.version)]) {
        o.set(k, Value::String(v.clone()));
    }
    o.set("uid", num(i.uid.into()));
    o.set("gid", num(i.gid.into()));
    o.set("pid", num(i.pid.into()));
    o.set("context", Value::String(i.name));
    Ok(())
}

fn cmd_put(args: &Args, ctx: &Context, local: &str, remote: &str, o: &mut Outcome) -> spore::Result<()> {
    let mut file = std::fs::File::open(local).map_err(|e| Error::Local { what: format!("open {local}"), source: e })?;
    // Without --mode, the file keeps the local file's permission bits.
    let local_mode = file.metadata().map(|m| m.permissions().mode() & 0o7777).ok();
    let mode = args.mode.or(local_mode);
    let n = ctx.write_file(remote, &mut file, mode)?;
    o.text = Some(format!("{}: wrote {n} bytes to {remote}", o.target));
    o.set("bytes", num(n));
    o.set("path", Value::String(remote.into()));
    Ok(())
}

fn cmd_get(ctx: &Context, remote: &str, local: &str, o: &mut Outcome) -> spore::Result<()> {
    // A directory as the destination gets the remote file's name.
    let mut dest = std::path::PathBuf::from(local);
    if local.ends_with('/') || dest.is_dir() {
        let name = std::path::Path::new(remote)
            .file_name()
            .ok_or_else(|| Error::Usage(format!("get: {remote:?} names no file to put in {local}")))?;
        dest.push(name);
    }
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Into a private temporary name beside the destination (created new,
    // never through a symlink), renamed when complete: a failed transfer
    // never leaves a half file under the real name.
    let tmp = dir.join(format!(".{name}.spore-{}", std::process::id()));
    let local_err = |what: String| move |e| Error::Local { what, source: e };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(local_err(format!("create {}", tmp.display())))?;
    let mut fetch = || -> spore::Result<u64> {
        let reply = {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut file);
            // A failed write names the file it was for (a full disk, say).
            let reply = ctx.download(remote, &mut w).map_err(|e| match e {
                Error::Local { source, .. } => Error::Local { what: format!("write {}", dest.display()), source },
                other => other,
            })?;
            w.flush().map_err(local_err(format!("write {}", dest.display())))?;
            reply
        };
        file.set_permissions(std::fs::Permissions::from_mode(reply.mode & 0o7777))
            .map_err(local_err(format!("chmod {}", dest.display())))?;
        file.sync_all().map_err(local_err(format!("sync {}", dest.display())))?;
        std::fs::rename(&tmp, &dest).map_err(local_err(format!("rename into {}", dest.display())))?;
        Ok(reply.size)
    };
    let n = match fetch() {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    o.text = Some(format!("{}: read {n} bytes into {}", o.target, dest.display()));
    o.set("bytes", num(n));
    o.set("path", Value::String(dest.display().to_string()));
    Ok(())
}

/// Text that may hold a remote's words, fit for a terminal: control
/// characters shown escaped (`\x1b`), lines kept.
fn shown(text: &str) -> String {
    safe_lines(text).join("\n")
}

/// Writes `LEVEL [context] message` to stderr (a line each, control
/// characters escaped); remote records arrive with
/// the target `spore@PATH`.
struct CliLogger;

impl log::Log for CliLogger {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        meta.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let target = record.target();
        let (context, module) = match target.strip_prefix("spore@") {
            Some(path) => (path, record.module_path().unwrap_or_default()),
            None => ("master", target),
        };
        let mut text = String::new();
        for line in safe_lines(&record.args().to_string()) {
            text.push_str(&format!("{:5} [{context}] {module}: {line}\n", record.level()));
        }
        let _guard = OUTPUT.lock();
        let _ = std::io::stderr().write_all(text.as_bytes());
    }

    fn flush(&self) {}
}

/// The arguments as text, or which one is not: commands, arguments and
/// paths travel as JSON strings, which can't carry other bytes, so such an
/// argument is refused here, named (escaped), not mangled or a panic.
fn utf8_args(args: impl Iterator<Item = std::ffi::OsString>) -> Result<Vec<String>, String> {
    args.enumerate()
        .map(|(i, a)| {
            a.into_string().map_err(|a| {
                let bytes = std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str()).to_vec();
                let shown =
                    bytes.iter().flat_map(|&b| std::ascii::escape_default(b)).map(char::from).collect::<String>();
                format!(
                    "argument {} ({shown}) is not UTF-8: spore carries commands, arguments and paths as text",
                    i + 1
                )
            })
        })
        .collect()
}

/// A line for stdout. A failed write ends the run: a reader that went
/// away (`| head`) as a pipe would end it, anything else with one line.
fn say(text: &str) -> std::io::Result<()> {
    let _guard = OUTPUT.lock();
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush())
}

/// A line for stderr. When stderr itself is gone there is nowhere left to
/// say anything: it is let be, never a panic.
fn complain(text: &str) {
    let _guard = OUTPUT.lock();
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// The exit status for output that could not be written, said once.
fn write_failed(e: &std::io::Error) -> i32 {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return 128 + libc::SIGPIPE;
    }
    complain(&format!("spore: write the output: {e}"));
    EXIT_SPORE
}

fn init_logger(verbose: u8) {
    let from_env = std::env::var("SPORE_LOG").ok().and_then(|v| v.parse::<log::LevelFilter>().ok());
    let level = match verbose {
        0 => from_env.unwrap_or(log::LevelFilter::Warn),
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    if log::set_logger(&CliLogger).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Option<Args>, String> {
        parse(s.split_whitespace().map(String::from).collect())
    }

    #[test]
    fn parses_commands() {
        let a = p("run local local/local -- sh -c true").unwrap().unwrap();
        assert!(matches!(a.cmd, Cmd::Run { ref targets, ref argv } if targets.len() == 2 && argv.len() == 3));
        let a = p("-F cfg -o Port=22 -oUser=x -K run host -- true").unwrap().unwrap();
        assert_eq!(a.ssh_config.as_deref(), Some("cfg"));
        assert_eq!(a.ssh_options, vec!["Port=22", "User=x"]);
        assert!(a.ask_become_pass);
        assert!(p("put local a /tmp/b --mode 7777777").unwrap_err().contains("not a file mode"));
        assert!(p("put local a /tmp/b --mode 7777").is_ok());
        let a = p("--json put local a /tmp/b --mode 600").unwrap().unwrap();
        assert!(a.json);
        assert_eq!(a.mode, Some(0o600));
        assert!(p("run local").is_err());
        assert!(p("get local a").is_err());
        assert!(p("frobnicate local").is_err());
        assert!(p("--help").unwrap().is_none());
    }
}
