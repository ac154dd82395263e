//! A custom agent built with the agent library, as a user would build one:
//! the built-in operations plus
//! - `say`: writes to stdout, stderr and the log;
//! - `hang`: never returns (a dispatcher stuck in a call);
//! - `burst`: `records` log records and `stderr_bytes` of stderr, at once;
//! - `send_shutdown`: sends SHUTDOWN to context `dst` (which must ignore it);
//! - `claim_route`: announces context `id` as its own child (a lie the
//!   routers above must refuse);
//! - `chdir`: moves the agent to directory `path` (so agents on one host
//!   can each write a relative path of their own).

use spore_agent::{Agent, Call, OpError, OpResult};
use spore_protocol::{handle, Message};
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

struct Burst {
    records: u64,
    stderr_bytes: u64,
}

// The agent's JSON codec (Call::args decodes with it).
spore_protocol::json_struct! {
    Burst { records, stderr_bytes }
    Dst { dst }
    Claim { id }
    Dir { path }
}

fn burst(call: &Call) -> OpResult {
    let args: Burst = call.args("burst arguments")?;
    for i in 0..args.records {
        log::info!("burst record {i}");
    }
    // Lines of 100 bytes, numbered, so the test can count what arrived.
    let mut err = std::io::stderr().lock();
    let mut written = 0;
    let mut line = 0u64;
    while written < args.stderr_bytes {
        let text = format!("burst line {line:08} {}\n", "e".repeat(79));
        err.write_all(text.as_bytes()).map_err(|e| OpError::io("stderr", &e))?;
        written += text.len() as u64;
        line += 1;
    }
    err.flush().map_err(|e| OpError::io("stderr", &e))?;
    Ok(format!("{{\"lines\":{line}}}").into_bytes())
}

struct Dst {
    dst: u32,
}

fn send_shutdown(call: &Call) -> OpResult {
    let args: Dst = call.args("send_shutdown arguments")?;
    call.broker.send(Message::new(args.dst, handle::SHUTDOWN, Vec::new()));
    Ok(b"{}".to_vec())
}

struct Claim {
    id: u32,
}

fn claim_route(call: &Call) -> OpResult {
    let args: Claim = call.args("claim_route arguments")?;
    let body = spore_protocol::body::to_json(&spore_protocol::body::AddRoute {
        id: args.id,
        parent: call.broker.id(),
        name: "fake".into(),
    });
    // Route changes go to the immediate parent (the caller may be further up).
    let up = std::env::args()
        .find_map(|a| a.strip_prefix("--parents=").map(|p| p.rsplit(',').next().unwrap_or("0").parse().unwrap_or(0)))
        .unwrap_or(0);
    call.broker.send(Message::new(up, handle::ADD_ROUTE, body));
    Ok(b"{}".to_vec())
}

struct Dir {
    path: String,
}

fn chdir(call: &Call) -> OpResult {
    let args: Dir = call.args("chdir arguments")?;
    std::env::set_current_dir(&args.path).map_err(|e| OpError::io(format!("chdir {}", args.path), &e))?;
    Ok(b"{}".to_vec())
}

fn main() {
    Agent::new()
        .handler("say", say)
        .handler("hang", hang)
        .handler("burst", burst)
        .handler("send_shutdown", send_shutdown)
        .handler("claim_route", claim_route)
        .handler("chdir", chdir)
        .run()
}
