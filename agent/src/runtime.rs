//! What the operations know about the agent they run in (set once, when
//! the agent starts).

use crate::bootstrap::AgentArgs;
use crate::broker::Broker;
use crate::images::{self, Images};
use spore_protocol::body::ImageInfo;
use std::sync::{Arc, OnceLock};

/// What the operations need to know about the agent they run in.
pub(crate) struct Runtime {
    pub args: AgentArgs,
    /// The images this agent starts children with, known from the first
    /// connect it is asked to make: most agents start no child, and hold
    /// no image (not even their own binary) in memory.
    images: OnceLock<Arc<Images>>,
}

impl Runtime {
    pub(crate) fn new(args: AgentArgs) -> Runtime {
        Runtime { args, images: OnceLock::new() }
    }

    /// The images, named by the master's `infos`; the first call also
    /// starts answering the children's requests for them.
    pub(crate) fn images(&self, infos: &[ImageInfo], broker: &Broker) -> Arc<Images> {
        let parent = self.args.parent_ids.last().copied().unwrap_or(0);
        self.images
            .get_or_init(|| {
                let images = Arc::new(Images::from_parent(infos.to_vec(), broker.clone(), parent));
                images::serve(broker, &images);
                images
            })
            .clone()
    }
}

pub(crate) static RUNTIME: OnceLock<Runtime> = OnceLock::new();

pub(crate) fn runtime() -> Option<&'static Runtime> {
    RUNTIME.get()
}
