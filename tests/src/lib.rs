//! Test harness for spore's integration tests: where the binaries are, a
//! logger that records what arrives, and a guard that fails a test which
//! leaks a process or an fd.
//!
//! Every test runs in its own process (cargo-nextest), which makes itself a
//! child subreaper: anything a test starts that outlives its parent is
//! re-parented to the test, so a walk of our descendants finds every stray.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test harness: a panic is a failed test")]

pub mod docker;
pub mod fleet;
pub mod hostile;
pub mod race;
pub mod site;
pub mod sshd;
pub mod strays;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The workspace's `target` directory.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")),
    }
}

/// A binary under `target/`, which must have been built (`how` says how).
fn built(rel: &str, how: &str) -> PathBuf {
    let p = target_dir().join(rel);
    assert!(p.is_file(), "{} is missing: run `{how}` (or `make test`)", p.display());
    p
}

/// The static agent `make` builds.
pub fn agent_path() -> PathBuf {
    built("x86_64-unknown-linux-musl/agent/spore-agent", "make agent")
}

/// The `spore` CLI (debug build).
pub fn spore_bin() -> PathBuf {
    built("debug/spore", "cargo build -p spore")
}

/// The custom test agent (built with the agent library).
pub fn test_agent_path() -> PathBuf {
    built("debug/spore-test-agent", "cargo build -p spore-tests")
}

/// The fake agent that stops reading its pipe.
pub fn deaf_agent_path() -> PathBuf {
    built("debug/spore-deaf-agent", "cargo build -p spore-tests")
}

/// Our own pid.
pub fn my_pid() -> i32 {
    std::process::id() as i32
}

fn ppid_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces, so cut at the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Command line of a process, for messages.
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_string())
        .unwrap_or_default()
}

/// Every live descendant of this process.
pub fn descendants() -> Vec<i32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() {
            if let Some(pp) = ppid_of(pid) {
                parent_of.push((pid, pp));
            }
        }
    }
    let mut found = BTreeSet::from([my_pid()]);
    loop {
        let before = found.len();
        for &(pid, pp) in &parent_of {
            if found.contains(&pp) {
                found.insert(pid);
            }
        }
        if found.len() == before {
            break;
        }
    }
    found.remove(&my_pid());
    found.into_iter().collect()
}

/// Reap any zombie children (we are a subreaper, so orphans end up ours).
pub fn reap_zombies() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG on any child; `status` is valid.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
    }
}

/// Open fds of this process, with what they point at.
pub fn open_fds() -> Vec<(i32, String)> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() {
            let what = std::fs::read_link(entry.path()).map(|p| p.display().to_string()).unwrap_or_default();
            fds.push((fd, what));
        }
    }
    // The read_dir's own fd is gone by now; drop anything that vanished.
    fds.retain(|(fd, _)| std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists());
    fds.sort();
    fds
}

/// Fails the test if it leaves a process or an fd behind. Create it first
/// thing; call [`LeakGuard::check`] last, after dropping routers.
pub struct LeakGuard {
    fds: Vec<(i32, String)>,
}

impl LeakGuard {
    /// Snapshot the fds, and become a subreaper.
    pub fn new() -> LeakGuard {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes a flag and nothing else.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        init_logger();
        LeakGuard { fds: open_fds() }
    }

    /// Wait (bounded) for every descendant to end and every fd opened since
    /// `new` to close; panic naming what is left.
    pub fn check(self) {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            reap_zombies();
            let procs = descendants();
            let fds = open_fds();
            let new_fds: Vec<_> = fds.iter().filter(|f| !self.fds.contains(f)).collect();
            if procs.is_empty() && new_fds.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let procs: Vec<String> = procs.iter().map(|&p| format!("{p} ({})", cmdline(p))).collect();
                for p in descendants() {
                    // SAFETY: kill has no memory effects; these are our own strays.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
                reap_zombies();
                panic!("leaked processes: {procs:?}; leaked fds: {new_fds:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Default for LeakGuard {
    fn default() -> Self {
        LeakGuard::new()
    }
}

/// Every log record this process saw: (level, target, message).
pub static RECORDS: Mutex<Vec<(log::Level, String, String)>> = Mutex::new(Vec::new());

struct Recorder;

impl log::Log for Recorder {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        let line = (r.level(), r.target().to_string(), r.args().to_string());
        if std::env::var_os("SPORE_TEST_LOG").is_some() {
            eprintln!("{:5} {} {}", line.0, line.1, line.2);
        }
        RECORDS.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    fn flush(&self) {}
}

/// Record every log record (debug and up) in [`RECORDS`].
pub fn init_logger() {
    if log::set_logger(&Recorder).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
}

/// Wait (bounded) for a record whose target and message contain these.
pub fn wait_for_record(target: &str, text: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let found = RECORDS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(_, t, m)| t.contains(target) && m.contains(text));
        if found {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Deterministic pseudo-random bytes (xorshift), for file contents.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A fresh, private scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// Make one.
    pub fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("spore-test-{tag}-{}", my_pid()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    /// A path inside it, as a string.
    pub fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The bytes of [`pattern`], produced as a stream (for files too big to
/// hold in memory).
pub struct PatternReader {
    x: u64,
    left: u64,
    pending: Vec<u8>,
}

impl PatternReader {
    /// `len` bytes of the pattern for `seed`.
    pub fn new(len: u64, seed: u64) -> PatternReader {
        PatternReader { x: seed | 1, left: len, pending: Vec::new() }
    }
}

impl std::io::Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = (buf.len() as u64).min(self.left) as usize;
        while self.pending.len() < want {
            let mut x = self.x;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.x = x;
            self.pending.extend_from_slice(&x.to_le_bytes());
        }
        buf[..want].copy_from_slice(&self.pending[..want]);
        self.pending.drain(..want);
        self.left -= want as u64;
        Ok(want)
    }
}

/// A sink that checks what is written against a [`PatternReader`].
pub struct PatternChecker {
    expect: PatternReader,
    scratch: Vec<u8>,
    /// Bytes checked so far.
    pub checked: u64,
    /// Offset of the first differing byte, if any.
    pub first_mismatch: Option<u64>,
}

impl PatternChecker {
    /// Expect `len` bytes of the pattern for `seed`.
    pub fn new(len: u64, seed: u64) -> PatternChecker {
        PatternChecker { expect: PatternReader::new(len, seed), scratch: Vec::new(), checked: 0, first_mismatch: None }
    }
}

impl std::io::Write for PatternChecker {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::io::Read;
        self.scratch.resize(buf.len(), 0);
        let n = self.expect.read(&mut self.scratch)?;
        if self.first_mismatch.is_none() {
            if let Some(i) = buf.iter().zip(&self.scratch[..n]).position(|(a, b)| a != b) {
                self.first_mismatch = Some(self.checked + i as u64);
            } else if n < buf.len() {
                self.first_mismatch = Some(self.checked + n as u64);
            }
        }
        self.checked += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Run the `spore` CLI (with `SPORE_LOG` unset) and collect its output;
/// fails the test if it runs longer than a minute.
pub fn run_spore(args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = std::process::Command::new(spore_bin())
        .args(args)
        .env_remove("SPORE_LOG")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        });
    }
    wait_bounded(child, Duration::from_secs(60))
}

/// Is `pid` a zombie (or gone)?
pub fn is_zombie(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rfind(')').and_then(|i| s.get(i + 2..i + 3)) == Some("Z"),
        Err(_) => true,
    }
}

/// Live processes whose command line contains `what`, on the whole
/// machine (a process that escaped our tree counts too).
pub fn running_anywhere(what: &str) -> Vec<(i32, String)> {
    reap_zombies();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|&p| !is_zombie(p))
        .map(|p| (p, cmdline(p)))
        .filter(|(_, c)| c.contains(what))
        .collect()
}

/// Wait (bounded) until no process runs `what` ([`running_anywhere`]);
/// those still running past `within` otherwise.
pub fn none_running_within(what: &str, within: Duration) -> Result<(), Vec<(i32, String)>> {
    let deadline = Instant::now() + within;
    loop {
        let left = running_anywhere(what);
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(left);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait (at most `within`) until `n` descendants of this process run
/// exactly `cmd` (their command line, arguments joined by spaces); false
/// past that.
pub fn wait_for_command(cmd: &str, n: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if descendants().into_iter().filter(|&p| cmdline(p) == cmd).count() >= n {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `child`'s status once it exits, or `None` if it still runs after
/// `within`.
pub fn exit_within(child: &mut std::process::Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait for a child (reading its stdout and stderr, so it can't block on a
/// full pipe) at most `limit`; kill it and fail the test past that.
pub fn wait_bounded(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    use std::io::Read;
    let deadline = Instant::now() + limit;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    std::process::Output { status, stdout: t1.join().unwrap(), stderr: t2.join().unwrap() }
}

/// Resident memory of a process now, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Standard base64 (padded) back to bytes, appended to `out` (for the
/// CLI's `data_b64` chunks).
pub fn unbase64_into(s: &[u8], out: &mut Vec<u8>) {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    assert_eq!(s.len() % 4, 0, "{}", String::from_utf8_lossy(s));
    for g in s.chunks_exact(4) {
        let pad = g.iter().rev().take_while(|&&c| c == b'=').count();
        let v = g.iter().take(4 - pad).enumerate().fold(0u32, |v, (i, &c)| v | u32::from(val(c)) << (18 - 6 * i));
        out.extend_from_slice(v.to_be_bytes().get(1..4 - pad).unwrap_or_default());
    }
}
