//! A `local` context without the bootstrap script: the master is on the
//! host already, so it can check the agent cache itself and run the
//! cached agent directly: no `sh`, no `ls` (two processes of the five a
//! `spore run local -- true` started). The checks are the script's (see
//! `spore_agent::bootstrap`), made on open descriptors: the directory is
//! opened once and judged, the file is opened inside it and judged, and
//! what runs is that open file (`/proc/self/fd/N`), so a rename anywhere
//! after the checks changes nothing. Anything short of a verified copy
//! (none, a stamp that doesn't vouch and a `cksum` that fails, no `/proc`)
//! falls back to the script, which installs.

use spore_agent::images::Images;
use spore_protocol::body::ImageInfo;
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

/// The verified cached agent for this host's architecture, opened, and the
/// path it was found at.
pub(crate) fn find(images: &Images) -> Option<(File, PathBuf)> {
    let info = images.for_arch(spore_agent::images::OWN_ARCH)?;
    if !std::path::Path::new("/proc/self/fd").is_dir() {
        return None;
    }
    let dirs = [
        std::env::var_os("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("spore")),
        std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/spore")),
    ];
    dirs.into_iter().flatten().filter(|d| d.is_absolute()).find_map(|dir| {
        let file = checked(&dir, info)?;
        Some((file, dir.join(format!("spore-agent-{}", info.hash))))
    })
}

/// `openat(dir, name, flags)`.
fn open_at(dir: &File, name: &str, flags: i32) -> Option<File> {
    let name = CString::new(name).ok()?;
    // SAFETY: `dir` is an open descriptor and `name` a NUL-terminated
    // string, both alive for the call; a descriptor returned is ours alone.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    // SAFETY: a non-negative `fd` was just opened and is owned by nobody else.
    (fd >= 0).then(|| unsafe { File::from_raw_fd(fd) })
}

fn euid() -> u32 {
    // SAFETY: geteuid has no side effects and cannot fail.
    unsafe { libc::geteuid() }
}

/// The script's `safe` and `ok`, on descriptors.
fn checked(dir: &std::path::Path, info: &ImageInfo) -> Option<File> {
    let me = euid();
    let d = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(dir).ok()?;
    let dm = d.metadata().ok()?;
    // Ours, writable by nobody else.
    if !dm.is_dir() || dm.uid() != me || dm.mode() & 0o022 != 0 {
        return None;
    }
    // Its parent: ours or root's, writable by nobody else unless sticky.
    let pm = open_at(&d, "..", libc::O_RDONLY | libc::O_DIRECTORY)?.metadata().ok()?;
    if (pm.uid() != me && pm.uid() != 0) || (pm.mode() & 0o022 != 0 && pm.mode() & 0o1000 == 0) {
        return None;
    }
    let name = format!("spore-agent-{}", info.hash);
    let mut file = open_at(&d, &name, libc::O_RDONLY | libc::O_NOFOLLOW)?;
    let fm = file.metadata().ok()?;
    if !fm.is_file() || fm.uid() != me || fm.mode() & 0o022 != 0 || fm.mode() & 0o100 == 0 || fm.size() != info.size {
        return None;
    }
    if stamped(&d, &name, &fm, me) {
        return Some(file);
    }
    // No stamp that vouches: the content itself.
    let mut bytes = Vec::with_capacity(info.size as usize);
    file.read_to_end(&mut bytes).ok()?;
    (spore_protocol::posix_cksum(&bytes) == info.cksum).then_some(file)
}

/// `NAME.ok`: ours (`me`), a regular file, newer than the agent, naming
/// its inode.
fn stamped(d: &File, name: &str, agent: &std::fs::Metadata, me: u32) -> bool {
    let Some(stamp) = open_at(d, &format!("{name}.ok"), libc::O_RDONLY | libc::O_NOFOLLOW) else { return false };
    let Ok(sm) = stamp.metadata() else { return false };
    let newer = (sm.mtime(), sm.mtime_nsec()) > (agent.mtime(), agent.mtime_nsec());
    let mut text = String::new();
    let read = stamp.take(64).read_to_string(&mut text).is_ok();
    sm.is_file() && sm.uid() == me && newer && read && text.trim() == agent.ino().to_string()
}
