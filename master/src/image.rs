//! Finding the agent binary the master sends to targets.

use crate::error::{Error, Result};
use std::path::PathBuf;

#[cfg(spore_embedded)]
static EMBEDDED: &[u8] = include_bytes!(env!("SPORE_EMBEDDED_AGENT"));
#[cfg(not(spore_embedded))]
static EMBEDDED: &[u8] = &[];

/// The agent image to use: `$SPORE_AGENT` if set, else the one embedded at
/// build time, else `spore-agent` next to this executable.
pub fn default_image() -> Result<Vec<u8>> {
    if let Some(path) = std::env::var_os("SPORE_AGENT") {
        let path = PathBuf::from(path);
        return std::fs::read(&path)
            .map_err(|e| Error::Local { what: format!("read agent {}", path.display()), source: e });
    }
    if !EMBEDDED.is_empty() {
        return Ok(EMBEDDED.to_vec());
    }
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join("spore-agent")));
    match beside {
        Some(path) if path.is_file() => {
            std::fs::read(&path).map_err(|e| Error::Local { what: format!("read agent {}", path.display()), source: e })
        }
        _ => Err(Error::Usage(
            "no agent binary: this spore was built without one embedded (run `make`), \
             no spore-agent lies next to it, and SPORE_AGENT is not set"
                .into(),
        )),
    }
}

/// The default image, read and hashed once per process: every router
/// shares it, so a new router costs no SHA-256 of the agent.
pub fn default_image_shared() -> Result<std::sync::Arc<spore_agent::bootstrap::Image>> {
    static SHARED: std::sync::OnceLock<std::sync::Arc<spore_agent::bootstrap::Image>> = std::sync::OnceLock::new();
    if let Some(image) = SHARED.get() {
        return Ok(image.clone());
    }
    let image = std::sync::Arc::new(spore_agent::bootstrap::Image::new(default_image()?));
    image.hash();
    image.cksum();
    Ok(SHARED.get_or_init(|| image).clone())
}
