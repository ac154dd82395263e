//! The broker's poller: a level-triggered epoll set, plus an eventfd that
//! other threads write to wake it. Level-triggered: no re-arming after each
//! event, and a short read is enough to know a pipe is drained for now.
//!
//! Why not the `polling` crate: its `wait` re-arms a timerfd and its
//! notifier on every call (four syscalls beside `epoll_wait`), and the
//! broker waits once or more per message, many more times while it spins
//! (see `spin`). This costs one syscall per wait.

use crate::sys;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// What to be told about an fd. ERR and HUP are reported whatever is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interest {
    pub read: bool,
    pub write: bool,
}

impl Interest {
    pub const NONE: Interest = Interest { read: false, write: false };
    pub const READ: Interest = Interest { read: true, write: false };
    pub const WRITE: Interest = Interest { read: false, write: true };

    fn bits(self) -> u32 {
        let mut bits = 0;
        if self.read {
            bits |= (libc::EPOLLIN | libc::EPOLLPRI) as u32;
        }
        if self.write {
            bits |= libc::EPOLLOUT as u32;
        }
        bits
    }
}

/// What a watched fd is to the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A stream's input (protocol bytes from the peer).
    Input(usize),
    /// A stream's output (room to write).
    Output(usize),
    /// A connection process's stderr, forwarded as log lines.
    Stderr(usize),
    /// This process's own captured stdout (0) or stderr (1).
    Capture(usize),
}

impl Source {
    fn key(self) -> u64 {
        let (n, role) = match self {
            Source::Input(n) => (n, 0),
            Source::Output(n) => (n, 1),
            Source::Stderr(n) => (n, 2),
            Source::Capture(n) => (n, 3),
        };
        (n as u64) << 2 | role
    }

    fn from_key(key: u64) -> Source {
        let n = (key >> 2) as usize;
        match key & 3 {
            0 => Source::Input(n),
            1 => Source::Output(n),
            2 => Source::Stderr(n),
            _ => Source::Capture(n),
        }
    }
}

/// One ready fd. ERR and HUP count as both readable and writable, so
/// whoever reads or writes next sees the error or the end.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub source: Source,
    pub readable: bool,
    pub writable: bool,
}

/// What one [`Poller::wait`] found; reused from wait to wait.
pub struct Events {
    raw: Vec<libc::epoll_event>,
    len: usize,
}

impl Default for Events {
    fn default() -> Events {
        Events { raw: vec![libc::epoll_event { events: 0, u64: 0 }; 64], len: 0 }
    }
}

impl Events {
    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        let err = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
        self.raw.iter().take(self.len).map(move |ev| {
            let (bits, key) = (ev.events, ev.u64);
            Event {
                source: Source::from_key(key),
                readable: bits & ((libc::EPOLLIN | libc::EPOLLPRI) as u32 | err) != 0,
                writable: bits & (libc::EPOLLOUT as u32 | err) != 0,
            }
        })
    }
}

/// The key of the wake-up eventfd; never handed out to callers.
const WAKE_KEY: u64 = u64::MAX;

pub struct Poller {
    epoll: OwnedFd,
    wake: File,
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        let epoll = sys::epoll_create()?;
        let wake = sys::eventfd()?;
        sys::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, wake.as_raw_fd(), libc::EPOLLIN as u32, WAKE_KEY)?;
        Ok(Poller { epoll, wake })
    }

    /// Watch `fd` as `source`.
    ///
    /// # Safety
    ///
    /// The caller removes `fd` with [`Poller::delete`] before closing it:
    /// epoll forgets a closed fd only once every dup of it is closed, and
    /// would go on reporting events under `source` for an fd number that
    /// may by then name something else.
    pub unsafe fn add(&self, fd: BorrowedFd<'_>, source: Source, interest: Interest) -> io::Result<()> {
        sys::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), interest.bits(), source.key())
    }

    pub fn modify(&self, fd: BorrowedFd<'_>, source: Source, interest: Interest) -> io::Result<()> {
        sys::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_MOD, fd.as_raw_fd(), interest.bits(), source.key())
    }

    pub fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        sys::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd.as_raw_fd(), 0, 0)
    }

    /// Wake a thread blocked in [`Poller::wait`] (or make its next wait
    /// return at once).
    pub fn notify(&self) -> io::Result<()> {
        match (&self.wake).write(&1u64.to_ne_bytes()) {
            // The counter is full: a wake-up is pending anyway.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other.map(drop),
        }
    }

    /// Wait up to `timeout` (None: until something happens; sub-millisecond
    /// timeouts are rounded up, never down to a busy zero) and put the ready
    /// fds in `events`. A wake-up by [`Poller::notify`] or a signal returns
    /// with no events.
    pub fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        let ms = match timeout {
            None => -1,
            Some(t) if t.is_zero() => 0,
            Some(t) => i32::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX),
        };
        let n = sys::epoll_wait(self.epoll.as_raw_fd(), &mut events.raw, ms)?;
        // Keep the fds' entries, in order; consume the wake-up's.
        let mut kept = 0;
        for i in 0..n.min(events.raw.len()) {
            let ev = events.raw[i];
            if ev.u64 == WAKE_KEY {
                let mut count = [0u8; 8];
                let _ = (&self.wake).read(&mut count);
            } else {
                events.raw[kept] = ev;
                kept += 1;
            }
        }
        events.len = kept;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::Instant;

    fn keys(events: &Events) -> Vec<(Source, bool, bool)> {
        events.iter().map(|e| (e.source, e.readable, e.writable)).collect()
    }

    #[test]
    fn reports_a_readable_pipe_by_its_key_until_it_is_drained() {
        let poller = Poller::new().unwrap();
        let (mut r, mut w) = sys::pipe().unwrap();
        // SAFETY: deleted below before `r` is dropped.
        unsafe { poller.add(r.as_fd(), Source::Input(7), Interest::READ).unwrap() };
        let mut events = Events::default();
        poller.wait(&mut events, Some(Duration::ZERO)).unwrap();
        assert!(events.is_empty());
        w.write_all(b"x").unwrap();
        poller.wait(&mut events, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(keys(&events), [(Source::Input(7), true, false)]);
        // Level-triggered: still ready until read.
        poller.wait(&mut events, Some(Duration::ZERO)).unwrap();
        assert_eq!(keys(&events), [(Source::Input(7), true, false)]);
        let mut b = [0u8; 1];
        r.read_exact(&mut b).unwrap();
        poller.wait(&mut events, Some(Duration::ZERO)).unwrap();
        assert!(events.is_empty());
        poller.delete(r.as_fd()).unwrap();
        w.write_all(b"y").unwrap();
        poller.wait(&mut events, Some(Duration::ZERO)).unwrap();
        assert!(events.is_empty(), "a deleted fd is not reported");
    }

    #[test]
    fn a_closed_peer_is_reported_even_without_interest() {
        let poller = Poller::new().unwrap();
        let (r, w) = sys::pipe().unwrap();
        // SAFETY: the poller is dropped before `w`.
        unsafe { poller.add(w.as_fd(), Source::Output(3), Interest::NONE).unwrap() };
        let mut events = Events::default();
        poller.wait(&mut events, Some(Duration::ZERO)).unwrap();
        assert!(events.is_empty());
        drop(r);
        poller.wait(&mut events, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(keys(&events), [(Source::Output(3), true, true)]);
    }

    #[test]
    fn notify_wakes_a_wait_once_and_is_consumed() {
        let poller = std::sync::Arc::new(Poller::new().unwrap());
        let waker = poller.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            waker.notify().unwrap();
        });
        let mut events = Events::default();
        let start = Instant::now();
        poller.wait(&mut events, Some(Duration::from_secs(10))).unwrap();
        assert!(start.elapsed() < Duration::from_secs(5), "notify did not wake the wait");
        assert!(events.is_empty(), "the wake-up is not an fd's event");
        t.join().unwrap();
        // Consumed: the next wait sleeps its whole timeout.
        let start = Instant::now();
        poller.wait(&mut events, Some(Duration::from_millis(30))).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(25));
    }

    #[test]
    fn a_sub_millisecond_timeout_sleeps_instead_of_spinning() {
        let poller = Poller::new().unwrap();
        let mut events = Events::default();
        let start = Instant::now();
        poller.wait(&mut events, Some(Duration::from_micros(1))).unwrap();
        assert!(start.elapsed() >= Duration::from_micros(900), "rounded down to zero");
    }
}
