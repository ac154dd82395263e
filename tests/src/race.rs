//! Harness of the bootstrap race and install-error suites
//! (`tests/tests/bootstrap_race.rs`, `tests/tests/install_errors.rs`): the
//! agent's cache name, directories and files made with a given owner and
//! mode, a convincing fake agent that leaves a proof when it runs, a
//! renamer running as another user that swaps two directories, a victim
//! start of `spore run local -- true` with its own `HOME` and
//! `XDG_RUNTIME_DIR`, and a small tmpfs. Every guard undoes what it did
//! when dropped, a failing test included.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test harness: a panic is a failed test")]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The helper binary (`src/bin/spore-race-helper.rs`).
pub fn helper() -> PathBuf {
    let p = crate::target_dir().join("debug/spore-race-helper");
    assert!(p.is_file(), "{} is missing: run `cargo build -p spore-tests`", p.display());
    p
}

/// The other user: `nobody` (uid, gid).
pub fn nobody() -> (u32, u32) {
    let name = c"nobody";
    // SAFETY: a NUL-terminated name; the entry is read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return (65534, 65534);
    }
    // SAFETY: non-null, just returned by getpwnam.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// The agent the master embeds.
pub fn agent_bytes() -> Vec<u8> {
    std::fs::read(crate::agent_path()).unwrap()
}

/// Its name in a cache directory: `spore-agent-<sha256 hex>`.
pub fn agent_name() -> String {
    format!("spore-agent-{}", spore_protocol::hex(&spore_protocol::sha256(&agent_bytes())))
}

/// `chown` without following a symlink.
pub fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// `chmod` (the mode exactly: no umask).
pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A directory with this owner and mode (made if missing).
pub fn dir(path: &Path, mode: u32, owner: (u32, u32)) -> PathBuf {
    if !path.is_dir() {
        std::fs::create_dir(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    }
    chown(path, owner.0, owner.1);
    chmod(path, mode);
    path.to_path_buf()
}

/// A file with these bytes, owner and mode.
pub fn file(path: &Path, bytes: &[u8], mode: u32, owner: (u32, u32)) {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chown(path, owner.0, owner.1);
    chmod(path, mode);
}

/// Stamp `agent` as a verified install does: `<agent>.ok` holds its inode
/// and is newer than it (the agent's mtime is put an hour back).
pub fn stamp(agent: &Path, owner: (u32, u32)) {
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options().write(true).open(agent).unwrap().set_modified(hour_ago).unwrap();
    let ino = std::fs::symlink_metadata(agent).unwrap().ino();
    let ok = PathBuf::from(format!("{}.ok", agent.display()));
    file(&ok, format!("{ino}\n").as_bytes(), 0o600, owner);
}

/// A cached agent in `cache_dir`, as an earlier start left it: the real
/// binary, mode 0700, stamped.
pub fn cached_agent(cache_dir: &Path, owner: (u32, u32)) -> PathBuf {
    let path = cache_dir.join(agent_name());
    file(&path, &agent_bytes(), 0o700, owner);
    stamp(&path, owner);
    path
}

/// A fake agent at the agent's cache name in `cache_dir`, as convincing as
/// its owner can make it: the right size, mode 0700, stamped; but it is a
/// shell script that writes `pwned-<pid>` (holding `id -u`) into `proofs`
/// and exits.
pub fn fake_agent(cache_dir: &Path, proofs: &Path, owner: (u32, u32)) -> PathBuf {
    let size = agent_bytes().len();
    let mut evil = format!("#!/bin/sh\nid -u >{}/pwned-$$\nexit 0\n", proofs.display()).into_bytes();
    assert!(evil.len() < size);
    evil.resize(size - 1, b'#');
    evil.push(b'\n');
    let path = cache_dir.join(agent_name());
    file(&path, &evil, 0o700, owner);
    stamp(&path, owner);
    path
}

/// The proofs fake agents left in `proofs`: (file name, content).
pub fn proofs(proofs: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(proofs) else { return Vec::new() };
    entries
        .flatten()
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), text.trim().to_string())
        })
        .collect()
}

/// Everything under `root` (itself included, symlinks not followed) whose
/// owner is not `uid`: (path, owner).
pub fn not_owned_by(root: &Path, uid: u32) -> Vec<(PathBuf, u32)> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.uid() != uid {
            found.push((p.clone(), meta.uid()));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                todo.push(e.path());
            }
        }
    }
    found
}

/// Names in a directory, sorted (empty if it can't be read).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Is `path` a regular file holding exactly the agent?
pub fn holds_agent(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) && std::fs::read(path).ok() == Some(agent_bytes())
}

/// Where a victim start runs and caches its agent.
pub struct Victim {
    /// `HOME`.
    pub home: PathBuf,
    /// `XDG_RUNTIME_DIR`, if set.
    pub xdg: Option<PathBuf>,
    /// Run as this user instead of ourselves (root).
    pub user: Option<(u32, u32)>,
}

impl Victim {
    /// `$HOME/.cache/spore`.
    pub fn home_cache(&self) -> PathBuf {
        self.home.join(".cache/spore")
    }

    /// `$XDG_RUNTIME_DIR/spore`.
    pub fn xdg_cache(&self) -> PathBuf {
        self.xdg.as_ref().expect("no XDG_RUNTIME_DIR").join("spore")
    }

    /// `spore -v run local -- true`, bounded to a minute.
    pub fn start(&self) -> Start {
        let mut cmd = match self.user {
            None => Command::new(crate::spore_bin()),
            Some((uid, gid)) => {
                let mut c = Command::new(helper());
                c.arg("as").arg(uid.to_string()).arg(gid.to_string()).arg(crate::spore_bin());
                c
            }
        };
        // In HOME: a shell that runs a binary as a script (as a lost race
        // can make it) leaves its junk there, not in the work tree.
        cmd.args(["-v", "run", "local", "--", "true"])
            .current_dir(&self.home)
            .env_remove("SPORE_LOG")
            .env("HOME", &self.home);
        match &self.xdg {
            Some(x) => cmd.env("XDG_RUNTIME_DIR", x),
            None => cmd.env_remove("XDG_RUNTIME_DIR"),
        };
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        Start::from(crate::wait_bounded(child, Duration::from_secs(60)))
    }
}

/// What a start did.
pub struct Start {
    /// `spore` exited 0.
    pub ok: bool,
    /// Its stderr (`-v`: with its log lines).
    pub stderr: String,
}

impl From<Output> for Start {
    fn from(out: Output) -> Start {
        Start { ok: out.status.success(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
    }
}

impl Start {
    /// Did it say the connection failed for authentication?
    pub fn auth_failed(&self) -> bool {
        self.stderr.contains("authentication failed")
    }

    /// Did it upload the agent (a cache miss)?
    pub fn uploaded(&self) -> bool {
        self.stderr.contains("agent uploaded")
    }
}

/// A process of another user exchanging two names as fast as it can; stops
/// (and is reaped) when dropped.
pub struct Renamer {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: Option<std::sync::mpsc::Receiver<String>>,
}

impl Renamer {
    /// Start swapping `a` and `b` as `user`; returns once the first
    /// exchange is done (fails the test if none is within 10 s).
    pub fn start(a: &Path, b: &Path, user: (u32, u32)) -> Renamer {
        let mut child = Command::new(helper())
            .arg("renamer")
            .arg(user.0.to_string())
            .arg(user.1.to_string())
            .arg(a)
            .arg(b)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let mut r = Renamer { child: Some(child), stdin, lines: None };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok).unwrap_or_default();
            let _ = tx.send(first);
            let rest: Vec<String> = lines.map_while(Result::ok).collect();
            let _ = tx.send(rest.join("\n"));
        });
        r.lines = Some(rx);
        match r.lines.as_ref().unwrap().recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line == "ready" => r,
            other => panic!("the renamer did not start swapping {} and {}: {other:?}", a.display(), b.display()),
        }
    }
}

impl Renamer {
    /// Stop it; its report (`swaps N failed M`).
    pub fn stop(mut self) -> String {
        self.finish()
    }

    fn finish(&mut self) -> String {
        let Some(mut child) = self.child.take() else { return String::new() };
        if let Some(mut w) = self.stdin.take() {
            let _ = w.write_all(b"stop\n");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return "killed: did not stop within 10 s".into();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.lines.take().and_then(|rx| rx.recv_timeout(Duration::from_secs(5)).ok()).unwrap_or_default()
    }
}

impl Drop for Renamer {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A tmpfs mounted on a directory, unmounted when dropped.
pub struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs with these options (`size=64k,mode=0700`) on `at`, or
    /// say why not.
    pub fn mount(at: &Path, options: &str) -> Result<Tmpfs, String> {
        let target = std::ffi::CString::new(at.as_os_str().as_bytes()).unwrap();
        let data = std::ffi::CString::new(options).unwrap();
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe { libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), 0, data.as_ptr().cast()) };
        if rc != 0 {
            return Err(format!(
                "mount -t tmpfs -o {options} on {}: {}",
                at.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Tmpfs { at: at.to_path_buf() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.at.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; a busy mount is detached instead.
        unsafe {
            if libc::umount2(target.as_ptr(), 0) != 0 {
                libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}
