//! Directory trees copied as `cp -a` copies them: to many contexts
//! ([`put_tree`]) or from one ([`get_tree`]); and one file down,
//! atomically ([`get_file`]).
//!
//! Kept: directories and their modes (a directory's mode is set after its
//! contents, so a read-only one can be filled), regular files and their
//! modes, each written to a temporary name beside it and renamed (never
//! seen half-written), symlinks as symlinks, their targets as they are.
//! Not kept: owners, times, hard links (each name becomes a file of its
//! own). Special files (fifos, sockets, devices) are skipped and listed in
//! the [`TreeReport`].
//!
//! A symlink is never followed while walking, on either side, and nor is
//! one at the root: it is copied as a symlink. The whole tree is read
//! before anything is written, bounded in depth and in entries
//! ([`Limits`]), so a tree spore can't copy (too deep, too large, a name
//! that is not UTF-8, which the protocol's strings can't carry) fails
//! before the first byte, with an error naming the path.
//!
//! `get_tree` never writes outside its destination: a remote name that is
//! empty, `.` or `..`, holds a `/`, or comes twice is refused, and every
//! local write goes through directory descriptors opened without
//! following symlinks, so a symlink in the destination (found there, or
//! put there in a race) is refused, never written through.
//!
//! A directory's files travel several at a time when it has many (else a
//! round trip each would be a wait each); to many contexts, each file is
//! sent by one call of a [`WriteMany`], for all of them.
//!
//! The root: `remote` (for a put) or `local` (for a get) becomes the copy
//! of the tree's root: made, or merged into the directory already there.
//! Put in a directory as `DIR/<name>`, or as `DIR/<target>` for many
//! targets ([`per_target`]), is the caller's choice.

use crate::context::Context;
use crate::error::{Error, Result};
use spore_protocol::body::{self, Empty, ListReply, MkdirArgs, PathArgs, SymlinkArgs};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, ErrorKind, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// How deep a tree may go below its root, by default.
pub const MAX_DEPTH: usize = 256;
/// How many entries a tree may hold (its root aside), by default: the
/// whole tree is held in memory while it is copied.
pub const MAX_ENTRIES: usize = 1_000_000;
/// At most this many `list_dir` calls in flight while a remote tree is
/// read (a directory's subdirectories are listed together).
const LISTS_IN_FLIGHT: usize = 16;
/// At most this many files of a directory sent or fetched at once...
const FILES_IN_FLIGHT: usize = 4;
/// ... when it has at least this many (threads cost more than they save
/// on fewer).
const PARALLEL_FROM: usize = 8;

/// Bounds on a tree to copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Deepest level below the root (an entry of the root is at depth 1).
    pub max_depth: usize,
    /// Most entries, the root aside.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: MAX_DEPTH, max_entries: MAX_ENTRIES }
    }
}

/// What a tree copy did, for one target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeReport {
    /// Regular files written.
    pub files: u64,
    /// Directories made or merged into, the root included.
    pub dirs: u64,
    /// Symlinks made.
    pub symlinks: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Special files (fifos, sockets, devices) not copied: their paths on
    /// the side read.
    pub skipped: Vec<String>,
}

/// Opens a file's local source, once per reader that needs it.
pub type Source<'s> = dyn FnMut() -> io::Result<Box<dyn Read + Send>> + 's;

/// Writes one file to every context given: `(contexts, remote path,
/// source, mode)`, a result per context, in order: [`write_each`], or a
/// [`FanOut`] through [`once`]. A tree's files may be sent several at a
/// time, each by a call of its own, from threads of their own.
pub type WriteMany<'a> = &'a (dyn Fn(&[Context], &str, &mut Source<'_>, Option<u32>) -> Vec<Result<u64>> + Sync);

/// A writer that reads its source once for all the contexts (bytes cross
/// a shared hop once): `(contexts, remote path, source, mode)`, a result
/// per context, in order.
pub type FanOut = dyn Fn(&[Context], &str, &mut dyn Read, Option<u32>) -> Vec<Result<u64>> + Sync;

/// The plain [`WriteMany`]: each context in turn, the source opened anew
/// for each. One context failing does not stop the others.
pub fn write_each(contexts: &[Context], path: &str, open: &mut Source<'_>, mode: Option<u32>) -> Vec<Result<u64>> {
    contexts
        .iter()
        .map(|ctx| {
            let mut source = open().map_err(|source| Error::Local { what: format!("put {path}"), source })?;
            ctx.write_file(path, &mut source, mode)
        })
        .collect()
}

/// `fan_out` as a [`WriteMany`] (`&tree::once(&fan_out)`): the source
/// opened once and handed to it; if it can't be opened, every context
/// gets that error.
pub fn once(fan_out: &FanOut) -> impl Fn(&[Context], &str, &mut Source<'_>, Option<u32>) -> Vec<Result<u64>> + '_ {
    move |contexts: &[Context], path: &str, open: &mut Source<'_>, mode: Option<u32>| match open() {
        Ok(mut source) => fan_out(contexts, path, &mut source, mode),
        Err(e) => contexts
            .iter()
            .map(|_| Err(Error::Local { what: format!("put {path}"), source: io::Error::new(e.kind(), e.to_string()) }))
            .collect(),
    }
}

/// Copy the local tree at `local` to `remote` on each context: a result
/// per context, in order. The tree is read once; each file is sent by one
/// call of `write_many` for all the contexts still going. A context that
/// fails stops there (what it wrote stays, each file whole, its
/// directories given their modes); its error names it and the path.
pub fn put_tree(
    contexts: &[Context],
    local: &Path,
    remote: &str,
    write_many: WriteMany<'_>,
) -> Vec<Result<TreeReport>> {
    put_tree_with(contexts, local, remote, write_many, &Limits::default())
}

/// [`put_tree`] within `limits`.
pub fn put_tree_with(
    contexts: &[Context],
    local: &Path,
    remote: &str,
    write_many: WriteMany<'_>,
    limits: &Limits,
) -> Vec<Result<TreeReport>> {
    let mut scan = Scan { limits, entries: 0, skipped: Vec::new() };
    let root = match scan_local(local, String::new(), 0, &mut scan) {
        Ok(root) => root,
        Err(e) => return contexts.iter().map(|_| Err(copy_error(&e))).collect(),
    };
    let report = TreeReport { skipped: scan.skipped, ..TreeReport::default() };
    let mut dests: Vec<Dest<'_>> =
        contexts.iter().map(|ctx| Dest { ctx, report: report.clone(), error: None }).collect();
    if let Some(root) = root {
        put_node(&root, local, trim_slashes(remote), &mut dests, write_many);
    }
    dests
        .into_iter()
        .map(|d| match d.error {
            Some(e) => Err(e),
            None => Ok(d.report),
        })
        .collect()
}

/// Copy the remote tree at `remote` to `local` (its parents made if
/// missing).
pub fn get_tree(ctx: &Context, remote: &str, local: &Path) -> Result<TreeReport> {
    get_tree_with(ctx, remote, local, &Limits::default())
}

/// [`get_tree`] within `limits`.
pub fn get_tree_with(ctx: &Context, remote: &str, local: &Path, limits: &Limits) -> Result<TreeReport> {
    let remote = trim_slashes(remote);
    let mut scan = Scan { limits, entries: 0, skipped: Vec::new() };
    let root = scan_remote_root(ctx, remote, &mut scan)?;
    let mut report = TreeReport { skipped: scan.skipped, ..TreeReport::default() };
    let Some(root) = root else { return Ok(report) };
    let name = local.file_name().ok_or_else(|| {
        Error::Usage(format!("get -r: {} names no entry to copy {remote} to", shown(local.as_os_str())))
    })?;
    let parent = local.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // The destination's parents are the caller's own path: made if
    // missing, and followed, symlinks and all. Below it, nothing is.
    fs::create_dir_all(parent).map_err(local_error(format!("mkdir {}", shown(parent.as_os_str()))))?;
    let dir = open_dir(parent)?;
    fetch_node(ctx, &root, remote, &dir, name, local, &mut report)?;
    Ok(report)
}

/// Download the remote file `remote` (symlinks followed) to `local_dest`,
/// atomically: into a new private temporary file beside it (mode 0600,
/// never through a symlink), given the remote file's mode, synced, then
/// renamed into place; removed if anything fails. Errors name the
/// destination. Returns the bytes written.
pub fn get_file(ctx: &Context, remote: &str, local_dest: &Path) -> Result<u64> {
    let name = local_dest.file_name().ok_or_else(|| {
        Error::Usage(format!("get: {} names no file to write {remote} to", shown(local_dest.as_os_str())))
    })?;
    let parent = local_dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = open_dir(parent)?;
    fetch_file_at(ctx, remote, false, &dir, name, local_dest)
}

/// Where `get -r` of many targets (and `--out-dir`) puts `target`'s files: `dir/<target>`,
/// each hop of the target a directory (`dir/bastion/web1`). A target with
/// an empty, `.` or `..` hop is refused: its copy would land elsewhere.
pub fn per_target(dir: &Path, target: &str) -> Result<PathBuf> {
    let mut path = dir.to_path_buf();
    for hop in target.split('/') {
        if hop.is_empty() || hop == "." || hop == ".." || hop.contains('\0') {
            return Err(Error::Usage(format!(
                "the target {target:?} can't name a directory in {}",
                shown(dir.as_os_str())
            )));
        }
        path.push(hop);
    }
    Ok(path)
}

/// A tree read whole before anything is written.
#[derive(Debug)]
struct Node {
    /// Its name in its directory (empty for the root).
    name: String,
    /// Permission bits.
    mode: u32,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    File,
    Dir(Vec<Node>),
    Symlink(String),
}

/// The bounds of a tree being read, and what was left out.
struct Scan<'l> {
    limits: &'l Limits,
    entries: usize,
    skipped: Vec<String>,
}

impl Scan<'_> {
    /// Count an entry at `depth`; `Err` names the bound it passes.
    fn count(&mut self, depth: usize) -> std::result::Result<(), String> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(format!("more than {} entries", self.limits.max_entries));
        }
        if depth > self.limits.max_depth {
            return Err(format!("deeper than {} levels", self.limits.max_depth));
        }
        Ok(())
    }
}

/// One context being written to.
struct Dest<'c> {
    ctx: &'c Context,
    report: TreeReport,
    /// Its first failure: it gets nothing more.
    error: Option<Error>,
}

// ---- put: the local tree read, the remote one written ----

/// The local entry at `path` (`name` in its directory) and all below it;
/// `None` for a special file (listed in `scan.skipped`).
fn scan_local(path: &Path, name: String, depth: usize, scan: &mut Scan<'_>) -> Result<Option<Node>> {
    let what = || format!("put -r: read {}", shown(path.as_os_str()));
    let meta = fs::symlink_metadata(path).map_err(local_error(what()))?;
    let mode = meta.mode() & 0o7777;
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        let target = fs::read_link(path).map_err(local_error(what()))?;
        let target = target
            .into_os_string()
            .into_string()
            .map_err(|t| not_utf8(format!("put -r: {}: its target {}", shown(path.as_os_str()), shown(&t))))?;
        Kind::Symlink(target)
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        let mut children = Vec::new();
        for entry in fs::read_dir(path).map_err(local_error(what()))? {
            let entry = entry.map_err(local_error(what()))?;
            let child = path.join(entry.file_name());
            scan.count(depth + 1).map_err(|bound| Error::Local {
                what: format!("put -r: {}", shown(child.as_os_str())),
                source: io::Error::new(ErrorKind::InvalidInput, bound),
            })?;
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| not_utf8(format!("put -r: {}", shown(child.as_os_str()))))?;
            if let Some(node) = scan_local(&child, name, depth + 1, scan)? {
                children.push(node);
            }
        }
        children.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Kind::Dir(children)
    } else {
        scan.skipped.push(shown(path.as_os_str()));
        return Ok(None);
    };
    Ok(Some(Node { name, mode, kind }))
}

/// Write `node` (read from `local`) at `remote` on every context still
/// going.
fn put_node(node: &Node, local: &Path, remote: &str, dests: &mut [Dest<'_>], write_many: WriteMany<'_>) {
    match &node.kind {
        Kind::File => put_files(&[(node, local.to_path_buf(), remote.to_string())], dests, write_many),
        Kind::Symlink(target) => {
            let args = SymlinkArgs { op: "symlink".into(), path: remote.into(), target: target.clone() };
            for (i, result) in call_going(dests, &body::to_json(&args)) {
                match result {
                    Ok(Empty {}) => dests[i].report.symlinks += 1,
                    Err(e) => dests[i].fail(e, remote),
                }
            }
        }
        Kind::Dir(children) => {
            // Writable by us while it is filled; its own mode after.
            let filling = node.mode | 0o700;
            let mkdir =
                |mode| body::to_json(&MkdirArgs { op: "mkdir".into(), path: remote.into(), mode, parents: false });
            let mut made = Vec::new();
            for (i, result) in call_going(dests, &mkdir(filling)) {
                match result {
                    Ok(Empty {}) => {
                        dests[i].report.dirs += 1;
                        made.push(i);
                    }
                    Err(e) => dests[i].fail(e, remote),
                }
            }
            // Its files first, several at a time; then the rest, in order.
            let paths = |c: &Node| (local.join(&c.name), join(remote, &c.name));
            let (files, rest): (Vec<&Node>, Vec<&Node>) = children.iter().partition(|c| matches!(c.kind, Kind::File));
            let files: Vec<_> = files
                .into_iter()
                .map(|c| {
                    let (local, remote) = paths(c);
                    (c, local, remote)
                })
                .collect();
            put_files(&files, dests, write_many);
            for child in rest {
                let (local, remote) = paths(child);
                put_node(child, &local, &remote, dests, write_many);
            }
            if filling != node.mode {
                // Even where a context failed below: a directory left
                // more open than its source would be a surprise.
                let pending: Vec<_> = made.iter().map(|&i| (i, dests[i].ctx.call_async(mkdir(node.mode)))).collect();
                for (i, p) in pending {
                    let dest = &mut dests[i];
                    let result = p.wait().and_then(|m| dest.ctx.decode::<Empty>(&m));
                    if let (Err(e), None) = (result, &dest.error) {
                        dest.fail(e, remote);
                    }
                }
            }
        }
    }
}

/// Send `files` (each with its local and remote path) to every context
/// still going: a `write_many` call each, several at once when there are
/// many, so that a round trip per file is not a wait per file.
fn put_files(files: &[(&Node, PathBuf, String)], dests: &mut [Dest<'_>], write_many: WriteMany<'_>) {
    let dests = Mutex::new(dests);
    let next = AtomicUsize::new(0);
    let work = || {
        while let Some((node, local, remote)) = files.get(next.fetch_add(1, Ordering::Relaxed)) {
            let (going, contexts): (Vec<usize>, Vec<Context>) = lock(&dests)
                .iter()
                .enumerate()
                .filter(|(_, d)| d.error.is_none())
                .map(|(i, d)| (i, d.ctx.clone()))
                .unzip();
            if going.is_empty() {
                return;
            }
            let mut open = || open_source(local);
            let mut results = write_many(&contexts, remote, &mut open, Some(node.mode)).into_iter();
            let mut dests = lock(&dests);
            for i in going {
                let Some(dest) = dests.get_mut(i) else { continue };
                match results.next() {
                    Some(Ok(n)) => {
                        dest.report.files += 1;
                        dest.report.bytes += n;
                    }
                    Some(Err(e)) => dest.fail(e, remote),
                    None => dest.fail(Error::Usage(format!("put {remote}: the writer gave no result")), remote),
                }
            }
        }
    };
    if files.len() < PARALLEL_FROM {
        return work();
    }
    std::thread::scope(|s| {
        let helpers: Vec<_> = (1..FILES_IN_FLIGHT)
            .filter_map(|_| std::thread::Builder::new().name("spore-put".into()).spawn_scoped(s, work).ok())
            .collect();
        // This thread is a worker too (and the only one, if none started).
        work();
        for h in helpers {
            let _ = h.join();
        }
    });
}

impl Dest<'_> {
    /// Its first failure; the error names the target (as every other
    /// does: a local one too) and the path.
    fn fail(&mut self, e: Error, path: &str) {
        if self.error.is_none() {
            self.error = Some(match naming_path(e, path) {
                Error::Local { what, source } => Error::Local { what: format!("{}: {what}", self.ctx.name()), source },
                other => other,
            });
        }
    }
}

/// Send one call to every context still going, all at once; their results.
fn call_going(dests: &[Dest<'_>], body: &[u8]) -> Vec<(usize, Result<Empty>)> {
    let pending: Vec<_> = dests
        .iter()
        .enumerate()
        .filter(|(_, d)| d.error.is_none())
        .map(|(i, d)| (i, d.ctx.call_async(body.to_vec())))
        .collect();
    pending.into_iter().map(|(i, p)| (i, p.wait().and_then(|m| dests[i].ctx.decode(&m)))).collect()
}

/// A local file to send: opened without following a symlink (or waiting
/// on a fifo) put there since the tree was read; read errors name it.
fn open_source(path: &Path) -> io::Result<Box<dyn Read + Send>> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", shown(path.as_os_str())));
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).map_err(
        |e| match e.raw_os_error() {
            Some(libc::ELOOP) => named(io::Error::new(ErrorKind::InvalidInput, "now a symlink")),
            _ => named(e),
        },
    )?;
    if !file.metadata().map_err(named)?.is_file() {
        return Err(named(io::Error::new(ErrorKind::InvalidInput, "no longer a regular file")));
    }
    Ok(Box::new(NamedRead { file, path: shown(path.as_os_str()) }))
}

/// A file whose read errors name it.
struct NamedRead {
    file: File,
    path: String,
}

impl Read for NamedRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf).map_err(|e| io::Error::new(e.kind(), format!("read {}: {e}", self.path)))
    }
}

// ---- get: the remote tree read, the local one written ----

/// The remote entry at `remote` and all below it; `None` for a special
/// file (listed in `scan.skipped`).
fn scan_remote_root(ctx: &Context, remote: &str, scan: &mut Scan<'_>) -> Result<Option<Node>> {
    let st = ctx.stat(remote, false)?;
    let mode = st.mode & 0o7777;
    let kind = match st.kind.as_str() {
        "file" => Kind::File,
        "symlink" => {
            let link = ctx.read_link(remote)?;
            if link.lossy {
                return Err(refused(ctx, format!("get -r: the target of {remote} is not UTF-8 ({:?})", link.target)));
            }
            Kind::Symlink(link.target)
        }
        "dir" => Kind::Dir(scan_remote_dir(ctx, remote, ctx.list_dir(remote)?, 1, scan)?),
        _ => {
            scan.skipped.push(remote.to_string());
            return Ok(None);
        }
    };
    Ok(Some(Node { name: String::new(), mode, kind }))
}

/// The entries of the remote directory `path`, listed as `list`, at
/// `depth`, and all below them.
fn scan_remote_dir(ctx: &Context, path: &str, list: ListReply, depth: usize, scan: &mut Scan<'_>) -> Result<Vec<Node>> {
    let mut nodes: Vec<Node> = Vec::with_capacity(list.entries.len());
    for e in list.entries {
        scan.count(depth).map_err(|bound| refused(ctx, format!("get -r {path}: {bound}")))?;
        // The names become local paths: each must be one plain name.
        if e.lossy {
            return Err(refused(ctx, format!("get -r: a name in {path} is not UTF-8 ({:?})", e.name)));
        }
        if e.name.is_empty() || e.name == "." || e.name == ".." || e.name.contains(['/', '\0']) {
            return Err(refused(ctx, format!("get -r: {path} lists the name {:?}, which is not a plain name", e.name)));
        }
        let mode = e.mode & 0o7777;
        let kind = match e.kind.as_str() {
            "file" => Kind::File,
            "dir" => Kind::Dir(Vec::new()),
            "symlink" => match (e.target, e.target_lossy) {
                (Some(target), false) => Kind::Symlink(target),
                (Some(target), true) => {
                    return Err(refused(
                        ctx,
                        format!("get -r: the target of {} is not UTF-8 ({target:?})", join(path, &e.name)),
                    ))
                }
                (None, _) => {
                    return Err(refused(
                        ctx,
                        format!("get -r: {} is a symlink, but its target is unknown", join(path, &e.name)),
                    ))
                }
            },
            _ => {
                scan.skipped.push(join(path, &e.name));
                continue;
            }
        };
        nodes.push(Node { name: e.name, mode, kind });
    }
    nodes.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = nodes.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(refused(ctx, format!("get -r: {path} lists {:?} twice", pair[0].name)));
    }
    // The subdirectories, listed a few at a time, all in flight together.
    let subdirs: Vec<&mut Node> = nodes.iter_mut().filter(|n| matches!(n.kind, Kind::Dir(_))).collect();
    let mut subdirs = subdirs.into_iter().peekable();
    while subdirs.peek().is_some() {
        let pending: Vec<_> = subdirs
            .by_ref()
            .take(LISTS_IN_FLIGHT)
            .map(|n| {
                let sub = join(path, &n.name);
                let p = ctx.call_async(body::to_json(&PathArgs { op: "list_dir".into(), path: sub.clone() }));
                (n, sub, p)
            })
            .collect();
        for (node, sub, p) in pending {
            let list: ListReply = p.wait().and_then(|m| ctx.decode(&m))?;
            node.kind = Kind::Dir(scan_remote_dir(ctx, &sub, list, depth + 1, scan)?);
        }
    }
    Ok(nodes)
}

/// Write `node` (read from `remote`) as `name` in `dir`, shown as `local`.
fn fetch_node(
    ctx: &Context,
    node: &Node,
    remote: &str,
    dir: &File,
    name: &OsStr,
    local: &Path,
    report: &mut TreeReport,
) -> Result<()> {
    match &node.kind {
        Kind::File => {
            report.bytes += fetch_file_at(ctx, remote, true, dir, name, local)?;
            report.files += 1;
        }
        Kind::Symlink(target) => {
            put_symlink_at(dir, name, target, local)?;
            report.symlinks += 1;
        }
        Kind::Dir(children) => {
            let filling = node.mode | 0o700;
            let sub = enter_dir_at(dir, name, filling, local)?;
            report.dirs += 1;
            // Its files first, several at a time; then the rest, in order.
            let (files, rest): (Vec<&Node>, Vec<&Node>) = children.iter().partition(|c| matches!(c.kind, Kind::File));
            let filled = fetch_files(ctx, &files, remote, &sub, local, report).and_then(|()| {
                rest.iter().try_for_each(|child| {
                    let name = OsStr::new(&child.name);
                    fetch_node(ctx, child, &join(remote, &child.name), &sub, name, &local.join(name), report)
                })
            });
            // Its own mode after its contents, even when they failed.
            let moded = if filling == node.mode {
                Ok(())
            } else {
                sub.set_permissions(fs::Permissions::from_mode(node.mode))
                    .map_err(local_error(format!("chmod {}", shown(local.as_os_str()))))
            };
            filled?;
            moded?;
        }
    }
    Ok(())
}

/// Download the regular files `files` of the remote directory `remote`
/// into `dir` (shown as `local`): with a few threads when there are
/// many, so that a round trip per file is not a wait per file.
fn fetch_files(
    ctx: &Context,
    files: &[&Node],
    remote: &str,
    dir: &File,
    local: &Path,
    report: &mut TreeReport,
) -> Result<()> {
    let fetch = |node: &Node| {
        let name = OsStr::new(&node.name);
        fetch_file_at(ctx, &join(remote, &node.name), true, dir, name, &local.join(name))
    };
    if files.len() < PARALLEL_FROM {
        for node in files {
            report.bytes += fetch(node)?;
            report.files += 1;
        }
        return Ok(());
    }
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    // Each worker takes the next file until none is left or one failed;
    // it returns its files and bytes, or its failure.
    let work = || -> Result<(u64, u64)> {
        let mut done = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            let Some(node) = files.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
            match fetch(node) {
                Ok(n) => done = (done.0 + 1, done.1 + n),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(done)
    };
    let results: Vec<Result<(u64, u64)>> = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..FILES_IN_FLIGHT)
            .filter_map(|_| std::thread::Builder::new().name("spore-get".into()).spawn_scoped(s, work).ok())
            .collect();
        // This thread is a worker too (and the only one, if none started).
        let mut results = vec![work()];
        for h in helpers {
            results.push(h.join().unwrap_or_else(|_| Err(Error::Usage(format!("get -r {remote}: a thread failed")))));
        }
        results
    });
    for result in results {
        let (files, bytes) = result?;
        report.files += files;
        report.bytes += bytes;
    }
    Ok(())
}

/// Temporary names unique in this process.
static TEMPS: AtomicU64 = AtomicU64::new(0);

/// A new temporary name beside `name`: hidden, and short enough to be a
/// name however long `name` is.
fn temp_name(name: &OsStr) -> OsString {
    let keep = name.as_bytes().get(..200).unwrap_or(name.as_bytes());
    let mut tmp = vec![b'.'];
    tmp.extend_from_slice(keep);
    let n = TEMPS.fetch_add(1, Ordering::Relaxed);
    tmp.extend_from_slice(format!(".spore-{}-{n}", std::process::id()).as_bytes());
    OsString::from_vec(tmp)
}

/// Download `remote` as `name` in `dir` (shown as `dest`), atomically.
fn fetch_file_at(ctx: &Context, remote: &str, nofollow: bool, dir: &File, name: &OsStr, dest: &Path) -> Result<u64> {
    let tmp = temp_name(name);
    let shown_dest = shown(dest.as_os_str());
    let _listed = InFlight::new(dest.with_file_name(&tmp));
    let mut file = at::create(dir, &tmp, 0o600)
        .map_err(local_error(format!("create {}", shown(dest.with_file_name(&tmp).as_os_str()))))?;
    let mut fetch = || -> Result<u64> {
        let reply = {
            let mut w = BufWriter::with_capacity(1 << 20, &mut file);
            let download = if nofollow { Context::download_nofollow } else { Context::download };
            // A failed write names the file it was for (a full disk, say).
            let reply = download(ctx, remote, &mut w).map_err(|e| match e {
                Error::Local { source, .. } => Error::Local { what: format!("write {shown_dest}"), source },
                other => other,
            })?;
            w.flush().map_err(local_error(format!("write {shown_dest}")))?;
            reply
        };
        file.set_permissions(fs::Permissions::from_mode(reply.mode & 0o7777))
            .map_err(local_error(format!("chmod {shown_dest}")))?;
        file.sync_all().map_err(local_error(format!("sync {shown_dest}")))?;
        at::rename(dir, &tmp, name).map_err(local_error(format!("rename into {shown_dest}")))?;
        Ok(reply.size)
    };
    let result = fetch();
    if result.is_err() {
        let _ = at::unlink(dir, &tmp);
    }
    result
}

/// The temporary files of downloads in flight, for [`remove_temps`].
static IN_FLIGHT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A temporary file listed in [`IN_FLIGHT`] while it lives.
struct InFlight(PathBuf);

impl InFlight {
    fn new(path: PathBuf) -> InFlight {
        lock(&IN_FLIGHT).push(path.clone());
        InFlight(path)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&IN_FLIGHT).retain(|p| *p != self.0);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Remove the temporary files of the downloads in flight ([`get_file`],
/// [`get_tree`]): for a process about to end on a signal, whose downloads
/// will never reach their own cleanup. Those downloads then fail.
pub fn remove_temps() {
    for path in std::mem::take(&mut *lock(&IN_FLIGHT)) {
        let _ = fs::remove_file(path);
    }
}

/// Make the symlink `name` -> `target` in `dir` (shown as `local`):
/// made at a temporary name, renamed over what is there.
fn put_symlink_at(dir: &File, name: &OsStr, target: &str, local: &Path) -> Result<()> {
    let tmp = temp_name(name);
    let what = shown(local.as_os_str());
    at::symlink(target, dir, &tmp).map_err(local_error(format!("symlink {what}")))?;
    at::rename(dir, &tmp, name).map_err(|e| {
        let _ = at::unlink(dir, &tmp);
        Error::Local { what: format!("rename into {what}"), source: e }
    })
}

/// The directory `name` in `dir` (shown as `local`), made if missing,
/// opened without following a symlink, and given `mode`.
fn enter_dir_at(dir: &File, name: &OsStr, mode: u32, local: &Path) -> Result<File> {
    let what = shown(local.as_os_str());
    match at::mkdir(dir, name, 0o700) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::Local { what: format!("mkdir {what}"), source: e }),
    }
    let sub = at::open_dir(dir, name).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP | libc::ENOTDIR) => Error::Local {
            what: format!("get -r: {what}"),
            source: io::Error::new(
                ErrorKind::AlreadyExists,
                "is there and is not a directory (a symlink in the destination is never followed)",
            ),
        },
        _ => Error::Local { what: format!("open {what}"), source: e },
    })?;
    let now = sub.metadata().map_err(local_error(format!("stat {what}")))?.mode() & 0o7777;
    if now != mode {
        sub.set_permissions(fs::Permissions::from_mode(mode)).map_err(local_error(format!("chmod {what}")))?;
    }
    Ok(sub)
}

/// Open a directory of the caller's own path (symlinks followed).
fn open_dir(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)
        .map_err(local_error(format!("open {}", shown(path.as_os_str()))))
}

/// `*at` calls on directory descriptors, none following a final symlink.
mod at {
    use std::ffi::{CString, OsStr};
    use std::fs::File;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;

    fn c(name: &OsStr) -> io::Result<CString> {
        CString::new(name.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a name"))
    }

    fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    /// `openat(dir, name, flags)`, close-on-exec, never through a symlink.
    fn open(dir: &File, name: &OsStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
        let name = c(name)?;
        // SAFETY: `dir` is an open descriptor and `name` a NUL-terminated
        // string, both alive for the call; a descriptor returned is ours.
        let fd = check(unsafe {
            libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC, mode)
        })?;
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// The directory `name` in `dir`.
    pub(super) fn open_dir(dir: &File, name: &OsStr) -> io::Result<File> {
        open(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
    }

    /// A new file `name` in `dir`, for writing (`O_EXCL`: never one that
    /// is there, nor through a symlink).
    pub(super) fn create(dir: &File, name: &OsStr, mode: libc::mode_t) -> io::Result<File> {
        open(dir, name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode)
    }

    /// `mkdirat(dir, name, mode)`.
    pub(super) fn mkdir(dir: &File, name: &OsStr, mode: libc::mode_t) -> io::Result<()> {
        let name = c(name)?;
        // SAFETY: an open descriptor and a NUL-terminated string, alive
        // for the call.
        check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
    }

    /// `renameat(dir, from, dir, to)`: replaces a file or symlink `to`.
    pub(super) fn rename(dir: &File, from: &OsStr, to: &OsStr) -> io::Result<()> {
        let (from, to) = (c(from)?, c(to)?);
        // SAFETY: an open descriptor and NUL-terminated strings, alive for
        // the call.
        check(unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) }).map(drop)
    }

    /// `unlinkat(dir, name, 0)`.
    pub(super) fn unlink(dir: &File, name: &OsStr) -> io::Result<()> {
        let name = c(name)?;
        // SAFETY: an open descriptor and a NUL-terminated string, alive
        // for the call.
        check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) }).map(drop)
    }

    /// `symlinkat(target, dir, name)`.
    pub(super) fn symlink(target: &str, dir: &File, name: &OsStr) -> io::Result<()> {
        let (target, name) = (c(OsStr::new(target))?, c(name)?);
        // SAFETY: an open descriptor and NUL-terminated strings, alive for
        // the call.
        check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
    }
}

// ---- small things ----

/// `dir/name`, for remote paths.
fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// `path` without trailing slashes (but `/` itself).
fn trim_slashes(path: &str) -> &str {
    match path.trim_end_matches('/') {
        "" if path.starts_with('/') => "/",
        trimmed => trimmed,
    }
}

/// A local path for a message: bytes that are not UTF-8 shown as `\xNN`.
fn shown(path: &OsStr) -> String {
    let mut out = String::new();
    for chunk in path.as_bytes().utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn local_error(what: String) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Local { what, source }
}

/// A local name that can't be sent.
fn not_utf8(what: String) -> Error {
    Error::Local {
        what,
        source: io::Error::new(ErrorKind::InvalidData, "not UTF-8, which spore's protocol can't carry: refused"),
    }
}

/// A remote tree spore won't copy.
fn refused(ctx: &Context, message: String) -> Error {
    Error::Remote { context: ctx.name().to_string(), kind: "invalid".into(), message }
}

/// `e`, naming `path` if it does not already.
fn naming_path(e: Error, path: &str) -> Error {
    match e {
        Error::Disconnected { context, reason } => {
            Error::Disconnected { context, reason: format!("{reason} (at {path})") }
        }
        Error::Dead { context, reason } => Error::Dead { context, reason: format!("{reason} (at {path})") },
        Error::Timeout { context, what } => Error::Timeout { context, what: format!("{what} ({path})") },
        Error::Protocol { context, message } => Error::Protocol { context, message: format!("{path}: {message}") },
        Error::Remote { context, kind, message } if !message.contains(path) => {
            Error::Remote { context, kind, message: format!("{path}: {message}") }
        }
        Error::Local { what, source } if !what.contains(path) => {
            Error::Local { what: format!("{what} (for {path})"), source }
        }
        other => other,
    }
}

/// The same error again, for another context.
fn copy_error(e: &Error) -> Error {
    match e {
        Error::Connect { target, cause } => Error::Connect { target: target.clone(), cause: cause.clone() },
        Error::Disconnected { context, reason } => {
            Error::Disconnected { context: context.clone(), reason: reason.clone() }
        }
        Error::Dead { context, reason } => Error::Dead { context: context.clone(), reason: reason.clone() },
        Error::Remote { context, kind, message } => {
            Error::Remote { context: context.clone(), kind: kind.clone(), message: message.clone() }
        }
        Error::Timeout { context, what } => Error::Timeout { context: context.clone(), what: what.clone() },
        Error::ShuttingDown => Error::ShuttingDown,
        Error::Cancelled { context, what } => Error::Cancelled { context: context.clone(), what: what.clone() },
        Error::Protocol { context, message } => Error::Protocol { context: context.clone(), message: message.clone() },
        Error::Local { what, source } => {
            Error::Local { what: what.clone(), source: io::Error::new(source.kind(), source.to_string()) }
        }
        Error::Usage(m) => Error::Usage(m.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_join_and_trim() {
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/x", "a"), "/x/a");
        assert_eq!(trim_slashes("/x//"), "/x");
        assert_eq!(trim_slashes("///"), "/");
        assert_eq!(trim_slashes("x/"), "x");
    }

    #[test]
    fn each_target_gets_a_directory_of_its_own_inside_the_one_given() {
        let dir = Path::new("out");
        assert_eq!(per_target(dir, "web1").unwrap(), Path::new("out/web1"));
        assert_eq!(per_target(dir, "bastion/sudo:pg").unwrap(), Path::new("out/bastion/sudo:pg"));
        for bad in ["", "..", "a/../..", "a//b", "/abs", "a/.", "x\0y"] {
            let err = per_target(dir, bad).unwrap_err().to_string();
            assert!(err.contains("can't name a directory in out"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn names_not_utf8_are_shown_escaped() {
        assert_eq!(shown(OsStr::from_bytes(b"/d/caf\xe9")), "/d/caf\\xe9");
        assert_eq!(shown(OsStr::new("/d/é")), "/d/é");
    }

    #[test]
    fn temporary_names_stay_names() {
        let long = "x".repeat(255);
        let tmp = temp_name(OsStr::new(&long));
        assert!(tmp.len() <= 255, "{}", tmp.len());
        assert!(tmp.as_bytes().starts_with(b".xxx"));
        assert_ne!(temp_name(OsStr::new("a")), temp_name(OsStr::new("a")));
    }

    #[test]
    fn a_local_tree_past_its_bounds_is_refused_before_anything_is_sent() {
        let dir = std::env::temp_dir().join(format!("spore-tree-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("a/b/c")).unwrap();
        for i in 0..5 {
            fs::write(dir.join(format!("f{i}")), b"x").unwrap();
        }
        let scan_with = |max_depth, max_entries| {
            let limits = Limits { max_depth, max_entries };
            let mut scan = Scan { limits: &limits, entries: 0, skipped: Vec::new() };
            scan_local(&dir, String::new(), 0, &mut scan).map(|_| scan.entries)
        };
        assert_eq!(scan_with(3, 8).unwrap(), 8);
        let err = scan_with(2, 100).unwrap_err().to_string();
        assert!(err.contains("deeper than 2 levels") && err.contains("/a/b/c:"), "{err}");
        let err = scan_with(10, 7).unwrap_err().to_string();
        assert!(err.contains("more than 7 entries"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
