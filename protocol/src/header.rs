//! The fixed 28-byte header, a whole message, and the framing errors.

use std::fmt;

use byteorder::{BigEndian, ByteOrder};

use crate::{FLAG_BINARY, FLAG_DEAD, FLAG_END, HEADER_LEN, MAGIC, VERSION};

/// Every flag bit this version defines; any other bit set is an error.
const KNOWN_FLAGS: u8 = FLAG_DEAD | FLAG_BINARY | FLAG_END;

/// The fixed header in front of every message body.
///
/// On the wire it is [`HEADER_LEN`] big-endian bytes:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 2 | magic, [`MAGIC`] |
/// | 2 | 1 | version, [`VERSION`] |
/// | 3 | 1 | [`flags`](Header::flags) |
/// | 4 | 4 | [`dst`](Header::dst) |
/// | 8 | 4 | [`src`](Header::src) |
/// | 12 | 4 | [`auth`](Header::auth) |
/// | 16 | 4 | [`handle`](Header::handle) |
/// | 20 | 4 | [`reply_to`](Header::reply_to) |
/// | 24 | 4 | [`len`](Header::len) |
///
/// Magic and version are not stored: [`encode`](Header::encode) writes them
/// and [`decode`](Header::decode) checks them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Header {
    /// [`FLAG_DEAD`], [`FLAG_BINARY`] and [`FLAG_END`] bits.
    pub flags: u8,
    /// The context that should receive the message.
    pub dst: u32,
    /// The context that sent it.
    pub src: u32,
    /// The context whose authority it carries, stamped by the router.
    pub auth: u32,
    /// Which handler receives it at `dst`.
    pub handle: u32,
    /// The handle at `src` for the reply; 0 means no reply is wanted.
    pub reply_to: u32,
    /// Body length in bytes.
    pub len: u32,
}

impl Header {
    /// Big-endian, magic and version filled in.
    ///
    /// The fields are written as they are: flag bits this version does not
    /// define are not masked off (and [`decode`](Header::decode) rejects
    /// them).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        BigEndian::write_u16(&mut out[0..2], MAGIC);
        out[2] = VERSION;
        out[3] = self.flags;
        BigEndian::write_u32(&mut out[4..8], self.dst);
        BigEndian::write_u32(&mut out[8..12], self.src);
        BigEndian::write_u32(&mut out[12..16], self.auth);
        BigEndian::write_u32(&mut out[16..20], self.handle);
        BigEndian::write_u32(&mut out[20..24], self.reply_to);
        BigEndian::write_u32(&mut out[24..28], self.len);
        out
    }

    /// Validates magic, version, unknown flag bits (bits 3..7 set => error), and len <= max_len.
    ///
    /// The checks run in that order, so a stream that is not spore at all
    /// reports [`FrameError::BadMagic`] rather than some later field.
    pub fn decode(bytes: &[u8; HEADER_LEN], max_len: u32) -> Result<Header, FrameError> {
        let magic = BigEndian::read_u16(&bytes[0..2]);
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let version = bytes[2];
        if version != VERSION {
            return Err(FrameError::BadVersion(version));
        }
        let flags = bytes[3];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FrameError::BadFlags(flags));
        }
        let len = BigEndian::read_u32(&bytes[24..28]);
        if len > max_len {
            return Err(FrameError::TooLong { len, max: max_len });
        }
        Ok(Header {
            flags,
            dst: BigEndian::read_u32(&bytes[4..8]),
            src: BigEndian::read_u32(&bytes[8..12]),
            auth: BigEndian::read_u32(&bytes[12..16]),
            handle: BigEndian::read_u32(&bytes[16..20]),
            reply_to: BigEndian::read_u32(&bytes[20..24]),
            len,
        })
    }
}

/// A header and its body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// The header. [`encode`](Message::encode) writes `len` from the body,
    /// whatever `header.len` says.
    pub header: Header,
    /// miniserde JSON, or raw bytes when [`FLAG_BINARY`] is set.
    pub body: Vec<u8>,
}

impl Message {
    /// A message to `dst`/`handle` with this body; other fields zero; header.len = body.len().
    pub fn new(dst: u32, handle: u32, body: Vec<u8>) -> Message {
        Message { header: Header { dst, handle, len: body_len(&body), ..Header::default() }, body }
    }

    /// Whether [`FLAG_DEAD`] is set: the body is the reason a reply could not be delivered.
    pub fn is_dead(&self) -> bool {
        self.header.flags & FLAG_DEAD != 0
    }

    /// Whether [`FLAG_BINARY`] is set: the body is raw bytes, not JSON.
    pub fn is_binary(&self) -> bool {
        self.header.flags & FLAG_BINARY != 0
    }

    /// Whether [`FLAG_END`] is set: the last message of a stream.
    pub fn is_end(&self) -> bool {
        self.header.flags & FLAG_END != 0
    }

    /// Header (with len taken from body.len()) followed by the body.
    ///
    /// A body can't be longer than `u32::MAX` bytes; a longer one is framed
    /// with `len = u32::MAX`, which every decoder with a smaller limit
    /// rejects as [`FrameError::TooLong`]. Keep bodies under the peer's limit
    /// ([`DEFAULT_MAX_MESSAGE`](crate::DEFAULT_MAX_MESSAGE) by default).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.body.len());
        self.encode_into(&mut out);
        out
    }

    /// Same, appended to `out` (no intermediate allocation).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let header = Header { len: body_len(&self.body), ..self.header };
        out.reserve(HEADER_LEN + self.body.len());
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(&self.body);
    }
}

/// The `len` field for `body`, saturating at `u32::MAX`.
fn body_len(body: &[u8]) -> u32 {
    u32::try_from(body.len()).unwrap_or(u32::MAX)
}

/// Why a stream can't be decoded. Each one means: drop the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The first two bytes are not [`MAGIC`]: this is not a spore stream, or
    /// it lost its framing.
    BadMagic(u16),
    /// The peer speaks another protocol version than [`VERSION`].
    BadVersion(u8),
    /// Flag bits this version does not define are set (the whole flags byte).
    BadFlags(u8),
    /// The header announces a body longer than the stream's limit.
    TooLong {
        /// The announced body length.
        len: u32,
        /// The stream's maximum body length.
        max: u32,
    },
    /// The stream ended inside a frame.
    ///
    /// Both counts are in frame bytes, the header included. While the
    /// header is incomplete, `have < HEADER_LEN` and `need == HEADER_LEN`;
    /// once it is in, `have >= HEADER_LEN` and `need == HEADER_LEN + len`.
    Truncated {
        /// Bytes of the frame that arrived.
        have: usize,
        /// Bytes the frame needed.
        need: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::BadMagic(magic) => {
                write!(f, "bad magic {magic:#06x} (expected {MAGIC:#06x}): the stream is corrupt")
            }
            FrameError::BadVersion(version) => write!(f, "unsupported protocol version {version} (expected {VERSION})"),
            FrameError::BadFlags(flags) => {
                write!(f, "unknown flag bits {:#04x} in flags {flags:#04x}", flags & !KNOWN_FLAGS)
            }
            FrameError::TooLong { len, max } => {
                write!(f, "message of {len} bytes is over the limit of {max}")
            }
            FrameError::Truncated { have, need } if have < HEADER_LEN => {
                write!(f, "stream ended inside a frame: have {have} of {need} header bytes")
            }
            FrameError::Truncated { have, need } => write!(
                f,
                "stream ended inside a frame: have {} of {} body bytes",
                have - HEADER_LEN,
                need.saturating_sub(HEADER_LEN)
            ),
        }
    }
}

impl std::error::Error for FrameError {}
