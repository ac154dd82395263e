//! `Command::script`: a local script run on a target from an anonymous
//! file (its fd 3), with any interpreter line, arguments and stdin of its
//! own; nothing written to the target's disk, no fd leaked, and killed,
//! timed out and reaped like any command. Real local agents, and busybox
//! ash behind a real sshd.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore::{Command, Context, Error, ExitStatus, Router, Stream};
use spore_protocol::body::{self, ExecArgs, ExecReply, MAX_SCRIPT};
use spore_tests::site::Site;
use spore_tests::sshd::USER_ASH;
use spore_tests::{pattern, LeakGuard};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// What a script run gave back.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Run `cmd` on `ctx`, feeding it `stdin` (if any).
fn run(ctx: &Context, cmd: &Command, stdin: Option<Vec<u8>>) -> Ran {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let input = stdin.map(|s| Box::new(std::io::Cursor::new(s)) as Box<dyn std::io::Read + Send>);
    let status = ctx
        .exec_streaming(cmd, input, &mut |which, data| {
            match which {
                Stream::Stdout => out.extend_from_slice(data),
                Stream::Stderr => err.extend_from_slice(data),
            }
            Ok(())
        })
        .unwrap();
    Ran { status, stdout: String::from_utf8(out).unwrap(), stderr: String::from_utf8(err).unwrap() }
}

fn script(source: &str, args: &[&str]) -> Command {
    Command::script(source.as_bytes(), args.iter().copied()).unwrap()
}

/// The fds of process `pid`, with what they point at.
fn fds_of(pid: i32) -> Vec<(i32, String)> {
    let mut fds: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            Some((fd, std::fs::read_link(e.path()).ok()?.display().to_string()))
        })
        .collect();
    fds.sort();
    fds
}

/// Every process below this one that holds a script's memfd.
fn holders_of_scripts() -> Vec<i32> {
    spore_tests::descendants()
        .into_iter()
        .filter(|&p| {
            let fds = std::fs::read_dir(format!("/proc/{p}/fd")).map(|d| d.flatten().collect()).unwrap_or(Vec::new());
            fds.iter()
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.display().to_string().contains("spore-script")))
        })
        .collect()
}

/// Wait (bounded) for `pid` to be gone; true if it is.
fn gone_within(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    !alive(pid)
}

fn alive(pid: i32) -> bool {
    // A zombie is dead: only its entry is left for the reaper.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

#[test]
fn sh_bash_python_and_perl_scripts_get_their_arguments_and_stdin() {
    let guard = LeakGuard::new();
    let r = Router::new().unwrap();
    let ctx = r.local().unwrap();
    // Through a second hop too: the call (and the script in it) is routed
    // like any other.
    let inner = ctx.connect("local").unwrap();
    let cases: [(&str, &str); 5] = [
        ("#!/bin/sh\nprintf '%s|' \"$0\" \"$@\"; read x; echo \"in:$x\"\n", "/dev/fd/3|a b|c|in:line 1\n"),
        (
            "#!/bin/bash -e\nprintf '%s|' \"$0\" \"$@\" \"${BASH_VERSION%%.*}\"; [[ $- == *e* ]] && echo -n errexit\nread x\necho \" in:$x\"\n",
            "/dev/fd/3|a b|c|5|errexit in:line 1\n",
        ),
        (
            "#!/usr/bin/env python3\nimport sys\nprint('|'.join(sys.argv), sys.stdin.readline().strip(), sep='|in:')\n",
            "/dev/fd/3|a b|c|in:line 1\n",
        ),
        // perl reads a script named /dev/fd/N from that fd itself (not a
        // fresh open): the agent must leave the fd's offset at 0.
        (
            "#!/usr/bin/perl -w\nuse strict;\nmy $x = <STDIN>; chomp $x;\nprint join('|', $0, @ARGV), \"|in:$x\\n\";\n",
            "/dev/fd/3|a b|c|in:line 1\n",
        ),
        (
            "#! /usr/bin/env  perl\nprint join('|', $0, @ARGV), '|in:', scalar <STDIN>;\n",
            "/dev/fd/3|a b|c|in:line 1\n",
        ),
    ];
    for (source, want) in cases {
        for c in [&ctx, &inner] {
            let ran = run(c, &script(source, &["a b", "c"]), Some(b"line 1\nline 2\n".to_vec()));
            assert_eq!((ran.stdout.as_str(), ran.stderr.as_str()), (want, ""), "{source}");
            assert!(ran.status.success(), "{source}: {:?}", ran.status);
        }
    }
    // Its status is the script's; with no stdin given, it reads /dev/null.
    let ran = run(&ctx, &script("#!/bin/sh\ncat; echo oops >&2; exit 7\n", &[]), None);
    assert_eq!((ran.stdout.as_str(), ran.stderr.as_str(), ran.status.code), ("", "oops\n", Some(7)));
    // The collecting form works the same.
    let out = ctx.exec(&script("#!/usr/bin/env python3\nimport sys; sys.exit(len(sys.argv))\n", &["x", "y"])).unwrap();
    assert_eq!(out.status.code, Some(3));
    r.shutdown();
    drop((ctx, inner, r));
    guard.check();
}

#[test]
fn without_an_interpreter_line_the_script_runs_under_bin_sh() {
    let guard = LeakGuard::new();
    let r = Router::new().unwrap();
    let ctx = r.local().unwrap();
    let ran = run(&ctx, &script("echo \"$0 $#\"; readlink /proc/$$/exe\n", &["one", "two"]), None);
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    assert_eq!(ran.stdout, format!("/dev/fd/3 2\n{}\n", sh.display()));
    // A `#!` that is not at the very start is no interpreter line either.
    let ran = run(&ctx, &script(" #!/usr/bin/perl\necho sh here\n", &[]), None);
    assert_eq!(ran.stdout, "sh here\n");
    r.shutdown();
    drop((ctx, r));
    guard.check();
}

#[test]
fn a_missing_interpreter_ends_with_127_and_says_which_on_which_target() {
    let guard = LeakGuard::new();
    let r = Router::new().unwrap();
    let ctx = r.local().unwrap();
    let inner = ctx.connect("local").unwrap();
    for (c, target) in [(&ctx, "local"), (&inner, "local/local")] {
        let ran = run(c, &script("#!/no/such/interpreter -x\necho never\n", &["a"]), Some(b"in".to_vec()));
        assert_eq!(ran.status.code, Some(127), "{}", ran.stderr);
        assert_eq!(ran.stdout, "");
        assert_eq!(
            ran.stderr,
            format!(
                "spore: {target}: can't run the script's interpreter \"/no/such/interpreter\": No such file or directory (os error 2)\n"
            )
        );
    }
    // Collected, the same.
    let out = ctx.exec(&script("#!/no/such/interpreter\n", &[])).unwrap();
    assert_eq!(out.status.code, Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("spore: local: can't run the script's interpreter"));
    // A DOS line end is part of the name, shown escaped.
    let ran = run(&ctx, &script("#!/bin/sh\r\necho never\r\n", &[]), None);
    assert_eq!(ran.status.code, Some(127));
    assert!(ran.stderr.contains("interpreter \"/bin/sh\\r\": No such file"), "{}", ran.stderr);
    // There but not executable: 126, as from a shell.
    let ran = run(&ctx, &script("#!/etc/passwd\necho never\n", &[]), None);
    assert_eq!(ran.status.code, Some(126));
    assert!(ran.stderr.contains("\"/etc/passwd\": Permission denied"), "{}", ran.stderr);
    // Through env, env says so itself, with a shell's 127.
    let ran = run(&ctx, &script("#!/usr/bin/env spore-no-such-interpreter\necho never\n", &[]), None);
    assert_eq!(ran.status.code, Some(127));
    assert!(ran.stderr.contains("spore-no-such-interpreter"), "{}", ran.stderr);
    // The context is fine afterwards.
    assert!(run(&ctx, &script("exit 0\n", &[]), None).status.success());
    r.shutdown();
    drop((ctx, inner, r));
    guard.check();
}

#[test]
fn the_script_reads_its_own_stdin_while_its_source_comes_from_fd_3() {
    let guard = LeakGuard::new();
    let r = Router::new().unwrap();
    let ctx = r.local().unwrap();
    let data = pattern(3 << 20, 5);
    // It reads all of stdin, then its own source again through fd 3: an
    // anonymous, sealed memfd, not a file on any disk.
    let source = "#!/bin/sh\nsha256sum\nhead -n 1 /dev/fd/3\nreadlink /proc/$$/fd/3\necho x >&3 || echo sealed\n";
    let ran = run(&ctx, &script(source, &[]), Some(data.clone()));
    let mut lines = ran.stdout.lines();
    let digest = lines.next().unwrap();
    let want = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            std::io::Write::write_all(&mut c.stdin.take().unwrap(), &data)?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(digest, String::from_utf8_lossy(&want.stdout).trim_end());
    assert_eq!(lines.next(), Some("#!/bin/sh"));
    assert_eq!(lines.next(), Some("/memfd:spore-script (deleted)"));
    assert_eq!(lines.next(), Some("sealed"));
    r.shutdown();
    drop((ctx, r));
    guard.check();
}

#[test]
fn nothing_is_left_on_the_target_and_no_fd_leaks_but_fd_3_of_what_the_script_starts() {
    let guard = LeakGuard::new();
    let r = Router::new().unwrap();
    let ctx = r.local().unwrap();
    let agent = ctx.info().unwrap().pid as i32;
    let agent_dir = std::fs::read_link(format!("/proc/{agent}/exe")).unwrap().parent().unwrap().to_path_buf();
    let list = |dir: &std::path::Path| -> BTreeSet<String> {
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
    };
    let tmp = ["/tmp", "/dev/shm"].map(std::path::Path::new);
    let (cache_before, tmp_before) = (list(&agent_dir), tmp.map(list));
    // A script that leaves a grandchild running (its stdio elsewhere, so
    // the call ends) and tells its pid; meanwhile plain commands run.
    let source = "#!/bin/sh\nsleep 60 </dev/null >/dev/null 2>&1 &\necho $!\n";
    let plain = Command::new(["sh", "-c", "ls /proc/$$/fd; true"]);
    let mut pids = Vec::new();
    std::thread::scope(|s| {
        let lister = s.spawn(|| (0..20).map(|_| ctx.exec(&plain).unwrap().stdout).collect::<Vec<_>>());
        for _ in 0..5 {
            let out = ctx.exec(&script(source, &[])).unwrap();
            assert!(out.status.success());
            pids.push(String::from_utf8_lossy(&out.stdout).trim().parse::<i32>().unwrap());
        }
        for listing in lister.join().unwrap() {
            let text = String::from_utf8(listing).unwrap();
            assert_eq!(text, "0\n1\n2\n", "a plain command got an fd it should not have");
        }
    });
    for &pid in &pids {
        let fds = fds_of(pid);
        let numbers: Vec<i32> = fds.iter().map(|f| f.0).collect();
        assert_eq!(numbers, [0, 1, 2, 3], "{fds:?}");
        assert_eq!(fds[3].1, "/memfd:spore-script (deleted)", "{fds:?}");
    }
    // Only the grandchildren hold a script: not the agent, not a guardian.
    let mut holders = holders_of_scripts();
    holders.sort();
    pids.sort();
    assert_eq!(holders, pids);
    assert!(!fds_of(agent).iter().any(|f| f.1.contains("spore-script")));
    assert_eq!(list(&agent_dir), cache_before, "the agent's directory changed");
    // (Other tests, and other users of the machine, come and go there:
    // only a name a script's file could have counts.)
    for (dir, before) in tmp.iter().zip(&tmp_before) {
        let new: Vec<String> = list(dir).difference(before).cloned().collect();
        assert!(!new.iter().any(|n| n.contains("script")), "{}: {new:?}", dir.display());
    }
    // The grandchildren are the guardians' to end: at shutdown.
    r.shutdown();
    for &p in &pids {
        assert!(gone_within(p, Duration::from_secs(5)), "a script's grandchild outlived its context");
    }
    drop((ctx, r));
    guard.check();
}

#[test]
fn a_timeout_kills_a_script_and_what_it_forked_away() {
    let guard = LeakGuard::new();
    let r = Router::new().unwrap();
    let ctx = r.local().unwrap();
    let start = Instant::now();
    let source = "#!/bin/bash\nsetsid sleep 60 </dev/null >/dev/null 2>&1 &\necho $! >&2\necho started\nsleep 60\n";
    let ran = run(&ctx, &script(source, &[]).timeout(Duration::from_millis(500)), None);
    assert!(ran.status.timed_out, "{:?}", ran.status);
    assert_eq!(ran.status.signal, Some(libc::SIGTERM));
    assert_eq!(ran.stdout, "started\n");
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    let away: i32 = ran.stderr.trim().parse().unwrap();
    assert!(gone_within(away, Duration::from_secs(5)), "the process the script set free outlived its timeout");
    // One that forks away and ends keeps its guardian until what it left
    // is gone: killed at shutdown, like any command's.
    let out = ctx.exec(&script("setsid sleep 60 </dev/null >/dev/null 2>&1 &\necho $!\n", &[])).unwrap();
    let away: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(alive(away));
    // Its parent gone, it was handed to the script's guardian.
    let stat = std::fs::read_to_string(format!("/proc/{away}/stat")).unwrap();
    let ppid = stat.rsplit_once(") ").unwrap().1.split(' ').nth(1).unwrap();
    let parent = spore_tests::cmdline(ppid.parse().unwrap());
    assert!(parent.contains("--spore-guardian"), "{parent}");
    r.shutdown();
    assert!(gone_within(away, Duration::from_secs(5)), "the process the script set free outlived the context");
    drop((ctx, r));
    guard.check();
}

#[test]
fn a_one_mib_script_runs_and_one_over_the_bound_is_refused() {
    let guard = LeakGuard::new();
    let r = Router::new().unwrap();
    let ctx = r.local().unwrap();
    // 1 MiB: mostly a here-document of all printable ASCII (quotes and
    // backslashes included), which it checks against its own source.
    let head = "#!/bin/sh\nwc -c </dev/fd/3\ncat <<'EOF' | tail -c 20\n";
    let tail = "\nEOF\n";
    let line: String = (b' '..=b'~').map(char::from).collect::<String>() + "\n";
    let mut body = line.repeat((1 << 20) / line.len() + 1);
    body.truncate((1 << 20) - head.len() - tail.len());
    let source = format!("{head}{body}{tail}");
    assert_eq!(source.len(), 1 << 20);
    let ran = run(&ctx, &Command::script(source.as_bytes(), ["x"]).unwrap(), None);
    assert_eq!(ran.stdout, format!("{}\n{}\n", 1 << 20, &body[body.len() - 19..]), "{}", ran.stderr);
    // The biggest allowed, all of it escaped in JSON (6 bytes a byte): it
    // fits in a call.
    let escaped = format!("exit 3\n{}", "\u{1}".repeat(MAX_SCRIPT - 7));
    let out = ctx.exec(&Command::script(escaped.as_bytes(), ["x"]).unwrap()).unwrap();
    assert_eq!(out.status.code, Some(3));
    // One byte more is refused here, with a clear error...
    let over = format!("exit 3\n#{}", "a".repeat(MAX_SCRIPT - 7));
    let err = Command::script(over.as_bytes(), ["x"]).unwrap_err();
    assert!(matches!(&err, Error::Usage(m) if m.contains("4194305 bytes") && m.contains("at most 4194304")), "{err}");
    // ...and by an agent, from a caller that does not check.
    let mut args = ExecArgs {
        op: "exec".into(),
        argv: vec!["/bin/sh".into(), "/dev/fd/3".into()],
        script: Some(over.clone()),
        ..Default::default()
    };
    let reply = ctx.call_async(body::to_json(&args)).wait().unwrap();
    let err = ctx.decode::<ExecReply>(&reply).unwrap_err();
    assert!(err.to_string().contains("exec: the script is over 4 MiB"), "{err}");
    assert_eq!(err.remote_kind(), Some("invalid"));
    // So is a call too big for the frame limit the router was given.
    let small = Router::with_options(spore::Options { max_message: 1 << 20, ..Default::default() }).unwrap();
    let c = small.local().unwrap();
    let err = c.exec(&Command::script(&over.as_bytes()[..MAX_SCRIPT], ["x"]).unwrap()).unwrap_err();
    assert!(matches!(&err, Error::Usage(m) if m.contains("over the largest message (1048576 bytes")), "{err}");
    assert!(c.ping().is_ok(), "the context survives");
    args.script = Some("exit 4\n".into());
    let reply = ctx.call_async(body::to_json(&args)).wait().unwrap();
    assert_eq!(ctx.decode::<ExecReply>(&reply).unwrap().status, Some(4));
    small.shutdown();
    r.shutdown();
    drop((ctx, c, r, small));
    guard.check();
}

#[test]
fn scripts_run_on_busybox_ash_over_ssh() {
    let guard = LeakGuard::new();
    let mut site = Site::ssh();
    let r = Router::new().unwrap();
    let name = format!("{USER_ASH}@spore-test");
    let ctx = r.connect(&site.hop_as(Some(USER_ASH), &[]), &name).unwrap();
    // `sh` in its PATH is busybox; /bin/sh is not.
    let source = "#!/usr/bin/env sh\nprintf '%s|' \"$0\" \"$@\"; read x; echo \"in:$x\"; readlink /proc/$$/exe\n";
    let ran = run(&ctx, &script(source, &["a b", "c"]), Some(b"line 1\n".to_vec()));
    assert_eq!(ran.stdout, "/dev/fd/3|a b|c|in:line 1\n/usr/bin/busybox\n", "{}", ran.stderr);
    let source = "#!/usr/bin/busybox sh\necho \"$0 $*\"; cat; readlink /proc/$$/exe\n";
    let ran = run(&ctx, &script(source, &["x"]), Some(b"in\n".to_vec()));
    assert_eq!(ran.stdout, "/dev/fd/3 x\nin\n/usr/bin/busybox\n", "{}", ran.stderr);
    let ran = run(&ctx, &script("echo \"$0\"; readlink /proc/$$/exe\n", &[]), None);
    assert_eq!(ran.stdout, "/dev/fd/3\n/usr/bin/dash\n", "{}", ran.stderr);
    let ran = run(&ctx, &script("#!/no/such/interpreter\n", &[]), None);
    assert_eq!(ran.status.code, Some(127));
    assert!(ran.stderr.starts_with(&format!("spore: {name}: can't run the script's interpreter")), "{}", ran.stderr);
    r.shutdown();
    site.stop();
    drop((ctx, r, site));
    guard.check();
}
