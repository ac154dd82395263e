//! Embed the static agent binary when it has been built (`make` builds it
//! first); otherwise the master looks for it at run time.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(spore_embedded)");
    println!("cargo:rerun-if-env-changed=SPORE_AGENT_BIN");
    let path = match std::env::var_os("SPORE_AGENT_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
            manifest.join("../target/x86_64-unknown-linux-musl/agent/spore-agent")
        }
    };
    println!("cargo:rerun-if-changed={}", path.display());
    if path.is_file() {
        println!("cargo:rustc-cfg=spore_embedded");
        println!("cargo:rustc-env=SPORE_EMBEDDED_AGENT={}", path.display());
    }
}
