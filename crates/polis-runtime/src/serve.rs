//! Listening, serving and graceful shutdown.
//!
//! A service's `run()` is `bind` → `serve(listener, router,
//! shutdown_signal())`: on ctrl-c or SIGTERM the server stops accepting,
//! lets in-flight requests finish (axum's graceful shutdown; idle
//! keep-alive connections are closed) and `serve` returns. There is no drain
//! deadline here: the orchestrator's kill timeout is the bound.
//!
//! [`spawn`] runs a server in the background on a listener bound to port 0,
//! for tests and for hosting several services in one process (the embedded
//! deployment); dropping its [`RunningServer`] shuts it down the same way.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::RuntimeError;

/// Binds a TCP listener; port 0 picks a free port (read it back with
/// `local_addr`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, RuntimeError> {
    TcpListener::bind(addr).await.map_err(|source| RuntimeError::Bind { addr, source })
}

/// Serves `router` on `listener` until `shutdown` resolves, then waits for
/// in-flight requests to finish.
pub async fn serve<F>(listener: TcpListener, router: Router, shutdown: F) -> Result<(), RuntimeError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().map_err(RuntimeError::Serve)?;
    tracing::info!(%addr, "listening");
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await.map_err(RuntimeError::Serve)?;
    tracing::info!(%addr, "stopped");
    Ok(())
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

/// Serves `router` on `listener` in a background task.
///
/// # Panics
///
/// Outside a tokio runtime, like `tokio::spawn`.
pub fn spawn(listener: TcpListener, router: Router) -> Result<RunningServer, RuntimeError> {
    let addr = listener.local_addr().map_err(RuntimeError::Serve)?;
    let (stop, stopped) = oneshot::channel::<()>();
    // A send and a dropped sender both end the wait: dropping the handle is
    // a shutdown.
    let shutdown = async move {
        let _ = stopped.await;
    };
    let task = tokio::spawn(serve(listener, router, shutdown));
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
    /// finish, and returns how the server ended.
    pub async fn shutdown(self) -> Result<(), RuntimeError> {
        let Self { stop, task, .. } = self;
        // Fails only if the server already stopped on an error, which its
        // result below reports.
        let _ = stop.send(());
        task.await.map_err(RuntimeError::ServerTask)?
    }
}
