//! Given/when/then fixture for aggregates.
//!
//! ```
//! # use polis_core::testing::AggregateFixture;
//! # fn spec<A: polis_core::Aggregate>(history: Vec<A::Event>, cmd: A::Command, expected: Vec<A::Event>)
//! # where A::Event: PartialEq + std::fmt::Debug, A::Error: std::fmt::Debug {
//! AggregateFixture::<A>::given(history).when(cmd).then_expect_events(expected);
//! # }
//! ```

use std::fmt::Debug;

use crate::aggregate::Aggregate;

/// A specification of one command against a history of events.
#[derive(Debug)]
pub struct AggregateFixture<A: Aggregate> {
    state: A,
}

/// The outcome of the command, ready to be checked.
#[derive(Debug)]
pub struct Outcome<A: Aggregate> {
    result: Result<Vec<A::Event>, A::Error>,
    state: A,
}

impl<A: Aggregate> AggregateFixture<A> {
    /// The aggregate after `events`.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        Self { state: events.into_iter().fold(A::default(), |s, e| s.apply(&e)) }
    }

    /// An aggregate with no history.
    pub fn given_no_history() -> Self {
        Self { state: A::default() }
    }

    /// Lets the aggregate handle `command`; check the result with the
    /// returned [`Outcome`]'s `then_expect_*` methods.
    pub fn when(self, command: A::Command) -> Outcome<A> {
        let result = self.state.handle(&command);
        Outcome { result, state: self.state }
    }
}

impl<A: Aggregate> Outcome<A>
where
    A::Event: Debug + PartialEq,
    A::Error: Debug,
{
    /// Asserts the command produced exactly `expected`; returns the new state.
    #[track_caller]
    pub fn then_expect_events(self, expected: Vec<A::Event>) -> A {
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "the command produced other events than expected");
                events.iter().fold(self.state, |s, e| s.apply(e))
            }
            Err(e) => panic!("expected events {expected:?}, but the command was rejected: {e:?}"),
        }
    }

    /// Asserts the command was rejected with an error satisfying `check`.
    #[track_caller]
    pub fn then_expect_error(self, check: impl FnOnce(&A::Error) -> bool) {
        match self.result {
            Ok(events) => panic!("expected a rejection, but the command produced {events:?}"),
            Err(e) => assert!(check(&e), "the command was rejected with an unexpected error: {e:?}"),
        }
    }
}
