//! File operations: `read_file`, `write_file` (streamed, atomic rename),
//! `stat`, `list_dir`, `remove`.

use super::next_message;
use crate::call::{ok, Call, OpError, OpResult};
use crate::flow::{ack, acked, Outflow};
use spore_protocol::body::{
    DirEntry, Empty, ListReply, PathArgs, ReadReply, RemoveArgs, StatArgs, StatReply, WriteArgs, WriteReply, CHUNK_SIZE,
};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Stream a file to the caller in chunks, as fast as its acks allow.
pub(crate) fn read_file(call: &Call) -> OpResult {
    let args: PathArgs = call.args("read_file arguments")?;
    let mut file = File::open(&args.path).map_err(|e| OpError::io(format!("open {}", args.path), &e))?;
    let meta = file.metadata().map_err(|e| OpError::io(format!("stat {}", args.path), &e))?;
    if meta.is_dir() {
        return Err(OpError::new("invalid", format!("read {}: is a directory", args.path)));
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
    let tmp = TempFile {
        path: dir.join(format!(
            ".{}.spore-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            call.request.header.reply_to
        )),
        keep: false,
        broker: call.broker.clone(),
    };
    call.broker.track_temp(&tmp.path);
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

/// Entries of a directory, sorted by name.
pub(crate) fn list_dir(call: &Call) -> OpResult {
    let args: PathArgs = call.args("list_dir arguments")?;
    let what = || format!("list {}", args.path);
    let mut entries = Vec::new();
    for entry in fs::read_dir(&args.path).map_err(|e| OpError::io(what(), &e))? {
        let entry = entry.map_err(|e| OpError::io(what(), &e))?;
        let kind = entry.file_type().map(kind_of).unwrap_or("other");
        entries.push(DirEntry { name: entry.file_name().to_string_lossy().into_owned(), kind: kind.to_string() });
    }
    crate::sort::sort_by(&mut entries, |a, b| a.name < b.name);
    ok(&ListReply { entries })
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
