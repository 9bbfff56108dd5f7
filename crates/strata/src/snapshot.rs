//! Snapshots: an aggregate's state at a stream version, so that loading a long stream reads
//! the newest snapshot and only the events after it. A snapshot is a cache of a fold, never
//! a source of truth: one that cannot be read (another format, bytes that do not decode) is
//! ignored and the stream replayed in full.

use crate::stream::Version;

/// An aggregate's encoded state after the events up to `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The stream version the state reflects.
    pub version: Version,
    /// The aggregate's snapshot format when it was written ([`SnapshotPolicy::format`]).
    pub format: u32,
    /// The encoded state.
    pub state: Vec<u8>,
}

/// How often an aggregate type is snapshotted, and in which format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// A snapshot is written each time the stream passes a multiple of this many events.
    pub every: u64,
    /// The format the aggregate writes now; raise it whenever the state's shape changes, so
    /// that snapshots of the old shape are ignored.
    pub format: u32,
}

impl SnapshotPolicy {
    /// Whether a stream that went from version `before` to `after` is due a snapshot: it
    /// passed a multiple of [`every`](Self::every).
    pub fn due(&self, before: Version, after: Version) -> bool {
        let every = self.every.max(1);
        after.0 / every > before.0 / every
    }
}
