#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spore_fuzz::bootstrap::run(data));
