//! Whether a background task is making progress, for readiness checks.
//!
//! The relay and the consumer's subscription readers report each step's
//! outcome to a [`Progress`]; a host reads it with [`Progress::check`] to
//! tell "working" from "failing for a while" (a database or broker out of
//! reach) and "stopped" (a reader whose subscription closed), and says why.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How long a task may keep failing before it counts as stalled: one failed
/// step followed by a successful retry is the normal life of a distributed
/// system, not a reason to take a service out of rotation.
pub const STALL_AFTER: Duration = Duration::from_secs(5);

/// A background task's progress, shared between the task and its readers.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<Mutex<State>>);

#[derive(Debug, Default)]
struct State {
    /// Since when every step has failed, and the last failure.
    failing: Option<(Instant, String)>,
    /// Set when a task that should run until stopped has ended on its own.
    ended: Option<String>,
}

impl Progress {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A step succeeded.
    pub fn ok(&self) {
        self.state().failing = None;
    }

    /// A step failed with `error`.
    pub fn failed(&self, error: &dyn std::error::Error) {
        let mut state = self.state();
        let reason = polis_core::error::chain(error).to_string();
        match &mut state.failing {
            Some((_, last)) => *last = reason,
            None => state.failing = Some((Instant::now(), reason)),
        }
    }

    /// The task ended on its own, for `reason`; it will make no more
    /// progress. The first reason given stands.
    pub fn ended(&self, reason: impl Into<String>) {
        self.state().ended.get_or_insert_with(|| reason.into());
    }

    /// A guard that marks the task [`ended`](Self::ended) when dropped:
    /// held by a task's loop, it tells a panic or an abort from progress.
    pub fn on_drop(&self, reason: &'static str) -> impl Drop + use<> {
        struct Ended(Progress, &'static str);
        impl Drop for Ended {
            fn drop(&mut self) {
                self.0.ended(self.1);
            }
        }
        Ended(self.clone(), reason)
    }

    /// `Ok` while the task works (or has failed for less than
    /// [`STALL_AFTER`]); otherwise why it does not.
    pub fn check(&self) -> Result<(), String> {
        let state = self.state();
        if let Some(reason) = &state.ended {
            return Err(format!("stopped: {reason}"));
        }
        match &state.failing {
            Some((since, reason)) if since.elapsed() >= STALL_AFTER => {
                Err(format!("failing for {} s: {reason}", since.elapsed().as_secs()))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failure_counts_only_once_it_lasts() {
        let progress = Progress::default();
        let error = std::io::Error::other("connection refused");
        progress.failed(&error);
        assert_eq!(progress.check(), Ok(()));
        tokio::time::advance(STALL_AFTER).await;
        progress.failed(&error);
        let reason = progress.check().unwrap_err();
        assert!(reason.contains("failing for 5 s") && reason.contains("connection refused"), "{reason}");
        progress.ok();
        assert_eq!(progress.check(), Ok(()));
    }

    #[test]
    fn an_ended_task_is_never_ready_again() {
        let progress = Progress::default();
        progress.ended("its subscription closed");
        progress.ok();
        assert_eq!(progress.check(), Err("stopped: its subscription closed".to_owned()));
    }
}
