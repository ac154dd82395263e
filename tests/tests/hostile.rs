//! A hostile peer must not disturb any other part of the tree (DESIGN.md,
//! Security). Each test starts honest contexts beside `spore-hostile-agent`
//! (see its doc comment for the `raw` frames it writes on request), has it
//! forge DEAD replies, replies, route changes, shutdowns, calls, log records
//! and id requests, and checks that the honest part of the tree is
//! undisturbed. Every wait is bounded; every process is cleaned up, also
//! when a test fails.
//!
//! The router's image is the hostile agent's binary: contexts whose last hop
//! is named `hostile` speak the raw protocol, every other one is an honest
//! agent (the agent library with the built-in operations). An honest
//! intermediate starts its children with its own image, so it can start a
//! hostile child too (`i/hostile`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore::{Command, Context, Error, InfoReply, Output, Router};
use spore_protocol::body::{self, ExecArgs, LogRecord};
use spore_protocol::{handle, FLAG_BINARY, FLAG_DEAD, FLAG_END, MASTER_ID};
use spore_tests::hostile::*;
use spore_tests::{LeakGuard, Scratch, RECORDS};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---- harness (the rest is in spore_tests::hostile) ---------------------

/// `sleep 1; echo ok` on `ctx`, in a thread (bounded by its timeout).
fn slow_echo(ctx: &Context) -> JoinHandle<spore::Result<Output>> {
    let ctx = ctx.clone();
    let cmd = Command::new(["sh", "-c", "sleep 1; echo ok"]).timeout(Duration::from_secs(15));
    std::thread::spawn(move || ctx.exec(&cmd))
}

/// Every `slow_echo` call must have printed `ok`; fails naming each that
/// did not.
fn expect_all_ok(calls: Vec<(&Context, JoinHandle<spore::Result<Output>>)>) {
    let mut failed = Vec::new();
    for (ctx, call) in calls {
        match call.join().unwrap() {
            Ok(out) if out.status.success() && out.stdout == b"ok\n" => {}
            Ok(out) => failed.push(format!(
                "{}: `sleep 1; echo ok` ended {:?} with stdout {:?}",
                ctx.name(),
                out.status,
                String::from_utf8_lossy(&out.stdout)
            )),
            Err(e) => failed.push(format!("{}: `sleep 1; echo ok` failed: {e:?}", ctx.name())),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Kill a context's agent and wait (bounded) until the master has lost it.
fn kill_and_lose(ctx: &Context) {
    let pid = info_within(ctx, Duration::from_secs(5)).unwrap().pid as i32;
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match ping_within(ctx, Duration::from_secs(2)) {
            Err(Error::Dead { reason, .. }) if reason.contains("no route") => return,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            other => panic!("{} was killed but is not reported lost: {other:?}", ctx.name()),
        }
    }
}

/// 25 `info` calls to a lost context: every one must fail (a DEAD reply),
/// none answered, none left waiting.
fn calls_to_a_lost_context_all_fail(ctx: &Context) {
    let pending: Vec<_> = (0..25).map(|_| ctx.call_async(br#"{"op":"info"}"#.to_vec())).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut answered = Vec::new();
    let mut hung = 0;
    for p in pending {
        match p.wait_deadline(deadline) {
            Ok(msg) => match ctx.decode::<InfoReply>(&msg) {
                Ok(info) => answered.push(format!("hostname {} pid {}", info.hostname, info.pid)),
                Err(e) => answered.push(format!("an END reply: {e}")),
            },
            Err(Error::Timeout { .. }) => hung += 1,
            Err(_) => {}
        }
    }
    assert!(
        answered.is_empty() && hung == 0,
        "calls to the lost context {} (id {}): {} of 25 answered ({:?}), {hung} left waiting",
        ctx.name(),
        ctx.id(),
        answered.len(),
        answered.first()
    );
}

// ---- forged DEAD replies -----------------------------------------------

#[test]
fn forged_dead_replies_do_not_fail_other_contexts_calls() {
    let guard = LeakGuard::new();
    let fx = Fixture::new();
    let a = fx.connect("a");
    let b = fx.connect("b");
    let h = fx.connect("hostile");
    let calls = [(&a, slow_echo(&a)), (&b, slow_echo(&b))];
    std::thread::sleep(Duration::from_millis(300));
    let _ = send_frames(&h, vec![spray(MASTER_ID, 1000, 1300, FLAG_DEAD, "disconnected: forged by the hostile agent")]);
    expect_all_ok(calls.into());
    a.ping().unwrap();
    b.ping().unwrap();
    drop((a, b, h));
    fx.finish(guard);
}

#[test]
fn dead_replies_forged_as_another_context_are_dropped() {
    let guard = LeakGuard::new();
    let fx = Fixture::new();
    let a = fx.connect("a");
    let b = fx.connect("b");
    let h = fx.connect("hostile");
    let calls = [(&a, slow_echo(&a)), (&b, slow_echo(&b))];
    std::thread::sleep(Duration::from_millis(300));
    let mut frames = Vec::new();
    for victim in [&a, &b] {
        let mut f = spray(MASTER_ID, 1000, 1300, FLAG_DEAD, "disconnected: forged as the victim");
        f.src = Some(victim.id());
        f.auth = Some(victim.id());
        frames.push(f);
    }
    let _ = send_frames(&h, frames);
    expect_all_ok(calls.into());
    a.ping().unwrap();
    b.ping().unwrap();
    drop((a, b, h));
    fx.finish(guard);
}

/// An intermediate `i` with two children, `i/s` and `i/hostile`, and a
/// context `a` on another branch, each running `sleep 1; echo ok`; then
/// `i/hostile` sprays DEAD replies at `targets(i, s)`.
fn forged_dead_from_below(targets: impl Fn(&Context, &Context) -> Vec<u32>) {
    let guard = LeakGuard::new();
    let fx = Fixture::new();
    let a = fx.connect("a");
    let i = fx.connect("i");
    let s = below(&i, "s");
    let h = below(&i, "hostile");
    // Each exec holds a reply handle at the master (waiting on the context
    // running it) and a stream handle at that context (waiting on the master).
    let calls = [(&a, slow_echo(&a)), (&i, slow_echo(&i)), (&s, slow_echo(&s))];
    std::thread::sleep(Duration::from_millis(300));
    let why = "disconnected: forged by the hostile agent";
    let frames = targets(&i, &s).into_iter().map(|dst| spray(dst, 1000, 1300, FLAG_DEAD, why)).collect();
    let _ = send_frames(&h, frames);
    expect_all_ok(calls.into());
    for ctx in [&a, &i, &s] {
        ping_within(ctx, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{}: {e:?}", ctx.name()));
    }
    drop((a, i, s, h));
    fx.finish(guard);
}

/// At its parent (whose exec's stream handle waits on the master) and at a
/// sibling (unreachable: children can't message each other).
#[test]
fn forged_dead_replies_from_below_do_not_fail_an_intermediates_calls() {
    forged_dead_from_below(|i, s| vec![i.id(), s.id()]);
}

/// At the master, through an honest intermediate: `i/hostile` is on the path
/// to none of the contexts whose calls the master waits on.
#[test]
fn forged_dead_replies_passed_up_by_an_intermediate_do_not_fail_calls() {
    forged_dead_from_below(|_, _| vec![MASTER_ID]);
}

// ---- forged replies ----------------------------------------------------

/// Decodes as an `info` result and as an `exec` result.
const FAKE_RESULT: &str = r#"{"name":"evil","context_id":0,"hostname":"evil","arch":"evil","machine":"evil","kernel":"evil","uid":0,"gid":0,"pid":1,"version":"evil","status":66,"signal":null,"timed_out":false,"stdout_len":5,"stderr_len":0}"#;

#[test]
fn forged_replies_do_not_answer_other_contexts_calls() {
    let guard = LeakGuard::new();
    let fx = Fixture::new();
    let a = fx.connect("a");
    let i = fx.connect("i");
    let b = below(&i, "b");
    let h1 = fx.connect("hostile");
    let h2 = below(&i, "hostile");
    let real: Vec<InfoReply> = [&a, &b].iter().map(|c| info_within(c, Duration::from_secs(5)).unwrap()).collect();
    let execs = [(&a, slow_echo(&a)), (&i, slow_echo(&i)), (&b, slow_echo(&b))];
    // Calls in flight all through the forgery, one every 20 ms.
    let loops: Vec<_> = [&a, &b]
        .iter()
        .map(|c| {
            let c = (*c).clone();
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_millis(1500);
                let mut got = Vec::new();
                while Instant::now() < until {
                    got.push(info_within(&c, Duration::from_secs(5)));
                    std::thread::sleep(Duration::from_millis(20));
                }
                got
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for (h, dsts) in [(&h1, vec![MASTER_ID]), (&h2, vec![MASTER_ID, i.id()])] {
        let mut frames = Vec::new();
        for dst in dsts {
            frames.push(spray(dst, 1000, 2000, FLAG_END, FAKE_RESULT));
            frames.push(spray(dst, 1000, 2000, 0, FAKE_RESULT));
            frames.push(spray(dst, 1000, 2000, FLAG_BINARY, "evil\n"));
            frames.push(spray(dst, 1000, 2000, FLAG_BINARY | FLAG_END, "evil\n"));
            // And as the contexts whose answers are awaited.
            for victim in [a.id(), i.id(), b.id()] {
                let mut f = spray(dst, 1000, 2000, FLAG_END, FAKE_RESULT);
                f.src = Some(victim);
                f.auth = Some(victim);
                frames.push(f);
            }
        }
        let _ = send_frames(h, frames);
    }
    expect_all_ok(execs.into());
    for ((ctx, want), lp) in [&a, &b].iter().zip(&real).zip(loops) {
        let got = lp.join().unwrap();
        assert!(!got.is_empty());
        for r in got {
            let info = r.unwrap_or_else(|e| panic!("{}: info during the forgery failed: {e:?}", ctx.name()));
            assert_eq!((info.pid, &info.hostname), (want.pid, &want.hostname), "{}: a forged info result", ctx.name());
        }
        let after = info_within(ctx, Duration::from_secs(5)).unwrap();
        assert_eq!((after.pid, after.name.as_str()), (want.pid, ctx.name()));
    }
    drop((a, i, b, h1, h2));
    fx.finish(guard);
}

// ---- forged route changes ----------------------------------------------

#[test]
fn add_route_for_a_lost_context_is_refused_below_an_intermediate() {
    let guard = LeakGuard::new();
    let fx = Fixture::new();
    let i = fx.connect("i");
    let a = below(&i, "a");
    let h = below(&i, "hostile");
    kill_and_lose(&a);
    // The lost sibling's id, with its true parent and as the claimer's own
    // child, announced to our parent (which would pass it up) and straight
    // to the master.
    let mut frames = Vec::new();
    for parent in [i.id(), h.id()] {
        let claim = add_route(a.id(), parent, a.name());
        frames.push(frame(i.id(), handle::ADD_ROUTE, &claim));
        frames.push(frame(MASTER_ID, handle::ADD_ROUTE, &claim));
    }
    let r = send_frames(&h, frames);
    r.unwrap_or_else(|e| panic!("the hostile context's raw call failed: {e:?}"));
    calls_to_a_lost_context_all_fail(&a);
    if let Ok(st) = stats(&h, 0) {
        assert_eq!(st.impersonated, 0, "calls for the lost context were routed to the hostile one");
    }
    i.ping().unwrap();
    drop((i, a, h));
    fx.finish(guard);
}

#[test]
fn add_route_for_a_lost_direct_child_is_refused() {
    let guard = LeakGuard::new();
    let fx = Fixture::new();
    let a = fx.connect("a");
    let h = fx.connect("hostile");
    kill_and_lose(&a);
    let frames =
        [MASTER_ID, h.id()].map(|parent| frame(MASTER_ID, handle::ADD_ROUTE, &add_route(a.id(), parent, a.name())));
    send_frames(&h, frames.to_vec()).unwrap_or_else(|e| panic!("the hostile context's raw call failed: {e:?}"));
    calls_to_a_lost_context_all_fail(&a);
    if let Ok(st) = stats(&h, 0) {
        assert_eq!(st.impersonated, 0, "calls for the lost context were routed to the hostile one");
    }
    drop((a, h));
    fx.finish(guard);
}

#[test]
fn add_route_for_a_live_or_unallocated_id_is_refused() {
    let guard = LeakGuard::new();
    let fx = Fixture::new();
    let b = fx.connect("b");
    let i = fx.connect("i");
    let h = below(&i, "hostile");
    let h2 = fx.connect("hostile");
    let b_before = info_within(&b, Duration::from_secs(5)).unwrap();
    // A live context elsewhere, an id never allocated, the ids the master
    // is likely to allocate next, the master and the parent.
    let next = [b.id(), i.id(), h.id(), h2.id()].into_iter().max().unwrap() + 1;
    let ids = [b.id(), 999, next, next + 1, next + 2, next + 3, next + 4, MASTER_ID, i.id()];
    let mut frames_h = Vec::new();
    let mut frames_h2 = Vec::new();
    for id in ids {
        for claim in [add_route(id, h.id(), "fake"), add_route(id, i.id(), "fake")] {
            frames_h.push(frame(i.id(), handle::ADD_ROUTE, &claim));
            frames_h.push(frame(MASTER_ID, handle::ADD_ROUTE, &claim));
        }
        for claim in [add_route(id, h2.id(), "fake"), add_route(id, MASTER_ID, "fake")] {
            frames_h2.push(frame(MASTER_ID, handle::ADD_ROUTE, &claim));
        }
    }
    let _ = send_frames(&h, frames_h);
    let _ = send_frames(&h2, frames_h2);
    // Fresh contexts, at the master and below the intermediate whose child
    // made the claims.
    let c1 = fx.connect("c");
    let c2 = below(&i, "c");
    for ctx in [&c1, &c2] {
        let info = info_within(ctx, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("fresh context {} (id {}): {e:?}", ctx.name(), ctx.id()));
        assert_eq!((info.name.as_str(), info.context_id), (ctx.name(), ctx.id()), "{} answered by another", ctx.name());
        assert_ne!(info.hostname, "hostile-impersonator");
    }
    let b_after = info_within(&b, Duration::from_secs(5)).unwrap();
    assert_eq!((b_after.pid, b_after.name.as_str()), (b_before.pid, "b"), "b no longer answers as itself");
    i.ping().unwrap();
    for hostile in [&h, &h2] {
        if let Ok(st) = stats(hostile, 0) {
            assert_eq!(st.impersonated, 0, "calls for other contexts were routed to {}", hostile.name());
        }
    }
    drop((b, i, h, h2, c1, c2));
    fx.finish(guard);
}

// ---- spoofed shutdowns and calls ---------------------------------------

#[test]
fn shutdown_and_calls_spoofed_as_a_parent_or_sibling_are_ignored() {
    let guard = LeakGuard::new();
    let dir = Scratch::new("hostile-spoof");
    let fx = Fixture::new();
    let i = fx.connect("i");
    let s = below(&i, "s");
    let h = below(&i, "hostile");
    let b = fx.connect("b");
    let h2 = fx.connect("hostile");
    let mut reply_handle = 6000;
    let mut calls: Vec<(Context, u32, String)> = Vec::new();
    let mut frames_for = |hostile: &Context, shutdowns: &[(u32, u32)], spoofed_calls: &[(u32, u32)]| {
        let mut frames = Vec::new();
        for &(dst, src) in shutdowns {
            frames.push(Frame { dst, src: Some(src), auth: Some(src), handle: handle::SHUTDOWN, ..Frame::default() });
        }
        for &(dst, src) in spoofed_calls {
            reply_handle += 1;
            let marker = dir.path(&format!("pwned-{reply_handle}"));
            let exec = ExecArgs {
                op: "exec".into(),
                argv: vec!["sh".into(), "-c".into(), format!("echo pwned > {marker}")],
                ..<ExecArgs as Default>::default()
            };
            let body = String::from_utf8(body::to_json(&exec)).unwrap();
            frames.push(Frame {
                dst,
                src: Some(src),
                auth: Some(src),
                handle: handle::CALL_FUNCTION,
                reply_to: Some(reply_handle),
                body: Some(body),
                ..Frame::default()
            });
            calls.push((hostile.clone(), reply_handle, format!("call to {dst} as {src} from {}", hostile.name())));
        }
        frames
    };
    let (m, iid, sid, hid, bid, h2id) = (MASTER_ID, i.id(), s.id(), h.id(), b.id(), h2.id());
    // Below the intermediate: as the master, as the parent, as itself.
    let nested = frames_for(
        &h,
        &[(iid, m), (iid, hid), (sid, m), (sid, iid), (sid, hid), (m, hid), (bid, m)],
        &[(sid, m), (sid, iid), (sid, hid), (iid, m), (iid, hid), (bid, m), (bid, hid)],
    );
    // At the master: as the master, as a sibling, as itself.
    let direct = frames_for(
        &h2,
        &[(bid, m), (bid, h2id), (iid, m), (iid, bid), (sid, m), (m, h2id)],
        &[(bid, m), (bid, iid), (bid, h2id), (iid, m), (iid, h2id), (sid, m)],
    );
    let _ = send_frames(&h, nested);
    let _ = send_frames(&h2, direct);
    std::thread::sleep(Duration::from_millis(500));
    for ctx in [&i, &s, &b] {
        ping_within(ctx, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{} no longer answers after the spoofed SHUTDOWNs: {e:?}", ctx.name()));
    }
    let ran: Vec<_> = std::fs::read_dir(&dir.0).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(ran.is_empty(), "spoofed calls ran: {ran:?}");
    for (hostile, reply, what) in &calls {
        if let Ok(st) = stats(hostile, *reply) {
            assert_eq!(st.replies, 0, "{what}: got a result ({st:?})");
        }
    }
    drop(calls);
    drop((i, s, h, b, h2));
    fx.finish(guard);
}

/// `SHUTDOWN_CHILD` asks a context to stop its child; only the master or
/// an ancestor may. A child can't have its parent stop its sibling (as
/// itself, or as the master), nor a first hop have the master stop
/// another first hop or what is below it.
#[test]
fn shutdown_child_is_refused_from_a_child_or_a_sibling() {
    let guard = LeakGuard::new();
    let fx = Fixture::new();
    let i = fx.connect("i");
    let s = below(&i, "s");
    let h = below(&i, "hostile");
    let b = fx.connect("b");
    let h2 = fx.connect("hostile");
    let stop = |dst: u32, src: u32, child: u32| Frame {
        dst,
        src: Some(src),
        auth: Some(MASTER_ID),
        handle: handle::SHUTDOWN_CHILD,
        reply_to: Some(7000),
        body: Some(child.to_string()),
        ..Frame::default()
    };
    let (m, iid, sid, hid, bid, h2id) = (MASTER_ID, i.id(), s.id(), h.id(), b.id(), h2.id());
    let _ = send_frames(&h, vec![stop(iid, hid, sid), stop(iid, m, sid), stop(m, hid, iid), stop(iid, hid, hid)]);
    let _ = send_frames(&h2, vec![stop(m, h2id, bid), stop(m, h2id, iid), stop(iid, h2id, sid), stop(m, m, bid)]);
    std::thread::sleep(Duration::from_millis(500));
    for ctx in [&i, &s, &b] {
        ping_within(ctx, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{} no longer answers after the forged SHUTDOWN_CHILDs: {e:?}", ctx.name()));
    }
    drop((i, s, h, b, h2));
    fx.finish(guard);
}

// ---- forged log records ------------------------------------------------

fn forged_log_text(k: usize) -> String {
    format!("all hosts OK #{k}\nERROR [master] fake line #{k}\u{1b}[2J")
}

/// `h` forwards one record per name in `names`; every record that arrives
/// must be tagged `spore@<h's path>` (or a path below it), split at the
/// newline, with the ESC shown escaped.
fn forged_log_records_are_tagged_with_the_senders_path(h: &Context, names: &[&str]) {
    let frames = names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let rec = LogRecord { level: 1, name: (*name).into(), target: "x".into(), msg: forged_log_text(k) };
            frame(MASTER_ID, handle::FORWARD_LOG, &String::from_utf8(body::to_json(&rec)).unwrap())
        })
        .collect();
    let _ = send_frames(h, frames);
    let deadline = Instant::now() + Duration::from_secs(3);
    let records = loop {
        let records = RECORDS.lock().unwrap().clone();
        let all_in = (0..names.len()).all(|k| records.iter().any(|(_, _, m)| m.contains(&format!("fake line #{k}"))));
        if all_in || Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let own = format!("spore@{}", h.name());
    let under = format!("{own}/");
    let mut problems = Vec::new();
    for (_, target, msg) in &records {
        if target == "spore@master" || target.starts_with("spore@master/") {
            problems.push(format!("a record tagged as the master: {target} {msg:?}"));
        }
        if msg.contains('\u{1b}') {
            problems.push(format!("a raw ESC in {target} {msg:?}"));
        }
    }
    // The master's own modules may mention what they refused; forwarded
    // records are what a reader takes for the remote's word.
    let forwarded = |t: &str| !t.starts_with("spore_agent") && !t.starts_with("spore::");
    for (k, name) in names.iter().enumerate() {
        let first = format!("all hosts OK #{k}");
        let second = format!("fake line #{k}");
        let with = |text: &str| -> Vec<&(log::Level, String, String)> {
            records.iter().filter(|(_, t, m)| forwarded(t) && m.contains(text)).collect()
        };
        let (ones, twos) = (with(&first), with(&second));
        let mut both: Vec<_> = ones.iter().chain(&twos).collect();
        both.dedup();
        for (_, target, msg) in both {
            if target != &own && !target.starts_with(&under) {
                problems.push(format!("record {k} (named {name:?}) tagged {target}, not {own}: {msg:?}"));
            }
        }
        match (ones.as_slice(), twos.as_slice()) {
            ([(_, t1, m1)], [(_, t2, m2)]) => {
                if m1.contains('\n') || m2.contains('\n') || m1 == m2 {
                    problems
                        .push(format!("record {k}: the embedded newline did not become a record of its own: {m1:?}"));
                }
                if t1 != t2 {
                    problems.push(format!("record {k}: its two lines are tagged {t1} and {t2}"));
                }
                if !["\\x1b", "\\e", "\\u{1b}", "\\033"].iter().any(|esc| m2.contains(esc)) {
                    problems.push(format!("record {k}: the ESC is not shown escaped: {m2:?}"));
                }
            }
            _ => problems.push(format!(
                "record {k}: expected one record per line, got {} with {first:?} and {} with {second:?}",
                ones.len(),
                twos.len()
            )),
        }
    }
    problems.dedup();
    assert!(problems.is_empty(), "forged log records from {}:\n{}", h.name(), problems.join("\n"));
}

#[test]
fn log_records_forged_by_a_child_carry_its_own_path() {
    let guard = LeakGuard::new();
    let fx = Fixture::new();
    let h = fx.connect("hostile");
    forged_log_records_are_tagged_with_the_senders_path(&h, &["master"]);
    drop(h);
    fx.finish(guard);
}

#[test]
fn log_records_forged_below_an_intermediate_carry_the_senders_path() {
    let guard = LeakGuard::new();
    let fx = Fixture::new();
    let i = fx.connect("i");
    let b = fx.connect("b");
    let h = below(&i, "hostile");
    // As the master, as its parent, as a context on another branch.
    forged_log_records_are_tagged_with_the_senders_path(&h, &["master", "i", "b"]);
    drop((i, b, h));
    fx.finish(guard);
}

// ---- id allocation -----------------------------------------------------

#[test]
fn an_allocate_id_flood_gets_no_ids() {
    let guard = LeakGuard::new();
    let fx = Fixture::new();
    let h = fx.connect("hostile");
    let reply = 7000;
    let flood = Frame {
        dst: MASTER_ID,
        handle: handle::ALLOCATE_ID,
        reply_to: Some(reply),
        body: Some("{}".into()),
        repeat: Some(10_000),
        ..Frame::default()
    };
    let start = Instant::now();
    send_frames(&h, vec![flood]).unwrap_or_else(|e| panic!("the hostile context's raw call failed: {e:?}"));
    eprintln!("10,000 ALLOCATE_ID requests went through in {:?}", start.elapsed());
    let st = stats(&h, reply).unwrap_or_else(|e| panic!("the hostile context's stats call failed: {e:?}"));
    eprintln!("on its reply handle: {} messages, {} of them DEAD", st.total, st.dead);
    let c = fx.connect("c");
    c.ping().unwrap();
    let mut problems = Vec::new();
    if st.with_id > 0 {
        problems.push(format!("the hostile context was given {} fresh ids ({st:?})", st.with_id));
    }
    if c.id() >= 100 {
        problems.push(format!("the next context got id {}: the flood used up the id space", c.id()));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    drop((h, c));
    fx.finish(guard);
}

// ---- bodies that don't decode ------------------------------------------

#[test]
fn a_call_whose_body_does_not_decode_gets_a_dead_reply() {
    let guard = LeakGuard::new();
    let fx = Fixture::with(Router::new().unwrap());
    let a = fx.r.local().unwrap();
    let b = a.connect("local").unwrap();
    for ctx in [&a, &b] {
        match ctx.call_async(b"not json".to_vec()).wait_deadline(Instant::now() + Duration::from_secs(5)) {
            Err(Error::Dead { reason, .. }) if reason.contains("decode") => {}
            Ok(msg) => panic!(
                "{}: a body that is not JSON got an {} reply, not DEAD: {:?}",
                ctx.name(),
                if msg.is_end() { "END" } else { "ordinary" },
                String::from_utf8_lossy(&msg.body)
            ),
            Err(other) => panic!("{}: expected a DEAD reply saying what failed to decode, got {other:?}", ctx.name()),
        }
        ctx.ping().unwrap();
    }
    drop((a, b));
    fx.finish(guard);
}
