//! Log lines: captured output read line by line, records from the tree
//! shown safely, and a broker thread that never waits on a logger.
//!
//! - A [`LineSource`] reads a pipe (this process's captured stdout/stderr,
//!   a connection process's stderr) and cuts it into lines, holding at most
//!   [`LINE_LIMIT`] bytes of an unfinished one.
//! - [`show`] prepares a record for the operator's screen: its tag is
//!   `spore@<path>` (the path was checked by the core against the stream
//!   it came by), control characters are shown escaped and every embedded
//!   line becomes a record of its own with the same tag.
//! - In the master, the broker thread hands records and its own lines to
//!   a [`LogQueue`] served by a thread of its own: a logger that blocks (a
//!   paused pager) or panics can't stall keepalives or the shutdown.
//!   Beyond [`QUEUE_LIMIT`] records are dropped and counted.

use crate::locks::lock;
use spore_protocol::body::LogRecord;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The longest unfinished line held; past it, the part goes out as a line.
pub const LINE_LIMIT: usize = 64 * 1024;
/// Records waiting for the master's logger, at most...
pub const QUEUE_LIMIT: usize = 65_536;
/// ...and bytes.
pub const QUEUE_BYTES: usize = 16 << 20;
/// How often a logger that lags hears how many records it lost.
const DROP_REPORT: Duration = Duration::from_secs(1);
/// The longest message shown of one record from the tree.
pub const RECORD_LIMIT: usize = 64 * 1024;

/// A pipe read as log lines.
pub(crate) struct LineSource {
    pub(crate) file: File,
    buf: Vec<u8>,
    /// The record's target (`stdout`, `stderr`, `<path>:stderr`).
    pub(crate) target: String,
    pub(crate) level: log::Level,
}

impl LineSource {
    pub(crate) fn new(file: File, target: String, level: log::Level) -> LineSource {
        LineSource { file, buf: Vec::new(), target, level }
    }

    /// Read what the pipe has and pass each complete line to `line`
    /// (with `last`, a trailing partial line too). False at EOF or error.
    pub(crate) fn drain(&mut self, last: bool, mut line: impl FnMut(&str)) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let mut open = true;
        loop {
            match (&self.file).read(&mut chunk) {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(n) => self.buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    open = false;
                    break;
                }
            }
            if self.buf.len() > LINE_LIMIT {
                break;
            }
        }
        let mut start = 0;
        while let Some(nl) = self.buf.get(start..).and_then(|rest| rest.iter().position(|&b| b == b'\n')) {
            line(&String::from_utf8_lossy(self.buf.get(start..start + nl).unwrap_or_default()));
            start += nl + 1;
        }
        self.buf.drain(..start);
        if (!open || last || self.buf.len() > LINE_LIMIT) && !self.buf.is_empty() {
            line(&String::from_utf8_lossy(&self.buf));
            self.buf.clear();
        }
        open
    }
}

/// `text` as lines fit for a terminal: split at newlines, every other
/// control character shown escaped (`\x1b`, `\r`, `\t`).
pub fn safe_lines(text: &str) -> Vec<String> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.split('\n')
        .map(|line| {
            let mut out = String::with_capacity(line.len());
            for c in line.chars() {
                match c {
                    '\t' => out.push_str("\\t"),
                    '\r' => out.push_str("\\r"),
                    c if c.is_control() => {
                        let mut buf = [0u8; 4];
                        for b in c.encode_utf8(&mut buf).bytes() {
                            out.push_str("\\x");
                            out.push(char::from(HEX[usize::from(b >> 4)]));
                            out.push(char::from(HEX[usize::from(b & 15)]));
                        }
                    }
                    c => out.push(c),
                }
            }
            out
        })
        .collect()
}

const HEX: [u8; 16] = *b"0123456789abcdef";

/// `text` in double quotes on one line, fit for a terminal: a name from the
/// wire or a command line, in a message. Like `{:?}` for the usual names
/// (a `"` or `\\` escaped, a newline shown as `\\n`, other control
/// characters as in [`safe_lines`]), without the Unicode tables `{:?}`
/// costs the static agent.
pub fn quoted(text: &str) -> String {
    let mut lines = safe_lines(&text.replace('\\', "\\\\").replace('"', "\\\""));
    if text.ends_with('\n') {
        lines.push(String::new());
    }
    format!("\"{}\"", lines.join("\\n"))
}

/// At most `limit` bytes of `text`, cut at a character boundary.
fn cut(text: &str, limit: usize) -> &str {
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

fn level_of(n: u8) -> log::Level {
    match n {
        1 => log::Level::Error,
        2 => log::Level::Warn,
        3 => log::Level::Info,
        4 => log::Level::Debug,
        _ => log::Level::Trace,
    }
}

/// One line for the logger.
struct Line {
    level: log::Level,
    target: String,
    module: String,
    text: String,
}

impl Line {
    fn size(&self) -> usize {
        self.target.len() + self.module.len() + self.text.len()
    }
}

/// A record from the tree as the lines to show: tagged `spore@<path>`.
fn record_lines(rec: &LogRecord) -> Vec<Line> {
    let target = format!("spore@{}", safe_lines(cut(&rec.name, 1024)).join("\\n"));
    let module = safe_lines(cut(&rec.target, 1024)).join("\\n");
    let mut lines = safe_lines(cut(&rec.msg, RECORD_LIMIT));
    if rec.msg.len() > RECORD_LIMIT {
        lines.push(format!("... ({} bytes of this record not shown)", rec.msg.len() - RECORD_LIMIT));
    }
    lines
        .into_iter()
        .map(|text| Line { level: level_of(rec.level), target: target.clone(), module: module.clone(), text })
        .collect()
}

fn to_logger(line: &Line) {
    log::logger().log(
        &log::Record::builder()
            .level(line.level)
            .target(&line.target)
            .module_path(Some(&line.module))
            .args(format_args!("{}", line.text))
            .build(),
    );
}

#[derive(Default)]
struct QueueState {
    lines: VecDeque<Line>,
    /// Bytes of the queued lines.
    bytes: usize,
    dropped: u64,
    closed: bool,
    /// The thread is handing a line to the logger.
    busy: bool,
}

/// Lines for the master's logger, served by a thread of its own.
pub(crate) struct LogQueue {
    state: Mutex<QueueState>,
    cv: Condvar,
}

impl LogQueue {
    /// Start the logging thread.
    pub(crate) fn start() -> io::Result<Arc<LogQueue>> {
        let q = Arc::new(LogQueue { state: Mutex::new(QueueState::default()), cv: Condvar::new() });
        let serving = q.clone();
        std::thread::Builder::new().name("spore-log".into()).spawn(move || serving.serve())?;
        Ok(q)
    }

    fn push(&self, line: Line) {
        let mut st = lock(&self.state);
        let size = line.size();
        if st.lines.len() >= QUEUE_LIMIT || st.bytes + size > QUEUE_BYTES || st.closed {
            st.dropped += 1;
            return;
        }
        st.bytes += size;
        st.lines.push_back(line);
        self.cv.notify_all();
    }

    /// Is the queue full (a record now would be dropped)?
    pub(crate) fn full(&self) -> bool {
        let st = lock(&self.state);
        st.lines.len() >= QUEUE_LIMIT || st.bytes >= QUEUE_BYTES
    }

    /// Count a record dropped without looking at it (the queue is full).
    pub(crate) fn drop_one(&self) {
        lock(&self.state).dropped += 1;
    }

    /// Show a record from the tree.
    pub(crate) fn record(&self, rec: &LogRecord) {
        for line in record_lines(rec) {
            self.push(line);
        }
    }

    fn serve(&self) {
        let mut last_report = Instant::now();
        loop {
            let (line, dropped) = {
                let mut st = lock(&self.state);
                while st.lines.is_empty() && !st.closed {
                    st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                let Some(line) = st.lines.pop_front() else { return };
                st.bytes = st.bytes.saturating_sub(line.size());
                st.busy = true;
                // The count goes out once a second while the logger lags,
                // and when it catches up.
                let report = st.lines.is_empty() || last_report.elapsed() >= DROP_REPORT;
                (line, if report { std::mem::take(&mut st.dropped) } else { 0 })
            };
            // A panicking logger loses its line, not the thread.
            let _ = std::panic::catch_unwind(|| {
                to_logger(&line);
                if dropped > 0 {
                    let text = format!("{dropped} log records dropped (the logger fell behind)");
                    to_logger(&Line { level: log::Level::Warn, target: "spore".into(), module: "spore".into(), text });
                }
            });
            if dropped > 0 {
                last_report = Instant::now();
            }
            lock(&self.state).busy = false;
            self.cv.notify_all();
        }
    }

    /// No more lines: let the thread show what is queued, waiting at most
    /// `limit` (a logger that blocks is left behind).
    pub(crate) fn close(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut st = lock(&self.state);
        st.closed = true;
        self.cv.notify_all();
        while !st.lines.is_empty() || st.busy {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            st = self.cv.wait_timeout(st, left).map_or_else(|p| p.into_inner().0, |r| r.0);
        }
    }
}

thread_local! {
    /// Set on the master's broker thread: its own lines go to the queue.
    static QUEUE: RefCell<Option<Arc<LogQueue>>> = const { RefCell::new(None) };
}

/// Send this thread's [`line`]s to `queue` (the master's broker thread).
pub(crate) fn use_queue(queue: Arc<LogQueue>) {
    QUEUE.with(|q| *q.borrow_mut() = Some(queue));
}

/// A line of the broker's own log, from module `target`: through the
/// queue on the master's broker thread, else to the logger (an agent's
/// logger only queues a message).
pub(crate) fn line(level: log::Level, target: &str, text: &str) {
    if level > log::max_level() {
        return;
    }
    let queued = QUEUE.with(|q| {
        q.borrow().as_ref().map(|q| {
            q.push(Line { level, target: target.to_string(), module: target.to_string(), text: text.to_string() })
        })
    });
    if queued.is_none() {
        to_logger(&Line { level, target: target.to_string(), module: target.to_string(), text: text.to_string() });
    }
}

/// A line of the broker's own log (see [`line`]), formatted.
macro_rules! blog {
    ($level:expr, $($arg:tt)+) => {
        $crate::logs::line($level, module_path!(), &format!($($arg)+))
    };
}
pub(crate) use blog;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_names_are_one_escaped_line() {
        assert_eq!(quoted("exec"), "\"exec\"");
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quoted("x\ny\x1b\n"), "\"x\\ny\\x1b\\n\"");
    }

    #[test]
    fn control_characters_are_escaped_and_newlines_split() {
        assert_eq!(
            safe_lines("all hosts OK\nERROR [master] fake\x1b[2J"),
            ["all hosts OK", "ERROR [master] fake\\x1b[2J"]
        );
        assert_eq!(safe_lines("a\tb\rc\u{9b}d\n"), ["a\\tb\\rc\\xc2\\x9bd"]);
        assert_eq!(safe_lines("plain"), ["plain"]);
    }

    #[test]
    fn a_record_becomes_lines_with_one_tag() {
        let rec = LogRecord { level: 1, name: "web1\x1b[2J".into(), target: "x".into(), msg: "one\ntwo".into() };
        let lines = record_lines(&rec);
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.target == "spore@web1\\x1b[2J"));
        assert_eq!((lines[0].text.as_str(), lines[1].text.as_str()), ("one", "two"));
    }

    #[test]
    fn long_lines_are_cut_and_partial_ones_kept() {
        let (r, mut w) = crate::sys::pipe().unwrap();
        crate::sys::set_nonblocking(std::os::fd::AsFd::as_fd(&r), true).unwrap();
        let mut src = LineSource::new(r, "t".into(), log::Level::Info);
        std::io::Write::write_all(&mut w, b"one\ntw").unwrap();
        let mut got = Vec::new();
        assert!(src.drain(false, |l| got.push(l.to_string())));
        assert_eq!(got, ["one"]);
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut w, &vec![b'x'; 3 * LINE_LIMIT]));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while src.drain(false, |l| got.push(l.len().to_string())) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        writer.join().unwrap().unwrap();
        // "tw" plus the x's, cut into pieces of at most the limit (+ a read).
        assert!(got.len() >= 3, "{got:?}");
        assert!(got.iter().skip(1).all(|n| n.parse::<usize>().unwrap() <= LINE_LIMIT + 16 * 1024), "{got:?}");
    }
}
