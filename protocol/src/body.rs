//! Message bodies: the miniserde JSON carried by control messages and calls.
//!
//! # Calls
//!
//! A call is a `CALL_FUNCTION` message whose JSON body names the operation in
//! its `op` field (see [`CallOp`]) next to that operation's own arguments;
//! `reply_to` names the caller's handle *R*. The callee answers on *R*:
//!
//! * ops without bulk data send one message: the result JSON, flagged `END`;
//! * streaming ops (`exec`, `read_file`, `write_file`) first send
//!   [`StreamOpen`] naming their own handle *S*, then bulk bytes as `BINARY`
//!   messages in either direction (caller → *S*, callee → *R*, or to the
//!   `stderr_handle` an `exec` names), each direction flow-controlled by
//!   cumulative [`Ack`]s sent back by its receiver, the caller's last chunk
//!   flagged `END`; the callee ends with the result JSON flagged `END`.
//!
//! A failed operation ends with an [`ErrorReply`] (flagged `END`); an
//! undeliverable message gets a `DEAD` reply whose body is the reason as text.

use crate::json_struct;
use miniserde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bulk bytes travel in chunks of at most this many bytes.
pub const CHUNK_SIZE: usize = 128 * 1024;
/// A sender may have at most this many unacknowledged bytes in flight.
pub const WINDOW: u64 = 8 * CHUNK_SIZE as u64;

/// The agent's first message (`HELLO`): who answered the bootstrap.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Hello {
    /// Agent version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Process id of the agent on its host.
    pub pid: u32,
    /// The agent's own architecture, spore's name for it (`x86_64`,
    /// `aarch64`, `armv7`).
    pub arch: String,
    /// The context id the agent was started as.
    pub context_id: u32,
}

/// The part of every call body that names the operation.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CallOp {
    /// Operation name: `ping`, `info`, `exec`, ...
    pub op: String,
}

/// An empty JSON object: the arguments of `ping`, `info`, and many results.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Empty {}

/// Result of `info`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct InfoReply {
    /// Context path in the tree, e.g. `local/local`.
    pub name: String,
    /// Context id.
    pub context_id: u32,
    /// Host name.
    pub hostname: String,
    /// The agent's own architecture, spore's name for it (`x86_64`,
    /// `aarch64`, `armv7`): the image the bootstrap chose.
    pub arch: String,
    /// The kernel's machine name (`uname -m`; under emulation, the
    /// emulated one).
    pub machine: String,
    /// Kernel name and release, e.g. `Linux 6.1.0`.
    pub kernel: String,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Agent process id.
    pub pid: u32,
    /// Agent version.
    pub version: String,
}

/// Arguments of `exec`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ExecArgs {
    /// Always `"exec"`.
    pub op: String,
    /// Program and arguments; the program is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Variables set (or overridden) in the command's environment.
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory.
    pub cwd: Option<String>,
    /// When true the caller streams stdin as `BINARY` chunks to the callee's
    /// stream handle; otherwise stdin is `/dev/null`.
    pub stdin: bool,
    /// Kill the command's process group after this many milliseconds.
    pub timeout_ms: Option<u64>,
    /// Send output as it is produced; otherwise it is collected and sent
    /// when the command has exited.
    pub stream: bool,
    /// Caller handle that receives stderr chunks (stdout goes to `reply_to`).
    pub stderr_handle: u32,
    /// A script for the command to read: the callee puts it in an anonymous
    /// file (nothing on disk, nothing left behind) that the command finds
    /// open, read-only, as its fd 3 (`/dev/fd/3`, [`SCRIPT_PATH`]); argv
    /// names its interpreter, e.g. `["/bin/sh", "/dev/fd/3", "arg"]`. At
    /// most [`MAX_SCRIPT`] bytes. When the program (the interpreter) can't
    /// be started the call fails with kind `no_interpreter` (not found) or
    /// `bad_interpreter` (any other reason), its message as for any
    /// `exec` (`exec ARGV: reason`), for the caller to tell apart from the script's own failures (and
    /// end as a shell would: 127, 126).
    pub script: Option<String>,
}

/// Where an `exec` with a [`ExecArgs::script`] finds it.
pub const SCRIPT_PATH: &str = "/dev/fd/3";

/// The largest [`ExecArgs::script`]: 4 MiB. Scripts are source code; the
/// bound keeps one call's body (up to 6 bytes of JSON per byte of script,
/// 24 MiB) far inside the default frame limit (128 MiB), and a run on many
/// targets, which holds a copy of the call per target until it is sent,
/// within reason.
pub const MAX_SCRIPT: usize = 4 << 20;

/// Result of `exec`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ExecReply {
    /// Exit code, when the command exited.
    pub status: Option<i32>,
    /// Signal number, when the command was killed by one.
    pub signal: Option<i32>,
    /// The timeout expired and the process group was killed.
    pub timed_out: bool,
    /// Bytes of stdout sent.
    pub stdout_len: u64,
    /// Bytes of stderr sent.
    pub stderr_len: u64,
}

/// Arguments of `read_file`, `list_dir`, and (with `op`) other path ops.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct PathArgs {
    /// Operation name.
    pub op: String,
    /// Remote path.
    pub path: String,
}

/// Result of `read_file` (after the data chunks).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ReadReply {
    /// Bytes sent.
    pub size: u64,
    /// Permission bits of the file.
    pub mode: u32,
}

/// Arguments of `write_file`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct WriteArgs {
    /// Always `"write_file"`.
    pub op: String,
    /// Destination path; written to a temporary name beside it, then renamed.
    pub path: String,
    /// Permission bits; default 0644 (or the existing file's).
    pub mode: Option<u32>,
}

/// Result of `write_file`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct WriteReply {
    /// Bytes written.
    pub size: u64,
}

/// Arguments of `fanout_write`: the caller streams one file (as to
/// `write_file`) and the callee writes it to each of `targets`, every one a
/// context below it, sending each byte once down each of its own streams.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct FanoutArgs {
    /// Always `"fanout_write"`.
    pub op: String,
    /// Destination path on every target (atomic rename on each).
    pub path: String,
    /// Permission bits, as for `write_file`.
    pub mode: Option<u32>,
    /// The destination contexts: descendants of the callee, no repeats.
    pub targets: Vec<u32>,
}

/// How one destination of a `fanout_write` ended.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct FanoutResult {
    /// The destination context.
    pub id: u32,
    /// Bytes written, on success.
    pub size: Option<u64>,
    /// Why it failed, naming the path (and the context, when it was lost).
    pub error: Option<String>,
    /// The failure's class, as in [`ErrorReply`], plus `disconnected` (the
    /// target or a hop to it went away), `dead` (a router could not deliver
    /// to it), `timeout` (silent too long) and `protocol` (a reply that
    /// makes no sense).
    pub kind: Option<String>,
}

/// Result of `fanout_write`: one entry per target, in the order given.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct FanoutReply {
    /// Per destination.
    pub results: Vec<FanoutResult>,
}

/// Arguments of `stat`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct StatArgs {
    /// Always `"stat"`.
    pub op: String,
    /// Remote path.
    pub path: String,
    /// Follow a final symlink.
    pub follow: bool,
}

/// Result of `stat`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct StatReply {
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// One entry of a `list_dir` result.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct DirEntry {
    /// File name; see `lossy`.
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    /// Permission bits (0 if the entry could not be examined).
    pub mode: u32,
    /// Size in bytes, of the entry itself (a symlink's: its target's
    /// length).
    pub size: u64,
    /// A symlink's target; see `target_lossy`.
    pub target: Option<String>,
    /// The name is not UTF-8: `name` shows it with U+FFFD in place of the
    /// bad bytes, and can't name the file in a call.
    pub lossy: bool,
    /// The symlink's target is not UTF-8, likewise.
    pub target_lossy: bool,
}

/// Result of `list_dir`, sorted by name.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ListReply {
    /// Entries, without `.` and `..`.
    pub entries: Vec<DirEntry>,
}

/// Arguments of `remove`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct RemoveArgs {
    /// Always `"remove"`.
    pub op: String,
    /// Remote path.
    pub path: String,
    /// Remove a directory and everything under it.
    pub recursive: bool,
}

/// Arguments of `read_file`. A [`PathArgs`] is one too: `nofollow` absent.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ReadArgs {
    /// Always `"read_file"`.
    pub op: String,
    /// Remote path.
    pub path: String,
    /// Refuse a symlink (never followed) and anything but a regular file:
    /// for tree copies, and so a fifo can't hold the call.
    pub nofollow: Option<bool>,
}

/// Arguments of `mkdir`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct MkdirArgs {
    /// Always `"mkdir"`.
    pub op: String,
    /// The directory. An existing directory is taken as it is (but for
    /// its mode); a symlink there, or anything else, is an error.
    pub path: String,
    /// Permission bits it ends with, whether made or found (the umask does
    /// not apply).
    pub mode: u32,
    /// Make missing parents too (as `mkdir -p`, with the default mode).
    pub parents: bool,
}

/// Arguments of `symlink`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct SymlinkArgs {
    /// Always `"symlink"`.
    pub op: String,
    /// Where the link goes: made at a temporary name beside it, then
    /// renamed over whatever file or link is there (not a directory).
    pub path: String,
    /// What it points to, as given (not checked, not resolved).
    pub target: String,
}

/// Result of `read_link`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ReadLinkReply {
    /// The symlink's target; see `lossy`.
    pub target: String,
    /// The target is not UTF-8: `target` shows it with U+FFFD in place of
    /// the bad bytes.
    pub lossy: bool,
}

/// Arguments of `connect`: start a child context from the callee.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ConnectArgs {
    /// Always `"connect"`.
    pub op: String,
    /// Connection method: `local`, `ssh`, `sudo`, `su`, `doas`, `docker`,
    /// `podman`.
    pub method: String,
    /// The ssh host, or the container.
    pub host: Option<String>,
    /// The ssh login, or the user to become (default root), or the
    /// container user.
    pub user: Option<String>,
    /// The ssh port.
    pub port: Option<u16>,
    /// An ssh config file (`ssh -F`).
    pub ssh_config: Option<String>,
    /// ssh options (`ssh -o`), in order.
    pub ssh_options: Vec<String>,
    /// The password for a become method's prompt. Travels only inside the
    /// protocol; never on a command line, never logged.
    pub password: Option<String>,
    /// Id the master allocated for the new context.
    pub context_id: u32,
    /// Path of the new context in the tree, e.g. `local/local`.
    pub name: String,
    /// Milliseconds to wait for the child's hello.
    pub connect_timeout_ms: u64,
    /// The agent images the master has, one per architecture: the
    /// bootstrap script picks the target's, and the image travels down
    /// the tree on demand ([`crate::handle::GET_IMAGE`]).
    pub images: Vec<ImageInfo>,
}

/// One agent image, as the bootstrap script knows it.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageInfo {
    /// spore's name for its architecture: `x86_64`, `aarch64`, `armv7`.
    pub arch: String,
    /// Lower-case hex SHA-256 of the binary: its name in the cache.
    pub hash: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its POSIX `cksum`.
    pub cksum: u32,
    /// The size of its gzip form (0: none; it then travels plain).
    pub gz_size: u64,
}

/// `GET_IMAGE`: the image named by `hash`, gzipped or plain.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageRequest {
    /// [`ImageInfo::hash`].
    pub hash: String,
    /// The gzip form, not the binary.
    pub gz: bool,
}

/// Result of `connect`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ConnectReply {
    /// The child's hello.
    pub hello: Hello,
    /// The agent image was uploaded (cache miss).
    pub uploaded: bool,
    /// Bytes of images the connect wrote to the connection (0: a hit).
    pub image_bytes: u64,
}

/// First message of a streaming op: the callee's handle for data and acks.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StreamOpen {
    /// Callee handle.
    pub stream: u32,
}

/// Flow control: total bytes of the peer's data consumed so far.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Ack {
    /// Cumulative bytes consumed.
    pub ack: u64,
}

/// A failed operation's result.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ErrorReply {
    /// Human-readable cause, naming the path or command.
    pub error: String,
    /// Short machine-readable class: `not_found`, `permission_denied`,
    /// `invalid`, `io`, `unsupported`, `connect`, `shutting_down`;
    /// `no_interpreter`, `bad_interpreter` (see [`ExecArgs::script`]).
    pub kind: String,
}

/// Probe for telling results and [`ErrorReply`] apart.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct MaybeError {
    /// Present on failure.
    pub error: Option<String>,
    /// Present on failure.
    pub kind: Option<String>,
}

/// Probe for telling [`StreamOpen`] and [`Ack`] apart from other JSON.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct Control {
    /// Set on a [`StreamOpen`].
    pub stream: Option<u32>,
    /// Set on an [`Ack`].
    pub ack: Option<u64>,
}

/// `ADD_ROUTE`: a context became reachable through the sending stream.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AddRoute {
    /// The new context.
    pub id: u32,
    /// The context that started it (its parent in the tree).
    pub parent: u32,
    /// Its path in the tree.
    pub name: String,
}

/// `DEL_ROUTE`: a context is gone.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DelRoute {
    /// The lost context.
    pub id: u32,
    /// Why, e.g. `stream closed`.
    pub reason: String,
}

/// `ALLOCATE_ID` notice, sent by the master down the path to `parent`
/// before it asks `parent` to connect: every router on the way (and
/// `parent` itself) then accepts `id` once, announced by `parent`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AllocatedId {
    /// The id the master allocated for the new context.
    pub id: u32,
    /// The context that will start it.
    pub parent: u32,
}

/// `FORWARD_LOG`: one log record from a context.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// 1 = error … 5 = trace, as `log::Level`.
    pub level: u8,
    /// The context's path in the tree.
    pub name: String,
    /// The record's target (module path, or `stdout`/`stderr` for captured
    /// writes).
    pub target: String,
    /// The message.
    pub msg: String,
}

json_struct! {
    Hello { version, pid, arch, context_id }
    CallOp { op }
    Empty {}
    InfoReply { name, context_id, hostname, arch, machine, kernel, uid, gid, pid, version }
    ExecArgs { op, argv, env, cwd, stdin, timeout_ms, stream, stderr_handle, script }
    ExecReply { status, signal, timed_out, stdout_len, stderr_len }
    PathArgs { op, path }
    ReadReply { size, mode }
    WriteArgs { op, path, mode }
    WriteReply { size }
    FanoutArgs { op, path, mode, targets }
    FanoutResult { id, size, error, kind }
    FanoutReply { results }
    StatArgs { op, path, follow }
    StatReply { kind, size, mode, uid, gid, mtime }
    DirEntry { name, kind, mode, size, target, lossy, target_lossy }
    ListReply { entries }
    RemoveArgs { op, path, recursive }
    ConnectArgs { op, method, host, user, port, ssh_config, ssh_options, password, context_id, name, connect_timeout_ms, images }
    ImageInfo { arch, hash, size, cksum, gz_size }
    ImageRequest { hash, gz }
    ConnectReply { hello, uploaded, image_bytes }
    StreamOpen { stream }
    Ack { ack }
    ErrorReply { error, kind }
    MaybeError { error, kind }
    Control { stream, ack }
    AddRoute { id, parent, name }
    DelRoute { id, reason }
    AllocatedId { id, parent }
    LogRecord { level, name, target, msg }
    ReadArgs { op, path, nofollow }
    MkdirArgs { op, path, mode, parents }
    SymlinkArgs { op, path, target }
    ReadLinkReply { target, lossy }
}

/// Serialize a body to JSON bytes, with the [`json`](crate::json) codec:
/// the same bytes as [`to_json`], from a smaller binary (the agent's).
pub fn encode<T: crate::json::Encode + ?Sized>(value: &T) -> Vec<u8> {
    crate::json::to_vec(value)
}

/// Parse a JSON body with the [`json`](crate::json) codec, as [`from_json`]
/// does; the error says what was expected.
pub fn decode<T: crate::json::Decode>(body: &[u8], what: &'static str) -> Result<T, BodyError> {
    crate::json::from_slice(body).map_err(|_| BodyError { what })
}

/// Serialize a body to JSON bytes.
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    miniserde::json::to_string(value).into_bytes()
}

/// Parse a JSON body; the error says what was expected.
pub fn from_json<T: Deserialize>(body: &[u8], what: &'static str) -> Result<T, BodyError> {
    let text = std::str::from_utf8(body).map_err(|_| BodyError { what })?;
    miniserde::json::from_str(text).map_err(|_| BodyError { what })
}

/// A body that does not decode as the expected JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyError {
    /// What the body should have been.
    pub what: &'static str,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "body does not decode as {}", self.what)
    }
}

impl std::error::Error for BodyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_ignore_unknown_fields() {
        let exec = ExecArgs { op: "exec".into(), argv: vec!["true".into()], ..Default::default() };
        let body = to_json(&exec);
        let op: CallOp = from_json(&body, "call").unwrap();
        assert_eq!(op.op, "exec");
        let back: ExecArgs = from_json(&body, "exec").unwrap();
        assert_eq!(back, exec);
        // A script of any text, control characters and all, as both codecs
        // write and read it; a body without the field (an older master's)
        // has none.
        let text: String = (0u8..128).map(char::from).chain("é\u{1F600}".chars()).collect();
        let exec = ExecArgs { script: Some(format!("#!/bin/sh\n{text}")), ..exec };
        let body = to_json(&exec);
        assert_eq!(encode(&exec), body);
        assert_eq!(decode::<ExecArgs>(&body, "exec").unwrap(), exec);
        let old = br#"{"op":"exec","argv":["true"],"stdin":false,"stream":false,"stderr_handle":0}"#;
        assert_eq!(decode::<ExecArgs>(old, "exec").unwrap().script, None);
        assert_eq!(from_json::<ExecArgs>(old, "exec").unwrap().script, None);
        let probe: MaybeError = from_json(&to_json(&Empty {}), "reply").unwrap();
        assert_eq!(probe.error, None);
        let ctl: Control = from_json(&to_json(&Ack { ack: 7 }), "control").unwrap();
        assert_eq!((ctl.stream, ctl.ack), (None, Some(7)));
    }

    #[test]
    fn fanout_bodies_read_and_write_as_miniserde_does() {
        let args = FanoutArgs {
            op: "fanout_write".into(),
            path: "/tmp/x \"y\"".into(),
            mode: Some(0o640),
            targets: vec![3, 4],
        };
        let reply = FanoutReply {
            results: vec![
                FanoutResult { id: 3, size: Some(u64::MAX), error: None, kind: None },
                FanoutResult {
                    id: 4,
                    size: None,
                    error: Some("write /x: No space left\n".into()),
                    kind: Some("io".into()),
                },
            ],
        };
        assert_eq!(encode(&args), to_json(&args));
        assert_eq!(encode(&reply), to_json(&reply));
        assert_eq!(decode::<FanoutArgs>(&to_json(&args), "fanout"), Ok(args));
        assert_eq!(decode::<FanoutReply>(&to_json(&reply), "fanout reply"), Ok(reply.clone()));
        assert_eq!(from_json::<FanoutReply>(&encode(&reply), "fanout reply"), Ok(reply));
        assert!(decode::<FanoutArgs>(br#"{"op":"fanout_write","path":"x","targets":[-1]}"#, "fanout").is_err());
    }

    #[test]
    fn garbage_is_an_error_naming_the_expectation() {
        let err = from_json::<CallOp>(b"\xff{", "call").unwrap_err();
        assert_eq!(err.to_string(), "body does not decode as call");
        assert!(from_json::<CallOp>(b"{}", "call").is_err());
    }
}
