//! Persistent sessions: `--persist DURATION` hands the run to a background
//! spore (`spore session serve`) that keeps its contexts between runs.
//!
//! The client sends its command line, its working directory and its own
//! stdin, stdout and stderr (as descriptors, over the session's Unix
//! socket, see [`spore::session`]); the session runs the command exactly as
//! the CLI would, writing straight to those descriptors, and answers with
//! the exit status. Ctrl-C in the client sends `cancel`: that run's calls
//! are cancelled on every target, the session and its contexts stay.

use super::output::{self, complain, Console};
use spore::persist::{self, hex, unhex, Reply, Request, CANCEL, TAKEN};
use spore::select::Target;
use spore::session::{self, Conn, Listener, Recv};
use spore::{Cancel, Options, Router, Targets};
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long `stop` waits for the tree to be down (its bounded shutdown
/// takes the grace and a second at most).
const STOP_WAIT: Duration = Duration::from_secs(15);
/// How long the session waits for a client's request once connected.
const REQUEST_WAIT: Duration = Duration::from_secs(10);

/// `10s`, `5m`, `2h`, `1d`, or plain seconds.
pub fn duration(v: &str) -> Result<Duration, String> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {v:?} (e.g. 90s, 10m, 2h)"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(format!("not a duration: {v:?} (units: s, m, h, d)")),
    };
    let secs = n * scale;
    if !(0.0..=spore::router::MAX_WAIT.as_secs_f64()).contains(&secs) {
        return Err(format!("out of range: {v}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The config file's default for `--persist`: `~/.config/spore/config`
/// (`$XDG_CONFIG_HOME`), beside the inventory, lines of `key = value`
/// and `#` comments; `persist = 10m`. None without the file or the key.
pub fn configured() -> Result<Option<Duration>, String> {
    let Some(path) = spore::inventory::default_path().map(|p| p.with_file_name("config")) else { return Ok(None) };
    let text = match std::fs::read(&path) {
        Ok(bytes) if bytes.len() <= 64 << 10 => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(_) => return Err(format!("{}: larger than 64 KiB", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut persist = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) =
            line.split_once('=').ok_or_else(|| format!("{}:{}: not `key = value`: {line:?}", path.display(), n + 1))?;
        match key.trim() {
            "persist" => {
                persist =
                    Some(duration(value.trim()).map_err(|e| format!("{}:{}: persist: {e}", path.display(), n + 1))?)
            }
            other => log::info!("{}:{}: {other:?} is not a setting spore knows; ignored", path.display(), n + 1),
        }
    }
    Ok(persist)
}

// ---- the client ------------------------------------------------------

/// Run this command line in the session (started, idle for at most
/// `idle`, when none runs); the session's exit status.
pub fn run_in_session(argv: &[OsString], idle: Duration, ask_pass: bool) -> i32 {
    match client(argv, idle, ask_pass) {
        Ok(code) => code,
        Err(e) => {
            complain(&format!("spore: --persist: {e}"));
            super::EXIT_SPORE
        }
    }
}

fn client(argv: &[OsString], idle: Duration, ask_pass: bool) -> std::io::Result<i32> {
    let dir = session::runtime_dir()?;
    let cwd = std::env::current_dir()?;
    // -K: asked here, on the client's terminal.
    let password = if ask_pass { Some(crate::tty::ask_password("become password: ")?) } else { None };
    let request = Request {
        kind: "run".into(),
        argv: argv.iter().map(|a| hex(a.as_bytes())).collect(),
        cwd: hex(cwd.as_os_str().as_bytes()),
        password,
        // What this process would show without the session.
        log_level: Some(log::max_level().to_string()),
    };
    // From here a signal is the session's to act on (see below).
    crate::signals::block();
    let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let spore = std::env::current_exe()?;
    let mut conn = persist::hand_over(&dir, &request, [i.as_fd(), o.as_fd(), e.as_fd()], &mut || {
        persist::start_session(&spore, &dir, idle)
    })?;
    drop(request);
    // Ctrl-C or SIGTERM: the session cancels this run (only), then
    // answers; we exit as the signal says.
    let canceller = conn.try_clone()?;
    crate::signals::on_signal(move |_| {
        let mut c = canceller;
        let _ = c.send(CANCEL, &[]);
    });
    let reply = persist::wait_reply(&mut conn)?;
    Ok(crate::signals::signalled().map_or(reply.status, |sig| 128 + sig))
}

/// `spore session status` / `stop`: the session prints the one and does the
/// other; none running is said plainly.
pub fn control(kind: &str) -> i32 {
    let run = || -> std::io::Result<Option<i32>> {
        let dir = session::runtime_dir()?;
        let Some(mut conn) = session::connect(&dir)? else { return Ok(None) };
        let request = Request { kind: kind.into(), ..<Request as Default>::default() };
        let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
        conn.send(miniserde::json::to_string(&request).as_bytes(), &[i.as_fd(), o.as_fd(), e.as_fd()])?;
        match conn.recv(Some(Instant::now() + persist::START_WAIT))? {
            Recv::Message(m, _) if m == TAKEN => {}
            // Ending as we came: as good as none.
            _ => return Ok(None),
        }
        Ok(Some(persist::wait_reply(&mut conn)?.status))
    };
    match run() {
        Ok(Some(code)) => code,
        Ok(None) => {
            complain("spore: no session is running");
            if kind == "stop" {
                0
            } else {
                1
            }
        }
        Err(e) => {
            complain(&format!("spore: session {kind}: {e}"));
            super::EXIT_SPORE
        }
    }
}

// ---- the session -----------------------------------------------------

/// The contexts a session keeps: one set per way of connecting (what
/// changes a connection: `-F`, `-o`; the forks limit goes with it).
type Key = (Option<String>, Vec<String>, u32);

struct Session {
    router: Router,
    trees: Mutex<HashMap<Key, Arc<Targets>>>,
    /// Runs under way, and when the last one ended.
    busy: Mutex<(usize, Instant)>,
    stop: std::sync::atomic::AtomicBool,
    /// The listener is closed and the tree shut down: `stop` may answer.
    down: (Mutex<bool>, std::sync::Condvar),
}

/// `spore session serve --idle SECS`: serve until idle that long (or
/// `stop`), then the bounded shutdown of the whole tree.
pub fn serve(idle: Duration) -> i32 {
    // A -K password's copies freed on its way to a sudo hop are not kept.
    crate::wipe::switch_on();
    let dir = match session::runtime_dir() {
        Ok(d) => d,
        Err(e) => {
            complain(&format!("spore: session: {e}"));
            return super::EXIT_SPORE;
        }
    };
    let listener = match Listener::bind(&dir) {
        Ok(Some(l)) => l,
        Ok(None) => return 0, // another session won the race: it serves.
        Err(e) => {
            complain(&format!("spore: session: {e}"));
            return super::EXIT_SPORE;
        }
    };
    crate::signals::block();
    // The agents forward their debug records whoever connected them, so a
    // later run with -v shows them (see `output::RunLog`); what no run
    // asks for is dropped here.
    let agent_log_level = Some(log::max_level().max(log::LevelFilter::Debug));
    let router = match Router::with_options(Options { agent_log_level, ..Options::default() }) {
        Ok(r) => r,
        Err(e) => {
            complain(&format!("spore: session: {e}"));
            return super::EXIT_SPORE;
        }
    };
    crate::signals::shut_down_on_signal(router.clone(), || {});
    let s = Arc::new(Session {
        router,
        trees: Mutex::new(HashMap::new()),
        busy: Mutex::new((0, Instant::now())),
        stop: std::sync::atomic::AtomicBool::new(false),
        down: (Mutex::new(false), std::sync::Condvar::new()),
    });
    log::info!("session: serving on {}", listener.path().display());
    loop {
        let (busy, last) = *s.busy.lock().unwrap_or_else(PoisonError::into_inner);
        if s.stop.load(std::sync::atomic::Ordering::SeqCst) || (busy == 0 && last.elapsed() >= idle) {
            break;
        }
        let until = if busy > 0 { Instant::now() + Duration::from_secs(1) } else { last + idle };
        // In slices, so a `stop` is acted on at once.
        match listener.accept(until.min(Instant::now() + Duration::from_millis(100))) {
            Ok(Some(conn)) => {
                let s = Arc::clone(&s);
                s.busy.lock().unwrap_or_else(PoisonError::into_inner).0 += 1;
                let spawned = std::thread::Builder::new().name("spore-client".into()).spawn(move || {
                    serve_client(&s, conn);
                    let mut b = s.busy.lock().unwrap_or_else(PoisonError::into_inner);
                    *b = (b.0 - 1, Instant::now());
                });
                if let Err(e) = spawned {
                    log::warn!("session: can't serve a client: {e}");
                }
            }
            Ok(None) => {}
            Err(e) => log::warn!("session: accept: {e}"),
        }
    }
    log::info!("session: shutting down");
    drop(listener);
    s.router.shutdown();
    *s.down.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
    s.down.1.notify_all();
    // The clients still here (a `stop`'s among them) get their answers
    // before the process ends; bounded.
    let limit = Instant::now() + Duration::from_secs(2);
    while s.busy.lock().unwrap_or_else(PoisonError::into_inner).0 > 0 && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(10));
    }
    0
}

fn serve_client(s: &Session, mut conn: Conn) {
    let (mut body, fds) = match conn.recv(Some(Instant::now() + REQUEST_WAIT)) {
        Ok(Recv::Message(body, fds)) => (body, fds),
        other => {
            log::warn!("session: a client sent no request ({:?})", other.err());
            return;
        }
    };
    let parsed = miniserde::json::from_str::<Request>(&String::from_utf8_lossy(&body));
    // The request may hold a password: its bytes are not kept.
    body.fill(0);
    let Ok(mut request) = parsed else {
        log::warn!("session: a request not understood");
        return;
    };
    let mut fds = fds.into_iter();
    let (Some(i), Some(o), Some(e)) = (fds.next(), fds.next(), fds.next()) else {
        log::warn!("session: a request without its stdin, stdout and stderr");
        return;
    };
    // Ending: a run is not taken (its client starts a new session), a
    // `stop` is.
    if s.stop.load(std::sync::atomic::Ordering::SeqCst) && request.kind == "run" {
        return;
    }
    if conn.send(TAKEN, &[]).is_err() {
        return;
    }
    output::adopt(Some(Arc::new(Console::new(Some(i), o, e))));
    let status = match request.kind.as_str() {
        "run" => run_request(s, &mut request, &conn),
        "status" => status(s),
        "stop" => {
            // Answered once the tree is down (bounded), so a run right
            // after `session stop` starts a new session.
            s.stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let limit = Instant::now() + STOP_WAIT;
            let mut down = s.down.0.lock().unwrap_or_else(PoisonError::into_inner);
            while !*down && Instant::now() < limit {
                down =
                    s.down.1.wait_timeout(down, Duration::from_millis(100)).unwrap_or_else(PoisonError::into_inner).0;
            }
            0
        }
        other => {
            complain(&format!("spore: the session does not know {other:?}"));
            super::EXIT_USAGE
        }
    };
    output::adopt(None);
    let _ = conn.send(miniserde::json::to_string(&Reply { status }).as_bytes(), &[]);
}

/// A client's command line, run here as the CLI would run it there.
fn run_request(s: &Session, request: &mut Request, conn: &Conn) -> i32 {
    use clap::Parser;
    let argv: Option<Vec<OsString>> = request.argv.iter().map(|a| unhex(a).map(OsString::from_vec)).collect();
    let cwd = unhex(&request.cwd).map(|c| PathBuf::from(OsString::from_vec(c)));
    let (Some(argv), Some(cwd)) = (argv, cwd) else {
        complain("spore: the session got a garbled request");
        return super::EXIT_SPORE;
    };
    let cli = match super::Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => return super::clap_error(&e),
    };
    // The client's log level for this run's records, not the session's.
    let level = match request.log_level.as_deref().map(str::parse) {
        Some(Ok(level)) => level,
        _ => output::level_for(cli.opts.verbose, None),
    };
    // The client's console, adopted by this thread.
    let Some(console) = output::current() else { return super::EXIT_SPORE };
    let run_log = Ending(output::RunLog::start(console, level));
    run_logged(s, request, conn, cli, cwd, &run_log.0)
}

/// A run's log, ended (its lines out to the client) however the run ends.
struct Ending(Arc<output::RunLog>);

impl Drop for Ending {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// [`run_request`] with its log set up.
fn run_logged(
    s: &Session,
    request: &mut Request,
    conn: &Conn,
    cli: super::Cli,
    cwd: PathBuf,
    run_log: &output::RunLog,
) -> i32 {
    let mut opts = cli.opts;
    absolute(&mut opts.inventory, &cwd);
    absolute(&mut opts.out_dir, &cwd);
    if opts.targets_from.as_deref().is_some_and(|f| f.as_os_str() != "-") {
        absolute(&mut opts.targets_from, &cwd);
    }
    let (words, mut work) = match super::work_of(cli.cmd) {
        Ok(w) => w,
        Err(e) => {
            complain(&format!("spore: {e}"));
            return super::EXIT_USAGE;
        }
    };
    super::in_dir(&mut work, &cwd);
    let targets: Vec<Target> = match super::select(&opts, &words) {
        Ok(t) => t,
        Err(e) => {
            complain(&format!("spore: {}", output::shown(&e)));
            return super::EXIT_USAGE;
        }
    };
    run_log.follow(&targets.iter().map(|t| t.path.as_str()).collect::<Vec<_>>());
    let key: Key = (opts.ssh_config.clone(), opts.ssh_options.clone(), opts.forks);
    let tree = {
        let mut trees = s.trees.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(trees.entry(key).or_insert_with(|| {
            let mut t = Targets::new(s.router.clone());
            t.first_hop_config = opts.ssh_config.clone();
            t.first_hop_options = opts.ssh_options.clone();
            t.set_forks(usize::try_from(opts.forks).unwrap_or(usize::MAX));
            Arc::new(t)
        }))
    };
    // A connect that failed last time is tried again.
    tree.forget_failures();
    // -K: for this run's connects only, and gone with `opts` (a sudo
    // context it opened stays, so the next run needs no password).
    opts.become_password = request.password.take();
    opts.ask_become_pass = false;
    let cancel = Cancel::new();
    // The client's `cancel` (or its going away) cancels this run's calls.
    let watcher = conn.try_clone().ok().map(|mut c| {
        let cancel = cancel.clone();
        std::thread::spawn(move || loop {
            match c.recv(Some(Instant::now() + Duration::from_millis(200))) {
                Ok(Recv::Message(body, _)) if body == CANCEL => return cancel.cancel(),
                Ok(Recv::TimedOut) if !cancel.is_cancelled() => {}
                Ok(Recv::Message(..)) | Ok(Recv::TimedOut) => {}
                _ => return cancel.cancel(),
            }
            if cancel.is_cancelled() {
                return;
            }
        })
    });
    let code = super::run_with(&opts, &work, &targets, &s.router, &tree, Some(&cancel), &cwd);
    // The run is over. Its watcher is not waited for: it ends when the
    // client, answered, closes the socket (or within 200 ms of the flag).
    cancel.cancel();
    drop(watcher);
    code
}

/// A relative local path, as the client meant it.
fn absolute(p: &mut Option<PathBuf>, cwd: &Path) {
    if let Some(path) = p {
        if path.is_relative() {
            *path = cwd.join(&*path);
        }
    }
}

/// `spore session status`: the live contexts.
fn status(s: &Session) -> i32 {
    let trees: Vec<Arc<Targets>> = s.trees.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
    let now = Instant::now();
    let mut lines = vec![format!("{:<40} {:>12} {:>10} {:>10}", "context", "connected", "idle", "agent RSS")];
    for tree in &trees {
        for c in tree.contexts() {
            if !c.context.is_connected() {
                continue;
            }
            let rss = agent_rss(&c.context).map_or_else(|| "?".to_string(), |k| format!("{k} KiB"));
            lines.push(format!(
                "{:<40} {:>11.0}s {:>9.0}s {:>10}",
                output::shown(&c.path),
                now.duration_since(c.connected_since).as_secs_f64(),
                now.duration_since(c.last_used).as_secs_f64(),
                rss
            ));
        }
    }
    match output::say(&lines.join("\n")) {
        Ok(()) => 0,
        Err(e) => output::write_failed(&e),
    }
}

/// The agent's resident memory, read from its own `/proc` there.
fn agent_rss(ctx: &spore::Context) -> Option<u64> {
    let pid = ctx.info().ok()?.pid;
    let mut status = Vec::new();
    ctx.read_file(&format!("/proc/{pid}/status"), &mut status).ok()?;
    String::from_utf8_lossy(&status)
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
