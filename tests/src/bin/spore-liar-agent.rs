//! An agent whose `list_dir` lies, for the tree tests: a directory named
//! `lie-<case>` is listed with hostile entries (`..`, a name holding `/`,
//! a name twice, a name marked not UTF-8, ...), as a compromised remote
//! could list it. Every other operation is the real one; `list_dir` of any
//! other directory is an error, so a lie that got past the master's checks
//! shows as a different failure. `lie-missing` lists 40 files, `f00` to
//! `f39`, whether they are there or not.

use spore_agent::{Agent, Call, OpError, OpResult};
use spore_protocol::body::{self, DirEntry, ListReply, PathArgs};

fn entry(name: &str, kind: &str) -> DirEntry {
    DirEntry {
        name: name.into(),
        kind: kind.into(),
        mode: 0o755,
        size: 1,
        target: None,
        lossy: false,
        target_lossy: false,
    }
}

fn list_dir(call: &Call) -> OpResult {
    let args: PathArgs = call.args("list_dir arguments")?;
    let case = args.path.rsplit('/').next().unwrap_or_default();
    let entries = match case {
        "lie-dotdot" => vec![entry("..", "dir")],
        "lie-dot" => vec![entry(".", "dir")],
        "lie-empty" => vec![entry("", "file")],
        "lie-slash" => vec![entry("a/../../escape", "file")],
        "lie-nul" => vec![entry("a\0b", "file")],
        "lie-twice" => {
            vec![DirEntry { target: Some("/".into()), ..entry("x", "symlink") }, entry("x", "dir"), entry("y", "file")]
        }
        "lie-lossy" => vec![DirEntry { lossy: true, ..entry("caf\u{fffd}", "file") }],
        "lie-target-lossy" => {
            vec![DirEntry { target: Some("caf\u{fffd}".into()), target_lossy: true, ..entry("l", "symlink") }]
        }
        "lie-no-target" => vec![entry("l", "symlink")],
        // Files the directory may not hold (a tree changing while copied).
        "lie-missing" => (0..40).map(|i| entry(&format!("f{i:02}"), "file")).collect(),
        _ => return Err(OpError::new("invalid", format!("the liar lists lie-* only, not {}", args.path))),
    };
    Ok(body::encode(&ListReply { entries }))
}

fn main() {
    Agent::new().handler("list_dir", list_dir).run()
}
