//! The `spore` command line: run commands and move files on many targets.

mod cli;
mod signals;
mod tty;

fn main() {
    std::process::exit(cli::main());
}
