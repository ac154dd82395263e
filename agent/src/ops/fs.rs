//! File operations: `read_file`, `write_file` (streamed, atomic rename),
//! `stat`, `list_dir`, `remove`, and for directory trees `mkdir`,
//! `symlink` (atomic rename) and `read_link`.

use super::next_message;
use crate::call::{ok, Call, OpError, OpResult};
use crate::flow::{ack, acked, Outflow};
use spore_protocol::body::{
    DirEntry, Empty, ListReply, MkdirArgs, PathArgs, ReadArgs, ReadLinkReply, ReadReply, RemoveArgs, StatArgs,
    StatReply, SymlinkArgs, WriteArgs, WriteReply, CHUNK_SIZE,
};
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Stream a file to the caller in chunks, as fast as its acks allow.
pub(crate) fn read_file(call: &Call) -> OpResult {
    let args: ReadArgs = call.args("read_file arguments")?;
    let nofollow = args.nofollow == Some(true);
    let mut open = OpenOptions::new();
    open.read(true);
    if nofollow {
        // O_NONBLOCK: opening a fifo returns at once (and is refused below)
        // instead of waiting for a writer; a regular file ignores it.
        open.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let mut file = open.open(&args.path).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) if nofollow => OpError::new("invalid", format!("read {}: is a symlink", args.path)),
        _ => OpError::io(format!("open {}", args.path), &e),
    })?;
    let meta = file.metadata().map_err(|e| OpError::io(format!("stat {}", args.path), &e))?;
    if meta.is_dir() {
        return Err(OpError::new("invalid", format!("read {}: is a directory", args.path)));
    }
    if nofollow && !meta.is_file() {
        return Err(OpError::new("invalid", format!("read {}: not a regular file", args.path)));
    }
    let mb = call.open_stream()?;
    let mut out = Outflow::new(call.broker.clone(), call.caller(), call.request.header.reply_to);
    let mut buf = vec![0u8; CHUNK_SIZE];
    loop {
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(OpError::io(format!("read {}", args.path), &e)),
        };
        if n == 0 {
            break;
        }
        while !out.has_credit() {
            let msg = next_message(&mb, &format!("read {}", args.path))?;
            if let Some(a) = acked(&msg) {
                out.on_ack(a);
            }
        }
        out.send(buf.get(..n).unwrap_or_default(), false);
    }
    ok(&ReadReply { size: out.sent(), mode: meta.mode() & 0o7777 })
}

/// A temporary file beside `target`, removed on drop unless kept, and
/// removed by the broker if the agent ends first.
struct TempFile {
    path: PathBuf,
    keep: bool,
    broker: crate::Broker,
}

impl TempFile {
    /// A name for a temporary beside `name` in `dir`, tracked: unique to
    /// this agent and call.
    fn beside(call: &Call, dir: &Path, name: &OsStr) -> TempFile {
        // Cut short, so that the temporary of a long name is a name too.
        let name = name.to_string_lossy();
        let mut end = name.len().min(200);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let path = dir.join(format!(
            ".{}.spore-{}-{}",
            name.get(..end).unwrap_or_default(),
            std::process::id(),
            call.request.header.reply_to
        ));
        call.broker.track_temp(&path);
        TempFile { path, keep: false, broker: call.broker.clone() }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
        self.broker.untrack_temp(&self.path);
    }
}

/// Receive a file in chunks into a temporary name, then rename it into place.
pub(crate) fn write_file(call: &Call) -> OpResult {
    let args: WriteArgs = call.args("write_file arguments")?;
    let target = Path::new(&args.path);
    let name =
        target.file_name().ok_or_else(|| OpError::new("invalid", format!("write {}: not a file path", args.path)))?;
    let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mode = match args.mode {
        Some(m) => m & 0o7777,
        None => fs::metadata(target).map(|m| m.mode() & 0o7777).unwrap_or(0o644),
    };
    let tmp = TempFile::beside(call, dir, name);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp.path)
        .map_err(|e| OpError::io(format!("create {}", tmp.path.display()), &e))?;
    let mb = call.open_stream()?;
    let mut written: u64 = 0;
    loop {
        let msg = next_message(&mb, &format!("write {}", args.path))?;
        if !msg.is_binary() {
            continue;
        }
        file.write_all(&msg.body).map_err(|e| OpError::io(format!("write {}", args.path), &e))?;
        written += msg.body.len() as u64;
        if msg.is_end() {
            break;
        }
        ack(&call.broker, call.caller(), call.request.header.reply_to, written);
    }
    file.sync_all().map_err(|e| OpError::io(format!("sync {}", args.path), &e))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| OpError::io(format!("chmod {}", args.path), &e))?;
    drop(file);
    fs::rename(&tmp.path, target).map_err(|e| OpError::io(format!("rename into {}", args.path), &e))?;
    let mut tmp = tmp;
    tmp.keep = true;
    ok(&WriteReply { size: written })
}

fn kind_of(ft: fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else {
        "other"
    }
}

/// Metadata of a path.
pub(crate) fn stat(call: &Call) -> OpResult {
    let args: StatArgs = call.args("stat arguments")?;
    let meta = if args.follow { fs::metadata(&args.path) } else { fs::symlink_metadata(&args.path) }
        .map_err(|e| OpError::io(format!("stat {}", args.path), &e))?;
    ok(&StatReply {
        kind: kind_of(meta.file_type()).to_string(),
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.mtime(),
    })
}

/// Entries of a directory, sorted by name: each with its mode and size,
/// and a symlink's target (none followed). A name (or target) that is not
/// UTF-8 is sent lossy and marked, for the caller to refuse: the wire's
/// strings can't carry it, and a mangled name must never be used.
pub(crate) fn list_dir(call: &Call) -> OpResult {
    let args: PathArgs = call.args("list_dir arguments")?;
    let what = || format!("list {}", args.path);
    let mut entries = Vec::new();
    for entry in fs::read_dir(&args.path).map_err(|e| OpError::io(what(), &e))? {
        let entry = entry.map_err(|e| OpError::io(what(), &e))?;
        // lstat: the entry itself, never what a symlink points to.
        let meta = match entry.metadata() {
            Ok(m) => Some(m),
            // Gone since the directory was read: not an entry any more.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(_) => None,
        };
        let kind = match &meta {
            Some(m) => kind_of(m.file_type()),
            None => entry.file_type().map(kind_of).unwrap_or("other"),
        };
        let link = if kind == "symlink" { fs::read_link(entry.path()).ok() } else { None };
        let name = entry.file_name();
        entries.push(DirEntry {
            name: name.to_string_lossy().into_owned(),
            kind: kind.to_string(),
            mode: meta.as_ref().map_or(0, |m| m.mode() & 0o7777),
            size: meta.as_ref().map_or(0, |m| m.len()),
            target_lossy: link.as_ref().is_some_and(|t| t.to_str().is_none()),
            target: link.map(|t| t.to_string_lossy().into_owned()),
            lossy: name.to_str().is_none(),
        });
    }
    crate::sort::sort_by(&mut entries, |a, b| a.name < b.name);
    ok(&ListReply { entries })
}

/// Make a directory (or take the one there) and give it exactly `mode`.
pub(crate) fn mkdir(call: &Call) -> OpResult {
    let args: MkdirArgs = call.args("mkdir arguments")?;
    let path = Path::new(&args.path);
    let mode = args.mode & 0o7777;
    if args.parents {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| OpError::io(format!("mkdir {}", parent.display()), &e))?;
        }
    }
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(OpError::io(format!("mkdir {}", args.path), &e)),
    }
    // The mode is set through the directory itself, opened without
    // following a symlink: a link put there (now or in a race) is refused,
    // never chmodded through.
    let opened = OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(path);
    let not_dir = || OpError::new("already_exists", format!("mkdir {}: exists and is not a directory", args.path));
    match opened {
        Ok(dir) => {
            if dir.metadata().map_err(|e| OpError::io(format!("stat {}", args.path), &e))?.mode() & 0o7777 != mode {
                dir.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(|e| OpError::io(format!("chmod {}", args.path), &e))?;
            }
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => return Err(not_dir()),
        // A directory we own but may not read (mode 0): by its path, once
        // lstat says it is a directory.
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            let meta = fs::symlink_metadata(path).map_err(|e| OpError::io(format!("stat {}", args.path), &e))?;
            if !meta.is_dir() {
                return Err(not_dir());
            }
            if meta.mode() & 0o7777 != mode {
                fs::set_permissions(path, fs::Permissions::from_mode(mode))
                    .map_err(|e| OpError::io(format!("chmod {}", args.path), &e))?;
            }
        }
        Err(e) => return Err(OpError::io(format!("open {}", args.path), &e)),
    }
    ok(&Empty {})
}

/// Make a symlink at a temporary name beside `path`, then rename it over
/// `path`: whoever looks sees the old entry or the new link, never none.
pub(crate) fn symlink(call: &Call) -> OpResult {
    let args: SymlinkArgs = call.args("symlink arguments")?;
    let target = Path::new(&args.path);
    let name =
        target.file_name().ok_or_else(|| OpError::new("invalid", format!("symlink {}: not a file path", args.path)))?;
    let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = TempFile::beside(call, dir, name);
    std::os::unix::fs::symlink(&args.target, &tmp.path)
        .map_err(|e| OpError::io(format!("symlink {}", tmp.path.display()), &e))?;
    fs::rename(&tmp.path, target).map_err(|e| OpError::io(format!("rename into {}", args.path), &e))?;
    tmp.keep = true;
    ok(&Empty {})
}

/// A symlink's target.
pub(crate) fn read_link(call: &Call) -> OpResult {
    let args: PathArgs = call.args("read_link arguments")?;
    let target = fs::read_link(&args.path).map_err(|e| OpError::io(format!("read link {}", args.path), &e))?;
    ok(&ReadLinkReply { lossy: target.to_str().is_none(), target: target.to_string_lossy().into_owned() })
}

/// Remove a file, a symlink, an empty directory, or (recursive) a tree.
pub(crate) fn remove(call: &Call) -> OpResult {
    let args: RemoveArgs = call.args("remove arguments")?;
    let what = || format!("remove {}", args.path);
    let meta = fs::symlink_metadata(&args.path).map_err(|e| OpError::io(what(), &e))?;
    let result = if meta.is_dir() {
        if args.recursive {
            fs::remove_dir_all(&args.path)
        } else {
            fs::remove_dir(&args.path)
        }
    } else {
        fs::remove_file(&args.path)
    };
    result.map_err(|e| OpError::io(what(), &e))?;
    ok(&Empty {})
}
