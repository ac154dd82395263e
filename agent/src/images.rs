//! The agent images a context can start children with: one per
//! architecture, each named by its hash, plain or gzipped.
//!
//! The master holds them all (embedded at build time, hashes included, so
//! a start costs no hashing). An agent holds only its own binary: it learns
//! what the others are called from each `connect` it is asked to make
//! ([`ImageInfo`]s in the arguments), and when a target below it needs one
//! of them it asks its parent (`GET_IMAGE`) and keeps the bytes in memory,
//! so each image crosses each hop once. Every context answers its direct
//! children's `GET_IMAGE` from a thread of its own ([`serve`]).

use crate::broker::Broker;
use crate::locks::lock;
use spore_protocol::body::{self, ImageInfo, ImageRequest};
use spore_protocol::{handle, hex, posix_cksum, sha256, Message, FLAG_BINARY, FLAG_DEAD};
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// This binary's architecture, by spore's name for it.
#[cfg(target_arch = "arm")]
pub const OWN_ARCH: &str = "armv7";
/// This binary's architecture, by spore's name for it.
#[cfg(not(target_arch = "arm"))]
pub const OWN_ARCH: &str = std::env::consts::ARCH;

/// The `uname -m` answers (a `case` pattern) that run `arch`'s image.
pub fn machines(arch: &str) -> &str {
    match arch {
        "x86_64" => "x86_64|amd64",
        "aarch64" => "aarch64|arm64",
        // armv8l: a 32-bit userland on a 64-bit ARM kernel.
        "armv7" => "armv7*|armv8l",
        other => other,
    }
}

/// The architecture of a static ELF binary, from its header's `e_machine`.
pub fn elf_arch(bytes: &[u8]) -> Option<&'static str> {
    if bytes.get(..4) != Some(b"\x7fELF".as_slice()) {
        return None;
    }
    match bytes.get(18..20)? {
        [0x3e, 0] => Some("x86_64"),
        [0xb7, 0] => Some("aarch64"),
        [0x28, 0] => Some("armv7"),
        _ => None,
    }
}

/// An image's bytes: embedded in the program, or held in memory.
#[derive(Clone)]
pub enum Blob {
    /// Part of the program (the master's embedded images).
    Static(&'static [u8]),
    /// Read or received at run time.
    Shared(Arc<[u8]>),
}

impl Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Blob::Static(b) => b,
            Blob::Shared(b) => b,
        }
    }
}

/// One image whose bytes are at hand.
pub struct Held {
    /// What the bootstrap script knows of it.
    pub info: ImageInfo,
    /// The binary.
    pub raw: Blob,
    /// Its gzip form, when there is one.
    pub gz: Option<Blob>,
}

impl Held {
    /// An image known only by its bytes: hashed here, no gzip form.
    pub fn from_bytes(bytes: Vec<u8>) -> Held {
        let info = ImageInfo {
            arch: elf_arch(&bytes).unwrap_or(OWN_ARCH).to_string(),
            hash: hex(&sha256(&bytes)),
            size: bytes.len() as u64,
            cksum: posix_cksum(&bytes),
            gz_size: 0,
        };
        Held { info, raw: Blob::Shared(bytes.into()), gz: None }
    }
}

enum Source {
    /// The bytes are here (the master's images, or a custom one).
    Held(Vec<Held>),
    /// An agent: its own binary, the rest from its parent.
    Parent { broker: Broker, parent: u32 },
}

/// The images a context can send, and where their bytes come from.
pub struct Images {
    infos: Vec<ImageInfo>,
    source: Source,
}

/// At most this many images are known (a parent's list is cut here).
pub const KNOWN_LIMIT: usize = 8;
/// How long an agent waits for its parent to send an image.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

impl Images {
    /// Images whose bytes are at hand, the first the default.
    pub fn held(held: Vec<Held>) -> Images {
        let infos = held.iter().map(|h| h.info.clone()).collect();
        Images { infos, source: Source::Held(held) }
    }

    /// An agent's: `infos` from its parent's `connect`.
    pub(crate) fn from_parent(mut infos: Vec<ImageInfo>, broker: Broker, parent: u32) -> Images {
        infos.truncate(KNOWN_LIMIT);
        Images { infos, source: Source::Parent { broker, parent } }
    }

    /// What the bootstrap script may choose from.
    pub fn infos(&self) -> &[ImageInfo] {
        &self.infos
    }

    /// The image for `arch`.
    pub fn for_arch(&self, arch: &str) -> Option<&ImageInfo> {
        self.infos.iter().find(|i| i.arch == arch)
    }

    /// The architectures, for messages: `x86_64, aarch64`.
    pub fn arch_list(&self) -> String {
        let names: Vec<&str> = self.infos.iter().map(|i| i.arch.as_str()).collect();
        names.join(", ")
    }

    /// The bytes of `info`'s image, gzipped when `gz`. An agent may have to
    /// ask its parent: that waits until `deadline`.
    pub fn bytes(&self, info: &ImageInfo, gz: bool, deadline: Instant) -> Result<Blob, String> {
        match &self.source {
            Source::Held(held) => {
                let h = held.iter().find(|h| h.info.hash == info.hash).ok_or_else(|| no_image(info))?;
                if gz {
                    h.gz.clone().ok_or_else(|| format!("no gzip form of the {} image", info.arch))
                } else {
                    Ok(h.raw.clone())
                }
            }
            Source::Parent { broker, parent } => fetched(broker, *parent, info, gz, deadline),
        }
    }
}

fn no_image(info: &ImageInfo) -> String {
    format!("no {} image {}", info.arch, info.hash.get(..16).unwrap_or_default())
}

/// An image this agent has read or received: its hash, its form (gzip or
/// not), its bytes.
type Copy = (String, bool, Arc<[u8]>);

/// The images this agent holds.
static FETCHED: Mutex<Vec<Copy>> = Mutex::new(Vec::new());

/// An agent's copy of an image: its own binary, or what its parent sent.
/// Fetches are one at a time (the lock is held), so concurrent connects
/// needing the same image ask the parent once.
fn fetched(broker: &Broker, parent: u32, info: &ImageInfo, gz: bool, deadline: Instant) -> Result<Blob, String> {
    let mut have = lock(&FETCHED);
    if let Some((_, _, b)) = have.iter().find(|(h, g, _)| *h == info.hash && *g == gz) {
        return Ok(Blob::Shared(b.clone()));
    }
    if have.len() >= 2 * KNOWN_LIMIT {
        return Err("too many images held already".into());
    }
    let own = (!gz && info.arch == OWN_ARCH).then(|| std::fs::read("/proc/self/exe").ok()).flatten();
    let bytes = match own.filter(|b| check(info, false, b).is_ok()) {
        Some(b) => b,
        None => ask_parent(broker, parent, info, gz, deadline)?,
    };
    let bytes: Arc<[u8]> = bytes.into();
    have.push((info.hash.clone(), gz, bytes.clone()));
    Ok(Blob::Shared(bytes))
}

/// Are these the bytes `info` names? The binary is checked whole; the gzip
/// form by its length (the target checks what it unpacks).
fn check(info: &ImageInfo, gz: bool, bytes: &[u8]) -> Result<(), String> {
    let want = if gz { info.gz_size } else { info.size };
    if bytes.len() as u64 != want {
        return Err(format!("{} bytes, expected {want}", bytes.len()));
    }
    if !gz && hex(&sha256(bytes)) != info.hash {
        return Err("its SHA-256 is not the one named".into());
    }
    Ok(())
}

fn ask_parent(broker: &Broker, parent: u32, info: &ImageInfo, gz: bool, deadline: Instant) -> Result<Vec<u8>, String> {
    let what = format!("the {} image{}", info.arch, if gz { " (gzip)" } else { "" });
    let mb = broker.mailbox(Some(parent));
    let mut msg = Message::new(parent, handle::GET_IMAGE, body::encode(&ImageRequest { hash: info.hash.clone(), gz }));
    msg.header.reply_to = mb.handle;
    broker.send(msg);
    let reply = mb.recv_deadline(deadline).map_err(|e| match e {
        crate::RecvError::Timeout => format!("timed out waiting for {what} from the parent"),
        crate::RecvError::Closed => format!("the broker ended while waiting for {what} from the parent"),
    })?;
    if reply.is_dead() {
        return Err(format!("the parent could not send {what}: {}", String::from_utf8_lossy(&reply.body)));
    }
    check(info, gz, &reply.body).map_err(|e| format!("the parent sent a wrong {what}: {e}"))?;
    log::debug!("received {what} from the parent ({} bytes)", reply.body.len());
    Ok(reply.body)
}

/// Requests served at once: a child that reads nothing holds one of them
/// up (sending waits for room), not the others.
pub const SERVING_LIMIT: usize = 4;

/// Answer the direct children's `GET_IMAGE` requests from `images`, on a
/// thread per request (at most [`SERVING_LIMIT`]). Once per broker, on its
/// first connect.
pub fn serve(broker: &Broker, images: &Arc<Images>) {
    let requests = broker.listen(handle::GET_IMAGE);
    let (broker, images) = (broker.clone(), images.clone());
    let busy = Arc::new(AtomicUsize::new(0));
    let spawned = std::thread::Builder::new().name("spore-images".into()).spawn(move || loop {
        let msg = match requests.recv_deadline(Instant::now() + Duration::from_secs(3600)) {
            Ok(msg) => msg,
            Err(crate::RecvError::Timeout) => continue,
            Err(crate::RecvError::Closed) => break,
        };
        if busy.fetch_add(1, Ordering::SeqCst) >= SERVING_LIMIT {
            busy.fetch_sub(1, Ordering::SeqCst);
            broker.send(dead(&msg, format!("busy: {SERVING_LIMIT} image requests are being served")));
            continue;
        }
        let (broker, images, busy) = (broker.clone(), images.clone(), busy.clone());
        let answered = std::thread::Builder::new().name("spore-image".into()).spawn(move || {
            broker.send(answer(&images, &msg));
            busy.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = answered {
            log::warn!("can't start a thread to send an image: {e}");
        }
    });
    if let Err(e) = spawned {
        log::warn!("can't start the image server: {e}");
    }
}

fn answer(images: &Images, msg: &Message) -> Message {
    let req = match body::decode::<ImageRequest>(&msg.body, "GET_IMAGE") {
        Ok(r) => r,
        Err(e) => return dead(msg, e.to_string()),
    };
    let Some(info) = images.infos.iter().find(|i| i.hash == req.hash) else {
        let shown = crate::routes::bounded(&req.hash);
        return dead(msg, format!("no image {shown} here (there are: {})", images.arch_list()));
    };
    match images.bytes(info, req.gz, Instant::now() + FETCH_TIMEOUT) {
        Ok(bytes) => {
            let mut reply = Message::new(msg.header.src, msg.header.reply_to, bytes.to_vec());
            reply.header.flags = FLAG_BINARY;
            reply
        }
        Err(e) => dead(msg, e),
    }
}

fn dead(msg: &Message, why: String) -> Message {
    let mut reply = Message::new(msg.header.src, msg.header.reply_to, why.into_bytes());
    reply.header.flags = FLAG_DEAD;
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_headers_name_their_architecture() {
        let mut h = b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00".to_vec();
        assert_eq!(elf_arch(&h), Some("x86_64"));
        h[18] = 0xb7;
        assert_eq!(elf_arch(&h), Some("aarch64"));
        h[18] = 0x28;
        assert_eq!(elf_arch(&h), Some("armv7"));
        h[18] = 0x08;
        assert_eq!(elf_arch(&h), None);
        assert_eq!(elf_arch(b"#!/bin/sh\n"), None);
    }

    #[test]
    fn held_images_check_what_they_are_asked_for() {
        let held = Held::from_bytes(b"not an agent".to_vec());
        let info = held.info.clone();
        assert_eq!(info.size, 12);
        let images = Images::held(vec![held]);
        let far = Instant::now() + Duration::from_secs(1);
        assert_eq!(&*images.bytes(&info, false, far).unwrap(), b"not an agent");
        assert!(images.bytes(&info, true, far).err().unwrap().contains("no gzip form"));
        let other = ImageInfo { hash: "00".into(), ..info.clone() };
        assert!(images.bytes(&other, false, far).is_err());
        assert!(check(&info, false, b"not an agenT").unwrap_err().contains("SHA-256"));
        assert!(check(&info, false, b"short").unwrap_err().contains("expected 12"));
    }
}
