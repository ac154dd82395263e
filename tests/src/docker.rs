//! Containers for the tests, from images built here (nothing can be
//! pulled): `FROM scratch` plus Debian's busybox, for this machine's
//! architecture or (through qemu-user and binfmt_misc) a foreign one. Images
//! are tagged by a hash of their inputs, so a second run reuses them;
//! containers are removed on drop, also when a test fails.
//!
//! The foreign and minimal images are made of Debian packages that
//! tests/scripts/install-deps.sh unpacks under target/cross/.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test harness")]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Is a Docker engine reachable? Panics with a clear message if not.
pub fn require_docker() {
    let ok = Command::new("docker").arg("info").stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(
        matches!(ok, Ok(s) if s.success()),
        "these tests need a running Docker engine (`docker info` failed); `make test-local` runs the rest"
    );
}

fn hash_hex(parts: &[&[u8]]) -> String {
    let mut h = spore_protocol::Sha256::new();
    for p in parts {
        h.update(p);
    }
    spore_protocol::hex(&h.finish())[..16].to_string()
}

/// A minimal image: busybox as `/bin/sh` and its applets, nothing else.
pub fn busybox_image() -> String {
    require_docker();
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static (tests/scripts/install-deps.sh)");
    let dockerfile = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCMD [\"/bin/sh\"]\n";
    let tag = format!("spore-test-busybox:{}", hash_hex(&[&busybox, dockerfile.as_bytes()]));
    let have =
        Command::new("docker").args(["image", "inspect", &tag]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if matches!(have, Ok(s) if s.success()) {
        return tag;
    }
    let dir = std::env::temp_dir().join(format!("spore-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("busybox"), &busybox).unwrap();
    std::fs::set_permissions(dir.join("busybox"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    let out = Command::new("docker").args(["build", "-q", "-t", &tag]).arg(&dir).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "docker build: {}", String::from_utf8_lossy(&out.stderr));
    tag
}

/// Where install-deps.sh unpacked Debian package `pkg` for Debian
/// architecture `arch` (`amd64`, `arm64`, `armhf`); panics if it did not.
pub fn debian_package(pkg: &str, arch: &str) -> PathBuf {
    let dir = crate::target_dir().join(format!("cross/{pkg}_{arch}"));
    assert!(
        dir.join(".unpacked").is_file(),
        "{} is missing: run tests/scripts/install-deps.sh (as root) to fetch Debian's {pkg}:{arch}",
        dir.display()
    );
    dir
}

/// qemu-user's name for a kernel architecture, and where Debian's
/// qemu-user-static keeps its binary.
fn qemu_for(arch: &str) -> (&'static str, &'static str) {
    match arch {
        "aarch64" | "arm64" => ("qemu-aarch64", "/usr/bin/qemu-aarch64-static"),
        "arm" | "armv7l" | "armhf" => ("qemu-arm", "/usr/bin/qemu-arm-static"),
        other => panic!("no qemu-user set-up for architecture {other:?}"),
    }
}

/// binfmt_misc lines for qemu-user, as Debian's qemu-user-static has them:
/// F, the kernel opens the interpreter at registration, so it also runs
/// inside containers, where the interpreter's path is absent; P, argv[0]
/// reaches the program as given (busybox's applets need it).
fn binfmt_line(qemu: &str, binary: &str) -> String {
    let (magic, mask) = match qemu {
        "qemu-aarch64" => (
            r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00",
            r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
        ),
        _ => (
            r"\x7f\x45\x4c\x46\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00",
            r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
        ),
    };
    format!(":{qemu}:M::{magic}:{mask}:{binary}:FP")
}

const BINFMT: &str = "/proc/sys/fs/binfmt_misc";

/// Make binaries of kernel architecture `arch` (`aarch64`, `arm`) run here
/// and in containers, through qemu-user: mount binfmt_misc if it is not,
/// register qemu for `arch` with the F (fix-binary) flag if it is not
/// (update-binfmts, or the register line written by hand), and check that
/// Debian's busybox for that architecture runs. Panics saying what is
/// missing when that can't be done.
///
/// The interpreter is the newer qemu install-deps.sh put in
/// target/cross/qemu-user_bpo/ when there is one (the system's QEMU 7.2
/// fails prctl(PR_SET_CHILD_SUBREAPER), so a foreign agent could not exec
/// anything): it then replaces the system's registration of the same name.
pub fn require_foreign_arch(arch: &str) {
    let (qemu, system) = qemu_for(arch);
    let cross = crate::target_dir().join("cross/qemu-user_bpo");
    let newer = fs::canonicalize(&cross).unwrap_or(cross).join(qemu);
    let binary = if newer.is_file() { newer.clone() } else { PathBuf::from(system) };
    let how = "tests/scripts/install-deps.sh installs qemu-user-static and binfmt-support; registering needs root";
    if !Path::new(BINFMT).join("register").exists() {
        let out = Command::new("mount").args(["-t", "binfmt_misc", "binfmt_misc", BINFMT]).output();
        let ok = matches!(&out, Ok(o) if o.status.success());
        assert!(
            ok || Path::new(BINFMT).join("register").exists(),
            "{arch} binaries can't run here: binfmt_misc is not mounted on {BINFMT} and `mount -t binfmt_misc` \
             failed ({}); {how}",
            out.map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string()).unwrap_or_else(|e| e.to_string())
        );
    }
    let entry = Path::new(BINFMT).join(qemu);
    let state = || fs::read_to_string(&entry).unwrap_or_default();
    let usable = |s: &str| {
        s.starts_with("enabled")
            && s.lines().any(|l| l.strip_prefix("flags:").is_some_and(|f| f.contains('F')))
            && s.lines().any(|l| {
                l.strip_prefix("interpreter ").is_some_and(|i| {
                    if binary == newer {
                        Path::new(i) == binary
                    } else {
                        Path::new(i).exists()
                    }
                })
            })
    };
    if !usable(&state()) && state().starts_with("disabled") {
        let _ = Command::new("update-binfmts").args(["--enable", qemu]).output();
    }
    if !usable(&state()) && !state().is_empty() {
        // Registered without F, or with another interpreter: again.
        let _ = fs::write(&entry, "-1");
    }
    if !usable(&state()) {
        assert!(binary.exists(), "{arch} binaries can't run here: no {}; {how}", binary.display());
        let line = binfmt_line(qemu, binary.to_str().unwrap());
        if let Err(e) = fs::write(Path::new(BINFMT).join("register"), line) {
            panic!(
                "{arch} binaries can't run here: registering {} in {BINFMT}/register failed: {e}; {how}",
                binary.display()
            );
        }
    }
    assert!(usable(&state()), "{arch} binaries can't run here: {BINFMT}/{qemu} after registering: {:?}", state());
    let deb = if qemu == "qemu-aarch64" { "arm64" } else { "armhf" };
    let busybox = debian_package("busybox-static", deb).join("bin/busybox");
    let out = Command::new(&busybox).arg("true").output();
    assert!(
        matches!(&out, Ok(o) if o.status.success()),
        "{qemu} is registered but {} does not run: {out:?}",
        busybox.display()
    );
}

/// A root filesystem to build an image from.
#[derive(Default)]
pub struct Rootfs {
    /// (path in the image, file here); copied with mode 0755.
    pub files: Vec<(String, PathBuf)>,
    /// (path in the image, what it points to).
    pub links: Vec<(String, String)>,
}

impl Rootfs {
    /// Busybox at /bin/busybox, `applets` linked to it in /bin.
    pub fn busybox(busybox: PathBuf, applets: &[&str]) -> Rootfs {
        let mut fs = Rootfs::default();
        fs.files.push(("bin/busybox".into(), busybox));
        fs.links.extend(applets.iter().filter(|a| **a != "busybox").map(|a| (format!("bin/{a}"), "busybox".into())));
        fs
    }

    /// `docker build` it `FROM scratch` as `spore-test-NAME:<hash of the
    /// inputs>`, unless that image exists. Returns the tag.
    pub fn image(&self, name: &str) -> String {
        require_docker();
        let dockerfile = "FROM scratch\nCOPY rootfs/ /\nCMD [\"/bin/sh\"]\n";
        let mut h = spore_protocol::Sha256::new();
        h.update(dockerfile.as_bytes());
        for (dest, src) in &self.files {
            h.update(format!("file {dest} ").as_bytes());
            h.update(&fs::read(src).unwrap_or_else(|e| panic!("{}: {e}", src.display())));
        }
        for (dest, to) in &self.links {
            h.update(format!("link {dest} {to}\n").as_bytes());
        }
        let tag = format!("spore-test-{name}:{}", &spore_protocol::hex(&h.finish())[..16]);
        // One builder at a time across test processes.
        let lock = fs::OpenOptions::new().create(true).append(true).open("/tmp/spore-test-images.lock").unwrap();
        // SAFETY: flock on an fd we own; released when `lock` closes.
        assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) }, 0);
        if image_exists(&tag) {
            return tag;
        }
        let dir = std::env::temp_dir().join(format!("spore-image-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let root = dir.join("rootfs");
        for (dest, src) in &self.files {
            let to = root.join(dest);
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(src, &to).unwrap();
            fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        for (dest, target) in &self.links {
            let at = root.join(dest);
            fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, at).unwrap();
        }
        fs::create_dir_all(root.join("tmp")).unwrap();
        fs::set_permissions(root.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
        fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
        // No cache: Docker's legacy builder reuses a COPY layer whose
        // files differ only in the names of symlinks.
        let out = Command::new("docker").args(["build", "--no-cache", "-q", "-t", &tag]).arg(&dir).output().unwrap();
        let _ = fs::remove_dir_all(&dir);
        assert!(out.status.success(), "docker build {tag}: {}", String::from_utf8_lossy(&out.stderr));
        tag
    }
}

fn image_exists(tag: &str) -> bool {
    let have =
        Command::new("docker").args(["image", "inspect", tag]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    matches!(have, Ok(s) if s.success())
}

/// Debian's static busybox for Debian architecture `arch` (`arm64`,
/// `armhf`) and all its applets, run through qemu-user: call
/// [`require_foreign_arch`] first.
pub fn foreign_busybox_image(arch: &str) -> String {
    let busybox = debian_package("busybox-static", arch).join("bin/busybox");
    let out = Command::new(&busybox).arg("--list").output().unwrap();
    assert!(out.status.success(), "{} --list: {out:?}", busybox.display());
    let list = String::from_utf8(out.stdout).unwrap();
    let applets: Vec<&str> = list.lines().collect();
    Rootfs::busybox(busybox, &applets).image(&format!("busybox-{arch}"))
}

/// The applets of the minimal images: no wc, cksum, find, id, gzip, uname
/// or cat; `head` or `dd` to read the upload (`reader`).
pub fn minimal_applets(reader: &str) -> [&str; 7] {
    ["sh", "ls", "mkdir", "chmod", "mv", "rm", reader]
}

/// A host with next to nothing: Debian's dynamically linked busybox (the
/// static one runs every applet from sh whether linked or not) for Debian
/// architecture `arch` (`amd64`, or `arm64` through qemu-user), its three
/// libraries, and links for [`minimal_applets`] only. There is no `sleep`
/// either: run it with [`Container::run_cmd`] and [`IDLE`].
pub fn minimal_image(arch: &str, reader: &str) -> String {
    let (triple, loader, loader_link) = match arch {
        "amd64" => ("x86_64-linux-gnu", "ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
        "arm64" => ("aarch64-linux-gnu", "ld-linux-aarch64.so.1", "lib/ld-linux-aarch64.so.1"),
        other => panic!("no minimal image for {other:?}"),
    };
    let busybox = debian_package("busybox", arch).join("bin/busybox");
    let libc = debian_package("libc6", arch);
    let mut fs = Rootfs::busybox(busybox, &minimal_applets(reader));
    for lib in ["libc.so.6", "libresolv.so.2", loader] {
        fs.files.push((format!("lib/{triple}/{lib}"), libc.join(format!("lib/{triple}/{lib}"))));
    }
    fs.links.push((loader_link.into(), format!("/lib/{triple}/{loader}")));
    fs.image(&format!("minimal-{arch}-{reader}"))
}

/// The fleet's target host for arm64 (tests/docker/build-rootfs.sh
/// target-arm64): Debian's arm64 busybox and sshd, run through qemu-user
/// (call [`require_foreign_arch`]`("aarch64")` first). Tagged by a hash of
/// the script and the Debian packages it is made of.
pub fn arm64_sshd_image() -> String {
    require_docker();
    let script_path = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/build-rootfs.sh");
    let script = fs::read(script_path).unwrap();
    let sshd = fs::read(debian_package("sshd", "arm64").join(".unpacked")).unwrap();
    let busybox = fs::read(debian_package("busybox-static", "arm64").join(".unpacked")).unwrap();
    let tag = format!("spore-test-target-arm64:{}", hash_hex(&[&script, &sshd, &busybox]));
    let lock = fs::OpenOptions::new().create(true).append(true).open("/tmp/spore-test-images.lock").unwrap();
    // SAFETY: flock on an fd we own; released when `lock` closes.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) }, 0);
    if image_exists(&tag) {
        return tag;
    }
    let dir = crate::target_dir().join("spore-images/target-arm64");
    let out = Command::new("sh").arg(script_path).arg("target-arm64").arg(&dir).output().unwrap();
    assert!(out.status.success(), "build-rootfs.sh target-arm64: {}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("docker").args(["build", "--no-cache", "-q", "-t", &tag]).arg(&dir).output().unwrap();
    let _ = fs::remove_dir_all(&dir);
    assert!(out.status.success(), "docker build {tag}: {}", String::from_utf8_lossy(&out.stderr));
    tag
}

/// A command that idles in any busybox image, links or not.
pub const IDLE: [&str; 3] = ["/bin/busybox", "sleep", "100000"];

/// A running container, removed on drop.
pub struct Container {
    /// Its name.
    pub name: String,
}

impl Container {
    /// `docker run -d` an image that idles.
    pub fn run(image: &str, tag: &str) -> Container {
        Container::run_cmd(image, tag, &["sleep", "100000"])
    }

    /// `docker run -d` an image with `cmd`, which should idle.
    pub fn run_cmd(image: &str, tag: &str, cmd: &[&str]) -> Container {
        let name = format!("spore-test-{tag}-{}", std::process::id());
        let _ = Command::new("docker").args(["rm", "-f", &name]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        let out = Command::new("docker")
            .args(["run", "-d", "--name", &name, "--label", "spore-test=1", image])
            .args(cmd)
            .output()
            .unwrap();
        // Removed on drop from here on, also if it did not start.
        let c = Container { name };
        assert!(out.status.success(), "docker run: {}", String::from_utf8_lossy(&out.stderr));
        c
    }

    /// `ps` inside the container: (pid, command) of every process but ps.
    pub fn processes(&self) -> Vec<String> {
        let out =
            Command::new("docker").args(["exec", &self.name, "/bin/busybox", "ps", "-o", "pid,args"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(|l| l.trim().to_string())
            .filter(|l| !l.ends_with("ps -o pid,args"))
            .collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ =
            Command::new("docker").args(["rm", "-f", &self.name]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}
