//! Fuzz target `decoder`: the frame decoder fed arbitrary bytes in
//! arbitrary splits.
//!
//! Checks: it never panics; the messages and the error it returns do not
//! depend on how the bytes were split; the messages it returns re-encode to
//! exactly the bytes they came from; a poisoned decoder stays poisoned;
//! `finish` tells a clean end from a cut frame; the buffer never holds more
//! than what was pushed and not returned.

use crate::input::{splits, Input};
use spore_protocol::{Decoder, FrameError, Header, Message, HEADER_LEN};

/// What decoding a stream gave: the messages, then an error if any.
#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<Message>,
    error: Option<FrameError>,
    finish: Result<(), FrameError>,
    buffered: usize,
}

fn decode(pieces: &[&[u8]], max_len: u32) -> Outcome {
    let mut decoder = Decoder::new(max_len);
    let mut messages = Vec::new();
    let mut error = None;
    let mut pushed = 0usize;
    let mut returned = 0usize;
    for piece in pieces {
        decoder.push(piece);
        pushed += piece.len();
        loop {
            match decoder.next() {
                Ok(Some(m)) => {
                    returned += HEADER_LEN + m.body.len();
                    messages.push(m);
                }
                Ok(None) => break,
                Err(e) => {
                    // Poisoned: the same error, forever, and no buffer.
                    assert_eq!(decoder.next(), Err(e));
                    assert_eq!(decoder.buffered(), 0);
                    error = Some(e);
                    break;
                }
            }
        }
        if error.is_some() {
            break;
        }
        assert_eq!(decoder.buffered(), pushed - returned, "buffered bytes are exactly those not returned");
    }
    Outcome { messages, error, finish: decoder.finish(), buffered: decoder.buffered() }
}

/// The fuzz body.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let max_len = match mode >> 4 {
        0 => 0,
        1 => 1,
        2 => 16,
        3 => 4096,
        4 => u32::MAX,
        _ => spore_protocol::DEFAULT_MAX_MESSAGE,
    };
    let seed = input.u32();
    let max_piece = usize::from(input.byte()) + 1;
    let wire: Vec<u8> = if mode & 1 == 0 {
        // Raw bytes, as a hostile peer would send them.
        input.rest().to_vec()
    } else {
        // Mostly valid frames, built from the input, with raw bytes mixed in.
        let mut wire = Vec::new();
        while !input.is_empty() {
            match input.byte() % 8 {
                0 => wire.extend_from_slice(input.bytes(64)),
                _ => {
                    let header = Header {
                        flags: input.pick(&[0, 1, 2, 4, 5, 6, 7, 8, 0x80]),
                        dst: input.u32(),
                        src: input.u32(),
                        auth: input.u32(),
                        handle: input.u32(),
                        reply_to: input.u32(),
                        len: 0,
                    };
                    let body = input.bytes(300).to_vec();
                    Message { header, body }.encode_into(&mut wire);
                }
            }
        }
        wire
    };
    let whole = decode(&[&wire], max_len);
    let split = decode(&splits(&wire, seed, max_piece), max_len);
    let bytewise: Vec<&[u8]> = wire.chunks(1).collect();
    assert_eq!(whole, split, "the split changed the outcome");
    if wire.len() <= 512 {
        assert_eq!(whole, decode(&bytewise, max_len), "byte-by-byte changed the outcome");
    }
    // The messages re-encode to the bytes they came from.
    let mut again = Vec::new();
    for m in &whole.messages {
        assert_eq!(m.header.len as usize, m.body.len());
        assert!(m.body.len() <= max_len as usize);
        m.encode_into(&mut again);
    }
    assert_eq!(again.as_slice(), &wire[..again.len()], "a decoded frame re-encodes differently");
    let rest = &wire[again.len()..];
    match (whole.error, whole.finish) {
        (Some(e), finish) => {
            assert_eq!(finish, Err(e));
            // The error is the header right after the last message.
            let head: &[u8; HEADER_LEN] = rest.first_chunk().expect("an error needs a whole header");
            assert_eq!(Header::decode(head, max_len), Err(e));
            assert!(!e.to_string().is_empty());
        }
        (None, Ok(())) => assert!(rest.is_empty()),
        (None, Err(FrameError::Truncated { have, need })) => {
            assert_eq!(have, rest.len());
            assert!(have < need);
            assert_eq!(whole.buffered, rest.len());
        }
        (None, Err(e)) => panic!("finish gave {e:?} without an error from next"),
    }
}
