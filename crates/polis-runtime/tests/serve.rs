#![allow(clippy::unwrap_used)]
//! Serving over real TCP on port 0, and graceful shutdown.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use polis_runtime::serve::{self, RunningServer};
use polis_runtime::{HttpOptions, RuntimeError, with_standard_stack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// A minimal HTTP/1.1 client: one request per connection, the raw response.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

fn local_any_port() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

#[derive(Clone, Default)]
struct Gate {
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

async fn slow(State(gate): State<Gate>) -> &'static str {
    gate.entered.notify_one();
    gate.release.notified().await;
    "finished"
}

async fn spawn_app(gate: Gate) -> RunningServer {
    let routes = Router::new().route("/slow", get(slow)).with_state(gate);
    let router = with_standard_stack(routes, &HttpOptions::default());
    let listener = serve::bind(local_any_port()).await.unwrap();
    serve::spawn(listener, router).unwrap()
}

#[tokio::test]
async fn a_server_on_port_0_answers_over_tcp() {
    let server = spawn_app(Gate::default()).await;
    assert_ne!(server.addr().port(), 0);
    assert_eq!(server.url(), format!("http://127.0.0.1:{}", server.addr().port()));

    let response = http_get(server.addr(), "/healthz").await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.to_ascii_lowercase().contains("x-request-id: "), "{response}");
    assert!(response.ends_with(r#"{"status":"ok"}"#), "{response}");

    let response = http_get(server.addr(), "/missing").await.unwrap();
    assert!(response.starts_with("HTTP/1.1 404 Not Found\r\n"), "{response}");
    assert!(response.contains("content-type: application/problem+json"), "{response}");

    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let gate = Gate::default();
    let server = spawn_app(gate.clone()).await;
    let addr = server.addr();

    let in_flight = tokio::spawn(async move { http_get(addr, "/slow").await });
    gate.entered.notified().await;

    let stopping = tokio::spawn(server.shutdown());
    // The listener closes first...
    polis_testkit::wait_for(Duration::from_secs(10), || async move { TcpStream::connect(addr).await.is_err() })
        .await
        .unwrap();
    assert!(!stopping.is_finished(), "shutdown must wait for the in-flight request");

    // ...and the request that was already running still gets its answer.
    gate.release.notify_one();
    let response = in_flight.await.unwrap().unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("finished"), "{response}");
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let server = spawn_app(Gate::default()).await;
    let addr = server.addr();
    assert!(http_get(addr, "/healthz").await.unwrap().starts_with("HTTP/1.1 200"));
    drop(server);
    polis_testkit::wait_for(Duration::from_secs(10), || async move { TcpStream::connect(addr).await.is_err() })
        .await
        .unwrap();
}

#[tokio::test]
async fn serve_returns_when_its_shutdown_future_resolves() {
    let listener = serve::bind(local_any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = with_standard_stack(Router::new(), &HttpOptions::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(serve::serve(listener, router, async move {
        stopped.await.ok();
    }));
    assert!(http_get(addr, "/healthz").await.unwrap().starts_with("HTTP/1.1 200"));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), serving).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn binding_a_taken_port_names_the_address() {
    let taken = serve::bind(local_any_port()).await.unwrap();
    let addr = taken.local_addr().unwrap();
    match serve::bind(addr).await {
        Err(err @ RuntimeError::Bind { .. }) => assert!(err.to_string().contains(&addr.to_string()), "{err}"),
        other => panic!("expected a bind error, got {other:?}"),
    }
}
