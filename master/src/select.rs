//! What the command line's target words mean.
//!
//! Each word is a comma-separated list (commas inside `[...]` belong to the
//! range); each item is one of:
//!
//! - a target path, ranges allowed: `web[01-50]`, `bastion/db1/sudo`. One
//!   that names an inventory host is that host (`web01` connects to its
//!   `ansible_host`); so is a path whose leading hops name one
//!   (`web01/sudo`).
//! - `@group`: the hosts of an inventory group; `@failed`: the targets that
//!   failed in the last run (see [`write_failed`]; it is always the record,
//!   even if the inventory has a group called `failed`).
//! - `!PATTERN`: leave out what matches; `&PATTERN`: keep only what
//!   matches (Ansible's `:!` and `:&`; commas, since `:` is in hop syntax).
//!
//! A PATTERN (here, and in `-x`) matches a target's label or path exactly,
//! through a range (`web[01-03]`), a group (`@web`, `@failed`), or a glob
//! whose `*` matches anything, `/` too (`web0*`, `*/sudo`).
//!
//! As in Ansible, the order of items does not matter for filters: the
//! targets named are gathered first (first appearance, each path once),
//! then each `&` keeps what it matches, then each `!` and `-x` leaves out
//! what it matches.

use crate::inventory::{self, Inventory};
use crate::range::{self, RangeError};
use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The most targets one command line selects.
pub const MAX_TARGETS: usize = range::MAX_TARGETS;

/// The most `*` patterns one filter expands to (each is tried on every
/// target).
const MAX_GLOBS: usize = 100;

/// The largest target list read from a file or stdin, and the largest
/// record of failed targets.
pub const MAX_LIST_BYTES: u64 = 16 << 20;

/// One target: what output calls it, and the path connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Shown in output: the inventory's name, or the path as typed.
    pub label: String,
    /// The target path to connect: `admin@10.0.0.5:2222/sudo`.
    pub path: String,
}

/// Where words like `@group` and `@failed` find their targets.
#[derive(Debug, Default)]
pub struct Sources<'a> {
    /// The inventory, if any: `@group`, and host names.
    pub inventory: Option<&'a Inventory>,
    /// The last run's failed target words ([`read_failed`]); `None` when
    /// there is no record.
    pub failed: Option<Vec<String>>,
}

/// Why a selection failed. Each names the word or group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectError {
    /// A bad host range.
    Range(RangeError),
    /// An empty item: `a,,b`, a lone `!` or `&`, an empty word.
    EmptyItem {
        /// The word.
        word: String,
    },
    /// `@group` without an inventory.
    NoInventory {
        /// The group.
        group: String,
    },
    /// `@group` that the inventory does not have.
    UnknownGroup {
        /// The group.
        group: String,
        /// The inventory's file.
        origin: String,
        /// Its groups.
        known: Vec<String>,
    },
    /// `@failed` without a record of a last run.
    NoFailedRecord,
    /// More than [`MAX_TARGETS`] targets.
    TooMany {
        /// The word that passed the limit.
        word: String,
    },
    /// A filter that makes more than 100 `*` patterns.
    TooManyGlobs {
        /// The pattern.
        pattern: String,
    },
    /// Nothing is left to run on.
    Nothing {
        /// The words, as given.
        words: Vec<String>,
        /// `@failed` was asked for and the last run had no failures.
        failed_empty: bool,
    },
    /// A target list or the record of failed targets could not be read.
    Read {
        /// The file (or "stdin").
        origin: String,
        /// Why.
        cause: String,
    },
}

impl fmt::Display for SelectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelectError::Range(e) => write!(f, "{e}"),
            SelectError::EmptyItem { word } => {
                write!(f, "empty target in {word:?} (two ',' in a row, or a '!' or '&' with nothing after it?)")
            }
            SelectError::NoInventory { group } => write!(
                f,
                "@{group}: no inventory to find the group in (give one with -i FILE or $SPORE_INVENTORY, or write {})",
                inventory::default_path().map_or("~/.config/spore/inventory".into(), |p| p.display().to_string())
            ),
            SelectError::UnknownGroup { group, origin, known } => {
                let mut list = known.iter().take(20).cloned().collect::<Vec<_>>().join(", ");
                if known.len() > 20 {
                    list.push_str(&format!(" and {} more", known.len() - 20));
                }
                write!(f, "@{group}: no such group in {origin} (it has {list})")
            }
            SelectError::NoFailedRecord => write!(
                f,
                "@failed: no record of a last run ({})",
                failed_path().map_or("no cache directory".into(), |p| p.display().to_string())
            ),
            SelectError::TooMany { word } => {
                write!(f, "{:?}: selects more than {MAX_TARGETS} targets", shown(word))
            }
            SelectError::TooManyGlobs { pattern } => {
                write!(
                    f,
                    "{:?}: a filter may make at most {MAX_GLOBS} '*' patterns (each is tried on every target)",
                    shown(pattern)
                )
            }
            SelectError::Nothing { words, failed_empty } => {
                if words.is_empty() {
                    return write!(f, "no targets given");
                }
                let words: Vec<String> = words.iter().take(10).map(|w| shown(w)).collect();
                write!(f, "no targets selected by {}", words.join(" "))?;
                if *failed_empty {
                    write!(f, " (the last run had no failed targets)")?;
                }
                Ok(())
            }
            SelectError::Read { origin, cause } => write!(f, "{origin}: {cause}"),
        }
    }
}

impl std::error::Error for SelectError {}

impl From<RangeError> for SelectError {
    fn from(e: RangeError) -> SelectError {
        SelectError::Range(e)
    }
}

/// A word cut short for a message.
fn shown(word: &str) -> String {
    if word.chars().count() <= 80 {
        return word.to_string();
    }
    let head: String = word.chars().take(80).collect();
    format!("{head}...")
}

/// Do the words or excludes name `@failed` (so the record must be read)?
/// A run that does not use it is not stopped by a damaged record.
pub fn wants_failed(words: &[String], excludes: &[String]) -> bool {
    words.iter().chain(excludes).flat_map(|w| range::split_list(w)).any(|item| {
        let item = item.trim();
        item.trim_start_matches(['!', '&']) == "@failed"
    })
}

/// The targets the words select, minus those `excludes` (`-x`, each a
/// comma-separated list of patterns) match. First appearance first, each
/// path once. An empty result is an error ([`SelectError::Nothing`]).
pub fn select(words: &[String], excludes: &[String], ctx: &Sources) -> Result<Vec<Target>, SelectError> {
    let mut picked: Vec<Target> = Vec::new();
    let mut paths: HashSet<String> = HashSet::new();
    let mut keeps: Vec<Filter> = Vec::new();
    let mut drops: Vec<Filter> = Vec::new();
    let mut counted = 0usize;
    let mut failed_empty = false;
    for word in words {
        for item in range::split_list(word) {
            let item = item.trim();
            let (kind, rest) = match item.as_bytes().first() {
                Some(b'!') => (Some(false), &item[1..]),
                Some(b'&') => (Some(true), &item[1..]),
                _ => (None, item),
            };
            if rest.is_empty() {
                return Err(SelectError::EmptyItem { word: word.clone() });
            }
            match kind {
                Some(true) => keeps.push(Filter::new(rest, ctx)?),
                Some(false) => drops.push(Filter::new(rest, ctx)?),
                None => {
                    if rest == "@failed" && ctx.failed.as_ref().is_some_and(Vec::is_empty) {
                        failed_empty = true;
                    }
                    for t in resolve(rest, ctx, MAX_TARGETS - counted)? {
                        counted += 1;
                        if paths.insert(t.path.clone()) {
                            picked.push(t);
                        }
                    }
                }
            }
        }
    }
    for list in excludes {
        for item in range::split_list(list) {
            let item = item.trim();
            if item.is_empty() {
                return Err(SelectError::EmptyItem { word: list.clone() });
            }
            drops.push(Filter::new(item, ctx)?);
        }
    }
    picked.retain(|t| keeps.iter().all(|f| f.matches(t)) && !drops.iter().any(|f| f.matches(t)));
    if picked.is_empty() {
        return Err(SelectError::Nothing { words: words.to_vec(), failed_empty });
    }
    Ok(picked)
}

/// The targets one item names, at most `room` of them.
fn resolve(item: &str, ctx: &Sources, room: usize) -> Result<Vec<Target>, SelectError> {
    let too_many = || SelectError::TooMany { word: item.to_string() };
    if let Some(group) = item.strip_prefix('@') {
        if group.is_empty() {
            return Err(SelectError::EmptyItem { word: item.to_string() });
        }
        let targets: Vec<Target> = if group == "failed" {
            // The record holds one target word a line: no ranges, no lists.
            let words = ctx.failed.as_ref().ok_or(SelectError::NoFailedRecord)?;
            words.iter().map(|w| by_name(w, ctx.inventory)).collect()
        } else {
            group_hosts(group, ctx)?.into_iter().map(|h| Target { label: h.name, path: h.target }).collect()
        };
        if targets.len() > room {
            return Err(too_many());
        }
        return Ok(targets);
    }
    let names = range::expand_limited(item, false, room).map_err(|e| match e {
        RangeError::TooMany { .. } => too_many(),
        e => SelectError::Range(e),
    })?;
    Ok(names.iter().map(|n| by_name(n, ctx.inventory)).collect())
}

/// The hosts of `@group`.
fn group_hosts(group: &str, ctx: &Sources) -> Result<Vec<inventory::Host>, SelectError> {
    let inv = ctx.inventory.ok_or_else(|| SelectError::NoInventory { group: group.to_string() })?;
    inv.group(group).ok_or_else(|| SelectError::UnknownGroup {
        group: group.to_string(),
        origin: inv.origin().to_string(),
        known: inv.groups(),
    })
}

/// A name: an inventory host (or a path whose first hop is one) is that
/// host's target; anything else is a path as it stands.
fn by_name(name: &str, inv: Option<&Inventory>) -> Target {
    let plain = || Target { label: name.to_string(), path: name.to_string() };
    let Some(inv) = inv else { return plain() };
    if let Some(h) = inv.host(name) {
        return Target { label: h.name, path: h.target };
    }
    // The longest leading hops that name a host: `bastion/web01/sudo`
    // with `bastion/web01` in the inventory is that host, then sudo.
    for (at, _) in name.rmatch_indices('/') {
        if let Some(h) = inv.host(&name[..at]) {
            return Target { label: name.to_string(), path: format!("{}{}", h.target, &name[at..]) };
        }
    }
    plain()
}

/// A compiled `!`, `&` or `-x` pattern.
struct Filter {
    /// Labels and paths matched exactly.
    names: HashSet<String>,
    /// `*` patterns, tried on labels and paths.
    globs: Vec<String>,
}

impl Filter {
    fn new(pattern: &str, ctx: &Sources) -> Result<Filter, SelectError> {
        let mut f = Filter { names: HashSet::new(), globs: Vec::new() };
        if let Some(group) = pattern.strip_prefix('@') {
            if group.is_empty() {
                return Err(SelectError::EmptyItem { word: pattern.to_string() });
            }
            if group == "failed" {
                for w in ctx.failed.as_ref().ok_or(SelectError::NoFailedRecord)? {
                    f.add(by_name(w, ctx.inventory));
                }
            } else {
                for h in group_hosts(group, ctx)? {
                    f.names.insert(h.name);
                    f.names.insert(h.target);
                }
            }
            return Ok(f);
        }
        for name in range::expand(pattern)? {
            if name.contains('*') {
                if f.globs.len() >= MAX_GLOBS {
                    return Err(SelectError::TooManyGlobs { pattern: pattern.to_string() });
                }
                f.globs.push(name);
            } else {
                f.add(by_name(&name, ctx.inventory));
            }
        }
        Ok(f)
    }

    fn add(&mut self, t: Target) {
        self.names.insert(t.label);
        self.names.insert(t.path);
    }

    fn matches(&self, t: &Target) -> bool {
        self.names.contains(&t.label)
            || self.names.contains(&t.path)
            || self.globs.iter().any(|g| glob(g, &t.label) || glob(g, &t.path))
    }
}

/// Does `text` match `pattern`, where `*` is any run of characters? One
/// pass with a single backtrack point: time is at most their lengths'
/// product, never exponential. Bytes, not characters: for UTF-8 text the
/// answer is the same (a literal can only match at a character's start).
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The words of a target list (a file, stdin, the record of failures):
/// one a line, surrounding spaces trimmed, blank lines and `#` comments
/// (whole lines, or after a space) skipped.
pub fn read_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = match line.find('#') {
                Some(0) => "",
                Some(at) if line[..at].ends_with(char::is_whitespace) => &line[..at],
                _ => line,
            };
            let line = line.trim();
            (!line.is_empty()).then(|| line.to_string())
        })
        .collect()
}

/// [`read_list`] from a reader (stdin, a file), at most
/// [`MAX_LIST_BYTES`]; errors name `origin`.
pub fn read_list_from(reader: impl Read, origin: &str) -> Result<Vec<String>, SelectError> {
    let err = |cause: String| SelectError::Read { origin: origin.to_string(), cause };
    let mut bytes = Vec::new();
    reader.take(MAX_LIST_BYTES + 1).read_to_end(&mut bytes).map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > MAX_LIST_BYTES {
        return Err(err(format!("a target list larger than {} MiB", MAX_LIST_BYTES >> 20)));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        err(format!("line {}: not UTF-8 text", 1 + good.iter().filter(|&&b| b == b'\n').count()))
    })?;
    Ok(read_list(&text))
}

/// Where the last run's failed targets are kept:
/// `$XDG_CACHE_HOME/spore-cli/failed`, else `~/.cache/spore-cli/failed`:
/// in the user's cache directory but not in `spore/`, the agents' cache,
/// whose every entry the bootstrap checks as an agent.
pub fn failed_path() -> Option<PathBuf> {
    inventory::config_dir("XDG_CACHE_HOME", ".cache").map(|d| d.join("spore-cli").join("failed"))
}

/// The last run's failed target words, from [`failed_path`]; `None` when
/// no run has left a record.
pub fn read_failed() -> Result<Option<Vec<String>>, SelectError> {
    match failed_path() {
        Some(path) => read_failed_at(&path),
        None => Ok(None),
    }
}

/// [`read_failed`] from a given file.
pub fn read_failed_at(path: &Path) -> Result<Option<Vec<String>>, SelectError> {
    match std::fs::File::open(path) {
        Ok(file) => read_list_from(file, &path.display().to_string()).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SelectError::Read { origin: path.display().to_string(), cause: e.to_string() }),
    }
}

/// Record the failed targets of this run (an empty list too: then
/// `@failed` selects nothing), at [`failed_path`]. Write their labels:
/// like Ansible's retry files, the record names inventory hosts by name,
/// and [`select`] resolves them again (other targets' labels are their
/// paths).
pub fn write_failed(targets: &[String]) -> io::Result<()> {
    let path = failed_path().ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "no cache directory for the failed targets ($HOME is not set)")
    })?;
    write_failed_at(&path, targets)
}

/// [`write_failed`] to a given file. Atomic: a temporary file in the same
/// directory, flushed, then renamed over the record; the directory is made
/// 0700, the file 0600 (target names say where the user's machines are).
/// Each target is a word [`select`] reads back (a label or a path), one a
/// line: one that would not read back the same (empty, with a line break
/// or a control character, spaces at an end, a `#` at the start) is
/// refused.
pub fn write_failed_at(path: &Path, targets: &[String]) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let mut text = String::from("# The targets that failed in the last spore run: `spore ... @failed`.\n");
    for t in targets {
        if t.is_empty() || t.starts_with('#') || t.contains(char::is_control) || t.trim() != t {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("target {t:?} can't be recorded as a line of {}", path.display()),
            ));
        }
        text.push_str(t);
        text.push('\n');
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let name = path.file_name().map_or("failed".into(), |n| n.to_string_lossy().into_owned());
    // A name of this write's own: a session writes the record for runs
    // that end at the same moment, all of one pid.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    // A temporary file left by a crashed run of the same pid is stale.
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn inv() -> Inventory {
        let text = "\
lonely
[web]
web[01:04]
[db]
db1 ansible_host=10.0.0.5 ansible_user=admin
db2 ansible_port=2222
[edge]
bastion/app[1:2]
[prod:children]
web
db
";
        Inventory::parse_ini(text, "inv.ini").unwrap_or_else(|e| panic!("{e}"))
    }

    fn sel(words: &[&str], x: &[&str], ctx: &Sources) -> Result<Vec<Target>, SelectError> {
        select(&w(words), &w(x), ctx)
    }

    fn labels(r: Result<Vec<Target>, SelectError>) -> Vec<String> {
        r.unwrap_or_else(|e| panic!("{e}")).into_iter().map(|t| t.label).collect()
    }

    fn paths(r: Result<Vec<Target>, SelectError>) -> Vec<String> {
        r.unwrap_or_else(|e| panic!("{e}")).into_iter().map(|t| t.path).collect()
    }

    #[test]
    fn plain_words_and_ranges() {
        let none = Sources::default();
        assert_eq!(labels(sel(&["web[01-03]"], &[], &none)), ["web01", "web02", "web03"]);
        assert_eq!(labels(sel(&["a,b", "c"], &[], &none)), ["a", "b", "c"]);
        assert_eq!(labels(sel(&["db[1,3],x"], &[], &none)), ["db1", "db3", "x"]);
        assert_eq!(labels(sel(&[" a , b "], &[], &none)), ["a", "b"]);
        // First appearance, each path once.
        assert_eq!(labels(sel(&["b,a", "a,b[1-2]", "b"], &[], &none)), ["b", "a", "b1", "b2"]);
        let many = sel(&["bastion/web[01-50]/sudo:postgres"], &[], &none).unwrap_or_default();
        assert_eq!(many.len(), 50);
        assert_eq!(many[49].path, "bastion/web50/sudo:postgres");
        assert_eq!(labels(sel(&["me@[::1]:22"], &[], &none)), ["me@[::1]:22"]);
    }

    #[test]
    fn inventory_names_resolve() {
        let inv = inv();
        let ctx = Sources { inventory: Some(&inv), failed: None };
        let got = sel(&["db1", "db2/sudo", "other"], &[], &ctx).unwrap_or_default();
        assert_eq!(
            got,
            [
                Target { label: "db1".into(), path: "admin@10.0.0.5".into() },
                Target { label: "db2/sudo".into(), path: "db2:2222/sudo".into() },
                Target { label: "other".into(), path: "other".into() },
            ]
        );
        assert_eq!(paths(sel(&["@db"], &[], &ctx)), ["admin@10.0.0.5", "db2:2222"]);
        assert_eq!(labels(sel(&["@edge"], &[], &ctx)), ["bastion/app1", "bastion/app2"]);
        assert_eq!(labels(sel(&["@ungrouped"], &[], &ctx)), ["lonely"]);
        assert_eq!(labels(sel(&["@all"], &[], &ctx)).len(), 9);
        // A target typed by its address is the same path: once.
        assert_eq!(labels(sel(&["db1,admin@10.0.0.5"], &[], &ctx)), ["db1"]);
        // Leading hops naming a host: the longest that does.
        let nested =
            Inventory::parse_ini("b ansible_user=u\nb/c ansible_port=2\n", "i").unwrap_or_else(|e| panic!("{e}"));
        let ctx = Sources { inventory: Some(&nested), failed: None };
        assert_eq!(paths(sel(&["b/c/sudo", "b/d", "b", "x/b"], &[], &ctx)), ["b/c:2/sudo", "u@b/d", "u@b", "x/b"]);
    }

    #[test]
    fn exclusion_and_intersection() {
        let inv = inv();
        let ctx = Sources { inventory: Some(&inv), failed: None };
        assert_eq!(labels(sel(&["@web,!web03"], &[], &ctx)), ["web01", "web02", "web04"]);
        // Filters apply after the union, whatever their place.
        assert_eq!(labels(sel(&["!web03,@web"], &[], &ctx)), ["web01", "web02", "web04"]);
        assert_eq!(labels(sel(&["@web", "!web[01-02]"], &[], &ctx)), ["web03", "web04"]);
        assert_eq!(labels(sel(&["@web"], &["web0[1-3]"], &ctx)), ["web04"]);
        assert_eq!(labels(sel(&["@web"], &["web01,web02", "web04"], &ctx)), ["web03"]);
        assert_eq!(labels(sel(&["@prod"], &["@web"], &ctx)), ["db1", "db2"]);
        assert_eq!(labels(sel(&["@prod,&@web"], &[], &ctx)), ["web01", "web02", "web03", "web04"]);
        assert_eq!(labels(sel(&["@all,&@prod,&web0*,!web02"], &[], &ctx)), ["web01", "web03", "web04"]);
        assert_eq!(labels(sel(&["@all"], &["*app*", "@web"], &ctx)), ["lonely", "db1", "db2"]);
        // A filter matches the path too: db1 is admin@10.0.0.5.
        assert_eq!(labels(sel(&["@db"], &["admin@*"], &ctx)), ["db2"]);
        assert_eq!(labels(sel(&["@db"], &["admin@10.0.0.5"], &ctx)), ["db2"]);
        assert_eq!(labels(sel(&["db1,10.0.0.9"], &["db1"], &ctx)), ["10.0.0.9"]);
        // A filter naming a host excludes it under its address too.
        assert_eq!(labels(sel(&["admin@10.0.0.5,x"], &["db1"], &ctx)), ["x"]);
        // Globs span hops.
        assert_eq!(labels(sel(&["a/b/c,a/d"], &["a/*/c"], &Sources::default())), ["a/d"]);
        assert_eq!(labels(sel(&["a/b/c,a/d"], &["*/c"], &Sources::default())), ["a/d"]);
    }

    #[test]
    fn failed_targets() {
        let inv = inv();
        let ctx = Sources { inventory: Some(&inv), failed: Some(w(&["db1", "x,y", "web[01]"])) };
        // Record lines are one word each: no lists, no ranges.
        assert_eq!(
            sel(&["@failed"], &[], &ctx).unwrap_or_default(),
            [
                Target { label: "db1".into(), path: "admin@10.0.0.5".into() },
                Target { label: "x,y".into(), path: "x,y".into() },
                Target { label: "web[01]".into(), path: "web[01]".into() },
            ]
        );
        assert_eq!(labels(sel(&["@web"], &["@failed"], &ctx)), ["web01", "web02", "web03", "web04"]);
        assert_eq!(labels(sel(&["@db,!@failed"], &[], &ctx)), ["db2"]);
        let none = Sources { inventory: Some(&inv), failed: None };
        assert_eq!(sel(&["@failed"], &[], &none), Err(SelectError::NoFailedRecord));
        assert!(sel(&["@failed"], &[], &none).unwrap_err().to_string().starts_with("@failed: no record of a last run"));
        let empty = Sources { inventory: Some(&inv), failed: Some(vec![]) };
        let e = sel(&["@failed"], &[], &empty).unwrap_err();
        assert_eq!(e.to_string(), "no targets selected by @failed (the last run had no failed targets)");
        assert_eq!(labels(sel(&["@failed,web01"], &[], &empty)), ["web01"]);
    }

    #[test]
    fn errors_name_the_word() {
        let inv = inv();
        let ctx = Sources { inventory: Some(&inv), failed: None };
        let none = Sources::default();
        let e = |words: &[&str], x: &[&str], ctx: &Sources| sel(words, x, ctx).unwrap_err().to_string();
        assert!(e(&["@nope"], &[], &ctx).starts_with("@nope: no such group in inv.ini (it has all, ungrouped, web, db"));
        assert!(e(&["@web"], &[], &none).starts_with("@web: no inventory to find the group in"));
        assert!(e(&["web"], &["@nope"], &ctx).starts_with("@nope: no such group"));
        assert!(e(&["a,,b"], &[], &none).starts_with("empty target in \"a,,b\""));
        assert!(e(&["a,!"], &[], &none).starts_with("empty target"));
        assert!(e(&["&"], &[], &none).starts_with("empty target"));
        assert!(e(&[""], &[], &none).starts_with("empty target"));
        assert!(e(&["a"], &[""], &none).starts_with("empty target"));
        assert!(e(&["web[1-3"], &[], &none).starts_with("host range \"web[1-3\": unbalanced"));
        assert!(e(&["a"], &["x[3-1]"], &none).starts_with("host range \"x[3-1]\""));
        assert_eq!(e(&[], &[], &none), "no targets given");
        assert_eq!(e(&["a,b"], &["*"], &none), "no targets selected by a,b");
        assert_eq!(e(&["!a"], &[], &none), "no targets selected by !a");
    }

    #[test]
    fn hostile_selections() {
        let none = Sources::default();
        // The limit is on all words together, checked before expanding.
        assert_eq!(
            sel(&["a[1-60000]", "b[1-60000]"], &[], &none),
            Err(SelectError::TooMany { word: "b[1-60000]".into() })
        );
        assert!(matches!(sel(&["a[0-999999999999999999]"], &[], &none), Err(SelectError::TooMany { .. })));
        assert_eq!(sel(&["a[1-100000]"], &[], &none).map(|v| v.len()), Ok(MAX_TARGETS));
        // Many '*' patterns from one range are refused.
        assert!(matches!(sel(&["a"], &["x[1-101]*"], &none), Err(SelectError::TooManyGlobs { .. })));
        assert_eq!(labels(sel(&["x1a,x2b,y3,x101"], &["x[1-100]*"], &none)), ["y3"]);
        assert!(matches!(sel(&["@"], &[], &none), Err(SelectError::EmptyItem { .. })));
        assert!(matches!(sel(&["a"], &["@"], &none), Err(SelectError::EmptyItem { .. })));
        // A glob made to backtrack ends at once.
        let long = "a".repeat(5000);
        let started = std::time::Instant::now();
        assert!(!glob(&format!("{}b", "*a".repeat(200)), &long));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Odd UTF-8 passes through; a 1 MiB word's error stays short.
        assert_eq!(labels(sel(&["ü[1-2]/日本"], &[], &none)), ["ü1/日本", "ü2/日本"]);
        let huge = format!("{}[", "x".repeat(1 << 20));
        assert!(sel(&[&huge], &[], &none).unwrap_err().to_string().len() < 200);
    }

    #[test]
    fn knows_when_failed_is_wanted() {
        assert!(wants_failed(&w(&["a,@failed"]), &[]));
        assert!(wants_failed(&w(&["a", "!@failed"]), &[]));
        assert!(wants_failed(&w(&["@web,&@failed"]), &[]));
        assert!(wants_failed(&w(&["a"]), &w(&["x, @failed"])));
        assert!(!wants_failed(&w(&["@failed2", "failed", "@failedx,b"]), &w(&["@web"])));
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("*", "", true),
            ("*", "abc", true),
            ("a*", "abc", true),
            ("*c", "abc", true),
            ("a*c", "abc", true),
            ("a*c", "ab", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXcYb", false),
            ("web0*", "web01", true),
            ("web0*", "db01", false),
            ("ü*", "üx", true),
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("**", "x", true),
        ] {
            assert_eq!(glob(p, t), want, "{p} {t}");
        }
    }

    #[test]
    fn target_lists() {
        assert_eq!(read_list("a\n\n# c\n  b  \nc # note\nd#e\n\t\n"), ["a", "b", "c", "d#e"]);
        assert_eq!(read_list(""), Vec::<String>::new());
        assert_eq!(read_list("a\r\nb\r\n"), ["a", "b"]);
        assert_eq!(read_list_from(&b"x\ny\n"[..], "stdin"), Ok(w(&["x", "y"])));
        // An endless line (1 GiB and on) is refused at the bound.
        let e = read_list_from(io::repeat(b'a'), "stdin").unwrap_err();
        assert_eq!(e.to_string(), "stdin: a target list larger than 16 MiB");
        let e = read_list_from(&b"a\nb\xff\n"[..], "list.txt").unwrap_err();
        assert_eq!(e.to_string(), "list.txt: line 2: not UTF-8 text");
    }
}
