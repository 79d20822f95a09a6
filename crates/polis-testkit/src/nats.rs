//! Throwaway NATS servers with JetStream.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::TcpStream;

use crate::TestkitError;
use crate::server::{Instance, ServerDir, Spec, find_binary, temp_dir};

/// A `nats-server -js` of its own, storing JetStream data in a temp dir
/// ([`NatsServer::start`]) or in a directory that outlives it
/// ([`NatsServer::start_in`]). Dropping it kills the server, and deletes a
/// temp dir.
#[derive(Debug)]
pub struct NatsServer {
    // Declared before `dir` so the server stops before its files go.
    instance: Instance,
    dir: ServerDir,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free port and waits until it greets
    /// clients.
    pub async fn start() -> Result<Self, TestkitError> {
        Self::boot(ServerDir::Temp(temp_dir("nats")?)).await
    }

    /// Like [`NatsServer::start`], but keeps the JetStream store in
    /// `dir/jetstream` (created if missing) and leaves it there when the
    /// server stops, so the next start in `dir` resumes its streams and
    /// consumers. The server log is `dir/server.log`. The port is a fresh
    /// free one each time.
    pub async fn start_in(dir: impl AsRef<Path>) -> Result<Self, TestkitError> {
        Self::boot(ServerDir::kept(dir.as_ref())?).await
    }

    async fn boot(dir: ServerDir) -> Result<Self, TestkitError> {
        let program = find_binary("nats-server")?;
        let store = dir.path().join("jetstream");
        let args = move |port: u16| -> Vec<OsString> {
            let port = port.to_string();
            let mut args: Vec<OsString> = ["-js", "-a", "127.0.0.1", "-p", &port, "-sd"].map(OsString::from).into();
            args.push(store.clone().into());
            args
        };
        let spec = Spec {
            kind: "nats-server",
            program,
            args: Box::new(args),
            run_as: None,
            dir: dir.path().to_path_buf(),
            stop_signal: libc::SIGTERM,
            quit_signal: libc::SIGKILL,
            ready: |port| Box::pin(greets(port)),
        };
        let instance = Instance::start(spec).await?;
        tracing::info!(port = instance.port(), dir = %dir.path().display(), "started nats-server");
        Ok(NatsServer { instance, dir })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }

    /// The TCP port on 127.0.0.1 the server listens on; it keeps it across
    /// `stop()` and `restart()`.
    pub fn port(&self) -> u16 {
        self.instance.port()
    }

    /// The JetStream store directory, which survives `stop()` and `restart()`.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// The server process's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.instance.pid()
    }

    /// Whether the server process has ended by itself (crashed, killed):
    /// its exit status, reported once. [`Self::restart`] starts it again on
    /// the same port, with the same files.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.instance.exited()
    }

    /// Shuts down (SIGTERM) and waits for the server to exit.
    pub async fn stop(&mut self) {
        self.instance.stop().await;
    }

    /// Starts the server again on the same port and store directory,
    /// stopping it first if it is running.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.instance.restart().await
    }

    /// SIGKILLs the server, like a crash.
    pub fn kill(&mut self) {
        self.instance.kill();
    }
}

/// Whether the server sends its `INFO` greeting; by then JetStream is up.
async fn greets(port: u16) -> bool {
    let greeting = async {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await?;
        std::io::Result::Ok(line.starts_with("INFO "))
    };
    matches!(tokio::time::timeout(Duration::from_secs(1), greeting).await, Ok(Ok(true)))
}
