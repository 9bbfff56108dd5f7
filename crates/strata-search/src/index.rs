//! [`SearchIndex`]: the tantivy index, its documents and checkpoint, and queries on it;
//! [`SearchProjection`]: the core's `LocalView` that keeps it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use strata::{LocalView, Position, RecordedEvent};
use tantivy::collector::{Count, DocSetCollector, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, Query, QueryParser, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, STORED, STRING, Schema, TEXT, Value};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::documents::{Documents, Indexer};

/// Memory the index writer may use before it writes a segment out.
const WRITER_MEMORY: usize = 32 * 1024 * 1024;
/// Separates a document's kind from its id in its key (ids never hold it).
const KEY_SEPARATOR: char = '\u{1f}';

/// Why the index failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The query text does not parse.
    #[error("the query {query:?} does not parse: {reason}")]
    Query {
        /// The query as given.
        query: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The index files could not be read or written.
    #[error("search index in {path}: {reason}")]
    Index {
        /// The index directory.
        path: PathBuf,
        /// What tantivy said.
        reason: String,
    },
}

/// A ranked match.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// The document's id.
    pub id: String,
    /// Its BM25 score for the query.
    pub score: f32,
    /// The document, as JSON.
    pub body: String,
}

/// The answer to a query: how many documents match, and the best of them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hits {
    /// Every matching document, not only those returned.
    pub total: u64,
    /// The best matches, best first.
    pub hits: Vec<Hit>,
}

#[derive(Clone, Copy)]
struct Fields {
    key: Field,
    kind: Field,
    id: Field,
    text: Field,
    body: Field,
}

/// An embedded full-text index in one directory, with the position of the last event its
/// documents reflect.
pub struct SearchIndex {
    path: PathBuf,
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter<TantivyDocument>>,
    fields: Fields,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex").field("path", &self.path).finish()
    }
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let fields = Fields {
        key: builder.add_text_field("key", STRING),
        kind: builder.add_text_field("kind", STRING),
        id: builder.add_text_field("id", STORED),
        text: builder.add_text_field("text", TEXT),
        body: builder.add_text_field("body", STORED),
    };
    (builder.build(), fields)
}

fn key(kind: &str, id: &str) -> String {
    format!("{kind}{KEY_SEPARATOR}{id}")
}

impl SearchIndex {
    /// Opens the index in `dir`, creating it (and `dir`) when missing. One process at a
    /// time: tantivy keeps a lock file while the index is open for writing.
    pub fn open(dir: &Path) -> Result<Self, SearchError> {
        let failed =
            |reason: String| SearchError::Index { path: dir.to_owned(), reason: reason.clone() };
        std::fs::create_dir_all(dir).map_err(|error| failed(error.to_string()))?;
        let directory = MmapDirectory::open(dir).map_err(|error| failed(error.to_string()))?;
        let (schema, fields) = schema();
        let index = Index::open_or_create(directory, schema).map_err(|e| failed(e.to_string()))?;
        let writer = index
            .writer_with_num_threads(1, WRITER_MEMORY)
            .map_err(|error| failed(error.to_string()))?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|error: tantivy::TantivyError| failed(error.to_string()))?;
        Ok(Self { path: dir.to_owned(), index, reader, writer: Mutex::new(writer), fields })
    }

    fn failed(&self, error: impl std::fmt::Display) -> SearchError {
        SearchError::Index { path: self.path.clone(), reason: error.to_string() }
    }

    fn writer(&self) -> MutexGuard<'_, IndexWriter<TantivyDocument>> {
        self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The position of the last event whose changes are committed.
    pub fn checkpoint(&self) -> Result<Position, SearchError> {
        let metas = self.index.load_metas().map_err(|error| self.failed(error))?;
        match metas.payload {
            None => Ok(Position::START),
            Some(payload) => payload.parse().map(Position).map_err(|_| {
                self.failed(format!("the last commit's checkpoint {payload:?} is not a position"))
            }),
        }
    }

    /// The committed body of document `id` of `kind`.
    pub(crate) fn body(&self, kind: &str, id: &str) -> Result<Option<String>, SearchError> {
        let searcher = self.reader.searcher();
        let query = TermQuery::new(
            Term::from_field_text(self.fields.key, &key(kind, id)),
            IndexRecordOption::Basic,
        );
        // A key names one live document, so nothing is ranked: a scored search computed
        // BM25 statistics for every lookup, a cost that showed in profiles of serve.
        let found =
            searcher.search(&query, &DocSetCollector).map_err(|error| self.failed(error))?;
        let Some(address) = found.into_iter().next() else { return Ok(None) };
        let document: TantivyDocument =
            searcher.doc(address).map_err(|error| self.failed(error))?;
        Ok(document.get_first(self.fields.body).and_then(|v| v.as_str()).map(str::to_owned))
    }

    /// The documents of `kind` that match `query` (tantivy's query language: words are
    /// alternatives ranked by BM25, `+word` is required, `"two words"` a phrase), at most
    /// `limit` of them, best first, and how many match in all.
    pub fn search(&self, kind: &str, query: &str, limit: usize) -> Result<Hits, SearchError> {
        let parser = QueryParser::for_index(&self.index, vec![self.fields.text]);
        let parsed = parser.parse_query(query).map_err(|error| SearchError::Query {
            query: query.to_owned(),
            reason: error.to_string(),
        })?;
        let of_kind =
            TermQuery::new(Term::from_field_text(self.fields.kind, kind), IndexRecordOption::Basic);
        let query = BooleanQuery::new(vec![
            (Occur::Must, parsed),
            (Occur::Must, Box::new(ConstScoreQuery::new(Box::new(of_kind), 0.0)) as Box<dyn Query>),
        ]);
        let searcher = self.reader.searcher();
        let (best, total) = searcher
            .search(&query, &(TopDocs::with_limit(limit.max(1)).order_by_score(), Count))
            .map_err(|error| self.failed(error))?;
        let mut hits = Vec::with_capacity(best.len());
        for (score, address) in best.into_iter().take(limit) {
            let document: TantivyDocument =
                searcher.doc(address).map_err(|error| self.failed(error))?;
            let text = |field| document.get_first(field).and_then(|v| v.as_str()).unwrap_or("");
            hits.push(Hit {
                id: text(self.fields.id).to_owned(),
                score,
                body: text(self.fields.body).to_owned(),
            });
        }
        Ok(Hits { total: total as u64, hits })
    }

    /// Indexes `events` with `indexer` and commits the changed documents with the last
    /// event's position as the checkpoint: all of it, or (on an error) none of it.
    pub fn apply<I: Indexer + ?Sized>(
        &self,
        indexer: &I,
        events: &[RecordedEvent],
    ) -> Result<(), String> {
        let Some(last) = events.last().map(|event| event.position) else { return Ok(()) };
        // The documents a batch reads must be the committed ones: a reader left behind by a
        // failed reload would have the batch build on older bodies.
        self.reader.reload().map_err(|error| self.failed(error).to_string())?;
        let mut documents = Documents::new(self);
        for event in events {
            indexer.index(event, &mut documents).map_err(|error| {
                format!("cannot index the event at position {}: {error}", event.position)
            })?;
        }
        // Encoded before the writer is touched, so that a document that does not encode
        // leaves nothing of the batch behind.
        let mut changed = Vec::with_capacity(documents.pending.len());
        for ((kind, id), pending) in documents.pending {
            let body = pending.body().map_err(|error| {
                format!(
                    "document {kind}/{id} of the batch ending at position {last} does not \
                         encode: {error}"
                )
            })?;
            changed.push((kind, id, body, pending.text));
        }
        let mut writer = self.writer();
        let written = (|| -> tantivy::Result<()> {
            for (kind, id, body, text) in changed {
                let key = key(&kind, &id);
                writer.delete_term(Term::from_field_text(self.fields.key, &key));
                let mut document = TantivyDocument::default();
                document.add_text(self.fields.key, &key);
                document.add_text(self.fields.kind, &kind);
                document.add_text(self.fields.id, &id);
                document.add_text(self.fields.body, &body);
                if let Some(text) = &text {
                    document.add_text(self.fields.text, text);
                }
                writer.add_document(document)?;
            }
            let mut commit = writer.prepare_commit()?;
            commit.set_payload(&last.0.to_string());
            commit.commit()?;
            Ok(())
        })();
        if let Err(error) = written {
            // Whatever was added stays out of the next commit.
            let _ = writer.rollback();
            return Err(self.failed(error).to_string());
        }
        drop(writer);
        self.reader.reload().map_err(|error| self.failed(error).to_string())
    }
}

/// The core's `LocalView` for a [`SearchIndex`]: each batch of events one commit, through
/// the application's [`Indexer`]. The index's work runs on the blocking pool.
pub struct SearchProjection<I> {
    index: Arc<SearchIndex>,
    indexer: Arc<I>,
}

impl<I: Indexer> SearchProjection<I> {
    /// Keeps `index` with `indexer`.
    pub fn new(index: Arc<SearchIndex>, indexer: I) -> Self {
        Self { index, indexer: Arc::new(indexer) }
    }
}

impl<I: Indexer> LocalView for SearchProjection<I> {
    async fn checkpoint(&self) -> Result<Position, String> {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.checkpoint().map_err(|error| error.to_string()))
            .await
            .map_err(|error| error.to_string())?
    }

    async fn commit(&self, events: Vec<RecordedEvent>) -> Result<(), String> {
        let (index, indexer) = (self.index.clone(), self.indexer.clone());
        tokio::task::spawn_blocking(move || index.apply(indexer.as_ref(), &events))
            .await
            .map_err(|error| error.to_string())?
    }
}

#[cfg(test)]
mod tests {
    use strata::{EventMetadata, StreamId, Version};

    use super::*;

    /// Indexes each event's payload (one word) as the text of the document named by its
    /// stream, its words kept as a list; refuses a payload of "poison".
    struct Words;

    impl Indexer for Words {
        fn index(
            &self,
            event: &RecordedEvent,
            documents: &mut Documents<'_>,
        ) -> Result<(), String> {
            let word = String::from_utf8(event.payload.clone()).map_err(|e| e.to_string())?;
            if word == "poison" {
                return Err("poison".to_owned());
            }
            let id = &event.stream.id;
            let mut seen: Vec<String> = documents.get("thing", id)?.unwrap_or_default();
            seen.push(word);
            let text = seen.join(" ");
            documents.put("thing", id, seen.clone(), Some(text));
            // Read back as another type, the batch's document is what will be stored.
            let read: Option<serde_json::Value> = documents.get("thing", id)?;
            if read != Some(serde_json::json!(seen)) {
                return Err(format!("read back {read:?}"));
            }
            Ok(())
        }
    }

    fn event(position: u64, id: &str, word: &str) -> RecordedEvent {
        RecordedEvent {
            stream: StreamId::new("thing", id),
            version: Version(1),
            position: Position(position),
            event_type: "Said".to_owned(),
            schema_version: 1,
            payload: word.as_bytes().to_vec(),
            metadata: EventMetadata::new("test", None),
        }
    }

    fn ids(index: &SearchIndex, query: &str) -> Vec<String> {
        let mut ids: Vec<String> =
            index.search("thing", query, 10).unwrap().hits.into_iter().map(|hit| hit.id).collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_batch_commits_with_its_checkpoint_or_not_at_all_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path()).unwrap();
        assert_eq!(index.checkpoint().unwrap(), Position::START);
        index
            .apply(&Words, &[event(1, "a", "red"), event(2, "b", "red"), event(3, "a", "blue")])
            .unwrap();
        assert_eq!(index.checkpoint().unwrap(), Position(3));
        assert_eq!(ids(&index, "red"), ["a", "b"]);
        assert_eq!(
            index.search("thing", "red", 10).unwrap().total,
            2,
            "a document is replaced, not added"
        );

        // A batch that fails part-way leaves nothing of itself, in this process or the next.
        let failing = [event(4, "c", "red"), event(5, "b", "green"), event(6, "c", "poison")];
        assert!(index.apply(&Words, &failing).is_err());
        assert_eq!((index.checkpoint().unwrap(), ids(&index, "green")), (Position(3), vec![]));
        drop(index);
        let index = SearchIndex::open(dir.path()).unwrap();
        assert_eq!(index.checkpoint().unwrap(), Position(3));
        assert_eq!(ids(&index, "red"), ["a", "b"]);
        index.apply(&Words, &[event(4, "c", "red"), event(5, "b", "green")]).unwrap();
        assert_eq!(index.checkpoint().unwrap(), Position(5));
        assert_eq!(ids(&index, "red"), ["a", "b", "c"]);
        assert_eq!(ids(&index, "green blue"), ["a", "b"]);
        // A third change builds on the second: the replaced first body is not found.
        index.apply(&Words, &[event(6, "b", "tan")]).unwrap();
        assert_eq!(ids(&index, "+green +tan"), ["b"]);
        assert!(matches!(index.search("thing", "\"unclosed", 10), Err(SearchError::Query { .. })));
        assert_eq!(index.search("other", "red", 10).unwrap().total, 0, "kinds stay apart");
    }

    #[test]
    fn a_document_read_as_another_type_within_its_batch_is_read_as_it_will_be_stored() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path()).unwrap();
        index.apply(&Words, &[event(1, "a", "red"), event(2, "a", "blue")]).unwrap();
        assert_eq!(index.body("thing", "a").unwrap().as_deref(), Some(r#"["red","blue"]"#));
    }
}
