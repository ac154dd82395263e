//! `make bench`: spore against mitogen and plain ssh, side by side, in one
//! run, alternating the tools so machine noise hits both alike. Prints a
//! table and writes `bench/results/latest.{json,md}`.
//!
//! mitogen runs from a private virtualenv (`$SPORE_BENCH_PYTHON`, made by
//! `make bench`) through `bench/mitogen_bench.py`; Ansible (`ansible-core`)
//! from the same virtualenv, parallel-ssh from Debian's `pssh`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "benchmark tool")]

use spore::{Command as SporeCommand, Context, Hop, Options, Router, SshHop};
use spore_tests::sshd::Sshd;
use spore_tests::{peak_rss_kib, rss_kib, PatternReader};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Median and spread of some samples.
#[derive(Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

impl Stat {
    fn of(mut v: Vec<f64>) -> Stat {
        assert!(!v.is_empty());
        v.sort_by(|a, b| a.total_cmp(b));
        Stat { median: v[v.len() / 2], min: v[0], max: v[v.len() - 1] }
    }

    fn one(x: f64) -> Stat {
        Stat { median: x, min: x, max: x }
    }
}

#[derive(Clone, Copy)]
enum Unit {
    Secs,
    BytesPerSec,
    KiB,
    Bytes,
}

fn show(unit: Unit, x: f64) -> String {
    match unit {
        Unit::Secs if x < 1e-3 => format!("{:.1} µs", x * 1e6),
        Unit::Secs if x < 1.0 => format!("{:.2} ms", x * 1e3),
        Unit::Secs => format!("{x:.2} s"),
        Unit::BytesPerSec => format!("{:.0} MiB/s", x / (1 << 20) as f64),
        Unit::KiB => format!("{x:.0} KiB"),
        Unit::Bytes => format!("{x:.0} B"),
    }
}

fn show_stat(unit: Unit, s: &Stat) -> String {
    if s.min == s.max {
        show(unit, s.median)
    } else {
        format!("{} ({}–{})", show(unit, s.median), show(unit, s.min), show(unit, s.max))
    }
}

struct Row {
    workload: String,
    unit: Unit,
    spore: Stat,
    baseline: Option<(String, Stat)>,
    /// How much better spore is (baseline ÷ spore, or spore ÷ baseline for
    /// throughput), as the target states it.
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(&mut self, row: Row) {
        let base = row.baseline.as_ref().map(|(n, s)| format!("{n}: {}", show_stat(row.unit, s))).unwrap_or_default();
        eprintln!(
            "  {:<52} spore {:<28} {base} {}",
            row.workload,
            show_stat(row.unit, &row.spore),
            row.ratio.map(|r| format!("ratio {r:.2}")).unwrap_or_default()
        );
        self.rows.push(row);
    }

    fn markdown(&self) -> String {
        let mut md = String::from(
            "| workload | spore median (min–max) | baseline median (min–max) | ratio | target | met |\n|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            let base = r.baseline.as_ref().map(|(n, s)| format!("{n}: {}", show_stat(r.unit, s))).unwrap_or_default();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                r.workload,
                show_stat(r.unit, &r.spore),
                base,
                r.ratio.map(|x| format!("{x:.2}×")).unwrap_or_default(),
                r.target,
                match r.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "",
                }
            );
        }
        md
    }

    fn json(&self) -> String {
        use miniserde::json::{Number, Object, Value};
        let num = |x: f64| Value::Number(Number::F64(x));
        let stat = |s: &Stat| {
            let mut o = Object::new();
            o.insert("median".into(), num(s.median));
            o.insert("min".into(), num(s.min));
            o.insert("max".into(), num(s.max));
            Value::Object(o)
        };
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut o = Object::new();
                o.insert("workload".into(), Value::String(r.workload.clone()));
                let unit = match r.unit {
                    Unit::Secs => "seconds",
                    Unit::BytesPerSec => "bytes/second",
                    Unit::KiB => "KiB",
                    Unit::Bytes => "bytes",
                };
                o.insert("unit".into(), Value::String(unit.into()));
                o.insert("spore".into(), stat(&r.spore));
                if let Some((n, s)) = &r.baseline {
                    o.insert("baseline_name".into(), Value::String(n.clone()));
                    o.insert("baseline".into(), stat(s));
                }
                if let Some(x) = r.ratio {
                    o.insert("ratio".into(), num(x));
                }
                o.insert("target".into(), Value::String(r.target.clone()));
                if let Some(m) = r.met {
                    o.insert("met".into(), Value::Bool(m));
                }
                Value::Object(o)
            })
            .collect();
        miniserde::json::to_string(&Value::Array(rows.into_iter().collect()))
    }
}

fn python() -> String {
    std::env::var("SPORE_BENCH_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Run mitogen's side of a workload; its JSON output.
fn mitogen(args: &[&str]) -> miniserde::json::Object {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/mitogen_bench.py");
    let out = Command::new(python()).arg(script).args(args).stderr(Stdio::inherit()).output().expect("python");
    assert!(out.status.success(), "mitogen_bench.py {args:?} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    match miniserde::json::from_str::<miniserde::json::Value>(text.trim()).expect("json") {
        miniserde::json::Value::Object(o) => o,
        other => panic!("unexpected {other:?}"),
    }
}

fn num(o: &miniserde::json::Object, k: &str) -> f64 {
    match o.get(k) {
        Some(miniserde::json::Value::Number(n)) => match *n {
            miniserde::json::Number::F64(f) => f,
            miniserde::json::Number::I64(i) => i as f64,
            miniserde::json::Number::U64(u) => u as f64,
        },
        _ => panic!("no {k} in mitogen's answer"),
    }
}

fn samples(o: &miniserde::json::Object) -> Vec<f64> {
    match o.get("samples") {
        Some(miniserde::json::Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                miniserde::json::Value::Number(miniserde::json::Number::F64(f)) => *f,
                _ => 0.0,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

const ROUNDS: usize = 3;

fn main() {
    spore_tests::init_logger();
    log::set_max_level(log::LevelFilter::Warn);
    raise_fd_limit();
    let mut report = Report::default();
    let started = Instant::now();
    eprintln!("spore bench: spore vs mitogen {} and plain ssh, {ROUNDS} alternating rounds", mitogen_version());
    // SPORE_BENCH_ONLY=spawn,cli,wire,calls,read,ssh,fanout,agent,shutdown,fleet picks workloads.
    let only = std::env::var("SPORE_BENCH_ONLY").ok();
    let run = |name: &str| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == name));

    // 1. Start a local context and make one call.
    if run("spawn") {
        let (mut sp, mut mi) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            for _ in 0..5 {
                let r = Router::new().unwrap();
                let t = Instant::now();
                let c = r.local().unwrap();
                c.ping().unwrap();
                sp.push(secs(t.elapsed()));
                r.shutdown();
            }
            mi.extend(samples(&mitogen(&["spawn", "5"])));
        }
        let (s, m) = (Stat::of(sp), Stat::of(mi));
        let ratio = m.median / s.median;
        report.add(Row {
            workload: "spawn a local context + first call".into(),
            unit: Unit::Secs,
            spore: s,
            baseline: Some(("mitogen".into(), m)),
            ratio: Some(ratio),
            target: "≥ 30× faster than mitogen".into(),
            met: Some(ratio >= 30.0),
        });
    }

    // 1b. The whole CLI process, beside mitogen's whole process, for `true`.
    if run("cli") {
        let spore = spore_tests::target_dir().join("release/spore");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/mitogen_true.py");
        let (mut sp, mut mi) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            for _ in 0..10 {
                sp.push(secs(timed(Command::new(&spore).args(["run", "local", "--", "true"]))));
            }
            for _ in 0..2 {
                mi.push(secs(timed(Command::new(python()).arg(script))));
            }
        }
        let (s, m) = (Stat::of(sp), Stat::of(mi));
        let ratio = m.median / s.median;
        report.add(Row {
            workload: "`spore run local -- true`, whole process".into(),
            unit: Unit::Secs,
            spore: s,
            baseline: Some(("mitogen, whole process".into(), m)),
            ratio: Some(ratio),
            target: "≤ 5 ms; ≥ 60× faster than mitogen".into(),
            met: Some(s.median <= 0.005 && ratio >= 60.0),
        });
    }

    // 1c. What a cold connect sends, per architecture.
    if run("wire") {
        wire_rows(&mut report);
    }

    // 2. 10,000 no-op calls, direct and through one intermediate.
    for via in [false, true].into_iter().filter(|_| run("calls")) {
        let (mut sp, mut mi) = (Vec::new(), Vec::new());
        let r = Router::new().unwrap();
        let mut c = r.local().unwrap();
        if via {
            c = c.connect("local").unwrap();
        }
        for _ in 0..ROUNDS {
            let t = Instant::now();
            for _ in 0..10_000 {
                c.ping().unwrap();
            }
            sp.push(secs(t.elapsed()) / 10_000.0);
            let args: &[&str] = if via { &["calls", "10000", "via"] } else { &["calls", "10000"] };
            mi.push(num(&mitogen(args), "per_call"));
        }
        r.shutdown();
        let (s, m) = (Stat::of(sp), Stat::of(mi));
        let ratio = m.median / s.median;
        report.add(Row {
            workload: format!("no-op call latency, {} (10,000 calls)", if via { "local/local" } else { "local" }),
            unit: Unit::Secs,
            spore: s,
            baseline: Some(("mitogen".into(), m)),
            ratio: Some(ratio),
            target: "≥ 8× lower than mitogen".into(),
            met: Some(ratio >= 8.0),
        });
    }

    // 3. Read 1 GiB from a remote file, beside `dd | dd`.
    if run("read") {
        let dir = std::env::temp_dir().join(format!("spore-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big");
        make_file(&big, 1 << 30);
        let (mut sp, mut raw) = (Vec::new(), Vec::new());
        let r = Router::new().unwrap();
        let c = r.local().unwrap();
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let n = c.read_file(big.to_str().unwrap(), &mut Discard).unwrap();
            sp.push(n as f64 / secs(t.elapsed()));
            raw.push(
                (1u64 << 30) as f64
                    / secs(timed(Command::new("sh").arg("-c").arg(format!(
                        "dd if={} bs=1M 2>/dev/null | dd of=/dev/null bs=1M 2>/dev/null",
                        big.display()
                    )))),
            );
        }
        let peak = peak_rss_kib(c.info().unwrap().pid);
        r.shutdown();
        drop((c, r));
        let (s, b) = (Stat::of(sp), Stat::of(raw));
        let ratio = s.median / b.median;
        report.add(Row {
            workload: format!("read 1 GiB from a file on a local context (agent peak RSS {peak} KiB)"),
            unit: Unit::BytesPerSec,
            spore: s,
            baseline: Some(("`dd \\| dd`".into(), b)),
            ratio: Some(ratio),
            target: "≥ 70% of the raw pipe".into(),
            met: Some(ratio >= 0.7),
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    // 4. ssh to a loopback sshd.
    if run("ssh") {
        ssh_workloads(&mut report);
    }

    // 5. Fan-out.
    // SPORE_BENCH_FANOUT=1000 picks the sizes.
    let sizes = std::env::var("SPORE_BENCH_FANOUT").unwrap_or_else(|_| "10,100,1000".into());
    let sizes: Vec<usize> = sizes.split(',').filter_map(|n| n.trim().parse().ok()).collect();
    for n in sizes.into_iter().filter(|_| run("fanout")) {
        let (t, rss) = spore_fanout(n);
        let per = rss as f64 / n as f64;
        let mito = (n <= 100).then(|| mitogen(&["fanout", &n.to_string()]));
        report.add(Row {
            workload: format!("start {n} local contexts + one call each"),
            unit: Unit::Secs,
            spore: Stat::one(t),
            baseline: mito.as_ref().map(|o| ("mitogen".to_string(), Stat::one(num(o, "seconds")))),
            ratio: mito.as_ref().map(|o| num(o, "seconds") / t),
            target: if n == 1000 { "≤ 3 s".into() } else { String::new() },
            met: (n == 1000).then_some(t <= 3.0),
        });
        report.add(Row {
            workload: format!("  memory of {n} contexts (all agents + master)"),
            unit: Unit::KiB,
            spore: Stat::one(rss as f64),
            baseline: mito.as_ref().map(|o| ("mitogen".to_string(), Stat::one(num(o, "rss_kib")))),
            ratio: mito.as_ref().map(|o| num(o, "rss_kib") / rss as f64),
            target: format!("≤ 2 MiB per context (spore: {:.0} KiB)", per),
            met: Some(per <= 2048.0),
        });
    }

    // 6. The agent.
    if run("agent") {
        let agent = spore_tests::agent_path();
        let size = std::fs::metadata(&agent).unwrap().len();
        report.add(Row {
            workload: "agent binary, stripped".into(),
            unit: Unit::Bytes,
            spore: Stat::one(size as f64),
            baseline: None,
            ratio: None,
            target: "(budget: `make size`)".into(),
            met: None,
        });
        let r = Router::new().unwrap();
        let c = r.local().unwrap();
        let pid = c.info().unwrap().pid;
        let after_connect = rss_kib(pid);
        for _ in 0..10_000 {
            c.ping().unwrap();
        }
        let after_calls = rss_kib(pid);
        r.shutdown();
        drop((c, r));
        let m = mitogen(&["rss", "10000"]);
        for (what, spore_kib, key) in [
            ("after connect", after_connect, "after_connect_kib"),
            ("after 10,000 calls", after_calls, "after_calls_kib"),
        ] {
            let mk = num(&m, key);
            report.add(Row {
                workload: format!("agent RSS {what}"),
                unit: Unit::KiB,
                spore: Stat::one(spore_kib as f64),
                baseline: Some(("mitogen child".into(), Stat::one(mk))),
                ratio: Some(mk / spore_kib as f64),
                target: "≤ 1.5 MiB".into(),
                met: Some(spore_kib <= 1536),
            });
        }
    }

    // 7. Shutdown.
    for hung in [false, true].into_iter().filter(|_| run("shutdown")) {
        let t = spore_shutdown_tree(10, 2, hung);
        let mut args = vec!["shutdown", "10", "2"];
        if hung {
            args.push("hung");
        }
        let m = num(&mitogen(&args), "seconds");
        report.add(Row {
            workload: format!("shutdown of a 110-context tree{}", if hung { " with hung commands" } else { "" }),
            unit: Unit::Secs,
            spore: Stat::one(t),
            baseline: Some(("mitogen".into(), Stat::one(m))),
            ratio: Some(m / t),
            target: String::new(),
            met: None,
        });
    }

    // 8. A fleet of ssh targets, each tool a whole process.
    if run("fleet") {
        fleet_rows(&mut report);
    }

    let md = report.markdown();
    println!("\n{md}");
    println!("bench took {:.0} s", started.elapsed().as_secs_f64());
    let out = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/results"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("latest.md"), format!("# spore bench\n\n{md}")).unwrap();
    std::fs::write(out.join("latest.json"), report.json()).unwrap();
    eprintln!("wrote {}/latest.{{md,json}}", out.display());
}

/// Bytes on the wire per cold connect: the script and the image, plain
/// and gzipped, for each architecture spore has; and one cold local
/// connect, measured.
fn wire_rows(report: &mut Report) {
    let images = spore::image::default_images().unwrap();
    let args = spore_agent::bootstrap::AgentArgs::parse(["--id=1", "--parents=0"]).unwrap();
    let script = spore_agent::bootstrap::script(&images.infos().iter().collect::<Vec<_>>(), &args).len();
    for i in images.infos() {
        report.add(Row {
            workload: format!("cold connect to a {} host: script + gzip image (plain: {} bytes)", i.arch, i.size),
            unit: Unit::Bytes,
            spore: Stat::one((script as u64 + i.gz_size) as f64),
            baseline: Some(("script + plain image".into(), Stat::one((script as u64 + i.size) as f64))),
            ratio: Some((script as u64 + i.size) as f64 / (script as u64 + i.gz_size) as f64),
            target: String::new(),
            met: None,
        });
    }
    // Measured: a fresh cache, a local context.
    let dir = std::env::temp_dir().join(format!("spore-bench-wire-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let old: Vec<_> = ["XDG_RUNTIME_DIR", "HOME"].iter().map(|k| (*k, std::env::var_os(k))).collect();
    for (k, _) in &old {
        std::env::set_var(k, &dir);
    }
    let r = Router::new().unwrap();
    let c = r.local().unwrap();
    let sent = c.image_bytes();
    r.shutdown();
    drop((c, r));
    for (k, v) in old {
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    report.add(Row {
        workload: "cold local connect, measured: image bytes written".into(),
        unit: Unit::Bytes,
        spore: Stat::one(sent as f64),
        baseline: None,
        ratio: None,
        target: String::new(),
        met: None,
    });
}

fn mitogen_version() -> String {
    let out =
        Command::new(python()).args(["-c", "import mitogen; print('.'.join(map(str, mitogen.__version__)))"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

fn ssh_workloads(report: &mut Report) {
    let sshd = Sshd::start();
    let cfg = sshd.config_str();
    let xdg = sshd.dir.join("xdg");
    let hop = Hop::Ssh(SshHop {
        host: "spore-test".into(),
        config: Some(cfg.clone()),
        options: vec![format!("SetEnv=XDG_RUNTIME_DIR={}", xdg.display())],
        ..SshHop::default()
    });
    let cm = sshd.dir.join("cm");
    let _ = Command::new("ssh")
        .args(["-F", &cfg, "-o", "ControlMaster=yes", "-o", "ControlPersist=120", "-o"])
        .arg(format!("ControlPath={}", cm.display()))
        .args(["-N", "-f", "spore-test"])
        .status();
    // The same hop through the ControlMaster: what spore adds to ssh, with
    // the handshake (and most of its noise) taken out.
    let muxed_hop = Hop::Ssh(SshHop {
        host: "spore-test".into(),
        config: Some(cfg.clone()),
        options: vec![format!("SetEnv=XDG_RUNTIME_DIR={}", xdg.display()), format!("ControlPath={}", cm.display())],
        ..SshHop::default()
    });
    let (mut hit, mut miss, mut plain, mut muxed, mut mito) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut muxed_hit = Vec::new();
    let mut per_call = Vec::new();
    let mut mito_call = Vec::new();
    for round in 0..ROUNDS {
        for _ in 0..3 {
            // A real miss: no cached agent anywhere the script looks.
            let _ = std::fs::remove_dir_all(&xdg);
            if let Ok(home) = std::env::var("HOME") {
                for e in std::fs::read_dir(format!("{home}/.cache/spore")).into_iter().flatten().flatten() {
                    if e.file_name().to_string_lossy().starts_with("spore-agent-") {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            let r = Router::new().unwrap();
            let t = Instant::now();
            let c = r.connect(&hop, "spore-test").unwrap();
            c.ping().unwrap();
            miss.push(secs(t.elapsed()));
            r.shutdown();
            let r = Router::new().unwrap();
            let t = Instant::now();
            let c = r.connect(&hop, "spore-test").unwrap();
            c.ping().unwrap();
            hit.push(secs(t.elapsed()));
            if round == 0 {
                let t = Instant::now();
                for _ in 0..1000 {
                    c.ping().unwrap();
                }
                per_call.push(secs(t.elapsed()) / 1000.0);
            }
            r.shutdown();
            let r = Router::new().unwrap();
            let t = Instant::now();
            r.connect(&muxed_hop, "spore-test").unwrap().ping().unwrap();
            muxed_hit.push(secs(t.elapsed()));
            r.shutdown();
            plain.push(secs(timed(Command::new("ssh").args(["-F", &cfg, "spore-test", "true"]))));
            muxed.push(secs(timed(
                Command::new("ssh")
                    .args(["-F", &cfg, "-o"])
                    .arg(format!("ControlPath={}", cm.display()))
                    .args(["spore-test", "true"]),
            )));
        }
        let m = mitogen(&["ssh", "3", &cfg, if round == 0 { "1000" } else { "0" }]);
        mito.extend(samples(&m));
        if round == 0 {
            mito_call.push(num(&m, "per_call"));
        }
    }
    let _ = Command::new("ssh")
        .args(["-F", &cfg, "-o"])
        .arg(format!("ControlPath={}", cm.display()))
        .args(["-O", "exit", "spore-test"])
        .stderr(Stdio::null())
        .status();
    let (hit, miss, plain, muxed, mito) =
        (Stat::of(hit), Stat::of(miss), Stat::of(plain), Stat::of(muxed), Stat::of(mito));
    let muxed_hit = Stat::of(muxed_hit);
    report.add(Row {
        workload: "ssh connect + one call, agent cached".into(),
        unit: Unit::Secs,
        spore: hit,
        baseline: Some(("`ssh host true`".into(), plain)),
        ratio: Some(plain.median / hit.median),
        target: "≤ `ssh host true` + 15 ms".into(),
        met: Some(hit.median <= plain.median + 0.015),
    });
    report.add(Row {
        workload: "ssh connect + one call, agent uploaded".into(),
        unit: Unit::Secs,
        spore: miss,
        baseline: Some(("mitogen".into(), mito)),
        ratio: Some(mito.median / miss.median),
        target: String::new(),
        met: None,
    });
    report.add(Row {
        workload: "  the same through a ControlMaster (spore's own cost)".into(),
        unit: Unit::Secs,
        spore: muxed_hit,
        baseline: Some(("`ssh -S cm host true`".into(), muxed)),
        ratio: Some(muxed.median / muxed_hit.median),
        target: String::new(),
        met: None,
    });
    let (s, m) = (Stat::of(per_call), Stat::of(mito_call));
    report.add(Row {
        workload: "no-op call latency over ssh (1,000 calls)".into(),
        unit: Unit::Secs,
        spore: s,
        baseline: Some(("mitogen".into(), m)),
        ratio: Some(m.median / s.median),
        target: String::new(),
        met: None,
    });
}

/// Targets in the fleet rows (`SPORE_BENCH_FLEET_HOSTS` changes it).
const FLEET_HOSTS: usize = 64;
/// Rounds of the fleet rows: each tool once per round, the order turning.
const FLEET_ROUNDS: usize = 5;
/// `SPORE_BENCH_FLEET_ROUNDS` or `FLEET_ROUNDS`.
fn fleet_rounds() -> usize {
    std::env::var("SPORE_BENCH_FLEET_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(FLEET_ROUNDS)
}
/// Every tool's connect timeout in the fleet rows, in seconds: far above
/// any handshake on an idle machine, so it changes nothing there, but a
/// busy one (64 handshakes at once on 2 cores shared with builds took up
/// to 30 s) must not fail hosts: spore's default is 30 s, Ansible's 10 s.
const LONG: &str = "300";

/// The same `FLEET_HOSTS` ssh aliases of one loopback sshd, reached by each
/// tool as a whole process running `true` everywhere: all at once, as
/// forks allow. The floor is that many plain `ssh host true` started
/// together (and again, each in a session of its own). spore runs with its agent cached on the target (its normal
/// case: only a host's first connect uploads it). Ansible runs twice a
/// round: cold, then warm, with the ControlPersist masters its cold run
/// left (its default `-o ControlMaster=auto -o ControlPersist=60s`).
/// `spore --persist` takes a turn of its own (`session_rows`), in a
/// runtime directory of the bench's, its session stopped around it.
fn fleet_rows(report: &mut Report) {
    let n: usize = std::env::var("SPORE_BENCH_FLEET_HOSTS").ok().and_then(|v| v.parse().ok()).unwrap_or(FLEET_HOSTS);
    let sshd = Sshd::start();
    let (cfg, hosts) = sshd.aliases(n);
    let cfg = cfg.display().to_string();
    let dir = sshd.dir.join("fleet");
    std::fs::create_dir_all(&dir).unwrap();
    let hosts_file = dir.join("hosts");
    std::fs::write(&hosts_file, hosts.join("\n") + "\n").unwrap();
    // ansible_ssh_common_args comes on top of its default ssh_args, so the
    // ControlPersist defaults stay.
    let inventory = dir.join("inventory.ini");
    std::fs::write(
        &inventory,
        format!("[fleet]\n{}\n\n[fleet:vars]\nansible_ssh_common_args='-F {cfg}'\n", hosts.join("\n")),
    )
    .unwrap();
    let ansible_home = dir.join("ansible-home");
    let ansible_cfg = dir.join("ansible.cfg");
    std::fs::create_dir_all(&ansible_home).unwrap();
    std::fs::write(&ansible_cfg, "").unwrap();
    let ansible = Path::new(&python()).with_file_name("ansible");
    let ansible_cmd = |control_dir: &Path| {
        let mut c = Command::new(&ansible);
        c.args(["all", "-i"]).arg(&inventory).args(["-m", "raw", "-a", "true", "-T", LONG, "-f"]).arg(n.to_string());
        c.env("ANSIBLE_CONFIG", &ansible_cfg)
            .env("ANSIBLE_HOME", &ansible_home)
            .env("ANSIBLE_LOCAL_TEMP", ansible_home.join("tmp"))
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", control_dir)
            .env("LC_ALL", "C.UTF-8");
        c
    };
    let spore = spore_tests::target_dir().join("release/spore");
    let spore_cmd = || {
        let mut c = Command::new(&spore);
        c.args(["-F", &cfg, "--connect-timeout", LONG, "run"]).args(&hosts).args(["--", "true"]);
        c
    };
    // The session's runs: a runtime directory of the bench's own, so the
    // bench neither meets nor stops a session of the user's.
    let xdg = dir.join("xdg");
    std::fs::create_dir_all(&xdg).unwrap();
    std::fs::set_permissions(&xdg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let persist_cmd = |targets: &[String]| {
        let mut c = Command::new(&spore);
        c.env("XDG_RUNTIME_DIR", &xdg).args(["-F", &cfg, "--connect-timeout", LONG, "--persist", "5m", "run"]);
        c.args(targets).args(["--", "true"]);
        c
    };
    let session_stop = || {
        let _ = Command::new(&spore)
            .env("XDG_RUNTIME_DIR", &xdg)
            .args(["session", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        wait_session_gone(&xdg);
    };
    let one = [hosts[0].clone()];
    // A ControlMaster to the first host: the single-host row's baseline,
    // up only in the session's turn (its sshd child would hold up
    // `cpu_secs`).
    let cm = dir.join("cm");
    let master = |op: &str| {
        let mut c = Command::new("ssh");
        c.args(["-F", &cfg, "-S"]).arg(&cm);
        match op {
            "start" => c.args(["-o", "ControlMaster=yes", "-o", "ControlPersist=600", "-N", "-f", &one[0]]),
            _ => c.args(["-O", "exit", &one[0]]),
        };
        let _ = c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
    };
    let muxed_cmd = || {
        let mut c = Command::new("ssh");
        c.args(["-F", &cfg, "-S"]).arg(&cm).args([&one[0], "true"]);
        c
    };
    let pssh_cmd = || {
        let mut c = Command::new("parallel-ssh");
        c.arg("-h").arg(&hosts_file).args(["-x", &format!("-F {cfg}"), "-p", &n.to_string(), "-t", LONG, "true"]);
        c
    };
    let have = |cmd: &mut Command| cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    let have_pssh = have(Command::new("parallel-ssh").arg("--version"));
    let have_ansible = have(Command::new(&ansible).arg("--version"));
    // The first connect of each host uploads the agent; the rows time the
    // cached case, so run once first.
    timed(&mut spore_cmd());
    let version = |cmd: &mut Command| {
        let out = cmd.output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        out.lines().next().unwrap_or_default().trim().to_string()
    };
    eprintln!(
        "  fleet: {n} aliases of one sshd; parallel-ssh {}; {}",
        if have_pssh { version(Command::new("parallel-ssh").arg("--version")) } else { "missing".into() },
        if have_ansible { version(Command::new(&ansible).arg("--version")) } else { "ansible missing".into() }
    );
    // Per tool: (wall seconds, CPU seconds) of each run.
    let mut tools: [(&str, Vec<f64>, Vec<f64>); 6] = [
        ("floor", Vec::new(), Vec::new()),
        ("floor, setsid", Vec::new(), Vec::new()),
        ("spore", Vec::new(), Vec::new()),
        ("parallel-ssh", Vec::new(), Vec::new()),
        ("ansible cold", Vec::new(), Vec::new()),
        ("ansible warm", Vec::new(), Vec::new()),
    ];
    // The session's turn, wall time only (the session outlives its
    // clients, so their CPU is not theirs): per round, the cold run that
    // starts it and warm runs after, on one host and on all, with the
    // session stopped before and after each.
    let (mut one_cold, mut one_warm, mut one_muxed) = (Vec::new(), Vec::new(), Vec::new());
    let (mut all_cold, mut all_warm) = (Vec::new(), Vec::new());
    let sshd_pid = sshd.pid().unwrap();
    let measure = |samples: &mut (&str, Vec<f64>, Vec<f64>), run: &mut dyn FnMut() -> Duration| {
        let before = cpu_secs(sshd_pid);
        let wall = run();
        samples.1.push(secs(wall));
        samples.2.push(cpu_secs(sshd_pid) - before);
    };
    for round in 0..fleet_rounds() {
        for turn in 0..6 {
            match (round + turn) % 6 {
                0 => measure(&mut tools[0], &mut || parallel_ssh_true(&cfg, &hosts, false)),
                1 => measure(&mut tools[1], &mut || parallel_ssh_true(&cfg, &hosts, true)),
                2 => measure(&mut tools[2], &mut || timed(&mut spore_cmd())),
                3 if have_pssh => measure(&mut tools[3], &mut || timed(&mut pssh_cmd())),
                4 if have_ansible => {
                    let control = dir.join(format!("cp-{round}"));
                    std::fs::create_dir_all(&control).unwrap();
                    // Wall time only: the masters it leaves keep their
                    // sshd sessions (and CPU) past the run, out of reach.
                    tools[4].1.push(secs(timed(&mut ansible_cmd(&control))));
                    tools[5].1.push(secs(timed(&mut ansible_cmd(&control))));
                    stop_masters(&cfg, &control);
                }
                5 => {
                    session_stop();
                    master("start");
                    one_cold.push(secs(timed(&mut persist_cmd(&one))));
                    for _ in 0..SESSION_WARM_ONE {
                        one_warm.push(secs(timed(&mut persist_cmd(&one))));
                        one_muxed.push(secs(timed(&mut muxed_cmd())));
                    }
                    session_stop();
                    master("exit");
                    all_cold.push(secs(timed(&mut persist_cmd(&hosts))));
                    for _ in 0..SESSION_WARM_ALL {
                        all_warm.push(secs(timed(&mut persist_cmd(&hosts))));
                    }
                    session_stop();
                    eprintln!(
                        "  fleet round {} session: one host cold {}, warm {} (ssh -S cm {}); {n} hosts cold {}, warm {}",
                        round + 1,
                        show(Unit::Secs, *one_cold.last().unwrap()),
                        show(Unit::Secs, Stat::of(one_warm[one_warm.len() - SESSION_WARM_ONE..].to_vec()).median),
                        show(Unit::Secs, Stat::of(one_muxed[one_muxed.len() - SESSION_WARM_ONE..].to_vec()).median),
                        show(Unit::Secs, *all_cold.last().unwrap()),
                        show(Unit::Secs, Stat::of(all_warm[all_warm.len() - SESSION_WARM_ALL..].to_vec()).median),
                    );
                }
                _ => {}
            }
        }
        let last: Vec<String> = tools
            .iter()
            .map(|(name, wall, cpu)| match (wall.last(), cpu.last()) {
                (Some(w), Some(c)) => format!("{name} {} (CPU {})", show(Unit::Secs, *w), show(Unit::Secs, *c)),
                (Some(w), None) => format!("{name} {}", show(Unit::Secs, *w)),
                _ => format!("{name} -"),
            })
            .collect();
        eprintln!("  fleet round {}: {}", round + 1, last.join(", "));
    }
    let [(_, floor, floor_cpu), (_, own, own_cpu), (_, sp, sp_cpu), (_, ps, ps_cpu), (_, cold, cold_cpu), (_, warm, warm_cpu)] =
        tools;
    let (s, s_cpu) = (Stat::of(sp), Stat::of(sp_cpu));
    // The floor the target is held to has each ssh in a session of its
    // own, as parallel-ssh and Ansible start theirs. Where the kernel
    // shares the CPU out by session (CONFIG_SCHED_AUTOGROUP, on in most
    // distributions' kernels) a busy machine gives each such ssh a share
    // of its own, and 64 ssh in one session finish far later on the same
    // CPU time; on an idle machine the two floors are one. The plain
    // floor is the row after.
    let (own, own_cpu) = (Stat::of(own), Stat::of(own_cpu));
    report.add(Row {
        workload: format!("{n} ssh targets, `true` on each, whole process (agent cached)"),
        unit: Unit::Secs,
        spore: s,
        baseline: Some((format!("{n} parallel `ssh host true`, each in a session of its own"), own)),
        ratio: Some(own.median / s.median),
        target: "within 5 % of the floor".into(),
        met: Some(s.median <= own.median * 1.05),
    });
    report.add(Row {
        workload: "  CPU of a run: the tool's processes + the sshd side".into(),
        unit: Unit::Secs,
        spore: s_cpu,
        baseline: Some(("the floor".into(), own_cpu)),
        ratio: Some(own_cpu.median / s_cpu.median),
        target: String::new(),
        met: None,
    });
    let warm_ansible = (!warm.is_empty()).then(|| Stat::of(warm.clone()));
    let one_session_floor = Stat::of(floor.clone());
    for (name, wall, cpu, target) in [
        (format!("{n} parallel `ssh host true` in one session"), floor, floor_cpu, ""),
        (format!("`parallel-ssh -p {n}`"), ps, ps_cpu, "faster"),
        (
            format!("`ansible -m raw -f {n}`, warm (its ControlPersist masters up)"),
            warm,
            warm_cpu,
            "faster (its best case)",
        ),
        (format!("`ansible -m raw -f {n}`, cold"), cold, cold_cpu, ""),
    ] {
        if wall.is_empty() {
            eprintln!("  fleet: no {name} (not installed): row left out");
            continue;
        }
        let b = Stat::of(wall);
        report.add(Row {
            workload: format!("  the same beside {name}"),
            unit: Unit::Secs,
            spore: s,
            baseline: Some((name.clone(), b)),
            ratio: Some(b.median / s.median),
            target: target.into(),
            met: (!target.is_empty()).then_some(s.median < b.median),
        });
        if cpu.is_empty() {
            continue;
        }
        let b_cpu = Stat::of(cpu);
        report.add(Row {
            workload: format!("    CPU of a run, beside {name}"),
            unit: Unit::Secs,
            spore: s_cpu,
            baseline: Some((name.clone(), b_cpu)),
            ratio: Some(b_cpu.median / s_cpu.median),
            target: String::new(),
            met: None,
        });
    }
    session_stop();
    session_rows(
        report,
        n,
        &s,
        [&own, &one_session_floor],
        warm_ansible,
        [one_cold, one_warm, one_muxed, all_cold, all_warm],
    );
}

/// Wait until no `spore session serve` of the runtime directory `xdg` is
/// left. `spore session stop` answers once the session has taken the
/// request, before its tree is down (and the session still accepts for up
/// to a second, a run it takes then failing with "spore is shutting
/// down"), so the next cold run would race it.
fn wait_session_gone(xdg: &Path) {
    let env = format!("XDG_RUNTIME_DIR={}", xdg.display()).into_bytes();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let alive = std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
            cmd.windows(14).any(|w| w == b"session\0serve\0") && environ.split(|&b| b == 0).any(|v| v == env.as_slice())
        });
        if !alive {
            return;
        }
        assert!(Instant::now() < deadline, "the session of {} outlived `spore session stop` by 60 s", xdg.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Warm runs per round on one host, each beside one `ssh -S cm host true`.
const SESSION_WARM_ONE: usize = 10;
/// Warm runs per round on the whole fleet.
const SESSION_WARM_ALL: usize = 5;

/// The rows of `spore --persist`: a warm run (the session up, its contexts
/// live) on one host beside `ssh` through a ControlMaster, and on the whole
/// fleet beside the cold run, the floor and Ansible warm.
fn session_rows(
    report: &mut Report,
    n: usize,
    cold: &Stat,
    [floor, one_session_floor]: [&Stat; 2],
    ansible_warm: Option<Stat>,
    [one_cold, one_warm, one_muxed, all_cold, all_warm]: [Vec<f64>; 5],
) {
    let (one_cold, one_warm, one_muxed) = (Stat::of(one_cold), Stat::of(one_warm), Stat::of(one_muxed));
    let (all_cold, all_warm) = (Stat::of(all_cold), Stat::of(all_warm));
    report.add(Row {
        workload: "`spore --persist 5m run HOST -- true`, warm, whole process".into(),
        unit: Unit::Secs,
        spore: one_warm,
        baseline: Some(("`ssh -S cm host true` (ControlMaster)".into(), one_muxed)),
        ratio: Some(one_muxed.median / one_warm.median),
        target: "≤ 10 ms".into(),
        met: Some(one_warm.median <= 0.010),
    });
    report.add(Row {
        workload: "  the same, cold (the run that starts the session)".into(),
        unit: Unit::Secs,
        spore: one_cold,
        baseline: None,
        ratio: None,
        target: String::new(),
        met: None,
    });
    report.add(Row {
        workload: format!("`spore --persist 5m run` on {n} ssh targets, `true`, warm"),
        unit: Unit::Secs,
        spore: all_warm,
        baseline: Some((format!("{n} parallel `ssh host true`, each in a session of its own"), *floor)),
        ratio: Some(floor.median / all_warm.median),
        target: "≤ 100 ms (≥ 90× the floor)".into(),
        met: Some(all_warm.median <= 0.100),
    });
    report.add(Row {
        workload: format!("  the same beside {n} parallel `ssh host true` in one session"),
        unit: Unit::Secs,
        spore: all_warm,
        baseline: Some((format!("{n} parallel `ssh host true` in one session"), *one_session_floor)),
        ratio: Some(one_session_floor.median / all_warm.median),
        target: String::new(),
        met: None,
    });
    report.add(Row {
        workload: "  the same beside the cold `spore run` (no session)".into(),
        unit: Unit::Secs,
        spore: all_warm,
        baseline: Some(("cold `spore run`".into(), *cold)),
        ratio: Some(cold.median / all_warm.median),
        target: String::new(),
        met: None,
    });
    report.add(Row {
        workload: "  the same beside the cold `--persist` run that starts the session".into(),
        unit: Unit::Secs,
        spore: all_warm,
        baseline: Some(("cold `spore --persist 5m run`".into(), all_cold)),
        ratio: Some(all_cold.median / all_warm.median),
        target: String::new(),
        met: None,
    });
    if let Some(a) = ansible_warm {
        report.add(Row {
            workload: "  the same beside Ansible warm".into(),
            unit: Unit::Secs,
            spore: all_warm,
            baseline: Some((format!("`ansible -m raw -f {n}`, warm (ControlPersist)"), a)),
            ratio: Some(a.median / all_warm.median),
            target: "faster".into(),
            met: Some(all_warm.median < a.median),
        });
    }
}

/// CPU seconds (user + system) of this process's waited-for descendants
/// (a tool and what it waited for) plus those of the sshd `sshd_pid`'s
/// (every connection's processes, the remote commands included), once all
/// of its connections have been reaped. Ansible's ControlPersist masters
/// (daemons, reaped by init) are on neither side.
fn cpu_secs(sshd_pid: i32) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let children = format!("/proc/{sshd_pid}/task/{sshd_pid}/children");
    while Instant::now() < deadline && !std::fs::read_to_string(&children).unwrap_or_default().trim().is_empty() {
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: sysconf and getrusage with a valid struct.
    let (tick, own) = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        (libc::sysconf(libc::_SC_CLK_TCK) as f64, tv(ru.ru_utime) + tv(ru.ru_stime))
    };
    // Fields 16 and 17 of /proc/PID/stat (cutime, cstime), counted after
    // the command name's closing parenthesis.
    let stat = std::fs::read_to_string(format!("/proc/{sshd_pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let server: f64 = fields[13].parse::<f64>().unwrap() + fields[14].parse::<f64>().unwrap();
    own + server / tick
}

/// The floor: `ssh host true` to every host, all started before any is
/// waited for; the time until the last has ended. With `own_session`,
/// each in a session of its own, as parallel-ssh starts them.
fn parallel_ssh_true(cfg: &str, hosts: &[String], own_session: bool) -> Duration {
    let t = Instant::now();
    let children: Vec<_> = hosts
        .iter()
        .map(|h| {
            let mut cmd = Command::new("ssh");
            cmd.args(["-F", cfg, h, "true"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            if own_session {
                // SAFETY: setsid is async-signal-safe and touches only the
                // child.
                unsafe {
                    std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                        libc::setsid();
                        Ok(())
                    });
                }
            }
            cmd.spawn().unwrap()
        })
        .collect();
    for (h, mut c) in hosts.iter().zip(children) {
        assert!(c.wait().unwrap().success(), "ssh {h} true failed");
    }
    t.elapsed()
}

/// End the ControlPersist masters Ansible left in `control`, so the next
/// cold run starts without them and no tool shares the machine with them.
fn stop_masters(cfg: &str, control: &Path) {
    let stops: Vec<_> = std::fs::read_dir(control)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            Command::new("ssh")
                .args(["-F", cfg, "-o"])
                .arg(format!("ControlPath={}", e.path().display()))
                .args(["-O", "exit", "h001"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()
        })
        .collect();
    for mut stop in stops {
        let _ = stop.wait();
    }
    let _ = std::fs::remove_dir_all(control);
}

fn spore_fanout(n: usize) -> (f64, u64) {
    let r = Router::with_options(Options { connect_timeout: Duration::from_secs(120), ..Options::default() }).unwrap();
    let t = Instant::now();
    let pids: Vec<u32> = std::thread::scope(|s| {
        let workers = 32.min(n);
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let r = r.clone();
                s.spawn(move || {
                    let mut pids = Vec::new();
                    let mut i = w;
                    while i < n {
                        let c = r.local().unwrap();
                        pids.push(c.info().unwrap().pid);
                        i += workers;
                    }
                    pids
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let took = secs(t.elapsed());
    let rss: u64 = pids.iter().map(|&p| rss_kib(p)).sum::<u64>() + rss_kib(std::process::id());
    r.shutdown();
    (took, rss)
}

fn spore_shutdown_tree(width: usize, depth: usize, hung: bool) -> f64 {
    let r = Router::new().unwrap();
    let mut level: Vec<Option<Context>> = vec![None];
    let mut all: Vec<Context> = Vec::new();
    for _ in 0..depth {
        let mut next = Vec::new();
        for parent in &level {
            for _ in 0..width {
                let c = match parent {
                    None => r.local().unwrap(),
                    Some(p) => p.connect("local").unwrap(),
                };
                next.push(Some(c.clone()));
                all.push(c);
            }
        }
        level = next;
    }
    let mut pending = Vec::new();
    if hung {
        for c in all.iter().step_by(10) {
            let c = c.clone();
            pending.push(std::thread::spawn(move || c.exec(&SporeCommand::new(["sleep", "1000"]))));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let t = Instant::now();
    r.shutdown();
    let took = secs(t.elapsed());
    for p in pending {
        let _ = p.join();
    }
    took
}

struct Discard;

impl Write for Discard {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output().unwrap();
    let took = t.elapsed();
    assert!(out.status.success(), "{cmd:?} failed: {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    took
}

fn make_file(path: &Path, len: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    std::io::copy(&mut PatternReader::new(len, 99), &mut f).unwrap();
    f.flush().unwrap();
    drop(f);
    // Read it once so both tools start from the page cache.
    let mut buf = vec![0u8; 1 << 20];
    let mut file = std::fs::File::open(path).unwrap();
    while file.read(&mut buf).unwrap() > 0 {}
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
