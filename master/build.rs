//! Embed the static agent binaries that have been built (`make` builds
//! them first), one per architecture, with everything a start needs to
//! know of them computed here, once: the SHA-256 that names each in a
//! target's cache, its `cksum`, and its gzip form (zopfli, the smallest
//! gzip there is: it is what crosses a slow link). Without any, the
//! master looks for an agent at run time.

use std::fmt::Write as _;
use std::path::PathBuf;

/// spore's name for each architecture, and the Rust target it is built for.
const ARCHES: [(&str, &str); 3] = [
    ("x86_64", "x86_64-unknown-linux-musl"),
    ("aarch64", "aarch64-unknown-linux-musl"),
    ("armv7", "armv7-unknown-linux-musleabihf"),
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(spore_embedded)");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let mut table = String::from("static EMBEDDED: &[Embedded] = &[\n");
    let mut any = false;
    for (arch, triple) in ARCHES {
        let var = format!("SPORE_AGENT_BIN_{}", arch.to_uppercase());
        println!("cargo:rerun-if-env-changed={var}");
        let mut path = std::env::var_os(&var).map(PathBuf::from);
        if arch == "x86_64" {
            // The name the Makefile has always exported.
            println!("cargo:rerun-if-env-changed=SPORE_AGENT_BIN");
            path = path.or_else(|| std::env::var_os("SPORE_AGENT_BIN").map(PathBuf::from));
        }
        let path = path.unwrap_or_else(|| manifest.join(format!("../target/{triple}/agent/spore-agent")));
        println!("cargo:rerun-if-changed={}", path.display());
        let Ok(raw) = std::fs::read(&path) else { continue };
        let gz_path = out_dir.join(format!("spore-agent-{arch}.gz"));
        let mut gz = Vec::new();
        if let Err(e) = zopfli::compress(zopfli::Options::default(), zopfli::Format::Gzip, raw.as_slice(), &mut gz) {
            panic!("gzip the {arch} agent: {e}");
        }
        if let Err(e) = std::fs::write(&gz_path, &gz) {
            panic!("write {}: {e}", gz_path.display());
        }
        let _ = writeln!(
            table,
            "    Embedded {{ arch: {arch:?}, hash: {hash:?}, cksum: {cksum}, raw: include_bytes!({raw_path:?}), \
             gz: include_bytes!({gz_path:?}) }},",
            hash = spore_protocol::hex(&spore_protocol::sha256(&raw)),
            cksum = spore_protocol::posix_cksum(&raw),
            raw_path = path.display().to_string(),
            gz_path = gz_path.display().to_string(),
        );
        any = true;
    }
    table.push_str("];\n");
    let generated = out_dir.join("embedded.rs");
    if let Err(e) = std::fs::write(&generated, table) {
        panic!("write {}: {e}", generated.display());
    }
    if any {
        println!("cargo:rustc-cfg=spore_embedded");
    }
}
