//! The fixed header and `Message`: layout, round-trips, validation, errors.

use spore_protocol::{
    handle, FrameError, Header, Message, DEFAULT_MAX_MESSAGE, FLAG_BINARY, FLAG_DEAD, FLAG_END, HEADER_LEN, MAGIC,
    VERSION,
};

/// Ids and lengths at the edges: zero, one, the sign bit, all ones, and a
/// value whose bytes all differ (catches swapped or misplaced bytes).
const EXTREMES: [u32; 7] = [0, 1, 0x0102_0304, 0x7fff_ffff, 0x8000_0000, 0xfffe_fdfc, u32::MAX];

/// A header's 28 bytes with the given magic, version, flags and len.
fn raw(magic: u16, version: u8, flags: u8, len: u32) -> [u8; HEADER_LEN] {
    let mut bytes = Header { flags, len, ..Header::default() }.encode();
    bytes[0..2].copy_from_slice(&magic.to_be_bytes());
    bytes[2] = version;
    bytes
}

fn hex(bytes: &[u8]) -> String {
    spore_protocol::hex(bytes)
}

#[test]
fn constants_match_the_design() {
    assert_eq!(HEADER_LEN, 28);
    assert_eq!(MAGIC.to_be_bytes(), *b"SP");
    assert_eq!(VERSION, 1);
    assert_eq!((FLAG_DEAD, FLAG_BINARY, FLAG_END), (1, 2, 4));
    assert_eq!(DEFAULT_MAX_MESSAGE, 134_217_728);
    assert_eq!(spore_protocol::MASTER_ID, 0);
    assert_eq!(
        [
            handle::CALL_FUNCTION,
            handle::FORWARD_LOG,
            handle::ADD_ROUTE,
            handle::ALLOCATE_ID,
            handle::SHUTDOWN,
            handle::DEL_ROUTE,
            handle::HELLO,
            handle::FIRST_DYNAMIC,
        ],
        [101, 102, 103, 104, 105, 106, 107, 1000]
    );
}

#[test]
fn every_field_sits_at_its_offset_big_endian() {
    let header = Header {
        flags: FLAG_DEAD | FLAG_END,
        dst: 0x1112_1314,
        src: 0x2122_2324,
        auth: 0x3132_3334,
        handle: 0x4142_4344,
        reply_to: 0x5152_5354,
        len: 0x0061_6264,
    };
    assert_eq!(
        hex(&header.encode()),
        concat!("5350", "01", "05", "11121314", "21222324", "31323334", "41424344", "51525354", "00616264",)
    );
}

#[test]
fn default_header_is_magic_version_and_zeroes() {
    let mut expected = [0u8; HEADER_LEN];
    expected[..3].copy_from_slice(&[0x53, 0x50, 0x01]);
    assert_eq!(Header::default().encode(), expected);
}

#[test]
fn round_trip_every_flag_combination_and_extreme_ids() {
    let mut checked = 0;
    for flags in 0..=FLAG_DEAD | FLAG_BINARY | FLAG_END {
        for &value in &EXTREMES {
            // Every field at the extreme at once, then each field alone at
            // the extreme while the others hold distinct values.
            let all = Header { flags, dst: value, src: value, auth: value, handle: value, reply_to: value, len: value };
            let base = Header { flags, dst: 1, src: 2, auth: 3, handle: 4, reply_to: 5, len: 6 };
            let singles = [
                Header { dst: value, ..base },
                Header { src: value, ..base },
                Header { auth: value, ..base },
                Header { handle: value, ..base },
                Header { reply_to: value, ..base },
                Header { len: value, ..base },
            ];
            for header in std::iter::once(all).chain(singles) {
                let bytes = header.encode();
                assert_eq!(&bytes[..4], &[0x53, 0x50, 0x01, flags]);
                assert_eq!(Header::decode(&bytes, u32::MAX), Ok(header), "{header:?}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 8 * EXTREMES.len() * 7);
}

#[test]
fn bad_magic() {
    let cases: [(&[u8; 4], u16); 6] = [
        (b"HTTP", 0x4854),
        (b"SSH-", 0x5353),
        (b"\0\0\0\0", 0x0000),
        (b"PS\x01\x00", 0x5053), // byte-swapped magic
        (b"\xff\xff\xff\xff", 0xffff),
        (b"NEED", 0x4e45), // a bootstrap marker where a frame should be
    ];
    for (start, magic) in cases {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[..4].copy_from_slice(start);
        assert_eq!(Header::decode(&bytes, DEFAULT_MAX_MESSAGE), Err(FrameError::BadMagic(magic)), "{start:?}");
    }
    assert_eq!(Header::decode(&[0; HEADER_LEN], DEFAULT_MAX_MESSAGE), Err(FrameError::BadMagic(0)));
    // Text through and through, as from a shell's start-up noise.
    let text: &[u8; HEADER_LEN] = b"HTTP/1.1 400 Bad Request\r\n\r\n";
    assert_eq!(Header::decode(text, DEFAULT_MAX_MESSAGE), Err(FrameError::BadMagic(0x4854)));
}

#[test]
fn bad_version() {
    for version in [0, 2, 3, 0x7f, 0x80, 255] {
        assert_eq!(
            Header::decode(&raw(MAGIC, version, 0, 0), DEFAULT_MAX_MESSAGE),
            Err(FrameError::BadVersion(version))
        );
    }
}

#[test]
fn unknown_flag_bits() {
    for bit in 3..8 {
        let unknown = 1u8 << bit;
        for known in 0..8 {
            let flags = unknown | known;
            assert_eq!(
                Header::decode(&raw(MAGIC, VERSION, flags, 0), DEFAULT_MAX_MESSAGE),
                Err(FrameError::BadFlags(flags))
            );
        }
    }
    assert_eq!(Header::decode(&raw(MAGIC, VERSION, 0xff, 0), DEFAULT_MAX_MESSAGE), Err(FrameError::BadFlags(0xff)));
}

#[test]
fn length_limit() {
    let max = DEFAULT_MAX_MESSAGE;
    let decode = |len, max| Header::decode(&raw(MAGIC, VERSION, 0, len), max).map(|h| h.len);
    assert_eq!(decode(max, max), Ok(max));
    assert_eq!(decode(max + 1, max), Err(FrameError::TooLong { len: max + 1, max }));
    assert_eq!(decode(u32::MAX, max), Err(FrameError::TooLong { len: u32::MAX, max }));
    assert_eq!(decode(u32::MAX, u32::MAX), Ok(u32::MAX));
    assert_eq!(decode(0, 0), Ok(0));
    assert_eq!(decode(1, 0), Err(FrameError::TooLong { len: 1, max: 0 }));
}

#[test]
fn checks_run_magic_version_flags_len_in_that_order() {
    let max = 10;
    assert_eq!(Header::decode(&raw(0x4854, 2, 0xf8, 11), max), Err(FrameError::BadMagic(0x4854)));
    assert_eq!(Header::decode(&raw(MAGIC, 2, 0xf8, 11), max), Err(FrameError::BadVersion(2)));
    assert_eq!(Header::decode(&raw(MAGIC, VERSION, 0xf8, 11), max), Err(FrameError::BadFlags(0xf8)));
    assert_eq!(Header::decode(&raw(MAGIC, VERSION, 0, 11), max), Err(FrameError::TooLong { len: 11, max }));
}

#[test]
fn error_messages_say_what_is_wrong() {
    let cases = [
        (FrameError::BadMagic(0x4854), "bad magic 0x4854 (expected 0x5350): the stream is corrupt"),
        (FrameError::BadMagic(0), "bad magic 0x0000 (expected 0x5350): the stream is corrupt"),
        (FrameError::BadVersion(2), "unsupported protocol version 2 (expected 1)"),
        (FrameError::BadFlags(0x09), "unknown flag bits 0x08 in flags 0x09"),
        (
            FrameError::TooLong { len: 200_000_000, max: DEFAULT_MAX_MESSAGE },
            "message of 200000000 bytes is over the limit of 134217728",
        ),
        (FrameError::Truncated { have: 10, need: 28 }, "stream ended inside a frame: have 10 of 28 header bytes"),
        (FrameError::Truncated { have: 0, need: 28 }, "stream ended inside a frame: have 0 of 28 header bytes"),
        (FrameError::Truncated { have: 58, need: 128 }, "stream ended inside a frame: have 30 of 100 body bytes"),
        (
            // A 28-byte body, cut before its first byte: not confused
            // with a header.
            FrameError::Truncated { have: 28, need: 56 },
            "stream ended inside a frame: have 0 of 28 body bytes",
        ),
    ];
    for (error, text) in cases {
        assert_eq!(error.to_string(), text);
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(error);
        assert_eq!(boxed.to_string(), text);
    }
}

#[test]
fn message_new_sets_dst_handle_and_len_only() {
    let message = Message::new(7, handle::SHUTDOWN, b"{}".to_vec());
    assert_eq!(message.header, Header { dst: 7, handle: handle::SHUTDOWN, len: 2, ..Header::default() });
    assert_eq!(message.body, b"{}");
    assert!(!message.is_dead() && !message.is_binary() && !message.is_end());
}

#[test]
fn flag_predicates() {
    for flags in 0..8 {
        let mut message = Message::default();
        message.header.flags = flags;
        assert_eq!(message.is_dead(), flags & FLAG_DEAD != 0);
        assert_eq!(message.is_binary(), flags & FLAG_BINARY != 0);
        assert_eq!(message.is_end(), flags & FLAG_END != 0);
    }
}

#[test]
fn encode_is_header_then_body_with_len_from_the_body() {
    let mut message = Message::new(3, 1001, vec![0, 1, 2, 0xff]);
    message.header.len = 999; // stale: encode must not trust it
    message.header.flags = FLAG_BINARY;
    let bytes = message.encode();
    assert_eq!(bytes.len(), HEADER_LEN + 4);
    let header = Header::decode(bytes[..HEADER_LEN].try_into().unwrap(), u32::MAX).unwrap();
    assert_eq!(header.len, 4);
    assert_eq!(header.flags, FLAG_BINARY);
    assert_eq!(&bytes[HEADER_LEN..], &[0, 1, 2, 0xff]);

    let empty = Message::new(0, handle::FORWARD_LOG, Vec::new()).encode();
    assert_eq!(empty.len(), HEADER_LEN);
    assert_eq!(&empty[24..28], &[0, 0, 0, 0]);
}

#[test]
fn encode_into_appends_the_same_bytes() {
    let message = Message::new(1, handle::CALL_FUNCTION, br#"{"op":"ping"}"#.to_vec());
    let mut out = b"already here".to_vec();
    message.encode_into(&mut out);
    message.encode_into(&mut out);
    let one = message.encode();
    assert_eq!(&out[..12], b"already here");
    assert_eq!(&out[12..12 + one.len()], &one[..]);
    assert_eq!(&out[12 + one.len()..], &one[..]);
}
