//! Given/when/then for sagas, with a controllable clock:
//!
//! ```text
//! let (saga, step) = SagaFixture::given(state).at(t0).when_reply(&reply);
//! ```
//!
//! The saga is pure, so a test needs no database or bus: it feeds replies and
//! deadlines in and inspects the commands, deadline and effects that come out.

use chrono::{DateTime, Utc};
use polis_core::Message;

use crate::{Saga, Step};

/// A saga state under test and the time the test pretends it is.
#[derive(Debug)]
pub struct SagaFixture<S> {
    state: S,
    now: DateTime<Utc>,
}

impl<S: Saga> SagaFixture<S> {
    /// A fixture starting from `state`, with the clock at the current time.
    pub fn given(state: S) -> Self {
        Self { state, now: Utc::now() }
    }

    /// Sets the time the saga is told it is (`now`) in the `when_*` calls.
    pub fn at(mut self, now: DateTime<Utc>) -> Self {
        self.now = now;
        self
    }

    /// Feeds `reply` to the saga at the fixture's time; returns the new state
    /// and the step it produced.
    pub fn when_reply(mut self, reply: &Message) -> (S, Step<S::Effect>) {
        let step = self.state.on_reply(reply, self.now);
        (self.state, step)
    }

    /// Lets the saga's deadline pass at the fixture's time; returns the new
    /// state and the step it produced.
    pub fn when_deadline(mut self) -> (S, Step<S::Effect>) {
        let step = self.state.on_deadline(self.now);
        (self.state, step)
    }
}
