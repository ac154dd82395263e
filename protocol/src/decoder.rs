//! The incremental frame decoder.

use std::fmt;

use crate::{FrameError, Header, Message, HEADER_LEN};

/// Capacity an emptied buffer may keep; beyond it, a buffer that held one
/// huge message is given back to the allocator.
const KEEP_CAPACITY: usize = 1024 * 1024;

/// Incremental frame decoder: push bytes in any split, pop whole messages.
///
/// Input is split however the pipe delivered it: a header may arrive one
/// byte at a time, or ten messages in one read. Decoding is O(n) in the
/// bytes pushed: the decoder keeps a read offset into its buffer and moves
/// the unread tail to the front only once at least as many bytes have been
/// consumed, and it copies each body out once, when it is complete. It
/// never allocates for a body beyond the bytes that actually arrived, so a
/// header that announces a huge `len` costs nothing until the bytes come.
///
/// See the [crate documentation](crate) for the driving loop.
pub struct Decoder {
    /// Pushed bytes; `buf[pos..]` are not yet returned as messages.
    buf: Vec<u8>,
    /// Read offset into `buf`.
    pos: usize,
    /// Maximum body length.
    max_len: u32,
    /// Set by the first error; the decoder then returns it forever.
    error: Option<FrameError>,
}

/// Where a frame starting at some offset of the buffer stands.
enum Frame {
    /// Fewer than [`HEADER_LEN`] bytes are in.
    PartialHeader { have: usize },
    /// The header is in and valid, the body is not complete.
    PartialBody { have: usize, need: usize },
    /// The whole frame is in and ends at this offset of the buffer.
    Complete { header: Header, end: usize },
}

impl Decoder {
    /// A decoder for a stream whose bodies are at most `max_len` bytes
    /// (usually [`DEFAULT_MAX_MESSAGE`](crate::DEFAULT_MAX_MESSAGE)).
    pub fn new(max_len: u32) -> Decoder {
        Decoder { buf: Vec::new(), pos: 0, max_len, error: None }
    }

    /// The maximum body length this decoder accepts.
    pub fn max_len(&self) -> u32 {
        self.max_len
    }

    /// Appends bytes read from the stream.
    ///
    /// A poisoned decoder (one that returned an error) discards them.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.error.is_some() || bytes.is_empty() {
            return;
        }
        // Compact lazily: only once the consumed prefix is at least as long
        // as the unread tail, so each byte is moved at most once on average.
        let unread = self.buf.len() - self.pos;
        if self.pos > 0 && self.pos >= unread {
            self.buf.copy_within(self.pos.., 0);
            self.buf.truncate(unread);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Pops the next whole message.
    ///
    /// `Ok(None)` means more bytes are needed; it is not an error. A bad
    /// header is reported as soon as its 28 bytes are in, without waiting
    /// for the body. After an error the decoder is poisoned: it discards
    /// its input and returns the same error forever.
    // Not `Iterator::next`: it is fallible, and `None` means "not yet", not
    // "never": more bytes may follow. (A comment, not `reason =`: that needs
    // Rust 1.81 and the workspace's rust-version is 1.80.)
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Message>, FrameError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        match self.frame_at(self.pos) {
            Err(error) => {
                self.error = Some(error);
                self.buf = Vec::new();
                self.pos = 0;
                Err(error)
            }
            Ok(Frame::PartialHeader { .. } | Frame::PartialBody { .. }) => Ok(None),
            Ok(Frame::Complete { header, end }) => {
                let body = self.buf[self.pos + HEADER_LEN..end].to_vec();
                self.pos = end;
                if self.pos == self.buf.len() {
                    self.buf.clear();
                    self.buf.shrink_to(KEEP_CAPACITY);
                    self.pos = 0;
                }
                Ok(Some(Message { header, body }))
            }
        }
    }

    /// Bytes buffered but not yet returned as a message.
    ///
    /// A poisoned decoder has discarded its input: 0.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Call at EOF: Ok(()) if no partial frame is buffered, else Err(Truncated{..}).
    ///
    /// Whole frames still buffered are not an error (pop them with
    /// [`next`](Decoder::next)); only what follows them counts. A poisoned
    /// decoder returns its error, and so does a bad header that is buffered
    /// but not yet reached by `next`.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let mut start = self.pos;
        loop {
            match self.frame_at(start)? {
                Frame::PartialHeader { have: 0 } => return Ok(()),
                Frame::PartialHeader { have } => return Err(FrameError::Truncated { have, need: HEADER_LEN }),
                Frame::PartialBody { have, need } => return Err(FrameError::Truncated { have, need }),
                Frame::Complete { end, .. } => start = end,
            }
        }
    }

    /// Looks at the frame starting at `buf[start..]` without consuming it.
    fn frame_at(&self, start: usize) -> Result<Frame, FrameError> {
        let rest = self.buf.get(start..).unwrap_or_default();
        let Some(head) = rest.first_chunk::<HEADER_LEN>() else {
            return Ok(Frame::PartialHeader { have: rest.len() });
        };
        let header = Header::decode(head, self.max_len)?;
        // On 16- and 32-bit targets `HEADER_LEN + len` may not fit a usize;
        // saturating keeps such a frame waiting for bytes that can't come.
        let need = usize::try_from(header.len).unwrap_or(usize::MAX).saturating_add(HEADER_LEN);
        if rest.len() < need {
            return Ok(Frame::PartialBody { have: rest.len(), need });
        }
        Ok(Frame::Complete { header, end: start + need })
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("max_len", &self.max_len)
            .field("buffered", &self.buffered())
            .field("error", &self.error)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffer stays about two messages long however long the stream:
    /// the read offset is honoured and compaction keeps up.
    #[test]
    fn buffer_stays_bounded_over_a_long_stream() {
        let body = vec![7u8; 10_000];
        let frame = Message::new(1, 1000, body.clone()).encode();
        let stream: Vec<u8> = frame.iter().copied().cycle().take(frame.len() * 300).collect();

        let mut decoder = Decoder::new(u32::MAX);
        let mut count = 0;
        let mut peak = 0;
        for piece in stream.chunks(4096 + 7) {
            decoder.push(piece);
            peak = peak.max(decoder.buf.len());
            while let Some(message) = decoder.next().unwrap() {
                assert_eq!(message.body, body);
                count += 1;
            }
        }
        assert_eq!(count, 300);
        assert_eq!(decoder.buffered(), 0);
        assert!(peak <= 2 * (frame.len() + 4096 + 7), "peak {peak}");
    }

    /// An emptied buffer that once held a huge message gives the memory back.
    #[test]
    fn huge_buffer_is_released_when_emptied() {
        let frame = Message::new(1, 1000, vec![0; 4 * KEEP_CAPACITY]).encode();
        let mut decoder = Decoder::new(u32::MAX);
        decoder.push(&frame);
        assert!(decoder.next().unwrap().is_some());
        assert!(decoder.buf.capacity() <= KEEP_CAPACITY);
    }

    /// A header announcing a huge body allocates nothing beyond what arrived.
    #[test]
    fn huge_len_does_not_preallocate() {
        let header = Header { len: u32::MAX, ..Header::default() };
        let mut decoder = Decoder::new(u32::MAX);
        decoder.push(&header.encode());
        assert_eq!(decoder.next(), Ok(None));
        assert!(decoder.buf.capacity() < 1024);
    }
}
