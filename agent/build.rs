//! Link options for the static (musl) `spore-agent` binary only — never the
//! library the master links, never a host build.
//!
//! The agent aborts on panic (profile `agent`), so nothing ever unwinds
//! through it: its unwind tables (`.eh_frame`, ~60 KB, and the
//! `.eh_frame_hdr` index to them) are dropped at link time (`noeh.ld`). The
//! code is laid out without the page padding `-z separate-code` puts
//! between the headers, the code and the read-only data, and without the
//! padding `-z relro` puts before the writable data so that its read-only
//! part ends on a page: only a dynamic loader ever makes that part
//! read-only (the kernel ignores `PT_GNU_RELRO`), and a static binary has
//! none. And `-z common-page-size=64`: with the page size as both its
//! maximum and its common size, GNU ld starts the writable data on a page
//! of the file too, padding the file by up to a page (784 bytes when
//! measured); a smaller common size lets it place the data one page up in
//! memory at the file offset where the code ends, as the kernel's loader
//! takes it (offset and address agree modulo the page).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=noeh.ld");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("musl") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        // A C compiler driver takes linker options behind -Wl; a linker
        // called directly (the foreign agents link with rust-lld) as they are.
        let linker = std::env::var("RUSTC_LINKER").unwrap_or_default();
        let direct = linker.ends_with("lld") || linker.ends_with("/ld") || linker == "ld";
        let args: [&[&str]; 5] = [
            &["-T", &format!("{dir}/noeh.ld")],
            &["--no-eh-frame-hdr"],
            &["-z", "noseparate-code"],
            &["-z", "norelro"],
            &["-z", "common-page-size=64"],
        ];
        for arg in args {
            if direct {
                for a in arg {
                    println!("cargo:rustc-link-arg-bins={a}");
                }
            } else {
                println!("cargo:rustc-link-arg-bins=-Wl,{}", arg.join(","));
            }
        }
    }
}
