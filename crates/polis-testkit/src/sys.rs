//! The crate's only contact with libc.
//!
//! Shared servers live in statics, which are never dropped, so nothing in
//! Rust gets a chance to stop them. Instead the kernel does it: every server
//! is spawned with `PR_SET_PDEATHSIG`, which signals the child when its
//! parent goes away. Two details make that work:
//!
//! - The "parent" is the *thread* that forked, not the process. Tests spawn
//!   from short-lived test threads and tokio's blocking pool, whose threads
//!   exit when idle, so every spawn is handed to one dedicated thread that
//!   lives as long as the process.
//! - Changing credentials clears the death signal. std applies `gid`/`uid`
//!   before running `pre_exec` closures (see `do_exec` in std's
//!   `sys/process/unix/unix.rs`), so setting it in `pre_exec` survives the
//!   switch to the `postgres` user.

// `pre_exec` is unsafe, and prctl/kill/geteuid are raw libc calls; keeping
// them all here leaves the rest of the crate under the workspace's
// `unsafe_code = "deny"`.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command};
use std::sync::{OnceLock, mpsc};
use std::thread;

use tokio::sync::oneshot;

type SpawnRequest = (Command, oneshot::Sender<io::Result<Child>>);

/// Spawns `cmd` so that the kernel sends it `death_signal` when this process
/// exits, however it exits.
pub(crate) async fn spawn_tethered(mut cmd: Command, death_signal: libc::c_int) -> io::Result<Child> {
    let parent = std::process::id();
    let tether = move || -> io::Result<()> {
        // SAFETY: prctl and getppid are async-signal-safe, and neither the
        // closure nor the error paths allocate.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl, in which case
            // the signal will never come.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        Ok(())
    };
    // SAFETY: `tether` only makes async-signal-safe syscalls (see above).
    unsafe { cmd.pre_exec(tether) };

    let gone = || io::Error::other("the polis-testkit spawner thread is gone");
    let (reply, answer) = oneshot::channel();
    spawner().send((cmd, reply)).map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("polis-testkit-spawner".into())
            // The sender lives in a static, so this loop never ends and the
            // thread outlives every child it forked.
            .spawn(move || {
                for (mut cmd, reply) in incoming {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("polis-testkit: cannot start the spawner thread");
        requests
    })
}

/// Sends `signal` to a child that has not been reaped yet (so its pid cannot
/// have been recycled).
pub(crate) fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: plain syscall; the pid belongs to our unreaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
}

pub(crate) fn is_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    exists || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}
