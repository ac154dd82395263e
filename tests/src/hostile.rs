//! The hostile-peer suites' harness: a router whose image is
//! `spore-hostile-agent` (a context whose last hop is named `hostile`
//! writes whatever frames its `raw` call names on its parent pipe), and
//! the calls that drive it.

#![allow(missing_docs, reason = "field by field, the JSON shapes of the hostile agent's calls (see its source)")]

use crate::{descendants, reap_zombies, LeakGuard};
use miniserde::{Deserialize, Serialize};
use spore::{Context, Hop, InfoReply, Options, Router};
use spore_protocol::body::{self, AddRoute, DelRoute};
use spore_protocol::Message;
use std::time::{Duration, Instant};

pub fn hostile_image() -> Vec<u8> {
    let p = crate::target_dir().join("debug/spore-hostile-agent");
    assert!(p.is_file(), "{} is missing: run `cargo build -p spore-tests`", p.display());
    std::fs::read(p).unwrap()
}

/// A router, shut down when dropped; a failing test also kills whatever it
/// started (we are a subreaper: every agent is our descendant).
pub struct Fixture {
    pub r: Router,
}

impl Fixture {
    /// A router whose image is the hostile agent's binary.
    pub fn new() -> Fixture {
        Fixture::with(
            Router::with_options(Options {
                agent_image: Some(hostile_image()),
                agent_log_level: Some(log::LevelFilter::Info),
                shutdown_grace: Duration::from_secs(2),
                connect_timeout: Duration::from_secs(20),
                ..Options::default()
            })
            .unwrap(),
        )
    }

    pub fn with(r: Router) -> Fixture {
        Fixture { r }
    }

    /// A direct child of the master: hostile if `name` starts with `hostile`.
    pub fn connect(&self, name: &str) -> Context {
        self.r.connect(&Hop::Local, name).unwrap_or_else(|e| panic!("connect {name}: {e}"))
    }

    /// Shut down, drop, and check that nothing was left behind.
    pub fn finish(self, guard: LeakGuard) {
        self.r.shutdown();
        drop(self);
        guard.check();
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.r.shutdown();
        if std::thread::panicking() {
            for p in descendants() {
                // SAFETY: kill has no memory effects; these are our own processes.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            reap_zombies();
        }
    }
}

/// A child of `parent`, named `<parent>/<name>`, started by `parent`'s agent
/// with its own image.
pub fn below(parent: &Context, name: &str) -> Context {
    let full = format!("{}/{name}", parent.name());
    parent.connect_hop(&Hop::Local, &full).unwrap_or_else(|e| panic!("connect {full}: {e}"))
}

/// One frame of a `raw` call, or a spray of them (see the hostile agent).
#[derive(Serialize, Default, Clone)]
pub struct Frame {
    pub dst: u32,
    pub src: Option<u32>,
    pub auth: Option<u32>,
    pub handle: u32,
    pub handle_to: Option<u32>,
    pub reply_to: Option<u32>,
    pub flags: Option<u8>,
    pub body: Option<String>,
    pub repeat: Option<u32>,
}

pub fn frame(dst: u32, handle: u32, body: &str) -> Frame {
    Frame { dst, handle, body: Some(body.into()), ..Frame::default() }
}

/// The same frame to every handle in `from..=to` at `dst`.
pub fn spray(dst: u32, from: u32, to: u32, flags: u8, body: &str) -> Frame {
    Frame { dst, handle: from, handle_to: Some(to), flags: Some(flags), body: Some(body.into()), ..Frame::default() }
}

#[derive(Serialize)]
pub struct RawCall {
    pub op: String,
    pub frames: Vec<Frame>,
}

#[derive(Serialize)]
pub struct StatsCall {
    pub op: String,
    pub handle: u32,
}

/// What the hostile agent saw on one of its handles.
#[derive(Deserialize, Debug)]
pub struct Stats {
    pub total: u64,
    pub dead: u64,
    /// Messages not flagged DEAD.
    pub replies: u64,
    /// Replies whose body holds `"id"`.
    pub with_id: u64,
    /// Calls for other contexts that were routed to it.
    pub impersonated: u64,
}

/// Have the hostile context `h` write `frames` on its parent pipe; returns
/// the call's outcome once the frames have gone through (its own reply
/// handle may be among those sprayed, and a router may drop `h` for what
/// it sent, so the outcome is not the point).
pub fn send_frames(h: &Context, frames: Vec<Frame>) -> spore::Result<Message> {
    let body = body::to_json(&RawCall { op: "raw".into(), frames });
    let result = h.call_async(body).wait_deadline(Instant::now() + Duration::from_secs(30));
    // The frames that follow a reply forged to our own handle are still on
    // their way; give the routers a moment with them.
    std::thread::sleep(Duration::from_millis(200));
    result
}

pub fn stats(h: &Context, handle: u32) -> spore::Result<Stats> {
    let body = body::to_json(&StatsCall { op: "stats".into(), handle });
    let msg = h.call_async(body).wait_deadline(Instant::now() + Duration::from_secs(10))?;
    h.decode(&msg)
}

pub fn info_within(ctx: &Context, within: Duration) -> spore::Result<InfoReply> {
    let msg = ctx.call_async(br#"{"op":"info"}"#.to_vec()).wait_deadline(Instant::now() + within)?;
    ctx.decode(&msg)
}

pub fn ping_within(ctx: &Context, within: Duration) -> spore::Result<()> {
    let msg = ctx.call_async(br#"{"op":"ping"}"#.to_vec()).wait_deadline(Instant::now() + within)?;
    ctx.decode::<spore_protocol::body::Empty>(&msg).map(|_| ())
}

/// An ADD_ROUTE body claiming context `id`, started by `parent`.
pub fn add_route(id: u32, parent: u32, name: &str) -> String {
    String::from_utf8(body::to_json(&AddRoute { id, parent, name: name.into() })).unwrap()
}

/// A DEL_ROUTE body for context `id`.
pub fn del_route(id: u32, reason: &str) -> String {
    String::from_utf8(body::to_json(&DelRoute { id, reason: reason.into() })).unwrap()
}
