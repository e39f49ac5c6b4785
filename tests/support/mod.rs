//! Shared by the integration tests: a tracer provider exporting into memory, waiting for spans
//! to arrive, and a real OTLP receiver.
#![allow(dead_code)]

#[path = "../../examples/serve/receiver.rs"]
pub mod otlp;
mod spans;

pub use spans::*;
