//! The bodies of spore's fuzz targets, as plain functions: the cargo-fuzz
//! binaries (`fuzz_targets/`) call them, and so does the stable test
//! `tests/tests/fuzz_replay.rs`, which replays every file of `corpus/` and
//! `artifacts/` through them (it includes these files with `#[path]`).
//!
//! Each `run(data)` panics when an invariant breaks; otherwise it returns.

pub mod bodies;
pub mod bootstrap;
pub mod core;
pub mod decoder;
pub mod input;
