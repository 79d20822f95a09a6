#![allow(clippy::unwrap_used)]
//! The dashboard's routes against fake services: the page, a snapshot that
//! names what it could not read instead of failing, and the stream's first
//! events. (`services/shop/tests/dashboard.rs` drives the page in a browser
//! against the real shop.)

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;
use support::*;
use tower::ServiceExt as _;

#[tokio::test]
async fn the_page_is_one_self_contained_html_document() {
    let app = app(Fakes::default().upstreams());
    let answer = get(&app, "/dashboard").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some("text/html; charset=utf-8"));
    let page = String::from_utf8(answer.raw.to_vec()).unwrap();
    assert!(page.contains("<title>polis · shop dashboard</title>") && page.contains("/api/dashboard/stream"));
    let policy = answer.header("content-security-policy").unwrap();
    assert!(policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"), "{policy}");
    assert_eq!(get(&app, "/dashboard?x=1").await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_snapshot_shows_what_it_can_read_and_names_the_rest() {
    let app = app(Fakes::default().upstreams());
    let answer = get(&app, "/api/dashboard").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let snapshot: gateway::dashboard::Snapshot = serde_json::from_value(answer.body.clone()).unwrap();
    assert_eq!(snapshot.window_seconds, None);
    assert_eq!(snapshot.orders.placed_per_second, None);
    // The fake order service lists no recent orders: named, not fatal.
    assert_eq!(snapshot.unavailable.len(), 1, "{:?}", snapshot.unavailable);
    assert!(snapshot.unavailable[0].starts_with("recent orders: the order service"), "{:?}", snapshot.unavailable);
    assert!(snapshot.recent_orders.is_empty());
    let audit = snapshot.audit.unwrap();
    assert_eq!((audit.at.as_str(), audit.drifts_total, audit.incomplete), ("2026-12-06T05:00:00Z", 0, false));
    assert_eq!(get(&app, "/api/dashboard?limit=1").await.status, StatusCode::BAD_REQUEST);
}

/// The next server-sent event of `body`: its `event` and its `data` as JSON.
async fn next_event(body: &mut Body, buffer: &mut String) -> (String, Value) {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let field =
                |name: &str| event.lines().find_map(|line| line.strip_prefix(name)).map(|v| v.trim_start().to_owned());
            let (Some(kind), Some(data)) = (field("event:"), field("data:")) else { continue };
            return (kind, serde_json::from_str(&data).unwrap());
        }
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.unwrap().unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            buffer.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
}

#[tokio::test]
async fn the_stream_sends_a_snapshot_at_once_then_one_a_second_with_rates() {
    let app = app(Fakes::default().upstreams());
    let request = Request::get("/api/dashboard/stream").body(Body::empty()).unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut buffer = String::new();
    let (kind, first) = next_event(&mut body, &mut buffer).await;
    assert_eq!(kind, "snapshot");
    assert_eq!(first["window_seconds"], Value::Null);
    let (kind, second) = next_event(&mut body, &mut buffer).await;
    assert_eq!(kind, "snapshot");
    let window = second["window_seconds"].as_f64().unwrap();
    assert!(window >= gateway::dashboard::REFRESH.as_secs_f64(), "{window}");
    assert!(second["orders"]["placed_per_second"].is_number(), "{second}");
}
