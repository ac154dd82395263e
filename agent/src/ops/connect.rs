//! `connect`: start a child context from this agent, with the image its
//! target needs (its own binary, or one from its parent).

use crate::bootstrap::{self, AgentArgs};
use crate::call::{ok, Call, OpError, OpResult};
use crate::runtime::runtime;
use spore_protocol::body::{ConnectArgs, ConnectReply};
use std::time::Duration;

pub(crate) fn connect(call: &Call) -> OpResult {
    let args: ConnectArgs = call.args("connect arguments")?;
    let rt = runtime().ok_or_else(|| OpError::new("unsupported", "connect: not running as an agent"))?;
    let images = rt.images(&args.images, &call.broker);
    let mut parent_ids = rt.args.parent_ids.clone();
    parent_ids.push(call.broker.id());
    let child_args = AgentArgs {
        id: args.context_id,
        name: args.name.clone(),
        parent_ids,
        log_level: rt.args.log_level,
        max_message: rt.args.max_message,
        grace_ms: bootstrap::child_grace_ms(rt.args.grace_ms),
        keepalive_ms: rt.args.keepalive_ms,
        keepalive_misses: rt.args.keepalive_misses,
        cwd: None,
    };
    let timeout = Duration::from_millis(args.connect_timeout_ms.max(1));
    let connected = bootstrap::method_command(&args, &images, &child_args)
        .map_err(|e| OpError::new("invalid", format!("connect {}: {e}", args.name)))
        .and_then(|command| {
            crate::handshake::connect(command, &args, &images, &child_args, timeout)
                .map_err(|e| OpError::new("connect", format!("connect {}: {e}", args.name)))
        })
        // A failed connect never adds its id.
        .inspect_err(|_| call.broker.forget_child_id(args.context_id))?;
    log::debug!(
        "connected {} (pid {}, {})",
        args.name,
        connected.hello.pid,
        if connected.uploaded { "uploaded" } else { "cached" }
    );
    let reply = ConnectReply {
        hello: connected.hello.clone(),
        uploaded: connected.uploaded,
        image_bytes: connected.image_bytes,
    };
    call.broker.add_stream(connected.stream);
    ok(&reply)
}
