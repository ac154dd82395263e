//! spore over a real OpenSSH server on 127.0.0.1 (started per test): the
//! bootstrap and its cache, trees through ssh, sudo, and every failure a
//! user meets, each with a clear error. No test leaves an sshd session, an
//! agent or an ssh client behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore::{Command, Error, Hop, Options, Router};
use spore_tests::site::Site;
use spore_tests::sshd::{
    Sshd, PASSWORD, USER_ASH, USER_BASH, USER_CACHE_A, USER_CACHE_B, USER_HANG, USER_IMAGE_A, USER_IMAGE_B,
    USER_NOCACHE, USER_NOEXEC, USER_NOHEAD, USER_NOISY, USER_NOPW, USER_PW, USER_SHORT,
};
use spore_tests::{spore_bin, wait_for_record, LeakGuard};
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A test with its own sshd; `finish` shuts everything down and checks
/// that nothing is left.
struct World {
    guard: LeakGuard,
    site: Site,
}

impl World {
    fn new() -> World {
        let guard = LeakGuard::new();
        World { guard, site: Site::ssh() }
    }

    fn sshd(&self) -> &Sshd {
        self.site.sshd()
    }

    /// An ssh hop to the test server, as `user` (root by default), with
    /// this test's private cache directory.
    fn hop(&self, user: Option<&str>, extra: &[&str]) -> Hop {
        self.site.hop_as(user, extra)
    }

    /// The agent cached for `user` (in its home: the test's XDG directory
    /// belongs to root, so other users skip it).
    fn cached_agent(&self, user: &str) -> std::path::PathBuf {
        let dir = std::path::PathBuf::from(format!("/home/{user}/.cache/spore"));
        let entry = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .find(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("spore-agent-") && !name.ends_with(".part") && !name.ends_with(".ok")
            })
            .expect("a cached agent");
        entry.path()
    }

    fn finish(mut self) {
        self.site.stop();
        let World { guard, site } = self;
        drop(site);
        guard.check();
    }
}

fn router() -> Router {
    Router::new().unwrap()
}

fn sh(script: &str) -> Command {
    Command::new(["sh", "-c", script])
}

fn stdout(ctx: &spore::Context, script: &str) -> String {
    let out = ctx.exec(&sh(script)).unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn first_connect_uploads_and_the_second_hits_the_cache() {
    let w = World::new();
    let user = USER_CACHE_A;
    Sshd::clear_cache(user);
    // Leftovers of other versions: installing this one removes the old.
    let dir = format!("/home/{user}/.cache/spore");
    std::fs::create_dir_all(&dir).unwrap();
    let uid = spore_tests::sshd::uid_of(user);
    let day = Duration::from_secs(24 * 3600);
    let plant = |name: &str, age: Duration| {
        let path = format!("{dir}/{name}");
        let f = std::fs::File::create(&path).unwrap();
        f.set_modified(std::time::SystemTime::now() - age).unwrap();
        std::os::unix::fs::chown(&path, Some(uid), Some(uid)).unwrap();
        path
    };
    let old = plant("spore-agent-0123old", day * 40);
    let stale_part = plant("spore-agent-0123new.77.part", Duration::from_secs(7200));
    let recent = plant("spore-agent-0123new", day);
    for d in [format!("/home/{user}/.cache"), dir.clone()] {
        std::os::unix::fs::chown(&d, Some(uid), Some(uid)).unwrap();
    }
    let r = router();
    let ctx = r.connect(&w.hop(Some(user), &[]), "spore-test").unwrap();
    assert!(ctx.uploaded(), "a fresh cache must be filled");
    assert!(!std::path::Path::new(&old).exists(), "an agent installed 40 days ago was kept");
    assert!(!std::path::Path::new(&stale_part).exists(), "a stale partial upload was kept");
    assert!(std::path::Path::new(&recent).exists(), "a recent agent of another version was removed");
    std::fs::remove_file(&recent).unwrap();
    let info = ctx.info().unwrap();
    assert_eq!((info.uid, info.name.as_str()), (spore_tests::sshd::uid_of(user), "spore-test"));
    r.shutdown();
    drop((ctx, r));
    let cached = w.cached_agent(user);
    let meta = std::fs::metadata(&cached).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(cached.parent().unwrap()).unwrap().mode() & 0o777, 0o700);
    // Second time: HAVE, no upload, the very same file (same inode).
    let r = router();
    let ctx = r.connect(&w.hop(Some(user), &[]), "spore-test").unwrap();
    assert!(!ctx.uploaded(), "the second connect sent the agent again");
    assert_eq!(std::fs::metadata(&cached).unwrap().ino(), meta.ino());
    ctx.ping().unwrap();
    r.shutdown();
    drop((ctx, r));
    w.finish();
}

#[test]
fn a_corrupted_or_foreign_cached_agent_is_replaced_never_run() {
    let w = World::new();
    let user = USER_CACHE_B;
    Sshd::clear_cache(user);
    let hop = w.hop(Some(user), &[]);
    let r = router();
    r.connect(&hop, "spore-test").unwrap();
    r.shutdown();
    drop(r);
    let cached = w.cached_agent(user);
    let len = std::fs::metadata(&cached).unwrap().len() as usize;
    let marker = format!("/home/{user}/executed");
    let _ = std::fs::remove_file(&marker);
    // Same size, different bytes: a script that would leave a mark.
    let mut evil = format!("#!/bin/sh\ntouch {marker}\n").into_bytes();
    evil.resize(len, b'#');
    evil[len - 1] = b'\n';
    let uid = spore_tests::sshd::uid_of(user);
    let write_as_user = |path: &str, mode: u32| {
        std::fs::write(path, &evil).unwrap();
        std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    };
    write_as_user(cached.to_str().unwrap(), 0o700);
    // A stale partial upload beside it, executable and tempting.
    write_as_user(&format!("{}.999.part", cached.display()), 0o700);
    let r = router();
    let ctx = r.connect(&hop, "spore-test").unwrap();
    assert!(ctx.uploaded(), "a corrupted cache entry must be replaced");
    ctx.ping().unwrap();
    r.shutdown();
    drop((ctx, r));
    assert!(!std::path::Path::new(&marker).exists(), "a corrupted or partial agent was executed");
    assert_ne!(std::fs::read(&cached).unwrap(), evil);
    // Ours but writable by others: replaced, never executed.
    let good = std::fs::read(&cached).unwrap();
    std::fs::write(&cached, &evil).unwrap();
    std::fs::set_permissions(&cached, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(&cached, Some(uid), Some(uid)).unwrap();
    let r = router();
    let ctx = r.connect(&hop, "spore-test").unwrap();
    assert!(ctx.uploaded(), "a cached agent writable by others must be replaced");
    r.shutdown();
    drop((ctx, r));
    assert!(!std::path::Path::new(&marker).exists(), "an agent writable by others was executed");
    assert_eq!(std::fs::read(&cached).unwrap(), good);
    // Owned by someone else: never executed either.
    std::fs::write(&cached, &evil).unwrap();
    std::os::unix::fs::chown(&cached, Some(65534), Some(65534)).unwrap();
    let r = router();
    let ctx = r.connect(&hop, "spore-test").unwrap();
    assert!(ctx.uploaded());
    r.shutdown();
    drop((ctx, r));
    assert!(!std::path::Path::new(&marker).exists(), "an agent owned by another user was executed");
    assert_eq!(std::fs::metadata(&cached).unwrap().uid(), uid);
    Sshd::clear_cache(user);
    w.finish();
}

#[test]
fn two_ssh_hops_and_a_local_child_behind_them() {
    let w = World::new();
    let r = router();
    let first = r.connect(&w.hop(None, &[]), "spore-test").unwrap();
    let second = first.connect_hop(&w.hop(None, &[]), "spore-test/spore-test").unwrap();
    let third = second.connect("local").unwrap();
    assert_eq!(third.name(), "spore-test/spore-test/local");
    let pids: Vec<u32> = [&first, &second, &third].iter().map(|c| c.info().unwrap().pid).collect();
    assert!(pids[0] != pids[1] && pids[1] != pids[2], "{pids:?}");
    assert_eq!(stdout(&third, "echo deep"), "deep");
    let data = spore_tests::pattern(3 << 20, 5);
    let path = w.sshd().dir.join("through-two-hops").display().to_string();
    third.write_file(&path, &mut &data[..], None).unwrap();
    let mut back = Vec::new();
    third.read_file(&path, &mut back).unwrap();
    assert!(back == data);
    // The middle hop dies: calls behind it get a DEAD reply naming it.
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pids[1] as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    let err = loop {
        match third.ping() {
            Err(e @ Error::Dead { .. }) => break e,
            Err(Error::Disconnected { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => panic!("expected DEAD, got {other:?}"),
        }
    };
    assert!(err.to_string().contains("(spore-test/spore-test)"), "{err}");
    first.ping().unwrap();
    r.shutdown();
    drop((first, second, third, r));
    w.finish();
}

#[test]
fn sudo_without_and_with_a_password() {
    let w = World::new();
    let r = router();
    // Passwordless sudo.
    let user = r.connect(&w.hop(Some(USER_NOPW), &[]), "nopw@spore-test").unwrap();
    assert_eq!(stdout(&user, "id -un"), USER_NOPW);
    let root = user.connect("sudo").unwrap();
    assert_eq!(stdout(&root, "id -u"), "0");
    let other = root.connect("sudo:nobody").unwrap();
    assert_eq!(stdout(&other, "id -un"), "nobody");
    // doas, passwordless.
    let doas = user.connect("doas").unwrap();
    assert_eq!(stdout(&doas, "id -u"), "0");
    // A user whose sudo needs a password, and none given: a clear error, fast.
    let pw_user = r.connect(&w.hop(Some(USER_PW), &[]), "pw@spore-test").unwrap();
    let start = Instant::now();
    let err = pw_user.connect("sudo").unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(err.to_string().contains("sudo needs a password"), "{err}");
    r.shutdown();
    drop((user, root, other, doas, pw_user, r));

    // With the password: once from the operator, to the hop that needs it.
    let opts = Options { become_password: Some(PASSWORD.into()), ..Options::default() };
    let r = Router::with_options(opts).unwrap();
    let pw_user = r.connect(&w.hop(Some(USER_PW), &[]), "pw@spore-test").unwrap();
    let root = pw_user.connect("sudo").unwrap();
    assert_eq!(stdout(&root, "id -u"), "0");
    r.shutdown();
    drop((pw_user, root, r));

    // A wrong password: a clear error, not a hang.
    let opts = Options { become_password: Some("not-it".into()), ..Options::default() };
    let r = Router::with_options(opts).unwrap();
    let pw_user = r.connect(&w.hop(Some(USER_PW), &[]), "pw@spore-test").unwrap();
    let start = Instant::now();
    let err = pw_user.connect("sudo").unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(15), "took {:?}", start.elapsed());
    assert!(err.to_string().contains("wrong password"), "{err}");
    assert!(!err.to_string().contains("not-it"), "the password leaked into an error: {err}");
    r.shutdown();
    drop((pw_user, r));
    w.finish();
}

#[test]
fn shell_noise_before_the_marker_is_skipped_and_logged() {
    let w = World::new();
    let r = router();
    let ctx = r.connect(&w.hop(Some(USER_NOISY), &[]), "noisy@spore-test").unwrap();
    assert_eq!(stdout(&ctx, "echo clean"), "clean");
    assert!(wait_for_record("", "noise before the marker: Welcome! Last login: yesterday", Duration::from_secs(2)));
    r.shutdown();
    drop((ctx, r));
    w.finish();
}

#[test]
fn a_remote_without_head_still_gets_the_agent() {
    let w = World::new();
    Sshd::clear_cache(USER_NOHEAD);
    let r = router();
    let ctx = r.connect(&w.hop(Some(USER_NOHEAD), &[]), "nohead@spore-test").unwrap();
    assert!(ctx.uploaded());
    assert_eq!(ctx.info().unwrap().version, env!("CARGO_PKG_VERSION"));
    r.shutdown();
    drop((ctx, r));
    Sshd::clear_cache(USER_NOHEAD);
    w.finish();
}

#[test]
fn an_unwritable_first_cache_directory_is_skipped() {
    let w = World::new();
    Sshd::clear_cache(USER_NOCACHE);
    let r = router();
    // XDG_RUNTIME_DIR can't be created and ~/.cache belongs to root.
    let hop = w.hop(Some(USER_NOCACHE), &["SetEnv=XDG_RUNTIME_DIR=/proc/spore-nope"]);
    let ctx = r.connect(&hop, "nocache@spore-test").unwrap();
    let uid = ctx.info().unwrap().uid;
    let exe = stdout(&ctx, "readlink /proc/$PPID/exe");
    assert!(exe.starts_with(&format!("/tmp/spore-{uid}/spore-agent-")), "{exe}");
    r.shutdown();
    drop((ctx, r));
    Sshd::clear_cache(USER_NOCACHE);
    w.finish();
}

#[test]
fn connection_failures_name_the_hop_and_the_cause() {
    let w = World::new();
    let r = router();
    let cases: [(&[&str], Option<&str>, &str, &str); 3] = [
        (&[], Some("no-such-user"), "spore-test", "authentication failed"),
        (&[], None, "spore-test-wrongkey", "host key rejected"),
        (&["Port=1"], None, "spore-test", "host unreachable"),
    ];
    for (opts, user, host, cause) in cases {
        let mut hop = w.hop(user, opts);
        if let Hop::Ssh(h) = &mut hop {
            h.host = host.into();
        }
        let start = Instant::now();
        let err = r.connect(&hop, host).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(15));
        let text = err.to_string();
        assert!(matches!(err, Error::Connect { .. }), "{text}");
        assert!(text.starts_with(&format!("{host}: connection failed: {cause}")), "{text}");
        assert!(text.contains("the remote said:"), "{text}");
    }
    r.shutdown();
    drop(r);
    w.finish();
}

fn cli(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    spore_tests::run_spore(args, stdin.map(str::as_bytes))
}

#[test]
fn the_cli_over_ssh() {
    let w = World::new();
    let cfg = w.sshd().config_str();
    let xdg = format!("SetEnv=XDG_RUNTIME_DIR={}", w.site.xdg);
    let base = ["-F", cfg.as_str(), "-o", xdg.as_str()];
    let run = |extra: &[&str], stdin: Option<&str>| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        cli(&args, stdin)
    };
    let out = run(&["run", "spore-test", "--", "uname", "-a"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Linux"));
    let out = run(&["run", "spore-test/sudo", "--", "id", "-u"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n", "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["run", "spore-test/sudo:nobody", "--", "id", "-un"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "nobody\n", "{}", String::from_utf8_lossy(&out.stderr));
    // -v shows the second run hit the cache.
    let out = run(&["-v", "run", "spore-test", "--", "true"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("agent cached"), "{}", String::from_utf8_lossy(&out.stderr));
    // The password, once, for sudo at the hop that needs it.
    let target = format!("{USER_PW}@spore-test/sudo");
    let out = run(&["-K", "run", &target, "--", "id", "-u"], Some(&format!("{PASSWORD}\n")));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n", "{}", String::from_utf8_lossy(&out.stderr));
    // Targets sharing a prefix share its connection.
    let out = run(&["-v", "run", "spore-test/local", "spore-test/sudo", "spore-test", "--", "true"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let connects = String::from_utf8_lossy(&out.stderr).matches("connected spore-test (").count();
    assert_eq!(connects, 1, "{}", String::from_utf8_lossy(&out.stderr));
    // A failure exits 255, like ssh.
    let out = cli(&["-F", cfg.as_str(), "-o", "Port=1", "run", "spore-test", "--", "true"], None);
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("spore-test: connection failed: host unreachable"));
    w.finish();
}

#[test]
fn interrupting_the_cli_leaves_nothing_behind() {
    let w = World::new();
    let cfg = w.sshd().config_str();
    let xdg = format!("SetEnv=XDG_RUNTIME_DIR={}", w.site.xdg);
    let mut child = std::process::Command::new(spore_bin())
        .args(["-F", &cfg, "-o", &xdg, "run", "spore-test/local", "--", "sleep", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the command to be running on the far side.
    let started = spore_tests::wait_for_command("sleep 60", 1, Duration::from_secs(20));
    assert!(started, "the remote command never started");
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let ended = spore_tests::exit_within(&mut child, Duration::from_secs(6));
    assert!(ended.is_some(), "spore ignored Ctrl-C");
    w.finish();
}

#[test]
fn the_bootstrap_runs_under_busybox_ash_and_bash() {
    let w = World::new();
    let r = router();
    for user in [USER_ASH, USER_BASH] {
        Sshd::clear_cache(user);
        let ctx = r.connect(&w.hop(Some(user), &[]), &format!("{user}@spore-test")).unwrap();
        assert!(ctx.uploaded(), "{user}");
        let shell = stdout(&ctx, "readlink /proc/$$/exe; true");
        assert!(shell.ends_with(if user == USER_ASH { "busybox" } else { "bash" }), "{user}: {shell}");
        let again = |n: u32| {
            let c = r.connect(&w.hop(Some(user), &[]), &format!("{user}@spore-test-{n}")).unwrap();
            assert!(!c.uploaded(), "{user}");
            c.ping().unwrap();
        };
        again(1);
        let cached = w.cached_agent(user);
        if user == USER_ASH {
            // Debian's busybox has no cksum: owner, mode and size decide,
            // and nothing is stamped as checked.
            assert!(!std::path::Path::new(&format!("{}.ok", cached.display())).exists());
            Sshd::clear_cache(user);
            continue;
        }
        // With the agent older than its stamp, a start trusts the stamp and
        // leaves it as it was.
        let ten_ago = std::time::SystemTime::now() - Duration::from_secs(10);
        std::fs::File::open(&cached).unwrap().set_modified(ten_ago).unwrap();
        let stamp = std::fs::metadata(format!("{}.ok", cached.display())).unwrap();
        again(2);
        let now = std::fs::metadata(format!("{}.ok", cached.display())).unwrap();
        assert_eq!((now.ino(), now.modified().unwrap()), (stamp.ino(), stamp.modified().unwrap()), "{user}");
        Sshd::clear_cache(user);
    }
    r.shutdown();
    drop(r);
    w.finish();
}

#[test]
fn bootstrap_failures_name_their_cause() {
    let w = World::new();
    // Long enough for a short upload to be told apart on a loaded machine,
    // short enough for the hung login to give up within the test's bound.
    let opts = Options { connect_timeout: Duration::from_secs(5), ..Options::default() };
    let r = Router::with_options(opts).unwrap();
    Sshd::clear_cache(USER_SHORT);
    let cases = [
        (USER_NOEXEC, "no usable directory for the agent", "spore: no usable directory for the agent"),
        (USER_SHORT, "upload cut short", "spore: upload cut short (1000 of"),
        (USER_HANG, "timed out waiting for the bootstrap marker", "this host is stuck"),
    ];
    for (user, cause, remote_said) in cases {
        let start = Instant::now();
        let err = r.connect(&w.hop(Some(user), &[]), user).unwrap_err();
        let text = err.to_string();
        assert!(start.elapsed() < Duration::from_secs(8), "{user}: took {:?}", start.elapsed());
        assert!(text.starts_with(&format!("{user}: connection failed: {cause}")), "{text}");
        assert!(text.contains(remote_said), "{text}");
    }
    Sshd::clear_cache(USER_SHORT);
    r.shutdown();
    drop(r);
    w.finish();
}

#[test]
fn local_sudo_to_nobody() {
    let guard = LeakGuard::new();
    spore_tests::sshd::setup_machine();
    let out = cli(&["run", "local/sudo:nobody", "--", "id", "-un"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "nobody\n", "{}", String::from_utf8_lossy(&out.stderr));
    guard.check();
}

#[test]
fn su_and_doas_with_a_password_through_a_pty() {
    let w = World::new();
    let opts = Options { become_password: Some(PASSWORD.into()), ..Options::default() };
    let r = Router::with_options(opts).unwrap();
    // su to a user whose password we were given, from a user who needs it.
    let nopw = r.connect(&w.hop(Some(USER_NOPW), &[]), "nopw@spore-test").unwrap();
    let other = nopw.connect(&format!("su:{USER_PW}")).unwrap();
    assert_eq!(stdout(&other, "id -un"), USER_PW);
    // doas, which asks for the caller's own password.
    let pw = r.connect(&w.hop(Some(USER_PW), &[]), "pw@spore-test").unwrap();
    let root = pw.connect("doas").unwrap();
    assert_eq!(stdout(&root, "id -u"), "0");
    // Bulk bytes pass the pty unchanged.
    let data = spore_tests::pattern(1 << 20, 21);
    let path = format!("/home/{USER_PW}/through-a-pty");
    other.write_file(&path, &mut &data[..], None).unwrap();
    let mut back = Vec::new();
    root.read_file(&path, &mut back).unwrap();
    assert!(back == data);
    root.remove(&path, false).unwrap();
    r.shutdown();
    drop((nopw, other, pw, root, r));
    // A wrong one: a clear error, fast.
    let opts = Options { become_password: Some("not-it".into()), ..Options::default() };
    let r = Router::with_options(opts).unwrap();
    let nopw = r.connect(&w.hop(Some(USER_NOPW), &[]), "nopw@spore-test").unwrap();
    let start = Instant::now();
    let err = nopw.connect(&format!("su:{USER_PW}")).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(15), "took {:?}", start.elapsed());
    assert!(err.to_string().contains("wrong password"), "{err}");
    r.shutdown();
    drop((nopw, r));
    w.finish();
}

#[test]
fn an_intermediate_asks_its_parent_for_the_gzip_image_once_for_all_its_targets() {
    spore_tests::init_logger();
    let w = World::new();
    let opts = Options { agent_log_level: Some(log::LevelFilter::Debug), ..Options::default() };
    let r = Router::with_options(opts).unwrap();
    let i = r.local().unwrap();
    let x86 = spore::image::default_images().unwrap().for_arch("x86_64").cloned().unwrap();
    for user in [USER_IMAGE_A, USER_IMAGE_B] {
        Sshd::clear_cache(user);
        // ssh leads off this host: the script chooses by `uname -m`, and
        // the target has gzip, so it asks for the gzip form, which only
        // the master holds.
        let ctx = i.connect_hop(&w.hop(Some(user), &[]), &format!("local/{user}")).unwrap();
        assert_eq!(ctx.image_bytes(), x86.gz_size, "{user}");
        assert_eq!(ctx.info().unwrap().arch, "x86_64");
        Sshd::clear_cache(user);
    }
    let received = spore_tests::RECORDS
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, m)| m.contains("received the x86_64 image (gzip) from the parent"))
        .count();
    assert_eq!(received, 1, "the intermediate asked its parent once");
    r.shutdown();
    drop((i, r));
    w.finish();
}
