//! `ping` and `info`.

use crate::call::{ok, Call, OpResult};
use crate::runtime::runtime;
use crate::sys;
use spore_protocol::body::{Empty, InfoReply};

/// Answer at once: proves the context is alive and routable.
pub(crate) fn ping(_call: &Call) -> OpResult {
    ok(&Empty {})
}

/// Who and where this agent is.
pub(crate) fn info(call: &Call) -> OpResult {
    let (sysname, nodename, release, machine) = sys::uname();
    let (uid, gid) = sys::ids();
    let name = runtime().map(|r| r.args.name.clone()).unwrap_or_default();
    ok(&InfoReply {
        name,
        context_id: call.broker.id(),
        hostname: nodename,
        arch: crate::images::OWN_ARCH.to_string(),
        machine,
        kernel: format!("{sysname} {release}"),
        uid,
        gid,
        pid: sys::getpid(),
        version: crate::VERSION.to_string(),
    })
}
