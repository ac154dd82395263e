//! The agent's start-up and its dispatcher: set up the fds, start the
//! broker, say hello, then run each call on a thread of its own.

use crate::bootstrap::AgentArgs;
use crate::broker::{Broker, Config};
use crate::call::{Call, OpError, OpResult};
use crate::mailbox::Mailbox;
use crate::runtime::{Runtime, RUNTIME};
use crate::stream::NewStream;
use crate::vecmap::VecMap;
use crate::{ops, sys};
use spore_protocol::body::{self, CallOp, Hello, LogRecord};
use spore_protocol::{handle, Message};
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An operation: decode the call's arguments, do the work, return the result.
pub type Handler = Arc<dyn Fn(&Call) -> OpResult + Send + Sync>;

/// An agent: the built-in operations plus any you add.
pub struct Agent {
    handlers: VecMap<String, Handler>,
}

impl Default for Agent {
    fn default() -> Self {
        Agent::new()
    }
}

impl Agent {
    /// An agent with the built-in operations.
    pub fn new() -> Agent {
        let mut agent = Agent { handlers: VecMap::new() };
        for (name, f) in ops::builtins() {
            agent.handlers.insert(name.to_string(), Arc::new(f));
        }
        agent
    }

    /// Add (or replace) the operation `op`.
    pub fn handler(mut self, op: &str, f: impl Fn(&Call) -> OpResult + Send + Sync + 'static) -> Agent {
        self.handlers.insert(op.to_string(), Arc::new(f));
        self
    }

    /// Run as an agent: parse the command line spore gave, serve calls until
    /// shut down, then end the process.
    pub fn run(self) -> ! {
        self.run_with(std::env::args_os().skip(1).collect())
    }

    /// [`run`](Self::run), given the process's arguments after its name
    /// (for a `main` of its own, where std has not read them).
    pub fn run_with(self, args: Vec<std::ffi::OsString>) -> ! {
        crate::guardian::run_if_asked_by(&args);
        let args = match AgentArgs::parse(args) {
            Ok(a) => a,
            Err(e) => {
                sys::write_stderr(&format!("spore-agent: {e}\n"));
                sys::exit_now(2)
            }
        };
        match self.serve(args) {
            Ok(()) => sys::terminate_self(),
            Err(e) => {
                // stderr may already be captured; this reaches the parent
                // through the connection's own stderr only before that.
                sys::write_stderr(&format!("spore-agent: {e}\n"));
                sys::exit_now(1)
            }
        }
    }

    fn serve(self, args: AgentArgs) -> std::io::Result<()> {
        // The protocol pipes move to high fds; 0 becomes /dev/null and 1, 2
        // become pipes the broker forwards as log lines, so a stray write
        // (ours or a library's) can never corrupt the protocol.
        sys::reset_signals();
        // Started through a pty (su, doas with a password), we would get
        // SIGHUP when it closes; our end comes from the parent stream's EOF.
        sys::ignore_signal(libc::SIGHUP);
        sys::cloexec_inherited();
        // The script ran us from inside the cache directory: back to where
        // it started (else home, else /), for the commands we run.
        if let Some(dir) = &args.cwd {
            let home = std::env::var_os("HOME").unwrap_or_default();
            let back = [dir.as_os_str(), home.as_os_str(), "/".as_ref()];
            let _ = back.iter().filter(|d| !d.is_empty()).find(|d| std::env::set_current_dir(d).is_ok());
        }
        let parent_in = File::from(sys::dup_at_least(0, 10)?);
        let parent_out = File::from(sys::dup_at_least(1, 10)?);
        crate::shared::set_last_words(File::from(sys::dup_at_least(2, 10)?));
        let null = File::open("/dev/null")?;
        sys::dup_onto(null.as_fd(), 0)?;
        let (out_r, out_w) = sys::pipe()?;
        let (err_r, err_w) = sys::pipe()?;
        sys::dup_onto(out_w.as_fd(), 1)?;
        sys::dup_onto(err_w.as_fd(), 2)?;
        drop((out_w, err_w, null));

        let parent_id = args.parent_ids.last().copied().unwrap_or(0);
        let broker = Broker::start(Config {
            id: args.id,
            name: args.name.clone(),
            parent_ids: args.parent_ids.clone(),
            max_message: args.max_message,
            grace: Duration::from_millis(args.grace_ms),
            keepalive: Duration::from_millis(args.keepalive_ms),
            keepalive_misses: args.keepalive_misses,
            exit_process: true,
        })?;
        let calls = broker.listen(handle::CALL_FUNCTION);
        let arch = crate::images::OWN_ARCH.into();
        let hello = Hello { version: crate::VERSION.into(), pid: sys::getpid(), arch, context_id: args.id };
        // The hello goes out with the stream, before anything read from it
        // is handled: even a parent that sends garbage gets it first.
        broker.add_stream(NewStream {
            remote_id: parent_id,
            name: "parent".into(),
            input: parent_in,
            output: parent_out,
            stderr: None,
            child: None,
            leftover: Vec::new(),
            is_parent: true,
            greeting: Some(Message::new(parent_id, handle::HELLO, body::encode(&hello))),
        });
        broker.add_capture(out_r, "stdout");
        broker.add_capture(err_r, "stderr");
        install_logger(&broker, &args);
        log::debug!("agent {} up: pid {}", args.name, sys::getpid());
        let _ = RUNTIME.set(Runtime::new(args));

        // The dispatcher is a pool of worker threads that take calls straight
        // from the broker: each call runs on a worker of its own, so a slow
        // command doesn't hold up a ping or a sibling's connect, and there is
        // always one worker waiting (one thread hop per call). The mailbox
        // closes when the broker begins its shutdown; calls still running
        // are abandoned when it ends the process.
        let pool = Arc::new(Pool {
            handlers: self.handlers,
            calls,
            idle: AtomicUsize::new(0),
            workers: AtomicUsize::new(1),
            broker: broker.clone(),
        });
        pool.work(true);
        broker.wait_done(Instant::now() + Duration::from_secs(3600));
        Ok(())
    }
}

/// The worker threads, sharing the `CALL_FUNCTION` mailbox.
struct Pool {
    handlers: VecMap<String, Handler>,
    calls: Mailbox,
    /// Workers waiting for a call.
    idle: AtomicUsize,
    /// Workers alive, at most [`POOL_SIZE`].
    workers: AtomicUsize,
    broker: Broker,
}

/// A spare worker ends after this long without work.
const WORKER_IDLE: Duration = Duration::from_secs(60);
/// The most calls that run at once. Others wait in the call queue (the
/// broker stops reading its parent while the queue is long), so a flood
/// costs neither threads nor the process slots an `exec` needs.
pub const POOL_SIZE: usize = 16;

impl Pool {
    /// Take calls until the mailbox closes. The main thread (`first`) never
    /// retires; spare workers do when idle.
    fn work(self: &Arc<Self>, first: bool) {
        loop {
            self.idle.fetch_add(1, Ordering::SeqCst);
            let wait = if first { Duration::from_secs(3600) } else { WORKER_IDLE };
            let got = self.calls.recv_deadline(Instant::now() + wait);
            let idle_before = self.idle.fetch_sub(1, Ordering::SeqCst);
            let request = match got {
                Ok(request) => request,
                Err(crate::RecvError::Timeout) if first => continue,
                Err(_) => {
                    self.workers.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
            };
            if idle_before == 1 {
                // Nobody is left waiting: start the next worker now.
                self.spare();
            }
            self.serve(&Call { broker: self.broker.clone(), request });
        }
    }

    fn spare(self: &Arc<Self>) {
        if self.workers.fetch_add(1, Ordering::SeqCst) >= POOL_SIZE {
            self.workers.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let pool = self.clone();
        let spawned = std::thread::Builder::new().name("spore-call".into()).spawn(move || pool.work(false));
        if let Err(e) = spawned {
            self.workers.fetch_sub(1, Ordering::SeqCst);
            // The current worker takes the next call when it is done.
            log::warn!("can't start a worker thread: {e}");
        }
    }

    fn serve(&self, call: &Call) {
        let result = match call.args::<CallOp>("a call") {
            Ok(CallOp { op }) => match self.handlers.get(&op) {
                Some(h) => {
                    log::debug!("call {op} from context {}", call.caller());
                    // A panicking handler (in an agent built with unwinding)
                    // still answers its caller.
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(call))).unwrap_or_else(|_| {
                        Err(OpError::new("panic", format!("operation {} panicked", crate::logs::quoted(&op))))
                    })
                }
                None => Err(OpError::new("unsupported", format!("unknown operation {}", crate::logs::quoted(&op)))),
            },
            Err(e) => Err(e),
        };
        call.finish(result);
    }
}

struct AgentLogger {
    broker: Broker,
    name: String,
    level: log::LevelFilter,
}

impl log::Log for AgentLogger {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        meta.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let rec = LogRecord {
            level: record.level() as u8,
            name: self.name.clone(),
            target: record.target().to_string(),
            msg: record.args().to_string(),
        };
        self.broker.send(Message::new(0, handle::FORWARD_LOG, body::encode(&rec)));
    }

    fn flush(&self) {}
}

fn level_filter(n: u8) -> log::LevelFilter {
    match n {
        0 => log::LevelFilter::Off,
        1 => log::LevelFilter::Error,
        2 => log::LevelFilter::Warn,
        3 => log::LevelFilter::Info,
        4 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

fn install_logger(broker: &Broker, args: &AgentArgs) {
    let level = level_filter(args.log_level);
    let logger = AgentLogger { broker: broker.clone(), name: args.name.clone(), level };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}
