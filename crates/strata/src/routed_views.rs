//! [`RoutedViews`]: one [`ViewManager`] made of two, so that an application keeps the views
//! of some projections in another store (hot documents in Redis, say) and the rest where
//! they were. Each projection lives wholly in one of them: its views, tables, parked events
//! and checkpoints, so its commits stay one transaction of one store.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::event::RecordedEvent;
use crate::table::{TableQuery, TableSpec, Value};
use crate::view::StoredView;
use crate::view_manager::{
    Checkpoint, Commit, ParkedInstance, ProjectionRecord, SkippedEvent, Slot, ViewError,
    ViewManager,
};

/// The projections named in `routed` are kept by `other`; every other one by `main`.
pub struct RoutedViews<A, B> {
    main: Arc<A>,
    other: Arc<B>,
    routed: HashSet<String>,
    /// The tables of routed projections, learnt as they are prepared, so that a query of a
    /// table goes where its projection writes it.
    other_tables: Mutex<HashSet<&'static str>>,
}

impl<A, B> RoutedViews<A, B> {
    /// `main` for every projection but those in `routed`, which `other` keeps.
    pub fn new(
        main: Arc<A>,
        other: Arc<B>,
        routed: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            main,
            other,
            routed: routed.into_iter().map(Into::into).collect(),
            other_tables: Mutex::new(HashSet::new()),
        }
    }

    /// The manager of every projection not routed.
    pub fn main(&self) -> &Arc<A> {
        &self.main
    }

    /// The manager of the routed projections.
    pub fn other(&self) -> &Arc<B> {
        &self.other
    }

    /// Whether `projection` is kept by [`RoutedViews::other`].
    pub fn routes(&self, projection: &str) -> bool {
        self.routed.contains(projection)
    }

    fn learn(&self, tables: &[&'static TableSpec]) {
        let mut known = self.other_tables.lock().unwrap_or_else(PoisonError::into_inner);
        known.extend(tables.iter().map(|spec| spec.name));
    }

    fn keeps_table(&self, table: &TableSpec) -> bool {
        self.other_tables.lock().unwrap_or_else(PoisonError::into_inner).contains(table.name)
    }
}

/// Runs `$call` on the manager that keeps `$projection`.
macro_rules! routed {
    ($self:ident, $projection:expr, $manager:ident => $call:expr) => {
        if $self.routes($projection) {
            let $manager = &$self.other;
            $call.await
        } else {
            let $manager = &$self.main;
            $call.await
        }
    };
}

impl<A: ViewManager, B: ViewManager> ViewManager for RoutedViews<A, B> {
    async fn prepare(
        &self,
        projection: &str,
        tables: &[&'static TableSpec],
        version: u32,
    ) -> Result<u32, ViewError> {
        if self.routes(projection) {
            self.learn(tables);
        }
        routed!(self, projection, m => m.prepare(projection, tables, version))
    }

    async fn load<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        slot: Slot,
        ids: &[String],
    ) -> Result<HashMap<String, StoredView<V>>, ViewError> {
        routed!(self, projection, m => m.load(projection, slot, ids))
    }

    async fn get<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        id: &str,
    ) -> Result<Option<StoredView<V>>, ViewError> {
        routed!(self, projection, m => m.get(projection, id))
    }

    async fn checkpoint(&self, projection: &str, slot: Slot) -> Result<Checkpoint, ViewError> {
        routed!(self, projection, m => m.checkpoint(projection, slot))
    }

    async fn commit<V: Serialize + Send + Sync + 'static>(
        &self,
        projection: &str,
        slot: Slot,
        commit: Commit<V>,
    ) -> Result<(), ViewError> {
        routed!(self, projection, m => m.commit(projection, slot, commit))
    }

    async fn parked(&self, projection: &str, slot: Slot) -> Result<Vec<ParkedInstance>, ViewError> {
        routed!(self, projection, m => m.parked(projection, slot))
    }

    async fn parked_events(
        &self,
        projection: &str,
        slot: Slot,
        id: &str,
    ) -> Result<Vec<RecordedEvent>, ViewError> {
        routed!(self, projection, m => m.parked_events(projection, slot, id))
    }

    async fn skipped(&self, projection: &str) -> Result<Vec<SkippedEvent>, ViewError> {
        routed!(self, projection, m => m.skipped(projection))
    }

    async fn record(&self, projection: &str) -> Result<ProjectionRecord, ViewError> {
        routed!(self, projection, m => m.record(projection))
    }

    async fn select(
        &self,
        table: &'static TableSpec,
        query: &TableQuery,
    ) -> Result<Vec<Vec<Value>>, ViewError> {
        if self.keeps_table(table) {
            self.other.select(table, query).await
        } else {
            self.main.select(table, query).await
        }
    }

    async fn begin_rebuild(
        &self,
        projection: &str,
        tables: &[&'static TableSpec],
        version: u32,
        started_at: DateTime<Utc>,
    ) -> Result<Checkpoint, ViewError> {
        if self.routes(projection) {
            self.learn(tables);
        }
        routed!(self, projection, m => m.begin_rebuild(projection, tables, version, started_at))
    }

    async fn fail_rebuild(
        &self,
        projection: &str,
        at: Checkpoint,
        error: &str,
    ) -> Result<(), ViewError> {
        routed!(self, projection, m => m.fail_rebuild(projection, at, error))
    }

    async fn finish_rebuild(
        &self,
        projection: &str,
        tables: &[&'static TableSpec],
        rebuilt: Checkpoint,
        live: Checkpoint,
    ) -> Result<Checkpoint, ViewError> {
        routed!(self, projection, m => m.finish_rebuild(projection, tables, rebuilt, live))
    }
}
