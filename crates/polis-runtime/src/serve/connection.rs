//! One HTTP/1.1 connection: hyper's server connection, plus what hyper does
//! not offer by itself.
//!
//! **Head and idle timeouts.** hyper closes a connection whose request head
//! does not arrive within its `header_read_timeout`, counted from when it
//! starts waiting for that head, which on a keep-alive connection is right
//! after the previous answer. Alone, that makes the head timeout the idle
//! timeout too. hyper asks its `Timer` for that one deadline (the only timer
//! an HTTP/1 server connection uses), so [`HeadTimer`] hands it a sleep whose
//! deadline follows the connection: `since + header_read` while the
//! connection has served nothing yet, `since + idle` while a used connection
//! has received nothing, and `first byte + header_read` once a head has
//! started to arrive. [`WatchedIo`] records that first byte.
//!
//! **Problems for requests hyper cannot parse.** A malformed request line
//! or header, a URI over hyper's limit (65,534 bytes) or a header section
//! over its buffer (about 400 KiB) or 100 headers never becomes a request:
//! hyper writes `400`, `414` or `431` itself, with an empty body, and closes
//! the connection. It has no hook to change that answer, so [`WatchedIo`]
//! changes it on the way out. The alternatives were worse: parsing every
//! request head a second time before hyper (a second HTTP parser in front of
//! the real one, with its own idea of where requests end), or leaving these
//! errors as the one kind that is not problem+json. The rewrite is narrow:
//! bytes written while hyper waits for a request head (between arming the
//! head timer and handing a request to the router, when hyper has nothing
//! of the router's to write) are held until hyper flushes them, and only if
//! they are exactly one complete response head with one of those three
//! statuses and an empty body are they replaced by the same status with a
//! problem+json body; anything else is passed on unchanged. The tests in
//! `tests/serve.rs` pin hyper's behaviour this relies on.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use hyper::body::Incoming;
use hyper::rt::{Sleep, Timer};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::layers::{REQUEST_ID_HEADER, RequestId};
use crate::problem::{ApiError, PROBLEM_JSON};

/// The statuses hyper answers by itself to a request it cannot parse.
const AUTOMATIC_STATUSES: [StatusCode; 3] =
    [StatusCode::BAD_REQUEST, StatusCode::URI_TOO_LONG, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE];

/// Most headers hyper's automatic answer has (`content-length`, `date`,
/// `connection`), with room to spare.
const MAX_AUTOMATIC_HEADERS: usize = 16;

/// The timeouts of a connection while it waits for a request head.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) header_read: Duration,
    pub(super) idle: Duration,
}

/// Serves one accepted connection until it ends, or until `closing` turns
/// true, after which it finishes the request in flight (if any) and closes.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    mut closing: watch::Receiver<bool>,
) {
    let watch = Arc::new(Watch::new(limits));
    let io = TokioIo::new(WatchedIo::new(stream, Arc::clone(&watch)));
    let arrivals = Arc::clone(&watch);
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        arrivals.request_arrived();
        router.clone().oneshot(request)
    });
    let mut builder = http1::Builder::new();
    // The value only arms hyper's head timer; `HeadTimer` decides when it fires.
    builder.timer(HeadTimer(watch)).header_read_timeout(limits.header_read);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);

    let closing = async move {
        // A dropped sender means the server is gone: close too.
        let _ = closing.wait_for(|closing| *closing).await;
    };
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = closing => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = ended {
        // Clients that vanish, time out or send garbage are routine; the
        // garbage already got its 4xx.
        tracing::debug!(%peer, error = %err, "connection ended with an error");
    }
}

/// What [`HeadTimer`], [`WatchedIo`] and the service share about one
/// connection.
#[derive(Debug)]
struct Watch {
    limits: Limits,
    state: Mutex<HeadWait>,
}

#[derive(Debug, Clone, Copy)]
struct HeadWait {
    /// Whether hyper is waiting for a request head: from when it arms its
    /// head timer until it hands the request to the router.
    awaiting: bool,
    /// When the wait started.
    since: Instant,
    /// When the first byte arrived during the wait.
    first_byte: Option<Instant>,
    /// Requests handed to the router so far.
    requests: u64,
}

impl HeadWait {
    /// When the wait ends with the connection closed (see the module docs).
    fn deadline(&self, limits: Limits) -> Instant {
        match self.first_byte {
            Some(first_byte) => first_byte + limits.header_read,
            None if self.requests == 0 => self.since + limits.header_read,
            None => self.since + limits.idle,
        }
    }
}

impl Watch {
    fn new(limits: Limits) -> Self {
        let state = HeadWait { awaiting: false, since: Instant::now(), first_byte: None, requests: 0 };
        Self { limits, state: Mutex::new(state) }
    }

    fn state(&self) -> MutexGuard<'_, HeadWait> {
        // Every update leaves the state consistent; a panic elsewhere while
        // holding the lock cannot have broken it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn head_wait_started(&self) {
        let mut state = self.state();
        state.awaiting = true;
        state.since = Instant::now();
        state.first_byte = None;
    }

    fn bytes_arrived(&self) {
        let mut state = self.state();
        if state.awaiting && state.first_byte.is_none() {
            state.first_byte = Some(Instant::now());
        }
    }

    fn request_arrived(&self) {
        let mut state = self.state();
        state.awaiting = false;
        state.requests += 1;
    }

    fn awaiting_head(&self) -> bool {
        self.state().awaiting
    }

    fn head_deadline(&self) -> Instant {
        self.state().deadline(self.limits)
    }
}

/// The timer hyper's connection uses for its head timeout (see the module
/// docs).
#[derive(Debug)]
struct HeadTimer(Arc<Watch>);

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        TokioTimer::new().sleep(duration)
    }

    /// hyper calls this when it starts waiting for a request head, with the
    /// deadline of its own rule, which the [`HeadSleep`] replaces.
    fn sleep_until(&self, _deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.0.head_wait_started();
        let deadline = self.0.head_deadline();
        Box::pin(HeadSleep { watch: Arc::clone(&self.0), sleep: Box::pin(tokio::time::sleep_until(deadline.into())) })
    }
}

/// Resolves at the connection's head deadline, which moves when the head's
/// first byte arrives. hyper polls it each time a read leaves the head
/// incomplete, so the move is seen before the old deadline passes.
#[derive(Debug)]
struct HeadSleep {
    watch: Arc<Watch>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = tokio::time::Instant::from_std(self.watch.head_deadline());
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

impl Sleep for HeadSleep {}

/// The connection's socket as hyper sees it: notes the first byte of each
/// request head, and holds what hyper writes while waiting for one (see the
/// module docs).
#[derive(Debug)]
struct WatchedIo {
    stream: TcpStream,
    watch: Arc<Watch>,
    /// Written while hyper waited for a request head, not yet sent.
    held: Vec<u8>,
    /// How much of `held` has been sent.
    sent: usize,
    /// Whether `held` has been checked for hyper's automatic answer; what
    /// hyper adds after that is sent as it is.
    checked: bool,
}

impl WatchedIo {
    fn new(stream: TcpStream, watch: Arc<Watch>) -> Self {
        Self { stream, watch, held: Vec::new(), sent: 0, checked: false }
    }

    /// Sends what is held, rewritten if it is hyper's automatic answer.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if !self.checked {
            if let Some(answer) = problem_answer(&self.held) {
                self.held = answer;
            }
            self.checked = true;
        }
        while self.sent < self.held.len() {
            let written = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.held[self.sent..]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += written;
        }
        self.held.clear();
        self.sent = 0;
        self.checked = false;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for WatchedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = ready!(Pin::new(&mut this.stream).poll_read(cx, buf));
        if read.is_ok() && buf.filled().len() > before {
            this.watch.bytes_arrived();
        }
        Poll::Ready(read)
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.watch.awaiting_head() {
            this.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        ready!(this.poll_release(cx))?;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.watch.awaiting_head() {
            let mut written = 0;
            for buf in bufs {
                this.held.extend_from_slice(buf);
                written += buf.len();
            }
            return Poll::Ready(Ok(written));
        }
        ready!(this.poll_release(cx))?;
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_release(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_release(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// If `written` is exactly hyper's automatic answer to an unparseable
/// request (one response head, 400, 414 or 431, with no body), the same
/// answer with a problem+json body; otherwise `None`.
fn problem_answer(written: &[u8]) -> Option<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_AUTOMATIC_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(written) {
        Ok(httparse::Status::Complete(head_len)) => head_len,
        _ => return None,
    };
    let status = StatusCode::from_u16(response.code?).ok()?;
    let empty_body = response
        .headers
        .iter()
        .any(|header| header.name.eq_ignore_ascii_case("content-length") && header.value == b"0");
    if head_len != written.len() || !empty_body || !AUTOMATIC_STATUSES.contains(&status) {
        return None;
    }

    let request_id = RequestId::generate();
    let detail = match status {
        StatusCode::URI_TOO_LONG => "the request target is longer than this server accepts",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            "the request's header section is larger than this server accepts"
        }
        _ => "the request is not valid HTTP/1.1: its request line or a header is malformed",
    };
    tracing::info!(status = status.as_u16(), %request_id, "answered a request that could not be parsed");
    let body = ApiError::from_status(status).with_detail(detail).to_json().to_string();

    let mut answer = Vec::with_capacity(head_len + body.len() + 128);
    answer.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", status.as_u16(), response.reason.unwrap_or("")).as_bytes());
    for header in response.headers.iter().filter(|header| !header.name.eq_ignore_ascii_case("content-length")) {
        append_header(&mut answer, header.name.as_bytes(), header.value);
    }
    append_header(&mut answer, b"content-type", PROBLEM_JSON.as_bytes());
    append_header(&mut answer, b"content-length", body.len().to_string().as_bytes());
    append_header(&mut answer, REQUEST_ID_HEADER.as_str().as_bytes(), request_id.as_str().as_bytes());
    answer.extend_from_slice(b"\r\n");
    answer.extend_from_slice(body.as_bytes());
    Some(answer)
}

fn append_header(answer: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    answer.extend_from_slice(name);
    answer.extend_from_slice(b": ");
    answer.extend_from_slice(value);
    answer.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { header_read: Duration::from_secs(10), idle: Duration::from_secs(75) };

    #[test]
    fn a_fresh_connection_gets_the_head_timeout_a_used_one_the_idle_timeout() {
        let since = Instant::now();
        let fresh = HeadWait { awaiting: true, since, first_byte: None, requests: 0 };
        assert_eq!(fresh.deadline(LIMITS), since + LIMITS.header_read);
        let used = HeadWait { requests: 3, ..fresh };
        assert_eq!(used.deadline(LIMITS), since + LIMITS.idle);
    }

    #[test]
    fn once_a_head_starts_it_has_the_head_timeout_from_its_first_byte() {
        let since = Instant::now();
        let first_byte = since + Duration::from_secs(40);
        let started = HeadWait { awaiting: true, since, first_byte: Some(first_byte), requests: 3 };
        assert_eq!(started.deadline(LIMITS), first_byte + LIMITS.header_read);
    }

    #[test]
    fn hypers_automatic_answer_becomes_a_problem() {
        let automatic = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 10:00:00 GMT\r\n\r\n";
        let answer = String::from_utf8(problem_answer(automatic).unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(head.contains("\r\ndate: Tue, 01 Dec 2026 10:00:00 GMT"), "{head}");
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())), "{head}");
        assert!(!head.contains("content-length: 0"), "{head}");
        assert!(head.contains("\r\ncontent-type: application/problem+json"), "{head}");
        assert!(head.contains("\r\nx-request-id: "), "{head}");
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["status"], 414);
        assert_eq!(problem["type"], "about:blank");
    }

    #[test]
    fn anything_but_exactly_one_automatic_answer_is_left_alone() {
        // A body after the head: the tail of a response, not hyper's answer.
        assert!(problem_answer(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nmore").is_none());
        // A head with a body to follow.
        assert!(problem_answer(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n").is_none());
        // Another status.
        assert!(problem_answer(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").is_none());
        // Not a response head at all, or not a whole one.
        assert!(problem_answer(b"}\"status\":400}").is_none());
        assert!(problem_answer(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n").is_none());
    }
}
