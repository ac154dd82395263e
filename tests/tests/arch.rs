//! The agent on other architectures and on hosts with next to nothing,
//! through a `docker:` hop: arm64 and armhf containers of Debian's busybox
//! run through qemu-user (binfmt_misc), and x86_64 containers whose busybox
//! has only sh, ls, mkdir, chmod, mv, rm and head (or dd).
//!
//! The spec: spore picks the agent image by the target's `uname -m`, or by
//! the ELF header of its /bin/sh when there is no uname; a second connect
//! finds the agent in the target's cache and uploads nothing; the bootstrap
//! needs nothing but those seven applets.
//!
//! Needs a Docker engine, qemu-user-static and the Debian packages
//! tests/scripts/install-deps.sh unpacks under target/cross/.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore::{Command, Hop, Router};
use spore_tests::docker::{
    arm64_sshd_image, foreign_busybox_image, minimal_applets, minimal_image, require_foreign_arch, Container, IDLE,
};
use spore_tests::{fleet, LeakGuard};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `docker exec CONTAINER ARGS`: its stdout; it must succeed.
fn docker_exec(c: &Container, args: &[&str]) -> String {
    let out = std::process::Command::new("docker").arg("exec").arg(&c.name).args(args).output().unwrap();
    assert!(out.status.success(), "docker exec {} {args:?}: {}", c.name, text(&out.stderr));
    text(&out.stdout)
}

/// `spore -v info docker:NAME`: (stdout, whether the agent was uploaded).
/// The CLI says which in its debug log: "agent uploaded" or "agent cached".
fn cli_info(c: &Container) -> (String, bool) {
    let target = format!("docker:{}", c.name);
    let out = spore_tests::run_spore(&["-v", "info", &target], None);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "spore info {target}: {}\n{stderr}", out.status);
    let uploaded = stderr.contains("agent uploaded");
    assert!(uploaded || stderr.contains("agent cached"), "spore -v says neither uploaded nor cached:\n{stderr}");
    (stdout, uploaded)
}

/// Nothing of spore left running in the container (bounded wait).
fn assert_clean(c: &Container) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = c.processes();
        if left.iter().all(|p| p.ends_with("sleep 100000")) {
            return;
        }
        assert!(Instant::now() < deadline, "left in {}: {left:?}", c.name);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A busybox container of Debian architecture `deb_arch`, run through
/// qemu-user: `spore info` reports the agent's own architecture as
/// `expected` (so spore sent the agent built for it), the first time
/// uploading it, the second time finding it cached; then a command runs
/// through the library, and a third connect finds the cache too.
/// spore's name for the agent that runs on a machine `uname -m` names.
fn agent_arch(machine: &str) -> &str {
    if machine.starts_with("armv7") {
        "armv7"
    } else {
        machine
    }
}

fn foreign_host(kernel_arch: &str, deb_arch: &str, expected: &str) {
    require_foreign_arch(kernel_arch);
    let image = foreign_busybox_image(deb_arch);
    let c = Container::run(&image, &format!("arch-{deb_arch}"));
    // The container really is foreign: its busybox runs through qemu.
    assert_eq!(docker_exec(&c, &["uname", "-m"]).trim(), expected, "the container's own uname -m");

    let (first, uploaded) = cli_info(&c);
    let shown = format!(" arch={} machine={expected} ", agent_arch(expected));
    assert!(first.contains(&shown), "the agent runs as {expected}: {first}");
    assert!(uploaded, "a fresh container has no agent in its cache: the first connect uploads");
    let (second, uploaded) = cli_info(&c);
    assert!(second.contains(&shown), "{second}");
    assert!(!uploaded, "the second connect finds the {expected} agent in the cache and uploads nothing");

    let guard = LeakGuard::new();
    let r = Router::new().unwrap();
    let hop = Hop::parse(&format!("docker:{}", c.name)).unwrap();
    let ctx = r.connect(&hop, &format!("docker:{}", c.name)).unwrap();
    assert!(!ctx.uploaded(), "a third connect finds the cache too");
    let info = ctx.info().unwrap();
    assert_eq!((info.arch.as_str(), info.machine.as_str()), (agent_arch(expected), expected));
    let out = ctx.exec(&Command::new(["uname", "-m"])).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{expected}\n"));
    r.shutdown();
    drop((ctx, r));
    assert_clean(&c);
    drop(c);
    guard.check();
}

#[test]
fn arm64_host_gets_the_aarch64_agent() {
    foreign_host("aarch64", "arm64", "aarch64");
}

#[test]
fn armhf_host_gets_the_armv7_agent() {
    foreign_host("arm", "armhf", "armv7l");
}

/// A minimal container (see [`minimal_image`]) of Debian architecture
/// `deb_arch`: checks that the image really lacks the usual tools, then a
/// cold connect (uploads), a second one (cached), and a command. Returns
/// the agent's architecture.
fn minimal_host(deb_arch: &str, reader: &str) -> String {
    let image = minimal_image(deb_arch, reader);
    let c = Container::run_cmd(&image, &format!("minimal-{deb_arch}-{reader}"), &IDLE);
    let mut linked: Vec<String> = docker_exec(&c, &["/bin/busybox", "ls", "/bin"]).lines().map(String::from).collect();
    linked.sort();
    let mut want: Vec<String> = minimal_applets(reader).iter().map(|s| s.to_string()).collect();
    want.push("busybox".into());
    want.sort();
    assert_eq!(linked, want, "the image's /bin");
    let missing = docker_exec(
        &c,
        &[
            "sh",
            "-c",
            "for c in wc cksum find id gzip uname cat sleep dd head; do command -v $c >/dev/null || echo $c; done",
        ],
    );
    let absent: Vec<&str> = missing.lines().collect();
    let other = if reader == "head" { "dd" } else { "head" };
    assert_eq!(absent, ["wc", "cksum", "find", "id", "gzip", "uname", "cat", "sleep", other], "commands sh can't find");

    let guard = LeakGuard::new();
    let target = format!("docker:{}", c.name);
    let r = Router::new().unwrap();
    let cold = r.connect(&Hop::parse(&target).unwrap(), &target);
    let cold = cold.unwrap_or_else(|e| panic!("cold connect to a host with only {:?}: {e}", minimal_applets(reader)));
    assert!(cold.uploaded(), "a fresh container has no agent: the first connect uploads");
    r.shutdown();
    drop((cold, r));
    let r = Router::new().unwrap();
    let warm = r.connect(&Hop::parse(&target).unwrap(), &target).unwrap();
    assert!(!warm.uploaded(), "the second connect finds the agent in the cache and uploads nothing");
    let out = warm.exec(&Command::new(["ls", "-d", "/bin", "/tmp"])).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "/bin\n/tmp\n");
    let arch = warm.info().unwrap().arch;
    r.shutdown();
    drop((warm, r));
    assert_clean(&c);
    drop(c);
    guard.check();
    arch
}

#[test]
fn minimal_host_with_head() {
    assert_eq!(minimal_host("amd64", "head"), "x86_64");
}

#[test]
fn minimal_host_with_dd() {
    assert_eq!(minimal_host("amd64", "dd"), "x86_64");
}

/// No uname on an arm64 host: spore reads the ELF header of /bin/sh.
#[test]
fn arm64_host_without_uname_gets_the_aarch64_agent() {
    require_foreign_arch("aarch64");
    assert_eq!(minimal_host("arm64", "head"), "aarch64");
}

/// The agents `make agent` built for arm64 and armv7 work on their own
/// architecture, whatever the master picks: handed over with SPORE_AGENT,
/// each reports its architecture, runs a command and moves a file.
#[test]
fn foreign_agents_work_on_their_architecture() {
    for (kernel_arch, deb_arch, triple, expected) in [
        ("aarch64", "arm64", "aarch64-unknown-linux-musl", "aarch64"),
        ("arm", "armhf", "armv7-unknown-linux-musleabihf", "armv7l"),
    ] {
        require_foreign_arch(kernel_arch);
        let agent = spore_tests::target_dir().join(format!("{triple}/agent/spore-agent"));
        assert!(agent.is_file(), "{} is missing: make agent", agent.display());
        let c = Container::run(&foreign_busybox_image(deb_arch), &format!("agent-{deb_arch}"));
        let target = format!("docker:{}", c.name);
        let spore = |args: &[&str]| {
            let out = std::process::Command::new(spore_tests::spore_bin())
                .env("SPORE_AGENT", &agent)
                .env_remove("SPORE_LOG")
                .args(args)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            assert!(out.status.success(), "spore {args:?}: {}", text(&out.stderr));
            text(&out.stdout)
        };
        let info = spore(&["info", &target]);
        assert!(info.contains(&format!(" arch={} machine={expected} ", agent_arch(expected))), "{info}");
        assert_eq!(
            spore(&["run", &target, "--", "sh", "-c", "uname -m; echo $((6 * 7))"]),
            format!("{expected}\n42\n")
        );
        let local = std::env::temp_dir().join(format!("spore-arch-{deb_arch}-{}", std::process::id()));
        let data = spore_tests::pattern(1 << 20, 5);
        std::fs::write(&local, &data).unwrap();
        let back = local.with_extension("back");
        spore(&["put", &target, local.to_str().unwrap(), "/tmp/f"]);
        spore(&["get", &target, "/tmp/f", back.to_str().unwrap()]);
        let same = std::fs::read(&back).unwrap() == data;
        let _ = (std::fs::remove_file(&local), std::fs::remove_file(&back));
        assert!(same, "the file came back changed from the {expected} agent");
        assert_clean(&c);
    }
}

/// An x86_64 bastion and an arm64 sshd host (`arm64`, through qemu-user)
/// on a network of their own, like tests/src/fleet.rs's, each sshd
/// published on 127.0.0.1; all removed on drop.
struct MixedFleet {
    network: String,
    containers: Vec<String>,
    dir: PathBuf,
}

fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

impl MixedFleet {
    fn start() -> MixedFleet {
        let bastion_image = fleet::image("bastion");
        let arm64_image = arm64_sshd_image();
        let pid = std::process::id();
        let label = format!("spore-test-owner={pid}");
        let dir = std::env::temp_dir().join(format!("spore-mixed-fleet-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = MixedFleet { network: String::new(), containers: Vec::new(), dir };
        let key = f.dir.join("id");
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success(), "ssh-keygen: {}", text(&out.stderr));
        std::fs::copy(f.dir.join("id.pub"), f.dir.join("authorized_keys")).unwrap();
        let network = format!("spore-test-mixed-{pid}");
        docker(&["network", "create", "--label", &label, &network]);
        f.network = network;
        let mount = format!("{}:/etc/spore:ro", f.dir.display());
        let mut cfg = String::new();
        for (name, image) in [("bastion", &bastion_image), ("arm64", &arm64_image)] {
            let container = format!("spore-mixed-{name}-{pid}");
            let _ = std::process::Command::new("docker").args(["rm", "-f", &container]).output();
            f.containers.push(container.clone());
            docker(&[
                "run",
                "-d",
                "--name",
                &container,
                "--hostname",
                name,
                "--label",
                &label,
                "--network",
                &f.network,
                "--network-alias",
                name,
                "-p",
                "127.0.0.1::22",
                "-v",
                &mount,
                image,
            ]);
            let port = docker(&["port", &container, "22/tcp"]);
            let port: u16 =
                port.lines().next().and_then(|l| l.rsplit(':').next()).and_then(|p| p.parse().ok()).unwrap();
            cfg.push_str(&format!("Host {name}\n  HostName 127.0.0.1\n  Port {port}\n"));
            wait_for_sshd(&container, port);
        }
        cfg.push_str(&format!(
            "Host *\n  User root\n  IdentityFile {}/id\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  \
             UserKnownHostsFile /dev/null\n  LogLevel ERROR\n",
            f.dir.display()
        ));
        std::fs::write(f.config(), cfg).unwrap();
        f
    }

    fn config(&self) -> String {
        self.dir.join("config").display().to_string()
    }
}

fn wait_for_sshd(container: &str, port: u16) {
    use std::io::Read;
    // sshd under qemu-user takes a while to start.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut banner = [0u8; 4];
            if s.read_exact(&mut banner).is_ok() && &banner == b"SSH-" {
                return;
            }
        }
        let logs = std::process::Command::new("docker").args(["logs", container]).output();
        assert!(Instant::now() < deadline, "sshd in {container} never answered: {logs:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for MixedFleet {
    fn drop(&mut self) {
        if !self.containers.is_empty() {
            let _ = std::process::Command::new("docker").args(["rm", "-f"]).args(&self.containers).output();
        }
        if !self.network.is_empty() {
            let _ = std::process::Command::new("docker").args(["network", "rm", &self.network]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An arm64 host reached by ssh, directly and through an x86_64 bastion:
/// each hop gets the agent of its own architecture.
#[test]
fn arm64_sshd_host_direct_and_behind_an_x86_64_bastion() {
    require_foreign_arch("aarch64");
    let f = MixedFleet::start();
    let cfg = f.config();
    let cli = |args: &[&str]| {
        let mut all = vec!["-F", &cfg];
        all.extend(args);
        let out = spore_tests::run_spore(&all, None);
        assert!(out.status.success(), "spore {all:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    // The host is arm64: its own uname says so, whatever agent runs there.
    assert_eq!(cli(&["run", "bastion/arm64", "--", "uname", "-m"]), "aarch64\n");
    let info = cli(&["info", "bastion", "bastion/arm64", "arm64"]);
    let arch_of = |target: &str| {
        info.lines()
            .find(|l| l.starts_with(&format!("{target}: ")))
            .and_then(|l| l.split(' ').find_map(|w| w.strip_prefix("arch=")))
            .unwrap_or_else(|| panic!("no arch for {target} in {info}"))
            .to_string()
    };
    assert_eq!(arch_of("bastion"), "x86_64", "{info}");
    assert_eq!(arch_of("bastion/arm64"), "aarch64", "the agent behind the bastion: {info}");
    assert_eq!(arch_of("arm64"), "aarch64", "the agent reached directly: {info}");
    drop(f);
    assert_eq!(fleet::leftovers(), Vec::<String>::new(), "containers or networks left");
}

/// `make agent` left a static agent for each architecture where the
/// master's build looks for them.
#[test]
fn agents_are_built_for_every_architecture() {
    // (triple, ELF class, e_machine)
    let want = [
        ("x86_64-unknown-linux-musl", 2, 62),
        ("aarch64-unknown-linux-musl", 2, 183),
        ("armv7-unknown-linux-musleabihf", 1, 40),
    ];
    for (triple, class, machine) in want {
        let path = spore_tests::target_dir().join(format!("{triple}/agent/spore-agent"));
        let elf = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (make agent)", path.display()));
        assert_eq!(&elf[..4], b"\x7fELF", "{}", path.display());
        assert_eq!((elf[4], u16::from_le_bytes([elf[18], elf[19]])), (class, machine), "{}", path.display());
        // Static: no PT_INTERP among the program headers.
        let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
        let (phoff, phentsize, phnum) = if class == 2 {
            (u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize, u16_at(54), u16_at(56))
        } else {
            (u32::from_le_bytes(elf[28..32].try_into().unwrap()) as usize, u16_at(42), u16_at(44))
        };
        for i in 0..phnum {
            let at = phoff + i * phentsize;
            let kind = u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
            assert_ne!(kind, 3, "{} asks for a dynamic loader", path.display());
        }
    }
}
