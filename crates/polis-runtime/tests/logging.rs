#![allow(clippy::unwrap_used)]
//! What a failing request leaves in the log.
//!
//! Its own test binary with a single test: `tracing` caches per call site
//! whether anyone listens, and a test running on another thread without a
//! subscriber can make that cache skip the request span here.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use polis_runtime::problem::PROBLEM_JSON;
use polis_runtime::{ApiError, HttpOptions, with_standard_stack};
use tower::ServiceExt;

#[derive(Debug, thiserror::Error)]
#[error("cannot reserve stock")]
struct ReserveFailed(#[source] std::io::Error);

async fn boom() -> Result<(), ApiError> {
    Err(ApiError::internal(ReserveFailed(std::io::Error::other("disk on fire"))))
}

/// Collects what a `fmt` subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_500_logs_its_cause_chain_in_the_request_span() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    // Current-thread runtime: the whole request runs under this default.
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = with_standard_stack(Router::new().route("/boom", get(boom)), &HttpOptions::default());
    let request = Request::get("/boom").header("x-request-id", "trace-me-7").body(Body::empty()).unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    assert!(!String::from_utf8_lossy(&body).contains("disk on fire"));

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let error_line = log.lines().find(|line| line.contains("ERROR") && line.contains("request failed")).unwrap();
    // The whole cause chain, in the request's span.
    assert!(error_line.contains("cannot reserve stock: disk on fire"), "{log}");
    assert!(error_line.contains(r#"request_id="trace-me-7""#), "{log}");
    assert!(error_line.contains(r#"route="/boom""#), "{log}");
    // And the trace layer's line for the response.
    assert!(
        log.lines().any(|line| line.contains("finished processing request") && line.contains("status=500")),
        "{log}"
    );
}
