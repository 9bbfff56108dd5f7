//! [`DyingViews`]: a view manager whose commits fail as a process killed between two steps
//! would leave them, for tests of what survives such a death.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata::table::{TableQuery, TableSpec, Value};
use strata::{
    Checkpoint, Commit, ParkedInstance, ProjectionRecord, RecordedEvent, SkippedEvent, Slot,
    StoredView, ViewError, ViewManager,
};

/// Which commits fail.
#[derive(Debug, Default)]
struct Death {
    /// Commits that still succeed; `None` for no limit.
    commits_left: Option<u64>,
    /// The next commits of one projection that fail, and how many.
    failing: Option<(String, u32)>,
    /// How long commits take to land, if they land late.
    late: Option<std::time::Duration>,
}

/// Wraps a view manager; every operation goes to it, except commits that [`die_after`]
/// or [`fail_next`] make fail (with [`ViewError::Backend`], writing nothing), and commits
/// that [`land_late`](DyingViews::land_late) delays.
///
/// [`die_after`]: DyingViews::die_after
/// [`fail_next`]: DyingViews::fail_next
pub struct DyingViews<M> {
    inner: Arc<M>,
    death: Mutex<Death>,
}

impl<M> DyingViews<M> {
    /// `inner` (shared, so that a test can look at what survived), failing nothing yet.
    pub fn new(inner: Arc<M>) -> Self {
        Self { inner, death: Mutex::new(Death::default()) }
    }

    /// `commits` more commits succeed, then every commit fails: a process that died.
    pub fn die_after(&self, commits: u64) {
        self.death().commits_left = Some(commits);
    }

    /// The next `times` commits of `projection` fail: a process that died after its batch
    /// acted and before its commit, `times` times over.
    pub fn fail_next(&self, projection: &str, times: u32) {
        self.death().failing = Some((projection.to_owned(), times));
    }

    /// Every commit lands `delay` after it is sent, even if the runner that sent it has
    /// died meanwhile: a request already on its way when the process was killed.
    pub fn land_late(&self, delay: std::time::Duration) {
        self.death().late = Some(delay);
    }

    /// How many of the failures [`fail_next`](DyingViews::fail_next) asked for are still to
    /// come.
    pub fn failures_left(&self) -> u32 {
        self.death().failing.as_ref().map_or(0, |(_, times)| *times)
    }

    fn death(&self) -> std::sync::MutexGuard<'_, Death> {
        self.death.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether this commit of `projection` fails, counting it.
    fn dies(&self, projection: &str) -> bool {
        let mut death = self.death();
        if let Some((failing, times)) = death.failing.as_mut()
            && failing == projection
            && *times > 0
        {
            *times -= 1;
            return true;
        }
        match death.commits_left.as_mut() {
            Some(0) => true,
            Some(left) => {
                *left -= 1;
                false
            }
            None => false,
        }
    }
}

impl<M: ViewManager> ViewManager for DyingViews<M> {
    async fn prepare(
        &self,
        projection: &str,
        tables: &[&'static TableSpec],
        version: u32,
    ) -> Result<u32, ViewError> {
        self.inner.prepare(projection, tables, version).await
    }

    async fn load<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        slot: Slot,
        ids: &[String],
    ) -> Result<HashMap<String, StoredView<V>>, ViewError> {
        self.inner.load(projection, slot, ids).await
    }

    async fn get<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        id: &str,
    ) -> Result<Option<StoredView<V>>, ViewError> {
        self.inner.get(projection, id).await
    }

    async fn checkpoint(&self, projection: &str, slot: Slot) -> Result<Checkpoint, ViewError> {
        self.inner.checkpoint(projection, slot).await
    }

    async fn commit<V: Serialize + Send + Sync + 'static>(
        &self,
        projection: &str,
        slot: Slot,
        commit: Commit<V>,
    ) -> Result<(), ViewError> {
        if self.dies(projection) {
            return Err(ViewError::Backend("the process died before committing".into()));
        }
        let late = self.death().late;
        let Some(delay) = late else { return self.inner.commit(projection, slot, commit).await };
        let (inner, projection) = (self.inner.clone(), projection.to_owned());
        let on_the_wire = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            inner.commit(&projection, slot, commit).await
        });
        on_the_wire.await.unwrap_or_else(|error| Err(ViewError::Backend(Box::new(error))))
    }

    async fn parked(&self, projection: &str, slot: Slot) -> Result<Vec<ParkedInstance>, ViewError> {
        self.inner.parked(projection, slot).await
    }

    async fn parked_events(
        &self,
        projection: &str,
        slot: Slot,
        id: &str,
    ) -> Result<Vec<RecordedEvent>, ViewError> {
        self.inner.parked_events(projection, slot, id).await
    }

    async fn skipped(&self, projection: &str) -> Result<Vec<SkippedEvent>, ViewError> {
        self.inner.skipped(projection).await
    }

    async fn record(&self, projection: &str) -> Result<ProjectionRecord, ViewError> {
        self.inner.record(projection).await
    }

    async fn select(
        &self,
        table: &'static TableSpec,
        query: &TableQuery,
    ) -> Result<Vec<Vec<Value>>, ViewError> {
        self.inner.select(table, query).await
    }

    async fn begin_rebuild(
        &self,
        projection: &str,
        tables: &[&'static TableSpec],
        version: u32,
        started_at: DateTime<Utc>,
    ) -> Result<Checkpoint, ViewError> {
        self.inner.begin_rebuild(projection, tables, version, started_at).await
    }

    async fn fail_rebuild(
        &self,
        projection: &str,
        at: Checkpoint,
        error: &str,
    ) -> Result<(), ViewError> {
        self.inner.fail_rebuild(projection, at, error).await
    }

    async fn finish_rebuild(
        &self,
        projection: &str,
        tables: &[&'static TableSpec],
        rebuilt: Checkpoint,
        live: Checkpoint,
    ) -> Result<Checkpoint, ViewError> {
        self.inner.finish_rebuild(projection, tables, rebuilt, live).await
    }
}
