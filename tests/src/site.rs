//! Where a test's contexts live: local child processes, or ssh to a
//! loopback sshd of the test's own. Tests that must hold for both take a
//! [`Site`] and run twice.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test harness")]

use crate::sshd::Sshd;

/// For each `name` (a `fn name(site: Site, [arg])`), a module `name` with
/// two tests, `local` and `ssh`, that call it on each [`Site`].
#[macro_export]
macro_rules! local_and_ssh {
    ($($name:ident $(($arg:expr))?),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn local() {
                    super::$name($crate::site::Site::local() $(, $arg)?);
                }
                #[test]
                fn ssh() {
                    super::$name($crate::site::Site::ssh() $(, $arg)?);
                }
            }
        )*
    };
}
use spore::{Context, Hop, Router, SshHop};

/// Local agents, or agents behind a loopback sshd.
pub struct Site {
    sshd: Option<Sshd>,
    /// Agent cache on the "remote" side (ssh only).
    pub xdg: String,
}

impl Site {
    /// Agents as local child processes: `local/local/...`.
    pub fn local() -> Site {
        Site { sshd: None, xdg: String::new() }
    }

    /// Agents over ssh to a fresh sshd on 127.0.0.1: `spore-test/spore-test/...`.
    pub fn ssh() -> Site {
        let sshd = Sshd::start();
        let xdg = sshd.dir.join("xdg").display().to_string();
        Site { sshd: Some(sshd), xdg }
    }

    /// Is this the ssh site?
    pub fn is_ssh(&self) -> bool {
        self.sshd.is_some()
    }

    /// The sshd, for the ssh site.
    pub fn sshd(&self) -> &Sshd {
        self.sshd.as_ref().expect("an ssh site")
    }

    /// The hop text used in context names.
    pub fn label(&self) -> &'static str {
        if self.is_ssh() {
            "spore-test"
        } else {
            "local"
        }
    }

    /// The hop to the next context (as root, with this test's cache).
    pub fn hop(&self) -> Hop {
        self.hop_as(None, &[])
    }

    /// An ssh hop as `user` with extra `-o` options (local: `local`).
    pub fn hop_as(&self, user: Option<&str>, extra: &[&str]) -> Hop {
        let Some(sshd) = &self.sshd else { return Hop::Local };
        let mut options: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        options.push(format!("SetEnv=XDG_RUNTIME_DIR={}", self.xdg));
        Hop::Ssh(SshHop {
            host: "spore-test".into(),
            user: user.map(String::from),
            port: None,
            config: Some(sshd.config_str()),
            options,
        })
    }

    /// A chain of `depth` contexts, each started by the one before.
    pub fn chain(&self, r: &Router, depth: usize) -> Vec<Context> {
        let mut out: Vec<Context> = Vec::new();
        for i in 0..depth {
            let name = vec![self.label(); i + 1].join("/");
            let ctx = match out.last() {
                None => r.connect(&self.hop(), &name).unwrap(),
                Some(parent) => parent.connect_hop(&self.hop(), &name).unwrap(),
            };
            out.push(ctx);
        }
        out
    }

    /// A tree `width` wide and `depth` deep (siblings connect in parallel);
    /// every context, parents before children.
    pub fn tree(&self, r: &Router, width: usize, depth: usize) -> Vec<Context> {
        let mut all: Vec<Context> = Vec::new();
        let mut level: Vec<Option<Context>> = vec![None];
        for _ in 0..depth {
            let next: Vec<Option<Context>> = std::thread::scope(|s| {
                let handles: Vec<_> = level
                    .iter()
                    .flat_map(|parent| (0..width).map(move |i| (parent.clone(), i)))
                    .map(|(parent, i)| {
                        s.spawn(move || {
                            let name = match &parent {
                                None => format!("{}#{i}", self.label()),
                                Some(p) => format!("{}/{}#{i}", p.name(), self.label()),
                            };
                            let ctx = match &parent {
                                None => r.connect(&self.hop(), &name),
                                Some(p) => p.connect_hop(&self.hop(), &name),
                            };
                            Some(ctx.unwrap_or_else(|e| panic!("{name}: {e}")))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            all.extend(next.iter().flatten().cloned());
            level = next;
        }
        all
    }

    /// Stop the sshd (before the leak check).
    pub fn stop(&mut self) {
        if let Some(sshd) = self.sshd.as_mut() {
            sshd.stop();
        }
    }
}
