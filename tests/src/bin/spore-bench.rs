//! `make bench`: spore's timings, each beside a baseline measured in the
//! same run. Figures go to stdout as a small table.
//!
//! - `spore run local -- true` (the release CLI, end to end) beside
//!   `sh -c true` spawned the same way;
//! - 1,000 sequential pings to `local` and to `local/local`, and 1,000
//!   pipelined ones, beside a pipe round trip to a `cat` child;
//! - a 1 GiB `spore put` and `spore get`, with the peak memory of the CLI,
//!   beside `cp` of the same file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "benchmark tool")]

use spore::Router;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn release_spore() -> PathBuf {
    let p = spore_tests::target_dir().join("release/spore");
    assert!(p.is_file(), "{} missing: `make bench` builds it", p.display());
    p
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Run a command to completion; wall time and peak RSS (KiB) of the child.
fn timed(cmd: &mut Command) -> (Duration, i64) {
    let start = Instant::now();
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().unwrap();
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: rusage is plain old data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `usage` are valid for writes; pid is our child.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{cmd:?} failed: {status}");
    std::mem::forget(child);
    (start.elapsed(), usage.ru_maxrss)
}

fn row(what: &str, spore: String, baseline: &str, base: String) {
    println!("| {what:<44} | {spore:>14} | {baseline:<26} | {base:>12} |");
}

fn main() {
    spore_tests::init_logger();
    log::set_max_level(log::LevelFilter::Warn);
    let spore = release_spore();
    println!(
        "| measurement                                  |          spore | baseline                   |              |"
    );
    println!(
        "|----------------------------------------------|---------------:|----------------------------|-------------:|"
    );

    // 1. End to end CLI.
    let runs = 30;
    let mut sp = Vec::new();
    let mut sh = Vec::new();
    for _ in 0..runs {
        sp.push(timed(Command::new(&spore).args(["run", "local", "--", "true"])).0);
        sh.push(timed(Command::new("sh").args(["-c", "true"])).0);
    }
    row("`spore run local -- true` (median of 30)", ms(median(sp)), "`sh -c true`", ms(median(sh)));
    let mut sp2 = Vec::new();
    for _ in 0..10 {
        sp2.push(timed(Command::new(&spore).args(["run", "local/local", "--", "true"])).0);
    }
    row("`spore run local/local -- true` (median of 10)", ms(median(sp2)), "", String::new());

    // 1b. Over ssh to a loopback sshd, beside plain ssh.
    let sshd = spore_tests::sshd::Sshd::start();
    let cfg = sshd.config_str();
    let xdg_dir = sshd.dir.join("xdg");
    let xdg = format!("SetEnv=XDG_RUNTIME_DIR={}", xdg_dir.display());
    let spore_ssh = || {
        let mut c = Command::new(&spore);
        c.args(["-F", &cfg, "-o", &xdg, "run", "spore-test", "--", "true"]);
        c
    };
    let (mut hit, mut miss, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        let _ = std::fs::remove_dir_all(&xdg_dir);
        miss.push(timed(&mut spore_ssh()).0);
        hit.push(timed(&mut spore_ssh()).0);
        plain.push(timed(Command::new("ssh").args(["-F", &cfg, "spore-test", "true"])).0);
    }
    row("`spore run host -- true`, ssh, cache hit", ms(median(hit)), "`ssh host true`", ms(median(plain)));
    row("`spore run host -- true`, ssh, cache miss", ms(median(miss)), "", String::new());
    drop(sshd);

    // 2. Pings.
    let router = Router::new().unwrap();
    let a = router.local().unwrap();
    let b = a.connect("local").unwrap();
    for ctx in [&a, &b] {
        let start = Instant::now();
        for _ in 0..1000 {
            ctx.ping().unwrap();
        }
        let seq = start.elapsed();
        let start = Instant::now();
        let pending: Vec<_> = (0..1000).map(|_| ctx.call_async(br#"{"op":"ping"}"#.to_vec())).collect();
        for p in pending {
            p.wait().unwrap();
        }
        let par = start.elapsed();
        let base = pipe_round_trips(1000);
        row(&format!("1,000 pings to {} (sequential)", ctx.name()), ms(seq), "1,000 pipe round trips", ms(base));
        row(&format!("1,000 pings to {} (pipelined)", ctx.name()), ms(par), "", String::new());
    }
    let start = Instant::now();
    router.shutdown();
    row("Router::shutdown, tree local/local", ms(start.elapsed()), "", String::new());
    drop((a, b, router));

    // 3. A GiB each way.
    let dir = std::env::temp_dir().join(format!("spore-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("big");
    make_file(&big, 1 << 30);
    let put_to = dir.join("put");
    let get_to = dir.join("get");
    let cp_to = dir.join("cp");
    let (put, put_rss) = timed(Command::new(&spore).args(["put", "local"]).arg(&big).arg(&put_to));
    let (get, get_rss) = timed(Command::new(&spore).args(["get", "local"]).arg(&put_to).arg(&get_to));
    let (cp, cp_rss) = timed(Command::new("cp").arg(&big).arg(&cp_to));
    assert!(same(&big, &get_to), "the round trip changed the file");
    let rate = |d: Duration| format!("{:.0} MiB/s", 1024.0 / d.as_secs_f64());
    row(
        "`spore put local` 1 GiB",
        format!("{} {}", ms(put), rate(put)),
        "`cp` 1 GiB",
        format!("{} {}", ms(cp), rate(cp)),
    );
    row("`spore get local` 1 GiB", format!("{} {}", ms(get), rate(get)), "", String::new());
    row("peak RSS of the CLI: put / get", format!("{put_rss} / {get_rss} KiB"), "`cp`", format!("{cp_rss} KiB"));
    let _ = std::fs::remove_dir_all(&dir);
    let agent = spore_tests::agent_path();
    println!("\nagent binary: {} bytes ({})", std::fs::metadata(&agent).unwrap().len(), agent.display());
}

/// Baseline for a ping: one write and one read through a pipe to `cat`.
fn pipe_round_trips(n: usize) -> Duration {
    let mut cat = Command::new("cat").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut w = cat.stdin.take().unwrap();
    let mut r = cat.stdout.take().unwrap();
    let msg = [7u8; 41];
    let mut buf = [0u8; 41];
    let start = Instant::now();
    for _ in 0..n {
        w.write_all(&msg).unwrap();
        r.read_exact(&mut buf).unwrap();
    }
    let took = start.elapsed();
    drop(w);
    cat.wait().unwrap();
    took
}

fn make_file(path: &Path, len: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut src = spore_tests::PatternReader::new(len, 99);
    std::io::copy(&mut src, &mut f).unwrap();
    f.flush().unwrap();
}

fn same(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = fa.read(&mut ba).unwrap();
        fb.read_exact(&mut bb[..na]).unwrap();
        if ba[..na] != bb[..na] {
            return false;
        }
        if na == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
    }
}
