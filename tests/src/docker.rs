//! Containers for the tests, from images built here (nothing can be
//! pulled): `FROM scratch` plus Debian's static busybox. Images are tagged
//! by a hash of their inputs, so a second run reuses them; containers are
//! removed on drop, also when a test fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test harness")]

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

/// A running container, removed on drop.
pub struct Container {
    /// Its name.
    pub name: String,
}

impl Container {
    /// `docker run -d` an image that idles.
    pub fn run(image: &str, tag: &str) -> Container {
        let name = format!("spore-test-{tag}-{}", std::process::id());
        let _ = Command::new("docker").args(["rm", "-f", &name]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        let out = Command::new("docker")
            .args(["run", "-d", "--name", &name, "--label", "spore-test=1", image, "sleep", "100000"])
            .output()
            .unwrap();
        assert!(out.status.success(), "docker run: {}", String::from_utf8_lossy(&out.stderr));
        Container { name }
    }

    /// `ps` inside the container: (pid, command) of every process but ps.
    pub fn processes(&self) -> Vec<String> {
        let out = Command::new("docker").args(["exec", &self.name, "ps", "-o", "pid,args"]).output().unwrap();
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
