//! A fake agent for the shutdown tests: it says a proper hello, then never
//! reads its stdin again and ignores SIGTERM — a context that stops reading
//! its pipe. Only SIGKILL ends it. Started with a name containing
//! `halfclose`, it also closes its stdin (and keeps its stdout open).

use spore_agent::bootstrap::AgentArgs;
use spore_protocol::body::{self, Hello};
use spore_protocol::{handle, Message};
use std::io::Write;

fn main() {
    let Ok(args) = AgentArgs::parse(std::env::args().skip(1)) else {
        std::process::exit(2);
    };
    spore_agent::sys::ignore_signal(libc::SIGTERM);
    let hello = Hello { version: "deaf".into(), pid: std::process::id(), arch: "x86_64".into(), context_id: args.id };
    let mut msg = Message::new(args.parent_ids.last().copied().unwrap_or(0), handle::HELLO, body::to_json(&hello));
    msg.header.src = args.id;
    msg.header.auth = args.id;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&msg.encode());
    let _ = out.flush();
    if args.name.contains("halfclose") {
        // SAFETY: closing our own stdin; nothing else uses fd 0.
        unsafe { libc::close(0) };
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
