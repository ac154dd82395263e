//! Targets on the command line: a path of hops separated by `/`
//! (`local`, `local/local`). Targets sharing a prefix share its connection.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::router::Router;
use std::collections::HashMap;

/// One hop of a target path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hop {
    /// An agent started as a local child process.
    Local,
}

impl Hop {
    /// Parse one hop.
    pub fn parse(s: &str) -> Result<Hop> {
        match s {
            "local" => Ok(Hop::Local),
            "" => Err(Error::Usage("empty hop in target (two '/' in a row?)".into())),
            other => Err(Error::Usage(format!(
                "unsupported hop {other:?}: this version of spore connects to `local` only (ssh comes next)"
            ))),
        }
    }

    /// The connection method name.
    pub fn method(&self) -> &'static str {
        match self {
            Hop::Local => "local",
        }
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
type Opened = std::result::Result<Context, (String, String)>;

/// The contexts opened for a set of targets, each prefix opened once.
pub struct Targets {
    router: Router,
    /// Each opened prefix: its context, or (the hop that failed, why).
    open: HashMap<String, Opened>,
}

impl Targets {
    /// Nothing opened yet.
    pub fn new(router: Router) -> Targets {
        Targets { router, open: HashMap::new() }
    }

    /// Open every target, sharing prefixes; hops at the same depth connect
    /// in parallel. Returns one result per target, in order.
    pub fn open_all(&mut self, targets: &[String]) -> Vec<Result<Context>> {
        let mut parsed = Vec::new();
        for t in targets {
            parsed.push(parse(t).map(|hops| (t.clone(), hops)));
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
                    wanted.push((path, parent, hops[level - 1].clone()));
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
                                None => match hop {
                                    Hop::Local => router.local(),
                                },
                                Some(Some(Ok(ctx))) => ctx.connect(hop.method()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_local_paths() {
        assert_eq!(parse("local").unwrap(), vec![Hop::Local]);
        assert_eq!(parse("local/local/local").unwrap().len(), 3);
        assert!(parse("local//local").is_err());
        assert!(parse("db1").unwrap_err().to_string().contains("db1"));
    }
}
