//! What the operations know about the agent they run in (set once, when
//! the agent starts).

use crate::bootstrap::{AgentArgs, Image};
use std::sync::OnceLock;

/// What the operations need to know about the agent they run in.
pub(crate) struct Runtime {
    pub args: AgentArgs,
    pub image: Option<Image>,
}

pub(crate) static RUNTIME: OnceLock<Runtime> = OnceLock::new();

pub(crate) fn runtime() -> Option<&'static Runtime> {
    RUNTIME.get()
}
