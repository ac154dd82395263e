//! Persistent sessions (`--persist`) as a user runs them: real clients, a
//! real background session, local and ssh targets. Every test has its own
//! `XDG_RUNTIME_DIR`, so sessions never mix, and a [`Session`] guard that
//! stops (then kills) the session it started, even when the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore_tests::sshd::Sshd;
use spore_tests::{cmdline, exit_within, spore_bin, wait_bounded, LeakGuard, Scratch};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a session may take to end (its bounded shutdown, and then some).
const SHUTDOWN: Duration = Duration::from_secs(10);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A test's private runtime directory, and the session that may live in it.
struct Session {
    scratch: Scratch,
    xdg: String,
}

impl Session {
    fn new(tag: &str) -> Session {
        let scratch = Scratch::new(&format!("session-{tag}"));
        std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o700)).unwrap();
        let xdg = scratch.0.display().to_string();
        Session { scratch, xdg }
    }

    /// `spore ARGS` with this runtime directory, nothing of the caller's
    /// session settings; fails the test past a minute.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(spore_bin());
        c.args(args)
            .env("XDG_RUNTIME_DIR", &self.xdg)
            .env_remove("SPORE_LOG")
            .env_remove("SPORE_PERSIST")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        wait_bounded(self.command(args).spawn().unwrap(), Duration::from_secs(60))
    }

    /// The same run, warm: through the session (60 s idle).
    fn warm(&self, args: &[&str]) -> Output {
        let mut all = vec!["--persist", "60s"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.0.join("spore/session.log")).unwrap_or_default()
    }

    /// Pids of `spore session serve` processes of ours (root) started for
    /// this directory.
    fn servers(&self) -> Vec<i32> {
        use std::os::unix::fs::MetadataExt;
        self.any_servers()
            .into_iter()
            .filter(|p| std::fs::metadata(format!("/proc/{p}")).is_ok_and(|m| m.uid() == 0))
            .collect()
    }

    /// Pids of `spore session serve` processes of any uid started with
    /// this directory as their `XDG_RUNTIME_DIR`.
    fn any_servers(&self) -> Vec<i32> {
        let want = format!("XDG_RUNTIME_DIR={}", self.xdg);
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            if !cmdline(pid).contains("session serve") {
                continue;
            }
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
                found.push(pid);
            }
        }
        found
    }

    /// The one session serving this directory.
    fn server(&self) -> i32 {
        let s = self.servers();
        assert_eq!(s.len(), 1, "one session expected: {s:?}; log:\n{}", self.log());
        s[0]
    }

    /// Wait (bounded) until no session serves this directory.
    fn gone_within(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            spore_tests::reap_zombies();
            if self.any_servers().iter().all(|&p| spore_tests::is_zombie(p)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `spore session stop`, then SIGKILL for whatever still serves.
    fn stop(&self) {
        if let Ok(child) = self.command(&["session", "stop"]).spawn() {
            let _ =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait_bounded(child, Duration::from_secs(30))));
        }
        if !self.gone_within(SHUTDOWN) {
            for p in self.any_servers() {
                // SAFETY: kill has no memory effects; this session is ours.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            self.gone_within(Duration::from_secs(5));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Live descendants of `pid` (not `pid` itself).
fn tree_of(pid: i32) -> Vec<i32> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else { continue };
        if let Some(pp) = rest.split_whitespace().nth(1).and_then(|v| v.parse::<i32>().ok()) {
            all.push((p, pp));
        }
    }
    let mut found = vec![pid];
    loop {
        let before = found.len();
        for &(p, pp) in &all {
            if found.contains(&pp) && !found.contains(&p) {
                found.push(p);
            }
        }
        if found.len() == before {
            break;
        }
    }
    found.retain(|&p| p != pid && !spore_tests::is_zombie(p));
    found
}

fn same(label: &str, cold: &Output, warm: &Output) {
    if label.contains("--json") {
        assert_eq!(json_meaning(&cold.stdout), json_meaning(&warm.stdout), "{label}: stdout differs (cold, warm)");
        assert_eq!(cold.stderr, warm.stderr, "{label}: stderr bytes");
        assert_eq!(cold.status.code(), warm.status.code(), "{label}: status");
        return;
    }
    assert_eq!(text(&cold.stdout), text(&warm.stdout), "{label}: stdout differs (cold, warm)");
    assert_eq!(text(&cold.stderr), text(&warm.stderr), "{label}: stderr differs (cold, warm)");
    assert_eq!(cold.stdout, warm.stdout, "{label}: stdout bytes");
    assert_eq!(cold.stderr, warm.stderr, "{label}: stderr bytes");
    assert_eq!(cold.status.code(), warm.status.code(), "{label}: status");
}

/// A `--json` run's output, as what does not depend on timing: each
/// (target, stream)'s bytes joined (chunk boundaries, and the order of one
/// target's stdout and stderr chunks, vary from run to run, cold or warm),
/// and every other line exactly, in order.
fn json_meaning(stdout: &[u8]) -> (std::collections::BTreeMap<(String, String), String>, Vec<String>) {
    use miniserde::json::{Object, Value};
    let mut streams = std::collections::BTreeMap::new();
    let mut rest = Vec::new();
    for line in text(stdout).lines() {
        let Ok(Value::Object(o)) = miniserde::json::from_str::<Value>(line) else {
            panic!("not a JSON object: {line}")
        };
        let field = |o: &Object, k: &str| match o.get(k) {
            Some(Value::String(v)) => Some(v.clone()),
            _ => None,
        };
        match field(&o, "stream") {
            Some(stream) => {
                let key = (field(&o, "target").unwrap(), stream);
                let data = field(&o, "data").or_else(|| field(&o, "data_b64").map(|b| format!("[b64 {b}]"))).unwrap();
                streams.entry(key).or_insert_with(String::new).push_str(&data);
            }
            None => rest.push(line.to_string()),
        }
    }
    (streams, rest)
}

const BOTH_STREAMS: &str = "echo to-out; echo to-err >&2; printf 'no newline'; exit 3";

#[test]
fn warm_runs_on_local_targets_match_cold_runs() {
    let guard = LeakGuard::new();
    let s = Session::new("local");
    let cases: Vec<Vec<&str>> = vec![
        vec!["run", "local", "--", "sh", "-c", BOTH_STREAMS],
        vec!["run", "local", "local/local", "--", "sh", "-c", "echo one; echo two >&2; exit 2"],
        vec![
            "-b",
            "run",
            "local",
            "local/local",
            "local/local/local",
            "--",
            "sh",
            "-c",
            "echo same; echo e >&2; exit 3",
        ],
        vec!["--json", "run", "local", "--", "sh", "-c", BOTH_STREAMS],
        vec!["run", "local", "--", "sh", "-c", "kill -TERM $$"],
    ];
    for args in &cases {
        let cold = s.run(args);
        let first = s.warm(args);
        let warm = s.warm(args);
        let label = args.join(" ");
        if args[0] == "run" && args[2] == "local/local" {
            // Two targets' lines may interleave: compare each target's.
            for out in [&first, &warm] {
                for t in ["local: ", "local/local: "] {
                    for (a, b) in [(&cold.stdout, &out.stdout), (&cold.stderr, &out.stderr)] {
                        let mine = |o: &[u8]| {
                            text(o).lines().filter(|l| l.starts_with(t)).map(String::from).collect::<Vec<_>>()
                        };
                        assert_eq!(mine(a), mine(b), "{label}");
                    }
                }
                assert_eq!(cold.status.code(), out.status.code(), "{label}");
            }
            continue;
        }
        same(&label, &cold, &first);
        same(&label, &cold, &warm);
    }
    assert_eq!(s.servers().len(), 1, "one session for all the warm runs");
    s.stop();
    drop(s);
    guard.check();
}

#[test]
fn warm_runs_on_an_ssh_target_match_cold_runs() {
    let guard = LeakGuard::new();
    let mut sshd = Sshd::start();
    let cfg = sshd.config_str();
    let s = Session::new("ssh");
    let cases: Vec<Vec<&str>> = vec![
        vec!["-F", &cfg, "run", "spore-test", "--", "sh", "-c", BOTH_STREAMS],
        vec!["-F", &cfg, "-b", "run", "spore-test", "spore-test/local", "--", "sh", "-c", "echo same; exit 3"],
        vec!["-F", &cfg, "--json", "run", "spore-test", "--", "sh", "-c", BOTH_STREAMS],
    ];
    for args in &cases {
        let cold = s.run(args);
        let _first = s.warm(args);
        let warm = s.warm(args);
        same(&args.join(" "), &cold, &warm);
    }
    // Timing: the best of three each way.
    let args = ["-F", &cfg, "run", "spore-test", "--", "true"];
    let time = |warm: bool| {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                let out = if warm { s.warm(&args) } else { s.run(&args) };
                assert!(out.status.success(), "{}", text(&out.stderr));
                t.elapsed()
            })
            .min()
            .unwrap()
    };
    let cold = time(false);
    let warm = time(true);
    eprintln!("ssh `run spore-test -- true`: cold {cold:?}, warm {warm:?}");
    // How much faster is for `make bench` to say, not a timed test.
    s.stop();
    drop(s);
    sshd.stop();
    guard.check();
}

#[test]
fn status_and_stop_without_a_session_say_so() {
    let guard = LeakGuard::new();
    let s = Session::new("none");
    let out = s.run(&["session", "status"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "spore: no session is running\n");
    assert!(out.stdout.is_empty());
    let out = s.run(&["session", "stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "spore: no session is running\n");
    assert!(s.servers().is_empty(), "status and stop start nothing");
    // With one running: status lists it, stop ends it.
    let out = s.warm(&["run", "local", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = s.run(&["session", "status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).lines().any(|l| l.starts_with("local ")), "{}", text(&out.stdout));
    let out = s.run(&["session", "stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // `stop` answers once the tree is down: a run right after it starts a
    // new session (it used to reach the ending one: "spore is shutting
    // down").
    let out = s.warm(&["run", "local", "--", "echo", "after"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "after\n");
    let out = s.run(&["session", "stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(s.gone_within(SHUTDOWN), "stop ends the session");
    drop(s);
    guard.check();
}

#[test]
fn idle_expiry_ends_the_session_and_its_agents() {
    let guard = LeakGuard::new();
    let mut sshd = Sshd::start();
    let cfg = sshd.config_str();
    let s = Session::new("idle");
    let out = s.run(&["--persist", "2s", "-F", &cfg, "run", "local", "local/local", "spore-test", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = Instant::now();
    let server = s.server();
    let agents = tree_of(server);
    assert!(!agents.is_empty(), "the session keeps its agents");
    assert!(!tree_of(sshd.pid().unwrap()).is_empty(), "the ssh target's agent runs under sshd");
    assert!(s.gone_within(Duration::from_secs(2) + SHUTDOWN), "the session outlived its idle time");
    let took = t.elapsed();
    eprintln!("idle session gone {took:?} after the run");
    assert!(took >= Duration::from_millis(1500), "ended too early: {took:?}");
    let deadline = Instant::now() + SHUTDOWN;
    loop {
        let left: Vec<i32> = agents.iter().copied().filter(|&p| !spore_tests::is_zombie(p)).collect();
        let remote = tree_of(sshd.pid().unwrap());
        if left.is_empty() && remote.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left after idle expiry: {:?} {:?}",
            left.iter().map(|&p| cmdline(p)).collect::<Vec<_>>(),
            remote.iter().map(|&p| cmdline(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(s);
    sshd.stop();
    guard.check();
}

#[test]
fn a_killed_session_leaves_nothing_and_the_next_run_starts_a_new_one() {
    let guard = LeakGuard::new();
    let mut sshd = Sshd::start();
    let cfg = sshd.config_str();
    let s = Session::new("stale");
    let out = s.warm(&["-F", &cfg, "run", "local", "local/local", "spore-test", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let server = s.server();
    let agents = tree_of(server);
    assert!(!agents.is_empty());
    assert!(!tree_of(sshd.pid().unwrap()).is_empty(), "the ssh target's agent runs under sshd");
    // SAFETY: kill has no memory effects; this session is ours.
    unsafe { libc::kill(server, libc::SIGKILL) };
    assert!(s.gone_within(Duration::from_secs(5)));
    // Its local agents, and the one behind sshd, go as a killed master's do.
    let deadline = Instant::now() + SHUTDOWN;
    loop {
        let left: Vec<i32> = agents.iter().copied().filter(|&p| !spore_tests::is_zombie(p)).collect();
        let remote = tree_of(sshd.pid().unwrap());
        if left.is_empty() && remote.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left after the session was killed: {:?} {:?}",
            left.iter().map(|&p| cmdline(p)).collect::<Vec<_>>(),
            remote.iter().map(|&p| cmdline(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(s.scratch.0.join("spore/session.sock").exists(), "the killed session leaves its socket");
    // The next run: a new session, no hang.
    let t = Instant::now();
    let out = s.warm(&["-F", &cfg, "run", "local", "spore-test", "--", "sh", "-c", "echo again"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(t.elapsed() < Duration::from_secs(15), "took {:?}", t.elapsed());
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert!(
        lines.contains(&"local: again".to_string()) && lines.contains(&"spore-test: again".to_string()),
        "{lines:?}"
    );
    assert_ne!(s.server(), server);
    s.stop();
    drop(s);
    sshd.stop();
    guard.check();
}

/// The pid of a target's agent, from `--json info`.
fn agent_pid(s: &Session, target: &str) -> i32 {
    let out = s.warm(&["--json", "info", target]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    let at = line.find("\"pid\":").unwrap_or_else(|| panic!("no pid: {line}")) + 6;
    line[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
}

#[test]
fn a_target_killed_between_runs_is_reconnected() {
    let guard = LeakGuard::new();
    let s = Session::new("reconnect");
    let first = agent_pid(&s, "local");
    assert_eq!(agent_pid(&s, "local"), first, "the warm run reuses the agent");
    // SAFETY: kill has no memory effects; the agent is ours.
    unsafe { libc::kill(first, libc::SIGKILL) };
    let t = Instant::now();
    let out = s.warm(&["run", "local", "--", "sh", "-c", "echo back; exit 4"]);
    assert_eq!(text(&out.stderr), "", "transparent: no complaint");
    assert_eq!(text(&out.stdout), "back\n");
    assert_eq!(out.status.code(), Some(4));
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    let second = agent_pid(&s, "local");
    assert_ne!(second, first);
    s.stop();
    drop(s);
    guard.check();
}

#[test]
fn ctrl_c_in_one_client_cancels_only_its_run() {
    let guard = LeakGuard::new();
    let s = Session::new("cancel");
    let out = s.warm(&["run", "local", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A: a sleep, and a child that escapes into a session of its own.
    let a_script = "setsid sleep 61.17 & exec sleep 60.17";
    let mut a = s.command(&["--persist", "60s", "run", "local", "--", "sh", "-c", a_script]).spawn().unwrap();
    let b = s.command(&["--persist", "60s", "run", "local", "--", "sh", "-c", "sleep 2; echo b"]).spawn().unwrap();
    let t_b = Instant::now();
    assert!(spore_tests::wait_for_command("sleep 60.17", 1, Duration::from_secs(10)), "A's sleep never started");
    assert!(spore_tests::wait_for_command("sleep 61.17", 1, Duration::from_secs(10)), "A's setsid sleep never started");
    // SAFETY: kill has no memory effects; A is our child.
    unsafe { libc::kill(a.id() as i32, libc::SIGINT) };
    let t = Instant::now();
    let status = exit_within(&mut a, Duration::from_secs(2));
    let took = t.elapsed();
    if status.is_none() {
        let _ = a.kill();
    }
    let out_a = wait_bounded(a, Duration::from_secs(5));
    assert_eq!(status.and_then(|st| st.code()), Some(130), "A: {:?} after {took:?}: {}", status, text(&out_a.stderr));
    eprintln!("A exited 130 after {took:?}");
    spore_tests::none_running_within("sleep 60.17", Duration::from_secs(2))
        .unwrap_or_else(|l| panic!("A's sleep left: {l:?}"));
    spore_tests::none_running_within("sleep 61.17", Duration::from_secs(2))
        .unwrap_or_else(|l| panic!("A's setsid child left: {l:?}"));
    let out_b = wait_bounded(b, Duration::from_secs(20));
    assert_eq!(text(&out_b.stdout), "b\n", "B: {}", text(&out_b.stderr));
    assert_eq!(out_b.status.code(), Some(0), "{}", text(&out_b.stderr));
    assert!(t_b.elapsed() >= Duration::from_secs(2));
    let out = s.run(&["session", "status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).lines().any(|l| l.starts_with("local ")), "{}", text(&out.stdout));
    // SIGTERM does the same as Ctrl-C.
    let mut c = s.command(&["--persist", "60s", "run", "local", "--", "sh", "-c", "exec sleep 62.17"]).spawn().unwrap();
    assert!(spore_tests::wait_for_command("sleep 62.17", 1, Duration::from_secs(10)), "C's sleep never started");
    // SAFETY: kill has no memory effects; C is our child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let status = exit_within(&mut c, Duration::from_secs(2));
    if status.is_none() {
        let _ = c.kill();
    }
    let out_c = wait_bounded(c, Duration::from_secs(5));
    assert_eq!(status.and_then(|st| st.code()), Some(143), "C: {}", text(&out_c.stderr));
    spore_tests::none_running_within("sleep 62.17", Duration::from_secs(2))
        .unwrap_or_else(|l| panic!("C's sleep left: {l:?}"));
    let out = s.warm(&["run", "local", "--", "echo", "still"]);
    assert_eq!(text(&out.stdout), "still\n", "{}", text(&out.stderr));
    s.stop();
    drop(s);
    guard.check();
}

/// `setpriv` to `nobody`, with `cmd`'s program and arguments.
fn as_nobody(s: &Session, args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(spore_bin())
        .args(args)
        .env("XDG_RUNTIME_DIR", &s.xdg)
        .env_remove("SPORE_LOG")
        .env_remove("SPORE_PERSIST")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[test]
fn a_client_of_another_uid_is_refused() {
    let guard = LeakGuard::new();
    let s = Session::new("uid");
    let out = s.warm(&["run", "local", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let server = s.server();
    // A client of uid nobody that does reach the socket (with
    // CAP_DAC_OVERRIDE to pass the 0700 directory) is refused and logged,
    // and what it sends is never read.
    let sock = s.scratch.0.join("spore/session.sock").display().to_string();
    let py = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.settimeout(10)\n\
              try:\n  s.sendall(b'x'*64)\n  d=s.recv(100)\n  print('closed' if d==b'' else repr(d))\n\
              except (ConnectionResetError, BrokenPipeError):\n  print('closed')\nexcept Exception as e:\n  print(repr(e))";
    let child = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=+dac_override",
            "--ambient-caps=+dac_override",
            "--",
            "/usr/bin/python3",
            "-c",
            py,
            &sock,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let out = wait_bounded(child, Duration::from_secs(20));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(t.elapsed() < Duration::from_secs(5), "the stranger waited {:?}", t.elapsed());
    assert_eq!(text(&out.stdout), "closed\n", "the session closes on a stranger without a word");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.log().contains("refused a client of uid 65534") {
        assert!(Instant::now() < deadline, "not logged: {}", s.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.server(), server, "the session stays");
    // The CLI as nobody, pointed at root's runtime directory: it never
    // reaches root's session. (It ignores an XDG_RUNTIME_DIR that is not
    // its own and falls back to /tmp/spore-65534: a session of its own.)
    // nobody's directory also holds its agent cache, shared with other
    // tests: only the session's own files are removed, if new.
    let fallback = std::path::Path::new("/tmp/spore-65534");
    let names = ["session.sock", "session.log", "session.lock"];
    let existed: Vec<bool> = names.iter().map(|n| fallback.join(n).exists()).collect();
    let child = as_nobody(&s, &["--persist", "60s", "run", "local", "--", "id", "-u"]).spawn().unwrap();
    let out = wait_bounded(child, Duration::from_secs(20));
    eprintln!(
        "nobody's --persist run: {:?} stdout {:?} stderr {:?}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    let ran_as = text(&out.stdout);
    assert!(ran_as.is_empty() || ran_as == "65534\n", "nobody's command ran as {ran_as}");
    assert!(out.status.code() == Some(255) || out.status.code() == Some(0), "{:?}", out.status);
    let stopped = wait_bounded(as_nobody(&s, &["session", "stop"]).spawn().unwrap(), Duration::from_secs(30));
    assert_eq!(stopped.status.code(), Some(0), "{}", text(&stopped.stderr));
    for (n, existed) in names.iter().zip(existed) {
        if !existed {
            let _ = std::fs::remove_file(fallback.join(n));
        }
    }
    assert_eq!(s.server(), server, "root's session stays");
    s.stop();
    drop(s);
    guard.check();
}

#[test]
fn warm_runs_on_a_docker_target_match_cold_runs_and_idle_expiry_leaves_nothing_there() {
    use spore_tests::docker::{busybox_image, require_docker, Container};
    require_docker();
    let guard = LeakGuard::new();
    let image = busybox_image();
    let c = Container::run(&image, "session");
    let target = format!("docker:{}", c.name);
    let idle_only = c.processes();
    let s = Session::new("docker");
    let cases: Vec<Vec<&str>> = vec![
        vec!["run", &target, "--", "sh", "-c", BOTH_STREAMS],
        vec!["--json", "run", &target, "--", "sh", "-c", BOTH_STREAMS],
        vec!["-b", "run", &target, "local", "--", "sh", "-c", "echo same; exit 3"],
    ];
    for args in &cases {
        let cold = s.run(args);
        let _first = s.warm(args);
        let warm = s.warm(args);
        same(&args.join(" "), &cold, &warm);
    }
    assert_ne!(c.processes(), idle_only, "the session keeps its agent in the container");
    s.stop();
    assert!(s.gone_within(SHUTDOWN));
    // Idle expiry: the agent in the container goes with the session.
    let out = s.run(&["--persist", "2s", "run", &target, "--", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_ne!(c.processes(), idle_only);
    assert!(s.gone_within(Duration::from_secs(2) + SHUTDOWN), "the session outlived its idle time");
    let deadline = Instant::now() + SHUTDOWN;
    while c.processes() != idle_only {
        assert!(Instant::now() < deadline, "left in the container: {:?}", c.processes());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(s);
    drop(c);
    guard.check();
}

/// What sits at the socket's path and is not a live session of ours is
/// never trusted: a symlink or a plain file is an error (no hang), and
/// nothing is changed there.
#[test]
fn a_symlink_or_a_file_at_the_socket_path_is_refused() {
    let guard = LeakGuard::new();
    let s = Session::new("symlink");
    let dir = s.scratch.0.join("spore");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let sock = dir.join("session.sock");
    let elsewhere = s.scratch.0.join("elsewhere.sock");
    std::os::unix::fs::symlink(&elsewhere, &sock).unwrap();
    let t = Instant::now();
    let out = s.warm(&["run", "local", "--", "echo", "ran"]);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("is a symlink"), "{}", text(&out.stderr));
    assert!(t.elapsed() < Duration::from_secs(15), "took {:?}", t.elapsed());
    assert!(std::fs::symlink_metadata(&sock).unwrap().file_type().is_symlink(), "left as it was");
    assert!(!elsewhere.exists());
    std::fs::remove_file(&sock).unwrap();
    std::fs::write(&sock, b"not a socket").unwrap();
    let out = s.warm(&["run", "local", "--", "echo", "ran"]);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("is not a socket"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&sock).unwrap(), b"not a socket");
    // A socket of another user: not trusted either, not removed.
    std::fs::remove_file(&sock).unwrap();
    let theirs = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::os::unix::fs::chown(&sock, Some(65534), Some(65534)).unwrap();
    let out = s.warm(&["run", "local", "--", "echo", "ran"]);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("is owned by uid 65534"), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    drop(theirs);
    // A runtime directory of the wrong mode is refused too, not repaired.
    std::fs::remove_file(&sock).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = s.warm(&["run", "local", "--", "echo", "ran"]);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not 0700"), "{}", text(&out.stderr));
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o755);
    assert!(s.servers().is_empty() || s.gone_within(SHUTDOWN), "a session started anyway");
    drop(s);
    guard.check();
}

/// A run with other connection options gets contexts of its own; the same
/// options share them.
#[test]
fn other_connection_options_get_their_own_contexts() {
    let guard = LeakGuard::new();
    let s = Session::new("keys");
    let plain = agent_pid(&s, "local");
    let with_o = {
        let out = s.warm(&["-o", "ConnectTimeout=7", "--json", "info", "local"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let line = text(&out.stdout);
        let at = line.find("\"pid\":").unwrap() + 6;
        line[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse::<i32>().unwrap()
    };
    assert_ne!(plain, with_o, "-o keys its own contexts");
    assert_eq!(agent_pid(&s, "local"), plain, "the same options share");
    s.stop();
    drop(s);
    guard.check();
}

/// `--connect-timeout` holds for a run in the session as without it: a
/// target that never answers fails after that long, with the same error
/// and status (the session's own default is 30 s, past the bound here).
#[test]
fn a_run_s_connect_timeout_holds_in_the_session() {
    let guard = LeakGuard::new();
    let s = Session::new("connect-timeout");
    // ssh waits for a banner that never comes, its own timeout far off:
    // spore's connect timeout ends the wait.
    let args =
        ["-o", "ConnectTimeout=120", "-o", "ProxyCommand=sleep 118.3", "--connect-timeout", "1", "run", "hang.invalid"];
    let args: Vec<&str> = args.into_iter().chain(["--", "true"]).collect();
    let bound = Duration::from_secs(20);
    let cold = wait_bounded(s.command(&args).spawn().unwrap(), bound);
    assert_eq!(cold.status.code(), Some(255), "{}", text(&cold.stderr));
    assert!(text(&cold.stderr).contains("hang.invalid: connection failed: timed out"), "{}", text(&cold.stderr));
    let mut warm_args = vec!["--persist", "60s"];
    warm_args.extend_from_slice(&args);
    for round in ["starting the session", "warm"] {
        let warm = wait_bounded(s.command(&warm_args).spawn().unwrap(), bound);
        assert_eq!(text(&warm.stderr), text(&cold.stderr), "{round}");
        assert_eq!(warm.status.code(), Some(255), "{round}");
    }
    spore_tests::none_running_within("sleep 118.3", Duration::from_secs(5)).unwrap_or_else(|l| panic!("left: {l:?}"));
    s.stop();
    drop(s);
    guard.check();
}

/// A client whose stderr lines are watched as they come.
struct Watched {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    readers: (std::thread::JoinHandle<Vec<u8>>, std::thread::JoinHandle<()>),
}

impl Watched {
    fn start(mut cmd: Command) -> Watched {
        use std::io::{BufRead, Read};
        let mut child = cmd.spawn().unwrap();
        let (mut out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = std::sync::Arc::clone(&lines);
        let readers = (
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = out.read_to_end(&mut v);
                v
            }),
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                    into.lock().unwrap().push(line);
                }
            }),
        );
        Watched { child, lines, readers }
    }

    /// Wait (bounded) for a line of stderr holding `what`.
    fn wait_line(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.lines.lock().unwrap().iter().any(|l| l.contains(what)) {
            assert!(Instant::now() < deadline, "no {what:?} on stderr: {:?}", self.lines.lock().unwrap());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its exit status, stdout and stderr lines (killed past a minute).
    fn finish(mut self) -> (Option<i32>, String, Vec<String>) {
        let status = exit_within(&mut self.child, Duration::from_secs(60));
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let out = self.readers.0.join().unwrap();
        self.readers.1.join().unwrap();
        let lines = self.lines.lock().unwrap().clone();
        assert!(status.is_some(), "still running after a minute: {lines:?}");
        (status.and_then(|s| s.code()), text(&out), lines)
    }
}

/// `-v` on a run in the session: the client's stderr shows the lines a cold
/// `-v` run shows for its work (its connects; its agents' records), not
/// `session.log`. Another client's run at the same time sees none of
/// them: without `-v`, nothing; with it, its own target's only.
#[test]
fn a_run_s_verbosity_shows_its_own_log() {
    let guard = LeakGuard::new();
    let s = Session::new("verbose");
    let flag = s.scratch.path("go");
    // A command that ends once the test says so (or after 30 s).
    let waiting =
        |tag: &str| format!("i=0; while [ ! -e {flag} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; echo {tag}");
    let stable = [
        "DEBUG [master] spore::context: connected local (context ",
        "DEBUG [master] spore::context: connected local/local (context ",
        "DEBUG [local] spore_agent::dispatch: call connect from context 0",
        "DEBUG [local/local] spore_agent::dispatch: agent local/local up: pid ",
        "DEBUG [local/local] spore_agent::dispatch: call exec from context 0",
    ];
    let has = |lines: &[String], what: &str| lines.iter().any(|l| l.starts_with(what));
    std::fs::write(&flag, "").unwrap();
    let a_script = waiting("a");
    let cold = s.run(&["-v", "run", "local/local", "--", "sh", "-c", &a_script]);
    let cold_lines: Vec<String> = text(&cold.stderr).lines().map(String::from).collect();
    for line in stable {
        assert!(has(&cold_lines, line), "cold: no {line:?} in {cold_lines:?}");
    }
    // The session's first run connects: the same lines.
    let first =
        Watched::start(s.command(&["--persist", "60s", "-v", "run", "local/local", "--", "sh", "-c", &a_script]));
    let (status, out, lines) = first.finish();
    assert_eq!((status, out.as_str()), (Some(0), "a\n"), "{lines:?}");
    for line in stable {
        assert!(has(&lines, line), "first: no {line:?} in {lines:?}");
    }
    // Warm, three clients at once: A with -v, on local/local...
    std::fs::remove_file(&flag).unwrap();
    let warm = |args: &[&str]| {
        let mut all = vec!["--persist", "60s"];
        all.extend_from_slice(args);
        Watched::start(s.command(&all))
    };
    let a = warm(&["-v", "run", "local/local", "--", "sh", "-c", &a_script]);
    a.wait_line(stable[4]);
    // ...B without, on the same target; C with -v, on local (a hop of A's).
    let b_script = waiting("b");
    let b = warm(&["run", "local/local", "--", "sh", "-c", &b_script]);
    let c = warm(&["-v", "run", "local", "--", "sh", "-c", &waiting("c")]);
    c.wait_line("DEBUG [local] spore_agent::dispatch: call exec from context 0");
    let deadline = Instant::now() + Duration::from_secs(20);
    while spore_tests::running_anywhere(&b_script).is_empty() {
        assert!(Instant::now() < deadline, "B's command never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(&flag, "").unwrap();
    let (a, b, c) = (a.finish(), b.finish(), c.finish());
    assert_eq!((a.0, a.1.as_str()), (Some(0), "a\n"), "A: {:?}", a.2);
    assert!(!a.2.iter().any(|l| l.contains("[local] ")), "A got C's records: {:?}", a.2);
    assert_eq!((b.0, b.1.as_str(), b.2.len()), (Some(0), "b\n", 0), "B: {:?}", b.2);
    assert_eq!((c.0, c.1.as_str()), (Some(0), "c\n"), "C: {:?}", c.2);
    assert!(!c.2.iter().any(|l| l.contains("[local/local] ")), "C got A's or B's records: {:?}", c.2);
    assert!(!s.log().contains("DEBUG"), "session.log keeps its own level: {}", s.log());
    s.stop();
    drop(s);
    guard.check();
}

/// Bytes waiting in a pipe.
fn pipe_bytes(fd: &impl std::os::fd::AsRawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer we pass, valid for
    // the call.
    assert_eq!(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) }, 0);
    usize::try_from(n).unwrap()
}

/// Whether a thread of `pid` named `name` waits to write to a full pipe.
fn stuck_writing(pid: i32, name: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().any(|t| {
        let read = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
        read("comm").trim() == name && read("wchan").contains("pipe_write")
    })
}

/// A run's log is bounded: its target floods the log (lines on its agent's
/// own stderr, forwarded as warnings) while its client does not read its
/// stderr; another client's run meanwhile gets its own records at once,
/// the session does not grow, and the flooded client gets what fitted and
/// a count of the rest.
#[test]
fn a_run_s_log_flood_is_bounded_and_holds_up_no_other_client() {
    let guard = LeakGuard::new();
    let s = Session::new("log-flood");
    let pid = agent_pid(&s, "local/local");
    let server = u32::try_from(s.server()).unwrap();
    let before = spore_tests::rss_kib(server);
    let flood = format!("yes flood-line | head -n 300000 > /proc/{pid}/fd/2");
    let mut a = s.command(&["--persist", "60s", "run", "local/local", "--", "sh", "-c", &flood]).spawn().unwrap();
    // A's stderr, unread, fills: the session's writer for it is stuck.
    let a_err = a.stderr.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stuck_writing(s.server(), "spore-run-log") {
        assert!(Instant::now() < deadline, "A's log writer never got stuck: {} bytes in its pipe", pipe_bytes(&a_err));
        std::thread::sleep(Duration::from_millis(10));
    }
    let grown = spore_tests::rss_kib(server);
    // B, -v, on local (not A's target): its agent's records come.
    let flag = s.scratch.path("go");
    let b_script = format!("i=0; while [ ! -e {flag} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; echo b");
    let b = Watched::start(s.command(&["--persist", "60s", "-v", "run", "local", "--", "sh", "-c", &b_script]));
    b.wait_line("DEBUG [local] spore_agent::dispatch: call exec from context 0");
    std::fs::write(&flag, "").unwrap();
    let (status, out, lines) = b.finish();
    assert_eq!((status, out.as_str()), (Some(0), "b\n"), "B: {lines:?}");
    assert!(!lines.iter().any(|l| l.contains("flood-line")), "B got A's records");
    // A ends (its run does not wait for its stderr), and gets the rest
    // once it reads.
    let status = exit_within(&mut a, Duration::from_secs(30));
    if status.is_none() {
        let _ = a.kill();
    }
    a.stderr = Some(a_err);
    let out = wait_bounded(a, Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "A");
    let err = text(&out.stderr);
    let shown = err.lines().filter(|l| l.starts_with("WARN  [local/local] stderr: flood-line")).count();
    let last = err.lines().last().unwrap_or_default();
    eprintln!("A: {shown} flood lines shown, then {last:?}; session RSS {before} -> {grown} KiB");
    assert!(shown > 0, "{}", &err[..err.len().min(2000)]);
    assert!(last.ends_with("log records of this run dropped (stderr fell behind)"), "{last}");
    assert!(grown < before + 64 * 1024, "the session grew from {before} to {grown} KiB");
    s.stop();
    drop(s);
    guard.check();
}

/// Whether `needle` occurs anywhere in the writable memory of `pid`.
fn memory_holds(pid: i32, needle: &[u8]) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut found = false;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else { continue };
        if !perms.starts_with("rw") {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (u64::from_str_radix(a, 16).unwrap(), u64::from_str_radix(b, 16).unwrap());
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        for (i, _) in buf.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle) {
            let around = &buf[i.saturating_sub(64)..(i + needle.len() + 48).min(buf.len())];
            eprintln!("found at {:#x} in {line}: {:?}", a + i as u64, String::from_utf8_lossy(around));
            found = true;
        }
    }
    found
}

/// A live sudo context stays: the second run needs no password.
#[test]
fn a_sudo_context_stays_for_the_next_run() {
    sudo_context(false);
}

/// The password given with -K is not kept in the session's memory (its
/// writable pages are searched for it, after the run).
#[test]
fn the_become_password_is_not_kept_in_the_session() {
    sudo_context(true);
}

fn sudo_context(check_memory: bool) {
    use spore_tests::sshd::{PASSWORD, USER_PW};
    let guard = LeakGuard::new();
    let mut sshd = Sshd::start();
    let cfg = sshd.config_str();
    let s = Session::new("become");
    let target = format!("{USER_PW}@spore-test/sudo");
    // Cold, without the password: refused, as without a session.
    let out = s.run(&["-F", &cfg, "run", &target, "--", "id", "-u"]);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    let mut c = s.command(&["--persist", "60s", "-F", &cfg, "-K", "run", &target, "--", "id", "-u"]);
    c.stdin(Stdio::piped());
    // No controlling terminal: -K reads the password from stdin.
    // SAFETY: setsid between fork and exec touches only the child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        let mut w = child.stdin.take().unwrap();
        w.write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
    }
    let out = wait_bounded(child, Duration::from_secs(60));
    assert_eq!(text(&out.stdout), "0\n", "{}", text(&out.stderr));
    // Warm, without -K: the sudo context is still there.
    let out = s.warm(&["-F", &cfg, "run", &target, "--", "id", "-u"]);
    assert_eq!(text(&out.stdout), "0\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
    let server = s.server();
    let held = check_memory && memory_holds(server, PASSWORD.as_bytes());
    s.stop();
    drop(s);
    sshd.stop();
    guard.check();
    assert!(!held, "the session's memory still holds the -K password");
}

/// Many clients at once on the same targets: each gets its own output and
/// status, nothing crossed.
#[test]
fn clients_at_once_each_get_their_own_results() {
    let guard = LeakGuard::new();
    let s = Session::new("many");
    let scripts: Vec<String> = (0..8)
        .map(|i| format!("for j in 1 2 3; do echo {i}-$j; echo e{i} >&2; sleep 0.0{i}; done; exit {i}"))
        .collect();
    // First with no session running (they race to start one: one wins),
    // then with it warm.
    for round in ["racing to start", "warm"] {
        let children: Vec<_> = scripts
            .iter()
            .map(|sc| s.command(&["--persist", "60s", "run", "local/local", "--", "sh", "-c", sc]).spawn().unwrap())
            .collect();
        for (i, child) in children.into_iter().enumerate() {
            let out = wait_bounded(child, Duration::from_secs(30));
            assert_eq!(
                text(&out.stdout),
                format!("{i}-1\n{i}-2\n{i}-3\n"),
                "{round}, client {i}: {}",
                text(&out.stderr)
            );
            assert_eq!(text(&out.stderr), format!("e{i}\ne{i}\ne{i}\n"), "{round}, client {i}");
            assert_eq!(out.status.code(), Some(i as i32), "{round}, client {i}");
        }
        assert_eq!(s.servers().len(), 1, "{round}: one session for all");
    }
    s.stop();
    drop(s);
    guard.check();
}

/// A client killed mid-run (no chance to say `cancel`): its run is
/// cancelled all the same, and the session stays for the next.
#[test]
fn a_killed_client_s_run_is_cancelled() {
    let guard = LeakGuard::new();
    let s = Session::new("client-killed");
    let mut a = s.command(&["--persist", "60s", "run", "local", "--", "sh", "-c", "exec sleep 63.17"]).spawn().unwrap();
    assert!(spore_tests::wait_for_command("sleep 63.17", 1, Duration::from_secs(10)), "the sleep never started");
    a.kill().unwrap();
    let _ = wait_bounded(a, Duration::from_secs(5));
    spore_tests::none_running_within("sleep 63.17", Duration::from_secs(3))
        .unwrap_or_else(|l| panic!("the run goes on: {l:?}"));
    let out = s.warm(&["run", "local", "--", "echo", "next"]);
    assert_eq!(text(&out.stdout), "next\n", "{}", text(&out.stderr));
    s.stop();
    drop(s);
    guard.check();
}

/// The session killed mid-run: the client says so and exits 255 (no hang),
/// the command goes with the session's agent.
#[test]
fn a_session_killed_mid_run_ends_the_client() {
    let guard = LeakGuard::new();
    let s = Session::new("killed-mid-run");
    let a = s.command(&["--persist", "60s", "run", "local", "--", "sh", "-c", "exec sleep 64.17"]).spawn().unwrap();
    assert!(spore_tests::wait_for_command("sleep 64.17", 1, Duration::from_secs(10)), "the sleep never started");
    // SAFETY: kill has no memory effects; this session is ours.
    unsafe { libc::kill(s.server(), libc::SIGKILL) };
    let out = wait_bounded(a, Duration::from_secs(5));
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(text(&out.stderr).starts_with("spore: --persist: "), "{}", text(&out.stderr));
    eprintln!("the client said: {}", text(&out.stderr));
    spore_tests::none_running_within("sleep 64.17", SHUTDOWN).unwrap_or_else(|l| panic!("left: {l:?}"));
    s.stop();
    drop(s);
    guard.check();
}

/// `persist = DURATION` in the config file makes every run persistent;
/// `--persist 0` runs one without the session; a bad value is a clear
/// usage error naming the file and line.
#[test]
fn the_config_file_can_make_runs_persistent() {
    let guard = LeakGuard::new();
    let s = Session::new("config");
    let config = s.scratch.path("config-home");
    std::fs::create_dir_all(format!("{config}/spore")).unwrap();
    std::fs::write(format!("{config}/spore/config"), "# spore's settings\npersist = 60s\n").unwrap();
    let run = |args: &[&str]| {
        let mut c = s.command(args);
        c.env("XDG_CONFIG_HOME", &config);
        wait_bounded(c.spawn().unwrap(), Duration::from_secs(60))
    };
    let out = run(&["--persist", "0", "run", "local", "--", "echo", "here"]);
    assert_eq!(text(&out.stdout), "here\n", "{}", text(&out.stderr));
    assert!(s.servers().is_empty(), "--persist 0 starts no session");
    let out = run(&["run", "local", "--", "echo", "there"]);
    assert_eq!(text(&out.stdout), "there\n", "{}", text(&out.stderr));
    assert!(!s.servers().is_empty(), "the config's persist started a session");
    std::fs::write(format!("{config}/spore/config"), "persist = soon\n").unwrap();
    let out = run(&["run", "local", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("spore/config:1: persist: not a duration"), "{}", text(&out.stderr));
    s.stop();
    drop(s);
    guard.check();
}
