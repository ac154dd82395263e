//! What the operations know about the agent they run in (set once, when
//! the agent starts).

use crate::bootstrap::{AgentArgs, Image};
use std::sync::OnceLock;

/// What the operations need to know about the agent they run in.
pub(crate) struct Runtime {
    pub args: AgentArgs,
    /// This agent's own image, read on the first connect: most agents
    /// start no child, and the image is half their memory otherwise.
    /// (`/proc/self/exe` names the running file even once it is replaced
    /// or removed, and a running executable can't be written.)
    image: OnceLock<Option<Image>>,
}

impl Runtime {
    pub(crate) fn new(args: AgentArgs) -> Runtime {
        Runtime { args, image: OnceLock::new() }
    }

    /// This agent's own image, to start children with.
    pub(crate) fn image(&self) -> Option<&Image> {
        self.image.get_or_init(|| std::fs::read("/proc/self/exe").ok().map(Image::new)).as_ref()
    }
}

pub(crate) static RUNTIME: OnceLock<Runtime> = OnceLock::new();

pub(crate) fn runtime() -> Option<&'static Runtime> {
    RUNTIME.get()
}
