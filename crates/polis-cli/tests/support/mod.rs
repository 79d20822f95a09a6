//! What the CLI's process tests share: running the `polis` binary.

use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

/// `polis` without the caller's deployment settings (`POLIS_POSTGRES_URL`,
/// `POLIS__…`); the testkit's `POLIS_TEST_*` are kept.
pub(crate) fn polis() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_polis"));
    for (name, _) in std::env::vars_os() {
        let upper = name.to_string_lossy().to_ascii_uppercase();
        if upper.starts_with("POLIS") && !upper.starts_with("POLIS_TEST_") {
            command.env_remove(name);
        }
    }
    command
}

/// A `polis` process that is stopped (SIGTERM, then SIGKILL) if a failing
/// test drops it, so it never outlives its test's data directory.
#[allow(dead_code)] // each test binary uses part of this module
pub(crate) struct Running(pub(crate) Option<Child>);

#[allow(dead_code)] // each test binary uses part of it
impl Running {
    /// The process's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` (`-INT`, `-TERM`, ...) and waits for the exit status.
    pub(crate) async fn signal_and_wait(mut self, signal: &str) -> ExitStatus {
        let mut child = self.0.take().expect("a running process");
        let sent = Command::new("kill").args([signal, &child.id().to_string()]).status().expect("kill runs");
        assert!(sent.success(), "kill {signal} failed");
        let mut status = None;
        let exited = polis_testkit::wait_for(Duration::from_secs(60), || {
            status = status.or_else(|| child.try_wait().expect("try_wait"));
            std::future::ready(status.is_some())
        })
        .await;
        assert!(exited.is_ok(), "polis did not stop on {signal}");
        status.expect("an exit status")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            polis_testkit::process::terminate(&child);
            for _ in 0..500 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
