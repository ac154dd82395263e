//! Lines the poll loop reads (a connection's stderr, this process's own
//! captured stdout/stderr) and forwards as log records.

use super::Loop;
use crate::routes::{Origin, StreamId};
use spore_protocol::body::{self, LogRecord};
use spore_protocol::{handle, Message};
use std::os::fd::AsFd;
use std::time::Instant;

impl Loop {
    // ---- log lines -------------------------------------------------------

    pub(super) fn read_stream_stderr(&mut self, sid: StreamId) {
        let Some(src) = self.streams.get_mut(&sid).and_then(|s| s.stderr.as_mut()) else { return };
        let (target, level) = (src.target.clone(), src.level);
        let mut lines = Vec::new();
        let open = src.drain(false, |l| lines.push(l.to_string()));
        if !open {
            let _ = self.shared.poller.delete(src.file.as_fd());
            if let Some(s) = self.streams.get_mut(&sid) {
                s.stderr = None;
            }
        }
        for l in lines {
            self.forward_line(&target, level, &l);
        }
    }

    pub(super) fn read_capture(&mut self, n: usize) {
        let Some(src) = self.captures.get_mut(&n) else { return };
        let (target, level) = (src.target.clone(), src.level);
        let mut lines = Vec::new();
        if !src.drain(false, |l| lines.push(l.to_string())) {
            let _ = self.shared.poller.delete(src.file.as_fd());
            self.captures.remove(&n);
        }
        for l in lines {
            self.forward_line(&target, level, &l);
        }
    }

    /// A line this context read (captured output, a connection's stderr):
    /// shown here in the master, sent towards it elsewhere.
    pub(super) fn forward_line(&mut self, target: &str, level: log::Level, line: &str) {
        let rec = LogRecord {
            level: level as u8,
            name: self.shared.cfg.name.clone(),
            target: target.into(),
            msg: line.into(),
        };
        match &self.shared.log_queue {
            Some(q) => q.record(&rec),
            None => {
                let msg = Message::new(0, handle::FORWARD_LOG, body::encode(&rec));
                self.core.handle_message(msg, Origin::Local, Instant::now());
                self.run_actions();
            }
        }
    }
}
