//! The pure half of the handshake: the scan for the HAVE/NEED marker
//! through start-up noise, the last words kept for an error, the hello's
//! parse. Bytes in, answers out; fuzzed (`fuzz/`).

use spore_protocol::body::{self, Hello};
use spore_protocol::{handle, Header, HEADER_LEN};
use std::collections::VecDeque;

/// Bytes of a line's end kept while it has no newline yet: enough for the
/// marker (and trailing blanks), a password prompt and the last words.
pub const KEEP: usize = 4096;
/// The longest line the remote may print before the marker: a line with
/// the marker at its end may start with noise, but not with this much.
pub const LINE_LIMIT: u64 = 1024 * 1024;
/// The most the remote may print before the marker.
pub const NOISE_LIMIT: u64 = 256 * 1024 * 1024;
/// Lines kept for the error: the last ones the remote printed.
pub const LAST_WORDS: usize = 8;
/// Bytes of one of them shown (escaped), at most.
pub const WORD_LEN: usize = 240;
/// Noise lines logged (at debug level); the rest are counted.
pub const LOGGED_LINES: u64 = 16;
/// The longest hello body an agent may send.
pub const HELLO_LIMIT: u32 = 16 * 1024;
/// Bytes of stdout buffered after the marker while waiting for the hello.
pub const AFTER_MARKER_LIMIT: usize = HEADER_LEN + HELLO_LIMIT as usize;

/// The last lines the remote printed, each cut to [`WORD_LEN`] and shown
/// with control characters escaped: at most [`LAST_WORDS`] of them.
#[derive(Debug, Default, Clone)]
pub struct LastWords {
    lines: VecDeque<String>,
}

impl LastWords {
    /// Keep `line` (blank lines are not kept); `len` is its whole length,
    /// when only a part of it is in `line`.
    pub fn remember(&mut self, line: &[u8], len: u64) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        if self.lines.len() == LAST_WORDS {
            self.lines.pop_front();
        }
        self.lines.push_back(shown(line, len));
    }

    /// The lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
    }
}

/// `line` as text for an error: lossy UTF-8, control characters escaped,
/// at most [`WORD_LEN`] bytes of it, and its length if more was cut.
pub fn shown(line: &[u8], len: u64) -> String {
    let mut out = String::new();
    let mut cut = false;
    for c in String::from_utf8_lossy(line).chars() {
        let before = out.len();
        if c.is_control() {
            match c {
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\n' => out.push_str("\\n"),
                c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.extend(c.escape_default()),
            }
        } else {
            out.push(c);
        }
        if out.len() > WORD_LEN {
            out.truncate(before);
            cut = true;
            break;
        }
    }
    if cut || len > line.len() as u64 {
        out.push_str(&format!(" [… {} bytes]", len.max(line.len() as u64)));
    }
    out
}

/// What the script asked for: `NEED:<arch>:gz` or `NEED:<arch>:plain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// The architecture whose image it chose.
    pub arch: String,
    /// It can unpack gzip.
    pub gz: bool,
}

/// Where the marker was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `NEED`: the image must be uploaded; `None` (`HAVE`): the cache hit.
    pub need: Option<Need>,
    /// Offset, in the bytes last pushed, of what follows the marker's line.
    pub rest: usize,
}

/// Reads the connection's stdout up to the HAVE/NEED marker: the marker
/// ends a line (after optional blanks, and optional noise before it on the
/// same line); every other line is start-up noise. Linear in the bytes
/// pushed, in bounded memory: of the current line only its last [`KEEP`]
/// bytes are kept, of the noise only the [`LastWords`].
#[derive(Debug)]
pub struct MarkerScan {
    have: Vec<u8>,
    need: Vec<u8>,
    /// The end of the current line (at most 2 × [`KEEP`] bytes).
    line: Vec<u8>,
    /// The current line's whole length.
    line_len: u64,
    /// Bytes pushed so far.
    total: u64,
    line_limit: u64,
    noise_limit: u64,
    /// Noise lines seen, and their bytes.
    lines: u64,
    noise_bytes: u64,
    /// The first [`LOGGED_LINES`] noise lines, for the log.
    logged: Vec<String>,
}

impl MarkerScan {
    /// A scan for `marker:HAVE` / `marker:NEED`, with the usual limits.
    pub fn new(marker: &str) -> MarkerScan {
        MarkerScan::with_limits(marker, LINE_LIMIT, NOISE_LIMIT)
    }

    /// The same, with other limits (for tests).
    pub fn with_limits(marker: &str, line_limit: u64, noise_limit: u64) -> MarkerScan {
        MarkerScan {
            have: format!("{marker}:HAVE").into_bytes(),
            need: format!("{marker}:NEED:").into_bytes(),
            line: Vec::new(),
            line_len: 0,
            total: 0,
            line_limit,
            noise_limit,
            lines: 0,
            noise_bytes: 0,
            logged: Vec::new(),
        }
    }

    /// The next bytes of stdout. `Ok(Some(found))` once the marker's line
    /// is complete: the bytes after it (from `found.rest`) are the
    /// protocol's. Noise lines go to `words`. An error names a limit the
    /// remote went past; the scan must not be pushed to after `Some` or an
    /// error.
    pub fn push(&mut self, bytes: &[u8], words: &mut LastWords) -> Result<Option<Found>, String> {
        let mut at = 0;
        while at < bytes.len() {
            let rest = bytes.get(at..).unwrap_or_default();
            let (segment, newline) = match rest.iter().position(|&b| b == b'\n') {
                Some(nl) => (rest.get(..nl).unwrap_or_default(), true),
                None => (rest, false),
            };
            self.line_len += segment.len() as u64;
            self.total += segment.len() as u64 + u64::from(newline);
            self.line.extend_from_slice(segment);
            if self.line.len() > 2 * KEEP {
                let cut = self.line.len() - KEEP;
                self.line.drain(..cut);
            }
            if self.line_len > self.line_limit {
                return Err(format!(
                    "the remote printed a line of more than {} bytes before the bootstrap marker \
                     (output from shell start-up files without a newline?)",
                    self.line_limit
                ));
            }
            if self.total > self.noise_limit {
                return Err(format!(
                    "the remote printed more than {} bytes before the bootstrap marker \
                     (output from shell start-up files?)",
                    self.noise_limit
                ));
            }
            at += segment.len();
            if !newline {
                break;
            }
            at += 1;
            let line = std::mem::take(&mut self.line);
            let len = std::mem::take(&mut self.line_len);
            let text = line.trim_ascii_end();
            let (noise, found) = if let Some(n) = text.strip_suffix(self.have.as_slice()) {
                (n, Some(None))
            } else if let Some((n, need)) = split_need(text, &self.need) {
                (n, Some(Some(need)))
            } else {
                (text, None)
            };
            // The part of the line we no longer hold.
            let gone = len - line.len() as u64;
            self.noise(noise, gone + noise.len() as u64, words);
            if let Some(need) = found {
                return Ok(Some(Found { need, rest: at }));
            }
            self.line = line;
            self.line.clear();
        }
        Ok(None)
    }

    fn noise(&mut self, line: &[u8], len: u64, words: &mut LastWords) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        self.lines += 1;
        self.noise_bytes += len;
        if self.lines <= LOGGED_LINES {
            self.logged.push(shown(line, len));
        }
        words.remember(line, len);
    }

    /// Noise lines to log, since the last call.
    pub fn take_logged(&mut self) -> Vec<String> {
        std::mem::take(&mut self.logged)
    }

    /// Noise lines seen but not logged, and their bytes.
    pub fn unlogged(&self) -> (u64, u64) {
        let lines = self.lines.saturating_sub(LOGGED_LINES);
        (lines, if lines > 0 { self.noise_bytes } else { 0 })
    }

    /// The end of the current line (a prompt waits without a newline).
    pub fn partial(&self) -> &[u8] {
        &self.line
    }

    /// Forget the current line (a prompt that was answered).
    pub fn clear_partial(&mut self) {
        self.line.clear();
        self.line_len = 0;
    }

    /// Bytes pushed so far (up to the marker's line, once found).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The stream ended, or the handshake failed: the current line goes to
    /// the last words.
    pub fn finish(&mut self, words: &mut LastWords) {
        let line = std::mem::take(&mut self.line);
        words.remember(line.trim_ascii(), self.line_len);
        self.line_len = 0;
    }
}

/// `noise` + `marker:NEED:<arch>:<gz|plain>` at the end of `line`: the
/// noise before it, and what it asks for.
fn split_need<'a>(line: &'a [u8], prefix: &[u8]) -> Option<(&'a [u8], Need)> {
    let at = line.windows(prefix.len()).rposition(|w| w == prefix)?;
    let ask = line.get(at + prefix.len()..)?;
    let colon = ask.iter().position(|&b| b == b':')?;
    let (arch, form) = (ask.get(..colon)?, ask.get(colon + 1..)?);
    let plain_name = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_';
    if arch.is_empty() || arch.len() > 32 || !arch.iter().all(plain_name) {
        return None;
    }
    let gz = match form {
        b"gz" => true,
        b"plain" => false,
        _ => return None,
    };
    let arch = String::from_utf8_lossy(arch).into_owned();
    Some((line.get(..at)?, Need { arch, gz }))
}

/// The agent's hello at the front of `buf`, the bytes after the marker:
/// `Ok(None)` while it is incomplete; `Ok(Some((hello, used)))` once it
/// is in, `used` bytes long; an error when the first message is not a
/// hello from context `id` of at most [`HELLO_LIMIT`] bytes.
pub fn parse_hello(buf: &[u8], id: u32) -> Result<Option<(Hello, usize)>, String> {
    let Some(raw) = buf.first_chunk::<HEADER_LEN>() else { return Ok(None) };
    let header = Header::decode(raw, HELLO_LIMIT).map_err(|e| format!("the agent did not answer with a hello: {e}"))?;
    let end = HEADER_LEN + header.len as usize;
    let Some(body) = buf.get(HEADER_LEN..end) else { return Ok(None) };
    if header.handle != handle::HELLO {
        return Err(format!("the agent's first message was not a hello (handle {})", header.handle));
    }
    let hello: Hello = body::decode(body, "hello").map_err(|e| e.to_string())?;
    if hello.context_id != id {
        return Err(format!("the agent says it is context {}, not {id}", hello.context_id));
    }
    Ok(Some((hello, end)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::READ_CHUNK;
    use spore_protocol::Message;

    const M: &str = "spore-0123456789abcdef";

    #[test]
    fn the_marker_may_straddle_reads_and_follow_noise_on_its_line() {
        let wire = format!("Welcome!\r\nLast login\nnoise{M}:NEED:aarch64:gz\r\nAGENT");
        for split in 1..wire.len() {
            let (a, b) = wire.as_bytes().split_at(split);
            let mut scan = MarkerScan::new(M);
            let mut words = LastWords::default();
            let found = match scan.push(a, &mut words).unwrap() {
                Some(f) => (f.need, [a.get(f.rest..).unwrap(), b].concat()),
                None => {
                    let f = scan.push(b, &mut words).unwrap().unwrap();
                    (f.need, b.get(f.rest..).unwrap().to_vec())
                }
            };
            let need = Need { arch: "aarch64".into(), gz: true };
            assert_eq!(found, (Some(need), b"AGENT".to_vec()), "split at {split}");
            assert_eq!(words.lines(), ["Welcome!", "Last login", "noise"]);
        }
    }

    #[test]
    fn a_need_names_an_architecture_and_a_form() {
        let p = format!("{M}:NEED:");
        let p = p.as_bytes();
        let need = |arch: &str, gz| Need { arch: arch.into(), gz };
        assert_eq!(split_need(format!("x{M}:NEED:armv7:plain").as_bytes(), p), Some((&b"x"[..], need("armv7", false))));
        for bad in ["NEED:", "NEED::gz", "NEED:x86_64", "NEED:x86_64:zip", "NEED:X86:gz", "NEED:a b:gz"] {
            assert_eq!(split_need(format!("{M}:{bad}").as_bytes(), p), None, "{bad}");
        }
        let mut scan = MarkerScan::new(M);
        let mut words = LastWords::default();
        let found = scan.push(format!("{M}:NEED:mips:gz\n{M}:HAVE\n").as_bytes(), &mut words).unwrap().unwrap();
        assert_eq!(found.need, Some(need("mips", true)));
    }

    #[test]
    fn a_flood_without_a_newline_is_refused_in_bounded_memory() {
        let mut scan = MarkerScan::new(M);
        let mut words = LastWords::default();
        let chunk = vec![0u8; READ_CHUNK];
        let mut pushed = 0u64;
        let error = loop {
            match scan.push(&chunk, &mut words) {
                Ok(None) => pushed += chunk.len() as u64,
                Ok(Some(_)) => panic!("a marker in zeros"),
                Err(e) => break e,
            }
            assert!(scan.partial().len() <= 2 * KEEP);
        };
        assert!(pushed <= LINE_LIMIT && error.contains("without a newline"), "{error}");
        scan.finish(&mut words);
        let shown = words.lines();
        assert!(shown.len() == 1 && shown[0].len() < WORD_LEN + 32 && shown[0].starts_with("\\x00"), "{shown:?}");
    }

    #[test]
    fn a_hello_is_parsed_once_whole_and_bounded() {
        let hello = Hello { version: "1".into(), pid: 2, arch: "x".into(), context_id: 7 };
        let mut wire = Message::new(0, handle::HELLO, body::encode(&hello)).encode();
        wire.extend_from_slice(b"next");
        let whole = wire.len() - 4;
        for n in 0..whole {
            assert_eq!(parse_hello(wire.get(..n).unwrap(), 7), Ok(None));
        }
        assert_eq!(parse_hello(&wire, 7), Ok(Some((hello, whole))));
        assert!(parse_hello(&wire, 8).unwrap_err().contains("not 8"));
        let big = Message::new(0, handle::HELLO, vec![b' '; HELLO_LIMIT as usize + 1]).encode();
        assert!(parse_hello(big.get(..HEADER_LEN).unwrap(), 7).unwrap_err().contains("over the limit"));
    }
}
