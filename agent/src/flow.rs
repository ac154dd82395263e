//! Flow control for bulk bytes: a sender keeps at most
//! [`WINDOW`](spore_protocol::body::WINDOW) unacknowledged bytes in flight;
//! the receiver acknowledges what it has consumed. Memory along the path is
//! bounded and one transfer can't starve the others.

use crate::broker::Broker;
use spore_protocol::body::{self, Ack, CHUNK_SIZE, WINDOW};
use spore_protocol::{Message, FLAG_BINARY, FLAG_END};

/// The sending half of one direction of a stream.
pub struct Outflow {
    broker: Broker,
    dst: u32,
    handle: u32,
    sent: u64,
    acked: u64,
}

impl Outflow {
    /// Send bytes to `handle` at context `dst`.
    pub fn new(broker: Broker, dst: u32, handle: u32) -> Outflow {
        Outflow { broker, dst, handle, sent: 0, acked: 0 }
    }

    /// May another chunk go out now?
    pub fn has_credit(&self) -> bool {
        self.sent.saturating_sub(self.acked) < WINDOW
    }

    /// Bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Send `data` (at most [`CHUNK_SIZE`] per message), flagged `END` when
    /// `end`. Callers check [`Outflow::has_credit`] first.
    pub fn send(&mut self, data: &[u8], end: bool) {
        let mut chunks = data.chunks(CHUNK_SIZE).peekable();
        if chunks.peek().is_none() && end {
            self.push(Vec::new(), true);
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.push(chunk.to_vec(), end && last);
        }
    }

    fn push(&mut self, data: Vec<u8>, end: bool) {
        self.sent += data.len() as u64;
        let mut msg = Message::new(self.dst, self.handle, data);
        msg.header.flags = FLAG_BINARY | if end { FLAG_END } else { 0 };
        self.broker.send(msg);
    }

    /// Record a cumulative acknowledgement.
    pub fn on_ack(&mut self, acked: u64) {
        self.acked = self.acked.max(acked);
    }
}

/// The cumulative count an [`Ack`] message carries, if `msg` is one.
pub fn acked(msg: &Message) -> Option<u64> {
    if msg.is_binary() {
        return None;
    }
    body::decode::<body::Control>(&msg.body, "ack").ok()?.ack
}

/// Acknowledge `consumed` bytes to the sender's handle.
pub fn ack(broker: &Broker, dst: u32, handle: u32, consumed: u64) {
    broker.send(Message::new(dst, handle, body::encode(&Ack { ack: consumed })));
}
