//! Link options for the static (musl) `spore-agent` binary only — never the
//! library the master links, never a host build.
//!
//! The agent aborts on panic (profile `agent`), so nothing ever unwinds
//! through it: its unwind tables (`.eh_frame`, ~60 KB, and the
//! `.eh_frame_hdr` index to them) are dropped at link time (`noeh.ld`). The
//! code is laid out without the page padding `-z separate-code` puts
//! between the headers, the code and the read-only data.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=noeh.ld");
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("musl") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{dir}/noeh.ld");
        println!("cargo:rustc-link-arg-bins=-Wl,--no-eh-frame-hdr");
        println!("cargo:rustc-link-arg-bins=-Wl,-z,noseparate-code");
    }
}
