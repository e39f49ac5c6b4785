#![no_main]
//! The property lives in `tokentrace::fuzzing::baggage`, shared with the proptest in `cargo test`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tokentrace::fuzzing::baggage(data));
