//! Inventories: named groups of targets, read from the Ansible INI and YAML
//! formats operators already keep.
//!
//! spore's own format is the plain subset of the INI one:
//!
//! ```ini
//! # hosts before any header are in no group (Ansible's "ungrouped")
//! bastion
//! [web]
//! web[01:50]                      # ranges, with ':' or '-'
//! bastion/app[1-3]/sudo:deploy    # any target path
//! [db]
//! db1 ansible_host=10.0.0.5 ansible_port=2222 ansible_user=admin
//! [prod:children]
//! web
//! db
//! ```
//!
//! Of Ansible's variables spore uses `ansible_host`, `ansible_port` and
//! `ansible_user` (and the old `ansible_ssh_host`, `_port`, `_user`): they
//! rewrite the last hop of a host's path into `user@host:port`; and
//! `ansible_connection` (`ssh`, `local`, `docker`, `podman`), so that
//! `localhost ansible_connection=local` is the `local` hop, not an ssh
//! login. They count on a host line and in `[group:vars]` / YAML `vars:`,
//! merged as Ansible does (`all`, then groups from shallow to deep, by
//! name at one depth, then the host's own); group settings skip hosts
//! whose last hop is not ssh (`bastion/db1/sudo:pg`). Jinja templates are
//! refused, not evaluated. Every other variable is ignored with a note
//! ([`Inventory::notes`], for `-v`). A host's name (its label in output)
//! stays the name in the file.
//!
//! Groups are Ansible's: `all` holds every host, `ungrouped` those in no
//! other group, and a group holds its children's hosts, recursively; a
//! cycle of children is an error. Files are bounded ([`MAX_FILE_BYTES`],
//! [`MAX_HOSTS`]) and every error names the file and the line.

use crate::range;
use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest inventory file read.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// The longest INI line: no real one comes near it.
const MAX_LINE_BYTES: usize = 64 << 10;

/// The most hosts one inventory may name.
pub const MAX_HOSTS: usize = 100_000;

/// The most (group, host) listings: a range repeated on every line of a
/// large file would otherwise make billions.
const MAX_ENTRIES: usize = 1_000_000;

/// The deepest nesting of YAML read (children in children ...).
const MAX_YAML_DEPTH: usize = 64;

/// The most YAML nodes built, and visited (aliases can repeat a node).
const MAX_YAML_NODES: usize = 2_000_000;

/// The variables spore uses; all others are ignored with a note.
const CONN_VARS: [&str; 7] = [
    "ansible_host",
    "ansible_ssh_host",
    "ansible_port",
    "ansible_ssh_port",
    "ansible_user",
    "ansible_ssh_user",
    "ansible_connection",
];

/// Notes kept; past this they are counted.
const MAX_NOTES: usize = 1000;

/// A host of an inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Its name in the inventory: the label output shows.
    pub name: String,
    /// The target path to connect: `admin@10.0.0.5:2222`, `bastion/web01`.
    pub target: String,
}

/// Why an inventory could not be read. Each names the file (and the line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryError {
    /// The file could not be read.
    Read {
        /// The file.
        origin: String,
        /// Why.
        cause: String,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    TooLarge {
        /// The file.
        origin: String,
    },
    /// The file is not UTF-8.
    NotUtf8 {
        /// The file.
        origin: String,
        /// The first line with a byte that is not.
        line: usize,
    },
    /// A line says something that is not an inventory.
    Syntax {
        /// The file.
        origin: String,
        /// The line (1-based).
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// Groups that are children of each other.
    Cycle {
        /// The file.
        origin: String,
        /// Where the loop's last link is written.
        line: usize,
        /// The groups around the loop, the first one again at the end.
        cycle: Vec<String>,
    },
    /// More hosts, or listings of hosts, than allowed.
    TooMany {
        /// The file.
        origin: String,
        /// Where the limit was passed (0: the file as a whole).
        line: usize,
        /// What there are too many of.
        what: &'static str,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InventoryError::Read { origin, cause } => write!(f, "inventory {origin}: {cause}"),
            InventoryError::TooLarge { origin } => {
                write!(f, "inventory {origin}: larger than {} MiB", MAX_FILE_BYTES >> 20)
            }
            InventoryError::NotUtf8 { origin, line } => write!(f, "{origin}:{line}: not UTF-8 text"),
            InventoryError::Syntax { origin, line, what } => write!(f, "{origin}:{line}: {what}"),
            InventoryError::Cycle { origin, line, cycle } => {
                // A loop of thousands of groups is shown by its ends.
                let shown = if cycle.len() > 12 {
                    let (head, tail) = (&cycle[..6], &cycle[cycle.len() - 6..]);
                    format!("{} -> ({} more) -> {}", head.join(" -> "), cycle.len() - 12, tail.join(" -> "))
                } else {
                    cycle.join(" -> ")
                };
                write!(f, "{origin}:{line}: groups are children of each other: {shown}")
            }
            InventoryError::TooMany { origin, line: 0, what, max } => write!(f, "{origin}: more than {max} {what}"),
            InventoryError::TooMany { origin, line, what, max } => {
                write!(f, "{origin}:{line}: more than {max} {what}")
            }
        }
    }
}

impl std::error::Error for InventoryError {}

/// How to reach a host: from `ansible_host`, `ansible_port`, `ansible_user`
/// (or a `host:port` name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Conn {
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    via: Option<Via>,
}

/// How a host is reached (`ansible_connection`), among the hops spore has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Ssh,
    Local,
    /// `docker` or `podman`; the container is `ansible_host` or the name.
    Container(&'static str),
}

impl Conn {
    /// Later settings win, as when Ansible merges a host's variables.
    fn merge(&mut self, later: &Conn) {
        if later.host.is_some() {
            self.host.clone_from(&later.host);
        }
        if later.port.is_some() {
            self.port = later.port;
        }
        if later.user.is_some() {
            self.user.clone_from(&later.user);
        }
        if later.via.is_some() {
            self.via = later.via;
        }
    }
}

#[derive(Debug, Clone)]
struct HostEntry {
    name: String,
    conn: Conn,
}

#[derive(Debug, Clone)]
struct Group {
    name: String,
    /// From `[name:vars]` or YAML `vars:`.
    conn: Conn,
    hosts: Vec<usize>,
    /// Child groups, each with the line that says so.
    children: Vec<(usize, usize)>,
}

/// An inventory: hosts (in file order) and groups of them.
#[derive(Debug, Clone)]
pub struct Inventory {
    origin: String,
    hosts: Vec<Host>,
    host_index: HashMap<String, usize>,
    /// Hosts listed in some group other than `all` and `ungrouped`.
    grouped: Vec<bool>,
    groups: Vec<Group>,
    group_index: HashMap<String, usize>,
    notes: Vec<String>,
}

/// `$XDG_CONFIG_HOME/spore/inventory`, else `~/.config/spore/inventory`,
/// whether or not it exists (the caller reads it only if it does; the CLI
/// checks `$SPORE_INVENTORY` first). `None` without a usable `$HOME`.
pub fn default_path() -> Option<PathBuf> {
    config_dir("XDG_CONFIG_HOME", ".config").map(|d| d.join("spore").join("inventory"))
}

/// `$VAR` if it is an absolute path (the XDG rule: relative ones are
/// ignored), else `$HOME/fallback`.
pub(crate) fn config_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(var).map(PathBuf::from) {
        if dir.is_absolute() {
            return Some(dir);
        }
    }
    let home = PathBuf::from(std::env::var_os("HOME")?);
    home.is_absolute().then(|| home.join(fallback))
}

/// Read a file of at most `max` bytes as UTF-8; errors name it.
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<String, InventoryError> {
    let origin = path.display().to_string();
    let read_err = |e: std::io::Error| InventoryError::Read { origin: origin.clone(), cause: e.to_string() };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > max {
        return Err(InventoryError::TooLarge { origin });
    }
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        InventoryError::NotUtf8 { origin: origin.clone(), line: 1 + good.iter().filter(|&&b| b == b'\n').count() }
    })
}

impl Inventory {
    /// Read an inventory file: YAML when its name ends in `.yml` or `.yaml`
    /// or its first line that says something is `---` or a `key:`, INI
    /// otherwise.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let text = read_bounded(path, MAX_FILE_BYTES)?;
        let origin = path.display().to_string();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "yml" || ext == "yaml" || (ext != "ini" && looks_like_yaml(&text)) {
            Inventory::parse_yaml(&text, &origin)
        } else {
            Inventory::parse_ini(&text, &origin)
        }
    }

    /// Hosts of a group and of its children, recursively, each once, in
    /// the order the file first names them. `all` is every host,
    /// `ungrouped` those in no other group. `None` for an unknown group.
    pub fn group(&self, name: &str) -> Option<Vec<Host>> {
        let picked: Vec<bool> = match name {
            "all" => vec![true; self.hosts.len()],
            "ungrouped" => self.grouped.iter().map(|g| !g).collect(),
            _ => {
                let &g = self.group_index.get(name)?;
                let mut p = vec![false; self.hosts.len()];
                self.mark(g, &mut p);
                p
            }
        };
        Some(self.hosts.iter().zip(picked).filter(|(_, p)| *p).map(|(h, _)| h.clone()).collect())
    }

    /// Mark the hosts of group `g` and its descendants (no recursion: a
    /// deep chain of groups must not overflow the stack).
    fn mark(&self, g: usize, picked: &mut [bool]) {
        let mut seen = vec![false; self.groups.len()];
        let mut todo = vec![g];
        while let Some(g) = todo.pop() {
            if std::mem::replace(&mut seen[g], true) {
                continue;
            }
            for &h in &self.groups[g].hosts {
                picked[h] = true;
            }
            todo.extend(self.groups[g].children.iter().map(|&(c, _)| c));
        }
    }

    /// The groups' names: `all`, `ungrouped`, then the file's in the order
    /// it first names them.
    pub fn groups(&self) -> Vec<String> {
        let mut names = vec!["all".to_string(), "ungrouped".to_string()];
        names.extend(self.groups.iter().map(|g| g.name.clone()).filter(|n| n != "all" && n != "ungrouped"));
        names
    }

    /// A host the inventory names.
    pub fn host(&self, name: &str) -> Option<Host> {
        self.host_index.get(name).map(|&i| self.hosts[i].clone())
    }

    /// Every host, in file order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// What was read but not used (variables, `vars` sections), one line
    /// each, `file:line: ...`: for `-v`.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The file it was read from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Read Ansible's INI format (and spore's, its plain subset).
    pub fn parse_ini(text: &str, origin: &str) -> Result<Inventory, InventoryError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut b = Builder::new(origin);
        // Where host lines go: None = no group (before any header, [all]).
        let mut section = Section::Hosts(None);
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if raw.len() > MAX_LINE_BYTES {
                return Err(b.syntax(line, format!("a line longer than {MAX_LINE_BYTES} bytes")));
            }
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
                continue;
            }
            if trimmed.starts_with('[') {
                section = b.header(trimmed, line)?;
                continue;
            }
            let group = match &section {
                Section::Vars(of, name) => {
                    // Ansible's `key=value` or `key = value`, one a line,
                    // the value as it stands (a quote in an unused one is
                    // no error).
                    let Some((key, value)) = trimmed.split_once('=') else {
                        return Err(b.syntax(line, format!("[{name}:vars]: expected key=value")));
                    };
                    let value = value.trim();
                    let unquoted = ['"', '\'']
                        .iter()
                        .find_map(|&q| value.strip_prefix(q).and_then(|v| v.strip_suffix(q)))
                        .unwrap_or(value);
                    b.group_var(*of, &format!("[{name}:vars]"), key.trim(), unquoted, line)?;
                    continue;
                }
                Section::Children(parent) => {
                    let words = shell_words(trimmed).map_err(|what| b.syntax(line, what))?;
                    if let [_, extra, ..] = words.as_slice() {
                        return Err(b.syntax(line, format!("{extra:?}: a [group:children] line names one group")));
                    }
                    let Some(first) = words.first() else { continue };
                    let child = b.group(first, line)?;
                    if let Some(parent) = parent {
                        b.child(*parent, child, line)?;
                    }
                    continue;
                }
                Section::Hosts(group) => *group,
            };
            let words = shell_words(trimmed).map_err(|what| b.syntax(line, what))?;
            let Some((first, rest)) = words.split_first() else { continue };
            let mut conn = Conn::default();
            let mut ignored = Vec::new();
            for word in rest {
                let Some((key, value)) = word.split_once('=') else {
                    return Err(b.syntax(
                        line,
                        format!("{word:?} after the host: expected key=value (a host line is `HOST [key=value ...]`)"),
                    ));
                };
                if !b.set_var(&mut conn, key, value, line)? {
                    ignored.push(key);
                }
            }
            if !ignored.is_empty() {
                b.note(line, format!("{first}: ignored variables {}", ignored.join(", ")));
            }
            b.add_hosts(group, first, &conn, line)?;
        }
        b.finish()
    }

    /// Read Ansible's YAML format: `all: {hosts: {NAME: {VARS}}, children:
    /// {GROUP: {...}}, vars: ...}`, any group at the top.
    pub fn parse_yaml(text: &str, origin: &str) -> Result<Inventory, InventoryError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let tree = yaml::Tree::parse(text, origin)?;
        let mut b = Builder::new(origin);
        let mut walk = YamlWalk { tree: &tree, b: &mut b, visited: 0 };
        if let Some(root) = tree.root {
            walk.top(root)?;
        }
        b.finish()
    }
}

/// Does the text read as YAML? Its first line that says something is
/// `---`, `{` (JSON), or `word:` with nothing or a space after the colon.
fn looks_like_yaml(text: &str) -> bool {
    let Some(first) = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
    else {
        return false;
    };
    first.starts_with("---") || first.starts_with('{') || first.ends_with(':') || first.contains(": ")
}

/// What an INI section holds.
enum Section {
    Hosts(Option<usize>),
    Children(Option<usize>),
    Vars(VarsOf, String),
}

/// Split a host line like a shell (what Ansible does): whitespace between
/// words, '...' and "..." quote, `\` escapes outside single quotes, `#` at
/// the start of a word begins a comment.
fn shell_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '#' if word.is_none() => break,
            '\'' | '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        None => return Err(format!("unclosed {c} quote")),
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => w.extend(chars.next()),
                        Some(other) => w.push(other),
                    }
                }
            }
            '\\' => {
                let w = word.get_or_insert_with(String::new);
                w.extend(chars.next());
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// The hops that are not ssh: ansible_* variables make no sense on them.
fn is_ssh_hop(hop: &str) -> bool {
    let word = hop.split_once(':').map_or(hop, |(w, _)| w);
    !matches!(word, "local" | "sudo" | "su" | "doas" | "docker" | "podman")
}

/// An ssh hop cut into `(user, host, port)`: `me@[::1]:22`, `web01:2222`.
fn split_ssh_hop(hop: &str) -> (Option<&str>, &str, Option<&str>) {
    let (user, rest) = match hop.rsplit_once('@') {
        Some((u, r)) => (Some(u), r),
        None => (None, hop),
    };
    if let Some(inner) = rest.strip_prefix('[') {
        if let Some((host, after)) = inner.split_once(']') {
            return (user, host, after.strip_prefix(':'));
        }
    }
    match rest.split_once(':') {
        Some((h, p)) if !p.contains(':') => (user, h, Some(p)),
        _ => (user, rest, None),
    }
}

/// Collects hosts and groups while a file is read.
struct Builder {
    origin: String,
    hosts: Vec<HostEntry>,
    host_index: HashMap<String, usize>,
    grouped: Vec<bool>,
    groups: Vec<Group>,
    group_index: HashMap<String, usize>,
    entries: usize,
    /// `[all:vars]` and `[ungrouped:vars]`.
    all_conn: Conn,
    ungrouped_conn: Conn,
    notes: Vec<String>,
    notes_dropped: usize,
}

/// Whose variables a `vars` section sets.
#[derive(Debug, Clone, Copy)]
enum VarsOf {
    All,
    Ungrouped,
    Group(usize),
}

impl Builder {
    fn new(origin: &str) -> Builder {
        Builder {
            origin: origin.to_string(),
            hosts: Vec::new(),
            host_index: HashMap::new(),
            grouped: Vec::new(),
            groups: Vec::new(),
            group_index: HashMap::new(),
            entries: 0,
            all_conn: Conn::default(),
            ungrouped_conn: Conn::default(),
            notes: Vec::new(),
            notes_dropped: 0,
        }
    }

    fn syntax(&self, line: usize, what: impl Into<String>) -> InventoryError {
        InventoryError::Syntax { origin: self.origin.clone(), line, what: cut(what.into()) }
    }

    fn note(&mut self, line: usize, what: String) {
        if self.notes.len() < MAX_NOTES {
            self.notes.push(format!("{}:{line}: {}", self.origin, cut(what)));
        } else {
            self.notes_dropped += 1;
        }
    }

    /// An INI `[name]`, `[name:children]` or `[name:vars]` line.
    fn header(&mut self, text: &str, line: usize) -> Result<Section, InventoryError> {
        let bad = || {
            format!("{text:?} is not a group header: write [NAME], [NAME:children] or [NAME:vars] (a host line can't start with '[')")
        };
        let inner = text.strip_prefix('[').and_then(|t| {
            let (head, comment) = t.split_once(']')?;
            let comment = comment.trim();
            (comment.is_empty() || comment.starts_with('#') || comment.starts_with(';')).then_some(head)
        });
        let inner = inner.ok_or_else(|| self.syntax(line, bad()))?;
        let (name, kind) = match inner.split_once(':') {
            Some((n, k)) => (n, Some(k)),
            None => (inner, None),
        };
        let implicit = name == "all" || name == "ungrouped";
        match kind {
            None if implicit => Ok(Section::Hosts(None)),
            None => Ok(Section::Hosts(Some(self.group(name, line)?))),
            Some("children") if implicit => {
                if name == "ungrouped" {
                    return Err(self.syntax(line, "[ungrouped:children]: ungrouped can't have child groups"));
                }
                // Every group is in all already.
                Ok(Section::Children(None))
            }
            Some("children") => Ok(Section::Children(Some(self.group(name, line)?))),
            Some("vars") => {
                let of = self.vars_of(name, line)?;
                Ok(Section::Vars(of, name.to_string()))
            }
            Some(other) => {
                Err(self.syntax(line, format!("[{name}:{other}]: unknown section kind {other:?} ({})", bad())))
            }
        }
    }

    /// The group of this name, made if new.
    fn group(&mut self, name: &str, line: usize) -> Result<usize, InventoryError> {
        if let Some(&g) = self.group_index.get(name) {
            return Ok(g);
        }
        check_group_name(name).map_err(|w| self.syntax(line, w))?;
        if name == "all" || name == "ungrouped" {
            return Err(self.syntax(line, format!("{name} is made by the inventory itself: it can't be a child group")));
        }
        self.groups.push(Group {
            name: name.to_string(),
            conn: Conn::default(),
            hosts: Vec::new(),
            children: Vec::new(),
        });
        self.group_index.insert(name.to_string(), self.groups.len() - 1);
        Ok(self.groups.len() - 1)
    }

    fn child(&mut self, parent: usize, child: usize, line: usize) -> Result<(), InventoryError> {
        if !self.groups[parent].children.iter().any(|&(c, _)| c == child) {
            self.count_entry(line)?;
            self.groups[parent].children.push((child, line));
        }
        Ok(())
    }

    fn count_entry(&mut self, line: usize) -> Result<(), InventoryError> {
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(InventoryError::TooMany {
                origin: self.origin.clone(),
                line,
                what: "listings of hosts and groups",
                max: MAX_ENTRIES,
            });
        }
        Ok(())
    }

    /// Whose variables `name`'s vars set (the group is made if new).
    fn vars_of(&mut self, name: &str, line: usize) -> Result<VarsOf, InventoryError> {
        Ok(match name {
            "all" => VarsOf::All,
            "ungrouped" => VarsOf::Ungrouped,
            _ => VarsOf::Group(self.group(name, line)?),
        })
    }

    fn vars_conn(&mut self, of: VarsOf) -> &mut Conn {
        match of {
            VarsOf::All => &mut self.all_conn,
            VarsOf::Ungrouped => &mut self.ungrouped_conn,
            VarsOf::Group(g) => &mut self.groups[g].conn,
        }
    }

    /// One variable of a group (`whose` names it in a note).
    fn group_var(
        &mut self,
        of: VarsOf,
        whose: &str,
        key: &str,
        value: &str,
        line: usize,
    ) -> Result<(), InventoryError> {
        let mut conn = std::mem::take(self.vars_conn(of));
        let used = self.set_var(&mut conn, key, value, line);
        *self.vars_conn(of) = conn;
        if !used? {
            self.note(
                line,
                format!("{whose} {key} ignored (spore uses only ansible_host, _port, _user and _connection)"),
            );
        }
        Ok(())
    }

    /// Apply one `key=value`: true if it was used, false if ignored.
    fn set_var(&self, conn: &mut Conn, key: &str, value: &str, line: usize) -> Result<bool, InventoryError> {
        if CONN_VARS.contains(&key) && (value.contains("{{") || value.contains("{%")) {
            return Err(self.syntax(line, format!("{key}={value:?}: a Jinja template, which spore does not evaluate")));
        }
        match key {
            "ansible_host" | "ansible_ssh_host" => {
                // '/' would add hops, '@' a user, whitespace an ssh option:
                // the value must be one host.
                if value.is_empty() || value.contains(['/', '@', '[', ']']) || value.contains(char::is_whitespace) {
                    return Err(self.syntax(line, format!("{key}={value:?}: not a host name or address")));
                }
                conn.host = Some(value.to_string());
            }
            "ansible_port" | "ansible_ssh_port" => {
                let port = value.parse::<u16>().ok().filter(|&p| p > 0);
                conn.port =
                    Some(port.ok_or_else(|| self.syntax(line, format!("{key}={value:?}: not a port (1-65535)")))?);
            }
            "ansible_user" | "ansible_ssh_user" => {
                if value.is_empty() || value.contains(['/', '@', ':']) || value.contains(char::is_whitespace) {
                    return Err(self.syntax(line, format!("{key}={value:?}: not a user name")));
                }
                conn.user = Some(value.to_string());
            }
            "ansible_connection" => {
                conn.via = Some(match value {
                    "ssh" | "smart" | "paramiko" | "ansible.builtin.ssh" | "ansible.builtin.paramiko_ssh" => Via::Ssh,
                    "local" | "ansible.builtin.local" => Via::Local,
                    "docker" | "community.docker.docker" | "community.docker.docker_api" => Via::Container("docker"),
                    "podman" | "containers.podman.podman" => Via::Container("podman"),
                    _ => {
                        return Err(self.syntax(
                            line,
                            format!("{key}={value:?}: spore reaches hosts by ssh, local, docker or podman"),
                        ))
                    }
                });
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// A host pattern (`web[01:50]`, `bastion/db1:2222`) and its settings,
    /// in `group` (None: no group).
    fn add_hosts(
        &mut self,
        group: Option<usize>,
        pattern: &str,
        conn: &Conn,
        line: usize,
    ) -> Result<(), InventoryError> {
        let room = MAX_HOSTS + 1 - self.hosts.len().min(MAX_HOSTS);
        let names = range::expand_limited(pattern, true, room).map_err(|e| match e {
            range::RangeError::TooMany { .. } => {
                InventoryError::TooMany { origin: self.origin.clone(), line, what: "hosts", max: MAX_HOSTS }
            }
            e => self.syntax(line, e.to_string()),
        })?;
        for written in names {
            let (name, port) = self.split_port(&written, line)?;
            let mut conn_here = Conn { port, ..Conn::default() };
            conn_here.merge(conn);
            let h = match self.host_index.get(&name) {
                Some(&h) => h,
                None => {
                    if self.hosts.len() >= MAX_HOSTS {
                        return Err(InventoryError::TooMany {
                            origin: self.origin.clone(),
                            line,
                            what: "hosts",
                            max: MAX_HOSTS,
                        });
                    }
                    self.check_path(&name, line)?;
                    self.hosts.push(HostEntry { name: name.clone(), conn: Conn::default() });
                    self.grouped.push(false);
                    self.host_index.insert(name, self.hosts.len() - 1);
                    self.hosts.len() - 1
                }
            };
            self.hosts[h].conn.merge(&conn_here);
            if conn_here != Conn::default() && !is_ssh_hop(last_hop(&self.hosts[h].name)) {
                return Err(self.syntax(
                    line,
                    format!(
                        "{}: ansible_host, ansible_port and ansible_user apply to an ssh hop, and the last hop is {:?}",
                        self.hosts[h].name,
                        last_hop(&self.hosts[h].name)
                    ),
                ));
            }
            if let Some(g) = group {
                self.count_entry(line)?;
                self.groups[g].hosts.push(h);
                self.grouped[h] = true;
            }
        }
        Ok(())
    }

    /// A host name is a target path: no empty hops, no whitespace (a
    /// path with spaces could never be typed back on a command line).
    fn check_path(&self, name: &str, line: usize) -> Result<(), InventoryError> {
        if name.is_empty() || name.split('/').any(str::is_empty) {
            return Err(self.syntax(line, format!("host {name:?}: empty hop (two '/' in a row, or one at an end?)")));
        }
        // Invisible and direction-changing characters would make a label
        // print as another one.
        if name.contains(|c: char| matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')) {
            return Err(self.syntax(line, format!("host {name:?}: invisible or direction-changing characters")));
        }
        // What would read as something else on a command line: a list
        // (','), a glob ('*'), a group, a filter or a comment.
        if name.contains(|c: char| c.is_whitespace() || c.is_control() || c == ',' || c == '*')
            || name.starts_with(['@', '!', '&', '#'])
        {
            return Err(self.syntax(
                line,
                format!("host {name:?}: a target can't hold spaces, control characters, ',' or '*', nor start with '@', '!', '&' or '#'"),
            ));
        }
        Ok(())
    }

    /// Ansible's `host:port`: the name is the host, the port a setting.
    fn split_port(&self, written: &str, line: usize) -> Result<(String, Option<u16>), InventoryError> {
        let last = last_hop(written);
        if !is_ssh_hop(last) {
            return Ok((written.to_string(), None));
        }
        let (_, _, port) = split_ssh_hop(last);
        let Some(port) = port else { return Ok((written.to_string(), None)) };
        let n = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| self.syntax(line, format!("host {written:?}: {port:?} is not a port (1-65535)")))?;
        let name = &written[..written.len() - port.len() - 1];
        Ok((name.to_string(), Some(n)))
    }

    /// Every group's children are checked for loops; hosts get targets.
    fn finish(self) -> Result<Inventory, InventoryError> {
        self.check_cycles()?;
        let conns = self.effective_conns()?;
        let mut hosts = Vec::with_capacity(self.hosts.len());
        for (h, conn) in self.hosts.iter().zip(&conns) {
            hosts.push(Host { name: h.name.clone(), target: target_of(&h.name, conn) });
        }
        let mut notes = self.notes;
        if self.notes_dropped > 0 {
            notes.push(format!("{}: {} more notes not shown", self.origin, self.notes_dropped));
        }
        Ok(Inventory {
            origin: self.origin,
            hosts,
            host_index: self.host_index,
            grouped: self.grouped,
            groups: self.groups,
            group_index: self.group_index,
            notes,
        })
    }

    /// Each host's settings as Ansible merges them: `all`, then `ungrouped`
    /// or the groups it is in (its own and their parents, shallow before
    /// deep, by name at the same depth), then the host's own. Group
    /// settings skip hosts whose last hop is not ssh (`.../sudo:pg`).
    fn effective_conns(&self) -> Result<Vec<Conn>, InventoryError> {
        let own = |h: &HostEntry| h.conn.clone();
        let with_vars: Vec<usize> =
            (0..self.groups.len()).filter(|&g| self.groups[g].conn != Conn::default()).collect();
        if with_vars.is_empty() && self.all_conn == Conn::default() && self.ungrouped_conn == Conn::default() {
            return Ok(self.hosts.iter().map(own).collect());
        }
        let too_many = || InventoryError::TooMany {
            origin: self.origin.clone(),
            line: 0,
            what: "group variables inherited",
            max: MAX_ENTRIES,
        };
        // Depth: the longest chain of parents above a group (Kahn's order;
        // there are no cycles by now).
        let n = self.groups.len();
        let mut parents = vec![0usize; n];
        for g in &self.groups {
            for &(c, _) in &g.children {
                parents[c] += 1;
            }
        }
        let mut depth = vec![1usize; n];
        let mut ready: Vec<usize> = (0..n).filter(|&g| parents[g] == 0).collect();
        while let Some(g) = ready.pop() {
            for &(c, _) in &self.groups[g].children {
                depth[c] = depth[c].max(depth[g] + 1);
                parents[c] -= 1;
                if parents[c] == 0 {
                    ready.push(c);
                }
            }
        }
        // For each group, the groups with settings that it is in.
        let mut inherit: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut stamp = vec![usize::MAX; n];
        let mut work = 0usize;
        for &v in &with_vars {
            let mut todo = vec![v];
            while let Some(g) = todo.pop() {
                if stamp[g] == v {
                    continue;
                }
                stamp[g] = v;
                inherit[g].push(v);
                work += 1;
                if work > MAX_ENTRIES {
                    return Err(too_many());
                }
                todo.extend(self.groups[g].children.iter().map(|&(c, _)| c));
            }
        }
        let mut direct: Vec<Vec<usize>> = vec![Vec::new(); self.hosts.len()];
        for (g, group) in self.groups.iter().enumerate() {
            for &h in &group.hosts {
                direct[h].push(g);
            }
        }
        let mut out = Vec::with_capacity(self.hosts.len());
        for (h, host) in self.hosts.iter().enumerate() {
            if !is_ssh_hop(last_hop(&host.name)) {
                out.push(own(host));
                continue;
            }
            let mut conn = self.all_conn.clone();
            if !self.grouped[h] {
                conn.merge(&self.ungrouped_conn);
            }
            let mut from: Vec<usize> = direct[h].iter().flat_map(|&g| inherit[g].iter().copied()).collect();
            work += from.len();
            if work > MAX_ENTRIES * 4 {
                return Err(too_many());
            }
            from.sort_unstable_by(|&a, &b| {
                depth[a].cmp(&depth[b]).then_with(|| self.groups[a].name.cmp(&self.groups[b].name))
            });
            from.dedup();
            for g in from {
                conn.merge(&self.groups[g].conn);
            }
            conn.merge(&host.conn);
            out.push(conn);
        }
        Ok(out)
    }

    /// A depth-first walk without recursion: White/Grey/Black colours, a
    /// Grey child is a loop.
    fn check_cycles(&self) -> Result<(), InventoryError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Colour {
            White,
            Grey,
            Black,
        }
        let mut colour = vec![Colour::White; self.groups.len()];
        for start in 0..self.groups.len() {
            if colour[start] != Colour::White {
                continue;
            }
            // (group, index of the next child to visit)
            let mut stack = vec![(start, 0usize)];
            colour[start] = Colour::Grey;
            while let Some(&mut (g, ref mut next)) = stack.last_mut() {
                let Some(&(child, line)) = self.groups[g].children.get(*next) else {
                    colour[g] = Colour::Black;
                    stack.pop();
                    continue;
                };
                *next += 1;
                match colour[child] {
                    Colour::White => {
                        colour[child] = Colour::Grey;
                        stack.push((child, 0));
                    }
                    Colour::Grey => {
                        let from = stack.iter().position(|&(s, _)| s == child).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            stack[from..].iter().map(|&(s, _)| self.groups[s].name.clone()).collect();
                        cycle.push(self.groups[child].name.clone());
                        return Err(InventoryError::Cycle { origin: self.origin.clone(), line, cycle });
                    }
                    Colour::Black => {}
                }
            }
        }
        Ok(())
    }
}

/// A message cut short: a line of a file may be megabytes long.
fn cut(mut what: String) -> String {
    const MAX: usize = 300;
    if what.len() > MAX {
        let mut end = MAX;
        while !what.is_char_boundary(end) {
            end -= 1;
        }
        what.truncate(end);
        what.push_str("...");
    }
    what
}

/// Group names: letters, digits, `_`, `-`, `.` (what `@group` can name).
fn check_group_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || "_-.".contains(c)) {
        return Err(format!("{name:?} is not a group name (letters, digits, '_', '-', '.')"));
    }
    Ok(())
}

fn last_hop(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, last)| last)
}

/// The target of a host: its path with the last hop rewritten by the
/// settings into `user@host:port`.
fn target_of(name: &str, conn: &Conn) -> String {
    if *conn == Conn::default() {
        return name.to_string();
    }
    let (head, last) = match name.rsplit_once('/') {
        Some((h, l)) => (Some(h), l),
        None => (None, name),
    };
    let (user, host, port) = split_ssh_hop(last);
    let host = conn.host.as_deref().unwrap_or(host);
    let hop = match conn.via {
        Some(Via::Local) => "local".to_string(),
        Some(Via::Container(engine)) => format!("{engine}:{host}"),
        Some(Via::Ssh) | None => ssh_hop(conn.user.as_deref().or(user), host, conn.port, port),
    };
    match head {
        Some(h) => format!("{h}/{hop}"),
        None => hop,
    }
}

/// `user@host:port`, an IPv6 host in brackets.
fn ssh_hop(user: Option<&str>, host: &str, own_port: Option<u16>, port: Option<&str>) -> String {
    let own_port = own_port.map(|p| p.to_string());
    let port = own_port.as_deref().or(port);
    let mut hop = String::new();
    if let Some(u) = user {
        hop.push_str(u);
        hop.push('@');
    }
    if host.contains(':') {
        hop.push('[');
        hop.push_str(host);
        hop.push(']');
    } else {
        hop.push_str(host);
    }
    if let Some(p) = port {
        hop.push(':');
        hop.push_str(p);
    }
    hop
}

/// Walks a YAML tree into a [`Builder`].
struct YamlWalk<'a> {
    tree: &'a yaml::Tree,
    b: &'a mut Builder,
    /// Nodes visited: aliases can make a small file visit many.
    visited: usize,
}

impl<'a> YamlWalk<'a> {
    fn syntax(&self, node: usize, what: impl Into<String>) -> InventoryError {
        self.b.syntax(self.tree.line(node), what)
    }

    /// A node, through aliases, counted against the budget.
    fn get(&mut self, node: usize) -> Result<&'a yaml::Node, InventoryError> {
        self.visited += 1;
        if self.visited > MAX_YAML_NODES {
            return Err(InventoryError::TooMany {
                origin: self.b.origin.clone(),
                line: self.tree.line(node),
                what: "YAML nodes visited (aliases?)",
                max: MAX_YAML_NODES,
            });
        }
        let tree: &'a yaml::Tree = self.tree;
        let real = tree.resolve(node).ok_or_else(|| self.syntax(node, "an alias to an unknown anchor"))?;
        Ok(&tree.nodes[real].0)
    }

    /// A scalar key or value as text.
    fn text(&mut self, node: usize, what: &str) -> Result<String, InventoryError> {
        match self.get(node)? {
            yaml::Node::Scalar(s, _) => Ok(s.clone()),
            _ => Err(self.syntax(node, format!("{what}: expected a name, found a list or mapping"))),
        }
    }

    /// The entries of a mapping, or none for an empty value.
    fn entries(&mut self, node: usize, what: &str) -> Result<Vec<(usize, usize)>, InventoryError> {
        match self.get(node)? {
            yaml::Node::Map(pairs) => Ok(pairs.clone()),
            yaml::Node::Scalar(_, true) => Ok(Vec::new()),
            yaml::Node::Scalar(s, false) => Err(self.syntax(node, format!("{what}: expected a mapping, found {s:?}"))),
            yaml::Node::Seq(_) => Err(self.syntax(
                node,
                format!(
                    "{what}: expected a mapping, found a list (write each name as a key: `web01:` on its own line)"
                ),
            )),
            yaml::Node::Alias(_) => Err(self.syntax(node, format!("{what}: an alias to an alias"))),
        }
    }

    /// A mapping of variables, YAML merge keys (`<<: *defaults`) opened:
    /// merged entries first, so the mapping's own win.
    fn vars(&mut self, node: usize, what: &str, depth: usize) -> Result<Vec<(usize, usize)>, InventoryError> {
        if depth > 8 {
            return Err(self.syntax(node, format!("{what}: merge keys ('<<') nested more than 8 deep")));
        }
        let mut merged = Vec::new();
        let mut own = Vec::new();
        for (k, v) in self.entries(node, what)? {
            let is_merge = matches!(self.get(k)?, yaml::Node::Scalar(s, _) if s == "<<");
            if !is_merge {
                own.push((k, v));
                continue;
            }
            let sources = match self.get(v)? {
                yaml::Node::Seq(items) => items.clone(),
                _ => vec![v],
            };
            for src in sources {
                merged.extend(self.vars(src, what, depth + 1)?);
            }
        }
        merged.extend(own);
        Ok(merged)
    }

    fn top(&mut self, root: usize) -> Result<(), InventoryError> {
        for (k, v) in self.entries(root, "the top level")? {
            let name = self.text(k, "a group's name")?;
            self.group(&name, k, v, None, 0)?;
        }
        Ok(())
    }

    /// A group's body; `parent` is the group whose `children:` hold it.
    /// `all` and `ungrouped` are the inventory's own: their hosts are in
    /// no group, their children are top-level groups.
    fn group(
        &mut self,
        name: &str,
        key: usize,
        body: usize,
        parent: Option<usize>,
        depth: usize,
    ) -> Result<(), InventoryError> {
        if depth > MAX_YAML_DEPTH {
            return Err(self.syntax(key, format!("group {name}: children nested more than {MAX_YAML_DEPTH} deep")));
        }
        let line = self.tree.line(key);
        let g = if name == "all" || name == "ungrouped" {
            if parent.is_some() {
                return Err(self.syntax(key, format!("{name} can't be a child group")));
            }
            None
        } else {
            Some(self.b.group(name, line)?)
        };
        if let (Some(p), Some(g)) = (parent, g) {
            self.b.child(p, g, line)?;
        }
        for (k, v) in self.entries(body, &format!("group {name}"))? {
            let key = self.text(k, &format!("a key of group {name}"))?;
            match key.as_str() {
                "hosts" => {
                    for (hk, hv) in self.entries(v, &format!("hosts of group {name}"))? {
                        self.host(g, hk, hv)?;
                    }
                }
                "children" => {
                    for (ck, cv) in self.entries(v, &format!("children of group {name}"))? {
                        let child = self.text(ck, &format!("a child group of {name}"))?;
                        self.group(&child, ck, cv, g, depth + 1)?;
                    }
                }
                "vars" => {
                    let of = self.b.vars_of(name, line)?;
                    for (vk, vv) in self.vars(v, &format!("vars of group {name}"), 0)? {
                        let var = self.text(vk, &format!("a variable of group {name}"))?;
                        let vline = self.tree.line(vk);
                        match self.get(vv)? {
                            yaml::Node::Scalar(value, _) => {
                                self.b.group_var(of, &format!("vars of group {name}:"), &var, value, vline)?;
                            }
                            _ if CONN_VARS.contains(&var.as_str()) => {
                                return Err(self.syntax(vv, format!("{var}: expected a single value")));
                            }
                            _ => self.b.note(vline, format!("vars of group {name}: {var} ignored (spore uses only ansible_host, _port, _user and _connection)")),
                        }
                    }
                }
                other => {
                    return Err(self.syntax(
                        k,
                        format!("group {name}: unexpected key {other:?} (a group holds hosts:, children: and vars:; a host goes under hosts:)"),
                    ))
                }
            }
        }
        Ok(())
    }

    fn host(&mut self, group: Option<usize>, key: usize, vars: usize) -> Result<(), InventoryError> {
        let pattern = self.text(key, "a host's name")?;
        let line = self.tree.line(key);
        let mut conn = Conn::default();
        let mut ignored = Vec::new();
        for (k, v) in self.vars(vars, &format!("variables of host {pattern}"), 0)? {
            let name = self.text(k, &format!("a variable of host {pattern}"))?;
            let value = match self.get(v)? {
                yaml::Node::Scalar(s, _) => Some(s.clone()),
                _ => None,
            };
            let used = match value {
                Some(value) => self.b.set_var(&mut conn, &name, &value, self.tree.line(k))?,
                None if CONN_VARS.contains(&name.as_str()) => {
                    return Err(self.syntax(v, format!("{name}: expected a single value")));
                }
                None => false,
            };
            if !used {
                ignored.push(name);
            }
        }
        if !ignored.is_empty() {
            self.b.note(line, format!("{pattern}: ignored variables {}", ignored.join(", ")));
        }
        self.b.add_hosts(group, &pattern, &conn, line)
    }
}

/// A YAML document as a tree of nodes with their lines, built from the
/// parser's events with bounds on depth and size (no recursion, and
/// aliases are links, never copies: a "billion laughs" file stays small).
mod yaml {
    use super::{InventoryError, MAX_YAML_DEPTH, MAX_YAML_NODES};
    use std::collections::HashMap;
    use yaml_rust2::parser::{Event, Parser};
    use yaml_rust2::scanner::TScalarStyle;

    /// One node.
    #[derive(Debug)]
    pub(super) enum Node {
        /// Text, and whether it is YAML's null (`~`, `null`, nothing).
        Scalar(String, bool),
        Seq(Vec<usize>),
        /// (key, value) pairs in order.
        Map(Vec<(usize, usize)>),
        /// A link to an anchored node: the anchor's id.
        Alias(usize),
    }

    /// The nodes, each with its line; the root, if the document has one.
    pub(super) struct Tree {
        pub(super) nodes: Vec<(Node, usize)>,
        anchors: HashMap<usize, usize>,
        pub(super) root: Option<usize>,
    }

    impl Tree {
        pub(super) fn line(&self, node: usize) -> usize {
            self.nodes.get(node).map_or(0, |n| n.1)
        }

        /// The node itself, or the node an alias names.
        pub(super) fn resolve(&self, node: usize) -> Option<usize> {
            match self.nodes.get(node)?.0 {
                Node::Alias(id) => self.anchors.get(&id).copied(),
                _ => Some(node),
            }
        }

        pub(super) fn parse(text: &str, origin: &str) -> Result<Tree, InventoryError> {
            let mut tree = Tree { nodes: Vec::new(), anchors: HashMap::new(), root: None };
            // Open collections: (node, a key waiting for its value).
            let mut open: Vec<(usize, Option<usize>)> = Vec::new();
            let mut parser = Parser::new_from_str(text);
            let syntax = |line: usize, what: String| InventoryError::Syntax { origin: origin.to_string(), line, what };
            loop {
                let (event, mark) = parser.next_token().map_err(|e| {
                    syntax(e.marker().line(), format!("YAML: {} (column {})", e.info(), e.marker().col() + 1))
                })?;
                let line = mark.line();
                let (node, anchor) = match event {
                    Event::StreamEnd => break,
                    Event::DocumentEnd if tree.root.is_some() => break,
                    Event::Scalar(value, style, anchor, _) => {
                        let null = style == TScalarStyle::Plain
                            && matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL");
                        (Node::Scalar(value, null), anchor)
                    }
                    Event::SequenceStart(anchor, _) => (Node::Seq(Vec::new()), anchor),
                    Event::MappingStart(anchor, _) => (Node::Map(Vec::new()), anchor),
                    Event::Alias(id) => (Node::Alias(id), 0),
                    Event::SequenceEnd | Event::MappingEnd => {
                        open.pop();
                        continue;
                    }
                    _ => continue,
                };
                if tree.nodes.len() >= MAX_YAML_NODES {
                    return Err(InventoryError::TooMany {
                        origin: origin.to_string(),
                        line,
                        what: "YAML nodes",
                        max: MAX_YAML_NODES,
                    });
                }
                let is_collection = matches!(node, Node::Seq(_) | Node::Map(_));
                let id = tree.nodes.len();
                tree.nodes.push((node, line));
                if anchor > 0 {
                    tree.anchors.insert(anchor, id);
                }
                match open.last_mut() {
                    None => tree.root = Some(id),
                    Some((parent, pending)) => match &mut tree.nodes[*parent].0 {
                        Node::Seq(items) => items.push(id),
                        Node::Map(pairs) => match pending.take() {
                            Some(key) => pairs.push((key, id)),
                            None => *pending = Some(id),
                        },
                        _ => {}
                    },
                }
                if is_collection {
                    if open.len() >= MAX_YAML_DEPTH * 2 {
                        return Err(syntax(line, format!("YAML nested more than {} deep", MAX_YAML_DEPTH * 2)));
                    }
                    open.push((id, None));
                }
            }
            Ok(tree)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ini(text: &str) -> Inventory {
        Inventory::parse_ini(text, "inv.ini").unwrap_or_else(|e| panic!("{e}"))
    }

    fn yml(text: &str) -> Inventory {
        Inventory::parse_yaml(text, "inv.yml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn names(hosts: Option<Vec<Host>>) -> Vec<String> {
        hosts.unwrap_or_default().into_iter().map(|h| h.name).collect()
    }

    fn targets(hosts: Option<Vec<Host>>) -> Vec<String> {
        hosts.unwrap_or_default().into_iter().map(|h| h.target).collect()
    }

    const INI: &str = "\
# a comment
; another
bastion
[web]
web[01:03]            # Ansible's colon
bastion/app[1-2]/sudo:deploy
[db]
db1 ansible_host=10.0.0.5 ansible_port=2222 ansible_user=admin
db2:2200 ansible_ssh_user='ops' foo=bar
web01
[prod:children]
web
db
[prod:vars]
ansible_user = root
color=blue
[all:children]
prod
";

    #[test]
    fn reads_ansible_ini() {
        let inv = ini(INI);
        assert_eq!(
            names(inv.group("web")),
            ["web01", "web02", "web03", "bastion/app1/sudo:deploy", "bastion/app2/sudo:deploy"]
        );
        assert_eq!(names(inv.group("db")), ["web01", "db1", "db2"]);
        // prod's ansible_user reaches web01 through db; the hosts' own win.
        assert_eq!(targets(inv.group("db")), ["root@web01", "admin@10.0.0.5:2222", "ops@db2:2200"]);
        // Children, recursively, each once, in file order.
        assert_eq!(
            names(inv.group("prod")),
            ["web01", "web02", "web03", "bastion/app1/sudo:deploy", "bastion/app2/sudo:deploy", "db1", "db2"]
        );
        assert_eq!(names(inv.group("ungrouped")), ["bastion"]);
        assert_eq!(inv.group("all").unwrap_or_default().len(), 8);
        assert_eq!(inv.group("nope"), None);
        assert_eq!(inv.groups(), ["all", "ungrouped", "web", "db", "prod"]);
        assert_eq!(inv.host("db1").map(|h| h.target).as_deref(), Some("admin@10.0.0.5:2222"));
        assert_eq!(inv.host("db2").map(|h| h.target).as_deref(), Some("ops@db2:2200"));
        assert_eq!(inv.host("db2:2200"), None);
        let notes = inv.notes().join("\n");
        assert!(notes.contains("inv.ini:9: db2:2200: ignored variables foo"), "{notes}");
        assert!(notes.contains("inv.ini:16: [prod:vars] color ignored"), "{notes}");
        assert!(!notes.contains("ansible_user"), "{notes}");
    }

    #[test]
    fn spore_format_is_plain_lines() {
        let inv = ini("web1\nweb2\n\n# done\n");
        assert_eq!(names(inv.group("all")), ["web1", "web2"]);
        assert_eq!(names(inv.group("ungrouped")), ["web1", "web2"]);
        assert_eq!(inv.groups(), ["all", "ungrouped"]);
        assert!(inv.notes().is_empty());
        let empty = ini("");
        assert_eq!(empty.group("all"), Some(vec![]));
    }

    #[test]
    fn settings_rewrite_the_last_hop() {
        let inv = ini("bastion/web[1:2] ansible_user=deploy\n\
             me@h1:22 ansible_port=23\n\
             h2 ansible_host=::1 ansible_port=2222\n\
             h3 ansible_host=fe80::1\n\
             b/me@[::1]:22 ansible_user=you\n\
             h4 ansible_host=\"10.0.0.9\"\n");
        let t = |n: &str| inv.host(n).map(|h| h.target).unwrap_or_default();
        assert_eq!(t("bastion/web1"), "bastion/deploy@web1");
        assert_eq!(t("bastion/web2"), "bastion/deploy@web2");
        assert_eq!(t("me@h1"), "me@h1:23");
        assert_eq!(t("h2"), "[::1]:2222");
        assert_eq!(t("h3"), "[fe80::1]");
        assert_eq!(t("b/me@[::1]"), "b/you@[::1]:22");
        assert_eq!(t("h4"), "10.0.0.9");
        // ansible_connection picks the hop.
        let inv = ini("localhost ansible_connection=local\n\
             c1 ansible_connection=docker\n\
             b/c2 ansible_connection=community.docker.docker ansible_host=real\n\
             p1 ansible_connection=podman\n\
             s1 ansible_connection=ssh ansible_user=u\n");
        assert_eq!(targets(inv.group("all")), ["local", "docker:c1", "b/docker:real", "podman:p1", "u@s1"]);
        // A later line's settings merge over an earlier one's.
        let inv = ini("[a]\nh ansible_user=x\n[b]\nh ansible_port=99\n");
        assert_eq!(inv.host("h").map(|h| h.target).as_deref(), Some("x@h:99"));
    }

    #[test]
    fn group_settings_merge_as_in_ansible() {
        // all, then groups shallow before deep (by name at one depth),
        // then the host's own.
        let text = "\
lonely
[all:vars]
ansible_user=everyone
ansible_port=1
[ungrouped:vars]
ansible_port=9
[a]
h1
h2 ansible_user=own
[b]
h1
b/x/sudo
[b:vars]
ansible_port=2
[a:vars]
ansible_port=3
[top:children]
a
[top:vars]
ansible_port=4
ansible_user=topuser
";
        let inv = ini(text);
        let t = |n: &str| inv.host(n).map(|h| h.target).unwrap_or_default();
        assert_eq!(t("h1"), "topuser@h1:3");
        // Other variables are not parsed, only noted: a quote in one is no error.
        let inv = ini("[a:vars]\nmotd=don't panic\nansible_user = 'me'\n[a]\nh\n");
        assert_eq!(inv.host("h").map(|h| h.target).as_deref(), Some("me@h"));
        assert!(inv.notes()[0].starts_with("inv.ini:2: [a:vars] motd ignored"), "{:?}", inv.notes());
        assert_eq!(t("h2"), "own@h2:3");
        assert_eq!(t("lonely"), "everyone@lonely:9");
        // Not on a hop that is not ssh.
        assert_eq!(t("b/x/sudo"), "b/x/sudo");
        // The same in YAML.
        let yaml = "\
all:
  vars: {ansible_user: everyone, ansible_port: 1}
  hosts: {lonely: }
  children:
    ungrouped:
      vars: {ansible_port: 9}
    b:
      hosts: {h1: , b/x/sudo: }
      vars: {ansible_port: 2}
    top:
      vars: {ansible_port: 4, ansible_user: topuser}
      children:
        a:
          hosts: {h1: , h2: {ansible_user: own}}
          vars: {ansible_port: 3}
";
        let inv = yml(yaml);
        let t = |n: &str| inv.host(n).map(|h| h.target).unwrap_or_default();
        assert_eq!(t("h1"), "topuser@h1:3");
        assert_eq!(t("h2"), "own@h2:3");
        assert_eq!(t("lonely"), "everyone@lonely:9");
        assert_eq!(t("b/x/sudo"), "b/x/sudo");
        // Bad values in vars are errors at their line.
        let e = Inventory::parse_ini("[a:vars]\nansible_port=x\n", "inv.ini").unwrap_err().to_string();
        assert!(e.starts_with("inv.ini:2: ansible_port=\"x\": not a port"), "{e}");
        let e = Inventory::parse_ini("[a:vars]\njunk\n", "inv.ini").unwrap_err().to_string();
        assert!(e.starts_with("inv.ini:2: [a:vars]: expected key=value"), "{e}");
        // Every group of a deep chain has a setting: the deepest wins.
        let chain = |n: usize| {
            let mut text = String::from("[g0]\nleaf\n");
            for g in 1..n {
                text.push_str(&format!("[g{g}:children]\ng{}\n[g{g}:vars]\nansible_port={g}\n", g - 1));
            }
            text
        };
        assert_eq!(ini(&chain(1000)).host("leaf").map(|h| h.target).as_deref(), Some("leaf:1"));
        // 5,000 deep, 12.5 million inheritances: refused, not ground through.
        let e = Inventory::parse_ini(&chain(5000), "inv.ini").unwrap_err().to_string();
        assert_eq!(e, "inv.ini: more than 1000000 group variables inherited");
    }

    #[test]
    fn ini_errors_name_file_and_line() {
        let cases: &[(&str, &str)] = &[
            ("[web\nx\n", "inv.ini:1: \"[web\" is not a group header"),
            ("[web:foo]\n", "inv.ini:1: [web:foo]: unknown section kind"),
            ("[we b]\n", "inv.ini:1: \"we b\" is not a group name"),
            ("a\nweb[1:3 x=1\n", "inv.ini:2: host range"),
            ("web[5:1]\n", "inv.ini:1: host range \"web[5:1]\": \"5:1\" is reversed"),
            ("h junk\n", "inv.ini:1: \"junk\" after the host: expected key=value"),
            ("h ansible_port=0\n", "inv.ini:1: ansible_port=\"0\": not a port"),
            ("h ansible_port=http\n", "inv.ini:1: ansible_port=\"http\": not a port"),
            ("h ansible_host=evil/sudo\n", "inv.ini:1: ansible_host=\"evil/sudo\": not a host name"),
            ("h ansible_host=root@x\n", "not a host name"),
            ("h ansible_user='a b'\n", "inv.ini:1: ansible_user=\"a b\": not a user name"),
            ("h 'x=1\n", "inv.ini:1: unclosed ' quote"),
            (
                "h ansible_connection=winrm\n",
                "inv.ini:1: ansible_connection=\"winrm\": spore reaches hosts by ssh, local",
            ),
            ("h ansible_host='{{ ip }}'\n", "inv.ini:1: ansible_host=\"{{ ip }}\": a Jinja template"),
            ("h\u{202e}moc.evil\n", "inv.ini:1: host \"h\\u{202e}moc.evil\": invisible or direction-changing"),
            ("h:99999\n", "inv.ini:1: host \"h:99999\": \"99999\" is not a port"),
            ("a//b\n", "inv.ini:1: host \"a//b\": empty hop"),
            ("a/\n", "empty hop"),
            (
                "x/sudo:pg ansible_user=y\n",
                "inv.ini:1: x/sudo:pg: ansible_host, ansible_port and ansible_user apply to an ssh hop",
            ),
            ("[a:children]\nb c\n", "inv.ini:2: \"c\": a [group:children] line names one group"),
            ("[a:children]\nall\n", "inv.ini:2: all is made by the inventory itself"),
            ("[ungrouped:children]\na\n", "inv.ini:1: [ungrouped:children]"),
            (
                "[a:children]\nb\n[b:children]\nc\n[c:children]\na\n",
                "inv.ini:6: groups are children of each other: a -> b -> c -> a",
            ),
            ("[a:children]\na\n", "inv.ini:2: groups are children of each other: a -> a"),
        ];
        for (text, want) in cases {
            let e = Inventory::parse_ini(text, "inv.ini").expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn hostile_ini() {
        // A range past the host limit is refused from its count.
        let e = Inventory::parse_ini("web[0:999999999999]\n", "inv.ini").unwrap_err();
        assert!(matches!(e, InventoryError::TooMany { what: "hosts", line: 1, .. }), "{e}");
        // Many lines of ranges, each under the limit, together over it.
        let text = "h[1:60000]\nx[1:60000]\n";
        let e = Inventory::parse_ini(text, "inv.ini").unwrap_err();
        assert!(matches!(e, InventoryError::TooMany { what: "hosts", line: 2, .. }), "{e}");
        // The same hosts listed in many groups: the listings are bounded.
        let mut text = String::new();
        for g in 0..30 {
            text.push_str(&format!("[g{g}]\nh[1:50000]\n"));
        }
        let e = Inventory::parse_ini(&text, "inv.ini").unwrap_err();
        assert!(matches!(e, InventoryError::TooMany { what: "listings of hosts and groups", .. }), "{e}");
        // A chain of 50,000 groups: no recursion to overflow the stack.
        let mut text = String::from("[g0]\nleaf\n");
        for g in 1..50_000 {
            text.push_str(&format!("[g{g}:children]\ng{}\n", g - 1));
        }
        let inv = ini(&text);
        assert_eq!(names(inv.group("g49999")), ["leaf"]);
        // ... and closed into a loop, it is an error, not a hang.
        text.push_str("[g0:children]\ng49999\n");
        let e = Inventory::parse_ini(&text, "inv.ini").unwrap_err();
        assert!(matches!(&e, InventoryError::Cycle { cycle, .. } if cycle.len() == 50_001), "{e}");
        // Odd UTF-8 is carried, control characters refused.
        let inv = ini("[grüppe]\nhöst-ü[1:2]\n");
        assert_eq!(names(inv.group("grüppe")), ["höst-ü1", "höst-ü2"]);
        for bad in ["a\u{7}b", "web*", "@x", "!x", "&x"] {
            let e = Inventory::parse_ini(&format!("{bad}\n"), "inv.ini").unwrap_err().to_string();
            assert!(e.contains("a target can't hold"), "{bad}: {e}");
        }
        // A byte-order mark is not part of the first line.
        assert_eq!(names(ini("\u{feff}[web]\nw1\n").group("web")), ["w1"]);
        assert_eq!(names(yml("\u{feff}web:\n  hosts:\n    w1:\n").group("web")), ["w1"]);
        // A huge line is refused as such.
        let e = Inventory::parse_ini(&format!("ok\n{}\n", "x".repeat(70_000)), "inv.ini").unwrap_err();
        assert_eq!(e.to_string(), "inv.ini:2: a line longer than 65536 bytes");
        assert!(Inventory::parse_ini(&format!("{}\n", "x".repeat(65_536)), "inv.ini").is_ok());
        // Notes are bounded.
        let text: String = (0..5000).map(|i| format!("h{i} foo=1\n")).collect();
        let inv = ini(&text);
        assert_eq!(inv.notes().len(), MAX_NOTES + 1);
        assert!(inv.notes()[MAX_NOTES].contains("4000 more notes"), "{:?}", inv.notes().last());
    }

    const YAML: &str = "\
all:
  hosts:
    bastion:
  children:
    web:
      hosts:
        web[01:03]:
        bastion/app[1-2]/sudo:deploy:
      vars:
        ansible_user: root
        color: blue
    db:
      hosts:
        db1:
          ansible_host: 10.0.0.5
          ansible_port: 2222
          ansible_user: admin
          foo: [1, 2]
        db2:2200:
          ansible_ssh_user: ops
    prod:
      children:
        web:
        db:
          hosts:
            web01:
";

    #[test]
    fn reads_ansible_yaml() {
        let inv = yml(YAML);
        assert_eq!(
            names(inv.group("web")),
            ["web01", "web02", "web03", "bastion/app1/sudo:deploy", "bastion/app2/sudo:deploy"]
        );
        assert_eq!(targets(inv.group("db")), ["root@web01", "admin@10.0.0.5:2222", "ops@db2:2200"]);
        assert_eq!(
            names(inv.group("prod")),
            ["web01", "web02", "web03", "bastion/app1/sudo:deploy", "bastion/app2/sudo:deploy", "db1", "db2"]
        );
        assert_eq!(names(inv.group("ungrouped")), ["bastion"]);
        assert_eq!(inv.groups(), ["all", "ungrouped", "web", "db", "prod"]);
        let notes = inv.notes().join("\n");
        assert!(notes.contains("inv.yml:11: vars of group web: color ignored"), "{notes}");
        assert!(notes.contains("inv.yml:14: db1: ignored variables foo"), "{notes}");
        // The same inventory in both formats names the same hosts.
        let from_ini = ini(INI);
        for g in ["web", "db", "prod", "ungrouped"] {
            assert_eq!(inv.group(g), from_ini.group(g), "{g}");
        }
    }

    #[test]
    fn yaml_shapes() {
        // Any group at the top, empty groups, ungrouped written Ansible's way.
        let inv =
            yml("web:\n  hosts:\n    w1:\nempty:\nall:\n  children:\n    ungrouped:\n      hosts:\n        u1:\n");
        assert_eq!(names(inv.group("web")), ["w1"]);
        assert_eq!(inv.group("empty"), Some(vec![]));
        assert_eq!(names(inv.group("ungrouped")), ["u1"]);
        assert_eq!(yml("").groups(), ["all", "ungrouped"]);
        assert_eq!(yml("# nothing\n").groups(), ["all", "ungrouped"]);
        // Anchors and aliases are links.
        let inv = yml("a:\n  hosts: &h\n    x1:\n    x2:\nb:\n  hosts: *h\n");
        assert_eq!(names(inv.group("b")), ["x1", "x2"]);
        // Merge keys in variables: the mapping's own entries win.
        let text = "\
all:
  hosts:
    h1:
      <<: &d {ansible_user: admin, ansible_port: 2}
      ansible_port: 3
    h2:
      <<: [*d, {ansible_host: x}]
  children:
    g:
      hosts: {h3: }
      vars:
        <<: *d
";
        let inv = yml(text);
        assert_eq!(targets(inv.group("all")), ["admin@h1:3", "admin@x:2", "admin@h3:2"]);
        // A port as a number or a string.
        let inv = yml("all:\n  hosts:\n    h:\n      ansible_port: '22'\n    g:\n      ansible_port: 23\n");
        assert_eq!(targets(inv.group("all")), ["h:22", "g:23"]);
    }

    #[test]
    fn yaml_errors_name_file_and_line() {
        let cases: &[(&str, &str)] = &[
            ("all:\n  hosts:\n  - web1\n", "inv.yml:3: hosts of group all: expected a mapping, found a list"),
            ("web:\n  web01:\n", "inv.yml:2: group web: unexpected key \"web01\""),
            ("all:\n  hosts: [\n", "inv.yml:"),
            ("web: 3\n", "inv.yml:1: group web: expected a mapping, found \"3\""),
            ("- a\n", "inv.yml:1: the top level: expected a mapping, found a list"),
            ("all:\n  hosts:\n    h:\n      ansible_port: x\n", "inv.yml:4: ansible_port=\"x\": not a port"),
            ("all:\n  hosts:\n    h:\n      ansible_host: [a]\n", "inv.yml:4: ansible_host: expected a single value"),
            ("all:\n  hosts:\n    web[1:\n", "inv.yml:3: host range"),
            (
                "a:\n  children:\n    b:\n      children:\n        a:\n",
                "inv.yml:5: groups are children of each other: a -> b -> a",
            ),
            ("a:\n  children:\n    all:\n", "inv.yml:3: all can't be a child group"),
            ("'we b':\n", "inv.yml:1: \"we b\" is not a group name"),
            ("all:\n  hosts:\n    ? [a, b]\n", "inv.yml:3: a host's name: expected a name"),
        ];
        for (text, want) in cases {
            let e = Inventory::parse_yaml(text, "inv.yml").expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn hostile_yaml() {
        // Billion laughs: aliases are links, and visits are bounded.
        let mut text = String::from("x: &a0\n  hosts:\n    h:\n");
        for i in 1..30 {
            text.push_str(&format!("g{i}: &a{i}\n  children:\n"));
            for j in 0..10 {
                text.push_str(&format!("    c{i}_{j}: *a{}\n", i - 1));
            }
        }
        let e = Inventory::parse_yaml(&text, "inv.yml").unwrap_err();
        assert!(matches!(e, InventoryError::TooMany { .. }), "{e}");
        // Deep nesting is refused, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let e = Inventory::parse_yaml(&deep, "inv.yml").unwrap_err().to_string();
        // The parser's own limit (256) or spore's.
        assert!(e.contains("inv.yml:1: YAML: recursion limit exceeded") || e.contains("nested more than"), "{e}");
        let mut deep = String::new();
        for i in 0..100 {
            deep.push_str(&format!("{}g{i}:\n{}  children:\n", "    ".repeat(i), "    ".repeat(i)));
        }
        let e = Inventory::parse_yaml(&deep, "inv.yml").unwrap_err().to_string();
        assert!(e.contains("nested more than"), "{e}");
        // An alias inside its own anchor: an error, not endless.
        let e = Inventory::parse_yaml("a: &x\n  children:\n    b: *x\n", "inv.yml").unwrap_err().to_string();
        assert!(e.starts_with("inv.yml:"), "{e}");
    }

    #[test]
    fn detects_the_format() {
        assert!(looks_like_yaml("---\nall:\n"));
        assert!(looks_like_yaml("# c\nall:\n  hosts:\n"));
        assert!(looks_like_yaml("web: {hosts: {a: }}\n"));
        assert!(looks_like_yaml("{\"web\": {\"hosts\": {\"a\": null}}}\n"));
        assert!(!looks_like_yaml("[web]\nweb1\n"));
        assert!(!looks_like_yaml("web1:2222 ansible_user=x\n"));
        assert!(!looks_like_yaml("bastion/sudo:postgres\n"));
        assert!(!looks_like_yaml(""));
    }

    #[test]
    fn shell_words_split_like_ansible() {
        assert_eq!(shell_words("a b=1  c='x y' # z").unwrap(), ["a", "b=1", "c=x y"]);
        assert_eq!(shell_words("a b=\"q\\\"q\"").unwrap(), ["a", "b=q\"q"]);
        assert_eq!(shell_words("a#b").unwrap(), ["a#b"]);
        assert!(shell_words("a \"b").is_err());
    }
}
