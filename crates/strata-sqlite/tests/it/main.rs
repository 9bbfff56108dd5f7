//! The one integration-test binary of `strata-sqlite`: the shared contract suites run on the
//! SQLite stores, plus what only this backend promises (group commit, schema versions,
//! the fenced checkpoint across handles).
//!
//! Every test works in its own temporary directory, removed when the test ends.

mod contract;
mod group_commit;
mod schema;
mod views;

use strata::{ExpectedVersion, NewEvent, StreamId};

/// A stream of the tests' aggregate type.
fn stream(id: &str) -> StreamId {
    StreamId::new("test", id)
}

/// A fresh event with a distinct payload.
fn event(n: u64) -> NewEvent {
    strata_testkit::sample_event(n)
}

/// An append that expects the stream to be new.
const NEW: ExpectedVersion = ExpectedVersion::NoStream;
