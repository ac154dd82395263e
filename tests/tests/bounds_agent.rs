//! An agent under floods, driven by a raw parent: this test speaks the
//! protocol on the agent's own pipes, so it can pipeline 100,000 calls and
//! then stop reading, as no well-behaved master would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore_agent::bootstrap::AgentArgs;
use spore_protocol::body::{self, LogRecord};
use spore_protocol::{handle, Decoder, Message, DEFAULT_MAX_MESSAGE};
use spore_tests::{agent_path, rss_kib, test_agent_path, LeakGuard};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const ID: u32 = 1;

/// An agent with this test as its parent.
struct RawParent {
    child: Child,
    to: Option<ChildStdin>,
    from: ChildStdout,
    decoder: Decoder,
}

impl RawParent {
    fn start(bin: std::path::PathBuf, uid: Option<(u32, u32)>, nproc: Option<u64>) -> RawParent {
        let args = AgentArgs {
            id: ID,
            name: "flooded".into(),
            parent_ids: vec![0],
            log_level: 3,
            max_message: DEFAULT_MAX_MESSAGE,
            grace_ms: 1000,
            keepalive_ms: 0,
            keepalive_misses: 3,
            cwd: None,
        };
        let mut cmd = Command::new(bin);
        cmd.args(args.to_argv()).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        if let Some((uid, gid)) = uid {
            cmd.uid(uid).gid(gid);
        }
        if let Some(n) = nproc {
            // SAFETY: setrlimit between fork and exec touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
                    if libc::setrlimit(libc::RLIMIT_NPROC, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().unwrap();
        let to = child.stdin.take();
        let from = child.stdout.take().unwrap();
        let mut p = RawParent { child, to, from, decoder: Decoder::new(DEFAULT_MAX_MESSAGE) };
        let hello = p.next(Instant::now() + Duration::from_secs(10)).expect("no hello");
        assert_eq!(hello.header.handle, handle::HELLO);
        p
    }

    fn call(op: &str, reply_to: u32) -> Vec<u8> {
        let mut m = Message::new(ID, handle::CALL_FUNCTION, op.as_bytes().to_vec());
        m.header.reply_to = reply_to;
        m.encode()
    }

    /// The next message (blocking reads; the caller bounds the wait by
    /// what it sent).
    fn next(&mut self, deadline: Instant) -> Option<Message> {
        let mut buf = [0u8; 65536];
        loop {
            if let Some(m) = self.decoder.next().unwrap() {
                return Some(m);
            }
            if Instant::now() > deadline {
                return None;
            }
            let n = self.from.read(&mut buf).unwrap();
            if n == 0 {
                return None;
            }
            self.decoder.push(&buf[..n]);
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn finish(mut self) {
        drop(self.to.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the agent did not end after its parent's EOF");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn pipelined_calls_from_a_parent_that_stops_reading_stay_bounded() {
    const CALLS: u32 = 100_000;
    let guard = LeakGuard::new();
    let mut p = RawParent::start(agent_path(), None, None);
    let pid = p.pid();
    let mut to = p.to.take().unwrap();
    // The writer blocks once the agent stops reading us: a thread of its own.
    let writer = std::thread::spawn(move || {
        let mut batch = Vec::new();
        for i in 0..CALLS {
            batch.extend_from_slice(&RawParent::call(r#"{"op":"ping"}"#, 1000 + i));
            if batch.len() > 64 * 1024 {
                to.write_all(&batch).unwrap();
                batch.clear();
            }
        }
        to.write_all(&batch).unwrap();
        to
    });
    // We read nothing for 5 s, watching the agent.
    let (mut max_threads, mut max_rss) = (0, 0);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        max_threads = max_threads.max(threads(pid));
        max_rss = max_rss.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("while the parent read nothing: at most {max_threads} threads, {max_rss} KiB RSS");
    assert!(max_threads <= spore_agent_pool() + 6, "{max_threads} threads");
    assert!(max_rss <= 16 * 1024, "{max_rss} KiB RSS");
    // Now read: every call is answered, in bounded time.
    let mut answered = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered < CALLS {
        let m = p.next(deadline).unwrap_or_else(|| panic!("only {answered} of {CALLS} calls answered"));
        if m.header.handle >= 1000 {
            assert!(
                m.is_end() && !m.is_dead(),
                "call {} failed: {}",
                m.header.handle,
                String::from_utf8_lossy(&m.body)
            );
            answered += 1;
        }
    }
    let to = writer.join().unwrap();
    p.to = Some(to);
    p.finish();
    guard.check();
}

fn spore_agent_pool() -> usize {
    16
}

#[test]
fn a_log_flood_to_a_parent_that_stops_reading_is_dropped_and_counted() {
    let guard = LeakGuard::new();
    let mut p = RawParent::start(test_agent_path(), None, None);
    let pid = p.pid();
    // Two million log records, while we read nothing for 3 s.
    let burst = r#"{"op":"burst","records":2000000,"stderr_bytes":0}"#;
    p.to.as_mut().unwrap().write_all(&RawParent::call(burst, 1000)).unwrap();
    let mut max_rss = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        max_rss = max_rss.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("while the parent read nothing: at most {max_rss} KiB RSS");
    assert!(max_rss <= 16 * 1024, "{max_rss} KiB RSS");
    let (mut records, mut dropped, mut reports) = (0u64, 0u64, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ended = false;
    while !ended || records + dropped < 2_000_000 {
        let Some(m) = p.next(deadline) else { panic!("ended {ended}, {records} records, {dropped} dropped") };
        if m.header.handle == 1000 && m.is_end() {
            ended = true;
        }
        if m.header.handle == handle::FORWARD_LOG {
            let rec: LogRecord = body::from_json(&m.body, "log").unwrap();
            if let Some(n) = rec.msg.strip_suffix(" log records dropped (the stream to the parent was full)") {
                dropped += n.parse::<u64>().unwrap();
                reports += 1;
            } else {
                records += 1;
            }
        }
    }
    eprintln!("{records} records arrived, {dropped} dropped and counted in {reports} reports");
    assert!(dropped > 0 && records + dropped == 2_000_000, "{records} + {dropped}");
    p.finish();
    guard.check();
}

#[test]
fn under_a_process_limit_of_64_an_exec_after_a_flood_still_runs() {
    use spore_tests::sshd::{setup_machine, uid_of, USER_NOCACHE};
    setup_machine();
    let guard = LeakGuard::new();
    let uid = uid_of(USER_NOCACHE);
    let gid = String::from_utf8(Command::new("id").args(["-g", USER_NOCACHE]).output().unwrap().stdout).unwrap();
    let mut p = RawParent::start(agent_path(), Some((uid, gid.trim().parse().unwrap())), Some(64));
    let pid = p.pid();
    let mut flood = Vec::new();
    for i in 0..10_000 {
        flood.extend_from_slice(&RawParent::call(r#"{"op":"ping"}"#, 1000 + i));
    }
    let mut to = p.to.take().unwrap();
    let writer = std::thread::spawn(move || {
        to.write_all(&flood).unwrap();
        to
    });
    std::thread::sleep(Duration::from_secs(2));
    let mut max_threads = threads(pid);
    let mut answered = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered < 10_000 {
        let m = p.next(deadline).unwrap_or_else(|| panic!("{answered} answered"));
        if m.header.handle >= 1000 {
            assert!(m.is_end() && !m.is_dead(), "{}", String::from_utf8_lossy(&m.body));
            answered += 1;
        }
        max_threads = max_threads.max(threads(pid));
    }
    p.to = Some(writer.join().unwrap());
    let exec = r#"{"op":"exec","argv":["sh","-c","echo ran"],"stream":false,"stdin":false,"stderr_handle":0}"#;
    p.to.as_mut().unwrap().write_all(&RawParent::call(exec, 50_000)).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let reply = loop {
        let m = p.next(deadline).expect("the exec was never answered");
        if m.header.handle == 50_000 && m.is_binary() {
            out.extend_from_slice(&m.body);
        } else if m.header.handle == 50_000 && m.is_end() {
            break m;
        }
    };
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    assert!(!reply.is_dead() && text.contains("\"status\":0"), "the exec failed: {text}");
    assert_eq!(out, b"ran\n");
    eprintln!("under ulimit -u 64: at most {max_threads} threads during the flood; the exec ran");
    p.finish();
    guard.check();
}
