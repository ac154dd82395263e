//! Directory trees (`put -r`, `get -r`) through real local agents: round
//! trips compared byte for byte and mode for mode, the hostile cases (a
//! remote that lists `..`, a symlink in the destination, names that are
//! not UTF-8), a context dying mid-put, the bounds, and no temporary file
//! left after a failure. Every test checks that it left no process and no
//! fd behind.
//!
//! Two local agents see the same filesystem; each is started from a
//! directory of its own (an agent keeps the cwd it was started in), and
//! the trees are put at a relative path, so each writes its own copy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore::tree::{self, Limits, Source, TreeReport};
use spore::{Context, Error, Hop, Options, Router};
use spore_protocol::sha256;
use spore_tests::{pattern, LeakGuard, Scratch};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What a tree holds, by relative path: nothing followed.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    File { mode: u32, len: u64, sha: [u8; 32] },
    Dir { mode: u32 },
    Link(PathBuf),
    Special,
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

fn walk(path: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
    let meta = fs::symlink_metadata(path).unwrap();
    let mode = meta.mode() & 0o7777;
    let ft = meta.file_type();
    let entry = if ft.is_symlink() {
        Entry::Link(fs::read_link(path).unwrap())
    } else if ft.is_file() {
        Entry::File { mode, len: meta.len(), sha: sha256(&fs::read(path).unwrap()) }
    } else if ft.is_dir() {
        for e in fs::read_dir(path).unwrap() {
            let e = e.unwrap();
            walk(&e.path(), &rel.join(e.file_name()), out);
        }
        Entry::Dir { mode }
    } else {
        Entry::Special
    };
    out.insert(rel.to_path_buf(), entry);
}

/// The snapshot without its special files: what a copy should hold.
fn copyable(snap: BTreeMap<PathBuf, Entry>) -> BTreeMap<PathBuf, Entry> {
    snap.into_iter().filter(|(_, e)| *e != Entry::Special).collect()
}

fn write(path: &Path, data: &[u8], mode: u32) {
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

const DEEP: usize = 200;
const MANY: usize = 1000;
const BIG: usize = (24 << 20) + 7;

/// A tree with one of everything: modes from 0400 to 04755 and 01777, a
/// 0555 directory with contents, an empty directory, symlinks dangling,
/// relative, to a directory outside (never followed) and to themselves,
/// an empty file, a large file, 1000 small files, a tree 200 deep, a fifo.
fn build_source(root: &Path) -> usize {
    fs::create_dir(root).unwrap();
    write(&root.join("plain"), b"hello\n", 0o644);
    write(&root.join("empty"), b"", 0o600);
    write(&root.join("exec"), b"#!/bin/sh\necho hi\n", 0o755);
    write(&root.join("secret"), b"s3cret", 0o400);
    write(&root.join("setuid"), b"suid", 0o4755);
    write(&root.join("big"), &pattern(BIG, 7), 0o640);
    // The longest name there can be: its temporary name must be one too.
    write(&root.join("L".repeat(255)), b"long", 0o644);
    fs::create_dir_all(root.join("ro/sub")).unwrap();
    write(&root.join("ro/inner"), b"inner", 0o444);
    write(&root.join("ro/sub/f"), b"deep inside", 0o644);
    chmod(&root.join("ro/sub"), 0o555);
    chmod(&root.join("ro"), 0o555);
    fs::create_dir(root.join("empty_dir")).unwrap();
    chmod(&root.join("empty_dir"), 0o700);
    fs::create_dir(root.join("sticky")).unwrap();
    chmod(&root.join("sticky"), 0o1777);
    symlink("no/such/target", root.join("dangling")).unwrap();
    symlink("plain", root.join("rel")).unwrap();
    symlink("/etc", root.join("abs_dir")).unwrap();
    symlink("loop", root.join("loop")).unwrap();
    fs::create_dir(root.join("many")).unwrap();
    for i in 0..MANY {
        write(&root.join(format!("many/f{i:04}")), format!("file {i}\n").as_bytes(), 0o644);
    }
    let mut deep = root.join("deep");
    for _ in 0..DEEP {
        deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    write(&deep.join("bottom"), b"the bottom", 0o644);
    mkfifo(&root.join("pipe"));
    // Its regular files.
    5 + 2 + 3 + MANY
}

/// Two local agents, each started in a directory of its own.
fn two_agents(r: &Router, s: &Scratch) -> (Context, Context) {
    let here = std::env::current_dir().unwrap();
    let start_in = |dir: &str, name: &str| {
        fs::create_dir_all(s.0.join(dir)).unwrap();
        std::env::set_current_dir(s.0.join(dir)).unwrap();
        r.connect(&Hop::Local, name).unwrap()
    };
    let a = start_in("a", "local");
    let b = start_in("b", "local2");
    std::env::set_current_dir(here).unwrap();
    (a, b)
}

fn check_report(report: &TreeReport, files: usize) {
    assert_eq!(report.files, files as u64, "{report:?}");
    assert_eq!(report.symlinks, 4, "{report:?}");
    // root, ro, ro/sub, empty_dir, sticky, many, deep and its 200.
    assert_eq!(report.dirs, 7 + DEEP as u64, "{report:?}");
    assert!(report.bytes > BIG as u64, "{report:?}");
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    assert!(report.skipped[0].ends_with("/pipe"), "{report:?}");
}

/// A fan-out writer, as [`tree::FanOut`]s go: the source read once (here
/// into memory), then written to each context.
fn buffered_fan_out(
    contexts: &[Context],
    path: &str,
    source: &mut dyn Read,
    mode: Option<u32>,
) -> Vec<spore::Result<u64>> {
    let mut data = Vec::new();
    source.read_to_end(&mut data).unwrap();
    contexts.iter().map(|ctx| ctx.write_file(path, &mut &data[..], mode)).collect()
}

#[test]
fn put_then_get_keeps_every_byte_mode_and_symlink() {
    let guard = LeakGuard::new();
    let s = Scratch::new("tree-round-trip");
    let src = s.0.join("src");
    let files = build_source(&src);
    let want = copyable(snapshot(&src));
    let r = Router::new().unwrap();
    let (a, b) = two_agents(&r, &s);

    let started = Instant::now();
    let results = tree::put_tree(&[a.clone(), b.clone()], &src, "dst", &tree::write_each);
    let put_took = started.elapsed();
    assert_eq!(results.len(), 2);
    for result in &results {
        check_report(result.as_ref().unwrap(), files);
    }
    assert_eq!(copyable(snapshot(&s.0.join("a/dst"))), want, "the copy put through the first agent");
    assert_eq!(copyable(snapshot(&s.0.join("b/dst"))), want, "the copy put through the second agent");

    // And back, from one of them, into a destination whose parents are
    // made on the way.
    let back = s.0.join("back/from/a");
    let started = Instant::now();
    let report = tree::get_tree(&a, "dst", &back).unwrap();
    let get_took = started.elapsed();
    let mut expected_report = results[0].as_ref().unwrap().clone();
    expected_report.skipped = Vec::new();
    assert_eq!(report, expected_report);
    assert_eq!(copyable(snapshot(&back)), want, "the copy got back");

    // Again over what is there, through a fan-out writer: merged, the same.
    let again = tree::put_tree(&[a.clone(), b.clone()], &src, "dst", &tree::once(&buffered_fan_out));
    for result in &again {
        check_report(result.as_ref().unwrap(), files);
    }
    assert_eq!(copyable(snapshot(&s.0.join("a/dst"))), want);
    assert_eq!(copyable(snapshot(&s.0.join("b/dst"))), want);
    let report = tree::get_tree(&a, "dst", &back).unwrap();
    assert_eq!(report, expected_report);
    assert_eq!(copyable(snapshot(&back)), want);
    eprintln!("put to 2 local agents: {put_took:?}; get: {get_took:?} ({files} files, {} dirs)", report.dirs);

    r.shutdown();
    drop((a, b, r));
    guard.check();
}

#[test]
fn a_read_only_directory_is_filled_by_a_user_who_is_not_root() {
    let guard = LeakGuard::new();
    let s = Scratch::new("tree-not-root");
    let src = s.0.join("src");
    fs::create_dir_all(src.join("ro/sub")).unwrap();
    write(&src.join("ro/f"), b"f", 0o444);
    write(&src.join("ro/sub/g"), b"g", 0o644);
    chmod(&src.join("ro/sub"), 0o555);
    chmod(&src.join("ro"), 0o500);
    let dst = s.0.join("nobody");
    fs::create_dir(&dst).unwrap();
    let chown = std::process::Command::new("chown").args(["nobody", dst.to_str().unwrap()]).status().unwrap();
    assert!(chown.success());
    let r = Router::new().unwrap();
    let root = r.local().unwrap();
    let nobody = root.connect("sudo:nobody").unwrap();
    assert_ne!(nobody.info().unwrap().uid, 0);
    let remote = dst.join("copy").display().to_string();
    let results = tree::put_tree(std::slice::from_ref(&nobody), &src, &remote, &tree::write_each);
    let report = results.into_iter().next().unwrap().unwrap();
    assert_eq!((report.files, report.dirs), (2, 3));
    assert_eq!(copyable(snapshot(&dst.join("copy"))), copyable(snapshot(&src)));
    assert_eq!(fs::metadata(dst.join("copy")).unwrap().uid(), fs::metadata(&dst).unwrap().uid());
    // Put again over it: the read-only directories are opened up for the
    // copy, and closed again.
    let again = tree::put_tree(std::slice::from_ref(&nobody), &src, &remote, &tree::write_each);
    assert_eq!(again[0].as_ref().unwrap().files, 2);
    assert_eq!(copyable(snapshot(&dst.join("copy"))), copyable(snapshot(&src)));
    r.shutdown();
    drop((root, nobody, r));
    guard.check();
}

fn liar_router() -> Router {
    let image = std::fs::read(spore_tests::target_dir().join("debug/spore-liar-agent")).unwrap();
    Router::with_options(Options { agent_image: Some(image), ..Options::default() }).unwrap()
}

#[test]
fn a_remote_that_lists_hostile_names_is_refused_before_anything_is_written() {
    let guard = LeakGuard::new();
    let s = Scratch::new("tree-liar");
    let r = liar_router();
    let ctx = r.local().unwrap();
    for (case, says) in [
        ("lie-dotdot", "\"..\", which is not a plain name"),
        ("lie-dot", "\".\", which is not a plain name"),
        ("lie-empty", "\"\", which is not a plain name"),
        ("lie-slash", "\"a/../../escape\", which is not a plain name"),
        ("lie-nul", "\"a\\0b\", which is not a plain name"),
        ("lie-twice", "lists \"x\" twice"),
        ("lie-lossy", "is not UTF-8"),
        ("lie-target-lossy", "is not UTF-8"),
        ("lie-no-target", "its target is unknown"),
    ] {
        let remote = s.0.join("remote").join(case);
        fs::create_dir_all(&remote).unwrap();
        let dest = s.0.join("dest").join(case);
        let err = tree::get_tree(&ctx, remote.to_str().unwrap(), &dest).unwrap_err();
        let text = err.to_string();
        assert!(matches!(&err, Error::Remote { kind, .. } if kind == "invalid"), "{case}: {text}");
        assert!(text.starts_with("local: get -r"), "{case}: {text}");
        assert!(text.contains(says), "{case}: {text}");
        assert!(text.contains(case), "{case}: the error names the directory: {text}");
        assert!(!dest.exists(), "{case}: nothing is written");
    }
    let left: Vec<_> = fs::read_dir(&s.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "only the remote trees: {left:?}");
    r.shutdown();
    drop((ctx, r));
    guard.check();
}

#[test]
fn a_file_gone_while_several_are_downloaded_fails_the_get_and_leaves_no_temporary() {
    let guard = LeakGuard::new();
    let s = Scratch::new("tree-gone");
    let r = liar_router();
    let ctx = r.local().unwrap();
    // Listed: f00 to f39; there: all but f25.
    let remote = s.0.join("lie-missing");
    fs::create_dir(&remote).unwrap();
    for i in (0..40).filter(|&i| i != 25) {
        write(&remote.join(format!("f{i:02}")), &pattern(200_000, i), 0o644);
    }
    let dest = s.0.join("dest");
    let err = tree::get_tree(&ctx, remote.to_str().unwrap(), &dest).unwrap_err();
    assert!(matches!(&err, Error::Remote { kind, .. } if kind == "not_found"), "{err}");
    assert!(err.to_string().contains("lie-missing/f25"), "{err}");
    let left: Vec<_> = fs::read_dir(&dest).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(left.iter().all(|n| n.starts_with('f') && n.len() == 3), "only whole files: {left:?}");
    for name in &left {
        assert_eq!(fs::read(dest.join(name)).unwrap(), fs::read(remote.join(name)).unwrap(), "{name}");
    }
    r.shutdown();
    drop((ctx, r));
    guard.check();
}

#[test]
fn a_symlink_in_the_destination_is_never_written_through() {
    let guard = LeakGuard::new();
    let s = Scratch::new("tree-dest-link");
    let src = s.0.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    write(&src.join("sub/f"), b"payload", 0o644);
    write(&src.join("file"), b"file", 0o644);
    let elsewhere = s.0.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    write(&elsewhere.join("keep"), b"untouched", 0o644);
    let r = Router::new().unwrap();
    let ctx = r.local().unwrap();
    let remote = src.to_str().unwrap();

    // The destination itself a symlink to a directory.
    let dest = s.0.join("dest");
    symlink(&elsewhere, &dest).unwrap();
    let err = tree::get_tree(&ctx, remote, &dest).unwrap_err().to_string();
    assert!(err.contains("dest") && err.contains("is not a directory"), "{err}");
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 1, "nothing written through the symlink");
    fs::remove_file(&dest).unwrap();

    // A symlink inside it where the tree has a directory.
    fs::create_dir(&dest).unwrap();
    symlink(&elsewhere, dest.join("sub")).unwrap();
    let err = tree::get_tree(&ctx, remote, &dest).unwrap_err().to_string();
    assert!(err.contains("dest/sub") && err.contains("never followed"), "{err}");
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 1, "nothing written through the symlink");
    assert_eq!(fs::read(dest.join("file")).unwrap(), b"file", "what came before the refusal is whole");
    fs::remove_file(dest.join("sub")).unwrap();

    // A symlink where the tree has a file: replaced, not followed.
    fs::remove_file(dest.join("file")).unwrap();
    symlink(elsewhere.join("keep"), dest.join("file")).unwrap();
    tree::get_tree(&ctx, remote, &dest).unwrap();
    assert_eq!(fs::read(elsewhere.join("keep")).unwrap(), b"untouched");
    assert!(fs::symlink_metadata(dest.join("file")).unwrap().is_file());
    assert_eq!(fs::read(dest.join("sub/f")).unwrap(), b"payload");

    // get_file too replaces a symlink at its destination.
    let single = s.0.join("single");
    symlink(elsewhere.join("keep"), &single).unwrap();
    assert_eq!(tree::get_file(&ctx, &format!("{remote}/sub/f"), &single).unwrap(), 7);
    assert_eq!(fs::read(elsewhere.join("keep")).unwrap(), b"untouched");
    assert_eq!(fs::read(&single).unwrap(), b"payload");

    // On the remote side, a put does not follow one either: a symlink
    // where the tree has a directory is an error naming it.
    let remote_dst = s.0.join("remote_dst");
    fs::create_dir(&remote_dst).unwrap();
    symlink(&elsewhere, remote_dst.join("sub")).unwrap();
    let results = tree::put_tree(std::slice::from_ref(&ctx), &src, remote_dst.to_str().unwrap(), &tree::write_each);
    let err = results.into_iter().next().unwrap().unwrap_err().to_string();
    assert!(err.starts_with("local: ") && err.contains("remote_dst/sub") && err.contains("not a directory"), "{err}");
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 1, "nothing written through the symlink");

    r.shutdown();
    drop((ctx, r));
    guard.check();
}

#[test]
fn names_that_are_not_utf8_are_refused_on_either_side() {
    let guard = LeakGuard::new();
    let s = Scratch::new("tree-not-utf8");
    let r = Router::new().unwrap();
    let (a, b) = two_agents(&r, &s);
    let bad = OsStr::from_bytes(b"caf\xe9");

    // A local name: refused for every target, nothing sent.
    let src = s.0.join("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    write(&src.join("dir").join(bad), b"x", 0o644);
    let results = tree::put_tree(&[a.clone(), b.clone()], &src, "dst", &tree::write_each);
    for result in results {
        let err = result.unwrap_err().to_string();
        assert!(err.contains("src/dir/caf\\xe9") && err.contains("not UTF-8"), "{err}");
    }
    assert!(!s.0.join("a/dst").exists() && !s.0.join("b/dst").exists());

    // A local symlink's target.
    fs::remove_file(src.join("dir").join(bad)).unwrap();
    symlink(bad, src.join("dir/link")).unwrap();
    let results = tree::put_tree(std::slice::from_ref(&a), &src, "dst", &tree::write_each);
    let err = results.into_iter().next().unwrap().unwrap_err().to_string();
    assert!(err.contains("src/dir/link: its target caf\\xe9") && err.contains("not UTF-8"), "{err}");

    // A remote name, and a remote symlink's target.
    let remote = s.0.join("remote");
    fs::create_dir_all(remote.join("in")).unwrap();
    write(&remote.join("in").join(bad), b"x", 0o644);
    symlink(bad, remote.join("in/link")).unwrap();
    // The agent marks them; the name it sends is only the lossy form.
    let listed = a.list_dir(remote.join("in").to_str().unwrap()).unwrap().entries;
    let marks: Vec<_> =
        listed.iter().map(|e| (e.name.as_str(), e.lossy, e.target.as_deref(), e.target_lossy)).collect();
    assert_eq!(marks, [("caf\u{fffd}", true, None, false), ("link", false, Some("caf\u{fffd}"), true)]);
    fs::remove_file(remote.join("in/link")).unwrap();
    let dest = s.0.join("dest");
    let err = tree::get_tree(&a, remote.to_str().unwrap(), &dest).unwrap_err().to_string();
    assert!(err.contains("a name in") && err.contains("remote/in is not UTF-8"), "{err}");
    assert!(!dest.exists());
    fs::remove_file(remote.join("in").join(bad)).unwrap();
    symlink(bad, remote.join("in/link")).unwrap();
    let err = tree::get_tree(&a, remote.to_str().unwrap(), &dest).unwrap_err().to_string();
    assert!(err.contains("the target of") && err.contains("remote/in/link is not UTF-8"), "{err}");
    assert!(!dest.exists());

    r.shutdown();
    drop((a, b, r));
    guard.check();
}

#[test]
fn one_context_dying_mid_put_leaves_the_other_to_finish() {
    let guard = LeakGuard::new();
    let s = Scratch::new("tree-dying");
    let src = s.0.join("src");
    fs::create_dir_all(src.join("many")).unwrap();
    for i in 0..300 {
        write(&src.join(format!("many/f{i:03}")), format!("{i}").as_bytes(), 0o644);
    }
    chmod(&src.join("many"), 0o555);
    let r = Router::new().unwrap();
    let (a, b) = two_agents(&r, &s);
    let b_pid = b.info().unwrap().pid;
    let files = AtomicUsize::new(0);
    let killing = |contexts: &[Context], path: &str, open: &mut Source<'_>, mode| {
        if files.fetch_add(1, Ordering::SeqCst) + 1 == 100 {
            // SAFETY: kill has no memory effects; the pid is our agent's.
            unsafe { libc::kill(b_pid as i32, libc::SIGKILL) };
        }
        tree::write_each(contexts, path, open, mode)
    };
    let started = Instant::now();
    let results = tree::put_tree(&[a.clone(), b.clone()], &src, "dst", &killing);
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    let mut results = results.into_iter();
    let report = results.next().unwrap().unwrap();
    assert_eq!((report.files, report.dirs), (300, 2));
    assert_eq!(copyable(snapshot(&s.0.join("a/dst"))), copyable(snapshot(&src)));
    let err = results.next().unwrap().unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("local2: ") && text.contains("dst/many/f"), "names the target and the path: {text}");
    assert_eq!(files.load(Ordering::SeqCst), 300, "the other went on to the end");
    // What the dead one made before it died was given its mode (by
    // nobody: its agent is gone); the directory is there, half filled.
    let made = fs::read_dir(s.0.join("b/dst/many")).unwrap().count();
    assert!((90..300).contains(&made), "{made}");
    r.shutdown();
    drop((a, b, r));
    guard.check();
}

/// Temporary names (`.NAME.spore-…`) under `dir`.
fn temps(dir: &Path) -> Vec<PathBuf> {
    snapshot(dir).into_keys().filter(|p| p.to_string_lossy().contains(".spore-")).collect()
}

/// A source that fails after `after` bytes.
struct Failing {
    inner: Box<dyn Read + Send>,
    left: usize,
}

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("the disk under the source went away"));
        }
        let n = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..n])?;
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn nothing_is_left_at_temporary_names_after_a_failure() {
    let guard = LeakGuard::new();
    let s = Scratch::new("tree-temps");
    let src = s.0.join("src");
    fs::create_dir(&src).unwrap();
    write(&src.join("a_small"), b"small", 0o644);
    write(&src.join("big"), &pattern(64 << 20, 3), 0o644);
    let r = Router::new().unwrap();
    let ctx = r.local().unwrap();

    // A put whose source fails part way through the big file.
    let remote = s.0.join("remote");
    let failing = |contexts: &[Context], path: &str, open: &mut Source<'_>, mode| {
        let mut open_failing = || -> std::io::Result<Box<dyn Read + Send>> {
            let inner = open()?;
            Ok(Box::new(Failing { inner, left: if path.ends_with("big") { 3 << 20 } else { usize::MAX } }))
        };
        tree::write_each(contexts, path, &mut open_failing, mode)
    };
    let results = tree::put_tree(std::slice::from_ref(&ctx), &src, remote.to_str().unwrap(), &failing);
    let err = results.into_iter().next().unwrap().unwrap_err().to_string();
    assert!(err.starts_with("local: "), "a local failure names the target too: {err}");
    assert!(err.contains("the disk under the source went away") && err.contains("remote/big"), "{err}");
    assert_eq!(fs::read(remote.join("a_small")).unwrap(), b"small");
    assert!(!remote.join("big").exists());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !temps(&remote).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(temps(&remote), Vec::<PathBuf>::new(), "the agent removed its temporary file");

    // A get whose context dies part way through the big file.
    let victim = r.connect(&Hop::Local, "victim").unwrap();
    let pid = victim.info().unwrap().pid;
    let dest = s.0.join("dest");
    let watcher = {
        let dest = dest.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let partial = fs::read_dir(&dest).ok().into_iter().flatten().flatten().any(|e| {
                    e.file_name().to_string_lossy().contains(".big.spore-") && e.metadata().is_ok_and(|m| m.len() > 0)
                });
                if partial {
                    // SAFETY: kill has no memory effects; the pid is our agent's.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    return true;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            false
        })
    };
    let err = tree::get_tree(&victim, src.to_str().unwrap(), &dest).unwrap_err().to_string();
    assert!(watcher.join().unwrap(), "the download was caught part way: {err}");
    assert!(err.starts_with("victim: "), "{err}");
    assert_eq!(fs::read(dest.join("a_small")).unwrap(), b"small");
    assert!(!dest.join("big").exists());
    assert_eq!(temps(&dest), Vec::<PathBuf>::new());

    // A get whose temporary file is taken away (by remove_temps, as a
    // process ending on a signal would call it).
    let single = s.0.join("single");
    let getting = {
        let (ctx, big, single) = (ctx.clone(), src.join("big").display().to_string(), single.clone());
        std::thread::spawn(move || tree::get_file(&ctx, &big, &single))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let started =
        || fs::read_dir(&s.0).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with(".single.spore-"));
    while !started() {
        assert!(Instant::now() < deadline, "no temporary file appeared");
        std::thread::sleep(Duration::from_millis(1));
    }
    tree::remove_temps();
    let err = getting.join().unwrap().unwrap_err().to_string();
    assert!(err.contains("rename into") && err.contains("single"), "{err}");
    assert_eq!(temps(&s.0), Vec::<PathBuf>::new());
    assert!(!single.exists());

    // get_file into a directory that is not there: an error naming it.
    let missing = s.0.join("no/such/dir/file");
    let err = tree::get_file(&ctx, src.join("a_small").to_str().unwrap(), &missing).unwrap_err().to_string();
    assert!(err.contains("no/such/dir"), "{err}");
    // And from a remote file that is not there: nothing left behind.
    let err = tree::get_file(&ctx, "/no/such/remote/file", &s.0.join("got")).unwrap_err().to_string();
    assert!(err.contains("/no/such/remote/file"), "{err}");
    assert_eq!(temps(&s.0), Vec::<PathBuf>::new());
    assert!(!s.0.join("got").exists());

    r.shutdown();
    drop((ctx, victim, r));
    guard.check();
}

#[test]
fn a_tree_past_its_bounds_is_refused_before_anything_is_written() {
    let guard = LeakGuard::new();
    let s = Scratch::new("tree-bounds");
    let src = s.0.join("src");
    fs::create_dir_all(src.join("a/b/c/d")).unwrap();
    for i in 0..10 {
        write(&src.join(format!("a/f{i}")), b"x", 0o644);
    }
    let r = Router::new().unwrap();
    let ctx = r.local().unwrap();
    let remote = s.0.join("remote");
    let dest = s.0.join("dest");
    let deep = Limits { max_depth: 3, ..Limits::default() };
    let wide = Limits { max_entries: 10, ..Limits::default() };

    let results =
        tree::put_tree_with(std::slice::from_ref(&ctx), &src, remote.to_str().unwrap(), &tree::write_each, &deep);
    let err = results.into_iter().next().unwrap().unwrap_err().to_string();
    assert!(err.contains("src/a/b/c/d") && err.contains("deeper than 3 levels"), "{err}");
    let results =
        tree::put_tree_with(std::slice::from_ref(&ctx), &src, remote.to_str().unwrap(), &tree::write_each, &wide);
    let err = results.into_iter().next().unwrap().unwrap_err().to_string();
    assert!(err.contains("more than 10 entries"), "{err}");
    assert!(!remote.exists());

    let err = tree::get_tree_with(&ctx, src.to_str().unwrap(), &dest, &deep).unwrap_err().to_string();
    assert!(err.contains("src/a/b/c") && err.contains("deeper than 3 levels"), "{err}");
    let err = tree::get_tree_with(&ctx, src.to_str().unwrap(), &dest, &wide).unwrap_err().to_string();
    assert!(err.contains("more than 10 entries"), "{err}");
    assert!(!dest.exists());

    // The default depth (256) is enough for 256 levels, not 257.
    let mut path = s.0.join("deep");
    for _ in 0..256 {
        path.push("d");
    }
    fs::create_dir_all(&path).unwrap();
    let ok = tree::get_tree(&ctx, s.0.join("deep").to_str().unwrap(), &s.0.join("deep_copy")).unwrap();
    assert_eq!(ok.dirs, 257);
    fs::create_dir(path.join("d")).unwrap();
    let err = tree::get_tree(&ctx, s.0.join("deep").to_str().unwrap(), &s.0.join("deep_copy2")).unwrap_err();
    assert!(err.to_string().contains("deeper than 256 levels"), "{err}");
    let results = tree::put_tree(
        std::slice::from_ref(&ctx),
        &s.0.join("deep"),
        s.0.join("deep_put").to_str().unwrap(),
        &tree::write_each,
    );
    assert!(results[0].as_ref().unwrap_err().to_string().contains("deeper than 256 levels"));

    r.shutdown();
    drop((ctx, r));
    guard.check();
}

#[test]
fn a_single_file_a_symlink_or_a_special_file_as_the_root() {
    let guard = LeakGuard::new();
    let s = Scratch::new("tree-roots");
    write(&s.0.join("file"), b"just a file", 0o751);
    symlink("file", s.0.join("link")).unwrap();
    mkfifo(&s.0.join("fifo"));
    let r = Router::new().unwrap();
    let ctx = r.local().unwrap();
    let path = |n: &str| s.0.join(n).display().to_string();

    let report = tree::get_tree(&ctx, &path("file"), &s.0.join("got_file")).unwrap();
    assert_eq!((report.files, report.bytes, report.dirs), (1, 11, 0));
    assert_eq!(fs::metadata(s.0.join("got_file")).unwrap().mode() & 0o7777, 0o751);
    let report = tree::get_tree(&ctx, &path("link"), &s.0.join("got_link")).unwrap();
    assert_eq!(report.symlinks, 1);
    assert_eq!(fs::read_link(s.0.join("got_link")).unwrap(), Path::new("file"));
    let report = tree::get_tree(&ctx, &path("fifo"), &s.0.join("got_fifo")).unwrap();
    assert_eq!(report.skipped, vec![path("fifo")]);
    assert!(!s.0.join("got_fifo").exists());

    let put = |local: &str, remote: &str| {
        tree::put_tree(std::slice::from_ref(&ctx), &s.0.join(local), &path(remote), &tree::write_each)
            .pop()
            .unwrap()
            .unwrap()
    };
    assert_eq!(put("file", "put_file").files, 1);
    assert_eq!(fs::read(s.0.join("put_file")).unwrap(), b"just a file");
    assert_eq!(put("link", "put_link").symlinks, 1);
    assert_eq!(fs::read_link(s.0.join("put_link")).unwrap(), Path::new("file"));
    assert_eq!(put("fifo", "put_fifo").skipped, vec![path("fifo")]);
    assert!(!s.0.join("put_fifo").exists());

    // A symlink or a file put where a directory is: an error, and no
    // temporary left beside it.
    fs::create_dir(s.0.join("a_dir")).unwrap();
    for local in ["link", "file"] {
        let results = tree::put_tree(std::slice::from_ref(&ctx), &s.0.join(local), &path("a_dir"), &tree::write_each);
        let err = results.into_iter().next().unwrap().unwrap_err().to_string();
        assert!(err.contains("rename into") && err.contains("a_dir"), "{err}");
    }
    assert!(fs::read_dir(&s.0).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().contains(".spore-")));

    // list_dir tells each entry's kind, mode, size and a symlink's target.
    let listed = ctx.list_dir(&path("")).unwrap().entries;
    let got: Vec<_> =
        listed.iter().map(|e| (e.name.as_str(), e.kind.as_str(), e.mode, e.size, e.target.as_deref())).collect();
    assert!(got.contains(&("file", "file", 0o751, 11, None)), "{got:?}");
    assert!(got.contains(&("link", "symlink", 0o777, 4, Some("file"))), "{got:?}");
    assert!(got.contains(&("fifo", "other", 0o644, 0, None)), "{got:?}");
    assert!(got.iter().any(|e| e.0 == "a_dir" && e.1 == "dir" && e.4.is_none()), "{got:?}");

    // The agent reads no symlink and no fifo as a tree's file.
    let mut sink = Vec::new();
    let err = ctx.download_nofollow(&path("link"), &mut sink).unwrap_err().to_string();
    assert!(err.contains("is a symlink"), "{err}");
    let err = ctx.download_nofollow(&path("fifo"), &mut sink).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");

    r.shutdown();
    drop((ctx, r));
    guard.check();
}
