//! Asking the operator for a password on the terminal, without echo.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;

/// Terminal attributes restored on drop (also when reading fails).
struct NoEcho<'a> {
    tty: &'a File,
    saved: libc::termios,
}

impl<'a> NoEcho<'a> {
    fn new(tty: &'a File) -> io::Result<NoEcho<'a>> {
        // SAFETY: termios is plain old data; tcgetattr fills it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd and a valid, writable termios.
        if unsafe { libc::tcgetattr(tty.as_raw_fd(), &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: a valid fd and a fully initialised termios.
        if unsafe { libc::tcsetattr(tty.as_raw_fd(), libc::TCSANOW, &quiet) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NoEcho { tty, saved })
    }
}

impl Drop for NoEcho<'_> {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `new` on the same fd.
        unsafe { libc::tcsetattr(self.tty.as_raw_fd(), libc::TCSANOW, &self.saved) };
    }
}

/// Prompt on the controlling terminal and read a line without echo. With
/// no terminal, read one line from stdin (`echo pw | spore -K ...`).
pub fn ask_password(prompt: &str) -> io::Result<String> {
    let mut line = String::new();
    match OpenOptions::new().read(true).write(true).open("/dev/tty") {
        Ok(tty) => {
            (&tty).write_all(prompt.as_bytes())?;
            let _quiet = NoEcho::new(&tty)?;
            BufReader::new(&tty).read_line(&mut line)?;
        }
        Err(_) => {
            io::stdin().lock().read_line(&mut line)?;
        }
    }
    let trimmed = line.trim_end_matches(['\n', '\r']).to_string();
    if trimmed.is_empty() {
        return Err(io::Error::other("no password given"));
    }
    Ok(trimmed)
}
