//! The `spore` command line: which targets, then each target's work on a
//! thread of its own as soon as its connection is up (at most `--forks`
//! being set up at once), then the report.
//!
//! Adding a command: a variant in [`args::Cmd`], a [`Work`] for it, and a
//! function `cmd_x` that fills one target's [`Outcome`].

mod args;
mod output;
mod progress;
mod report;
mod session;

use args::{Cli, Cmd, Opts, SessionCmd};
use clap::Parser;
use miniserde::json::{Number, Object, Value};
use output::{complain, emit, say, shown, write_failed, Gathered, OutFiles, Prefixed, ScreenForm, TargetOutput};
use progress::Progress;
use spore::select::Target;
use spore::{Command, Context, Error, Options, Router, Stream, Targets};
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

/// Exit status for failures of spore itself, and for a target that could
/// not be reached, like ssh.
const EXIT_SPORE: i32 = 255;
/// Exit status of a target whose command timed out, as timeout(1) has it.
const EXIT_TIMED_OUT: i32 = 124;
/// Exit status for a usage error.
const EXIT_USAGE: i32 = 2;
/// `--gather` keeps at most this much of all targets' output together...
const GATHER_TOTAL: usize = 256 << 20;
/// ...and at least this much of each.
const GATHER_MIN: usize = 64 << 10;
/// The files of a target's directory under `--out-dir`.
const OUT_FILES: [&str; 3] = ["stdout", "stderr", "status"];
/// Each target's thread: connecting and streaming need little stack, and
/// a run may have thousands of them.
const THREAD_STACK: usize = 512 << 10;

/// What each target does, its arguments checked and converted.
#[derive(Clone)]
enum Work {
    /// `run`, and `script` (a command that reads the script from fd 3);
    /// `what` names it in messages.
    Run {
        cmd: Command,
        what: String,
    },
    Info,
    /// Done for all targets at once, so that bytes for targets behind a
    /// shared hop cross it once.
    Put {
        local: PathBuf,
        remote: String,
        mode: Option<u32>,
        recursive: bool,
    },
    /// `many`: each target's copy under `local/TARGET/`.
    Get {
        remote: String,
        local: PathBuf,
        many: bool,
        recursive: bool,
    },
}

/// How a target's run ended, for the summary and `@failed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fate {
    Ok,
    /// A non-zero exit status, or an operation that failed there.
    Failed,
    /// Its connection could not be made, or was lost.
    Unreachable,
    /// Its command outlived `--timeout`, or the run `--deadline`.
    TimedOut,
}

/// One target's result.
struct Outcome {
    target: Target,
    fate: Fate,
    /// Exit status contribution: 0, the command's status, 124 or 255.
    code: i32,
    json: Object,
    /// Text for the human form (`run` prints as it goes instead).
    text: Option<String>,
    error: Option<String>,
    gathered: Option<Gathered>,
}

impl Outcome {
    fn new(target: &Target) -> Outcome {
        let mut json = Object::new();
        json.insert("target".into(), Value::String(target.label.clone()));
        if target.path != target.label {
            json.insert("path".into(), Value::String(target.path.clone()));
        }
        Outcome { target: target.clone(), fate: Fate::Ok, code: 0, json, text: None, error: None, gathered: None }
    }

    fn fail(&mut self, e: &Error) {
        let (fate, code) = match e {
            Error::Connect { .. } | Error::Disconnected { .. } | Error::Dead { .. } => (Fate::Unreachable, EXIT_SPORE),
            _ => (Fate::Failed, EXIT_SPORE),
        };
        self.fate = fate;
        self.code = code;
        self.error = Some(e.to_string());
    }

    fn set(&mut self, k: &str, v: Value) {
        self.json.insert(k.into(), v);
    }

    /// The object `--json` prints for this target.
    fn json_line(&self) -> String {
        let mut json = self.json.clone();
        json.insert("ok".into(), Value::Bool(self.fate == Fate::Ok));
        let fate = match self.fate {
            Fate::Ok => "ok",
            Fate::Failed => "failed",
            Fate::Unreachable => "unreachable",
            Fate::TimedOut => "timed_out",
        };
        json.insert("result".into(), Value::String(fate.into()));
        if let Some(e) = &self.error {
            json.insert("error".into(), Value::String(e.clone()));
        }
        miniserde::json::to_string(&Value::Object(json))
    }
}

fn num(n: u64) -> Value {
    Value::Number(Number::U64(n))
}

fn int(n: Option<i32>) -> Value {
    n.map_or(Value::Null, |n| Value::Number(Number::I64(n.into())))
}

/// Everything a run shares between its targets' threads.
struct Run<'a> {
    opts: &'a Opts,
    work: &'a Work,
    tree: &'a Targets,
    router: &'a Router,
    progress: Option<&'a Progress>,
    /// More than one target: output is prefixed, stdin not forwarded.
    many: bool,
    /// Kept output per target under `--gather`.
    gather_limit: usize,
    /// The `--deadline` passed: what ends now ended because of it.
    deadline_hit: &'a AtomicBool,
    /// Our own stdout or stderr failed: the run is ending.
    output_failed: &'a std::sync::Mutex<Option<std::io::Error>>,
    /// A session's run: cancelled to end it early.
    cancel: Option<&'a spore::Cancel>,
    /// The working directory of the command line (in a session, the
    /// client's): commands on this host run there.
    cwd: &'a Path,
}

impl Run<'_> {
    /// Open a target on this run's terms: its --connect-timeout, and in a
    /// session its client's -K password.
    fn open(&self, path: &str) -> spore::Result<spore::Context> {
        let with = spore::target::OpenWith {
            connect_timeout: self.opts.connect_timeout,
            become_password: self.opts.become_password.as_deref(),
        };
        self.tree.open_with(path, with)
    }
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => return clap_error(&e),
    };
    output::init_logger(cli.opts.verbose);
    match &cli.cmd {
        Cmd::Completions { shell } => {
            let mut text = Vec::new();
            args::completions(*shell, &mut text);
            return emit(Stream::Stdout, &text).map_or_else(|e| write_failed(&e), |()| 0);
        }
        Cmd::Session { action } => {
            return match action {
                SessionCmd::Status => session::control("status"),
                SessionCmd::Stop => session::control("stop"),
                SessionCmd::Serve { idle } => session::serve(*idle),
            };
        }
        Cmd::Manpage { command } => {
            let mut text = Vec::new();
            return match args::manpage(command.as_deref(), &mut text) {
                Ok(()) => emit(Stream::Stdout, &text).map_or_else(|e| write_failed(&e), |()| 0),
                Err(e) => {
                    complain(&format!("spore: {e}"));
                    EXIT_USAGE
                }
            };
        }
        _ => {}
    }
    let has_targets =
        matches!(cli.cmd, Cmd::Run { .. } | Cmd::Script { .. } | Cmd::Info { .. } | Cmd::Put { .. } | Cmd::Get { .. });
    // --persist, else SPORE_PERSIST (clap reads it), else the config file;
    // 0 runs here, without a session.
    let persist = match cli.opts.persist {
        Some(d) => Some(d),
        None if has_targets => match session::configured() {
            Ok(d) => d,
            Err(e) => {
                complain(&format!("spore: {e}"));
                return EXIT_USAGE;
            }
        },
        None => None,
    };
    if let (Some(idle), true) = (persist.filter(|d| !d.is_zero()), has_targets) {
        // The whole command line goes to the session, which runs it.
        let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
        return session::run_in_session(&argv, idle, cli.opts.ask_become_pass);
    }
    let (words, work) = match work_of(cli.cmd) {
        Ok(w) => w,
        Err(e) => {
            complain(&format!("spore: {e}"));
            return EXIT_USAGE;
        }
    };
    let targets = match select(&cli.opts, &words) {
        Ok(t) => t,
        Err(e) => {
            complain(&format!("spore: {}", shown(&e)));
            return EXIT_USAGE;
        }
    };
    run(&cli.opts, &work, &targets)
}

/// clap's own error or help, with our exit statuses and write failures:
/// help and version asked for go to stdout (status 0), the rest to stderr.
fn clap_error(e: &clap::Error) -> i32 {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let text = e.render().to_string();
        return emit(Stream::Stdout, text.as_bytes()).map_or_else(|e| write_failed(&e), |()| 0);
    }
    complain(e.render().to_string().trim_end());
    EXIT_USAGE
}

/// An argument that travels to the remote, which carries text only (JSON
/// strings): refused by name if it is not UTF-8, never mangled.
fn text_arg(what: &str, a: OsString) -> Result<String, String> {
    a.into_string().map_err(|a| {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str()).to_vec();
        let shown = bytes.iter().flat_map(|&b| std::ascii::escape_default(b)).map(char::from).collect::<String>();
        format!("{what} ({shown}) is not UTF-8: spore carries remote commands, arguments and paths as text")
    })
}

/// A target word: text, like every name ssh takes.
fn target_word(a: OsString) -> Result<String, String> {
    text_arg("target", a)
}

/// The target words and the work of a command line.
fn work_of(cmd: Cmd) -> Result<(Vec<String>, Work), String> {
    match cmd {
        Cmd::Run { targets, argv } => {
            let argv = argv
                .into_iter()
                .enumerate()
                .map(|(i, a)| text_arg(&format!("argument {} of the command", i + 1), a))
                .collect::<Result<Vec<_>, _>>()?;
            let what = argv.join(" ");
            Ok((targets, Work::Run { cmd: Command::new(argv), what }))
        }
        Cmd::Info { targets } => Ok((targets, Work::Info)),
        Cmd::Put { recursive, mode, mut words } => {
            if recursive && mode.is_some() {
                return Err("put -r keeps each file's own mode: --mode is for a single file".into());
            }
            let remote = text_arg("the remote path", words.pop().unwrap_or_default())?;
            let local = PathBuf::from(words.pop().unwrap_or_default());
            let targets = words.into_iter().map(target_word).collect::<Result<_, _>>()?;
            Ok((targets, Work::Put { local, remote, mode, recursive }))
        }
        Cmd::Get { recursive, mut words } => {
            let local = PathBuf::from(words.pop().unwrap_or_default());
            let remote = text_arg("the remote path", words.pop().unwrap_or_default())?;
            let targets = words.into_iter().map(target_word).collect::<Result<_, _>>()?;
            Ok((targets, Work::Get { remote, local, many: false, recursive }))
        }
        Cmd::Script { mut words, args } => {
            let file = PathBuf::from(words.pop().unwrap_or_default());
            let targets = words.into_iter().map(target_word).collect::<Result<_, _>>()?;
            let args = args
                .into_iter()
                .enumerate()
                .map(|(i, a)| text_arg(&format!("argument {} of the script", i + 1), a))
                .collect::<Result<Vec<_>, _>>()?;
            let source = read_script(&file)?;
            let cmd = Command::script(&source, args.iter().cloned())
                .map_err(|e| format!("script {}: {}", file.display(), shown(&e.to_string())))?;
            let what = [file.display().to_string()].into_iter().chain(args).collect::<Vec<_>>().join(" ");
            Ok((targets, Work::Run { cmd, what }))
        }
        Cmd::Completions { .. } | Cmd::Manpage { .. } | Cmd::Session { .. } => Err("not a command with targets".into()),
    }
}

/// A local script, read whole: it travels in the call (4 MiB at most, so
/// the read stops past that).
fn read_script(file: &Path) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(file).map_err(|e| format!("script {}: {e}", file.display()))?;
    let mut source = Vec::new();
    f.take(spore_protocol::body::MAX_SCRIPT as u64 + 1)
        .read_to_end(&mut source)
        .map_err(|e| format!("script {}: {e}", file.display()))?;
    Ok(source)
}

/// The targets the words (and `--targets-from`, and `-x`) select.
fn select(opts: &Opts, words: &[String]) -> Result<Vec<Target>, String> {
    use spore::select::{self, Sources};
    let mut words = words.to_vec();
    if let Some(file) = &opts.targets_from {
        let listed = if file.as_os_str() == "-" {
            match output::current().and_then(|c| c.stdin()) {
                Some(input) => select::read_list_from(input, "stdin"),
                None => Ok(Vec::new()),
            }
        } else {
            let f = std::fs::File::open(file).map_err(|e| format!("--targets-from {}: {e}", file.display()))?;
            select::read_list_from(f, &file.display().to_string())
        };
        words.extend(listed.map_err(|e| e.to_string())?);
    }
    if words.is_empty() {
        return Err("no targets given (name them, or use --targets-from)".into());
    }
    // -i, else $SPORE_INVENTORY (clap reads it into -i), else the default
    // file if there is one.
    let path = opts.inventory.clone().or_else(|| spore::inventory::default_path().filter(|p| p.exists()));
    let inventory = match &path {
        Some(p) => Some(spore::inventory::Inventory::load(p).map_err(|e| e.to_string())?),
        None => None,
    };
    if let Some(inv) = &inventory {
        for note in inv.notes() {
            log::info!("{note}");
        }
    }
    let failed = if select::wants_failed(&words, &opts.exclude) {
        select::read_failed().map_err(|e| e.to_string())?
    } else {
        None
    };
    let sources = Sources { inventory: inventory.as_ref(), failed };
    let targets: Vec<Target> = select::select(&words, &opts.exclude, &sources).map_err(|e| e.to_string())?;
    // Every path is checked before anything connects: a typo is a usage
    // error, not one unreachable host among many.
    for t in &targets {
        spore::hop::parse(&t.path).map_err(|e| e.to_string())?;
    }
    Ok(targets)
}

fn run(opts: &Opts, work: &Work, targets: &[Target]) -> i32 {
    raise_fd_limit();
    let mut ropts = Options::default();
    if let Some(t) = opts.connect_timeout {
        ropts.connect_timeout = t;
    }
    if opts.ask_become_pass {
        match crate::tty::ask_password("become password: ") {
            Ok(pw) => ropts.become_password = Some(pw),
            Err(e) => {
                complain(&format!("spore: --ask-become-pass: {e}"));
                return EXIT_USAGE;
            }
        }
    }
    // From here on Ctrl-C means an orderly shutdown. (At the prompt it just
    // ends spore: nothing has started yet.) No thread exists before this.
    crate::signals::block();
    let router = match Router::with_options(ropts) {
        Ok(r) => r,
        Err(e) => {
            complain(&format!("spore: {e}"));
            return EXIT_SPORE;
        }
    };
    let mut tree = Targets::new(router.clone());
    tree.first_hop_config = opts.ssh_config.clone();
    tree.first_hop_options = opts.ssh_options.clone();
    tree.set_forks(usize::try_from(opts.forks).unwrap_or(usize::MAX));
    let cwd = std::env::current_dir().unwrap_or_default();
    let code = run_with(opts, work, targets, &router, &tree, None, &cwd);
    log::debug!("at most {} connections were being set up at once", tree.peak_handshakes());
    code
}

/// A run on a router and its targets: this process's own (`cancel` is
/// None: the run ends with the router's shutdown), or a session's (the run
/// ends by cancelling its calls; the contexts stay).
fn run_with(
    opts: &Opts,
    work: &Work,
    targets: &[Target],
    router: &Router,
    tree: &Targets,
    cancel: Option<&spore::Cancel>,
    cwd: &Path,
) -> i32 {
    let many = targets.len() > 1;
    let mut work = work.clone();
    if let Work::Get { many: m, .. } = &mut work {
        *m = many;
    }
    let work = &work;
    let labels: Vec<String> = targets.iter().map(|t| t.label.clone()).collect();
    let clash = match work {
        // A tree's copy may hold any name: no target may lie inside another's.
        Work::Get { many: true, recursive: true, .. } => output::nested(&labels, None),
        Work::Get { many: true, remote, .. } => {
            let name = Path::new(remote).file_name().and_then(|n| n.to_str()).unwrap_or_default();
            output::nested(&labels, Some(&[name]))
        }
        _ => None,
    };
    let clash = clash.or_else(|| opts.out_dir.as_ref().and_then(|_| output::nested(&labels, Some(&OUT_FILES))));
    if let Some((a, b)) = clash {
        complain(&format!("spore: {a} and {b} are both targets: {b}'s files would land on {a}'s; run them apart"));
        return EXIT_USAGE;
    }
    let progress = if many && !opts.json { Progress::start(targets.len()) } else { None };
    if cancel.is_none() {
        let on_signal = progress.clone();
        crate::signals::shut_down_on_signal(router.clone(), move || {
            if let Some(p) = &on_signal {
                p.finish();
            }
        });
    }
    let started = Instant::now();
    let deadline_hit = AtomicBool::new(false);
    let output_failed = std::sync::Mutex::new(None);
    let ctx = Run {
        opts,
        work,
        tree,
        router,
        progress: progress.as_deref(),
        many,
        gather_limit: (GATHER_TOTAL / targets.len().max(1)).max(GATHER_MIN),
        deadline_hit: &deadline_hit,
        output_failed: &output_failed,
        cancel,
        cwd,
    };
    let outcomes = run_all(&ctx, targets);
    if cancel.is_none() {
        router.shutdown();
    }
    if let Some(p) = &progress {
        p.finish();
    }
    let failed = output_failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    if let Some(e) = failed {
        return write_failed(&e);
    }
    if let Err(e) = report::finish(opts, &outcomes, started.elapsed()) {
        return write_failed(&e);
    }
    let code = outcomes.iter().map(|o| o.code).max().unwrap_or(0);
    // Interrupted: the shell's status for the signal, however the calls
    // ended (they fail because of the shutdown the signal began).
    crate::signals::signalled().map_or(code, |sig| 128 + sig)
}

/// The run's end, early: a session's run cancels its own calls, a
/// process's own shuts its tree down.
fn end_early(run: &Run<'_>) {
    match run.cancel {
        Some(c) => c.cancel(),
        None => run.router.shutdown(),
    }
}

/// A session's command: relative local paths are the client's.
fn in_dir(work: &mut Work, cwd: &Path) {
    let fix = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = cwd.join(&*p);
        }
    };
    match work {
        Work::Put { local, .. } | Work::Get { local, .. } => fix(local),
        Work::Run { .. } | Work::Info => {}
    }
}

/// Every target on a thread of its own: connect (within the forks
/// limit), then its work at once. Ends by the `--deadline` if one is set.
fn run_all(run: &Run<'_>, targets: &[Target]) -> Vec<Outcome> {
    let (tx, rx) = mpsc::channel();
    let deadline = run.opts.deadline.map(|d| Instant::now() + d);
    let mut outcomes: Vec<Option<Outcome>> = targets.iter().map(|_| None).collect();
    std::thread::scope(|s| {
        if let Work::Put { local, remote, mode, recursive } = run.work {
            // All targets at once, on a thread of its own, so the deadline
            // below still holds.
            let tx = tx.clone();
            let console = output::current();
            let spawned = std::thread::Builder::new().name("spore-put".into()).spawn_scoped(s, move || {
                output::adopt(console);
                for (i, o) in put_all(run, targets, local, remote, *mode, *recursive).into_iter().enumerate() {
                    let _ = tx.send((i, o));
                }
            });
            if let Err(e) = spawned {
                complain(&format!("spore: start a thread: {e}"));
            }
        }
        for (i, t) in targets.iter().enumerate() {
            if matches!(run.work, Work::Put { .. }) {
                break;
            }
            let tx = tx.clone();
            let console = output::current();
            let spawned = std::thread::Builder::new()
                .name("spore-target".into())
                .stack_size(THREAD_STACK)
                .spawn_scoped(s, move || {
                    output::adopt(console);
                    let _ = tx.send((i, one_target(run, t)));
                });
            if let Err(e) = spawned {
                let mut o = Outcome::new(t);
                o.fail(&Error::Local { what: format!("{}: start a thread", t.label), source: e });
                outcomes[i] = Some(o);
            }
        }
        drop(tx);
        loop {
            let got = match deadline {
                Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            match got {
                Ok((i, o)) => outcomes[i] = Some(o),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Whatever is still running ends now, and counts as timed out.
                    if !run.deadline_hit.swap(true, Ordering::SeqCst) {
                        log::debug!("--deadline reached: ending the run");
                        end_early(run);
                    }
                }
            }
        }
    });
    outcomes
        .into_iter()
        .zip(targets)
        .map(|(o, t)| {
            o.unwrap_or_else(|| {
                let mut o = Outcome::new(t);
                o.fail(&Error::ShuttingDown);
                o
            })
        })
        .collect()
}

/// One target, from its connection to its result line.
fn one_target(run: &Run<'_>, t: &Target) -> Outcome {
    if let Some(p) = run.progress {
        p.begin(&t.label);
    }
    let mut o = Outcome::new(t);
    let opening = output::opening();
    let opened = run.open(&t.path);
    drop(opening);
    let result = opened.and_then(|ctx| match run.work {
        Work::Run { cmd, what } => cmd_run(run, &ctx, cmd, what, &mut o),
        Work::Info => cmd_info(&ctx, &mut o),
        Work::Get { remote, local, many, recursive } => {
            let local = if *many { spore::tree::per_target(local, &t.label)? } else { local.clone() };
            if *recursive {
                cmd_get_tree(&ctx, remote, &local, &mut o)
            } else {
                cmd_get(&ctx, remote, &local, *many, &mut o)
            }
        }
        Work::Put { .. } => Err(Error::Usage("put runs for all targets at once".into())),
    });
    if let Err(e) = result {
        note_failure(run, &mut o, e);
    }
    ended(run, &mut o);
    o
}

/// A target is done: the deadline's verdict, the progress line, and its
/// result line, at once.
fn ended(run: &Run<'_>, o: &mut Outcome) {
    if o.fate != Fate::Ok && run.deadline_hit.load(Ordering::SeqCst) && o.error.is_some() {
        o.fate = Fate::TimedOut;
        o.code = EXIT_TIMED_OUT;
        o.error = Some(format!("{}: cut off by the run's --deadline", o.target.label));
        if !run.opts.json {
            complain(&format!("spore: {}", shown(o.error.as_deref().unwrap_or_default())));
        }
    }
    if let Some(p) = run.progress {
        p.end(&o.target.label, o.fate == Fate::Ok);
    }
    let line = if run.opts.json { Some(o.json_line()) } else { o.text.clone() };
    if let Some(Err(e)) = line.map(|l| say(&l)) {
        output_gone(run, e);
    }
}

/// `put` (`-r` too) to every target at once: each connected (within the
/// forks limit), then each file sent once down each link, the hops below
/// fanning it out (`spore::fanout`).
fn put_all(
    run: &Run<'_>,
    targets: &[Target],
    local: &Path,
    remote: &str,
    mode: Option<u32>,
    recursive: bool,
) -> Vec<Outcome> {
    let opened: Vec<spore::Result<Context>> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| {
                let console = output::current();
                std::thread::Builder::new().stack_size(THREAD_STACK).spawn_scoped(s, move || {
                    output::adopt(console);
                    if let Some(p) = run.progress {
                        p.begin(&t.label);
                    }
                    let _opening = output::opening();
                    run.open(&t.path)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().unwrap_or(Err(Error::ShuttingDown)),
                Err(e) => Err(Error::Local { what: "start a thread".into(), source: e }),
            })
            .collect()
    });
    let mut outcomes: Vec<Outcome> = targets.iter().map(Outcome::new).collect();
    let mut up: Vec<(usize, Context)> = Vec::new();
    for (i, r) in opened.into_iter().enumerate() {
        match r {
            Ok(ctx) => up.push((i, ctx)),
            Err(e) => note_failure(run, &mut outcomes[i], e),
        }
    }
    let contexts: Vec<Context> = up.iter().map(|(_, c)| c.clone()).collect();
    if recursive {
        let root = match remote_root(local, remote) {
            Ok(root) => root,
            Err(e) => {
                for (i, _) in &up {
                    note_failure(run, &mut outcomes[*i], Error::Usage(e.clone()));
                }
                up.clear();
                String::new()
            }
        };
        // REMOTE itself is made when missing (with its parents, like
        // `mkdir -p`), as rsync makes its destination.
        if !local.as_os_str().as_encoded_bytes().ends_with(b"/") {
            up.retain(|(i, ctx)| match ctx.mkdir(remote, 0o755, true) {
                Ok(()) => true,
                Err(e) => {
                    note_failure(run, &mut outcomes[*i], e);
                    false
                }
            });
        }
        let contexts: Vec<Context> = up.iter().map(|(_, c)| c.clone()).collect();
        let fan_out = spore::tree::once(&spore::fanout::write_file_many);
        let results = if up.is_empty() { Vec::new() } else { spore::tree::put_tree(&contexts, local, &root, &fan_out) };
        for ((i, _), r) in up.iter().zip(results) {
            let o = &mut outcomes[*i];
            match r {
                Ok(report) => tree_report(o, &report, "to", &root),
                Err(e) => note_failure(run, o, e),
            }
        }
    } else {
        match open_local(local) {
            Ok((mut file, local_mode)) => {
                let results = spore::fanout::write_file_many(&contexts, remote, &mut file, mode.or(local_mode));
                for ((i, _), r) in up.iter().zip(results) {
                    let o = &mut outcomes[*i];
                    match r {
                        Ok(n) => {
                            o.text = Some(format!("{}: wrote {n} bytes to {remote}", o.target.label));
                            o.set("bytes", num(n));
                            o.set("path", Value::String(remote.into()));
                        }
                        Err(e) => note_failure(run, o, e),
                    }
                }
            }
            Err(e) => {
                for (i, _) in &up {
                    let e = Error::Local {
                        what: format!("open {}", local.display()),
                        source: std::io::Error::new(e.kind(), e.to_string()),
                    };
                    note_failure(run, &mut outcomes[*i], e);
                }
            }
        }
    }
    for o in &mut outcomes {
        ended(run, o);
    }
    outcomes
}

/// Where `put -r` puts a tree, by rsync's rule, the same on every target
/// whatever is there: `LOCAL/` copies the directory's contents into
/// `remote`, `LOCAL` the directory itself into `remote/NAME`.
fn remote_root(local: &Path, remote: &str) -> Result<String, String> {
    if local.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Ok(remote.to_string());
    }
    let name = local
        .file_name()
        .ok_or_else(|| format!("put -r: {} has no name (end it with / for its contents)", local.display()))?;
    let name = text_arg("the local directory's name", name.to_os_string())?;
    Ok(format!("{}/{name}", remote.trim_end_matches('/')))
}

/// The local file for `put`, and its permission bits (which it keeps
/// unless `--mode` says otherwise).
fn open_local(local: &Path) -> std::io::Result<(std::fs::File, Option<u32>)> {
    let file = std::fs::File::open(local)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(std::io::Error::new(std::io::ErrorKind::IsADirectory, "a directory (put -r copies trees)"));
    }
    Ok((file, Some(meta.permissions().mode() & 0o7777)))
}

/// A tree copied: the counts, for people and for `--json`.
fn tree_report(o: &mut Outcome, r: &spore::tree::TreeReport, dir: &str, path: &str) {
    let mut text = format!(
        "{}: {} files, {} directories, {} symlinks, {} bytes {dir} {path}",
        o.target.label, r.files, r.dirs, r.symlinks, r.bytes
    );
    if !r.skipped.is_empty() {
        text.push_str(&format!("; skipped (not a file, directory or symlink): {}", r.skipped.join(", ")));
    }
    o.text = Some(shown(&text));
    for (k, v) in [("files", r.files), ("dirs", r.dirs), ("symlinks", r.symlinks), ("bytes", r.bytes)] {
        o.set(k, num(v));
    }
    o.set("path", Value::String(path.into()));
    o.set("skipped", Value::Array(r.skipped.iter().map(|s| Value::String(s.clone())).collect()));
}

/// A target's failure: said at once (but for `--json`, which reports it in
/// the target's object), recorded in its outcome.
fn note_failure(run: &Run<'_>, o: &mut Outcome, e: Error) {
    let label = &o.target.label;
    // Local errors say what and where; the target says for whom.
    let e = match e {
        Error::Local { what, source } if !what.starts_with(label.as_str()) => {
            Error::Local { what: format!("{label}: {what}"), source }
        }
        Error::Usage(m) => Error::Usage(format!("{label}: {m}")),
        other => other,
    };
    if let Error::Local { source, .. } = &e {
        if source.kind() == std::io::ErrorKind::BrokenPipe {
            // Our reader went away (`| head`): the run ends as a pipe would
            // end it, quietly.
            o.fate = Fate::Failed;
            o.code = 128 + libc::SIGPIPE;
            return;
        }
    }
    if !run.opts.json && !run.deadline_hit.load(Ordering::SeqCst) {
        complain(&format!("spore: {}", shown(&e.to_string())));
    }
    o.fail(&e);
}

/// Our own output failed: remember why, and end the run.
fn output_gone(run: &Run<'_>, e: std::io::Error) {
    let mut failed = run.output_failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if failed.is_none() {
        *failed = Some(e);
        drop(failed);
        end_early(run);
    }
}

fn cmd_run(run: &Run<'_>, ctx: &Context, cmd: &Command, what: &str, o: &mut Outcome) -> spore::Result<()> {
    let mut cmd = cmd.clone();
    if let Some(c) = run.cancel {
        cmd = cmd.cancel(c);
        // A session's agents on this host started in the session's
        // directory: the command runs in the client's, as it would
        // without the session.
        if cmd.cwd.is_none() && o.target.path.split('/').all(|h| h == "local") {
            cmd.cwd = run.cwd.to_str().map(String::from);
        }
    }
    cmd.timeout = run.opts.timeout;
    let label = o.target.label.clone();
    let screen = if run.opts.json {
        Some(ScreenForm::Json(output::JsonChunks::new(&label)))
    } else if run.opts.gather || run.opts.out_dir.is_some() {
        None
    } else if run.many {
        Some(ScreenForm::Prefixed(Prefixed::new(&label)))
    } else {
        Some(ScreenForm::Through)
    };
    let files = match &run.opts.out_dir {
        Some(root) => {
            let dir = spore::tree::per_target(root, &label)?;
            let what = format!("create {}", dir.display());
            Some(OutFiles::create(dir).map_err(|source| Error::Local { what, source })?)
        }
        None => None,
    };
    let gathered = run.opts.gather.then(|| Gathered::new(run.gather_limit));
    let mut out = TargetOutput { screen, gathered, files };
    // Like ssh: stdin goes to the command unless it is a terminal (or it
    // gave us the password), and only with one target.
    let console = output::current();
    let stdin: Option<Box<dyn Read + Send>> = if run.many
        || console.as_ref().is_none_or(|c| c.in_tty)
        || run.opts.ask_become_pass
        || run.opts.targets_from_stdin()
    {
        None
    } else {
        console.and_then(|c| c.stdin()).map(|f| Box::new(f) as Box<dyn Read + Send>)
    };
    // A closed stdout (`| head`) ends the run, as it would end ssh: the call
    // is abandoned and the remote kills the command.
    let status = ctx.exec_streaming(&cmd, stdin, &mut |which, data| out.write(which, data)).and_then(|status| {
        out.finish().map(|()| status).map_err(|e| Error::Local { what: "write output".into(), source: e })
    });
    if let Some(ScreenForm::Json(j)) = &out.screen {
        o.set("stdout_bytes", num(j.bytes[0]));
        o.set("stderr_bytes", num(j.bytes[1]));
    }
    o.gathered = out.gathered.take();
    let status = status?;
    o.code = status.shell_code();
    o.set("status", int(status.code));
    o.set("signal", int(status.signal));
    o.set("timed_out", Value::Bool(status.timed_out));
    if status.timed_out {
        o.fate = Fate::TimedOut;
        o.code = EXIT_TIMED_OUT;
        if !run.opts.json {
            complain(&format!("spore: {}: {} timed out and was killed", o.target.label, shown(what)));
        }
    } else if o.code != 0 {
        o.fate = Fate::Failed;
    }
    if let Some(files) = &out.files {
        let status_file = files.dir().join("status");
        std::fs::write(&status_file, format!("{}\n", o.code))
            .map_err(|e| Error::Local { what: format!("write {}", status_file.display()), source: e })?;
    }
    Ok(())
}

fn cmd_info(ctx: &Context, o: &mut Outcome) -> spore::Result<()> {
    let i = ctx.info()?;
    o.text = Some(format!(
        "{}: hostname={} arch={} machine={} kernel={:?} uid={} gid={} pid={} version={}",
        o.target.label, i.hostname, i.arch, i.machine, i.kernel, i.uid, i.gid, i.pid, i.version
    ));
    let text = [("hostname", &i.hostname), ("arch", &i.arch), ("machine", &i.machine), ("kernel", &i.kernel)];
    for (k, v) in text.into_iter().chain([("version", &i.version)]) {
        o.set(k, Value::String(v.clone()));
    }
    o.set("uid", num(i.uid.into()));
    o.set("gid", num(i.gid.into()));
    o.set("pid", num(i.pid.into()));
    o.set("context", Value::String(i.name));
    Ok(())
}

/// `get` of one file: into `local`, or into the directory `local` is (or
/// must be, with several targets) under the remote file's name.
fn cmd_get(ctx: &Context, remote: &str, local: &Path, into_dir: bool, o: &mut Outcome) -> spore::Result<()> {
    let mut dest = local.to_path_buf();
    if into_dir || local.as_os_str().as_encoded_bytes().ends_with(b"/") || dest.is_dir() {
        let name = Path::new(remote)
            .file_name()
            .ok_or_else(|| Error::Usage(format!("get: {remote:?} names no file to put in {}", local.display())))?;
        dest.push(name);
    }
    let n = spore::tree::get_file(ctx, remote, &dest)?;
    o.text = Some(format!("{}: read {n} bytes into {}", o.target.label, dest.display()));
    o.set("bytes", num(n));
    o.set("path", Value::String(dest.display().to_string()));
    Ok(())
}

/// `get -r`, with rsync's rule, the same on every target whatever is
/// there: `REMOTE/` copies the directory's contents into `local`, `REMOTE`
/// the directory itself into `local/NAME`.
fn cmd_get_tree(ctx: &Context, remote: &str, local: &Path, o: &mut Outcome) -> spore::Result<()> {
    let dest = if remote.ends_with('/') {
        local.to_path_buf()
    } else {
        let name = Path::new(remote).file_name().ok_or_else(|| {
            Error::Usage(format!(
                "get -r: {remote:?} has no name to copy under {} (end it with / for its contents)",
                local.display()
            ))
        })?;
        local.join(name)
    };
    let src = if remote.trim_end_matches('/').is_empty() { "/" } else { remote.trim_end_matches('/') };
    let report = spore::tree::get_tree(ctx, src, &dest)?;
    tree_report(o, &report, "into", &dest.display().to_string());
    Ok(())
}

/// Raise the soft limit on open files to the hard one: each connection
/// holds a few pipes, and hundreds of targets would reach a soft limit of
/// 1024. (What still runs out fails that target with a clear error.)
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we pass, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur >= lim.rlim_max {
        return;
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads the struct we pass; raising the soft limit
    // up to the hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        log::debug!("can't raise the open files limit: {}", std::io::Error::last_os_error());
    }
}

impl Opts {
    /// stdin holds the target list, so it is not the command's.
    fn targets_from_stdin(&self) -> bool {
        self.targets_from.as_deref().is_some_and(|f| f.as_os_str() == "-")
    }
}
