//! The agent images the master sends to targets: one per architecture,
//! embedded at build time with their hashes (`build.rs`), so a start
//! hashes nothing.

use crate::error::{Error, Result};
use spore_agent::images::{Blob, Held, Images, OWN_ARCH};
use spore_protocol::body::ImageInfo;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// An image built into this program.
struct Embedded {
    arch: &'static str,
    hash: &'static str,
    cksum: u32,
    raw: &'static [u8],
    gz: &'static [u8],
}

// `static EMBEDDED: &[Embedded]`, written by build.rs.
include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

/// The agent images to use: `$SPORE_AGENT` if set (one file, for its own
/// architecture), else the ones embedded at build time, else
/// `spore-agent` next to this executable.
pub fn default_images() -> Result<Images> {
    if let Some(path) = std::env::var_os("SPORE_AGENT") {
        return read(PathBuf::from(path));
    }
    if !EMBEDDED.is_empty() {
        let held = EMBEDDED
            .iter()
            .map(|e| Held {
                info: ImageInfo {
                    arch: e.arch.to_string(),
                    hash: e.hash.to_string(),
                    size: e.raw.len() as u64,
                    cksum: e.cksum,
                    gz_size: e.gz.len() as u64,
                },
                raw: Blob::Static(e.raw),
                gz: Some(Blob::Static(e.gz)),
            })
            .collect();
        return Ok(Images::held(held));
    }
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join("spore-agent")));
    match beside {
        Some(path) if path.is_file() => read(path),
        _ => Err(Error::Usage(
            "no agent binary: this spore was built without one embedded (run `make`), \
             no spore-agent lies next to it, and SPORE_AGENT is not set"
                .into(),
        )),
    }
}

fn read(path: PathBuf) -> Result<Images> {
    let bytes =
        std::fs::read(&path).map_err(|e| Error::Local { what: format!("read agent {}", path.display()), source: e })?;
    Ok(Images::held(vec![Held::from_bytes(bytes)]))
}

/// The agent binary for this machine's architecture (the one a `local`
/// context runs), as the master would send it.
pub fn default_image() -> Result<Vec<u8>> {
    let images = default_images_shared()?;
    let info = images.for_arch(OWN_ARCH).or_else(|| images.infos().first()).cloned();
    let info = info.ok_or_else(|| Error::Usage("no agent image".into()))?;
    let far = std::time::Instant::now() + std::time::Duration::from_secs(1);
    images.bytes(&info, false, far).map(|b| b.to_vec()).map_err(Error::Usage)
}

/// The default images, found once per process: every router shares them.
pub fn default_images_shared() -> Result<Arc<Images>> {
    static SHARED: OnceLock<Arc<Images>> = OnceLock::new();
    if let Some(images) = SHARED.get() {
        return Ok(images.clone());
    }
    let images = Arc::new(default_images()?);
    Ok(SHARED.get_or_init(|| images).clone())
}
