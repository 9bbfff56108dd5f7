//! Full-text search for Strata: an embedded tantivy index that each node keeps from the log.
//!
//! A [`SearchIndex`] holds documents of several kinds (an application's orders, and the
//! customers and products it looks names up in), each a JSON document with the text it is
//! found by. An [`Indexer`], written by the application, turns each event into changes of
//! documents through [`Documents`]. [`SearchProjection`] is the core's `LocalView`: a batch
//! of events becomes one index commit whose payload is the batch's last position, so the
//! checkpoint and the documents are never apart, a crash loses or doubles nothing, and a
//! new node builds its index from the log. Queries are ranked by BM25.
//!
//! The crate depends on the core only and knows no domain.

mod documents;
mod index;

pub use documents::{Documents, Indexer};
pub use index::{Hit, Hits, SearchError, SearchIndex, SearchProjection};
