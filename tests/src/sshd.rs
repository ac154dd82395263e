//! A real OpenSSH server on 127.0.0.1 for one test: its own port, host key,
//! client key, `authorized_keys` and client config, all in a scratch
//! directory; nothing of the machine's own ssh setup is touched. Test users
//! (created once per machine, idempotently) cover sudo with and without a
//! password, a noisy login shell, and a PATH without `head`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test harness")]

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Password of [`USER_PW`] for sudo.
pub const PASSWORD: &str = "spore-Test-pw-1";
/// Needs its password for sudo.
pub const USER_PW: &str = "spore-pw";
/// Passwordless sudo and doas.
pub const USER_NOPW: &str = "spore-nopw";
/// Login shell prints noise before running anything.
pub const USER_NOISY: &str = "spore-noisy";
/// Login shell's PATH has no `head`.
pub const USER_NOHEAD: &str = "spore-nohead";
/// `~/.cache` is not writable (owned by root).
pub const USER_NOCACHE: &str = "spore-nocache";
/// No candidate cache directory is usable.
pub const USER_NOEXEC: &str = "spore-noexec";
/// `sh` is busybox ash, and only busybox applets are on PATH.
pub const USER_ASH: &str = "spore-ash";
/// `sh` is bash.
pub const USER_BASH: &str = "spore-bash";
/// `head` stops short: every upload is cut.
pub const USER_SHORT: &str = "spore-short";
/// Its login shell hangs forever.
pub const USER_HANG: &str = "spore-hang";
/// Users of their own for the tests that watch the agent cache.
pub const USER_CACHE_A: &str = "spore-cache-a";
/// See [`USER_CACHE_A`].
pub const USER_CACHE_B: &str = "spore-cache-b";
/// Users of their own for the test of images passed down the tree.
pub const USER_IMAGE_A: &str = "spore-image-a";
/// See [`USER_IMAGE_A`].
pub const USER_IMAGE_B: &str = "spore-image-b";
/// Whom the fleet aliases ([`Sshd::aliases`]) log in as: plain `/bin/sh`
/// as the login shell, so a connection costs what ssh costs (root's shell
/// on a developer's machine may run start-up files: a `pyenv init` in
/// root's `.bashrc` here cost more CPU per connection than sshd itself).
pub const USER_FLEET: &str = "spore-fleet";

const SHELLS: &str = "/usr/local/lib/spore-test";

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Make sure the packages and test users exist (idempotent; serialised
/// across test processes with a lock file).
pub fn setup_machine() {
    let lock = fs::OpenOptions::new().create(true).append(true).open("/tmp/spore-test-setup.lock").unwrap();
    // SAFETY: flock on an fd we own; released when `lock` is closed.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) }, 0);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-deps.sh");
    run(Command::new("sh").arg(script));
    fs::create_dir_all(SHELLS).unwrap();
    let noisy = format!("{SHELLS}/noisy-shell");
    write_exec(&noisy, "#!/bin/sh\necho 'Welcome! Last login: yesterday'\nprintf 'partial line, no newline'\necho >&2 'motd on stderr'\nexec /bin/sh \"$@\"\n");
    let nohead_bin = format!("{SHELLS}/nohead-bin");
    fs::create_dir_all(&nohead_bin).unwrap();
    for tool in [
        "sh",
        "ls",
        "id",
        "mkdir",
        "chmod",
        "printf",
        "rm",
        "wc",
        "mv",
        "dd",
        "cat",
        "sha256sum",
        "sleep",
        "uname",
        "true",
    ] {
        let link = format!("{nohead_bin}/{tool}");
        if !Path::new(&link).exists() {
            let target = which(tool);
            std::os::unix::fs::symlink(target, &link).unwrap();
        }
    }
    let nohead = format!("{SHELLS}/nohead-shell");
    write_exec(&nohead, &format!("#!/bin/sh\nPATH={nohead_bin}\nexport PATH\nexec /bin/sh \"$@\"\n"));
    // busybox as sh, with nothing but its applets.
    let ash_bin = format!("{SHELLS}/ash-bin");
    fs::create_dir_all(&ash_bin).unwrap();
    for applet in [
        "sh",
        "id",
        "mkdir",
        "chmod",
        "printf",
        "rm",
        "wc",
        "mv",
        "dd",
        "cat",
        "head",
        "sha256sum",
        "sleep",
        "uname",
        "true",
        "readlink",
        "cut",
    ] {
        let link = format!("{ash_bin}/{applet}");
        if !Path::new(&link).exists() {
            std::os::unix::fs::symlink(which("busybox"), &link).unwrap();
        }
    }
    let ash = format!("{SHELLS}/ash-shell");
    write_exec(
        &ash,
        &format!("#!{busybox} sh\nPATH={ash_bin}\nexport PATH\nexec {busybox} sh \"$@\"\n", busybox = which("busybox")),
    );
    // bash as sh.
    let bash_bin = format!("{SHELLS}/bash-bin");
    fs::create_dir_all(&bash_bin).unwrap();
    if !Path::new(&format!("{bash_bin}/sh")).exists() {
        std::os::unix::fs::symlink(which("bash"), format!("{bash_bin}/sh")).unwrap();
    }
    let bash = format!("{SHELLS}/bash-shell");
    write_exec(&bash, &format!("#!/bin/sh\nPATH={bash_bin}:/usr/bin:/bin\nexport PATH\nexec {bash_bin}/sh \"$@\"\n"));
    // A head that stops after 1000 bytes.
    let short_bin = format!("{SHELLS}/short-bin");
    fs::create_dir_all(&short_bin).unwrap();
    write_exec(&format!("{short_bin}/head"), "#!/bin/sh\nexec dd bs=1000 count=1 2>/dev/null\n");
    let short = format!("{SHELLS}/short-shell");
    write_exec(&short, &format!("#!/bin/sh\nPATH={short_bin}:/usr/bin:/bin\nexport PATH\nexec /bin/sh \"$@\"\n"));
    let hang = format!("{SHELLS}/hang-shell");
    // Stuck waiting for input that never comes (a prompt in a start-up
    // file). It ends when the connection does; a shell stuck on something
    // else would outlive any ssh client without a pty, spore's included.
    write_exec(&hang, "#!/bin/sh\necho 'this host is stuck' >&2\nexec cat >/dev/null\n");
    let noexec = format!("{SHELLS}/noexec-shell");
    write_exec(&noexec, "#!/bin/sh\nunset XDG_RUNTIME_DIR\nexec /bin/sh \"$@\"\n");
    for (user, shell) in [
        (USER_PW, "/bin/sh"),
        (USER_NOPW, "/bin/sh"),
        (USER_NOISY, noisy.as_str()),
        (USER_NOHEAD, nohead.as_str()),
        (USER_NOCACHE, "/bin/sh"),
        (USER_NOEXEC, noexec.as_str()),
        (USER_ASH, ash.as_str()),
        (USER_BASH, bash.as_str()),
        (USER_SHORT, short.as_str()),
        (USER_HANG, hang.as_str()),
        (USER_CACHE_A, "/bin/sh"),
        (USER_CACHE_B, "/bin/sh"),
        (USER_IMAGE_A, "/bin/sh"),
        (USER_IMAGE_B, "/bin/sh"),
        (USER_FLEET, "/bin/sh"),
    ] {
        let exists = Command::new("id").arg(user).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
        if !exists.success() {
            run(Command::new("useradd").args(["-m", "-s", shell, user]));
        }
        run(Command::new("usermod").args(["-s", shell, user]));
        // A locked account ("!") is refused by sshd even with a key.
        let pw = if user == USER_PW { PASSWORD } else { "unused-but-not-locked" };
        let mut chpasswd = Command::new("chpasswd").stdin(Stdio::piped()).spawn().unwrap();
        writeln!(chpasswd.stdin.take().unwrap(), "{user}:{pw}").unwrap();
        assert!(chpasswd.wait().unwrap().success());
    }
    // Cache directories taken by root: the user may not use them.
    let mut taken = vec![format!("/home/{USER_NOCACHE}/.cache"), format!("/home/{USER_NOEXEC}/.cache")];
    let uid = uid_of(USER_NOEXEC);
    for base in ["/tmp", "/var/tmp", "/dev/shm"] {
        taken.push(format!("{base}/spore-{uid}"));
    }
    for dir in taken {
        let _ = fs::create_dir_all(&dir);
        run(Command::new("chown").args(["root:root", &dir]));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let sudoers = format!(
        "# spore's test users (written by tests/src/sshd.rs)\n\
         Defaults:{USER_PW} timestamp_timeout=0, passwd_tries=1, !lecture\n\
         {USER_PW} ALL=(ALL) ALL\n\
         {USER_NOPW} ALL=(ALL) NOPASSWD: ALL\n"
    );
    write_mode("/etc/sudoers.d/spore-tests", &sudoers, 0o440);
    let doas = format!(
        "# spore's test users (written by tests/src/sshd.rs)\npermit nopass root\npermit nopass {USER_NOPW}\npermit {USER_PW} as root\n"
    );
    if fs::read_to_string("/etc/doas.conf").unwrap_or_default() != doas {
        write_mode("/etc/doas.conf", &doas, 0o400);
    }
    fs::create_dir_all("/run/sshd").unwrap();
}

/// A user's uid.
pub fn uid_of(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn which(tool: &str) -> String {
    for dir in ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let p = format!("{dir}/{tool}");
        if Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{tool} not found");
}

fn write_mode(path: &str, text: &str, mode: u32) {
    let tmp = format!("{path}.tmp");
    fs::write(&tmp, text).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn write_exec(path: &str, text: &str) {
    write_mode(path, text, 0o755);
}

/// Unauthenticated connections the test sshd takes at once. OpenSSH's
/// default (`10:30:100`) starts dropping them beyond 10, so a fleet of
/// aliases connecting together would see random failures.
pub const MAX_STARTUPS: usize = 1000;

/// Host key alias every fleet alias checks the server's key under.
const FLEET_KEY_ALIAS: &str = "spore-fleet";

/// A running sshd and the client side to reach it.
pub struct Sshd {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Scratch directory with keys and configs.
    pub dir: PathBuf,
    /// Client config: `Host spore-test` reaches this server as root.
    pub config: PathBuf,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn keygen(path: &Path) {
    let _ = fs::remove_file(path);
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "spore-test", "-f"]).arg(path));
}

impl Sshd {
    /// Start one (and set up the machine first if needed).
    pub fn start() -> Sshd {
        setup_machine();
        let dir = std::env::temp_dir().join(format!("spore-sshd-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        keygen(&dir.join("host_key"));
        keygen(&dir.join("id"));
        let pubkey = fs::read_to_string(dir.join("id.pub")).unwrap();
        write_mode(&dir.join("authorized_keys").display().to_string(), &pubkey, 0o644);
        let host_pub = fs::read_to_string(dir.join("host_key.pub")).unwrap();
        for attempt in 0.. {
            let port = free_port();
            let d = dir.display();
            fs::write(
                dir.join("sshd_config"),
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                     AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nPermitRootLogin prohibit-password\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                     AcceptEnv XDG_RUNTIME_DIR\nPrintMotd no\nLogLevel ERROR\n\
                     MaxStartups {MAX_STARTUPS}\nMaxSessions 100\n"
                ),
            )
            .unwrap();
            let key_type_and_key: Vec<&str> = host_pub.split_whitespace().take(2).collect();
            fs::write(dir.join("known_hosts"), format!("[127.0.0.1]:{port} {}\n", key_type_and_key.join(" "))).unwrap();
            fs::write(
                dir.join("wrong_known_hosts"),
                format!(
                    "[127.0.0.1]:{port} {}\n",
                    fs::read_to_string(dir.join("id.pub"))
                        .unwrap()
                        .split_whitespace()
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            )
            .unwrap();
            fs::write(
                dir.join("config"),
                format!(
                    "# ssh takes the first value it finds: specific hosts first.\n\
                     Host spore-test-wrongkey\n  UserKnownHostsFile {d}/wrong_known_hosts\n\
                     Host spore-test spore-test-*\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {d}/id\n  \
                     IdentitiesOnly yes\n  UserKnownHostsFile {d}/known_hosts\n  GlobalKnownHostsFile /dev/null\n  \
                     StrictHostKeyChecking yes\n  LogLevel ERROR\n"
                ),
            )
            .unwrap();
            let mut cmd = Command::new("/usr/sbin/sshd");
            // If the test process dies (its deadline, a crash), sshd goes too.
            // SAFETY: prctl is async-signal-safe; nothing else runs here.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            let child = cmd
                .args(["-D", "-e", "-f"])
                .arg(dir.join("sshd_config"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(dir.join("sshd.log")).unwrap())
                .spawn()
                .unwrap();
            let mut sshd = Sshd { port, config: dir.join("config"), dir: dir.clone(), child: Some(child) };
            if sshd.wait_listening() {
                return sshd;
            }
            sshd.stop();
            assert!(attempt < 5, "sshd would not start");
        }
        unreachable!()
    }

    fn wait_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// The listener's pid.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The config path as a string, for `-F`.
    pub fn config_str(&self) -> String {
        self.config.display().to_string()
    }

    /// Stop the listener. Sessions still open are the test's leak to find.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no memory effects; it is our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `n` ssh targets on this one server: a client config (for `ssh -F`,
    /// `spore -F`) in which `h001` … `hNNN` (three digits or more) each
    /// reach it, and their names. See [`Sshd::alias_config`].
    pub fn aliases(&self, n: usize) -> (PathBuf, Vec<String>) {
        let width = n.to_string().len().max(3);
        let names: Vec<String> = (1..=n).map(|i| format!("h{i:0width$}")).collect();
        (self.alias_config(&names), names)
    }

    /// A client config in which each of `names` is an ssh alias of this
    /// server, so one sshd stands in for a fleet without touching
    /// /etc/hosts. They log in as [`USER_FLEET`] (`root@h001` as root), share
    /// one host key alias (one `known_hosts` line, checked strictly) and
    /// one agent cache, `dir/fleet-xdg` (the script's `$XDG_RUNTIME_DIR`):
    /// the first connect uploads the agent, the rest find it. Each call
    /// writes a config file of its own. The sshd takes [`MAX_STARTUPS`]
    /// handshakes at once. ssh's `%C` (in a ControlPath) is the same for
    /// every alias: it hashes the HostName, not the alias.
    pub fn alias_config<S: AsRef<str>>(&self, names: &[S]) -> PathBuf {
        static CONFIGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = CONFIGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = self.dir.display();
        // The fleet user's own: root's directories are skipped by others.
        let xdg = self.dir.join("fleet-xdg");
        fs::create_dir_all(&xdg).unwrap();
        fs::set_permissions(&xdg, fs::Permissions::from_mode(0o700)).unwrap();
        run(Command::new("chown").arg(format!("{USER_FLEET}:")).arg(&xdg));
        let host_pub = fs::read_to_string(self.dir.join("host_key.pub")).unwrap();
        let key: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        let known = self.dir.join("fleet_known_hosts");
        fs::write(&known, format!("{FLEET_KEY_ALIAS} {}\n", key.join(" "))).unwrap();
        let mut text = String::from("# ssh aliases of one test sshd (tests/src/sshd.rs, Sshd::alias_config)\n");
        let options = format!(
            "  HostName 127.0.0.1\n  Port {port}\n  User {USER_FLEET}\n  IdentityFile {d}/id\n  IdentitiesOnly yes\n  \
             HostKeyAlias {FLEET_KEY_ALIAS}\n  UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n  \
             StrictHostKeyChecking yes\n  SetEnv XDG_RUNTIME_DIR={xdg}\n  LogLevel ERROR\n",
            port = self.port,
            known = known.display(),
            xdg = xdg.display(),
        );
        // A block per 50 names keeps each `Host` line short.
        for chunk in names.chunks(50) {
            let list: Vec<&str> = chunk.iter().map(AsRef::as_ref).collect();
            text.push_str(&format!("Host {}\n{options}", list.join(" ")));
        }
        let path = self.dir.join(format!("aliases-{k}"));
        fs::write(&path, text).unwrap();
        path
    }

    /// Remove the remote side's agent caches for `user`, so the next
    /// connect uploads.
    pub fn clear_cache(user: &str) {
        let uid = uid_of(user);
        let home = if user == "root" { "/root".to_string() } else { format!("/home/{user}") };
        for dir in [format!("{home}/.cache/spore"), format!("/tmp/spore-{uid}"), format!("/var/tmp/spore-{uid}")] {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
