//! The master's bounds: `spore run --json` streams however much a command
//! prints, `Context::exec` keeps at most its output limit, and extreme
//! durations are saturated or refused, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use miniserde::json::{Number, Object, Value};
use spore::router::MAX_WAIT;
use spore::{Command, Error, Options, Router};
use spore_tests::{peak_rss_kib, spore_bin, unbase64_into, LeakGuard};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn parse(line: &[u8]) -> Object {
    match miniserde::json::from_str::<Value>(std::str::from_utf8(line).unwrap()) {
        Ok(Value::Object(o)) => o,
        _ => panic!("not a JSON object: {}", String::from_utf8_lossy(&line[..line.len().min(200)])),
    }
}

fn number(o: &Object, k: &str) -> Option<u64> {
    match o.get(k) {
        Some(Value::Number(Number::U64(n))) => Some(*n),
        _ => None,
    }
}

/// 1 GiB of output (bytes that are not UTF-8, so every chunk is base64)
/// through `spore run --json`, read as it comes: the CLI's peak RSS stays
/// under 64 MiB, every line is a JSON object, and the bytes add up.
#[test]
fn json_carries_a_gibibyte_in_bounded_memory() {
    let guard = LeakGuard::new();
    let script = format!("head -c {GIB} /dev/zero | tr '\\000' '\\377'");
    let mut child = std::process::Command::new(spore_bin())
        .args(["--json", "run", "local", "--", "sh", "-c", &script])
        .env_remove("SPORE_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut out = BufReader::with_capacity(1 << 20, child.stdout.take().unwrap());
    let started = Instant::now();
    let (mut line, mut bytes) = (Vec::new(), Vec::new());
    let (mut total, mut chunks, mut longest, mut peak) = (0u64, 0u64, 0usize, 0u64);
    let mut last = None;
    const PREFIX: &[u8] = br#"{"target":"local","stream":"stdout","data_b64":""#;
    loop {
        line.clear();
        if out.read_until(b'\n', &mut line).unwrap() == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(100), "too slow: {total} bytes so far");
        assert_eq!(line.pop(), Some(b'\n'));
        longest = longest.max(line.len());
        if let Some(b64) = line.strip_prefix(PREFIX).and_then(|l| l.strip_suffix(br#""}"#)) {
            // Checked by hand (fast), and now and then by a JSON parser too.
            if chunks % 64 == 0 {
                let o = parse(&line);
                assert!(matches!(o.get("data_b64"), Some(Value::String(_))));
            }
            bytes.clear();
            unbase64_into(b64, &mut bytes);
            assert!(bytes.iter().all(|&b| b == 0xff), "chunk {chunks} differs");
            total += bytes.len() as u64;
            chunks += 1;
            if chunks % 256 == 0 {
                peak = peak.max(peak_rss_kib(pid));
            }
        } else {
            assert!(last.is_none(), "a line after the last: {}", String::from_utf8_lossy(&line));
            last = Some(parse(&line));
        }
    }
    peak = peak.max(peak_rss_kib(pid));
    drop(out);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    eprintln!(
        "--json: {total} bytes in {chunks} chunks (longest line {longest} bytes), CLI peak RSS {peak} KiB, {:?}",
        started.elapsed()
    );
    assert_eq!(total, GIB);
    let last = last.expect("the final object");
    assert_eq!(number(&last, "stdout_bytes"), Some(GIB));
    assert_eq!(number(&last, "stderr_bytes"), Some(0));
    assert_eq!(number(&last, "status"), Some(0));
    assert_eq!(last.get("ok").map(|v| matches!(v, Value::Bool(true))), Some(true));
    assert!(peak > 0 && peak <= 64 * 1024, "the CLI peaked at {peak} KiB");
    assert!(longest < 1 << 20, "a line of {longest} bytes");
    guard.check();
}

/// Reset this process's peak RSS (`VmHWM`) to its current RSS.
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// 200 MiB on stdout with the default limit: 64 MiB kept, the rest
/// drained, the status intact, the memory bounded.
#[test]
fn exec_keeps_at_most_its_output_limit() {
    let guard = LeakGuard::new();
    let r = Router::new().unwrap();
    let ctx = r.local().unwrap();
    reset_peak_rss();
    let before = peak_rss_kib(std::process::id());
    let cmd = Command::new(["sh", "-c", "head -c 209715200 /dev/zero; echo oops >&2; exit 3"]);
    assert_eq!(cmd.output_limit, spore::context::DEFAULT_OUTPUT_LIMIT);
    let out = ctx.exec(&cmd).unwrap();
    let peak = peak_rss_kib(std::process::id());
    eprintln!("exec: 200 MiB written, {} kept; peak RSS {before} KiB -> {peak} KiB", out.stdout.len());
    assert!(out.truncated);
    assert_eq!(out.stdout.len() as u64, 64 * MIB);
    assert!(out.stdout.iter().all(|&b| b == 0));
    assert_eq!(out.stderr, b"oops\n");
    assert_eq!(out.status.code, Some(3));
    assert!(peak - before < 96 * 1024, "collecting took {} KiB", peak - before);
    drop(out);
    // The context carries on.
    ctx.ping().unwrap();
    r.shutdown();
    drop((ctx, r));
    guard.check();
}

#[test]
fn exec_output_limit_is_exact_on_both_streams() {
    let guard = LeakGuard::new();
    let r = Router::new().unwrap();
    let ctx = r.local().unwrap();
    let script = "yes | head -c 5000000; yes e | head -c 3000000 >&2; exit 7";
    let out = ctx.exec(&Command::new(["sh", "-c", script]).output_limit(1000)).unwrap();
    assert!(out.truncated);
    assert_eq!((out.stdout.len(), out.stderr.len()), (1000, 1000));
    assert_eq!(&out.stdout[..4], b"y\ny\n");
    assert_eq!(&out.stderr[..4], b"e\ne\n");
    assert_eq!(out.status.code, Some(7));
    // Exactly the limit is not truncated; one byte more is.
    let out = ctx.exec(&Command::new(["head", "-c", "1000", "/dev/zero"]).output_limit(1000)).unwrap();
    assert!(!out.truncated && out.stdout.len() == 1000);
    let out = ctx.exec(&Command::new(["head", "-c", "1001", "/dev/zero"]).output_limit(1000)).unwrap();
    assert!(out.truncated && out.stdout.len() == 1000);
    // A limit of zero keeps nothing, and still runs the command.
    let out = ctx.exec(&Command::new(["sh", "-c", "echo hi; exit 2"]).output_limit(0)).unwrap();
    assert!(out.truncated && out.stdout.is_empty() && out.status.code == Some(2));
    r.shutdown();
    drop((ctx, r));
    guard.check();
}

/// `Duration::MAX` as a command's timeout used to panic the master after
/// the call was sent (an `Instant` overflow): now it is taken as the
/// longest timeout spore allows.
#[test]
fn an_endless_command_timeout_is_saturated() {
    let guard = LeakGuard::new();
    let r = Router::new().unwrap();
    let ctx = r.local().unwrap();
    for t in [Duration::MAX, MAX_WAIT + Duration::from_secs(1), Duration::from_secs(u64::MAX / 1000 + 1)] {
        let out = ctx.exec(&Command::new(["sh", "-c", "echo ran; exit 5"]).timeout(t)).unwrap();
        assert_eq!((out.status.code, out.status.timed_out, &out.stdout[..]), (Some(5), false, &b"ran\n"[..]), "{t:?}");
        let status = ctx.exec_streaming(&Command::new(["true"]).timeout(t), None, &mut |_, _| Ok(())).unwrap();
        assert!(status.success(), "{t:?}");
    }
    // The agent took it too.
    ctx.ping().unwrap();
    r.shutdown();
    drop((ctx, r));
    guard.check();
}

/// Durations in `Options` beyond what a clock can add are refused with an
/// error naming the option (a `shutdown_grace` of `Duration::MAX` used to
/// panic the shutdown; a `connect_timeout` of it, the connect).
#[test]
fn options_with_endless_durations_are_refused() {
    let guard = LeakGuard::new();
    type Set = fn(&mut Options);
    let cases: [(&str, Set); 3] = [
        ("shutdown_grace", |o| o.shutdown_grace = Duration::MAX),
        ("connect_timeout", |o| o.connect_timeout = Duration::MAX),
        ("keepalive", |o| o.keepalive = MAX_WAIT + Duration::from_millis(1)),
    ];
    for (name, set) in cases {
        let mut opts = Options::default();
        set(&mut opts);
        match Router::with_options(opts) {
            Err(Error::Usage(m)) => assert!(m.contains(name) && m.contains("at most 365 days"), "{m}"),
            Err(e) => panic!("{name}: {e}"),
            Ok(r) => {
                // Show what happens with it.
                let ctx = r.local().unwrap();
                ctx.exec(&Command::new(["true"])).unwrap();
                r.shutdown();
                panic!("{name} was accepted");
            }
        }
    }
    guard.check();
}

/// The longest durations allowed work end to end: a tree connects, runs,
/// and shuts down at once (its children don't need the grace).
#[test]
fn options_at_the_limit_work() {
    let guard = LeakGuard::new();
    let opts =
        Options { connect_timeout: MAX_WAIT, shutdown_grace: MAX_WAIT, keepalive: MAX_WAIT, ..Options::default() };
    let r = Router::with_options(opts).unwrap();
    let inner = r.local().unwrap().connect("local").unwrap();
    assert!(inner.exec(&Command::new(["true"])).unwrap().status.success());
    let started = Instant::now();
    r.shutdown();
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
    drop((inner, r));
    guard.check();
}
