//! The `spore` command line: run commands and move files on many targets.

mod cli;
mod signals;
mod tty;
mod wipe;

#[global_allocator]
static ALLOC: wipe::WipeOnFree = wipe::WipeOnFree;

fn main() {
    std::process::exit(cli::main());
}
