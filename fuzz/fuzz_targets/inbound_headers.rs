#![no_main]
//! The property lives in `tokentrace::fuzzing::inbound_headers`, shared with the proptest in `cargo test`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tokentrace::fuzzing::inbound_headers(data));
