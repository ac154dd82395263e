//! `fanout_write`: receive one file from the caller, as `write_file` does,
//! and write it to several contexts below this one, each byte sent once down
//! each of our streams (see [`crate::fanout`]).

use super::{next_message, STALL};
use crate::call::{ok, Call, OpError, OpResult};
use crate::fanout::{Fanout, TARGET_LIMIT};
use crate::flow::ack;
use spore_protocol::body::{FanoutArgs, FanoutReply};

/// Write the caller's stream to every target; the reply names how it went
/// for each. Acks go back only as fast as the slowest live target takes the
/// data, so this holds at most a window per target.
pub(crate) fn fanout_write(call: &Call) -> OpResult {
    let args: FanoutArgs = call.args("fanout_write arguments")?;
    check_targets(call, &args)?;
    let mut fan = Fanout::open(&call.broker, &args.targets, &args.path, args.mode, STALL);
    // When every target failed to open, the reply is all there is: the
    // caller sees it before any stream, and sends nothing.
    if fan.live() > 0 {
        let mb = call.open_stream()?;
        let what = format!("fanout_write {}", args.path);
        let mut received: u64 = 0;
        // Once every target has failed the rest of the data is no use: the
        // reply goes back at once (later chunks are dropped unanswered).
        while fan.live() > 0 {
            let msg = next_message(&mb, &what)?;
            if !msg.is_binary() {
                continue;
            }
            fan.send(&msg.body);
            received += msg.body.len() as u64;
            if msg.is_end() {
                break;
            }
            ack(&call.broker, call.caller(), call.request.header.reply_to, received);
        }
    }
    ok(&FanoutReply { results: fan.finish() })
}

/// Only our own descendants, each once, and not too many: a caller can't
/// make us write anywhere it could not reach through us anyway.
fn check_targets(call: &Call, args: &FanoutArgs) -> Result<(), OpError> {
    let n = args.targets.len();
    if n == 0 || n > TARGET_LIMIT {
        let why = format!("fanout_write {}: {n} targets (1 to {TARGET_LIMIT} allowed)", args.path);
        return Err(OpError::new("invalid", why));
    }
    for (i, &t) in args.targets.iter().enumerate() {
        let (kind, why) = if call.broker.child_toward(t).is_none() {
            ("refused", "is not below")
        } else if args.targets.get(..i).unwrap_or_default().contains(&t) {
            ("invalid", "is named twice for")
        } else {
            continue;
        };
        return Err(OpError::new(
            kind,
            format!("fanout_write {}: context {t} {why} {}", args.path, call.broker.name()),
        ));
    }
    Ok(())
}
