//! The progress line: on a terminal only, on stderr, redrawn in place a
//! few times a second and erased at the end (and before any other output,
//! see [`crate::cli::output::screen`]). Never written to a pipe or a file.

use super::output::{self, Console};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often the line is redrawn.
const TICK: Duration = Duration::from_millis(200);

/// Where the targets of a run are.
pub struct Progress {
    console: Arc<Console>,
    state: Mutex<State>,
    started: Instant,
    total: usize,
    stop: AtomicBool,
}

struct State {
    done: usize,
    failed: usize,
    /// The targets under way (connecting or running) and since when.
    running: Vec<(String, Instant)>,
}

impl Progress {
    /// A progress line for `total` targets, with its drawing thread: only
    /// when stderr is a terminal.
    pub fn start(total: usize) -> Option<Arc<Progress>> {
        let console = output::current().filter(|c| c.err_tty)?;
        let p = Arc::new(Progress {
            console,
            state: Mutex::new(State { done: 0, failed: 0, running: Vec::new() }),
            started: Instant::now(),
            total,
            stop: AtomicBool::new(false),
        });
        let drawer = Arc::clone(&p);
        std::thread::Builder::new().name("spore-progress".into()).spawn(move || drawer.draw_until_stopped()).ok()?;
        Some(p)
    }

    pub fn begin(&self, target: &str) {
        self.state().running.push((target.to_string(), Instant::now()));
    }

    pub fn end(&self, target: &str, ok: bool) {
        let mut st = self.state();
        if let Some(i) = st.running.iter().position(|(t, _)| t == target) {
            st.running.swap_remove(i);
        }
        st.done += 1;
        st.failed += usize::from(!ok);
    }

    /// Erase the line for good (the drawing thread stops within a tick).
    pub fn finish(&self) {
        self.stop.store(true, Ordering::SeqCst);
        drop(self.console.screen());
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn draw_until_stopped(&self) {
        loop {
            std::thread::sleep(TICK);
            let line = self.line();
            let mut screen = self.console.screen_as_is();
            // Checked under the screen's lock: `finish` erases under it too,
            // so nothing is drawn after it.
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let mut err = self.console.err();
            if err.write_all(line.as_bytes()).and_then(|()| err.flush()).is_err() {
                return;
            }
            screen.progress_drawn = true;
        }
    }

    /// `\r[12/200] 3 failed, 64 running, 8.1s; slowest web017 (7.9s)`, cut
    /// to the terminal's width.
    fn line(&self) -> String {
        let st = self.state();
        let now = Instant::now();
        let mut text = format!(
            "[{}/{}] {} failed, {} running, {:.1}s",
            st.done,
            self.total,
            st.failed,
            st.running.len(),
            now.duration_since(self.started).as_secs_f64()
        );
        if let Some((t, since)) = st.running.iter().min_by_key(|(_, since)| *since) {
            text.push_str(&format!(
                "; slowest {} ({:.1}s)",
                output::shown(t),
                now.duration_since(*since).as_secs_f64()
            ));
        }
        let width = terminal_width().saturating_sub(1).max(20);
        let cut: String = text.chars().take(width).collect();
        format!("\r\x1b[K{cut}")
    }
}

/// Columns of the terminal on stderr (80 when it won't say).
fn terminal_width() -> usize {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it or fails.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a valid, writable winsize for the ioctl.
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        80
    }
}
