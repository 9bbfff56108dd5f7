//! Read models: a [`View`] is the state of one view instance, a [`ViewLocator`] says which
//! instances an event touches, and a [`ViewManager`] stores instances together with the
//! projection's checkpoint.
//!
//! The manager's [`ViewManager::commit`] is the exactly-once point: the changed instances and
//! the new checkpoint are written in one transaction, and only if the stored checkpoint still
//! equals the batch's starting point (a fence against a second runner of the same projection).

use std::collections::HashMap;
use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::event::Envelope;
use crate::stream::Position;

/// The state of one view instance, folded from the events located to it.
pub trait View<E>: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Folds one event into the view.
    fn apply(&mut self, event: &Envelope<E>);
}

/// Maps an event to the ids of the view instances it touches (none, one or several).
pub trait ViewLocator<E>: Send + Sync + 'static {
    /// Appends to `ids` the view ids `event` touches.
    fn locate(&self, event: &Envelope<E>, ids: &mut Vec<String>);
}

impl<E, F> ViewLocator<E> for F
where
    F: Fn(&Envelope<E>, &mut Vec<String>) + Send + Sync + 'static,
{
    fn locate(&self, event: &Envelope<E>, ids: &mut Vec<String>) {
        self(event, ids)
    }
}

/// A view instance with the position of the last event applied to it. Events at or below
/// that position are never applied again, which keeps stores without transactions
/// exactly-once too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredView<V> {
    /// The instance's state.
    pub view: V,
    /// The position of the last event applied to it.
    pub position: Position,
}

/// Why a view manager operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The stored checkpoint moved since the batch began: another runner owns the
    /// projection. Nothing was written.
    #[error(
        "checkpoint of projection {projection} is {actual}, not {expected}: another runner owns it"
    )]
    Fenced {
        /// The projection.
        projection: String,
        /// The checkpoint the batch started from.
        expected: Position,
        /// The checkpoint found.
        actual: Position,
    },
    /// A view could not be encoded or decoded.
    #[error("view {projection}/{id} does not (de)serialize: {source}")]
    Codec {
        /// The projection.
        projection: String,
        /// The view id.
        id: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The backend failed.
    #[error("view store backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A view instance encoded for storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedView {
    /// The view id.
    pub id: String,
    /// The view's JSON.
    pub data: Vec<u8>,
    /// The position of the last event applied to it.
    pub position: Position,
}

/// Encodes every view of a commit, before anything is written: a view that does not
/// serialize fails the whole commit. Every backend stores views as this JSON.
pub fn encode_views<V: Serialize>(
    projection: &str,
    views: Vec<(String, StoredView<V>)>,
) -> Result<Vec<EncodedView>, ViewError> {
    views
        .into_iter()
        .map(|(id, stored)| match serde_json::to_vec(&stored.view) {
            Ok(data) => Ok(EncodedView { id, data, position: stored.position }),
            Err(source) => Err(ViewError::Codec { projection: projection.to_owned(), id, source }),
        })
        .collect()
}

/// Decodes a stored view of `projection`.
pub fn decode_view<V: DeserializeOwned>(
    projection: &str,
    id: &str,
    data: &[u8],
    position: Position,
) -> Result<StoredView<V>, ViewError> {
    let view = serde_json::from_slice(data).map_err(|source| ViewError::Codec {
        projection: projection.to_owned(),
        id: id.to_owned(),
        source,
    })?;
    Ok(StoredView { view, position })
}

/// Stores view instances and projection checkpoints.
pub trait ViewManager: Send + Sync + 'static {
    /// The stored instances among `ids` of `projection`; missing ids are absent from the map.
    fn load<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<HashMap<String, StoredView<V>>, ViewError>> + Send;

    /// The stored instance `id` of `projection`, for queries.
    fn get<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<StoredView<V>>, ViewError>> + Send;

    /// The position up to which `projection` has applied events (`Position::START` if never).
    fn checkpoint(
        &self,
        projection: &str,
    ) -> impl Future<Output = Result<Position, ViewError>> + Send;

    /// Saves `views` and moves the checkpoint from `from` to `to`, in one transaction, if the
    /// stored checkpoint is still `from`; otherwise writes nothing and fails with
    /// [`ViewError::Fenced`].
    fn commit<V: Serialize + Send + Sync + 'static>(
        &self,
        projection: &str,
        from: Position,
        to: Position,
        views: Vec<(String, StoredView<V>)>,
    ) -> impl Future<Output = Result<(), ViewError>> + Send;
}
