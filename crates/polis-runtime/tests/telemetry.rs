#![allow(clippy::unwrap_used)]
//! `init_tracing` installs the global subscriber once and is harmless after.
//!
//! Its own test binary: the global subscriber is per process.

use polis_runtime::init_tracing;

#[test]
fn init_tracing_is_idempotent() {
    let _telemetry = init_tracing().unwrap();
    assert!(tracing::dispatcher::has_been_set());
    let again = init_tracing().unwrap();
    assert!(!again.exports_traces());
    tracing::info!(test = "telemetry", "logged through the installed subscriber");
}
