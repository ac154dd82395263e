//! The docker connection method, at the first hop and behind another
//! agent, into a container that has nothing but busybox.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore::{Command, Hop, Router};
use spore_tests::docker::{busybox_image, Container};
use spore_tests::LeakGuard;
use std::time::{Duration, Instant};

#[test]
fn docker_exec_at_the_first_hop_and_behind_an_agent() {
    let guard = LeakGuard::new();
    let image = busybox_image();
    let c = Container::run(&image, "docker");
    let r = Router::new().unwrap();
    let hop = Hop::parse(&format!("docker:{}", c.name)).unwrap();
    let direct = r.connect(&hop, &format!("docker:{}", c.name)).unwrap();
    assert!(direct.uploaded());
    let out = direct
        .exec(&Command::new(["sh", "-c", "readlink /bin/sh; test -e /usr/bin/python3 || echo no-python"]))
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/bin/busybox\nno-python\n");
    let behind = r.local().unwrap().connect(&format!("docker:{}", c.name)).unwrap();
    assert!(!behind.uploaded(), "the container's cache was filled by the first connect");
    assert_eq!(behind.info().unwrap().uid, 0);
    let data = spore_tests::pattern(1 << 20, 9);
    behind.write_file("/spore-test-file", &mut &data[..], None).unwrap();
    let mut back = Vec::new();
    direct.read_file("/spore-test-file", &mut back).unwrap();
    assert!(back == data);
    r.shutdown();
    drop((direct, behind, r));
    // Nothing of spore is left running in the container.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = c.processes();
        if left.iter().all(|p| p.ends_with("sleep 100000")) {
            break;
        }
        assert!(Instant::now() < deadline, "left in the container: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let err =
        Router::new().unwrap().connect(&Hop::parse("docker:spore-no-such-container").unwrap(), "docker:x").unwrap_err();
    assert!(err.to_string().contains("no such running container"), "{err}");
    drop(c);
    guard.check();
}
