//! Listening, serving and graceful shutdown.
//!
//! A service's `run()` is `bind` → `serve(listener, router, &options,
//! shutdown_signal())`. Each connection is HTTP/1.1 served by hyper with
//! three bounds on a client that stops making progress (slowloris), all in
//! [`HttpOptions`]:
//!
//! - **head**: a request's line and headers must arrive within
//!   `header_read_timeout_ms` (default 10 s), counted from the accept for
//!   the first request of a connection and from the first byte for later
//!   ones; otherwise the connection is closed (there is no request to
//!   answer);
//! - **idle**: a keep-alive connection waits at most `idle_timeout_ms`
//!   (default 75 s) for its next request, then is closed;
//! - **body**: enforced by [`crate::with_standard_stack`]
//!   (`body_read_timeout_ms`, a 408 problem).
//!
//! On shutdown (ctrl-c, SIGTERM, or the `shutdown` future) the server stops
//! accepting, closes idle connections, and lets requests in flight finish
//! for up to `shutdown_grace_ms` (default 10 s); then it closes the
//! connections still open, whatever they were doing, and `serve` returns.
//! So a client that never finishes its request cannot hold a shutdown.
//!
//! Requests hyper cannot parse (a malformed request line or header, a URI
//! or header section over its limits) never reach the router: hyper answers
//! them itself, 400, 414 or 431, with an empty body. The connection's I/O
//! wrapper turns that answer into a problem+json one (see `connection`), so
//! that these errors too have the one shape clients meet.
//!
//! [`spawn`] runs a server in the background on a listener bound to port 0,
//! for tests and for hosting several services in one process (the embedded
//! deployment); dropping its [`RunningServer`] shuts it down the same way.

mod connection;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::{HttpOptions, RuntimeError};

/// How long to wait before accepting again after an error that is not one
/// connection's (out of file descriptors, say): the condition may pass as
/// other connections close, and retrying at once would spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Binds a TCP listener; port 0 picks a free port (read it back with
/// `local_addr`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, RuntimeError> {
    TcpListener::bind(addr).await.map_err(|source| RuntimeError::Bind { addr, source })
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets the
/// requests in flight finish for up to [`HttpOptions::shutdown_grace_ms`]
/// and closes whatever connections remain.
///
/// `options` gives the timeouts; its `listen` and `max_body_bytes` are not
/// used here (the listener is bound, the body limit is the stack's).
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    options: &HttpOptions,
    shutdown: F,
) -> Result<(), RuntimeError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().map_err(RuntimeError::Serve)?;
    let limits = connection::Limits { header_read: options.header_read_timeout(), idle: options.idle_timeout() };
    let grace = options.shutdown_grace();
    tracing::info!(%addr, "listening");

    // Every connection task watches `closing`; the set owns them, so that
    // the ones still running after the grace period can be aborted.
    let (closing, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let task = connection::serve(stream, peer, router.clone(), limits, closing_rx.clone());
                    connections.spawn(task);
                }
                Err(err) if is_connection_error(&err) => {}
                Err(err) => {
                    tracing::error!(%addr, error = %err, "cannot accept connections; retrying in a second");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_RETRY_DELAY) => {}
                    }
                }
            },
            // Reap finished connections as they end, so the set does not grow.
            Some(ended) = connections.join_next(), if !connections.is_empty() => log_task_end(ended),
        }
    }

    drop(listener);
    closing.send_replace(true);
    let open = connections.len();
    tracing::info!(%addr, open, grace_ms = grace.as_millis(), "stopped accepting; letting requests in flight finish");
    let drained = tokio::time::timeout(grace, async {
        while let Some(ended) = connections.join_next().await {
            log_task_end(ended);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            %addr,
            open = connections.len(),
            grace_ms = grace.as_millis(),
            "closing the connections still open after the shutdown grace period"
        );
        connections.shutdown().await;
    }
    tracing::info!(%addr, "stopped");
    Ok(())
}

/// Errors of one connection that went away before it was accepted; the
/// listener itself is fine.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

fn log_task_end(ended: Result<(), tokio::task::JoinError>) {
    // A connection task only fails by panicking (handlers' panics are caught
    // by the stack; this would be hyper's or ours) or by being aborted.
    if let Err(err) = ended
        && err.is_panic()
    {
        tracing::error!(error = %err, "a connection task panicked");
    }
}

/// Resolves on the first ctrl-c (SIGINT) or SIGTERM.
///
/// The handlers are installed when the future is first polled. If one
/// cannot be installed, that is logged and the other still works.
pub async fn shutdown_signal() {
    let interrupt = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => tracing::info!("ctrl-c received; shutting down"),
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for ctrl-c; only SIGTERM stops the server");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            // `None` means the runtime is going away, which is a stop too.
            Ok(mut terminate) => {
                terminate.recv().await;
                tracing::info!("SIGTERM received; shutting down");
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM; only ctrl-c stops the server");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// Serves `router` on `listener` in a background task, with the timeouts
/// of `options` (see [`serve`]).
///
/// # Panics
///
/// Outside a tokio runtime, like `tokio::spawn`.
pub fn spawn(listener: TcpListener, router: Router, options: &HttpOptions) -> Result<RunningServer, RuntimeError> {
    let addr = listener.local_addr().map_err(RuntimeError::Serve)?;
    let (stop, stopped) = oneshot::channel::<()>();
    // A send and a dropped sender both end the wait: dropping the handle is
    // a shutdown.
    let shutdown = async move {
        let _ = stopped.await;
    };
    let options = options.clone();
    let task = tokio::spawn(async move { serve(listener, router, &options, shutdown).await });
    Ok(RunningServer { addr, stop, task })
}

/// A server started by [`spawn`]. Dropping it starts a graceful shutdown
/// that finishes in the background; [`RunningServer::shutdown`] waits for
/// it.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), RuntimeError>>,
}

impl RunningServer {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections, waits for in-flight requests to
    /// finish (up to the shutdown grace period), and returns how the server
    /// ended.
    pub async fn shutdown(self) -> Result<(), RuntimeError> {
        let Self { stop, task, .. } = self;
        // Fails only if the server already stopped on an error, which its
        // result below reports.
        let _ = stop.send(());
        task.await.map_err(RuntimeError::ServerTask)?
    }
}
