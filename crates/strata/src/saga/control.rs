//! What operators see of a saga, with its types erased: how many instances are in each
//! state, and one instance's state, deadline and history.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use tokio::task::JoinHandle;

use super::instance::SagaInstance;
use super::{Saga, deadlines};
use crate::event::DomainEvent;
use crate::projection::{BoxFuture, ProjectionHandle};
use crate::table::TableQuery;
use crate::view_manager::{ViewError, ViewManager};

/// How many instances of a saga are in each state, as `GET /admin/sagas` shows it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SagaCounts {
    /// The saga.
    pub name: String,
    /// Instances at work.
    pub active: i64,
    /// Instances done as planned.
    pub completed: i64,
    /// Instances that ended without reaching their goal.
    pub failed: i64,
    /// Instances parked on an event they could not take.
    pub parked: u64,
}

trait Operations: Send + Sync {
    fn counts(&self) -> BoxFuture<'_, Result<SagaCounts, ViewError>>;
    fn instance(&self, id: String) -> BoxFuture<'_, Result<Option<serde_json::Value>, ViewError>>;
}

/// [`Operations`] of saga `G` on view store `M`: the saga's type says where its instances
/// and tables are; nothing of the running saga is needed.
struct Control<G, M, E> {
    views: Arc<M>,
    _types: PhantomData<fn() -> (G, E)>,
}

impl<G, M, E> Control<G, M, E>
where
    E: DomainEvent,
    G: Saga<E>,
    M: ViewManager,
{
    async fn counts_now(&self) -> Result<SagaCounts, ViewError> {
        let rows = self.views.select(&G::TABLES.states, &TableQuery::default()).await?;
        let mut counts = SagaCounts { name: G::NAME.to_owned(), ..SagaCounts::default() };
        for row in rows {
            let (Some(status), Some(instances)) =
                (row.first().and_then(|v| v.as_text()), row.get(1).and_then(|v| v.as_integer()))
            else {
                continue;
            };
            match status {
                "active" => counts.active = instances,
                "completed" => counts.completed = instances,
                "failed" => counts.failed = instances,
                _ => {}
            }
        }
        counts.parked = self.views.record(G::NAME).await?.parked;
        Ok(counts)
    }

    async fn instance_now(&self, id: String) -> Result<Option<serde_json::Value>, ViewError> {
        let Some(stored) = self.views.get::<SagaInstance<G, E>>(G::NAME, &id).await? else {
            return Ok(None);
        };
        let instance = stored.view;
        let mut report = serde_json::Map::new();
        report.insert(G::ID_FIELD.to_owned(), id.into());
        report.extend(G::report(&instance.state));
        report.insert("status".to_owned(), instance.status.as_str().into());
        let deadline = instance.next_deadline().map(|deadline| deadline.due);
        report.insert("deadline".to_owned(), serde_json::to_value(deadline).unwrap_or_default());
        let history = serde_json::to_value(&instance.history).unwrap_or_default();
        report.insert("history".to_owned(), history);
        let parked = stored.parked.map(
            |parking| serde_json::json!({"position": parking.position, "error": parking.error}),
        );
        report.insert("parked".to_owned(), parked.unwrap_or_default());
        Ok(Some(report.into()))
    }
}

impl<G, M, E> Operations for Control<G, M, E>
where
    E: DomainEvent,
    G: Saga<E>,
    M: ViewManager,
{
    fn counts(&self) -> BoxFuture<'_, Result<SagaCounts, ViewError>> {
        Box::pin(self.counts_now())
    }

    fn instance(&self, id: String) -> BoxFuture<'_, Result<Option<serde_json::Value>, ViewError>> {
        Box::pin(self.instance_now(id))
    }
}

/// A running saga: its counts and instances for operators, and its deadline task (stopped
/// when the handle is dropped).
pub struct SagaHandle {
    name: &'static str,
    operations: Arc<dyn Operations>,
    deadlines: JoinHandle<()>,
}

impl SagaHandle {
    pub(crate) fn start<E, G, M>(
        saga: Arc<G>,
        views: Arc<M>,
        projection: &ProjectionHandle,
        node_id: String,
    ) -> Self
    where
        E: DomainEvent,
        G: Saga<E>,
        M: ViewManager,
    {
        let owner = projection.owner_changes();
        let deadlines =
            tokio::spawn(deadlines::run::<E, G, M>(saga, views.clone(), owner, node_id));
        let operations = Arc::new(Control::<G, M, E> { views, _types: PhantomData });
        Self { name: G::NAME, operations, deadlines }
    }

    /// The saga's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// How many instances are in each state.
    pub async fn counts(&self) -> Result<SagaCounts, ViewError> {
        self.operations.counts().await
    }

    /// Instance `id` as the admin API shows it: its id, the saga's report of its state,
    /// `status`, `deadline` (the next, or null), `history` and `parked`.
    pub async fn instance(&self, id: &str) -> Result<Option<serde_json::Value>, ViewError> {
        self.operations.instance(id.to_owned()).await
    }

    /// Stops sending deadlines (the saga's projection stops with its own handle).
    pub fn stop(&self) {
        self.deadlines.abort();
    }
}

impl Drop for SagaHandle {
    fn drop(&mut self) {
        self.deadlines.abort();
    }
}

/// The sagas a node runs, by name.
#[derive(Default)]
pub struct Sagas {
    handles: Vec<SagaHandle>,
}

impl Sagas {
    /// No sagas.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a running saga.
    pub fn push(&mut self, handle: SagaHandle) {
        self.handles.push(handle);
    }

    /// The saga called `name`.
    pub fn get(&self, name: &str) -> Option<&SagaHandle> {
        self.handles.iter().find(|handle| handle.name == name)
    }

    /// Every saga's counts, in the order they were added.
    pub async fn counts(&self) -> Result<Vec<SagaCounts>, ViewError> {
        let mut counts = Vec::with_capacity(self.handles.len());
        for handle in &self.handles {
            counts.push(handle.counts().await?);
        }
        Ok(counts)
    }

    /// Stops every saga's deadlines.
    pub fn stop(&self) {
        self.handles.iter().for_each(SagaHandle::stop);
    }
}
