//! `GET_IMAGE`: how agent images travel down the tree (DESIGN.md,
//! Architectures). A direct child gets the image it names from its parent;
//! nobody else gets anything but a `DEAD`; a flood of requests is answered
//! in bounded parallel, each with the image or a clear refusal, and the
//! rest of the tree carries on. Driven by `spore-hostile-agent`, which
//! writes raw frames on its parent pipe and counts what comes back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore_protocol::body::{self, ImageRequest};
use spore_protocol::{handle, hex, sha256, MASTER_ID};
use spore_tests::hostile::*;
use spore_tests::LeakGuard;
use std::time::{Duration, Instant};

/// The hostile binary's hash: the router's only image.
fn image_hash() -> String {
    hex(&sha256(&hostile_image()))
}

fn request(hash: &str, gz: bool) -> String {
    String::from_utf8(body::to_json(&ImageRequest { hash: hash.into(), gz })).unwrap()
}

/// `GET_IMAGE` to `dst`, answered on handle `reply_to` of the hostile context.
fn get_image(dst: u32, reply_to: u32, body: &str, repeat: u32) -> Frame {
    Frame { reply_to: Some(reply_to), repeat: Some(repeat), ..frame(dst, handle::GET_IMAGE, body) }
}

/// The master answers `GET_IMAGE` once it has connected through a child
/// (before that no child can need an image): connect `i/s`.
fn serving(f: &Fixture) -> (spore::Context, spore::Context) {
    let i = f.connect("i");
    let s = below(&i, "s");
    (i, s)
}

/// Wait (bounded) until `n` answers arrived on `h`'s handle `on`.
fn answers(h: &spore::Context, on: u32, n: u64) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = stats(h, on).unwrap();
        if s.total >= n || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_direct_child_gets_the_image_it_names_and_nothing_else() {
    let guard = LeakGuard::new();
    let f = Fixture::new();
    let h = f.connect("hostile");
    let hash = image_hash();
    // Before the master connects anything through a child, nobody listens.
    send_frames(&h, vec![get_image(MASTER_ID, 4999, &request(&hash, false), 1)]).unwrap();
    let early = answers(&h, 4999, 1);
    assert_eq!((early.replies, early.dead), (0, 1), "no image before any connect through a child: {early:?}");
    let others = serving(&f);
    send_frames(&h, vec![get_image(MASTER_ID, 5000, &request(&hash, false), 1)]).unwrap();
    let got = answers(&h, 5000, 1);
    assert_eq!((got.replies, got.dead), (1, 0), "the image, once: {got:?}");
    // No gzip form of a custom image, no image by another name, a body
    // that is not a request: each a DEAD, nothing else.
    let other = "f".repeat(64);
    let frames = vec![
        get_image(MASTER_ID, 5001, &request(&hash, true), 1),
        get_image(MASTER_ID, 5002, &request(&other, false), 1),
        get_image(MASTER_ID, 5003, "not json", 1),
    ];
    send_frames(&h, frames).unwrap();
    for on in 5001..=5003 {
        let got = answers(&h, on, 1);
        assert_eq!((got.replies, got.dead), (0, 1), "handle {on}: {got:?}");
    }
    h.ping().unwrap();
    drop((h, others));
    f.finish(guard);
}

#[test]
fn a_grandchild_gets_no_image_from_the_master_but_one_from_its_parent() {
    let guard = LeakGuard::new();
    let f = Fixture::new();
    let i = f.connect("i");
    let h = below(&i, "hostile");
    let hash = image_hash();
    let frames =
        vec![get_image(MASTER_ID, 5000, &request(&hash, false), 1), get_image(i.id(), 5001, &request(&hash, false), 1)];
    send_frames(&h, frames).unwrap();
    let refused = answers(&h, 5000, 1);
    assert_eq!((refused.replies, refused.dead), (0, 1), "from the master: {refused:?}");
    let served = answers(&h, 5001, 1);
    assert_eq!((served.replies, served.dead), (1, 0), "from its parent: {served:?}");
    i.ping().unwrap();
    drop((i, h));
    f.finish(guard);
}

#[test]
fn a_flood_of_image_requests_is_answered_in_bounded_parallel() {
    let guard = LeakGuard::new();
    let f = Fixture::new();
    let h = f.connect("hostile");
    let honest = f.connect("honest");
    let others = serving(&f);
    let hash = image_hash();
    send_frames(&h, vec![get_image(MASTER_ID, 5000, &request(&hash, false), 40)]).unwrap();
    // Every request is answered: with the image, or "busy".
    let got = answers(&h, 5000, 40);
    assert_eq!(got.total, 40, "{got:?}");
    assert!(got.replies >= 1 && got.dead >= 1, "some served, some refused as busy: {got:?}");
    let started = Instant::now();
    honest.ping().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "a sibling waited {:?}", started.elapsed());
    drop((h, honest, others));
    f.finish(guard);
}
