//! A target on the command line is a path of hops separated by `/`
//! (`local`, `local/local`, `bastion/db1/sudo:postgres`): parsing them.

use crate::error::{Error, Result};
use spore_protocol::body::ConnectArgs;

/// One hop of a target path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hop {
    /// An agent started as a local child process: `local`.
    Local,
    /// ssh through the system OpenSSH client: `host`, `user@host`,
    /// `user@host:2222`, `user@[::1]:2222`.
    Ssh(SshHop),
    /// Become another user: `sudo`, `sudo:USER`, `su:USER`, `doas:USER`.
    Become {
        /// `sudo`, `su` or `doas`.
        method: &'static str,
        /// The user (default root).
        user: Option<String>,
    },
    /// A container on the current host: `docker:NAME`, `podman:NAME`.
    Container {
        /// `docker` or `podman`.
        engine: &'static str,
        /// Container name or id.
        name: String,
    },
}

/// An ssh hop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SshHop {
    /// Host name or alias (as `~/.ssh/config` knows it).
    pub host: String,
    /// Login name.
    pub user: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// `ssh -F FILE` for this hop.
    pub config: Option<String>,
    /// `ssh -o OPTION` for this hop, in order.
    pub options: Vec<String>,
}

impl Hop {
    /// Parse one hop.
    pub fn parse(s: &str) -> Result<Hop> {
        let bad = |why: &str| Error::Usage(format!("hop {s:?}: {why}"));
        if s.is_empty() {
            return Err(Error::Usage("empty hop in target (two '/' in a row?)".into()));
        }
        let (word, arg) = match s.split_once(':') {
            Some((w, a)) => (w, Some(a)),
            None => (s, None),
        };
        let nonempty = |a: Option<&str>| a.filter(|a| !a.is_empty()).map(String::from);
        match word {
            "local" if arg.is_none() => return Ok(Hop::Local),
            "sudo" | "su" | "doas" => {
                let method = match word {
                    "sudo" => "sudo",
                    "su" => "su",
                    _ => "doas",
                };
                return Ok(Hop::Become { method, user: nonempty(arg) });
            }
            "docker" | "podman" => {
                let engine = if word == "docker" { "docker" } else { "podman" };
                let name = nonempty(arg).ok_or_else(|| bad("name the container: docker:NAME"))?;
                return Ok(Hop::Container { engine, name });
            }
            _ => {}
        }
        let (user, rest) = match s.rsplit_once('@') {
            Some((u, r)) if !u.is_empty() => (Some(u.to_string()), r),
            Some(_) => return Err(bad("empty user before '@'")),
            None => (None, s),
        };
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (h, after) = inner.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            (h, after.strip_prefix(':'))
        } else if rest.matches(':').count() == 1 {
            let (h, p) = rest.split_once(':').unwrap_or((rest, ""));
            (h, Some(p))
        } else {
            (rest, None)
        };
        // What ssh would refuse (or take for an option), refused here, before
        // it runs: host names and aliases are letters, digits, '.', '-', '_'
        // (and ':' and '%' inside an IPv6 address).
        let host_char = |c: char| c.is_ascii_alphanumeric() || "._-:%".contains(c);
        if host.is_empty() || host.starts_with('-') || !host.chars().all(host_char) {
            return Err(bad("not a host name ssh would accept (letters, digits, '.', '-', '_')"));
        }
        if let Some(u) = &user {
            if u.starts_with('-')
                || u.chars().any(|c| c.is_whitespace() || c.is_control() || "'\"\\`$;&|<>".contains(c))
            {
                return Err(bad("not a user name ssh would accept"));
            }
        }
        let port = match port {
            Some(p) => Some(p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| bad("bad port"))?),
            None => None,
        };
        Ok(Hop::Ssh(SshHop { host: host.to_string(), user, port, ..SshHop::default() }))
    }

    /// The `connect` arguments for this hop (id and name filled in later).
    pub fn connect_args(&self, password: Option<&str>) -> ConnectArgs {
        let mut a = ConnectArgs { op: "connect".into(), ..ConnectArgs::default() };
        match self {
            Hop::Local => a.method = "local".into(),
            Hop::Ssh(h) => {
                a.method = "ssh".into();
                a.host = Some(h.host.clone());
                a.user = h.user.clone();
                a.port = h.port;
                a.ssh_config = h.config.clone();
                a.ssh_options = h.options.clone();
            }
            Hop::Become { method, user } => {
                a.method = (*method).into();
                a.user = user.clone();
                // sudo reads it from its stdin; su and doas from a pty.
                a.password = password.map(String::from);
            }
            Hop::Container { engine, name } => {
                a.method = (*engine).into();
                a.host = Some(name.clone());
            }
        }
        a
    }
}

/// Parse a whole target path into hops.
pub fn parse(target: &str) -> Result<Vec<Hop>> {
    target.split('/').map(Hop::parse).collect::<Result<Vec<_>>>().map_err(|e| match e {
        Error::Usage(m) => Error::Usage(format!("target {target:?}: {m}")),
        other => other,
    })
}

/// An opened prefix: its context, or (the hop that failed, why).
#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(host: &str, user: Option<&str>, port: Option<u16>) -> Hop {
        Hop::Ssh(SshHop { host: host.into(), user: user.map(String::from), port, ..SshHop::default() })
    }

    #[test]
    fn parses_hops() {
        assert_eq!(parse("local").unwrap(), vec![Hop::Local]);
        assert_eq!(parse("local/local/local").unwrap().len(), 3);
        assert!(parse("local//local").is_err());
        assert_eq!(Hop::parse("db1").unwrap(), ssh("db1", None, None));
        assert_eq!(Hop::parse("me@db1:2222").unwrap(), ssh("db1", Some("me"), Some(2222)));
        assert_eq!(Hop::parse("me@[::1]:22").unwrap(), ssh("::1", Some("me"), Some(22)));
        assert_eq!(Hop::parse("fe80::1").unwrap(), ssh("fe80::1", None, None));
        assert_eq!(Hop::parse("sudo").unwrap(), Hop::Become { method: "sudo", user: None });
        assert_eq!(Hop::parse("sudo:postgres").unwrap(), Hop::Become { method: "sudo", user: Some("postgres".into()) });
        assert_eq!(Hop::parse("doas:www").unwrap(), Hop::Become { method: "doas", user: Some("www".into()) });
        assert_eq!(Hop::parse("docker:web1").unwrap(), Hop::Container { engine: "docker", name: "web1".into() });
        assert!(Hop::parse("docker:").is_err());
        assert!(Hop::parse("db1:99999").is_err());
        assert!(Hop::parse("-oProxyCommand=x").is_err());
        assert!(Hop::parse("@db1").is_err());
        // What ssh would refuse is refused before it runs.
        for refused in ["db 1", "db1;reboot", "db$(id)", "db\u{1b}1", "-lroot@db1", "me me@db1", "db'1"] {
            let e = Hop::parse(refused).unwrap_err().to_string();
            assert!(e.contains("ssh would accept"), "{refused}: {e}");
        }
        assert_eq!(Hop::parse("web_01.example-site.org").unwrap(), ssh("web_01.example-site.org", None, None));
        assert_eq!(Hop::parse("fe80::1%eth0").unwrap(), ssh("fe80::1%eth0", None, None));
        let hops = parse("bastion/db1/sudo:postgres").unwrap();
        assert_eq!(hops.len(), 3);
    }

    #[test]
    fn only_become_hops_carry_the_password() {
        for hop in ["sudo:x", "su:x", "doas"] {
            assert_eq!(Hop::parse(hop).unwrap().connect_args(Some("pw")).password.as_deref(), Some("pw"));
        }
        assert_eq!(Hop::parse("db1").unwrap().connect_args(Some("pw")).password, None);
        assert_eq!(Hop::parse("docker:c").unwrap().connect_args(Some("pw")).password, None);
    }
}
