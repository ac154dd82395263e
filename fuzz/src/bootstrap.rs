//! Fuzz target `bootstrap`: the handshake's marker scan and hello parsing
//! (`spore_agent::handshake::{MarkerScan, parse_hello}`) fed what a remote
//! might print, in arbitrary splits.
//!
//! Checks: no panic; the scan agrees with a plain line-by-line reading of
//! the same bytes (marker found or not, where the protocol starts, a limit
//! passed), whatever the split; it holds a bounded part of the current
//! line; the last words stay within their bounds; the hello parses the same
//! from any prefix (incomplete, then the final answer), and a hello frame
//! built from the input parses back.

use crate::input::{splits, Input};
use spore_agent::handshake::{parse_hello, LastWords, MarkerScan, KEEP, LAST_WORDS, WORD_LEN};
use spore_protocol::body::{self, Hello};
use spore_protocol::{handle, Message};

const MARKER: &str = "spore-0123456789abcdef";
const ID: u32 = 7;

/// What a plain reading of `data` finds: `Ok(Some((needed, rest)))`,
/// `Ok(None)` (no marker yet), `Err(())` (a limit passed); `None` when the
/// scan may rightly differ (the marker is followed by more blanks than it
/// keeps).
fn reference(data: &[u8], line_limit: u64, noise_limit: u64) -> Option<Result<Option<(bool, usize)>, ()>> {
    let have = format!("{MARKER}:HAVE");
    let mut pos = 0;
    let mut total = 0u64;
    loop {
        let rest = &data[pos..];
        let nl = rest.iter().position(|&b| b == b'\n');
        let line = &rest[..nl.unwrap_or(rest.len())];
        total += line.len() as u64 + u64::from(nl.is_some());
        if line.len() as u64 > line_limit || total > noise_limit {
            return Some(Err(()));
        }
        let Some(nl) = nl else { return Some(Ok(None)) };
        let text = line.trim_ascii_end();
        let found = if text.ends_with(have.as_bytes()) {
            Some((false, have.len()))
        } else {
            need_at_end(text).map(|len| (true, len))
        };
        if let Some((needed, marker_len)) = found {
            if line.len() - text.len() + marker_len > KEEP {
                return None;
            }
            return Some(Ok(Some((needed, pos + nl + 1))));
        }
        pos += nl + 1;
    }
}

/// `MARKER:NEED:<arch>:<gz|plain>` at the end of `text` (the arch 1 to 32
/// of `[a-z0-9_]`): its length.
fn need_at_end(text: &[u8]) -> Option<usize> {
    let prefix = format!("{MARKER}:NEED:");
    for form in [&b":gz"[..], b":plain"] {
        let Some(head) = text.strip_suffix(form) else { continue };
        let plain = |b: &&u8| b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'_';
        let arch = head.iter().rev().take_while(plain).count();
        if (1..=32).contains(&arch) && head[..head.len() - arch].ends_with(prefix.as_bytes()) {
            return Some(prefix.len() + arch + form.len());
        }
    }
    None
}

fn scan(pieces: &[&[u8]], line_limit: u64, noise_limit: u64) -> Result<Option<(bool, usize)>, ()> {
    let mut scan = MarkerScan::with_limits(MARKER, line_limit, noise_limit);
    let mut words = LastWords::default();
    let mut offset = 0;
    let mut result = Ok(None);
    for piece in pieces {
        let pushed = scan.push(piece, &mut words);
        assert!(scan.partial().len() <= 2 * KEEP, "the scan holds {} bytes", scan.partial().len());
        for line in scan.take_logged() {
            assert!(line.len() <= WORD_LEN + 32);
        }
        match pushed {
            Ok(None) => offset += piece.len(),
            Ok(Some(found)) => {
                assert!(found.rest <= piece.len());
                result = Ok(Some((found.need.is_some(), offset + found.rest)));
                break;
            }
            Err(e) => {
                assert!(e.len() < 300, "a long error: {e}");
                result = Err(());
                break;
            }
        }
    }
    scan.finish(&mut words);
    let lines = words.lines();
    assert!(lines.len() <= LAST_WORDS);
    for line in &lines {
        assert!(line.len() <= WORD_LEN + 32, "a long last word: {} bytes", line.len());
        assert!(!line.chars().any(char::is_control), "a control character shown: {line:?}");
    }
    result
}

/// Check the hello at the front of `rest`, from a few of its prefixes.
fn hello(rest: &[u8], seed: u32) {
    let full = parse_hello(rest, ID);
    if let Ok(Some((h, used))) = &full {
        assert!(*used <= rest.len());
        assert_eq!(h.context_id, ID);
    }
    let mut upto = 0;
    for piece in splits(rest, seed, 64) {
        upto += piece.len();
        let part = parse_hello(&rest[..upto], ID);
        match (&part, &full) {
            (Ok(None), _) => {}
            (Ok(Some((h, used))), Ok(Some((h2, used2)))) => assert!(h == h2 && used == used2),
            (Err(a), Err(b)) => assert_eq!(a, b),
            _ => panic!("a prefix of {upto} bytes gave {part:?}, the whole {full:?}"),
        }
    }
}

/// The fuzz body.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let seed = input.u32();
    let max_piece = usize::from(input.byte()) + 1;
    let line_limit = match mode >> 5 {
        0 => 0,
        1 => 8,
        2 => 64,
        3 => 1000,
        _ => spore_agent::handshake::LINE_LIMIT,
    };
    let noise_limit = match (mode >> 3) & 3 {
        0 => 100,
        1 => 2000,
        _ => spore_agent::handshake::NOISE_LIMIT,
    };
    let stream: Vec<u8> = if mode & 1 == 0 {
        input.rest().to_vec()
    } else {
        // Noise lines, the marker, a hello built from the input, more.
        let mut out = Vec::new();
        for _ in 0..input.byte() % 8 {
            out.extend_from_slice(input.bytes(80));
            out.push(b'\n');
        }
        out.extend_from_slice(input.bytes(40));
        out.extend_from_slice(MARKER.as_bytes());
        out.extend_from_slice(if mode & 2 == 0 { b":HAVE" } else { b":NEED:x86_64:gz" });
        out.extend_from_slice(input.pick(&[&b"\n"[..], b"\r\n", b" \t\n"]));
        let h = Hello {
            version: String::from_utf8_lossy(input.bytes(16)).into_owned(),
            pid: input.u32(),
            arch: String::from_utf8_lossy(input.bytes(16)).into_owned(),
            context_id: if mode & 4 == 0 { ID } else { input.u32() },
        };
        let mut m = Message::new(0, if input.byte() == 0 { 0 } else { handle::HELLO }, body::to_json(&h));
        m.header.src = ID;
        m.encode_into(&mut out);
        out.extend_from_slice(input.rest());
        out
    };
    let whole = scan(&[&stream], line_limit, noise_limit);
    let split = scan(&splits(&stream, seed, max_piece), line_limit, noise_limit);
    assert_eq!(whole, split, "the split changed the scan");
    if let Some(expected) = reference(&stream, line_limit, noise_limit) {
        assert_eq!(whole, expected, "the scan and a plain reading disagree");
    }
    if let Ok(Some((_, rest))) = whole {
        hello(&stream[rest..], seed);
    } else {
        hello(&stream, seed);
    }
}
