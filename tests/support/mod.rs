//! Shared by the integration tests: a tracer provider exporting into memory, waiting for spans
//! to arrive, a real OTLP receiver, and the system's servers (Prometheus, nats-server).
#![allow(dead_code)]

pub mod handlers;
#[path = "../../examples/serve/demo/receiver.rs"]
pub mod otlp;
mod spans;
pub mod system;

#[allow(unused_imports)] // not every test crate uses them
pub use spans::*;
