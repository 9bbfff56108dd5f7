//! Strata's core: the domain traits (aggregates, events, views), the event envelope, the
//! [`EventStore`] contract, the [`CommandBus`], the projection runner and the in-memory store.
//!
//! The core knows no database. Backends (`strata-sqlite`, later `strata-postgres`) implement
//! [`EventStore`] and [`ViewManager`] and prove it with the contract suites in `strata-testkit`.

pub mod aggregate;
pub mod audit;
pub mod bus;
pub mod codec;
pub mod command_counts;
pub mod event;
pub mod idempotency;
pub mod lease;
pub mod memory;
pub mod projection;
pub mod routed_views;
pub mod saga;
pub mod snapshot;
pub mod store;
pub mod stream;
pub mod table;
pub mod testing;
pub mod upcast;
pub mod view;
pub mod view_manager;

pub use aggregate::{Aggregate, Decision, Rejection, RejectionKind};
pub use audit::{AuditError, AuditQuery, AuditSubject};
pub use bus::{BusConfig, CommandBus, CommandContext, CommandError, CommandOutcome, Loaded};
pub use codec::{Codec, CodecError};
pub use command_counts::{CommandCounts, CommandResult};
pub use event::{DecodeError, DomainEvent, Envelope, EventMetadata, NewEvent, RecordedEvent};
pub use idempotency::{IdempotencyClaim, IdempotencyError, IdempotencyRecord, IdempotencyStore};
pub use lease::{Lease, LeaseError, Leases, LocalLeases};
pub use memory::{InMemoryEventStore, InMemoryViewManager};
pub use projection::reader::SharedReader;
pub use projection::{
    Awaited, ControlError, InstanceReport, LocalView, Outlet, Projection, ProjectionError,
    ProjectionHandle, ProjectionRunner, ProjectionState, ProjectionStatus, Projections, Pulled,
    RebuildProgress, Source, status_of,
};
pub use routed_views::RoutedViews;
pub use snapshot::{Snapshot, SnapshotPolicy};
pub use store::{
    AppendOutcome, EventStore, GroupCommitCounters, GroupCommitMetrics, StoreError, WriteFailure,
    check_append,
};
pub use stream::{ExpectedVersion, Position, StreamId, Version};
pub use table::{
    Column, ColumnType, RowChange, TableKind, TableQuery, TableRows, TableSpec, Value,
};
pub use upcast::{EventSchemas, Unreadable, Upcaster};
pub use view::{
    ApplyError, Parking, RawLocator, StoredView, View, ViewLocator, decode_view, encode_view,
};
pub use view_manager::{
    Checkpoint, Commit, EncodedCommit, EncodedView, ParkedInstance, ProjectionRecord,
    RebuildRecord, SkippedEvent, Slot, ViewError, ViewManager, check_projection_name,
    encode_commit,
};
