//! The broker's last steps, after the shutdown sequence (or a death):
//! late commands, the last writes, the connection processes reaped, in an
//! agent every process left below it killed, the temporary files removed,
//! the parent stream closed, every waiter told.

use super::{Loop, BUSY_TICK};
use crate::locks::{lock, write};
use crate::procs;
use crate::routes::Origin;
use crate::shared::Cmd;
use crate::shutdown;
use crate::sys;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl Loop {
    // ---- the end ---------------------------------------------------------

    pub(super) fn finish(mut self) {
        // Whatever the logger queued during the last steps goes out too;
        // after this, `push` handles late commands itself.
        self.take_commands();
        let late = {
            let mut queue = lock(&self.shared.queue);
            self.shared.finished.store(true, Ordering::SeqCst);
            std::mem::take(&mut *queue)
        };
        for cmd in late {
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
            match cmd {
                Cmd::Send(msg) => self.core.handle_message(msg, Origin::Local, Instant::now()),
                Cmd::AddStream(s) => {
                    if let Some(child) = s.child {
                        self.reaper.add(child, format!("connection process for {}", s.name), Some(Instant::now()));
                    }
                }
                Cmd::Reap(child, what) => self.reaper.add(child, what, Some(Instant::now())),
                Cmd::Capture { .. } | Cmd::Shutdown(_) | Cmd::Crash => {}
            }
            self.run_actions();
        }
        let deadline = Instant::now() + shutdown::FINAL_WRITE_LIMIT;
        while let Some(out) = self.streams.values().find(|s| s.is_parent && s.out.pending()).map(|s| s.out.clone()) {
            if Instant::now() >= deadline || out.flush(&self.shared.poller).is_some() {
                break;
            }
            std::thread::sleep(BUSY_TICK);
        }
        // From here on, a thread's message takes the slow path, which the
        // finished broker drops.
        write(&self.shared.outs).clear();
        let now = Instant::now();
        // The parent stream stays open until every process below us is
        // gone: our parent waits for its end (within our bound), so no one
        // kills us halfway, and what it sees end is the whole tree.
        let mut parent = Vec::new();
        for (_, mut s) in self.streams.drain() {
            let _ = self.shared.poller.delete(s.input.as_fd());
            s.out.unwatch(&self.shared.poller);
            if let Some(src) = &s.stderr {
                let _ = self.shared.poller.delete(src.file.as_fd());
            }
            if let Some(child) = s.child.take() {
                let _ = sys::kill(child.id() as i32, libc::SIGTERM);
                self.reaper.add(child, s.name.clone(), Some(now + shutdown::FORCED_KILL_DELAY));
            }
            if s.is_parent {
                parent.push(s);
            }
        }
        self.reaper.finish(shutdown::REAP_LIMIT);
        if self.shared.cfg.exit_process {
            // Whatever a guardian too slow, stopped or killed left.
            procs::kill_descendants(now + shutdown::REAP_LIMIT);
        }
        for path in self.shared.temps() {
            let _ = std::fs::remove_file(path);
        }
        drop(parent);
        if let Some(q) = &self.shared.log_queue {
            q.close(Duration::from_secs(1));
        }
        if self.shared.cfg.exit_process {
            sys::terminate_self();
        }
        self.shared.mark_done(self.died.as_deref());
    }
}
