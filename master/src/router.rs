//! The master's router: its broker (context 0), the contexts it has
//! started, and shutdown.

use crate::error::{Error, Result};
use spore_agent::bootstrap::{self, AgentArgs};
use spore_agent::images::{self, Held, Images};
use spore_agent::{Broker, Config};
use spore_protocol::{Message, DEFAULT_MAX_MESSAGE, MASTER_ID};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest wait spore accepts anywhere: a year. The durations in
/// [`Options`] must be within it ([`Router::with_options`] refuses longer
/// ones); a longer [`Command::timeout`](crate::Command::timeout) is taken
/// as this; a call with no deadline of its own gives up after it.
pub const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// `d` from now, or as near as the clock allows: never a panic.
pub(crate) fn deadline_after(d: Duration) -> Instant {
    deadline_from(Instant::now(), d)
}

/// `d` after `start`, saturating (at [`MAX_WAIT`] after it, or `start`).
pub(crate) fn deadline_from(start: Instant, d: Duration) -> Instant {
    start.checked_add(d).or_else(|| start.checked_add(MAX_WAIT)).unwrap_or(start)
}

/// Whole milliseconds, saturating at `u64::MAX` rather than wrapping.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How the master behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long to wait for an agent's hello (default 30 s; at most
    /// [`MAX_WAIT`]).
    pub connect_timeout: Duration,
    /// How long a shutdown waits for the tree before forcing it (default
    /// 5 s; at most [`MAX_WAIT`]).
    pub shutdown_grace: Duration,
    /// Largest message body accepted on any stream (default 128 MiB).
    pub max_message: u32,
    /// Most verbose log level agents forward (default: the master's own
    /// `log::max_level()` when the router starts).
    pub agent_log_level: Option<log::LevelFilter>,
    /// A custom agent binary (built with the `spore-agent` library); default
    /// [`crate::default_image`].
    pub agent_image: Option<Vec<u8>>,
    /// Every context probes its idle children this often (zero: never; at
    /// most [`MAX_WAIT`])...
    pub keepalive: Duration,
    /// ...and declares one dead after this many silent intervals: its calls
    /// fail, its subtree is dropped, the rest of the tree carries on.
    pub keepalive_misses: u32,
    /// The password for `sudo` prompts at any hop. Sent only inside the
    /// protocol to the context that runs sudo; never logged.
    pub become_password: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            max_message: DEFAULT_MAX_MESSAGE,
            agent_log_level: None,
            agent_image: None,
            become_password: None,
            keepalive: Duration::from_millis(bootstrap::KEEPALIVE_MS),
            keepalive_misses: bootstrap::KEEPALIVE_MISSES,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) broker: Broker,
    pub(crate) images: Arc<Images>,
    /// The broker answers its children's `GET_IMAGE` (from the first connect).
    serving: std::sync::OnceLock<()>,
    pub(crate) opts: Options,
    log_level: u8,
    pub(crate) shut: AtomicBool,
    /// The master's own connects in their handshake: the shutdown ends
    /// their connection processes.
    pub(crate) connecting: spore_agent::handshake::Connecting,
}

/// The master: owns a broker thread and the tree of contexts below it.
/// Cheap to clone; the tree is shut down by [`Router::shutdown`] (or when
/// the last clone is dropped).
#[derive(Clone)]
pub struct Router {
    pub(crate) inner: Arc<Inner>,
}

impl Router {
    /// Start a router with default options and the default agent image.
    pub fn new() -> Result<Router> {
        Router::with_options(Options::default())
    }

    /// Start a router. Fails with [`Error::Usage`] if a duration in `opts`
    /// is longer than [`MAX_WAIT`].
    pub fn with_options(opts: Options) -> Result<Router> {
        check_options(&opts)?;
        let images = match &opts.agent_image {
            Some(b) => Arc::new(Images::held(vec![Held::from_bytes(b.clone())])),
            None => crate::image::default_images_shared()?,
        };
        let broker = Broker::start(Config {
            id: MASTER_ID,
            name: "master".into(),
            parent_ids: Vec::new(),
            max_message: opts.max_message,
            grace: opts.shutdown_grace,
            keepalive: opts.keepalive,
            keepalive_misses: opts.keepalive_misses,
            exit_process: false,
        })
        .map_err(|e| Error::Local { what: "start the broker".into(), source: e })?;
        let level = opts.agent_log_level.unwrap_or_else(log::max_level);
        let inner = Inner {
            broker,
            images,
            serving: std::sync::OnceLock::new(),
            log_level: level as u8,
            opts,
            shut: AtomicBool::new(false),
            connecting: spore_agent::handshake::Connecting::new(),
        };
        Ok(Router { inner: Arc::new(inner) })
    }

    /// The options in force.
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// The command line an agent at `id` is started with.
    pub(crate) fn agent_args(&self, id: u32, name: &str, parent_ids: Vec<u32>, parent_grace: Duration) -> AgentArgs {
        AgentArgs {
            id,
            name: name.to_string(),
            parent_ids,
            log_level: self.inner.log_level,
            max_message: self.inner.opts.max_message,
            grace_ms: bootstrap::child_grace_ms(millis(parent_grace)),
            keepalive_ms: millis(self.inner.opts.keepalive),
            keepalive_misses: self.inner.opts.keepalive_misses,
            cwd: None,
        }
    }

    /// The images a connect may need, for its `ConnectArgs`. A connect
    /// made by a child (`through_child`) may need one the child lacks:
    /// from then on the broker answers its children's requests for them
    /// (a run that starts only direct children starts no such thread).
    pub(crate) fn images_for_connect(&self, through_child: bool) -> Vec<spore_protocol::body::ImageInfo> {
        if through_child {
            self.inner.serving.get_or_init(|| images::serve(&self.inner.broker, &self.inner.images));
        }
        self.inner.images.infos().to_vec()
    }

    /// Has [`Router::shutdown`] begun (here, on another thread, or from a
    /// signal handler's thread)?
    pub fn is_shut_down(&self) -> bool {
        self.inner.shut.load(Ordering::SeqCst)
    }

    /// End the whole tree: SHUTDOWN to each direct child, wait up to the
    /// grace for them to disconnect, then force the rest (close pipes,
    /// SIGTERM then SIGKILL the connection processes, reap them). Returns
    /// within the grace plus a second, whatever the children do.
    pub fn shutdown(&self) {
        let started = Instant::now();
        if self.inner.shut.swap(true, Ordering::SeqCst) {
            // Already under way (another thread, a signal): wait for it.
            self.inner.broker.wait_done(deadline_from(started, self.inner.shutdown_limit()));
            return;
        }
        // A connect still in its handshake would wait for its deadline,
        // or outlive us.
        self.inner.connecting.end_all();
        self.inner.broker.shutdown("master shutdown");
        let limit = self.inner.shutdown_limit();
        if !self.inner.broker.wait_done(deadline_from(started, limit)) {
            log::warn!("broker did not finish its shutdown within {limit:?}");
        }
        log::debug!("shutdown took {:?}", started.elapsed());
    }

    /// Test hook: make the broker thread panic, to check that every
    /// waiting call fails at once with a clear error.
    #[doc(hidden)]
    pub fn crash_broker_for_test(&self) {
        self.inner.broker.crash_for_test();
    }

    pub(crate) fn send(&self, msg: Message) {
        self.inner.broker.send(msg);
    }

    pub(crate) fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    /// A context id for a child that context `parent` will start; only
    /// `parent`'s branch of the tree may announce it.
    pub(crate) fn allocate_child_id(&self, parent: u32, name: &str) -> Result<u32> {
        self.inner.broker.allocate_child_id(parent).ok_or_else(|| Error::Connect {
            target: name.to_string(),
            cause: "the master has no context ids left (ids are never reused)".into(),
        })
    }
}

/// Refuse durations no clock can add (they would panic, or wrap when sent
/// to an agent as milliseconds).
fn check_options(opts: &Options) -> Result<()> {
    let durations = [
        ("connect_timeout", opts.connect_timeout),
        ("shutdown_grace", opts.shutdown_grace),
        ("keepalive", opts.keepalive),
    ];
    for (name, d) in durations {
        if d > MAX_WAIT {
            return Err(Error::Usage(format!(
                "Options::{name} of {d:?} is too long: at most {} days",
                MAX_WAIT.as_secs() / 86400
            )));
        }
    }
    Ok(())
}

impl Inner {
    /// How long a shutdown may take: the broker's bound and a second.
    fn shutdown_limit(&self) -> Duration {
        self.broker.shutdown_bound().saturating_add(Duration::from_secs(1))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.shut.swap(true, Ordering::SeqCst) {
            // Backstop only: callers should shut down explicitly.
            log::debug!("router dropped without shutdown; shutting down now");
            self.broker.shutdown("router dropped");
            self.broker.wait_done(deadline_after(self.shutdown_limit()));
        }
    }
}
