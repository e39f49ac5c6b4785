#![no_main]
//! The property lives in `tokentrace::fuzzing::request_id`, shared with the proptest in `cargo test`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tokentrace::fuzzing::request_id(data));
