//! The bootstrap script's own errors, each named (issue 12, points 4 and
//! 5): a machine spore has no agent for, and a host without a tool the
//! install needs. The script runs under `sh -c` here with a `PATH` of
//! chosen tools, through the same handshake ssh uses, offering every
//! architecture the master embeds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore_agent::bootstrap::{offered, script, AgentArgs};
use spore_agent::handshake::connect;
use spore_agent::spawn::Command;
use spore_protocol::body::ConnectArgs;
use spore_tests::{LeakGuard, Scratch};
use std::time::Duration;

/// Run the bootstrap (as if over ssh) with `PATH=bin`, `HOME` and
/// `XDG_RUNTIME_DIR` fresh; the handshake's error.
fn bootstrap_error(scratch: &Scratch, bin: &str) -> String {
    let images = spore::image::default_images().unwrap();
    let how = ConnectArgs { op: "connect".into(), method: "ssh".into(), ..Default::default() };
    let args = AgentArgs::parse(["--id=1", "--parents=0", "--name=errors"]).unwrap();
    let home = scratch.path("home");
    std::fs::create_dir_all(&home).unwrap();
    // The agent's Command only adds variables: env(1) takes one away.
    let mut cmd = Command::new("/usr/bin/env");
    cmd.args(["-u", "XDG_RUNTIME_DIR", "/bin/sh", "-c"]).arg(script(&offered(&images, "ssh"), &args));
    cmd.envs([("PATH", bin), ("HOME", &home)]);
    match connect(cmd, &how, &images, &args, Duration::from_secs(20)) {
        Ok(_) => panic!("the bootstrap succeeded"),
        Err(e) => e.to_string(),
    }
}

/// A directory of links to these host tools, and `extra` scripts.
fn tools(scratch: &Scratch, name: &str, tools: &[&str], extra: &[(&str, &str)]) -> String {
    let bin = scratch.path(name);
    std::fs::create_dir_all(&bin).unwrap();
    for tool in tools {
        let found = std::process::Command::new("/bin/sh").args(["-c", &format!("command -v {tool}")]).output().unwrap();
        let at = String::from_utf8(found.stdout).unwrap();
        std::os::unix::fs::symlink(at.trim(), format!("{bin}/{tool}")).unwrap();
    }
    for (tool, text) in extra {
        let path = format!("{bin}/{tool}");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    bin
}

#[test]
fn a_machine_spore_has_no_agent_for_is_named_with_the_ones_it_has() {
    let guard = LeakGuard::new();
    let scratch = Scratch::new("unsupported");
    let bin =
        tools(&scratch, "bin", &["ls", "mkdir", "chmod", "mv", "rm", "head"], &[("uname", "#!/bin/sh\necho mips64\n")]);
    let error = bootstrap_error(&scratch, &bin);
    let have = spore::image::default_images().unwrap().arch_list();
    assert!(error.starts_with("unsupported architecture"), "{error}");
    assert!(error.contains(&format!("spore: unsupported architecture mips64: spore has {have}")), "{error}");
    guard.check();
}

#[test]
fn a_missing_tool_is_named() {
    let guard = LeakGuard::new();
    let scratch = Scratch::new("missing");
    for (name, have, missing) in [
        ("no-mkdir", &["ls", "chmod", "mv", "rm", "head", "uname"][..], "this host has no mkdir"),
        ("no-head-or-dd", &["ls", "mkdir", "chmod", "mv", "rm", "uname"][..], "this host has neither head nor dd"),
    ] {
        let bin = tools(&scratch, name, have, &[]);
        let error = bootstrap_error(&scratch, &bin);
        assert!(error.starts_with("the host lacks a tool the bootstrap needs"), "{name}: {error}");
        assert!(error.contains(missing), "{name}: {error}");
    }
    guard.check();
}
