#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rustbalance_fuzz::backend_intro_points(data));
