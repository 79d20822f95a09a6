#![allow(clippy::unwrap_used)]
//! `shutdown_signal` resolves on SIGTERM and SIGINT.
//!
//! Its own test binary: it signals this very process. The future installs
//! its handlers when first polled, so it is polled once before each signal
//! is sent; from then on the signals no longer have their default
//! (terminating) effect on the process.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use polis_runtime::serve::shutdown_signal;

fn send_signal(name: &str) {
    let status =
        std::process::Command::new("kill").args([format!("-{name}"), std::process::id().to_string()]).status().unwrap();
    assert!(status.success(), "kill -{name} failed: {status}");
}

async fn armed_shutdown_signal() -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let mut signal: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(shutdown_signal());
    // One poll installs the handlers; nothing has been sent yet.
    assert!(tokio::time::timeout(Duration::ZERO, &mut signal).await.is_err());
    signal
}

#[tokio::test]
async fn shutdown_signal_resolves_on_sigterm_and_on_sigint() {
    for name in ["TERM", "INT"] {
        let signal = armed_shutdown_signal().await;
        send_signal(name);
        tokio::time::timeout(Duration::from_secs(10), signal)
            .await
            .unwrap_or_else(|_| panic!("shutdown_signal did not resolve on SIG{name}"));
    }
}
