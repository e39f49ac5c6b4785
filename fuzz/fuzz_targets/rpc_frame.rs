#![no_main]
//! The property lives in `tokentrace::fuzzing::rpc_frame`, shared with the proptest in `cargo test`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tokentrace::fuzzing::rpc_frame(data));
