#![allow(clippy::unwrap_used)]
//! Serving over real TCP on port 0, and graceful shutdown.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::routing::{get, post};
use polis_runtime::problem::{PROBLEM_JSON, types};
use polis_runtime::serve::{self, RunningServer};
use polis_runtime::{HttpOptions, Json, RuntimeError, with_standard_stack};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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

/// Reads the whole body, after saying it started.
async fn upload(State(gate): State<Gate>, request: Request) -> String {
    gate.entered.notify_one();
    match axum::body::to_bytes(request.into_body(), usize::MAX).await {
        Ok(body) => body.len().to_string(),
        Err(err) => err.to_string(),
    }
}

async fn echo(Json(body): Json<serde_json::Value>) -> Json<serde_json::Value> {
    Json(body)
}

async fn spawn_app(gate: Gate) -> RunningServer {
    spawn_app_with(gate, HttpOptions::default()).await
}

async fn spawn_app_with(gate: Gate, options: HttpOptions) -> RunningServer {
    let routes = Router::new()
        .route("/slow", get(slow))
        .route("/upload", post(upload))
        .route("/echo", post(echo))
        .with_state(gate);
    let router = with_standard_stack(routes, &options);
    let listener = serve::bind(local_any_port()).await.unwrap();
    serve::spawn(listener, router, &options).unwrap()
}

/// What the timeout tests set the timeout under test to...
const SHORT: Duration = Duration::from_millis(300);
/// ...and the other timeouts to, so that they cannot be what acted.
const LONG: Duration = Duration::from_secs(120);
/// How long a test waits for what SHORT should bring about.
const BOUND: Duration = Duration::from_secs(20);

/// A raw HTTP/1.1 connection: what is sent is sent as is, answers are read
/// one by one (so keep-alive and pipelining can be seen).
struct Connection {
    stream: BufReader<TcpStream>,
}

/// One answer read off a connection.
#[derive(Debug)]
struct Answer {
    head: String,
    body: String,
}

impl Answer {
    fn status(&self) -> u16 {
        self.head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    /// Asserts a problem+json answer of `status` with a request id, and
    /// returns the document.
    #[track_caller]
    fn problem(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status(), status, "{self:?}");
        assert_eq!(self.header("content-type"), Some(PROBLEM_JSON), "{self:?}");
        assert!(self.header("x-request-id").is_some_and(|id| !id.is_empty()), "{self:?}");
        let problem: serde_json::Value = serde_json::from_str(&self.body).unwrap();
        assert_eq!(problem["status"], status, "{problem}");
        assert!(problem["title"].as_str().is_some_and(|title| !title.is_empty()), "{problem}");
        problem
    }
}

impl Connection {
    async fn open(addr: SocketAddr) -> Self {
        Self { stream: BufReader::new(TcpStream::connect(addr).await.unwrap()) }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    /// The next answer: its head, then as many bytes as its content-length.
    async fn answer(&mut self) -> Answer {
        self.read_answer(true).await
    }

    /// The next answer to a HEAD request: no body, whatever the head says.
    async fn answer_to_head(&mut self) -> Answer {
        self.read_answer(false).await
    }

    async fn read_answer(&mut self, with_body: bool) -> Answer {
        let read = async {
            let mut head = String::new();
            loop {
                let mut line = String::new();
                assert_ne!(self.stream.read_line(&mut line).await.unwrap(), 0, "closed after {head:?}");
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let answer = Answer { head, body: String::new() };
            let length: usize = match answer.header("content-length") {
                Some(length) if with_body => length.parse().unwrap(),
                _ => 0,
            };
            let mut body = vec![0; length];
            self.stream.read_exact(&mut body).await.unwrap();
            Answer { body: String::from_utf8(body).unwrap(), ..answer }
        };
        tokio::time::timeout(BOUND, read).await.expect("no answer in time")
    }

    /// Waits for the server to close the connection; returns what it sent
    /// before closing.
    async fn closed(&mut self) -> String {
        let mut rest = Vec::new();
        match tokio::time::timeout(BOUND, self.stream.read_to_end(&mut rest)).await {
            Ok(Ok(_)) => {}
            // Closed with data unread on the server's side.
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
            Ok(Err(err)) => panic!("reading until the connection closes: {err}"),
            Err(_) => panic!("the connection is still open after {BOUND:?}"),
        }
        String::from_utf8_lossy(&rest).into_owned()
    }
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
    let serving = tokio::spawn(async move {
        serve::serve(listener, router, &HttpOptions::default(), async move {
            stopped.await.ok();
        })
        .await
    });
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

#[tokio::test]
async fn a_body_that_stops_arriving_is_answered_408_at_the_body_timeout() {
    let options = HttpOptions::default().with_body_read_timeout(SHORT).with_header_read_timeout(LONG);
    let server = spawn_app_with(Gate::default(), options).await;
    let mut client = Connection::open(server.addr()).await;
    // A hundred bytes declared, four sent, then nothing (the client stays).
    client.send(b"POST /echo HTTP/1.1\r\nhost: polis\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"a\"").await;
    let problem = client.answer().await.problem(408);
    assert_eq!(problem["type"], types::REQUEST_TIMEOUT);
    // The rest of that body will never be read: the connection is done.
    client.closed().await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_head_that_never_completes_is_closed_at_the_header_timeout() {
    let options = HttpOptions::default().with_header_read_timeout(SHORT).with_idle_timeout(LONG);
    let server = spawn_app_with(Gate::default(), options).await;
    let mut client = Connection::open(server.addr()).await;
    client.send(b"GET /healthz HTTP/1.1\r\nhost: polis\r\n").await;
    // No request, so no answer: the connection is closed.
    assert_eq!(client.closed().await, "");

    // On a connection that has served a request, the head timeout counts
    // from the head's first byte (the idle timeout is long).
    let mut client = Connection::open(server.addr()).await;
    client.send(b"GET /healthz HTTP/1.1\r\nhost: polis\r\n\r\n").await;
    assert_eq!(client.answer().await.status(), 200);
    client.send(b"GET /healthz HTTP/1.1\r\n").await;
    assert_eq!(client.closed().await, "");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_keep_alive_connection_serves_requests_then_closes_when_idle() {
    let options = HttpOptions::default().with_idle_timeout(SHORT).with_header_read_timeout(LONG);
    let server = spawn_app_with(Gate::default(), options).await;
    let mut client = Connection::open(server.addr()).await;
    client.send(b"GET /healthz HTTP/1.1\r\nhost: polis\r\n\r\n").await;
    assert_eq!(client.answer().await.status(), 200);
    // Two more at once (pipelined), on the same connection.
    client.send(b"GET /missing HTTP/1.1\r\nhost: polis\r\n\r\nHEAD /healthz HTTP/1.1\r\nhost: polis\r\n\r\n").await;
    client.answer().await.problem(404);
    assert_eq!(client.answer_to_head().await.status(), 200);
    // Then nothing: the idle timeout closes it.
    assert_eq!(client.closed().await, "");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_what_is_still_open_after_the_grace_period() {
    let gate = Gate::default();
    let options = HttpOptions::default().with_shutdown_grace(SHORT).with_body_read_timeout(LONG);
    let server = spawn_app_with(gate.clone(), options).await;
    let mut client = Connection::open(server.addr()).await;
    client.send(b"POST /upload HTTP/1.1\r\nhost: polis\r\ncontent-length: 100\r\n\r\nfour").await;
    // The handler is reading a body that will not come...
    gate.entered.notified().await;
    // ...and the shutdown does not wait for it beyond the grace period.
    tokio::time::timeout(BOUND, server.shutdown()).await.expect("shutdown waited on a stalled client").unwrap();
    client.closed().await;
}

#[tokio::test]
async fn requests_hyper_cannot_parse_get_problem_answers() {
    let server = spawn_app(Gate::default()).await;
    let long_uri = format!("/{}", "x".repeat(70_000));
    let many_headers: String = (0..120).map(|i| format!("x-header-{i}: {i}\r\n")).collect();
    let cases = [
        (format!("GET {long_uri} HTTP/1.1\r\nhost: polis\r\n\r\n"), 414),
        ("GET / HTTP/1.1\r\nbad header\r\n\r\n".to_owned(), 400),
        ("GET /healthz HTTP/1.1 extra\r\nhost: polis\r\n\r\n".to_owned(), 400),
        ("GET /he\x01lthz HTTP/1.1\r\nhost: polis\r\n\r\n".to_owned(), 400),
        (format!("GET /healthz HTTP/1.1\r\nhost: polis\r\n{many_headers}\r\n"), 431),
    ];
    for (request, status) in cases {
        let mut client = Connection::open(server.addr()).await;
        client.send(request.as_bytes()).await;
        let answer = client.answer().await;
        let problem = answer.problem(status);
        assert!(problem["detail"].as_str().is_some_and(|detail| !detail.is_empty()), "{problem}");
        assert_eq!(client.closed().await, "", "after {status}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_bad_request_pipelined_after_a_good_one_gets_its_own_problem() {
    let server = spawn_app(Gate::default()).await;
    let mut client = Connection::open(server.addr()).await;
    client.send(b"GET /healthz HTTP/1.1\r\nhost: polis\r\n\r\nGET / HTTP/1.1\r\nbad header\r\n\r\n").await;
    let good = client.answer().await;
    assert_eq!(good.status(), 200, "{good:?}");
    assert_eq!(good.body, r#"{"status":"ok"}"#);
    client.answer().await.problem(400);
    assert_eq!(client.closed().await, "");
    server.shutdown().await.unwrap();
}
