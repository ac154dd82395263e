//! A hostile agent for the security tests (`tests/tests/hostile.rs`).
//!
//! Started with a name whose last hop begins with `hostile` (`hostile`,
//! `i/hostile`), it speaks the protocol itself on its raw pipes, with no
//! broker and no router: a proper hello, then a read loop over stdin. It
//! answers `CALL_FUNCTION` messages addressed to it:
//!
//! - `ping`: `{}`, flagged `END`;
//! - `raw`: writes the frames the call names, verbatim, on its stdout (the
//!   parent pipe), then answers `{"written":N}` `END`. The body:
//!
//!   ```json
//!   {"op":"raw","frames":[
//!     {"dst":0,"src":null,"auth":null,"handle":1000,"handle_to":1300,
//!      "reply_to":null,"flags":1,"body":"forged","repeat":null}]}
//!   ```
//!
//!   `dst` and `handle` are required; `src` and `auth` default to this
//!   context's id, `reply_to`, `flags` to 0, `body` to "" (sent as its UTF-8
//!   bytes), `repeat` to 1. With `handle_to` the frame is sprayed to every
//!   handle from `handle` to `handle_to` inclusive; with `repeat` each is
//!   written that many times. Every frame is written, in order, before the
//!   `END` reply;
//! - `stats`: `{"op":"stats","handle":H}` answers what arrived on handle H
//!   (`total`, `dead` and `replies` — those not flagged `DEAD` — and
//!   `with_id`, the replies whose body holds `"id"`), and `impersonated`,
//!   how many calls for *other* contexts were routed to it;
//! - anything else: an `unsupported` error, `END`.
//!
//! A call addressed to another context (routed here after a forged
//! `ADD_ROUTE`) is answered as that context would: an `info`-shaped result
//! flagged `END`, from `src` = the addressed context, hostname
//! `hostile-impersonator`. Every other message is counted and ignored. It
//! exits when its stdin ends, or on `SHUTDOWN` from its parent.
//!
//! With any other name it is an honest agent (the agent library with the
//! built-in operations), so one router whose image is this binary can start
//! honest contexts beside hostile ones, and an honest intermediate — which
//! starts its children with its own image — can start a hostile child.

use miniserde::{Deserialize, Serialize};
use spore_agent::bootstrap::AgentArgs;
use spore_protocol::body::{self, CallOp, ErrorReply, Hello, InfoReply};
use spore_protocol::{handle, Decoder, Message, FLAG_END};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::mpsc;

/// One frame (or a spray of frames) of a `raw` call.
#[derive(Deserialize)]
struct Frame {
    dst: u32,
    src: Option<u32>,
    auth: Option<u32>,
    handle: u32,
    handle_to: Option<u32>,
    reply_to: Option<u32>,
    flags: Option<u8>,
    body: Option<String>,
    repeat: Option<u32>,
}

#[derive(Deserialize)]
struct Raw {
    frames: Vec<Frame>,
}

#[derive(Serialize)]
struct Written {
    written: u64,
}

#[derive(Deserialize)]
struct StatsArgs {
    handle: u32,
}

#[derive(Serialize, Default, Clone, Copy)]
struct Counts {
    total: u64,
    dead: u64,
    replies: u64,
    with_id: u64,
    impersonated: u64,
}

/// At most this many frames per `raw` call (a typo must not fill the disk).
const MAX_FRAMES: u64 = 2_000_000;

struct Hostile {
    args: AgentArgs,
    out: mpsc::Sender<Vec<u8>>,
    seen: HashMap<u32, Counts>,
    impersonated: u64,
}

impl Hostile {
    fn send(&self, msg: &Message) {
        if self.out.send(msg.encode()).is_err() {
            std::process::exit(0);
        }
    }

    /// A message from this context.
    fn reply(&self, to: &Message, body: Vec<u8>, flags: u8) {
        if to.header.reply_to == 0 {
            return;
        }
        let mut msg = Message::new(to.header.src, to.header.reply_to, body);
        msg.header.src = self.args.id;
        msg.header.auth = self.args.id;
        msg.header.flags = flags;
        self.send(&msg);
    }

    fn on_message(&mut self, msg: Message) {
        let parent = self.args.parent_ids.last().copied().unwrap_or(0);
        match msg.header.handle {
            handle::CALL_FUNCTION if msg.header.dst != self.args.id => self.impersonate(&msg),
            handle::CALL_FUNCTION => self.call(&msg),
            handle::SHUTDOWN if msg.header.src == parent => std::process::exit(0),
            h => {
                let c = self.seen.entry(h).or_default();
                c.total += 1;
                if msg.is_dead() {
                    c.dead += 1;
                } else {
                    c.replies += 1;
                    if msg.body.windows(4).any(|w| w == b"\"id\"") {
                        c.with_id += 1;
                    }
                }
            }
        }
    }

    /// Answer a call meant for another context, as that context.
    fn impersonate(&mut self, call: &Message) {
        self.impersonated += 1;
        if call.header.reply_to == 0 {
            return;
        }
        let fake = InfoReply {
            name: "hostile-impersonator".into(),
            context_id: call.header.dst,
            hostname: "hostile-impersonator".into(),
            arch: std::env::consts::ARCH.into(),
            machine: "hostile".into(),
            kernel: "hostile".into(),
            uid: 0,
            gid: 0,
            pid: std::process::id(),
            version: "hostile".into(),
        };
        let mut msg = Message::new(call.header.src, call.header.reply_to, body::to_json(&fake));
        msg.header.src = call.header.dst;
        msg.header.auth = call.header.dst;
        msg.header.flags = FLAG_END;
        self.send(&msg);
    }

    fn call(&mut self, call: &Message) {
        let op = match body::from_json::<CallOp>(&call.body, "a call") {
            Ok(CallOp { op }) => op,
            Err(e) => return self.fail(call, "invalid", e.to_string()),
        };
        match op.as_str() {
            "ping" => self.reply(call, b"{}".to_vec(), FLAG_END),
            "raw" => match body::from_json::<Raw>(&call.body, "raw arguments") {
                Ok(raw) => {
                    let written = self.raw(&raw.frames);
                    self.reply(call, body::to_json(&Written { written }), FLAG_END);
                }
                Err(e) => self.fail(call, "invalid", e.to_string()),
            },
            "stats" => match body::from_json::<StatsArgs>(&call.body, "stats arguments") {
                Ok(a) => {
                    let mut c = self.seen.get(&a.handle).copied().unwrap_or_default();
                    c.impersonated = self.impersonated;
                    self.reply(call, body::to_json(&c), FLAG_END);
                }
                Err(e) => self.fail(call, "invalid", e.to_string()),
            },
            other => self.fail(call, "unsupported", format!("the hostile agent has no operation {other:?}")),
        }
    }

    fn fail(&self, call: &Message, kind: &str, error: String) {
        let body = body::to_json(&ErrorReply { error, kind: kind.into() });
        self.reply(call, body, FLAG_END);
    }

    /// Write the frames of a `raw` call; returns how many.
    fn raw(&self, frames: &[Frame]) -> u64 {
        let mut written = 0u64;
        let mut batch = Vec::new();
        for f in frames {
            let last = f.handle_to.unwrap_or(f.handle).max(f.handle);
            let body = f.body.clone().unwrap_or_default().into_bytes();
            for _ in 0..f.repeat.unwrap_or(1) {
                for h in f.handle..=last {
                    if written >= MAX_FRAMES {
                        break;
                    }
                    let mut msg = Message::new(f.dst, h, body.clone());
                    msg.header.src = f.src.unwrap_or(self.args.id);
                    msg.header.auth = f.auth.unwrap_or(self.args.id);
                    msg.header.reply_to = f.reply_to.unwrap_or(0);
                    msg.header.flags = f.flags.unwrap_or(0);
                    msg.encode_into(&mut batch);
                    written += 1;
                    if batch.len() > 64 * 1024 && self.out.send(std::mem::take(&mut batch)).is_err() {
                        std::process::exit(0);
                    }
                }
            }
        }
        if !batch.is_empty() && self.out.send(batch).is_err() {
            std::process::exit(0);
        }
        written
    }
}

fn main() {
    let args = match AgentArgs::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("spore-hostile-agent: {e}");
            std::process::exit(2);
        }
    };
    let last_hop = args.name.rsplit('/').next().unwrap_or_default();
    if !last_hop.starts_with("hostile") {
        spore_agent::Agent::new().run()
    }
    // Everything we write goes out through one thread, in order, so the
    // read loop never stops reading while a pipe is full.
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let writer = std::thread::spawn(move || {
        let mut out = std::io::stdout().lock();
        while let Ok(bytes) = rx.recv() {
            if out.write_all(&bytes).is_err() {
                std::process::exit(0);
            }
            if out.flush().is_err() {
                std::process::exit(0);
            }
        }
    });
    let hello = Hello {
        version: "hostile".into(),
        pid: std::process::id(),
        arch: std::env::consts::ARCH.into(),
        context_id: args.id,
    };
    let parent = args.parent_ids.last().copied().unwrap_or(0);
    let mut decoder = Decoder::new(args.max_message);
    let mut me = Hostile { args, out: tx, seen: HashMap::new(), impersonated: 0 };
    let mut msg = Message::new(parent, handle::HELLO, body::to_json(&hello));
    msg.header.src = me.args.id;
    msg.header.auth = me.args.id;
    me.send(&msg);

    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        decoder.push(buf.get(..n).unwrap_or_default());
        loop {
            match decoder.next() {
                Ok(Some(msg)) => me.on_message(msg),
                Ok(None) => break,
                Err(e) => {
                    eprintln!("spore-hostile-agent: corrupt stream from the parent: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    // EOF: the parent is gone (or closed our input). Whatever is still
    // queued can't matter.
    drop((me, writer));
    std::process::exit(0);
}
