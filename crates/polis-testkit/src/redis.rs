//! Throwaway Redis servers.

use std::ffi::OsString;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::TestkitError;
use crate::server::{Instance, Spec, find_binary, temp_dir};

/// A `redis-server` of its own, without persistence. Dropping it kills the
/// server and deletes its directory.
#[derive(Debug)]
pub struct RedisServer {
    // Declared before `_dir` so the server stops before its files go.
    instance: Instance,
    _dir: TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until it answers `PING`.
    pub async fn start() -> Result<Self, TestkitError> {
        let program = find_binary("redis-server")?;
        let dir = temp_dir("redis")?;
        let workdir = dir.path().to_path_buf();
        let args = move |port: u16| -> Vec<OsString> {
            let port = port.to_string();
            let mut args: Vec<OsString> =
                ["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"]
                    .map(OsString::from)
                    .into();
            args.push(workdir.clone().into());
            args
        };
        let spec = Spec {
            kind: "redis-server",
            program,
            args: Box::new(args),
            run_as: None,
            dir: dir.path().to_path_buf(),
            stop_signal: libc::SIGTERM,
            quit_signal: libc::SIGKILL,
            ready: |port| Box::pin(pongs(port)),
        };
        let instance = Instance::start(spec).await?;
        tracing::info!(port = instance.port(), dir = %dir.path().display(), "started throwaway redis-server");
        Ok(RedisServer { instance, _dir: dir })
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    /// The TCP port on 127.0.0.1 the server listens on; it keeps it across
    /// `stop()` and `restart()`.
    pub fn port(&self) -> u16 {
        self.instance.port()
    }

    /// Shuts down (SIGTERM) and waits for the server to exit.
    pub async fn stop(&mut self) {
        self.instance.stop().await;
    }

    /// Starts the server again on the same port and directory, stopping it
    /// first if it is running. Redis runs without persistence, so the data
    /// does not survive.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.instance.restart().await
    }

    /// SIGKILLs the server, like a crash.
    pub fn kill(&mut self) {
        self.instance.kill();
    }
}

async fn pongs(port: u16) -> bool {
    let ping = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = [0; 7];
        stream.read_exact(&mut reply).await?;
        std::io::Result::Ok(&reply == b"+PONG\r\n")
    };
    matches!(tokio::time::timeout(Duration::from_secs(1), ping).await, Ok(Ok(true)))
}
