//! The command line's definition (clap), from which `--help`, the shell
//! completions and the man page are all generated.

use clap::{ArgAction, Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

const TARGETS: &str = "\
Targets:
  A target is a path of hops separated by '/': local, host, user@host:2222,
  bastion/db1, bastion/db1/sudo:postgres, docker:web1. A bare hop is ssh (the
  system OpenSSH client: ~/.ssh/config, ProxyJump and agents work). Become:
  sudo, sudo:USER, su:USER, doas:USER. Containers: docker:NAME, podman:NAME.
  Targets sharing a prefix share its connection.

  Ranges in any hop: web[01-50], db[1-3,7], rack[1-2]-n[01-16];
  bastion/web[01-50]/sudo is 50 targets behind one bastion connection.
  From the inventory (-i, $SPORE_INVENTORY, or ~/.config/spore/inventory;
  Ansible INI or YAML): @group, and a host's inventory name. A word may list
  several, comma-separated: @web,!web03 (all of @web but web03),
  @web,&@prod (in both groups). @failed: the targets that failed in the last
  run. --targets-from FILE (or - for stdin) reads one target per line.

Exit status:
  0 when every target succeeded; otherwise the highest exit status of a
  remote command, or 255 when a target could not be reached (or spore
  itself failed); 2 for a usage error; 128+N when spore was ended by
  signal N (130 for Ctrl-C).";

/// Run commands and move files on many machines at once.
#[derive(Parser, Debug)]
#[command(name = "spore", version, about = "Run commands and move files on many machines at once", after_help = TARGETS, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub opts: Opts,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Options every command takes (before or after the command's name).
#[derive(Args, Debug, Clone)]
pub struct Opts {
    /// Inventory file (Ansible INI or YAML) for @group and host names
    #[arg(short = 'i', long, global = true, value_name = "FILE", env = "SPORE_INVENTORY")]
    pub inventory: Option<PathBuf>,
    /// Leave out the targets matching PATTERN (a name, a range, @group or a * glob); repeatable
    #[arg(short = 'x', long = "exclude", global = true, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Read targets from FILE, one per line ('-': stdin); # starts a comment
    #[arg(long = "targets-from", global = true, value_name = "FILE")]
    pub targets_from: Option<PathBuf>,
    /// At most N connections being set up at once; commands start as each is up
    #[arg(short = 'f', long, global = true, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub forks: u32,
    /// Kill a command still running after SECS, on each target
    #[arg(long, global = true, value_name = "SECS", value_parser = seconds)]
    pub timeout: Option<Duration>,
    /// Wait this long for each connection's agent to answer [default: 30]
    #[arg(long = "connect-timeout", global = true, value_name = "SECS", value_parser = seconds)]
    pub connect_timeout: Option<Duration>,
    /// End the whole run after SECS: what is still running is killed and counted as timed out
    #[arg(long, global = true, value_name = "SECS", value_parser = seconds)]
    pub deadline: Option<Duration>,
    /// When all are done, print identical output (and status) once, under the folded target list
    #[arg(short = 'b', long, global = true)]
    pub gather: bool,
    /// Write each target's stdout and stderr to DIR/TARGET/stdout and .../stderr (and its status)
    #[arg(long = "out-dir", global = true, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// JSON lines on stdout: run streams an object per output chunk (data, or data_b64 for bytes
    /// that are not UTF-8), then an object per target as it ends
    #[arg(long, global = true)]
    pub json: bool,
    /// Print the summary (ok, failed, unreachable, timed out) even when stderr is not a terminal
    #[arg(long, global = true)]
    pub summary: bool,
    /// ssh config file for the first hop (ssh -F)
    #[arg(short = 'F', long = "ssh-config", global = true, value_name = "FILE")]
    pub ssh_config: Option<String>,
    /// ssh option for the first hop (ssh -o); repeatable; BatchMode=yes unless you say otherwise
    #[arg(short = 'o', global = true, value_name = "OPTION")]
    pub ssh_options: Vec<String>,
    /// Ask once for the become (sudo) password, from the terminal or a line of stdin
    #[arg(short = 'K', long = "ask-become-pass", global = true)]
    pub ask_become_pass: bool,
    /// A session run's -K password, asked by its client: for this run's
    /// connects only (a cold run's is the router's).
    #[arg(skip)]
    pub become_password: Option<String>,
    /// Run in the background session, which keeps its connections for the next run; it ends after
    /// DURATION (90s, 10m, 2h) without a client. Default: `persist = ...` in ~/.config/spore/config;
    /// 0: no session
    #[arg(long, global = true, value_name = "DURATION", env = "SPORE_PERSIST", value_parser = super::session::duration)]
    pub persist: Option<std::time::Duration>,
    /// Show debug logs of the master and every agent (-vv: trace)
    #[arg(short = 'v', long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run a command on every target
    #[command(after_help = "\
Examples:
  spore run local -- uname -a
  spore run web[01-50] -- systemctl is-active nginx
  spore -b run @web,!web03 -- cat /etc/debian_version
  spore -f 16 --timeout 60 run bastion/db[1-4]/sudo -- apt-get -y upgrade
  spore --out-dir logs run @failed -- journalctl -n 100

One target: its output and exit status pass through. Several: each line is
prefixed with its target as it comes. stdin goes to the command unless it
is a terminal.")]
    Run {
        /// Where to run (see `spore --help` for ranges and groups)
        #[arg(value_name = "TARGET")]
        targets: Vec<String>,
        /// The program and its arguments, after `--`
        #[arg(last = true, required = true, value_name = "PROG")]
        argv: Vec<OsString>,
    },
    /// Run a local script (any #! interpreter) on every target, leaving no file behind
    #[command(after_help = "\
The last word before `--` is the local script; its arguments come after `--`.

Examples:
  spore script web[01-04] ./check.sh
  spore script @db ./report.py -- --since yesterday")]
    Script {
        /// Targets, then the local script file
        #[arg(value_name = "TARGET... FILE", required = true)]
        words: Vec<OsString>,
        /// Arguments for the script, after `--`
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<OsString>,
    },
    /// Hostname, agent arch, machine, kernel, uid, pid and version of every target
    #[command(after_help = "Examples:\n  spore info local\n  spore --json info @all")]
    Info {
        /// Targets to ask
        #[arg(value_name = "TARGET")]
        targets: Vec<String>,
    },
    /// Copy a local file (or with -r a directory tree) to every target
    #[command(after_help = "\
Each file is written to a temporary name and renamed, so a reader never sees
half a file. Without --mode a file keeps its local permission bits. Targets
behind a shared hop get the bytes over that hop once; the hop fans them out.

Examples:
  spore put web[01-50] ./nginx.conf /etc/nginx/nginx.conf
  spore put -r bastion/web[01-08] ./site /srv/www/site")]
    Put {
        /// Copy directories recursively (modes and symlinks kept)
        #[arg(short = 'r', long)]
        recursive: bool,
        /// Permission bits for the files (octal, at most 7777)
        #[arg(long, value_name = "OCTAL", value_parser = mode)]
        mode: Option<u32>,
        /// Targets, then the local path, then the remote path
        #[arg(value_name = "TARGET... LOCAL REMOTE", required = true, num_args = 2..)]
        words: Vec<OsString>,
    },
    /// Copy a remote file (or with -r a directory tree) here
    #[command(after_help = "\
One target: LOCAL is the destination (a directory gets the remote name).
Several: LOCAL is a directory, and each target's copy lands in
LOCAL/TARGET/NAME.

Examples:
  spore get web01 /etc/nginx/nginx.conf ./
  spore get -r web[01-03] /etc/nginx ./configs")]
    Get {
        /// Copy directories recursively (modes and symlinks kept)
        #[arg(short = 'r', long)]
        recursive: bool,
        /// Targets, then the remote path, then the local path
        #[arg(value_name = "TARGET... REMOTE LOCAL", required = true, num_args = 2..)]
        words: Vec<OsString>,
    },
    /// The background session of --persist: what it holds, or end it
    #[command(after_help = "\
Examples:
  spore --persist 10m run @web -- uptime    # starts the session, or uses the one running
  spore session status                      # its contexts: since when, idle for, agent RSS
  spore session stop                        # the bounded shutdown of its tree")]
    Session {
        #[command(subcommand)]
        action: SessionCmd,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(after_help = "Example:\n  spore completions bash > /etc/bash_completion.d/spore")]
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of spore or of one command, generated from these definitions
    #[command(after_help = "\
Examples:
  spore manpage > /usr/local/share/man/man1/spore.1
  spore manpage run > /usr/local/share/man/man1/spore-run.1")]
    Manpage {
        /// A command's page (spore-COMMAND(1)) instead of spore(1)
        command: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionCmd {
    /// List the session's live contexts
    Status,
    /// End the session and its tree (bounded)
    Stop,
    /// Be the session (started by --persist; not for people)
    #[command(hide = true)]
    Serve {
        /// End after this long without a client
        #[arg(long, value_parser = super::session::duration, default_value = "600")]
        idle: std::time::Duration,
    },
}

fn seconds(v: &str) -> Result<Duration, String> {
    let s: f64 = v.parse().map_err(|_| format!("not a number of seconds: {v:?}"))?;
    if !(0.0..=spore::router::MAX_WAIT.as_secs_f64()).contains(&s) {
        return Err(format!("out of range: {v}"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn mode(v: &str) -> Result<u32, String> {
    let bits = u32::from_str_radix(v, 8).map_err(|_| format!("not octal: {v:?}"))?;
    // Permission bits only: a larger number is a typo, not a mode.
    if bits > 0o7777 {
        return Err(format!("{v} is not a file mode (at most 7777)"));
    }
    Ok(bits)
}

/// The man page of spore, or of one of its commands (`spore-run(1)`),
/// from the same definitions as `--help`.
pub fn manpage(command: Option<&str>, out: &mut Vec<u8>) -> Result<(), String> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let page = match command {
        None => cmd,
        Some(name) => {
            let sub = cmd.find_subcommand(name).ok_or_else(|| format!("manpage: no command {name:?}"))?;
            sub.clone().name(format!("spore-{name}")).version(env!("CARGO_PKG_VERSION"))
        }
    };
    clap_mangen::Man::new(page).render(out).map_err(|e| format!("manpage: {e}"))
}

/// A completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cmd, "spore", out);
}
