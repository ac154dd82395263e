//! Golden byte files that freeze the wire format.
//!
//! `tests/data/*.bin` are checked byte for byte against what `encode`
//! produces today. After a deliberate change to the wire format, rewrite
//! them with
//!
//! ```text
//! SPORE_BLESS=1 cargo test -p spore-protocol --test golden
//! ```
//!
//! and bump [`VERSION`]. The hex spelled out below pins the format a third
//! way, independently of both the encoder and the files.

use std::fs;
use std::path::PathBuf;

use spore_protocol::{
    handle, hex, Decoder, Header, Message, DEFAULT_MAX_MESSAGE, FLAG_BINARY, FLAG_DEAD, FLAG_END, VERSION,
};

/// The golden messages, by file name.
fn golden() -> Vec<(&'static str, Message)> {
    let ping_call = Message {
        header: Header { flags: 0, dst: 1, src: 0, auth: 0, handle: handle::CALL_FUNCTION, reply_to: 1000, len: 0 },
        body: br#"{"op":"ping"}"#.to_vec(),
    };
    let dead_reply = Message {
        header: Header { flags: FLAG_DEAD, dst: 0, src: 1, auth: 1, handle: 1000, reply_to: 0, len: 0 },
        body: b"no route to 17".to_vec(),
    };
    let binary_end_chunk = Message {
        header: Header { flags: FLAG_BINARY | FLAG_END, dst: 0, src: 2, auth: 2, handle: 1001, reply_to: 0, len: 0 },
        body: vec![0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff],
    };
    [("ping_call.bin", ping_call), ("dead_reply.bin", dead_reply), ("binary_end_chunk.bin", binary_end_chunk)]
        .into_iter()
        .map(|(name, mut message)| {
            message.header.len = message.body.len() as u32;
            (name, message)
        })
        .collect()
}

/// The same frames, written out by hand from the table in DESIGN.md.
const GOLDEN_HEX: [(&str, &str); 3] = [
    (
        "ping_call.bin",
        concat!(
            "5350",                       // magic "SP"
            "01",                         // version
            "00",                         // flags
            "00000001",                   // dst 1
            "00000000",                   // src 0 (the master)
            "00000000",                   // auth 0
            "00000065",                   // handle 101 CALL_FUNCTION
            "000003e8",                   // reply_to 1000
            "0000000d",                   // len 13
            "7b226f70223a2270696e67227d", // {"op":"ping"}
        ),
    ),
    (
        "dead_reply.bin",
        concat!(
            "5350",
            "01",
            "01", // DEAD
            "00000000",
            "00000001",
            "00000001",
            "000003e8",
            "00000000",
            "0000000e",
            "6e6f20726f75746520746f203137", // no route to 17
        ),
    ),
    (
        "binary_end_chunk.bin",
        concat!(
            "5350",
            "01",
            "06", // BINARY | END
            "00000000",
            "00000002",
            "00000002",
            "000003e9",
            "00000000",
            "00000006",
            "00017f80feff",
        ),
    ),
];

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn blessing() -> bool {
    std::env::var_os("SPORE_BLESS").is_some_and(|value| value == "1")
}

#[test]
fn encoder_matches_the_hand_written_hex() {
    assert_eq!(VERSION, 1, "a new version needs new golden frames");
    for ((name, message), (hex_name, expected)) in golden().iter().zip(GOLDEN_HEX) {
        assert_eq!(*name, hex_name);
        assert_eq!(hex(&message.encode()), expected, "{name}");
    }
}

#[test]
fn golden_files_match_byte_for_byte() {
    let dir = data_dir();
    for (name, message) in golden() {
        let path = dir.join(name);
        let encoded = message.encode();
        if blessing() {
            fs::write(&path, &encoded).unwrap();
            eprintln!("blessed {}", path.display());
            continue;
        }
        let on_disk = fs::read(&path)
            .unwrap_or_else(|error| panic!("{}: {error}; run with SPORE_BLESS=1 to write it", path.display()));
        assert_eq!(hex(&on_disk), hex(&encoded), "{name}: the encoder no longer writes the frozen wire format");
    }
}

#[test]
fn golden_files_decode_to_the_golden_messages() {
    if blessing() {
        return; // the files may be being rewritten by the other test
    }
    let mut stream = Vec::new();
    for (name, message) in golden() {
        let bytes = fs::read(data_dir().join(name)).unwrap();
        let mut decoder = Decoder::new(DEFAULT_MAX_MESSAGE);
        decoder.push(&bytes);
        assert_eq!(decoder.next(), Ok(Some(message)), "{name}");
        assert_eq!(decoder.next(), Ok(None));
        assert_eq!(decoder.finish(), Ok(()));
        stream.extend_from_slice(&bytes);
    }

    // All three back to back, as they would share a pipe.
    let mut decoder = Decoder::new(DEFAULT_MAX_MESSAGE);
    decoder.push(&stream);
    let mut decoded = Vec::new();
    while let Some(message) = decoder.next().unwrap() {
        decoded.push(message);
    }
    let expected: Vec<Message> = golden().into_iter().map(|(_, m)| m).collect();
    assert_eq!(decoded, expected);
    assert!(decoded[0].header.reply_to == 1000 && !decoded[0].is_dead());
    assert!(decoded[1].is_dead() && decoded[1].body == b"no route to 17");
    assert!(decoded[2].is_binary() && decoded[2].is_end());
}
