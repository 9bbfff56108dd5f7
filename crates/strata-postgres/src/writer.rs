//! The event store's write path: one task per store that owns one connection and commits
//! appends in groups, with positions that are gap-free across every node.
//!
//! **Why readers never skip an event.** Every group's transaction first takes the
//! transaction-level advisory lock [`PgDatabase::append_lock_key`], then reads
//! `max(position)` and numbers its events from there (head + 1, head + 2, …). PostgreSQL
//! releases a transaction's locks only after the transaction is committed and visible to
//! new snapshots (or rolled back), and in READ COMMITTED each statement takes a fresh
//! snapshot, so the next holder's `max(position)` already sees every committed event:
//! positions are dense, and position P + 1 is only drawn after P is committed (or given
//! back by a rollback). Hence a reader whose snapshot shows P + 1 also shows every position
//! below it, and `WHERE position > cursor` can never step over an event that commits later.
//! This holds across processes because the lock is in the database, not in this process.
//!
//! **Group commit.** The task waits for the first pending request, then takes every request
//! already waiting (up to [`MAX_GROUP`], never sleeping for more), and writes them in one
//! transaction: one lock, one fsync and one `NOTIFY` for the whole group, which pays for the
//! serialization. The expected versions of all the group's streams are known before any
//! position is drawn, so a losing append leaves no hole; the winners' events go in as one
//! `INSERT … SELECT FROM unnest(…)`. Each caller gets its own answer: a conflicting append
//! fails alone. If that one insert hits a unique violation (a duplicate event id), the
//! transaction is rolled back and the group written again with one savepoint per request,
//! so again only the offending request fails. If the transaction itself fails, every
//! request of the group gets an error and nothing of it was written. When the connection
//! dies after `COMMIT` was sent, the group's events are looked up where it put them
//! (position, id, stream and version: an id alone could be an earlier append's, since a
//! retry reuses ids), on a fresh connection under the lock: all found, the group is
//! answered as written; not, as not written, or as [`StoreError::OutcomeUnknown`] when the
//! group may still reach the server (below) or the lookup fails. A retry of an unknown
//! outcome finds its events, as a duplicate id or a version conflict, rather than writing
//! them twice.
//!
//! **Version cache.** Reading the versions of a group's streams is the costliest query. The
//! writer remembers the versions its own commits left and the head after them; when the
//! head found under the lock is still that head, nobody else has committed since (any
//! commit moves the dense head) and only unknown streams are read. The transaction is
//! explicitly READ COMMITTED, whatever the server's default, because the argument above
//! needs a fresh snapshot per statement.
//!
//! **One round trip.** The lock is held until the commit, so every round trip inside a
//! group lengthens the serial part of every append. When the writer remembers every stream
//! of a group (or the request expects a new stream), it does not read first: it plans on
//! its memory and sends the whole transaction at once, with an insert that goes in only if
//! the head under the lock is still the one it remembers. A moved head or an existing
//! "new" stream writes nothing, and the group is then written as above. Such a group's
//! COMMIT goes out with its first byte, before the server has taken its lock, so a lookup
//! that does not find it settles nothing (the transaction may still be on its way): its
//! callers are told [`StoreError::OutcomeUnknown`] unless the lookup finds it, where a group
//! written step by step is known not to be written when it is cut off before its COMMIT or
//! not found after it.
//!
//! **Notification.** Inside the transaction, the group sends `pg_notify('strata_events',
//! '<schema>:<head>')`; PostgreSQL delivers it only at commit, so a follower woken by it
//! finds the rows. The task publishes the new head on its own watch channel after `COMMIT`.
//!
//! **Idempotency keys.** A request may claim a key: the key is inserted (`ON CONFLICT DO
//! NOTHING`) in the group's transaction, before its events. When every claim of a group
//! goes in, the group goes on as above; when one was taken already, the group is written
//! request by request, and a request whose key is taken writes nothing and gets the key's
//! record.
//!
//! `synchronous_commit` stays on (the writer turns it back on if the server's default is
//! off): an answered append is on disk (invariant 5).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata::{
    AppendOutcome, CommandOutcome, ExpectedVersion, GroupCommitCounters, IdempotencyRecord,
    Position, StoreError, StreamId, Version,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, Statement};
use uuid::Uuid;

use crate::database::{PgDatabase, connect};
use crate::error::{DbError, from_bigint, to_bigint, violated_unique_constraint};

/// The most requests one group commits. It bounds the time the first caller of a group
/// waits behind the others and the size of one transaction; under heavier load the next
/// group starts right away.
pub(crate) const MAX_GROUP: usize = 1000;

const LOCK: &str = "SELECT pg_advisory_xact_lock($1)";
pub(crate) const HEAD: &str = "SELECT COALESCE(max(position), 0) FROM strata_events";
/// The current version of each listed stream, zero for a new one; one index probe each.
const VERSIONS: &str = "SELECT s.aggregate_type, s.aggregate_id, \
     COALESCE((SELECT max(e.version) FROM strata_events e \
               WHERE e.aggregate_type = s.aggregate_type AND e.aggregate_id = s.aggregate_id), 0) \
     FROM unnest($1::text[], $2::text[]) AS s (aggregate_type, aggregate_id)";
const VERSION: &str = "SELECT COALESCE(max(version), 0) FROM strata_events \
     WHERE aggregate_type = $1 AND aggregate_id = $2";
const INSERT: &str = "INSERT INTO strata_events (position, aggregate_type, aggregate_id, \
     version, event_type, schema_version, payload, event_id, correlation_id, causation_id, \
     user_id, recorded_at) \
     SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], \
     $6::bigint[], $7::bytea[], $8::uuid[], $9::text[], $10::text[], $11::text[], $12::bigint[])";
/// [`INSERT`] guarded by the head the group was planned at: it inserts every row or none.
fn insert_at_head() -> String {
    format!("{INSERT} WHERE ({HEAD}) = $13")
}
/// The group's notification, sent only if its last position exists.
const NOTIFY_WRITTEN: &str = "SELECT pg_notify($1, $2) \
     WHERE EXISTS (SELECT 1 FROM strata_events WHERE position = $3)";
const STORED_ID: &str = "SELECT event_id FROM strata_events WHERE event_id = ANY($1) LIMIT 1";
/// How many of a group's events are stored exactly as its outcomes report them (position,
/// id, stream and version), one primary-key probe each. An event id alone does not tell: a
/// retry reuses ids, so it may find an earlier append of the same event.
const STORED_AS_PLANNED: &str = "SELECT count(*) FROM unnest($1::bigint[], $2::uuid[], \
     $3::text[], $4::text[], $5::bigint[]) AS w (position, event_id, aggregate_type, \
     aggregate_id, version), LATERAL (SELECT 1 FROM strata_events e WHERE e.position = \
     w.position AND e.event_id = w.event_id AND e.aggregate_type = w.aggregate_type AND \
     e.aggregate_id = w.aggregate_id AND e.version = w.version LIMIT 1) AS found";
const NOTIFY: &str = "SELECT pg_notify($1, $2)";
const CLAIM_KEYS: &str = "INSERT INTO strata_idempotency (key, fingerprint, aggregate_type, \
     aggregate_id, version, position) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], \
     $6::bigint[]) ON CONFLICT (key) DO NOTHING";
pub(crate) const SELECT_KEY: &str = "SELECT fingerprint, aggregate_type, aggregate_id, version, \
     position, answer FROM strata_idempotency WHERE key = $1";

const EVENT_ID_CONSTRAINT: &str = "strata_events_event_id_key";
const STREAM_VERSION_CONSTRAINT: &str = "strata_events_stream_version_key";

/// An event encoded for its row, prepared by the caller so that the writer only writes.
pub(crate) struct EventRow {
    pub(crate) event_id: Uuid,
    pub(crate) event_type: String,
    pub(crate) schema_version: i64,
    pub(crate) payload: Vec<u8>,
    pub(crate) correlation_id: String,
    pub(crate) causation_id: Option<String>,
    pub(crate) user_id: Option<String>,
    /// Unix time in nanoseconds.
    pub(crate) recorded_at: i64,
}

/// One caller's append and where to send its answer.
pub(crate) struct AppendRequest {
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    /// Never empty, and free of repeated ids: the caller checks both before sending.
    pub(crate) events: Vec<EventRow>,
    /// The idempotency key to record in the same transaction, and the request's digest.
    pub(crate) claim: Option<(String, String)>,
    pub(crate) answer: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// Starts the writer task. It runs until every sender of `requests` is dropped, finishing
/// the requests already sent.
pub(crate) fn spawn(
    database: &PgDatabase,
    published: Arc<watch::Sender<Position>>,
    metrics: Arc<GroupCommitCounters>,
    requests: mpsc::UnboundedReceiver<AppendRequest>,
) -> JoinHandle<()> {
    let writer = Writer {
        config: database.config().clone(),
        schema: database.schema().to_owned(),
        lock_key: database.append_lock_key(),
        connection: None,
        published,
        metrics,
        versions: VersionCache::default(),
    };
    tokio::spawn(writer.run(requests))
}

struct Writer {
    config: Config,
    schema: String,
    lock_key: i64,
    /// The writer's own connection, opened on first use and again after it breaks.
    connection: Option<Connection>,
    /// Where this store's followers learn of new commits.
    published: Arc<watch::Sender<Position>>,
    metrics: Arc<GroupCommitCounters>,
    /// Stream versions remembered from this writer's own commits.
    versions: VersionCache,
}

/// The writer's connection and its prepared statements.
struct Connection {
    client: Client,
    statements: Statements,
}

struct Statements {
    lock: Statement,
    head: Statement,
    versions: Statement,
    version: Statement,
    insert: Statement,
    insert_at_head: Statement,
    stored_id: Statement,
    stored_as_planned: Statement,
    notify: Statement,
    notify_written: Statement,
    claim_keys: Statement,
    select_key: Statement,
}

impl Connection {
    async fn open(config: &Config) -> Result<Self, tokio_postgres::Error> {
        // The driver task ends by itself when `client` is dropped.
        let (client, _driver) = connect(config).await?;
        // An answered append must be on disk (invariant 5). A server or role that turned
        // synchronous commit off would break that silently; stronger settings (waiting for
        // standbys) are kept.
        let setting: String = client.query_one("SHOW synchronous_commit", &[]).await?.get(0);
        if setting == "off" {
            client.batch_execute("SET synchronous_commit = on").await?;
        }
        let statements = Statements {
            lock: client.prepare(LOCK).await?,
            head: client.prepare(HEAD).await?,
            versions: client.prepare(VERSIONS).await?,
            version: client.prepare(VERSION).await?,
            insert: client.prepare(INSERT).await?,
            insert_at_head: client.prepare(&insert_at_head()).await?,
            stored_id: client.prepare(STORED_ID).await?,
            stored_as_planned: client.prepare(STORED_AS_PLANNED).await?,
            notify: client.prepare(NOTIFY).await?,
            notify_written: client.prepare(NOTIFY_WRITTEN).await?,
            claim_keys: client.prepare(CLAIM_KEYS).await?,
            select_key: client.prepare(SELECT_KEY).await?,
        };
        Ok(Self { client, statements })
    }
}

/// Why a whole group failed: its transaction did not commit.
#[derive(Debug, thiserror::Error)]
#[error("the group commit holding this append failed, so it was not written: {0}")]
struct GroupFailed(#[source] Arc<DbError>);

/// How long one group may take, connecting included, before its callers are answered.
const GROUP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long finding out whether an interrupted commit happened may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(1);

impl Writer {
    async fn run(mut self, mut requests: mpsc::UnboundedReceiver<AppendRequest>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        // Waits for the first request, then takes what is already waiting without sleeping
        // for more: a lone request commits at once, and under load groups grow by themselves.
        while requests.recv_many(&mut group, MAX_GROUP).await > 0 {
            if self.commit_group(&mut group).await == Server::Silent {
                // What queued behind a group the server never answered was never sent: it is
                // answered now, not after another full timeout each.
                while let Ok(request) = requests.try_recv() {
                    let silent = Arc::new(DbError::TimedOut(GROUP_TIMEOUT));
                    let failed = StoreError::Backend(Box::new(GroupFailed(silent)));
                    let _ = request.answer.send(Err(failed));
                }
            }
        }
        tracing::debug!(schema = %self.schema, "event store writer stopped: the store was dropped");
    }

    /// Writes and commits `group`, answers every request in it and empties it; says whether
    /// the server stopped answering.
    async fn commit_group(&mut self, group: &mut Vec<AppendRequest>) -> Server {
        let started = Instant::now();
        let mut committing = None;
        let attempt = async {
            let connection = connected(&mut self.connection, &self.config).await?;
            write_group(
                connection,
                &mut self.versions,
                group,
                self.lock_key,
                &self.schema,
                &mut committing,
            )
            .await
        };
        // A server that hangs (stopped, or cut off without a reset) answers nothing and
        // errs nothing: without a bound, every command would wait for it.
        let mut result = match tokio::time::timeout(GROUP_TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => {
                self.connection = None;
                Err(DbError::TimedOut(GROUP_TIMEOUT))
            }
        };
        let mut in_doubt = None;
        if let (Err(error), Some(sent)) = (&result, committing) {
            // COMMIT was sent and not answered: it may have happened. Its events, where it
            // put them, tell.
            self.connection = None;
            self.versions.forget();
            tracing::warn!(%error, "a group commit was interrupted; finding out whether it happened");
            let found =
                tokio::time::timeout(RESOLVE_TIMEOUT, self.stored(group, &sent.outcomes)).await;
            match found {
                Ok(Ok(true)) => result = Ok((sent.outcomes, Some(sent.head))),
                // Not there, and nothing of the group can arrive any more: its COMMIT left
                // only after the server had answered the group's lock.
                Ok(Ok(false)) if !sent.whole => {}
                // Not there yet: a group sent whole may still be on its way to the server.
                Ok(Ok(false)) => in_doubt = Some(Doubt::MayStillLand),
                Ok(Err(unknown)) => in_doubt = Some(Doubt::LookupFailed(Arc::new(unknown))),
                Err(_) => {
                    let silent = DbError::TimedOut(RESOLVE_TIMEOUT);
                    in_doubt = Some(Doubt::LookupFailed(Arc::new(silent)));
                }
            }
        }
        let silent = matches!(result, Err(DbError::TimedOut(_)))
            || matches!(&in_doubt, Some(Doubt::LookupFailed(unknown)) if matches!(**unknown, DbError::TimedOut(_)));
        match result {
            Ok((outcomes, head)) => {
                let events: u64 = outcomes
                    .iter()
                    .flatten()
                    .map(|outcome| outcome.last_position.0 - outcome.first_position.0 + 1)
                    .sum();
                self.metrics.record(group.len(), events, started.elapsed());
                if let Some(head) = head {
                    // After the commit, never before: a follower woken by this must find
                    // the rows. Other nodes' commits may already have moved it further.
                    crate::listener::raise(&self.published, head);
                }
                for (request, outcome) in group.drain(..).zip(outcomes) {
                    // A caller that stopped waiting has nobody to tell.
                    let _ = request.answer.send(outcome);
                }
            }
            Err(error) => {
                tracing::error!(%error, requests = group.len(), "event store group commit failed");
                self.metrics.record_failure(&error);
                self.versions.forget();
                if self.connection.as_ref().is_none_or(|c| c.client.is_closed()) {
                    // Reconnect on the next group rather than here: if the server is down,
                    // callers get an error at once instead of waiting on a retry loop.
                    self.connection = None;
                }
                let error = Arc::new(error);
                for request in group.drain(..) {
                    let error = Arc::clone(&error);
                    let failed = match &in_doubt {
                        Some(doubt) => doubt.answer(error),
                        None => StoreError::Backend(Box::new(GroupFailed(error))),
                    };
                    let _ = request.answer.send(Err(failed));
                }
            }
        }
        if silent { Server::Silent } else { Server::Answering }
    }

    /// Whether every event `outcomes` report for `group` is stored as reported, asked on a
    /// fresh connection (which becomes the writer's) under the append lock: an interrupted
    /// transaction that had the lock holds it until it has committed or aborted, so once the
    /// lock is had, what it stored is final. (Without it, a commit still waiting on a slow
    /// fsync or standby would be missed, and then land.)
    async fn stored(
        &mut self,
        group: &[AppendRequest],
        outcomes: &Outcomes,
    ) -> Result<bool, DbError> {
        let rows = Columns::written(group, outcomes);
        let connection = connected(&mut self.connection, &self.config).await?;
        let (client, statements) = (&connection.client, &connection.statements);
        let lock_parameters: [&(dyn ToSql + Sync); 1] = [&self.lock_key];
        let row_parameters: [&(dyn ToSql + Sync); 5] = [
            &rows.position,
            &rows.event_id,
            &rows.aggregate_type,
            &rows.aggregate_id,
            &rows.version,
        ];
        let (_, _, found) = tokio::try_join!(
            client.batch_execute("BEGIN"),
            client.execute(&statements.lock, &lock_parameters),
            client.query_one(&statements.stored_as_planned, &row_parameters),
        )?;
        client.batch_execute("ROLLBACK").await?;
        let found: i64 = found.try_get(0)?;
        Ok(!rows.position.is_empty() && found == rows.position.len() as i64)
    }
}

/// Whether the server answered the last group at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Answering,
    Silent,
}

/// A group whose COMMIT was sent: what it answers if the commit happened.
struct Committing {
    outcomes: Outcomes,
    head: Position,
    /// Sent in one round trip ([`write_predicted`]): its COMMIT left before the server had
    /// answered anything, so the whole transaction may still be on its way.
    whole: bool,
}

/// Why an interrupted group's outcome is not known.
enum Doubt {
    /// Asking whether it committed failed.
    LookupFailed(Arc<DbError>),
    /// It is not stored now, but it was sent whole and may still arrive.
    MayStillLand,
}

impl Doubt {
    /// A caller's answer for a group interrupted by `error`.
    fn answer(&self, error: Arc<DbError>) -> StoreError {
        match self {
            Doubt::LookupFailed(unknown) => {
                StoreError::OutcomeUnknown(Box::new(InDoubt(error, Arc::clone(unknown))))
            }
            Doubt::MayStillLand => StoreError::OutcomeUnknown(Box::new(MayStillLand(error))),
        }
    }
}

/// Why an append's outcome is unknown: the commit was interrupted, then finding out failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}; asking whether it committed failed too: {1}")]
struct InDoubt(#[source] Arc<DbError>, Arc<DbError>);

/// Why an append's outcome is unknown: it was sent whole and interrupted, and it is not
/// stored yet.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0}; the append was sent in one piece and is not stored yet, but may still arrive at the \
     server and commit"
)]
struct MayStillLand(#[source] Arc<DbError>);

/// The writer's connection, opened if it is missing or broken.
async fn connected<'a>(
    connection: &'a mut Option<Connection>,
    config: &Config,
) -> Result<&'a mut Connection, tokio_postgres::Error> {
    let open = match connection.take() {
        Some(open) if !open.client.is_closed() => open,
        _ => Connection::open(config).await?,
    };
    Ok(connection.insert(open))
}

/// The events of the group that passed their checks, column by column, for one `unnest`
/// insert.
#[derive(Default)]
struct Columns {
    position: Vec<i64>,
    aggregate_type: Vec<String>,
    aggregate_id: Vec<String>,
    version: Vec<i64>,
    event_type: Vec<String>,
    schema_version: Vec<i64>,
    payload: Vec<Vec<u8>>,
    event_id: Vec<Uuid>,
    correlation_id: Vec<String>,
    causation_id: Vec<Option<String>>,
    user_id: Vec<Option<String>>,
    recorded_at: Vec<i64>,
}

impl Columns {
    fn push(&mut self, stream: &StreamId, position: u64, version: u64, event: &EventRow) {
        self.position.push(to_bigint(position));
        self.aggregate_type.push(stream.aggregate_type.clone());
        self.aggregate_id.push(stream.id.clone());
        self.version.push(to_bigint(version));
        self.event_type.push(event.event_type.clone());
        self.schema_version.push(event.schema_version);
        self.payload.push(event.payload.clone());
        self.event_id.push(event.event_id);
        self.correlation_id.push(event.correlation_id.clone());
        self.causation_id.push(event.causation_id.clone());
        self.user_id.push(event.user_id.clone());
        self.recorded_at.push(event.recorded_at);
    }

    fn is_empty(&self) -> bool {
        self.position.is_empty()
    }

    /// The rows of every request of `group` that `outcomes` report written, where they put
    /// them: what an interrupted group's lookup looks for.
    fn written(group: &[AppendRequest], outcomes: &Outcomes) -> Self {
        let mut columns = Self::default();
        for (request, outcome) in group.iter().zip(outcomes) {
            let Ok(outcome) = outcome else { continue };
            let first_version = outcome.version.0 + 1 - request.events.len() as u64;
            for (offset, event) in (0..).zip(&request.events) {
                let (position, version) =
                    (outcome.first_position.0 + offset, first_version + offset);
                columns.push(&request.stream, position, version, event);
            }
        }
        columns
    }

    fn parameters(&self) -> [&(dyn ToSql + Sync); 12] {
        [
            &self.position,
            &self.aggregate_type,
            &self.aggregate_id,
            &self.version,
            &self.event_type,
            &self.schema_version,
            &self.payload,
            &self.event_id,
            &self.correlation_id,
            &self.causation_id,
            &self.user_id,
            &self.recorded_at,
        ]
    }

    async fn insert(
        &self,
        client: &Client,
        statement: &Statement,
    ) -> Result<u64, tokio_postgres::Error> {
        client.execute(statement, &self.parameters()).await
    }

    /// Inserts every row if the log's head is still `head`, else none; returns how many.
    async fn insert_at_head(
        &self,
        client: &Client,
        statement: &Statement,
        head: &i64,
    ) -> Result<u64, tokio_postgres::Error> {
        let [a, b, c, d, e, f, g, h, i, j, k, l] = self.parameters();
        client.execute(statement, &[a, b, c, d, e, f, g, h, i, j, k, l, head]).await
    }
}

/// The log as the group sees it while planning: the head and each stream's version.
#[derive(Clone)]
struct Tally {
    head: u64,
    versions: HashMap<StreamId, u64>,
}

impl Tally {
    /// Checks `request` against the tally and, if it passes, numbers its events into
    /// `columns` and advances the tally. A refusal changes nothing.
    fn plan(
        &mut self,
        request: &AppendRequest,
        columns: &mut Columns,
    ) -> Result<AppendOutcome, StoreError> {
        let actual = Version(self.versions.get(&request.stream).copied().unwrap_or(0));
        // Checked before drawing positions, so a losing append leaves no hole (DESIGN 4.2).
        if !request.expected.matches(actual) {
            return Err(StoreError::Conflict {
                stream: request.stream.clone(),
                expected: request.expected,
                actual,
            });
        }
        let first = self.head + 1;
        for (offset, event) in (0..).zip(&request.events) {
            columns.push(&request.stream, first + offset, actual.0 + 1 + offset, event);
        }
        let count = request.events.len() as u64;
        self.head += count;
        self.versions.insert(request.stream.clone(), actual.0 + count);
        Ok(AppendOutcome {
            version: Version(actual.0 + count),
            first_position: Position(first),
            last_position: Position(self.head),
        })
    }
}

/// The stream versions this writer knows, and the head they are true at.
///
/// Reading the versions of a group's streams is the costliest query of a group. When the
/// head found under the lock equals the head this writer left after its last commit,
/// nobody else has committed since (positions are dense, so any commit moves the head),
/// and the remembered versions are exact: only streams not remembered are read. When
/// another node has written, the group's streams are read again and everything else
/// remembered is forgotten (it would otherwise pass for current at the new head).
#[derive(Default)]
struct VersionCache {
    head: Option<u64>,
    versions: HashMap<StreamId, u64>,
}

/// How many stream versions the cache keeps before it starts over; bounds its memory.
const CACHED_STREAMS: usize = 100_000;

impl VersionCache {
    fn forget(&mut self) {
        self.head = None;
        self.versions.clear();
    }

    /// The log as this writer's last commit left it, with every stream of `group` in it,
    /// if that is known without asking: each stream is remembered, or its request expects
    /// no stream (so its version is 0, or the insert will hit the stream's first version).
    /// Requests that claim an idempotency key take the long way.
    fn predict(&self, group: &[AppendRequest]) -> Option<Tally> {
        let head = self.head?;
        let mut versions = HashMap::with_capacity(group.len());
        for request in group {
            if request.claim.is_some() {
                return None;
            }
            let version = match self.versions.get(&request.stream) {
                Some(version) => *version,
                None if request.expected == ExpectedVersion::NoStream => 0,
                None => return None,
            };
            versions.entry(request.stream.clone()).or_insert(version);
        }
        Some(Tally { head, versions })
    }

    /// Remembers what a committed (or ended) group left. `current` says whether the
    /// versions remembered before are still exact.
    fn remember(&mut self, tally: Tally, current: bool) {
        // Versions remembered from before another node's commit may be stale, and the new
        // head would vouch for them: only this group's streams, read under the lock, are
        // kept.
        if !current || self.versions.len() > CACHED_STREAMS {
            self.versions.clear();
        }
        self.head = Some(tally.head);
        self.versions.extend(tally.versions);
    }
}

type Outcomes = Vec<Result<AppendOutcome, StoreError>>;

/// How a group is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// All events in one insert; a unique violation fails the whole attempt.
    Together,
    /// One savepoint per request, so that only the offending request fails.
    OneByOne,
}

/// What one attempt at a group came to.
enum Attempt {
    /// Committed (or, if nothing passed its checks, ended): each request's outcome and
    /// the new head if anything was written.
    Done(Outcomes, Option<Position>),
    /// The insert of [`Mode::Together`] hit a unique violation (a duplicate event id); the
    /// transaction was rolled back and the group must be written one by one.
    Split,
    /// What [`write_predicted`] assumed was not so (another node wrote, or a stream
    /// expected to be new exists); nothing was written, and the group must be read first.
    Missed,
}

/// Writes every request of `group` in one transaction. An error means the transaction
/// failed and nothing was written.
async fn write_group(
    connection: &mut Connection,
    cache: &mut VersionCache,
    group: &[AppendRequest],
    lock_key: i64,
    schema: &str,
    committing: &mut Option<Committing>,
) -> Result<(Outcomes, Option<Position>), DbError> {
    // First in one round trip if the writer knows enough ([`write_predicted`]).
    let mut mode = None;
    loop {
        let attempt = match mode {
            None => write_predicted(connection, cache, group, lock_key, schema, committing).await,
            Some(mode) => {
                attempt_group(connection, cache, group, lock_key, schema, mode, committing).await
            }
        };
        let attempt = match attempt {
            Ok(attempt) => attempt,
            Err(error) => {
                cache.forget();
                // Best effort: after a failed statement the transaction must end before the
                // next group; if the connection is gone, the server ended it already.
                let _ = connection.client.batch_execute("ROLLBACK").await;
                return Err(error);
            }
        };
        match attempt {
            Attempt::Done(outcomes, head) => return Ok((outcomes, head)),
            Attempt::Split => mode = Some(Mode::OneByOne),
            Attempt::Missed => mode = Some(Mode::Together),
        }
    }
}

/// One transaction for `group`. Statements whose order alone matters are pipelined: sent
/// together and answered together, which is safe because the server still runs them one
/// after the other, each with its own snapshot.
async fn attempt_group(
    connection: &Connection,
    cache: &mut VersionCache,
    group: &[AppendRequest],
    lock_key: i64,
    schema: &str,
    mode: Mode,
    committing: &mut Option<Committing>,
) -> Result<Attempt, DbError> {
    let client = &connection.client;
    let statements = &connection.statements;

    let mut streams: Vec<&StreamId> = group.iter().map(|request| &request.stream).collect();
    streams.sort_unstable();
    streams.dedup();
    let (hits, misses): (Vec<&StreamId>, Vec<&StreamId>) =
        streams.into_iter().partition(|stream| cache.versions.contains_key(*stream));

    // One round trip: begin, take the append lock, then (under it: see the module
    // documentation) read the head and the versions of the streams not remembered.
    let (types, ids) = stream_columns(&misses);
    let lock_parameters: [&(dyn ToSql + Sync); 1] = [&lock_key];
    let version_parameters: [&(dyn ToSql + Sync); 2] = [&types, &ids];
    let (_, _, head, read) = tokio::try_join!(
        client.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED"),
        client.execute(&statements.lock, &lock_parameters),
        client.query_one(&statements.head, &[]),
        client.query(&statements.versions, &version_parameters),
    )?;
    let head = from_bigint(head.get(0), "position")?;
    let mut versions = HashMap::with_capacity(hits.len() + misses.len());
    collect_versions(&read, &mut versions)?;
    let current = cache.head == Some(head);
    if current {
        for stream in hits {
            if let Some(version) = cache.versions.get(stream) {
                versions.insert(stream.clone(), *version);
            }
        }
    } else if !hits.is_empty() {
        // Another node committed since this writer last did: what it remembers may be stale.
        let (types, ids) = stream_columns(&hits);
        let read = client.query(&statements.versions, &[&types, &ids]).await?;
        collect_versions(&read, &mut versions)?;
    }
    let start = Tally { head, versions };

    let (outcomes, tally) = match mode {
        Mode::Together => {
            let mut tally = start.clone();
            let mut columns = Columns::default();
            let outcomes: Outcomes =
                group.iter().map(|request| tally.plan(request, &mut columns)).collect();
            let mut claims = Claims::default();
            for (request, outcome) in group.iter().zip(&outcomes) {
                if let (Some(claim), Ok(outcome)) = (&request.claim, outcome) {
                    claims.push(claim, &request.stream, outcome);
                }
            }
            if !claims.is_empty() {
                let claimed = claims.insert(client, &statements.claim_keys).await?;
                if claimed != claims.len() {
                    tracing::debug!("an idempotency key was taken; writing request by request");
                    client.batch_execute("ROLLBACK").await?;
                    return Ok(Attempt::Split);
                }
            }
            if !columns.is_empty() {
                match columns.insert(client, &statements.insert).await {
                    Ok(_) => {}
                    Err(error) if violated_unique_constraint(&error).is_some() => {
                        tracing::debug!(%error, "group insert refused; writing request by request");
                        client.batch_execute("ROLLBACK").await?;
                        return Ok(Attempt::Split);
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            (outcomes, tally)
        }
        Mode::OneByOne => write_one_by_one(connection, group, start.clone()).await?,
    };

    let new_head = (tally.head != start.head).then_some(Position(tally.head));
    let outcomes = match new_head {
        Some(new_head) => {
            // One notification per group, delivered by PostgreSQL at commit.
            let payload = format!("{schema}:{}", new_head.0);
            client.execute(&statements.notify, &[&PgDatabase::NOTIFY_CHANNEL, &payload]).await?;
            // From here until COMMIT answers, a failure leaves the outcome unknown.
            *committing = Some(Committing { outcomes, head: new_head, whole: false });
            client.batch_execute("COMMIT").await?;
            committing.take().map(|sent| sent.outcomes).unwrap_or_default()
        }
        // Nothing written: nothing to make durable.
        None => {
            client.batch_execute("ROLLBACK").await?;
            outcomes
        }
    };

    cache.remember(tally, current);
    Ok(Attempt::Done(outcomes, new_head))
}

/// The whole transaction in one round trip, for a group whose streams' versions and head
/// this writer knows ([`VersionCache::predict`]): begin, take the append lock, insert the
/// rows numbered from the remembered head if that is still the head, notify if they went
/// in, commit. The lock is taken before the insert's guard reads the head, so the argument
/// of the module documentation holds as for a group that reads first. When the guard finds
/// another head (another node wrote), nothing is inserted; when a stream expected to be new
/// exists, its first version's unique key refuses the insert and the transaction ends
/// rolled back. Either way the group is then written the long way. Refusals planned here
/// stand only once the guard has confirmed the versions they were checked against.
async fn write_predicted(
    connection: &Connection,
    cache: &mut VersionCache,
    group: &[AppendRequest],
    lock_key: i64,
    schema: &str,
    committing: &mut Option<Committing>,
) -> Result<Attempt, DbError> {
    let Some(start) = cache.predict(group) else { return Ok(Attempt::Missed) };
    let mut tally = start.clone();
    let mut columns = Columns::default();
    let outcomes: Outcomes =
        group.iter().map(|request| tally.plan(request, &mut columns)).collect();
    // A group refused whole is confirmed by reading: there is nothing to commit.
    if columns.is_empty() {
        return Ok(Attempt::Missed);
    }
    let client = &connection.client;
    let statements = &connection.statements;
    let new_head = Position(tally.head);
    let (expected_head, last) = (to_bigint(start.head), to_bigint(new_head.0));
    let payload = format!("{schema}:{}", new_head.0);
    let lock_parameters: [&(dyn ToSql + Sync); 1] = [&lock_key];
    let notify_parameters: [&(dyn ToSql + Sync); 3] =
        [&PgDatabase::NOTIFY_CHANNEL, &payload, &last];
    let rows = columns.position.len() as u64;
    // From here until COMMIT answers, a failure leaves the outcome unknown.
    *committing = Some(Committing { outcomes, head: new_head, whole: true });
    let (begun, locked, inserted, notified, committed) = tokio::join!(
        biased;
        client.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED"),
        client.execute(&statements.lock, &lock_parameters),
        columns.insert_at_head(client, &statements.insert_at_head, &expected_head),
        client.execute(&statements.notify_written, &notify_parameters),
        client.batch_execute("COMMIT"),
    );
    // COMMIT answered: whatever happened is known. (It ends a transaction that an earlier
    // statement aborted as a rollback, without an error of its own.)
    committed?;
    let outcomes = committing.take().map(|sent| sent.outcomes).unwrap_or_default();
    begun?;
    locked?;
    match inserted {
        Ok(count) if count == rows => {
            notified?;
            cache.remember(tally, true);
            Ok(Attempt::Done(outcomes, Some(new_head)))
        }
        // The head moved: what this writer remembers is stale.
        Ok(_) => {
            cache.forget();
            Ok(Attempt::Missed)
        }
        Err(error) if violated_unique_constraint(&error).is_some() => Ok(Attempt::Missed),
        Err(error) => Err(error.into()),
    }
}

fn stream_columns<'a>(streams: &[&'a StreamId]) -> (Vec<&'a str>, Vec<&'a str>) {
    streams.iter().map(|stream| (stream.aggregate_type.as_str(), stream.id.as_str())).unzip()
}

fn collect_versions(
    rows: &[tokio_postgres::Row],
    versions: &mut HashMap<StreamId, u64>,
) -> Result<(), DbError> {
    for row in rows {
        let stream = StreamId::new(row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?);
        versions.insert(stream, from_bigint(row.try_get(2)?, "version")?);
    }
    Ok(())
}

/// The slow path after a unique violation: each request in its own savepoint, so only the
/// offending one fails. Positions and versions are planned request by request, because a
/// refused request does not take the numbers the fast path gave it.
async fn write_one_by_one(
    connection: &Connection,
    group: &[AppendRequest],
    mut tally: Tally,
) -> Result<(Outcomes, Tally), DbError> {
    let client = &connection.client;
    let mut outcomes = Vec::with_capacity(group.len());
    for request in group {
        let mut planned = tally.clone();
        let mut columns = Columns::default();
        let outcome = match planned.plan(request, &mut columns) {
            Err(refusal) => Err(refusal),
            Ok(outcome) => {
                client.batch_execute("SAVEPOINT strata_request").await?;
                if let Some(claim) = &request.claim {
                    let mut claims = Claims::default();
                    claims.push(claim, &request.stream, &outcome);
                    if claims.insert(client, &connection.statements.claim_keys).await? == 0 {
                        client.batch_execute("ROLLBACK TO SAVEPOINT strata_request").await?;
                        outcomes.push(Err(taken(connection, &claim.0).await?));
                        continue;
                    }
                }
                match columns.insert(client, &connection.statements.insert).await {
                    Ok(_) => {
                        client.batch_execute("RELEASE SAVEPOINT strata_request").await?;
                        tally = planned;
                        Ok(outcome)
                    }
                    Err(error) => {
                        let constraint = violated_unique_constraint(&error).map(str::to_owned);
                        client.batch_execute("ROLLBACK TO SAVEPOINT strata_request").await?;
                        Err(refusal(connection, request, constraint, error).await?)
                    }
                }
            }
        };
        outcomes.push(outcome);
    }
    Ok((outcomes, tally))
}

/// The idempotency keys claimed by requests of a group, column by column.
#[derive(Default)]
struct Claims {
    key: Vec<String>,
    fingerprint: Vec<String>,
    aggregate_type: Vec<String>,
    aggregate_id: Vec<String>,
    version: Vec<i64>,
    position: Vec<i64>,
}

impl Claims {
    fn push(
        &mut self,
        (key, fingerprint): &(String, String),
        stream: &StreamId,
        at: &AppendOutcome,
    ) {
        self.key.push(key.clone());
        self.fingerprint.push(fingerprint.clone());
        self.aggregate_type.push(stream.aggregate_type.clone());
        self.aggregate_id.push(stream.id.clone());
        self.version.push(to_bigint(at.version.0));
        self.position.push(to_bigint(at.last_position.0));
    }

    fn len(&self) -> u64 {
        self.key.len() as u64
    }

    fn is_empty(&self) -> bool {
        self.key.is_empty()
    }

    /// Inserts the keys not taken yet; returns how many went in.
    async fn insert(&self, client: &Client, statement: &Statement) -> Result<u64, DbError> {
        let parameters: [&(dyn ToSql + Sync); 6] = [
            &self.key,
            &self.fingerprint,
            &self.aggregate_type,
            &self.aggregate_id,
            &self.version,
            &self.position,
        ];
        Ok(client.execute(statement, &parameters).await?)
    }
}

/// The caller's error for a request whose key has a record already.
async fn taken(connection: &Connection, key: &str) -> Result<StoreError, DbError> {
    match connection.client.query_opt(&connection.statements.select_key, &[&key]).await? {
        Some(row) => {
            Ok(StoreError::KeyClaimed { key: key.to_owned(), record: Box::new(read_record(&row)?) })
        }
        // Expired by another node between the insert that found it and this read: this
        // request alone fails, and its retry finds the key free.
        None => Ok(StoreError::Backend(
            format!("idempotency key {key:?} expired while this append claimed it; try again")
                .into(),
        )),
    }
}

/// An idempotency record from a row of [`SELECT_KEY`].
pub(crate) fn read_record(row: &tokio_postgres::Row) -> Result<IdempotencyRecord, DbError> {
    let aggregate_type: Option<String> = row.try_get(1)?;
    let aggregate_id: Option<String> = row.try_get(2)?;
    let version: Option<i64> = row.try_get(3)?;
    let position: Option<i64> = row.try_get(4)?;
    let appended = match (aggregate_type, aggregate_id, version, position) {
        (Some(aggregate_type), Some(id), Some(version), Some(position)) => Some(CommandOutcome {
            stream: StreamId::new(aggregate_type, id),
            version: Version(from_bigint(version, "version")?),
            position: Some(Position(from_bigint(position, "position")?)),
            replayed: false,
        }),
        _ => None,
    };
    Ok(IdempotencyRecord { fingerprint: row.try_get(0)?, appended, answer: row.try_get(5)? })
}

/// The caller's error for a request whose insert hit `constraint`; any other failure fails
/// the group.
async fn refusal(
    connection: &Connection,
    request: &AppendRequest,
    constraint: Option<String>,
    error: tokio_postgres::Error,
) -> Result<StoreError, DbError> {
    let (client, statements) = (&connection.client, &connection.statements);
    match constraint.as_deref() {
        Some(EVENT_ID_CONSTRAINT) => {
            let ids: Vec<Uuid> = request.events.iter().map(|event| event.event_id).collect();
            match client.query_opt(&statements.stored_id, &[&ids]).await? {
                Some(row) => Ok(StoreError::DuplicateEventId(row.try_get(0)?)),
                None => Err(error.into()),
            }
        }
        // Only a writer that skipped the append lock can get here: it wrote this stream
        // after the group read its version. Report what it left, as any conflict does.
        Some(STREAM_VERSION_CONSTRAINT) => {
            let stream = &request.stream;
            let row = client
                .query_one(&statements.version, &[&stream.aggregate_type, &stream.id])
                .await?;
            let actual = Version(from_bigint(row.try_get(0)?, "version")?);
            Ok(StoreError::Conflict { stream: stream.clone(), expected: request.expected, actual })
        }
        // A position taken by someone else means the append lock was not respected; that
        // is not one request's fault.
        _ => Err(error.into()),
    }
}
