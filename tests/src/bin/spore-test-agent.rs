//! A custom agent built with the agent library, as a user would build one:
//! the built-in operations plus `say` (writes to stdout, stderr and the
//! log) and `hang` (never returns).

use spore_agent::{Agent, Call, OpResult};
use std::io::Write;

fn say(_call: &Call) -> OpResult {
    println!("hello on stdout");
    eprintln!("hello on stderr");
    let _ = std::io::stderr().flush();
    log::info!("hello from the log");
    Ok(b"{}".to_vec())
}

fn hang(_call: &Call) -> OpResult {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn main() {
    Agent::new().handler("say", say).handler("hang", hang).run()
}
