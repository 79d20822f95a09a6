//! Catch-up subscriptions over any [`EventStore`].
//!
//! A subscription reads history in bounded batches through
//! [`EventStore::read_all`], then follows new events: it sleeps until the
//! store's wake-up hint changes (an in-process notification on SQLite,
//! LISTEN/NOTIFY on PostgreSQL) or the poll interval passes, whichever comes
//! first, so a lost hint only costs latency. Memory stays bounded by one batch.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use futures::stream;

use crate::envelope::RecordedEvent;
use crate::error::StoreError;
use crate::store::EventStore;

/// Tuning for [`catch_up`].
#[derive(Debug, Clone, Copy)]
pub struct CatchUpOptions {
    /// Events per read.
    pub batch_size: usize,
    /// Fallback poll when no wake-up hint arrives.
    pub poll_interval: Duration,
}

impl Default for CatchUpOptions {
    fn default() -> Self {
        Self { batch_size: 500, poll_interval: Duration::from_millis(500) }
    }
}

struct State<S: ?Sized> {
    store: Arc<S>,
    after: u64,
    buffer: std::vec::IntoIter<RecordedEvent>,
    wakeups: tokio::sync::watch::Receiver<u64>,
    options: CatchUpOptions,
    caught_up: bool,
}

/// Every event with a global position above `after`, then every new one, forever.
///
/// The stream ends only if the store fails; the error is its last item.
/// Resume after a restart by passing the last position processed.
pub fn catch_up<S: EventStore + ?Sized>(
    store: Arc<S>,
    after: u64,
    options: CatchUpOptions,
) -> impl Stream<Item = Result<RecordedEvent, StoreError>> + Send + 'static {
    let wakeups = store.wakeups();
    // A zero batch would never look caught up and would spin.
    let options = CatchUpOptions { batch_size: options.batch_size.max(1), ..options };
    let state = State { store, after, buffer: Vec::new().into_iter(), wakeups, options, caught_up: false };
    stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        loop {
            if let Some(event) = state.buffer.next() {
                state.after = event.global_position;
                return Some((Ok(event), Some(state)));
            }
            if state.caught_up {
                // Mark the current hint as seen before reading, so a change that
                // races with the read below still wakes us.
                let _ = tokio::time::timeout(state.options.poll_interval, state.wakeups.changed()).await;
            }
            state.wakeups.borrow_and_update();
            match state.store.read_all(state.after, state.options.batch_size).await {
                Ok(batch) => {
                    state.caught_up = batch.len() < state.options.batch_size;
                    state.buffer = batch.into_iter();
                }
                Err(e) => return Some((Err(e), None)),
            }
        }
    })
}
