//! Identities and counters of the log: which stream an event belongs to, its version within
//! that stream, its position in the whole store, and what an append expects to find.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A stream is the history of one aggregate instance: its type (`order`) and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamId {
    /// The aggregate type, e.g. `order`.
    pub aggregate_type: String,
    /// The aggregate id, unique within its type.
    pub id: String,
}

impl StreamId {
    /// The stream of aggregate `id` of type `aggregate_type`.
    pub fn new(aggregate_type: impl Into<String>, id: impl Into<String>) -> Self {
        Self { aggregate_type: aggregate_type.into(), id: id.into() }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.aggregate_type, self.id)
    }
}

/// The number of events in a stream; the first event of a stream has version 1.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Version(pub u64);

impl Version {
    /// The version of a stream that holds no events.
    pub const NONE: Version = Version(0);

    /// The version after `n` more events.
    pub fn advanced_by(self, n: usize) -> Version {
        Version(self.0 + n as u64)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A place in the global order of the store. Positions strictly increase in commit order;
/// `Position(0)` is "before the first event", so reading after it reads everything.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Position(pub u64);

impl Position {
    /// Before the first event.
    pub const START: Position = Position(0);
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What an append expects the stream's version to be when it commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream holds. Only for imports and tests: commands always check.
    Any,
    /// The stream must hold no events.
    NoStream,
    /// The stream must be at exactly this version.
    Exact(Version),
}

impl ExpectedVersion {
    /// The expectation that a stream at `version` satisfies exactly.
    pub fn of(version: Version) -> Self {
        if version == Version::NONE {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        }
    }

    /// Whether a stream currently at `actual` satisfies this expectation.
    pub fn matches(self, actual: Version) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == Version::NONE,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}
