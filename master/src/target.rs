//! Opening the targets of a command line: targets sharing a prefix share
//! its connection (`bastion/web1 bastion/web2` opens `bastion` once).

use crate::context::Context;
use crate::error::{Error, Result};
use crate::hop::{self, Hop};
use crate::router::Router;
use std::collections::HashMap;

type Opened = std::result::Result<Context, (String, String)>;

/// The contexts opened for a set of targets, each prefix opened once.
pub struct Targets {
    router: Router,
    /// `ssh -F` for first hops.
    pub first_hop_config: Option<String>,
    /// `ssh -o` options for first hops.
    pub first_hop_options: Vec<String>,
    /// Each opened prefix: its context, or (the hop that failed, why).
    open: HashMap<String, Opened>,
}

impl Targets {
    /// Nothing opened yet.
    pub fn new(router: Router) -> Targets {
        Targets { router, first_hop_config: None, first_hop_options: Vec::new(), open: HashMap::new() }
    }

    /// Open every target, sharing prefixes; hops at the same depth connect
    /// in parallel. Returns one result per target, in order.
    pub fn open_all(&mut self, targets: &[String]) -> Vec<Result<Context>> {
        let mut parsed = Vec::new();
        for t in targets {
            parsed.push(hop::parse(t).map(|hops| (t.clone(), hops)));
        }
        let depth = parsed.iter().flatten().map(|(_, h)| h.len()).max().unwrap_or(0);
        for level in 1..=depth {
            let mut wanted: Vec<(String, Option<String>, Hop)> = Vec::new();
            for (t, hops) in parsed.iter().flatten() {
                if hops.len() < level {
                    continue;
                }
                let parts: Vec<&str> = t.split('/').collect();
                let path = parts[..level].join("/");
                let parent = (level > 1).then(|| parts[..level - 1].join("/"));
                if !self.open.contains_key(&path) && !wanted.iter().any(|(p, _, _)| p == &path) {
                    let mut hop = hops[level - 1].clone();
                    if let (1, Hop::Ssh(ssh)) = (level, &mut hop) {
                        // -F and -o on the command line are for the first hop.
                        ssh.config = self.first_hop_config.clone();
                        ssh.options = self.first_hop_options.clone();
                    }
                    wanted.push((path, parent, hop));
                }
            }
            let results: Vec<(String, Opened)> = std::thread::scope(|s| {
                let handles: Vec<_> = wanted
                    .iter()
                    .map(|(path, parent, hop)| {
                        let parent_ctx = parent.as_ref().map(|p| self.open.get(p).cloned());
                        let router = self.router.clone();
                        s.spawn(move || {
                            let r = match parent_ctx {
                                None => router.connect(hop, path),
                                Some(Some(Ok(ctx))) => ctx.connect_hop(hop, path),
                                Some(Some(Err(e))) => Err(Error::Connect { target: e.0, cause: e.1 }),
                                Some(None) => Err(Error::Usage("parent hop was not opened".into())),
                            };
                            let r = r.map_err(|e| match e {
                                Error::Connect { target, cause } => (target, cause),
                                other => (path.clone(), other.to_string()),
                            });
                            (path.clone(), r)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| (String::new(), Err((String::new(), "connect thread panicked".into()))))
                    })
                    .collect()
            });
            for (path, r) in results {
                self.open.insert(path, r);
            }
        }
        parsed
            .into_iter()
            .map(|p| {
                let (t, _) = p?;
                match self.open.get(&t) {
                    Some(Ok(ctx)) => Ok(ctx.clone()),
                    Some(Err((hop, cause))) => Err(Error::Connect { target: hop.clone(), cause: cause.clone() }),
                    None => Err(Error::Usage(format!("target {t:?} was not opened"))),
                }
            })
            .collect()
    }
}
