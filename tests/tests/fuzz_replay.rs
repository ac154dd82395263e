//! Replays every input of the fuzz corpora (`fuzz/corpus/<target>/`) and
//! every saved crash (`fuzz/artifacts/<target>/`) through the same
//! functions the cargo-fuzz targets run, on stable: a fixed crash stays
//! fixed, and `make test` needs no nightly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]
#![allow(dead_code, reason = "the fuzz helpers are shared with the fuzz crate")]

#[path = "../../fuzz/src/bodies.rs"]
mod bodies;
#[path = "../../fuzz/src/bootstrap.rs"]
mod bootstrap;
#[path = "../../fuzz/src/core.rs"]
mod core_rules;
#[path = "../../fuzz/src/decoder.rs"]
mod decoder;
#[path = "../../fuzz/src/input.rs"]
mod input;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The whole replay of one target must take less than this.
const BUDGET: Duration = Duration::from_secs(30);

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        files.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file()));
    }
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no corpus for {target}: fuzz/corpus/{target}/ is empty");
    let t0 = Instant::now();
    for file in &files {
        let data = std::fs::read(file).unwrap();
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            panic!("{target}: {} fails", file.display());
        }
    }
    let took = t0.elapsed();
    eprintln!("{target}: {} inputs in {took:?}", files.len());
    assert!(took < BUDGET, "{target}: the replay took {took:?}");
}

#[test]
fn decoder_corpus() {
    replay("decoder", decoder::run);
}

#[test]
fn bodies_corpus() {
    replay("bodies", bodies::run);
}

#[test]
fn core_corpus() {
    replay("core", core_rules::run);
}

#[test]
fn bootstrap_corpus() {
    replay("bootstrap", bootstrap::run);
}
