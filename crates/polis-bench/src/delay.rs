//! A TCP proxy that holds every chunk for a fixed time in each direction, to
//! stand in for the network between a service and its database: on loopback
//! a round trip costs microseconds, across a network tenths of milliseconds,
//! and designs that differ in round trips per command only show their
//! difference with the latter.
//!
//! It runs on plain threads with blocking sockets: `std::thread::sleep` keeps
//! sub-millisecond delays, where tokio's timer rounds up to whole milliseconds.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Listens on a free loopback port and forwards to `upstream`, delaying each
/// direction by `one_way`. Stops accepting when dropped; open connections
/// end when either side closes.
#[derive(Debug)]
pub(crate) struct DelayProxy {
    address: SocketAddr,
    stopped: Arc<AtomicBool>,
}

impl DelayProxy {
    pub(crate) fn start(upstream: SocketAddr, one_way: Duration) -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding the delay proxy")?;
        let address = listener.local_addr().context("reading the proxy's address")?;
        let stopped = Arc::new(AtomicBool::new(false));
        let stop = stopped.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                for (from, to) in [(&client, &server), (&server, &client)] {
                    if let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) {
                        pipe(from, to, one_way);
                    }
                }
            }
        });
        Ok(Self { address, stopped })
    }

    pub(crate) fn port(&self) -> u16 {
        self.address.port()
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.address);
    }
}

/// Copies `from` to `to` on two threads, each chunk `delay` after it was read.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    thread::spawn(move || {
        for (due, chunk) in rx {
            thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
