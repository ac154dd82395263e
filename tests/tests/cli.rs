//! The `spore` CLI as a user runs it, and the agent binary fed bad input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore_protocol::{handle, Message};
use spore_tests::{agent_path, pattern, run_spore, spore_bin, unbase64_into, wait_bounded, LeakGuard, Scratch};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn spore(args: &[&str]) -> Output {
    run_spore(args, None)
}

fn spore_with(args: &[&str], stdin: Option<&[u8]>) -> Output {
    run_spore(args, stdin)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn run_passes_output_and_exit_status_through() {
    let guard = LeakGuard::new();
    let out = spore(&["run", "local", "--", "uname", "-a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("Linux "), "{}", text(&out.stdout));
    let out = spore(&["run", "local/local", "--", "sh", "-c", "echo to-err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(text(&out.stderr), "to-err\n");
    let out = spore(&["run", "local", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15));
    let out = spore_with(&["run", "local", "--", "tr", "a-z", "A-Z"], Some(b"piped stdin\n"));
    assert_eq!(text(&out.stdout), "PIPED STDIN\n");
    guard.check();
}

#[test]
fn run_on_several_targets_prefixes_lines() {
    let guard = LeakGuard::new();
    let out =
        spore(&["run", "local", "local/local", "local/local/local", "--", "sh", "-c", "echo one; echo two; exit 2"]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = text(&out.stdout);
    // Lines of different targets may interleave; each target's are whole
    // and in order.
    for t in ["local", "local/local", "local/local/local"] {
        let prefix = format!("{t}: ");
        let mine: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix(&prefix)).collect();
        assert_eq!(mine, ["one", "two"], "{stdout}");
    }
    assert_eq!(stdout.lines().count(), 6, "{stdout}");
    // One failing target makes the whole run fail: only the nested agent's
    // parent is itself an agent.
    let script = r#"grep -q agent /proc/$(cut -d" " -f4 /proc/$PPID/stat)/comm && exit 5; exit 0"#;
    let out = spore(&["run", "local", "local/local", "--", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    guard.check();
}

/// The `--json` lines of a run, parsed.
fn json_lines(stdout: &[u8]) -> Vec<miniserde::json::Object> {
    text(stdout)
        .lines()
        .map(|l| match miniserde::json::from_str::<miniserde::json::Value>(l) {
            Ok(miniserde::json::Value::Object(o)) => o,
            _ => panic!("not a JSON object: {l}"),
        })
        .collect()
}

fn field<'a>(o: &'a miniserde::json::Object, k: &str) -> Option<&'a str> {
    match o.get(k) {
        Some(miniserde::json::Value::String(s)) => Some(s),
        _ => None,
    }
}

fn number(o: &miniserde::json::Object, k: &str) -> Option<i64> {
    match o.get(k) {
        Some(miniserde::json::Value::Number(miniserde::json::Number::U64(n))) => Some(*n as i64),
        Some(miniserde::json::Value::Number(miniserde::json::Number::I64(n))) => Some(*n),
        _ => None,
    }
}

/// A target's stream, put back together from its chunk objects.
fn joined(objects: &[miniserde::json::Object], target: &str, stream: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for o in objects.iter().filter(|o| field(o, "target") == Some(target) && field(o, "stream") == Some(stream)) {
        match (field(o, "data"), field(o, "data_b64")) {
            (Some(d), None) => out.extend_from_slice(d.as_bytes()),
            (None, Some(b)) => unbase64_into(b.as_bytes(), &mut out),
            _ => panic!("a chunk needs one of data and data_b64"),
        }
    }
    out
}

#[test]
fn json_gives_one_object_per_target() {
    let guard = LeakGuard::new();
    let out = spore(&["--json", "info", "local", "local/local"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // One object per target, as each ends (in any order).
    let mut lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    lines.sort();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].contains(r#""target":"local""#) && lines[0].contains(r#""ok":true"#), "{}", lines[0]);
    assert!(lines[1].contains(r#""context":"local/local""#), "{}", lines[1]);
    // run: the output as chunk objects, then the status.
    let out = spore(&["--json", "run", "local", "--", "sh", "-c", "echo hi; exit 4"]);
    assert_eq!(out.status.code(), Some(4));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], r#"{"target":"local","stream":"stdout","data":"hi\n"}"#, "{stdout}");
    let last = lines.last().unwrap();
    assert!(last.contains(r#""status":4"#) && last.contains(r#""ok":false"#), "{last}");
    assert!(last.contains(r#""stdout_bytes":3"#) && last.contains(r#""stderr_bytes":0"#), "{last}");
    guard.check();
}

/// Text stays text (a character split between chunks included); bytes that
/// are not UTF-8 come as base64; every target's streams add up exactly.
#[test]
fn json_run_streams_chunks_text_as_data_and_bytes_as_base64() {
    let guard = LeakGuard::new();
    let script = r#"printf 'a\303'; sleep 0.3; printf '\251 "q" \\ \001\n'; printf '\377\000x' >&2; printf 'end\342\202'; exit 3"#;
    let out = spore(&["--json", "run", "local", "local/local", "--", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let objects = json_lines(&out.stdout);
    for t in ["local", "local/local"] {
        let chunks: Vec<_> =
            objects.iter().filter(|o| field(o, "target") == Some(t) && o.contains_key("stream")).collect();
        // The split é is held back and joined: text until the unfinished
        // character at the very end.
        let text_chunks: String =
            chunks.iter().filter(|o| field(o, "stream") == Some("stdout")).filter_map(|o| field(o, "data")).collect();
        assert_eq!(text_chunks, "aé \"q\" \\ \u{1}\nend", "{t}");
        assert_eq!(joined(&objects, t, "stdout"), b"a\xc3\xa9 \"q\" \\ \x01\nend\xe2\x82", "{t}");
        assert_eq!(joined(&objects, t, "stderr"), b"\xff\x00x", "{t}");
        let last: Vec<_> = objects.iter().filter(|o| field(o, "target") == Some(t) && o.contains_key("ok")).collect();
        assert_eq!(last.len(), 1, "{t}");
        assert_eq!(number(last[0], "status"), Some(3));
        assert_eq!(number(last[0], "stdout_bytes"), Some(17));
        assert_eq!(number(last[0], "stderr_bytes"), Some(3));
    }
    guard.check();
}

#[test]
fn verbose_shows_every_context_logs_tagged_with_its_path() {
    let guard = LeakGuard::new();
    let out = spore(&["-v", "run", "local/local", "--", "true"]);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("[master]"), "{err}");
    assert!(err.contains("[local] "), "{err}");
    assert!(err.contains("[local/local] ") && err.contains("call exec from context 0"), "{err}");
    let quiet = spore(&["run", "local/local", "--", "true"]);
    assert_eq!(text(&quiet.stderr), "");
    guard.check();
}

#[test]
fn bad_targets_and_arguments_are_clear_errors() {
    let guard = LeakGuard::new();
    let out = spore(&["run", "nosuchhop", "--", "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("nosuchhop"), "{}", text(&out.stderr));
    let out = spore(&["run", "local"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("Usage: spore run"), "{}", text(&out.stderr));
    let out = spore(&["get", "local", "/no/such/file", "/tmp/spore-never-written"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("/no/such/file"), "{}", text(&out.stderr));
    assert!(!std::path::Path::new("/tmp/spore-never-written").exists());
    // A remote's words in an error reach the terminal with their control
    // characters escaped.
    let out = spore(&["get", "local", "/no/such/\x1b[2J\x07file", "/tmp/spore-never-written"]);
    let err = text(&out.stderr);
    assert!(!err.contains('\x1b') && !err.contains('\x07'), "{err:?}");
    assert!(err.contains("/no/such/\\x1b[2J\\x07file"), "{err:?}");
    guard.check();
}

#[test]
fn put_and_get_move_files_intact() {
    let guard = LeakGuard::new();
    let dir = Scratch::new("cli-files");
    let src = dir.path("src.bin");
    std::fs::write(&src, pattern(3 << 20, 11)).unwrap();
    let out = spore(&["put", "local", "local/local", &src, &dir.path("remote.bin"), "--mode", "600"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("local/local: wrote 3145728 bytes"), "{}", text(&out.stdout));
    let out = spore(&["get", "local/local", &dir.path("remote.bin"), &dir.path("back.bin")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(std::fs::read(dir.path("back.bin")).unwrap() == std::fs::read(&src).unwrap());
    guard.check();
}

/// The agent binary fed garbage instead of the protocol: it must say why
/// and exit, not hang or panic.
#[test]
fn garbage_on_the_agents_stdin_ends_it_with_a_clear_error() {
    let guard = LeakGuard::new();
    for (input, expect) in [
        (&b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"[..], "bad magic"),
        (&Message::new(1, handle::CALL_FUNCTION, vec![b'x'; 10]).encode()[..20], "stream ended inside a frame"),
    ] {
        let mut child = Command::new(agent_path())
            .args(["--id=1", "--name=garbage", "--parents=0", "--log=2"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
        drop(stdin);
        let out = wait_bounded(child, Duration::from_secs(10));
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains(expect) && err.contains("spore-agent garbage"), "stderr: {err}");
        assert!(!err.contains("panicked"), "{err}");
        // It said hello first, as a well-formed frame.
        assert_eq!(&out.stdout[..2], b"SP");
    }
    guard.check();
}

/// The agent refuses to be started by hand without its arguments.
#[test]
fn the_agent_needs_spores_arguments() {
    let out = wait_bounded(
        Command::new(agent_path()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("started by spore"));
}

#[test]
fn a_closed_stdout_ends_the_run_and_the_command() {
    let guard = LeakGuard::new();
    let mut child = Command::new(spore_bin())
        .args(["run", "local", "--", "yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 2];
    let mut stdout = child.stdout.take().unwrap();
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"y\n");
    drop(stdout); // `| head -1` has what it wanted
    let status = spore_tests::exit_within(&mut child, Duration::from_secs(10))
        .expect("spore kept running after its stdout closed");
    assert_eq!(status.code(), Some(128 + libc::SIGPIPE));
    drop(child);
    guard.check();
}

#[test]
fn get_into_a_directory_keeps_the_mode_and_put_keeps_the_local_mode() {
    let guard = LeakGuard::new();
    let dir = Scratch::new("cli-modes");
    let script = dir.path("tool.sh");
    std::fs::write(&script, "#!/bin/sh\necho tool\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    std::fs::create_dir(dir.0.join("remote")).unwrap();
    let out = spore(&["put", "local", &script, &dir.path("remote/tool.sh")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mode = |p: &str| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions()) & 0o777;
    assert_eq!(mode(&dir.path("remote/tool.sh")), 0o750);
    std::fs::create_dir(dir.0.join("back")).unwrap();
    let out = spore(&["get", "local", &dir.path("remote/tool.sh"), &format!("{}/", dir.path("back"))]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(mode(&dir.path("back/tool.sh")), 0o750);
    assert_eq!(std::fs::read_dir(dir.0.join("back")).unwrap().count(), 1, "a temporary file was left");
    // A failed get leaves nothing behind.
    let out = spore(&["get", "local", "/no/such/file", &format!("{}/", dir.path("back"))]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(std::fs::read_dir(dir.0.join("back")).unwrap().count(), 1);
    guard.check();
}

/// A scratch directory with an empty `home` (a private agent cache) and
/// `bin` (for a PATH of our making) in it.
fn home_and_bin(tag: &str) -> (Scratch, String, String) {
    let scratch = Scratch::new(tag);
    let (home, bin) = (scratch.path("home"), scratch.path("bin"));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    (scratch, home, bin)
}

/// The agent cached in `dir` (not its stamp).
fn cached_agent_in(dir: &str) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_none())
        .expect("a cached agent")
}

/// `spore -v run local -- /bin/true` with HOME and PATH of our choosing.
fn run_true_with(home: &str, path: &str) -> Output {
    run_true_env(home, path, &[])
}

fn run_true_env(home: &str, path: &str, env: &[(&str, &str)]) -> Output {
    let child = Command::new(spore_bin())
        .args(["-v", "run", "local", "--", "/bin/true"])
        .env_remove("SPORE_LOG")
        .env_remove("XDG_RUNTIME_DIR")
        .envs(env.iter().copied())
        .env("HOME", home)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    spore_tests::wait_bounded(child, Duration::from_secs(60))
}

#[test]
fn a_verified_cached_agent_starts_without_cksum_and_a_changed_one_is_checked_again() {
    let guard = LeakGuard::new();
    let (scratch, home, no_cksum) = home_and_bin("stamp");
    for tool in ["sh", "ls"] {
        let at = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap().stdout;
        std::os::unix::fs::symlink(text(&at).trim(), format!("{no_cksum}/{tool}")).unwrap();
    }
    let path = std::env::var("PATH").unwrap();
    let run = |path: &str| run_true_with(&home, path);
    let uploaded = |out: &Output| {
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stderr).contains("agent uploaded")
    };

    // The upload was checked (cksum) and stamped, so later starts need only
    // sh and ls.
    assert!(uploaded(&run(&path)));
    assert!(!uploaded(&run(&path)));
    // ls's output can't be shifted by the user's settings.
    let odd = [("TIME_STYLE", "long-iso"), ("BLOCK_SIZE", "human-readable"), ("LC_ALL", "C.UTF-8")];
    let out = run_true_env(&home, &path, &odd);
    assert!(out.status.success() && !text(&out.stderr).contains("agent uploaded"), "{}", text(&out.stderr));
    assert!(!uploaded(&run(&no_cksum)));

    let dir = format!("{home}/.cache/spore");
    let cached = cached_agent_in(&dir);
    let good = std::fs::read(&cached).unwrap();
    let marker = scratch.path("executed");
    let mut evil = format!("#!/bin/sh\ntouch {marker}\n").into_bytes();
    evil.resize(good.len() - 1, b'#');
    evil.push(b'\n');
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    let set_mode = |p: &std::path::Path, mode: u32| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    };
    let swaps: [(&str, &dyn Fn()); 4] = [
        // Rewritten in place (same size, other bytes): its mtime is newer
        // than the stamp.
        ("rewritten", &|| {
            std::thread::sleep(Duration::from_millis(20));
            std::fs::write(&cached, &evil).unwrap();
        }),
        // Another file, older than the stamp, renamed onto the name: another
        // inode.
        ("renamed onto", &|| {
            let other = format!("{}.other", cached.display());
            std::fs::write(&other, &evil).unwrap();
            std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
            std::fs::File::open(&other).unwrap().set_modified(hour_ago).unwrap();
            std::fs::rename(&other, &cached).unwrap();
        }),
        // Untouched but writable by others: never run, whatever the stamp.
        ("made writable by others", &|| set_mode(&cached, 0o777)),
        // In a directory others can write (so swap the file between the
        // check and the exec): never run; the directory is closed again.
        ("in a directory others can write", &|| set_mode(cached.parent().unwrap(), 0o777)),
    ];
    for (how, swap) in swaps {
        assert!(!uploaded(&run(&path)), "{how}: the good copy was not reused");
        swap();
        assert!(uploaded(&run(&path)), "{how}: not replaced");
        assert!(!std::path::Path::new(&marker).exists(), "{how}: a changed agent was run");
        assert_eq!(std::fs::read(&cached).unwrap(), good, "{how}");
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700, "{how}");
    }
    guard.check();
}

#[test]
fn a_damaged_upload_is_refused_and_never_cached() {
    let guard = LeakGuard::new();
    let (_scratch, home, bin) = home_and_bin("damaged");
    // `head -c N` that passes N bytes with the first one changed.
    let head = format!("{bin}/head");
    std::fs::write(
        &head,
        "#!/bin/sh\ndd bs=1 count=1 of=/dev/null 2>/dev/null\nprintf X\nexec /usr/bin/head -c $(($2 - 1))\n",
    )
    .unwrap();
    std::fs::set_permissions(&head, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = run_true_with(&home, &format!("{bin}:{}", std::env::var("PATH").unwrap()));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("connection failed: upload damaged") && err.contains("spore: upload damaged ("), "{err}");
    let left: Vec<_> =
        std::fs::read_dir(format!("{home}/.cache/spore")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "{left:?}");
    guard.check();
}

#[test]
fn bootstraps_racing_on_a_cold_cache_all_start() {
    let guard = LeakGuard::new();
    let (_scratch, home, _) = home_and_bin("race");
    let path = std::env::var("PATH").unwrap();
    let runs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16).map(|_| s.spawn(|| run_true_with(&home, &path))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for out in &runs {
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let left: Vec<String> = std::fs::read_dir(format!("{home}/.cache/spore"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.iter().all(|n| !n.ends_with(".part")), "{left:?}");
    assert_eq!(left.iter().filter(|n| !n.ends_with(".ok")).count(), 1, "{left:?}");
    guard.check();
}

/// A `local` context whose agent is cached and checked runs it directly
/// (the master makes the script's checks itself, on open descriptors): no
/// `sh`, so not even a `PATH` is needed. Whatever the script would refuse,
/// the master refuses too, and the script then replaces the copy.
#[test]
fn a_checked_local_agent_runs_without_the_script_and_nothing_else_does() {
    let guard = LeakGuard::new();
    let (_scratch, home, empty) = home_and_bin("direct");
    let path = std::env::var("PATH").unwrap();
    let direct = |out: &Output| {
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stderr).contains("runs without the script")
    };
    let uploaded = |out: &Output| text(&out.stderr).contains("agent uploaded");
    let first = run_true_with(&home, &path);
    assert!(uploaded(&first) && !direct(&first), "a cold cache: the script installs");
    // An empty PATH: no sh, no ls, yet it starts.
    assert!(direct(&run_true_with(&home, &empty)), "a checked copy runs directly");
    let dir = format!("{home}/.cache/spore");
    let cached = cached_agent_in(&dir);
    let set_mode = |p: &std::path::Path, mode: u32| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    };
    let stamp = std::path::PathBuf::from(format!("{}.ok", cached.display()));
    // Each refusal, and whether the script then replaces the copy here (a
    // parent others may write sends it to another directory: /tmp/spore-0
    // may hold this agent already, from another test).
    let refusals: [(&str, bool, &dyn Fn()); 4] = [
        ("a directory others may write", true, &|| set_mode(std::path::Path::new(&dir), 0o777)),
        ("a parent others may write", false, &|| set_mode(std::path::Path::new(&format!("{home}/.cache")), 0o777)),
        ("an agent others may write", true, &|| set_mode(&cached, 0o766)),
        ("a stamp naming another inode, and other bytes", true, &|| {
            std::fs::write(&stamp, "1\n").unwrap();
            let mut bytes = std::fs::read(&cached).unwrap();
            bytes[1000] ^= 1;
            std::fs::write(&cached, bytes).unwrap();
        }),
    ];
    for (how, replaced_here, spoil) in refusals {
        spoil();
        let out = run_true_with(&home, &path);
        assert!(!direct(&out), "{how}: run directly: {}", text(&out.stderr));
        assert!(!replaced_here || uploaded(&out), "{how}: not replaced: {}", text(&out.stderr));
        set_mode(std::path::Path::new(&format!("{home}/.cache")), 0o700);
        assert!(direct(&run_true_with(&home, &empty)), "{how}: the replaced copy runs directly again");
    }
    guard.check();
}

/// Output that can't be written ends the run cleanly: a reader that went
/// away (`| head`) gives 141, as a pipe would; a full disk one line and
/// 255; a closed stderr on top of that, 255 and silence. Never a panic.
#[test]
fn a_failed_write_ends_the_run_cleanly() {
    let guard = LeakGuard::new();
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = Command::new(spore_bin()).args(["info", "local"]).stdout(full()).stderr(Stdio::piped()).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert_eq!(err.trim(), "spore: write the output: No space left on device (os error 28)");

    let mut child = Command::new(spore_bin())
        .args(["--json", "run", "local", "--", "seq", "200000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 20];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The reader goes away (its end closed); stderr is read to its end.
    let mut said = String::new();
    child.stderr.take().unwrap().read_to_string(&mut said).unwrap();
    let status = spore_tests::exit_within(&mut child, Duration::from_secs(60))
        .expect("spore did not end after its reader went away");
    assert_eq!(status.code(), Some(141), "{said}");
    assert!(!said.contains("panicked"), "{said}");

    let closed = Command::new(spore_bin())
        .args(["info", "local"])
        .stdout(full())
        .stderr(Stdio::from(std::fs::File::open("/dev/null").unwrap()))
        .status()
        .unwrap();
    assert_eq!(closed.code(), Some(255));
    guard.check();
}

/// An argument that is not UTF-8 can't travel (commands, arguments and
/// paths are JSON strings on the wire): refused, named and escaped, exit 2.
/// It was a panic in `std::env::args`.
#[test]
fn a_non_utf8_argument_is_refused_by_name() {
    use std::os::unix::ffi::OsStrExt;
    let cafe = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let out =
        Command::new(spore_bin()).args(["run", "local", "--", "echo"]).arg(cafe).stdin(Stdio::null()).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("argument 2 of the command (caf\\xe9) is not UTF-8") && !err.contains("panicked"), "{err}");
}

/// A local path is bytes and stays bytes: a file named `\xff` goes up and
/// comes back under a name of the same bytes. Only what travels (the remote
/// path) must be text, and a remote path that is not is refused by name.
#[test]
fn local_paths_that_are_not_utf8_work() {
    use std::os::unix::ffi::OsStrExt;
    let dir = Scratch::new("cli-bytes");
    let src = dir.0.join(std::ffi::OsStr::from_bytes(b"src-\xff"));
    std::fs::write(&src, b"bytes\n").unwrap();
    let remote = dir.path("remote");
    let out = Command::new(spore_bin()).args(["put", "local"]).arg(&src).arg(&remote).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let back = dir.0.join(std::ffi::OsStr::from_bytes(b"back-\xfe"));
    let out = Command::new(spore_bin()).args(["get", "local", &remote]).arg(&back).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&back).unwrap(), b"bytes\n");
    let out = Command::new(spore_bin()).args(["put", "local"]).arg(&src).arg(&back).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("the remote path (") && err.contains("\\xfe) is not UTF-8"), "{err}");
}

/// Ctrl-C or SIGTERM during a run: the shell's status for the signal (130,
/// 143), every time. The signal thread and `main` used to race, and the
/// calls the shutdown failed made it 255 now and then.
#[test]
fn an_interrupted_run_exits_with_the_signals_status_every_time() {
    let guard = LeakGuard::new();
    for round in 0..8 {
        let sig = if round % 2 == 0 { libc::SIGINT } else { libc::SIGTERM };
        let mut child = Command::new(spore_bin())
            .args(["run", "local", "--", "sleep", "60"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = spore_tests::wait_for_command("sleep 60", 1, Duration::from_secs(20));
        assert!(started, "round {round}: the command never started");
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = spore_tests::exit_within(&mut child, Duration::from_secs(10));
        let status = status.unwrap_or_else(|| panic!("round {round}: spore ignored signal {sig}"));
        assert_eq!(status.code(), Some(128 + sig), "round {round}");
    }
    guard.check();
}

/// `get` into a full disk names the target and the file, leaves nothing
/// behind, and exits 255 (it said only "write the download").
#[test]
fn a_get_into_a_full_disk_names_the_target_and_the_file() {
    let guard = LeakGuard::new();
    let scratch = Scratch::new("full-get");
    let (src, small) = (scratch.path("big"), scratch.path("small"));
    std::fs::write(&src, vec![7u8; 1 << 20]).unwrap();
    std::fs::create_dir_all(&small).unwrap();
    let _mounted = match spore_tests::race::Tmpfs::mount(std::path::Path::new(&small), "size=64k") {
        Ok(m) => m,
        Err(e) => return println!("SKIPPED: {e}"),
    };
    let dest = format!("{small}/copy");
    let out = run_spore(&["get", "local", &src, &dest], None);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert_eq!(err.trim(), format!("spore: local: write {dest}: No space left on device (os error 28)"));
    assert_eq!(std::fs::read_dir(&small).unwrap().count(), 0, "a partial file was left");
    guard.check();
}
