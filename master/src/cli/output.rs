//! Everything the CLI writes: per-target output (passed through, prefixed,
//! JSON chunks, gathered, or into files), lines of its own, and the logger.
//! All of it goes to a run's [`Console`]: the process's own stdin, stdout
//! and stderr, or (in a session) the client's, passed over its socket.
//! Every write takes the console's screen lock, so the progress line
//! ([`crate::cli::progress`]) is erased before and never cuts a line.

use spore::Stream;
use spore_agent::logs::safe_lines;
use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// What is on the terminal besides output: the progress line, if drawn.
#[derive(Default)]
pub struct Screen {
    /// The progress line is on stderr's last line and must be erased
    /// before anything else is written.
    pub progress_drawn: bool,
}

/// A run's stdin, stdout and stderr, and what is drawn on them.
pub struct Console {
    input: Option<File>,
    out: File,
    err: File,
    /// Whether each is a terminal, asked once.
    pub in_tty: bool,
    pub err_tty: bool,
    screen: Mutex<Screen>,
    /// The most verbose log records its run shows ([`INHERIT`]: the
    /// process's own level).
    log_level: AtomicUsize,
    /// Its run's threads opening targets just now (see [`opening`]).
    opening: AtomicUsize,
}

/// [`Console::log_level`] unset: the process's level.
const INHERIT: usize = usize::MAX;

impl Console {
    /// This process's own (copies of fds 0, 1 and 2).
    pub fn process() -> io::Result<Console> {
        let input = io::stdin().as_fd().try_clone_to_owned().ok();
        let out = io::stdout().as_fd().try_clone_to_owned()?;
        let err = io::stderr().as_fd().try_clone_to_owned()?;
        Ok(Console::new(input, out, err))
    }

    /// Another's: a session's client passes its three.
    pub fn new(input: Option<OwnedFd>, out: OwnedFd, err: OwnedFd) -> Console {
        let (input, out, err) = (input.map(File::from), File::from(out), File::from(err));
        Console {
            in_tty: input.as_ref().is_some_and(IsTerminal::is_terminal),
            err_tty: err.is_terminal(),
            input,
            out,
            err,
            screen: Mutex::new(Screen::default()),
            log_level: AtomicUsize::new(INHERIT),
            opening: AtomicUsize::new(0),
        }
    }

    /// Its run's log records: those up to `level` (the client's `-v`, in
    /// a session), not the process's.
    pub fn set_log_level(&self, level: log::LevelFilter) {
        self.log_level.store(level as usize, Ordering::Relaxed);
    }

    fn log_level(&self) -> log::LevelFilter {
        match self.log_level.load(Ordering::Relaxed) {
            INHERIT => process_level(),
            n => level_from(n),
        }
    }

    /// Log lines for stderr, the progress line erased first; a failed
    /// write is let be (there is nowhere left to say it).
    fn log_lines(&self, text: &[u8]) {
        let _screen = self.screen();
        let _ = (&self.err).write_all(text);
    }

    /// The screen, the progress line erased.
    pub fn screen(&self) -> MutexGuard<'_, Screen> {
        let mut s = self.screen.lock().unwrap_or_else(PoisonError::into_inner);
        if s.progress_drawn {
            let _ = (&self.err).write_all(b"\r\x1b[K");
            s.progress_drawn = false;
        }
        s
    }

    /// The screen as it is (to draw the progress line on it).
    pub fn screen_as_is(&self) -> MutexGuard<'_, Screen> {
        self.screen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// stderr, for the progress line (under [`Console::screen_as_is`]).
    pub fn err(&self) -> &File {
        &self.err
    }

    /// A reader of stdin (a copy of it), if there is one.
    pub fn stdin(&self) -> Option<File> {
        self.input.as_ref().and_then(|f| f.try_clone().ok())
    }
}

thread_local! {
    /// The console of the run this thread works for.
    static CURRENT: RefCell<Option<Arc<Console>>> = const { RefCell::new(None) };
}

/// The process's console, for threads of no run (the logger's callers).
static PROCESS: std::sync::OnceLock<Option<Arc<Console>>> = std::sync::OnceLock::new();

/// The console of this thread's run, if it works for one (not the
/// process's).
fn run_console() -> Option<Arc<Console>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// This thread's run is opening a target (connecting it, or what is on
/// the way) until the guard is dropped: the records of the hops on the
/// way are the run's meanwhile (see [`RunLog`]).
pub fn opening() -> Opening {
    let console = run_console();
    if let Some(c) = &console {
        c.opening.fetch_add(1, Ordering::SeqCst);
    }
    Opening(console)
}

/// See [`opening`].
pub struct Opening(Option<Arc<Console>>);

impl Drop for Opening {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.opening.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// This thread's console: its run's, else the process's.
pub fn current() -> Option<Arc<Console>> {
    CURRENT
        .with(|c| c.borrow().clone())
        .or_else(|| PROCESS.get_or_init(|| Console::process().ok().map(Arc::new)).clone())
}

/// From now on this thread writes to `console` (a run's threads each
/// adopt the run's).
pub fn adopt(console: Option<Arc<Console>>) {
    CURRENT.with(|c| *c.borrow_mut() = console);
}

/// Bytes for stdout or stderr, written whole and flushed.
pub fn emit(which: Stream, data: &[u8]) -> io::Result<()> {
    let Some(c) = current() else { return Err(io::Error::other("no console")) };
    let _screen = c.screen();
    match which {
        Stream::Stdout => (&c.out).write_all(data).and_then(|()| (&c.out).flush()),
        Stream::Stderr => (&c.err).write_all(data),
    }
}

/// A line for stdout. A failed write ends the run: a reader that went
/// away (`| head`) as a pipe would end it, anything else with one line.
pub fn say(text: &str) -> io::Result<()> {
    let mut line = Vec::with_capacity(text.len() + 1);
    line.extend_from_slice(text.as_bytes());
    line.push(b'\n');
    emit(Stream::Stdout, &line)
}

/// A line for stderr. When stderr itself is gone there is nowhere left to
/// say anything: it is let be, never a panic.
pub fn complain(text: &str) {
    let mut line = Vec::with_capacity(text.len() + 1);
    line.extend_from_slice(text.as_bytes());
    line.push(b'\n');
    let _ = emit(Stream::Stderr, &line);
}

/// The exit status for output that could not be written, said once.
pub fn write_failed(e: &io::Error) -> i32 {
    if e.kind() == io::ErrorKind::BrokenPipe {
        return 128 + libc::SIGPIPE;
    }
    complain(&format!("spore: write the output: {e}"));
    super::EXIT_SPORE
}

/// Text that may hold a remote's words, fit for a terminal: control
/// characters shown escaped (`\x1b`), lines kept.
pub fn shown(text: &str) -> String {
    safe_lines(text).join("\n")
}

/// Where one target's output goes: to the screen in one of three forms,
/// and besides into memory (`--gather`) and into files (`--out-dir`).
pub struct TargetOutput {
    pub screen: Option<ScreenForm>,
    pub gathered: Option<Gathered>,
    pub files: Option<OutFiles>,
}

pub enum ScreenForm {
    /// One target: its bytes as they are.
    Through,
    /// Several: lines prefixed with the target.
    Prefixed(Prefixed),
    /// `--json`: an object per chunk.
    Json(JsonChunks),
}

impl TargetOutput {
    pub fn write(&mut self, which: Stream, data: &[u8]) -> io::Result<()> {
        if let Some(f) = &mut self.files {
            f.write(which, data)?;
        }
        if let Some(g) = &mut self.gathered {
            g.write(data);
        }
        match &mut self.screen {
            None => Ok(()),
            Some(ScreenForm::Through) => emit(which, data),
            Some(ScreenForm::Prefixed(p)) => p.write(which, data, false),
            Some(ScreenForm::Json(j)) => j.write(which, data),
        }
    }

    /// The ends of lines (and characters) held back.
    pub fn finish(&mut self) -> io::Result<()> {
        if let Some(f) = &mut self.files {
            f.finish()?;
        }
        match &mut self.screen {
            Some(ScreenForm::Prefixed(p)) => {
                p.write(Stream::Stdout, &[], true).and_then(|()| p.write(Stream::Stderr, &[], true))
            }
            Some(ScreenForm::Json(j)) => j.finish(),
            _ => Ok(()),
        }
    }
}

/// Lines from several targets, each prefixed with its target.
pub struct Prefixed {
    prefix: String,
    partial: [Vec<u8>; 2],
}

impl Prefixed {
    pub fn new(prefix: &str) -> Prefixed {
        Prefixed { prefix: prefix.to_string(), partial: [Vec::new(), Vec::new()] }
    }

    fn write(&mut self, which: Stream, data: &[u8], flush_all: bool) -> io::Result<()> {
        let idx = usize::from(which == Stream::Stderr);
        let buf = &mut self.partial[idx];
        buf.extend_from_slice(data);
        let cut = if flush_all { buf.len() } else { buf.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1) };
        if cut == 0 {
            return Ok(());
        }
        let mut text = Vec::with_capacity(cut + 16);
        for line in buf[..cut].split_inclusive(|&b| b == b'\n') {
            text.extend_from_slice(self.prefix.as_bytes());
            text.extend_from_slice(b": ");
            text.extend_from_slice(line);
            if line.last() != Some(&b'\n') {
                text.push(b'\n');
            }
        }
        buf.drain(..cut);
        emit(which, &text)
    }
}

/// One target's output kept for `--gather`: both streams in the order
/// they came, up to a bound (the rest counted, not kept).
pub struct Gathered {
    pub bytes: Vec<u8>,
    limit: usize,
    pub dropped: u64,
}

impl Gathered {
    pub fn new(limit: usize) -> Gathered {
        Gathered { bytes: Vec::new(), limit, dropped: 0 }
    }

    fn write(&mut self, data: &[u8]) {
        let room = self.limit.saturating_sub(self.bytes.len());
        let (kept, over) = data.split_at(room.min(data.len()));
        self.bytes.extend_from_slice(kept);
        self.dropped += over.len() as u64;
    }
}

/// `--out-dir`: DIR/TARGET/stdout and DIR/TARGET/stderr, written as the
/// output comes.
pub struct OutFiles {
    dir: PathBuf,
    files: [Option<File>; 2],
}

impl OutFiles {
    /// Files in `dir`, the target's directory (made, with its parents).
    pub fn create(dir: PathBuf) -> io::Result<OutFiles> {
        std::fs::create_dir_all(&dir)?;
        let mut files = [None, None];
        for (i, name) in ["stdout", "stderr"].into_iter().enumerate() {
            files[i] = Some(File::create(dir.join(name))?);
        }
        Ok(OutFiles { dir, files })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write(&mut self, which: Stream, data: &[u8]) -> io::Result<()> {
        let idx = usize::from(which == Stream::Stderr);
        let name = if idx == 0 { "stdout" } else { "stderr" };
        match &mut self.files[idx] {
            Some(f) => f.write_all(data).map_err(|e| named(e, &self.dir.join(name))),
            None => Ok(()),
        }
    }

    fn finish(&mut self) -> io::Result<()> {
        for (i, name) in ["stdout", "stderr"].into_iter().enumerate() {
            if let Some(f) = self.files[i].take() {
                f.sync_all().map_err(|e| named(e, &self.dir.join(name)))?;
            }
        }
        Ok(())
    }
}

/// An I/O error that names its file.
pub fn named(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Would two targets' files collide: is one target a prefix of another,
/// with the longer one's next hop named like one of the `names` the
/// shorter one's directory holds (`None`: any name collides)? Returns the
/// pair.
pub fn nested<'a>(targets: &'a [String], names: Option<&[&str]>) -> Option<(&'a str, &'a str)> {
    let mut sorted: Vec<&str> = targets.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.iter().enumerate().find_map(|(i, a)| {
        sorted[i + 1..].iter().take_while(|b| b.starts_with(a)).find_map(|b| {
            let next = b[a.len()..].strip_prefix('/')?.split('/').next()?;
            names.is_none_or(|names| names.contains(&next)).then_some((*a, *b))
        })
    })
}

/// `--json` output of `run`: a line per chunk, `{"target":..,"stream":..,
/// "data":..}` when the bytes are UTF-8, `"data_b64"` (standard base64)
/// when not. A UTF-8 character split between two chunks is held back (at
/// most 3 bytes) and sent with the next, so text stays text.
pub struct JsonChunks {
    target: String,
    /// Per stream: the start of a character whose end is yet to come.
    carry: [Vec<u8>; 2],
    /// Per stream: bytes received.
    pub bytes: [u64; 2],
    /// The line being built (reused: a chunk's worth at most).
    line: Vec<u8>,
}

impl JsonChunks {
    pub fn new(target: &str) -> JsonChunks {
        JsonChunks { target: target.to_string(), carry: [Vec::new(), Vec::new()], bytes: [0, 0], line: Vec::new() }
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
            Ok(_) => self.put(which, &joined, true),
            Err(e) if e.error_len().is_none() => {
                // Valid up to a character cut short at the end.
                let (text, rest) = joined.split_at(e.valid_up_to());
                self.carry[idx] = rest.to_vec();
                self.put(which, text, true)
            }
            Err(_) => self.put(which, &joined, false),
        }
    }

    /// Send what is held back (a character the command never finished).
    fn finish(&mut self) -> std::io::Result<()> {
        for which in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut self.carry[usize::from(which == Stream::Stderr)]);
            self.put(which, &rest, false)?;
        }
        Ok(())
    }

    fn put(&mut self, which: Stream, data: &[u8], utf8: bool) -> std::io::Result<()> {
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
        emit(Stream::Stdout, line)
    }
}

/// Append `s` (UTF-8) as a JSON string, quotes included. Clean runs are
/// found eight bytes at a time and copied whole. (Written with plain
/// slice indexing: the tests run a debug build through a gibibyte.)
pub fn json_string(out: &mut Vec<u8>, s: &[u8]) {
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

/// Writes `LEVEL [context] message` to stderr (a line each, control
/// characters escaped); remote records arrive with the target
/// `spore@PATH`. A record made on a run's thread goes to that run's
/// console (at the run's level, else to the process's at its own); any
/// other to the process's console (a session's `session.log`), and a
/// remote one besides to each session run that holds PATH ([`RunLog`]).
struct CliLogger;

impl log::Log for CliLogger {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        meta.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = record.level();
        let target = record.target();
        let remote = target.strip_prefix("spore@");
        let (context, module) = match remote {
            Some(path) => (path, record.module_path().unwrap_or_default()),
            None => ("master", target),
        };
        let mut text = String::new();
        for line in safe_lines(&record.args().to_string()) {
            text.push_str(&format!("{level:5} [{context}] {module}: {line}\n"));
        }
        let run = run_console();
        match &run {
            Some(c) if level <= c.log_level() => c.log_lines(text.as_bytes()),
            _ if level <= process_level() => {
                if let Some(c) = PROCESS.get_or_init(|| Console::process().ok().map(Arc::new)) {
                    c.log_lines(text.as_bytes());
                }
            }
            _ => {}
        }
        if let (None, Some(path)) = (&run, remote) {
            RunLog::offer(path, level, &text);
        }
    }

    fn flush(&self) {}
}

/// The level `-v` (counted) asks for; without it, `spore_log`'s (the
/// `SPORE_LOG` variable), else warnings.
pub fn level_for(verbose: u8, spore_log: Option<&str>) -> log::LevelFilter {
    match verbose {
        0 => spore_log.and_then(|v| v.parse().ok()).unwrap_or(log::LevelFilter::Warn),
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

/// The process's own log level (`session.log`'s, in a session).
static PROCESS_LEVEL: AtomicUsize = AtomicUsize::new(log::LevelFilter::Warn as usize);

fn process_level() -> log::LevelFilter {
    level_from(PROCESS_LEVEL.load(Ordering::Relaxed))
}

fn level_from(n: usize) -> log::LevelFilter {
    log::LevelFilter::iter().nth(n).unwrap_or(log::LevelFilter::Trace)
}

pub fn init_logger(verbose: u8) {
    let level = level_for(verbose, std::env::var("SPORE_LOG").ok().as_deref());
    PROCESS_LEVEL.store(level as usize, Ordering::Relaxed);
    if log::set_logger(&CliLogger).is_ok() {
        log::set_max_level(level);
    }
}

// ---- a session run's share of the tree's log ---------------------------

/// The most lines a run's log holds for its client before it drops them...
const RUN_LOG_LINES: usize = 4096;
/// ...and the most bytes.
const RUN_LOG_BYTES: usize = 1 << 20;
/// How long a run's end waits for its log lines to reach its client.
const RUN_LOG_DRAIN: Duration = Duration::from_secs(2);

/// The remote records of one run in a session: those its agents forward
/// (they arrive on the router's log thread, not the run's), queued for a
/// thread of the run's own that writes them to the client's stderr, so a
/// client that does not read its stderr holds up no one else's log; past
/// the bound they are dropped and counted. A record is the run's if it
/// comes from one of its targets, or from a hop on the way to one while
/// the run is opening targets (connecting through it). Records don't say
/// which call they are about: two runs on one target each see both's.
pub struct RunLog {
    level: log::LevelFilter,
    /// The run's target paths, and the hops on the way to them (set once
    /// its targets are known).
    paths: OnceLock<(HashSet<String>, HashSet<String>)>,
    console: Arc<Console>,
    queue: Mutex<RunQueue>,
    cv: Condvar,
}

#[derive(Default)]
struct RunQueue {
    lines: VecDeque<String>,
    bytes: usize,
    dropped: u64,
    /// The run is over: no more lines, the writer ends once they are out.
    closed: bool,
    /// The writer has ended.
    done: bool,
}

/// The runs whose records are being gathered.
static RUNS: Mutex<Vec<Arc<RunLog>>> = Mutex::new(Vec::new());

impl RunLog {
    /// A run's log for the client on `console`, up to `level`, until
    /// [`RunLog::end`]: its own records (those of its threads) at once, the
    /// remote ones once [`RunLog::follow`] says whose.
    pub fn start(console: Arc<Console>, level: log::LevelFilter) -> Arc<RunLog> {
        console.set_log_level(level);
        let run =
            Arc::new(RunLog { level, paths: OnceLock::new(), console, queue: Mutex::default(), cv: Condvar::new() });
        let writer = Arc::clone(&run);
        if let Err(e) = std::thread::Builder::new().name("spore-run-log".into()).spawn(move || writer.write_out()) {
            log::warn!("session: a run's remote log records stay here: can't start its thread: {e}");
            let mut q = lock(&run.queue);
            (q.closed, q.done) = (true, true);
        }
        let mut runs = lock(&RUNS);
        runs.push(Arc::clone(&run));
        set_max_level(&runs);
        run
    }

    /// The remote records of the contexts on the way to `targets` (paths)
    /// are this run's.
    pub fn follow(&self, targets: &[&str]) {
        let mut hops = HashSet::new();
        for t in targets {
            let mut end = 0;
            for hop in t.split('/') {
                if end > 0 {
                    hops.insert(t[..end - 1].to_string());
                }
                end += hop.len() + 1;
            }
        }
        let _ = self.paths.set((targets.iter().map(|t| t.to_string()).collect(), hops));
    }

    /// Is a record of context `path` this run's?
    fn holds(&self, path: &str) -> bool {
        self.paths.get().is_some_and(|(targets, hops)| {
            targets.contains(path) || (self.console.opening.load(Ordering::SeqCst) > 0 && hops.contains(path))
        })
    }

    /// The run is over: no more records, and (waiting at most
    /// [`RUN_LOG_DRAIN`]) those queued written.
    pub fn end(&self) {
        {
            let mut runs = lock(&RUNS);
            runs.retain(|r| !std::ptr::eq(Arc::as_ptr(r), self));
            set_max_level(&runs);
        }
        let deadline = Instant::now() + RUN_LOG_DRAIN;
        let mut q = lock(&self.queue);
        q.closed = true;
        self.cv.notify_all();
        while !q.done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // A client whose stderr does not drain: its writer ends
                // when a write fails or the lines are out.
                return;
            }
            q = self.cv.wait_timeout(q, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// A remote record of context `path`, for each run that uses it.
    fn offer(path: &str, level: log::Level, text: &str) {
        let runs = lock(&RUNS);
        for run in runs.iter().filter(|r| level <= r.level && r.holds(path)) {
            let mut q = lock(&run.queue);
            if q.closed {
                continue;
            }
            if q.lines.len() >= RUN_LOG_LINES || q.bytes + text.len() > RUN_LOG_BYTES {
                q.dropped += 1;
                continue;
            }
            q.bytes += text.len();
            q.lines.push_back(text.to_string());
            run.cv.notify_all();
        }
    }

    /// The writer: the queued lines to the client, in batches.
    fn write_out(&self) {
        loop {
            let (batch, dropped, last) = {
                let mut q = lock(&self.queue);
                while q.lines.is_empty() && q.dropped == 0 && !q.closed {
                    q = self.cv.wait(q).unwrap_or_else(PoisonError::into_inner);
                }
                q.bytes = 0;
                (std::mem::take(&mut q.lines), std::mem::take(&mut q.dropped), q.closed)
            };
            let mut text: Vec<u8> = batch.into_iter().flat_map(String::into_bytes).collect();
            if dropped > 0 {
                let note =
                    format!("WARN  [master] spore: {dropped} log records of this run dropped (stderr fell behind)\n");
                text.extend_from_slice(note.as_bytes());
            }
            if !text.is_empty() {
                self.console.log_lines(&text);
            }
            if last {
                let mut q = lock(&self.queue);
                if q.lines.is_empty() && q.dropped == 0 {
                    q.done = true;
                    self.cv.notify_all();
                    return;
                }
            }
        }
    }
}

/// The logger's level: the process's, or a run's that asks for more.
fn set_max_level(runs: &[Arc<RunLog>]) {
    log::set_max_level(runs.iter().map(|r| r.level).fold(process_level(), Ord::max));
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
