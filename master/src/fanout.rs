//! One file to many contexts, each byte crossing each link once:
//! [`write_file_many`].
//!
//! The contexts are grouped by the connection they are reached through. A
//! context alone on its connection gets a plain `write_file`; several behind
//! one hop get one stream to that hop, which fans the bytes out to them
//! (`fanout_write`, recursively further down). All streams run at once, fed
//! from one read of `source`, at the pace of the slowest live target; a
//! target that fails is dropped and reported, the others go on.

use crate::context::Context;
use crate::error::{Error, Result};
use spore_agent::fanout::Fanout;
use spore_protocol::body::{FanoutResult, CHUNK_SIZE};
use std::collections::HashSet;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

/// A target (or a hop) silent this long while data waits for it is dropped.
pub const STALL: Duration = Duration::from_secs(300);

/// Write `source` to `path` on every context (each atomically: a temporary
/// name, then a rename), reading it once. One result per context, in order:
/// the bytes written, or why that target failed (naming it). A context
/// listed twice is written once and gets the same result twice; one of
/// another router gets [`Error::Usage`].
pub fn write_file_many(contexts: &[Context], path: &str, source: &mut dyn Read, mode: Option<u32>) -> Vec<Result<u64>> {
    let Some(first) = contexts.first() else { return Vec::new() };
    let router = first.router();
    let ours = |c: &Context| Arc::ptr_eq(&c.router().inner, &router.inner);
    let mut seen = HashSet::new();
    let ids: Vec<u32> = contexts.iter().filter(|c| ours(c)).map(Context::id).filter(|&id| seen.insert(id)).collect();
    let mut fan = Fanout::open(router.broker(), &ids, path, mode, STALL);
    let mut buf = vec![0u8; CHUNK_SIZE];
    while fan.live() > 0 {
        let n = match source.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                fan.abandon(&format!("reading the upload failed: {e}"));
                let failed = |_: &Context| Err(Error::Local { what: "read the upload".into(), source: copy(&e) });
                return contexts.iter().map(failed).collect();
            }
        };
        if n == 0 {
            break;
        }
        fan.send(buf.get(..n).unwrap_or_default());
    }
    let results = fan.finish();
    contexts
        .iter()
        .map(|c| {
            if !ours(c) {
                return Err(Error::Usage(format!("{}: a context of another router", c.name())));
            }
            match results.iter().find(|r| r.id == c.id()) {
                Some(r) => to_result(c, r),
                None => Err(Error::Protocol { context: c.name().to_string(), message: "no result".into() }),
            }
        })
        .collect()
}

fn copy(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// A target's result as the library reports it, naming the target.
fn to_result(c: &Context, r: &FanoutResult) -> Result<u64> {
    if let (Some(size), None) = (r.size, &r.error) {
        return Ok(size);
    }
    let context = c.name().to_string();
    let message = r.error.clone().unwrap_or_else(|| "failed without a reason".into());
    Err(match r.kind.as_deref().unwrap_or_default() {
        "disconnected" => Error::Disconnected { context, reason: message },
        "dead" => Error::Dead { context, reason: message },
        "timeout" => Error::Timeout { context, what: message },
        "protocol" => Error::Protocol { context, message },
        "shutting_down" => Error::ShuttingDown,
        kind => Error::Remote { context, kind: kind.to_string(), message },
    })
}
