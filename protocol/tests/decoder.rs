//! The incremental decoder: any split of the input, malformed frames,
//! poisoning, end of stream, and a bulk transfer.

use spore_protocol::{
    handle, Decoder, FrameError, Header, Message, DEFAULT_MAX_MESSAGE, FLAG_BINARY, FLAG_DEAD, FLAG_END, HEADER_LEN,
    MAGIC,
};

/// Messages of assorted shapes: empty, tiny, header-sized, flagged, extreme ids.
fn assorted() -> Vec<Message> {
    let mut messages = vec![
        Message::new(1, handle::CALL_FUNCTION, br#"{"op":"ping"}"#.to_vec()),
        Message::new(0, handle::FORWARD_LOG, Vec::new()),
        Message::new(u32::MAX, u32::MAX, vec![0xff]),
        Message::new(5, 1000, vec![b'x'; HEADER_LEN - 1]),
        Message::new(6, 1001, vec![b'y'; HEADER_LEN]),
        Message::new(7, 1002, vec![b'z'; HEADER_LEN + 1]),
        Message::new(0, 1003, (0..=255).collect()),
    ];
    messages[0].header.reply_to = 1000;
    messages[2].header.flags = FLAG_DEAD;
    messages[2].header.src = u32::MAX;
    messages[2].header.auth = 0x8000_0000;
    messages[2].header.reply_to = u32::MAX;
    messages[6].header.flags = FLAG_BINARY | FLAG_END;
    messages
}

fn encode_all(messages: &[Message]) -> Vec<u8> {
    let mut stream = Vec::new();
    for message in messages {
        message.encode_into(&mut stream);
    }
    stream
}

/// Pops every message that is ready.
fn drain(decoder: &mut Decoder, into: &mut Vec<Message>) {
    while let Some(message) = decoder.next().expect("valid stream") {
        into.push(message);
    }
}

/// Feeds `pieces` one after another, popping after each, and checks the
/// stream ends cleanly.
fn decode_pieces<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<Message> {
    let mut decoder = Decoder::new(DEFAULT_MAX_MESSAGE);
    let mut out = Vec::new();
    for piece in pieces {
        decoder.push(piece);
        drain(&mut decoder, &mut out);
    }
    assert_eq!(decoder.buffered(), 0);
    assert_eq!(decoder.finish(), Ok(()));
    out
}

/// A header's 28 bytes with the given magic, version, flags and len.
fn raw(magic: u16, version: u8, flags: u8, len: u32) -> [u8; HEADER_LEN] {
    let mut bytes = Header { flags, dst: 1, handle: handle::CALL_FUNCTION, len, ..Header::default() }.encode();
    bytes[0..2].copy_from_slice(&magic.to_be_bytes());
    bytes[2] = version;
    bytes
}

#[test]
fn new_decoder_is_empty() {
    let mut decoder = Decoder::new(1234);
    assert_eq!(decoder.max_len(), 1234);
    assert_eq!(decoder.buffered(), 0);
    assert_eq!(decoder.next(), Ok(None));
    assert_eq!(decoder.finish(), Ok(()));
    decoder.push(&[]);
    assert_eq!(decoder.next(), Ok(None));
}

#[test]
fn every_prefix_needs_more_and_the_whole_frame_decodes() {
    for message in assorted() {
        let frame = message.encode();
        for cut in 0..frame.len() {
            let mut decoder = Decoder::new(DEFAULT_MAX_MESSAGE);
            decoder.push(&frame[..cut]);
            assert_eq!(decoder.next(), Ok(None), "prefix of {cut} bytes");
            assert_eq!(decoder.next(), Ok(None), "asked twice");
            assert_eq!(decoder.buffered(), cut);

            let truncated = if cut == 0 {
                Ok(())
            } else if cut < HEADER_LEN {
                Err(FrameError::Truncated { have: cut, need: HEADER_LEN })
            } else {
                Err(FrameError::Truncated { have: cut, need: frame.len() })
            };
            assert_eq!(decoder.finish(), truncated, "finish after {cut} bytes");

            decoder.push(&frame[cut..]);
            assert_eq!(decoder.next(), Ok(Some(message.clone())), "rest after {cut}");
            assert_eq!(decoder.next(), Ok(None));
            assert_eq!(decoder.buffered(), 0);
            assert_eq!(decoder.finish(), Ok(()));
        }
    }
}

#[test]
fn split_at_every_byte_position() {
    let messages = assorted();
    let stream = encode_all(&messages);
    for cut in 0..=stream.len() {
        let (a, b) = stream.split_at(cut);
        assert_eq!(decode_pieces([a, b]), messages, "split at {cut}");
    }
}

#[test]
fn split_at_every_pair_of_positions() {
    let messages = assorted()[..4].to_vec();
    let stream = encode_all(&messages);
    for i in 0..=stream.len() {
        for j in i..=stream.len() {
            let pieces = [&stream[..i], &stream[i..j], &stream[j..]];
            assert_eq!(decode_pieces(pieces), messages, "split at {i} and {j}");
        }
    }
}

#[test]
fn one_byte_at_a_time() {
    let messages = assorted();
    let stream = encode_all(&messages);
    assert_eq!(decode_pieces(stream.chunks(1)), messages, "popping after each byte");

    // Pushing everything before popping anything gives the same.
    let mut decoder = Decoder::new(DEFAULT_MAX_MESSAGE);
    for byte in &stream {
        decoder.push(std::slice::from_ref(byte));
    }
    assert_eq!(decoder.buffered(), stream.len());
    let mut out = Vec::new();
    drain(&mut decoder, &mut out);
    assert_eq!(out, messages);
}

/// A small deterministic generator (xorshift64*), so the test needs no
/// dependency and every failure is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_messages_in_random_pieces() {
    for seed in 1..=20u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let messages: Vec<Message> = (0..100)
            .map(|_| {
                let len = match rng.below(4) {
                    0 => 0,
                    1 => rng.below(HEADER_LEN as u64 * 2),
                    _ => rng.below(3000),
                } as usize;
                let body = (0..len).map(|_| rng.next() as u8).collect();
                let mut message = Message::new(rng.next() as u32, rng.next() as u32, body);
                message.header.flags = rng.below(8) as u8;
                message.header.src = rng.next() as u32;
                message.header.auth = rng.next() as u32;
                message.header.reply_to = rng.next() as u32;
                message
            })
            .collect();
        let stream = encode_all(&messages);

        let mut pieces = Vec::new();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let size = match rng.below(3) {
                0 => 1 + rng.below(8),
                1 => 1 + rng.below(200),
                _ => 1 + rng.below(8000),
            } as usize;
            let (piece, tail) = rest.split_at(size.min(rest.len()));
            pieces.push(piece);
            rest = tail;
        }
        assert_eq!(decode_pieces(pieces), messages, "seed {seed}");
    }
}

#[test]
fn bad_headers_are_reported_once_the_header_is_in_before_any_body() {
    let max = DEFAULT_MAX_MESSAGE;
    let cases = [
        (raw(0x4854, 1, 0, 10), FrameError::BadMagic(0x4854)),
        (raw(0x5353, 1, 0, 10), FrameError::BadMagic(0x5353)),
        (raw(0, 0, 0, 0), FrameError::BadMagic(0)),
        (raw(MAGIC, 0, 0, 10), FrameError::BadVersion(0)),
        (raw(MAGIC, 2, 0, 10), FrameError::BadVersion(2)),
        (raw(MAGIC, 255, 0, 10), FrameError::BadVersion(255)),
        (raw(MAGIC, 1, 0x08, 10), FrameError::BadFlags(0x08)),
        (raw(MAGIC, 1, 0x80 | FLAG_END, 10), FrameError::BadFlags(0x84)),
        (raw(MAGIC, 1, 0xff, 10), FrameError::BadFlags(0xff)),
        (raw(MAGIC, 1, 0, max + 1), FrameError::TooLong { len: max + 1, max }),
        (raw(MAGIC, 1, 0, u32::MAX), FrameError::TooLong { len: u32::MAX, max }),
    ];
    for (header, error) in cases {
        let mut decoder = Decoder::new(max);
        decoder.push(&header[..HEADER_LEN - 1]);
        assert_eq!(decoder.next(), Ok(None), "{error}: too early to tell");
        decoder.push(&header[HEADER_LEN - 1..]);
        // Only the header is in: the body never arrives, the error must not wait for it.
        assert_eq!(decoder.next(), Err(error));
        assert_eq!(decoder.finish(), Err(error));
    }
}

#[test]
fn plain_text_where_frames_should_be() {
    for noise in [
        &b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"[..],
        b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5\r\n",
        &[0u8; 64],
    ] {
        let mut decoder = Decoder::new(DEFAULT_MAX_MESSAGE);
        decoder.push(noise);
        let magic = u16::from_be_bytes([noise[0], noise[1]]);
        assert_eq!(decoder.next(), Err(FrameError::BadMagic(magic)));
    }
}

#[test]
fn length_limit_is_the_decoders() {
    // len == max is fine, max + 1 is not.
    let mut decoder = Decoder::new(4);
    decoder.push(&Message::new(1, 2, vec![1, 2, 3, 4]).encode());
    assert_eq!(decoder.next().unwrap().unwrap().body, [1, 2, 3, 4]);
    decoder.push(&raw(MAGIC, 1, 0, 5));
    assert_eq!(decoder.next(), Err(FrameError::TooLong { len: 5, max: 4 }));

    // max_len = 0 still carries empty bodies.
    let mut decoder = Decoder::new(0);
    let empty = Message::new(1, handle::SHUTDOWN, Vec::new());
    decoder.push(&empty.encode());
    decoder.push(&empty.encode());
    assert_eq!(decoder.next(), Ok(Some(empty.clone())));
    assert_eq!(decoder.next(), Ok(Some(empty)));
    assert_eq!(decoder.finish(), Ok(()));
    decoder.push(&raw(MAGIC, 1, 0, 1));
    assert_eq!(decoder.next(), Err(FrameError::TooLong { len: 1, max: 0 }));
}

#[test]
fn huge_len_under_a_huge_limit_just_waits() {
    let mut decoder = Decoder::new(u32::MAX);
    decoder.push(&raw(MAGIC, 1, 0, u32::MAX));
    decoder.push(b"a little");
    assert_eq!(decoder.next(), Ok(None));
    assert_eq!(decoder.buffered(), HEADER_LEN + 8);
    assert_eq!(
        decoder.finish(),
        Err(FrameError::Truncated { have: HEADER_LEN + 8, need: (u32::MAX as usize).saturating_add(HEADER_LEN) })
    );
}

#[test]
fn error_after_good_messages_and_poisoning() {
    let good = Message::new(1, handle::CALL_FUNCTION, b"{}".to_vec());
    let mut decoder = Decoder::new(DEFAULT_MAX_MESSAGE);
    decoder.push(&good.encode());
    decoder.push(&good.encode());
    decoder.push(&raw(MAGIC, 2, 0, 0));
    decoder.push(&good.encode());

    assert_eq!(decoder.next(), Ok(Some(good.clone())));
    assert_eq!(decoder.next(), Ok(Some(good.clone())));
    let error = FrameError::BadVersion(2);
    assert_eq!(decoder.next(), Err(error));

    // Poisoned: the same error forever, whatever comes next.
    for _ in 0..3 {
        decoder.push(&good.encode());
        assert_eq!(decoder.next(), Err(error));
    }
    assert_eq!(decoder.buffered(), 0, "a poisoned decoder keeps no input");
    assert_eq!(decoder.finish(), Err(error));
}

#[test]
fn finish_on_a_partial_header() {
    let mut decoder = Decoder::new(DEFAULT_MAX_MESSAGE);
    decoder.push(&raw(MAGIC, 1, 0, 0)[..10]);
    assert_eq!(decoder.next(), Ok(None));
    let error = decoder.finish().unwrap_err();
    assert_eq!(error, FrameError::Truncated { have: 10, need: 28 });
    assert_eq!(error.to_string(), "stream ended inside a frame: have 10 of 28 header bytes");
}

#[test]
fn finish_on_a_partial_body() {
    let frame = Message::new(1, 1000, vec![7; 100]).encode();
    let mut decoder = Decoder::new(DEFAULT_MAX_MESSAGE);

    decoder.push(&frame[..HEADER_LEN]);
    assert_eq!(decoder.next(), Ok(None));
    assert_eq!(decoder.finish().unwrap_err().to_string(), "stream ended inside a frame: have 0 of 100 body bytes");

    decoder.push(&frame[HEADER_LEN..HEADER_LEN + 30]);
    assert_eq!(decoder.next(), Ok(None));
    let error = decoder.finish().unwrap_err();
    assert_eq!(error, FrameError::Truncated { have: HEADER_LEN + 30, need: HEADER_LEN + 100 });
    assert_eq!(error.to_string(), "stream ended inside a frame: have 30 of 100 body bytes");
}

#[test]
fn finish_on_a_clean_boundary() {
    let frame = Message::new(1, 1000, vec![7; 100]).encode();
    let mut decoder = Decoder::new(DEFAULT_MAX_MESSAGE);
    decoder.push(&frame);
    // A whole frame not yet popped is not a truncation...
    assert_eq!(decoder.finish(), Ok(()));
    // ...but a partial one after it is.
    decoder.push(&frame[..5]);
    assert_eq!(decoder.finish(), Err(FrameError::Truncated { have: 5, need: 28 }));
    assert!(decoder.next().unwrap().is_some());
    assert_eq!(decoder.next(), Ok(None));
    decoder.push(&frame[5..]);
    assert!(decoder.next().unwrap().is_some());
    assert_eq!(decoder.finish(), Ok(()));
}

#[test]
fn finish_reports_a_bad_header_not_yet_popped() {
    let mut decoder = Decoder::new(DEFAULT_MAX_MESSAGE);
    decoder.push(&Message::new(1, 2, Vec::new()).encode());
    decoder.push(&raw(MAGIC, 1, 0x10, 0));
    assert_eq!(decoder.finish(), Err(FrameError::BadFlags(0x10)));
    assert!(decoder.next().unwrap().is_some());
    assert_eq!(decoder.next(), Err(FrameError::BadFlags(0x10)));
}

/// A 10 MiB transfer as 128 KiB BINARY chunks, pushed 4 KiB at a time, as
/// a file upload reaches the agent. A quadratic decoder would crawl here.
#[test]
fn ten_mib_of_128_kib_messages_in_4_kib_pushes() {
    const CHUNK: usize = 128 * 1024;
    const COUNT: usize = 80; // 10 MiB
    let body_of = |i: usize| -> Vec<u8> { (0..CHUNK).map(|j| (i * 31 + j) as u8).collect() };

    let mut stream = Vec::with_capacity(COUNT * (HEADER_LEN + CHUNK));
    for i in 0..COUNT {
        let mut message = Message::new(1, 1000, body_of(i));
        message.header.flags = if i + 1 == COUNT { FLAG_BINARY | FLAG_END } else { FLAG_BINARY };
        message.header.reply_to = i as u32;
        message.encode_into(&mut stream);
    }

    let mut decoder = Decoder::new(DEFAULT_MAX_MESSAGE);
    let mut received = 0;
    let mut most_buffered = 0;
    for piece in stream.chunks(4096) {
        decoder.push(piece);
        most_buffered = most_buffered.max(decoder.buffered());
        while let Some(message) = decoder.next().unwrap() {
            assert_eq!(message.header.reply_to as usize, received);
            assert!(message.is_binary());
            assert_eq!(message.is_end(), received + 1 == COUNT);
            assert_eq!(message.body, body_of(received), "message {received}");
            received += 1;
        }
    }
    assert_eq!(received, COUNT);
    assert_eq!(decoder.finish(), Ok(()));
    assert!(most_buffered <= HEADER_LEN + CHUNK + 4096);
}
