//! What an application writes: an [`Indexer`] turning events into document changes, read
//! and written through [`Documents`].

use std::any::Any;
use std::collections::HashMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use strata::RecordedEvent;

use crate::index::SearchIndex;

/// Turns events into changes of documents. Written by the application, which knows its
/// events; called once per event, in log order.
pub trait Indexer: Send + Sync + 'static {
    /// Changes the documents `event` touches. An error stops the index at this event
    /// (nothing of its batch is committed) until the code can index it.
    fn index(&self, event: &RecordedEvent, documents: &mut Documents<'_>) -> Result<(), String>;
}

/// A document a batch changed, kept as the indexer's own value until the commit: an order
/// that ten events of a batch touch is encoded once, not ten times, and never decoded again.
pub(crate) struct Pending {
    document: Box<dyn Document>,
    pub(crate) text: Option<String>,
}

impl Pending {
    /// The body the index stores.
    pub(crate) fn body(&self) -> Result<String, serde_json::Error> {
        self.document.to_json()
    }
}

/// A typed document, encoded when it is committed.
trait Document: Send {
    fn as_any(&self) -> &dyn Any;
    fn to_json(&self) -> Result<String, serde_json::Error>;
}

impl<D: Serialize + Send + 'static> Document for D {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

/// The documents of the index as a batch sees them: what is committed, and the batch's own
/// changes, which are committed with its checkpoint.
pub struct Documents<'a> {
    index: &'a SearchIndex,
    pub(crate) pending: HashMap<(String, String), Pending>,
}

impl<'a> Documents<'a> {
    pub(crate) fn new(index: &'a SearchIndex) -> Self {
        Self { index, pending: HashMap::new() }
    }

    /// The document `id` of `kind`, as this batch left it, or as committed. A document this
    /// batch put comes back as the value put, so a document type's JSON must keep all it
    /// holds (no `#[serde(skip)]`): otherwise a batch would see more than a later one.
    pub fn get<D: DeserializeOwned + Clone + 'static>(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Option<D>, String> {
        let body =
            match self.pending.get(&(kind.to_owned(), id.to_owned())) {
                Some(pending) => match pending.document.as_any().downcast_ref::<D>() {
                    Some(document) => return Ok(Some(document.clone())),
                    // Put as another type: read as it will be committed.
                    None => Some(pending.body().map_err(|error| {
                        format!("document {kind}/{id} does not encode: {error}")
                    })?),
                },
                None => self.index.body(kind, id).map_err(|error| error.to_string())?,
            };
        body.map(|body| serde_json::from_str(&body))
            .transpose()
            .map_err(|error| format!("document {kind}/{id} does not decode: {error}"))
    }

    /// Replaces (or creates) document `id` of `kind`; `text` is what it is found by, and
    /// `None` keeps it out of searches (a document only looked up).
    pub fn put<D: Serialize + Send + 'static>(
        &mut self,
        kind: &str,
        id: &str,
        document: D,
        text: Option<String>,
    ) {
        let document = Box::new(document);
        self.pending.insert((kind.to_owned(), id.to_owned()), Pending { document, text });
    }
}
