//! Starting processes: a small fork/exec in place of `std::process`
//! (which costs the static agent ~19 KB), with the part of its interface
//! spore uses and the same behaviour: the program looked up in `PATH` (the
//! command's own `PATH` when it sets one), the environment inherited with
//! the command's changes, stdio piped, null, inherited or given, a working
//! directory, a process group, an fd 3 of its own (`/dev/fd/3`: a script
//! for its interpreter), steps run between fork and exec, signals
//! reset (an empty mask, `SIGPIPE` back to its default), and an exec
//! failure reported as the spawn's error (errno) by way of a close-on-exec
//! pipe.
//!
//! Between fork and exec the child calls only async-signal-safe functions
//! and never allocates: everything it needs is built before the fork.

use crate::locks::lock;
use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// A step run in the child between fork and exec.
type Hook = Box<dyn FnMut() -> io::Result<()> + Send + Sync>;

/// The children started here and not yet reaped: their [`Child`] waits
/// for them, and an agent's sweep of its other children
/// (`procs::reap_orphans`) must never take their exit status. A fork and
/// its entry happen under this lock, so a sweep never sees the one without
/// the other. A list: a pid reaped and reused at once may be in it twice
/// for a moment.
static OWNED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The pids of [`OWNED`], locked: no fork happens while it is held.
pub(crate) fn owned() -> MutexGuard<'static, Vec<u32>> {
    lock(&OWNED)
}

/// What a child's standard stream is connected to.
#[derive(Debug)]
pub struct Stdio(Io);

#[derive(Debug)]
enum Io {
    Inherit,
    Null,
    Piped,
    Fd(OwnedFd),
}

impl Stdio {
    /// A new pipe; its other end is in [`Child`].
    pub fn piped() -> Stdio {
        Stdio(Io::Piped)
    }

    /// `/dev/null`.
    pub fn null() -> Stdio {
        Stdio(Io::Null)
    }

    /// This process's own.
    pub fn inherit() -> Stdio {
        Stdio(Io::Inherit)
    }
}

impl From<OwnedFd> for Stdio {
    fn from(fd: OwnedFd) -> Stdio {
        Stdio(Io::Fd(fd))
    }
}

impl From<File> for Stdio {
    fn from(f: File) -> Stdio {
        Stdio(Io::Fd(f.into()))
    }
}

/// A process to start (the subset of `std::process::Command` spore uses).
pub struct Command {
    program: OsString,
    /// argv, `program` first.
    args: Vec<OsString>,
    /// Variables set in the child's environment, over the inherited ones.
    env: Vec<(OsString, OsString)>,
    cwd: Option<OsString>,
    stdio: [Stdio; 3],
    /// The child's fd 3.
    fd3: Option<OwnedFd>,
    pgroup: Option<i32>,
    hooks: Vec<Hook>,
}

impl Command {
    /// `program`, found in `PATH` unless it holds a `/`; stdio inherited.
    pub fn new<S: AsRef<OsStr>>(program: S) -> Command {
        let program = program.as_ref().to_os_string();
        Command {
            args: vec![program.clone()],
            program,
            env: Vec::new(),
            cwd: None,
            stdio: [Stdio::inherit(), Stdio::inherit(), Stdio::inherit()],
            fd3: None,
            pgroup: None,
            hooks: Vec::new(),
        }
    }

    /// The name the program is started under (`argv[0]`), if not its path.
    pub fn arg0<S: AsRef<OsStr>>(&mut self, name: S) -> &mut Command {
        if let Some(first) = self.args.first_mut() {
            *first = name.as_ref().to_os_string();
        }
        self
    }

    /// Add an argument.
    pub fn arg<S: AsRef<OsStr>>(&mut self, arg: S) -> &mut Command {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Add arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, args: I) -> &mut Command {
        for a in args {
            self.arg(a);
        }
        self
    }

    /// Set environment variables (the rest is inherited).
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Command
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            let k = k.as_ref().to_os_string();
            self.env.retain(|(old, _)| *old != k);
            self.env.push((k, v.as_ref().to_os_string()));
        }
        self
    }

    /// The child's working directory.
    pub fn current_dir<P: AsRef<Path>>(&mut self, dir: P) -> &mut Command {
        self.cwd = Some(dir.as_ref().as_os_str().to_os_string());
        self
    }

    /// The child's stdin.
    pub fn stdin<T: Into<Stdio>>(&mut self, s: T) -> &mut Command {
        self.stdio[0] = s.into();
        self
    }

    /// The child's stdout.
    pub fn stdout<T: Into<Stdio>>(&mut self, s: T) -> &mut Command {
        self.stdio[1] = s.into();
        self
    }

    /// The child's stderr.
    pub fn stderr<T: Into<Stdio>>(&mut self, s: T) -> &mut Command {
        self.stdio[2] = s.into();
        self
    }

    /// Give the child `fd` as its fd 3 (inheritable there alone: the other
    /// copies stay close-on-exec, as every fd spore opens is).
    pub fn fd3<T: Into<OwnedFd>>(&mut self, fd: T) -> &mut Command {
        self.fd3 = Some(fd.into());
        self
    }

    /// Put the child in process group `pgroup` (0: a new one, its own).
    pub fn process_group(&mut self, pgroup: i32) -> &mut Command {
        self.pgroup = Some(pgroup);
        self
    }

    /// Run `f` in the child between fork and exec (after its stdio,
    /// directory and group are set up); an error there is the spawn's.
    ///
    /// # Safety
    ///
    /// `f` runs in a forked copy of a possibly multi-threaded process: it
    /// may call only async-signal-safe functions and must not allocate.
    pub unsafe fn pre_exec<F>(&mut self, f: F) -> &mut Command
    where
        F: FnMut() -> io::Result<()> + Send + Sync + 'static,
    {
        self.hooks.push(Box::new(f));
        self
    }

    /// The program.
    pub fn get_program(&self) -> &OsStr {
        &self.program
    }

    /// Start it.
    pub fn spawn(&mut self) -> io::Result<Child> {
        let program = c_string(self.program.clone())?;
        let args = self.args.iter().map(|a| c_string(a.clone())).collect::<io::Result<Vec<_>>>()?;
        let argv = pointers(&args);
        let env = if self.env.is_empty() { None } else { Some(self.environment()?) };
        let envp = env.as_ref().map(|e| pointers(e));
        let cwd = self.cwd.clone().map(c_string).transpose()?;
        // Our ends of the pipes, the child's ends (and /dev/null).
        let mut ours: [Option<File>; 3] = [None, None, None];
        let mut theirs: [Option<OwnedFd>; 3] = [None, None, None];
        for (i, s) in self.stdio.iter_mut().enumerate() {
            match std::mem::replace(&mut s.0, Io::Inherit) {
                Io::Inherit => {}
                Io::Null => {
                    let f = std::fs::OpenOptions::new().read(i == 0).write(i != 0).open("/dev/null")?;
                    theirs[i] = Some(f.into());
                }
                Io::Piped => {
                    let (r, w) = crate::sys::pipe()?;
                    let (mine, child) = if i == 0 { (w, r) } else { (r, w) };
                    ours[i] = Some(mine);
                    theirs[i] = Some(child.into());
                }
                Io::Fd(fd) => theirs[i] = Some(fd),
            }
        }
        let fds = theirs.each_ref().map(|t| t.as_ref().map_or(-1, |f| f.as_raw_fd()));
        let (mut report_r, mut report_w) = crate::sys::pipe()?;
        let fd3 = self.fd3.take();
        if fd3.is_some() && report_w.as_raw_fd() == 3 {
            // The child's fd 3 would replace it: it could no longer say
            // that its exec failed.
            report_w = File::from(crate::sys::dup_at_least(3, 4)?);
        }
        let child = Prepared {
            program: &program,
            argv: &argv,
            envp: envp.as_deref(),
            cwd: cwd.as_deref(),
            fds,
            fd3: fd3.as_ref().map(|f| f.as_raw_fd()),
            pgroup: self.pgroup,
            hooks: &mut self.hooks,
            report: report_w.as_raw_fd(),
        };
        let mut owned = owned();
        let pid = fork()?;
        if pid == 0 {
            child.exec()
        }
        owned.push(pid as u32);
        drop(owned);
        drop(report_w);
        drop((theirs, fd3));
        // EOF: it exec'd. Four bytes: the errno it failed with.
        let mut errno = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match report_r.read(errno.get_mut(got..).unwrap_or_default()) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let [stdin, stdout, stderr] = ours;
        let mut child = Child { pid, status: None, stdin, stdout, stderr };
        if got == 4 {
            let _ = child.wait();
            return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)));
        }
        Ok(child)
    }

    /// The inherited environment with the command's changes, as `K=V`.
    fn environment(&self) -> io::Result<Vec<CString>> {
        let mut vars: Vec<CString> = Vec::new();
        for (k, v) in std::env::vars_os() {
            if !self.env.iter().any(|(set, _)| *set == k) {
                vars.push(c_string(key_value(&k, &v))?);
            }
        }
        for (k, v) in &self.env {
            vars.push(c_string(key_value(k, v))?);
        }
        Ok(vars)
    }
}

fn key_value(k: &OsStr, v: &OsStr) -> OsString {
    let mut kv = k.to_os_string();
    kv.push("=");
    kv.push(v);
    kv
}

fn c_string(s: OsString) -> io::Result<CString> {
    CString::new(s.into_vec()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in an argument"))
}

/// A NULL-terminated array of pointers into `strings`.
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings.iter().map(|s| s.as_ptr()).chain([std::ptr::null()]).collect()
}

/// What the child needs between fork and exec, all of it built beforehand.
struct Prepared<'a> {
    program: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: Option<&'a [*const libc::c_char]>,
    cwd: Option<&'a std::ffi::CStr>,
    /// Fds for 0, 1 and 2 (-1: inherited).
    fds: [RawFd; 3],
    /// The fd for 3, if any (never the report pipe: see `spawn`).
    fd3: Option<RawFd>,
    pgroup: Option<i32>,
    hooks: &'a mut [Hook],
    report: RawFd,
}

impl Prepared<'_> {
    /// In the child: set up and exec, or report the errno and exit 127.
    fn exec(self) -> ! {
        let report = self.report;
        let errno = match self.try_exec() {
            Err(e) => e.raw_os_error().unwrap_or(libc::EINVAL),
            Ok(()) => libc::EINVAL,
        };
        let bytes = errno.to_ne_bytes();
        // SAFETY: write and _exit are async-signal-safe; `bytes` is a
        // valid 4-byte buffer.
        unsafe {
            libc::write(report, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127)
        }
    }

    fn try_exec(self) -> io::Result<()> {
        for (target, &fd) in (0..).zip(&self.fds) {
            if fd == target {
                // Already in place: only let it survive the exec.
                crate::sys::keep_across_exec(fd)?;
            } else if fd >= 0 {
                // SAFETY: dup2 is async-signal-safe; `fd` is open (the
                // parent holds it) and `target` is a standard stream.
                // dup2 leaves the new fd inheritable.
                cvt(unsafe { libc::dup2(fd, target) })?;
            }
        }
        // After 0 to 2, which may have been copied from fd 3.
        match self.fd3 {
            Some(3) => crate::sys::keep_across_exec(3)?,
            // SAFETY: dup2 is async-signal-safe; `fd` is open (the parent
            // holds it); the new fd 3 is inheritable, the one copy that is.
            Some(fd) => drop(cvt(unsafe { libc::dup2(fd, 3) })?),
            None => {}
        }
        if let Some(cwd) = self.cwd {
            // SAFETY: chdir is async-signal-safe; `cwd` is NUL-terminated.
            cvt(unsafe { libc::chdir(cwd.as_ptr()) })?;
        }
        if let Some(pgroup) = self.pgroup {
            // SAFETY: setpgid is async-signal-safe and touches only this
            // process.
            cvt(unsafe { libc::setpgid(0, pgroup) })?;
        }
        // SAFETY: sigset_t is plain data initialised by sigemptyset; the
        // mask and SIGPIPE's disposition are this process's alone; all
        // three are async-signal-safe.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
        for hook in self.hooks.iter_mut() {
            hook()?;
        }
        if let Some(envp) = self.envp {
            // SAFETY: this (forked, single-threaded) process's environment
            // becomes `envp`, NULL-terminated, which outlives the exec
            // below; execvp then looks the program up in its `PATH`.
            unsafe { environ = envp.as_ptr() };
        }
        // SAFETY: execvp is async-signal-safe in practice (musl, glibc);
        // `program` and `argv` are NUL-terminated and NULL-terminated.
        unsafe { libc::execvp(self.program.as_ptr(), self.argv.as_ptr()) };
        Err(io::Error::last_os_error())
    }
}

extern "C" {
    /// The process's environment (POSIX).
    static mut environ: *const *const libc::c_char;
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `fork`: 0 in the child, its pid in the parent.
fn fork() -> io::Result<i32> {
    // SAFETY: the child runs only `Prepared::exec`: async-signal-safe
    // calls on memory prepared before the fork, then exec or _exit.
    cvt(unsafe { libc::fork() })
}

/// How a child ended: a raw wait status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus(i32);

impl ExitStatus {
    /// From a raw wait status.
    pub fn from_raw(status: i32) -> ExitStatus {
        ExitStatus(status)
    }

    /// Its exit code, if it exited.
    pub fn code(&self) -> Option<i32> {
        libc::WIFEXITED(self.0).then(|| libc::WEXITSTATUS(self.0))
    }

    /// The signal that ended it, if one did.
    pub fn signal(&self) -> Option<i32> {
        libc::WIFSIGNALED(self.0).then(|| libc::WTERMSIG(self.0))
    }

    /// It exited with code 0.
    pub fn success(&self) -> bool {
        self.code() == Some(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code(), self.signal()) {
            (Some(c), _) => write!(f, "exit status: {c}"),
            (_, Some(s)) => write!(f, "signal: {s}"),
            _ => write!(f, "wait status: {}", self.0),
        }
    }
}

/// A started process. Dropping it neither kills nor reaps it (and, not
/// reaped, it stays listed as owned: an agent's sweep leaves it alone).
#[derive(Debug)]
pub struct Child {
    pid: i32,
    /// Once reaped.
    status: Option<ExitStatus>,
    /// Our end of its stdin, if piped.
    pub stdin: Option<File>,
    /// Our end of its stdout, if piped.
    pub stdout: Option<File>,
    /// Our end of its stderr, if piped.
    pub stderr: Option<File>,
}

impl Child {
    /// Its pid.
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// SIGKILL it (nothing once it was reaped: its pid may be reused).
    pub fn kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        // SAFETY: kill has no memory effects; the pid is our unreaped child.
        cvt(unsafe { libc::kill(self.pid, libc::SIGKILL) }).map(drop)
    }

    /// Its status if it has ended (reaping it), without blocking.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.waitpid(libc::WNOHANG)
    }

    /// Wait for it to end and reap it.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            match self.waitpid(0) {
                Ok(Some(s)) => return Ok(s),
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn waitpid(&mut self, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let mut status = 0;
        // SAFETY: waitpid writes the status into a valid c_int.
        let pid = cvt(unsafe { libc::waitpid(self.pid, &mut status, flags) })?;
        if pid == 0 {
            return Ok(None);
        }
        let mut owned = owned();
        if let Some(i) = owned.iter().position(|&p| p == pid as u32) {
            owned.swap_remove(i);
        }
        drop(owned);
        self.status = Some(ExitStatus(status));
        Ok(self.status)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use std::io::Write;

    #[test]
    fn pipes_env_cwd_and_status() {
        let mut c = Command::new("sh");
        c.args(["-c", "read x; echo \"$x $FOO $(pwd)\"; echo err >&2; exit 3"])
            .envs([("FOO", "bar")])
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
        let mut out = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = child.wait().unwrap();
        assert_eq!((out.as_str(), err.as_str()), ("hi bar /\n", "err\n"));
        assert_eq!((status.code(), status.signal()), (Some(3), None));
        assert_eq!(status.to_string(), "exit status: 3");
    }

    #[test]
    fn a_missing_program_is_the_spawns_error() {
        let e = Command::new("/nonexistent/spore-test").spawn().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let e = Command::new("sh").current_dir("/nonexistent/dir").spawn().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn fd_3_is_given_to_the_child_alone() {
        // Whatever number it has here (a low one, a high one), it is 3
        // there, and only there: the child's other fds above 2 are closed
        // on exec.
        for min in [3, 40] {
            let (r, mut w) = crate::sys::pipe().unwrap();
            w.write_all(b"on fd 3").unwrap();
            drop(w);
            let fd = crate::sys::dup_at_least(r.as_raw_fd(), min).unwrap();
            drop(r);
            let mut c = Command::new("sh");
            c.args(["-c", "cat <&3; ls /proc/$$/fd; true"]).fd3(fd).stdout(Stdio::piped());
            let mut child = c.spawn().unwrap();
            let mut out = String::new();
            child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
            assert!(child.wait().unwrap().success());
            // Less what this test process inherited by accident (from cargo).
            let inherited = |fd: &str| {
                let fd: i32 = fd.parse().unwrap();
                // SAFETY: F_GETFD only reads an fd's flags.
                fd > 3 && unsafe { libc::fcntl(fd, libc::F_GETFD) } == 0
            };
            let (text, fds) = out.split_at(7);
            let fds: Vec<&str> = fds.lines().filter(|fd| !inherited(fd)).collect();
            assert_eq!((text, fds), ("on fd 3", vec!["0", "1", "2", "3"]), "fd at least {min}");
        }
        // An exec that fails is still reported when fd 3 is given.
        let (r, _w) = crate::sys::pipe().unwrap();
        let e = Command::new("/nonexistent/spore-test").fd3(r).spawn().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_failing_step_is_the_spawns_error_and_groups_are_set() {
        let mut c = Command::new("true");
        // SAFETY: the closure only builds an io::Error from an errno.
        unsafe { c.pre_exec(|| Err(io::Error::from_raw_os_error(libc::EPERM))) };
        assert_eq!(c.spawn().unwrap_err().raw_os_error(), Some(libc::EPERM));
        let mut child = Command::new("sh").args(["-c", "kill -9 $$"]).process_group(0).spawn().unwrap();
        let status = child.wait().unwrap();
        assert_eq!((status.code(), status.signal()), (None, Some(9)));
        assert!(child.kill().is_ok());
    }
}
