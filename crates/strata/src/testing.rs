//! Given/when/then for aggregates: given past events, when a command arrives, then these
//! events are emitted (or this error is returned). Pure and synchronous: no store involved.
//!
//! ```text
//! given::<Order>([placed()]).when(ConfirmOrder).then([OrderConfirmed {..}]);
//! ```

use std::fmt::Debug;

use crate::aggregate::{Aggregate, Decision, replay};

/// Starts a scenario from the state these events produce.
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Scenario<A> {
    let events: Vec<A::Event> = events.into_iter().collect();
    Scenario { state: replay::<A>(&events) }
}

/// An aggregate state waiting for a command.
pub struct Scenario<A> {
    state: A,
}

impl<A: Aggregate> Scenario<A> {
    /// Handles `command` against the given state.
    pub fn when(self, command: A::Command) -> Outcome<A> {
        let mut decision = Decision::new(&self.state);
        let result = A::handle(&mut decision, command);
        let (_, emitted) = decision.into_parts();
        Outcome { result: result.map(|()| emitted) }
    }
}

/// What a command did in a scenario.
pub struct Outcome<A: Aggregate> {
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Outcome<A>
where
    A::Event: PartialEq,
{
    /// Asserts that the command emitted exactly `expected`, in order.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(emitted) => assert_eq!(emitted, expected, "emitted events differ"),
            Err(error) => panic!("expected events {expected:?}, but the command failed: {error}"),
        }
    }

    /// Asserts that the command was refused with `expected`.
    #[track_caller]
    pub fn then_error(self, expected: A::Error)
    where
        A::Error: PartialEq + Debug,
    {
        match self.result {
            Ok(emitted) => {
                panic!("expected error {expected:?}, but the command emitted {emitted:?}")
            }
            Err(error) => assert_eq!(error, expected, "the command failed differently"),
        }
    }
}
