//! A fleet of constrained hosts in Docker: a bastion and N targets built
//! `FROM scratch` (busybox, sshd, sudo; no Python, no bash), on a network of
//! the test's own, each sshd published on 127.0.0.1. Everything is labelled
//! with the owning test's pid and removed on drop; leftovers of a test that
//! was killed are removed by the next fleet that starts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test harness")]

use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The sudo password of user `sporepw` on every fleet host.
pub const SUDO_PASSWORD: &str = "sporepw-1";
const LABEL: &str = "spore-test-owner";

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("docker")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Build (or find, by the hash of its inputs) the image for `role`:
/// `target` or `bastion`. Returns its tag.
pub fn image(role: &str) -> String {
    crate::docker::require_docker();
    let script_path = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/build-rootfs.sh");
    let script = fs::read(script_path).unwrap();
    let versions = Command::new("dpkg-query")
        .args([
            "-W",
            "-f",
            "${Package}=${Version} ",
            "openssh-server",
            "openssh-client",
            "sudo",
            "busybox-static",
            "libc6",
        ])
        .output()
        .unwrap()
        .stdout;
    let mut h = spore_protocol::Sha256::new();
    for part in [role.as_bytes(), &script, &versions] {
        h.update(part);
    }
    let tag = format!("spore-test-{role}:{}", &spore_protocol::hex(&h.finish())[..16]);
    // One builder at a time across test processes.
    let lock = fs::OpenOptions::new().create(true).append(true).open("/tmp/spore-test-images.lock").unwrap();
    // SAFETY: flock on an fd we own; released when `lock` closes.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) }, 0);
    if docker(&["image", "inspect", &tag]).status.success() {
        return tag;
    }
    let dir = crate::target_dir().join(format!("spore-images/{role}"));
    let out = Command::new("sh").arg(script_path).arg(role).arg(&dir).output().unwrap();
    assert!(out.status.success(), "build-rootfs.sh {role}: {}", String::from_utf8_lossy(&out.stderr));
    docker_ok(&["build", "-q", "-t", &tag, dir.to_str().unwrap()]);
    let _ = fs::remove_dir_all(&dir);
    tag
}

/// Size of an image in bytes.
pub fn image_size(tag: &str) -> u64 {
    docker_ok(&["image", "inspect", "-f", "{{.Size}}", tag]).parse().unwrap_or(0)
}

/// Remove containers and networks left by test processes that are gone.
fn remove_orphans() {
    let filter = format!("label={LABEL}");
    for kind in ["container", "network"] {
        let fmt = format!("{{{{.ID}}}} {{{{.Label \"{LABEL}\"}}}}");
        let mut args = vec![kind, "ls", "--filter", &filter, "--format", &fmt];
        if kind == "container" {
            args.insert(2, "-a");
        }
        for line in docker_ok(&args).lines() {
            let mut parts = line.split_whitespace();
            let (Some(id), Some(pid)) = (parts.next(), parts.next()) else { continue };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let rm: &[&str] = if kind == "container" { &["rm", "-f"] } else { &["rm"] };
                let _ = docker(&[&[kind][..], rm, &[id]].concat());
            }
        }
    }
}

/// One host of the fleet.
pub struct Host {
    /// Its container name, and its ssh alias (on the network and in our
    /// client config).
    pub name: String,
    /// Its container (unique on this machine).
    pub container: String,
    /// Its sshd on 127.0.0.1.
    pub port: u16,
}

/// What to vary per fleet.
#[derive(Default, Clone)]
pub struct FleetOptions {
    /// Targets (1-based) whose /tmp is a noexec tmpfs.
    pub noexec_tmp: Vec<usize>,
}

/// A running fleet.
pub struct Fleet {
    /// The network's name.
    pub network: String,
    /// The bastion.
    pub bastion: Host,
    /// target1 … targetN.
    pub targets: Vec<Host>,
    /// Keys and the client config.
    pub dir: PathBuf,
}

impl Fleet {
    /// Start a bastion and `n` targets.
    pub fn start(n: usize, opts: FleetOptions) -> Fleet {
        remove_orphans();
        let target_image = image("target");
        let bastion_image = image("bastion");
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("spore-fleet-{pid}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let key = dir.join("id");
        let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).output().unwrap();
        assert!(out.status.success());
        fs::copy(dir.join("id.pub"), dir.join("authorized_keys")).unwrap();
        let network = format!("spore-test-{pid}");
        let label = format!("{LABEL}={pid}");
        docker_ok(&["network", "create", "--label", &label, &network]);
        let mut fleet = Fleet {
            network,
            bastion: Host { name: String::new(), container: String::new(), port: 0 },
            targets: Vec::new(),
            dir,
        };
        fleet.bastion = fleet.run_host("bastion", &bastion_image, &[]);
        for i in 1..=n {
            let mut extra: Vec<String> = Vec::new();
            if opts.noexec_tmp.contains(&i) {
                extra.extend(["--tmpfs".into(), "/tmp:rw,noexec,nosuid,mode=1777".into()]);
            }
            let host = fleet.run_host(&format!("target{i}"), &target_image, &extra);
            fleet.targets.push(host);
        }
        fleet.write_config();
        for host in std::iter::once(&fleet.bastion).chain(&fleet.targets) {
            wait_for_sshd(host);
        }
        fleet
    }

    fn run_host(&self, name: &str, image: &str, extra: &[String]) -> Host {
        let pid = std::process::id();
        let container = format!("spore-{name}-{pid}");
        let label = format!("{LABEL}={pid}");
        let mount = format!("{}:/etc/spore:ro", self.dir.display());
        let mut args: Vec<&str> = vec![
            "run",
            "-d",
            "--name",
            &container,
            "--hostname",
            name,
            "--label",
            &label,
            "--network",
            &self.network,
            "--network-alias",
            name,
            "-p",
            "127.0.0.1::22",
            "-v",
            &mount,
        ];
        args.extend(extra.iter().map(String::as_str));
        args.push(image);
        docker_ok(&args);
        let port = docker_ok(&["port", &container, "22/tcp"]);
        let port = port.lines().next().and_then(|l| l.rsplit(':').next()).and_then(|p| p.parse().ok()).unwrap();
        Host { name: name.to_string(), container, port }
    }

    fn write_config(&self) {
        let mut cfg = String::new();
        for h in std::iter::once(&self.bastion).chain(&self.targets) {
            cfg.push_str(&format!("Host {}\n  HostName 127.0.0.1\n  Port {}\n", h.name, h.port));
        }
        cfg.push_str(&format!(
            "Host *\n  User root\n  IdentityFile {}/id\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  \
             UserKnownHostsFile /dev/null\n  LogLevel ERROR\n",
            self.dir.display()
        ));
        fs::write(self.config(), cfg).unwrap();
    }

    /// The client config (`-F`).
    pub fn config(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// The client config as a string.
    pub fn config_str(&self) -> String {
        self.config().display().to_string()
    }

    /// `docker exec CONTAINER ps`: every process but ps itself and sshd's
    /// listener, as `pid args`.
    pub fn processes(host: &Host) -> Vec<String> {
        let out = docker(&["exec", &host.container, "ps", "-o", "pid,args"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(|l| l.trim().to_string())
            .filter(|l| !l.ends_with("ps -o pid,args") && !l.contains("sshd -D -e [listener]"))
            .collect()
    }

    /// Wait (bounded) until no process but sshd's listener runs on any host.
    pub fn assert_clean(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left: Vec<(String, Vec<String>)> = std::iter::once(&self.bastion)
                .chain(&self.targets)
                .filter(|h| !paused(h))
                .map(|h| (h.name.clone(), Fleet::processes(h)))
                .filter(|(_, p)| !p.is_empty())
                .collect();
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "left running in the fleet: {left:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Run `docker ARGS`, which must succeed.
    pub fn docker(&self, args: &[&str]) -> String {
        docker_ok(args)
    }

    /// Target `i` (1-based).
    pub fn target(&self, i: usize) -> &Host {
        &self.targets[i - 1]
    }
}

fn paused(h: &Host) -> bool {
    docker(&["inspect", "-f", "{{.State.Paused}}", &h.container]).stdout.starts_with(b"true")
}

fn wait_for_sshd(host: &Host) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", host.port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut banner = [0u8; 4];
            if s.read_exact(&mut banner).is_ok() && &banner == b"SSH-" {
                return;
            }
        }
        assert!(Instant::now() < deadline, "sshd in {} never answered", host.container);
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let mut names: Vec<&str> = self.targets.iter().map(|h| h.container.as_str()).collect();
        if !self.bastion.container.is_empty() {
            names.push(&self.bastion.container);
        }
        for name in &names {
            let _ = docker(&["unpause", name]);
        }
        let mut args = vec!["rm", "-f"];
        args.extend(names);
        let _ = Command::new("docker").args(&args).stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = docker(&["network", "rm", &self.network]);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Containers and networks of this process still on the machine.
pub fn leftovers() -> Vec<String> {
    let filter = format!("label={LABEL}={}", std::process::id());
    let mut left = Vec::new();
    for (kind, name) in [("container", "{{.Names}}"), ("network", "{{.Name}}")] {
        let mut args = vec![kind, "ls", "--filter", &filter, "--format", name];
        if kind == "container" {
            args.insert(2, "-a");
        }
        left.extend(docker_ok(&args).lines().map(String::from).filter(|l| !l.is_empty()));
    }
    left
}
