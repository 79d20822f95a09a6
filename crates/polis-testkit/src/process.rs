//! Child processes tied to this one, for supervisors and fault tests.
//!
//! A supervisor that starts services as child processes wants them gone
//! when it is gone, even after a SIGKILL that leaves it no chance to clean
//! up; the kernel's parent-death signal does that (see `sys`). These are the
//! same calls the throwaway servers use, with SIGTERM as the death signal so
//! a service shuts down gracefully.

use std::io;
use std::process::{Child, Command};

/// Spawns `cmd` so that the kernel sends it SIGTERM when this process
/// exits, however it exits.
pub async fn spawn_tethered(cmd: Command) -> io::Result<Child> {
    crate::sys::spawn_tethered(cmd, libc::SIGTERM).await
}

/// Sends SIGTERM to `child`, asking it to shut down gracefully. `child`
/// must not have been reaped (`try_wait` / `wait` has not returned its
/// status), so its pid cannot belong to another process yet.
pub fn terminate(child: &Child) {
    crate::sys::signal(child, libc::SIGTERM);
}

/// Stops `child` where it is (SIGSTOP), as a process that hangs or a host
/// that freezes would: it holds its connections and does nothing until
/// [`resume`]d. The same condition on `child` as [`terminate`].
pub fn pause(child: &Child) {
    crate::sys::signal(child, libc::SIGSTOP);
}

/// Lets a [`pause`]d `child` go on (SIGCONT).
pub fn resume(child: &Child) {
    crate::sys::signal(child, libc::SIGCONT);
}
