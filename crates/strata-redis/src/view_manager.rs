//! [`RedisViewManager`]: view instances as JSON strings, with their positions, parking,
//! waiting events, tables and checkpoints beside them (the layout is in `keys.rs`).
//!
//! Every change goes through one Lua script (`scripts.rs`), which Redis runs alone: the
//! script compares the stored checkpoint with the one the writer started from and writes
//! only if they are equal, so two runners, a retry and a rebuild can never both apply a
//! batch. Reads that must agree with each other (the views of one batch with their
//! positions and parking) are one `MULTI`/`EXEC`.
//!
//! Tables are one hash per table, and a query reads the whole hash and filters, orders and
//! pages it here ([`TableQuery::run`]): fine for the small tables a hot-read store holds;
//! large reports belong in a SQL view store.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata::table::{self, RowChange, TableQuery, TableSpec, Value};
use strata::{
    Checkpoint, Commit, EncodedCommit, ParkedInstance, Position, ProjectionRecord, RebuildRecord,
    RecordedEvent, SkippedEvent, Slot, StoredView, ViewError, ViewManager, decode_view,
    encode_commit,
};

use crate::codec::{self, Unreadable};
use crate::keys::{Keys, instance_field, instance_prefix};
use crate::scripts::{BEGIN_REBUILD, COMMIT, FAIL_REBUILD, FINISH_REBUILD, PREPARE};

/// The key prefix used unless one is given.
pub const DEFAULT_PREFIX: &str = "strata:";

/// How long connecting may take.
const CONNECT_BOUND: Duration = Duration::from_secs(3);
/// How long Redis may take to answer one command or script. A frozen server makes the call
/// fail (a projection shows `failed`, a query 503) rather than hang; a commit that did
/// happen is found by the fence when the batch is tried again.
const ANSWER_BOUND: Duration = Duration::from_secs(5);
/// The bound on a whole call, reconnecting included.
const CALL_BOUND: Duration = Duration::from_secs(10);

/// Why a [`RedisViewManager`] could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    /// The URL does not name a Redis server.
    #[error("{url} is not a Redis URL (redis://HOST:PORT[/DB]): {source}")]
    Url {
        /// The URL, without any password.
        url: String,
        /// What the client said.
        #[source]
        source: redis::RedisError,
    },
    /// The prefix cannot start keys.
    #[error("{0:?} is not a usable key prefix: 1 to 64 printable characters, no spaces or *?[]\\")]
    Prefix(String),
    /// The server did not answer.
    #[error("Redis at {url} does not answer: {source}")]
    Unreachable {
        /// The URL, without any password.
        url: String,
        /// What the client said.
        #[source]
        source: redis::RedisError,
    },
}

/// A [`ViewManager`] on Redis. Clones share one multiplexed connection, which reconnects
/// by itself after the server comes back.
#[derive(Clone)]
pub struct RedisViewManager {
    connection: ConnectionManager,
    keys: Keys,
}

impl std::fmt::Debug for RedisViewManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisViewManager").field("prefix", &self.keys.prefix()).finish()
    }
}

/// Checks a key prefix: 1 to 64 printable ASCII characters, no spaces, none of the glob
/// characters `*?[]\\` (so that tools can list a prefix's keys with `SCAN MATCH`).
pub fn check_prefix(prefix: &str) -> Result<(), RedisSetupError> {
    let plain = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix.chars().all(|c| c.is_ascii_graphic() && !"*?[]\\".contains(c));
    if plain { Ok(()) } else { Err(RedisSetupError::Prefix(prefix.to_owned())) }
}

/// `url` with any password replaced, for messages.
fn masked(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl RedisViewManager {
    /// Connects to `url` (`redis://HOST:PORT[/DB]`) and keeps every key under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, RedisSetupError> {
        check_prefix(prefix)?;
        let client = redis::Client::open(url)
            .map_err(|source| RedisSetupError::Url { url: masked(url), source })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_BOUND))
            .set_response_timeout(Some(ANSWER_BOUND))
            .set_number_of_retries(2);
        let connecting = ConnectionManager::new_with_config(client, config);
        let connection = match tokio::time::timeout(CALL_BOUND, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(source)) => {
                return Err(RedisSetupError::Unreachable { url: masked(url), source });
            }
            Err(_) => {
                let source = redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer in {CALL_BOUND:?}"),
                ));
                return Err(RedisSetupError::Unreachable { url: masked(url), source });
            }
        };
        Ok(Self { connection, keys: Keys::new(prefix) })
    }

    /// The prefix every key starts with.
    pub fn prefix(&self) -> &str {
        self.keys.prefix()
    }

    /// Deletes every key under this manager's prefix, for a benchmark or trial that used a
    /// prefix of its own; returns how many. Prefixes hold no glob characters, so the match
    /// takes nothing else.
    pub async fn delete_prefix(&self) -> Result<u64, ViewError> {
        let pattern = format!("{}*", self.keys.prefix());
        let mut cursor = 0_u64;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .call(async |mut c| {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if !keys.is_empty() {
                let count: u64 = self
                    .call(async |mut c| redis::cmd("UNLINK").arg(&keys).query_async(&mut c).await)
                    .await?;
                deleted += count;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// Runs `call` on the connection, bounded.
    async fn call<T, F>(&self, call: impl FnOnce(ConnectionManager) -> F) -> Result<T, ViewError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(CALL_BOUND, call(self.connection.clone())).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(ViewError::Backend(Box::new(error))),
            Err(_) => {
                Err(ViewError::Backend(format!("Redis did not answer in {CALL_BOUND:?}").into()))
            }
        }
    }

    /// The instances `ids` of `slot`, their positions and parking, in one `MULTI`/`EXEC`.
    async fn read_views<V: DeserializeOwned>(
        &self,
        projection: &str,
        slot: Slot,
        ids: &[String],
    ) -> Result<HashMap<String, StoredView<V>>, ViewError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let views: Vec<String> =
            ids.iter().map(|id| self.keys.view(projection, slot, id)).collect();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("MGET")
            .arg(&views)
            .cmd("HMGET")
            .arg(self.keys.positions(projection, slot))
            .arg(ids)
            .cmd("HMGET")
            .arg(self.keys.parking(projection, slot))
            .arg(ids);
        type Found = (Vec<Option<Vec<u8>>>, Vec<Option<u64>>, Vec<Option<String>>);
        let (data, positions, parking): Found =
            self.call(async |mut c| pipe.query_async(&mut c).await).await?;
        let mut found = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            let Some(Some(data)) = data.get(i) else { continue };
            let view = decode_view(projection, id, data)?;
            let position = Position(positions.get(i).copied().flatten().unwrap_or(0));
            let parked = match parking.get(i).cloned().flatten() {
                Some(text) => Some(codec::decode_parking(&text).map_err(corrupt)?),
                None => None,
            };
            found.insert(id.clone(), StoredView { view, position, parked });
        }
        Ok(found)
    }

    /// Reads the rows that `Add` changes sum onto, so that the script can write their totals.
    async fn rows_to_sum(
        &self,
        slot: Slot,
        rows: &[RowChange],
    ) -> Result<HashMap<&'static str, HashMap<Vec<Value>, Vec<Value>>>, ViewError> {
        let mut wanted: Vec<(&'static TableSpec, Vec<Value>)> = Vec::new();
        for change in rows {
            if let RowChange::Add { table, row } = change
                && !wanted
                    .iter()
                    .any(|(t, key)| t.name == table.name && key[..] == row[..table.key_columns])
            {
                wanted.push((table, row[..table.key_columns].to_vec()));
            }
        }
        let mut tables: HashMap<&'static str, HashMap<Vec<Value>, Vec<Value>>> = HashMap::new();
        if wanted.is_empty() {
            return Ok(tables);
        }
        let mut pipe = redis::pipe();
        for (spec, key) in &wanted {
            pipe.cmd("HGET").arg(self.keys.table(slot, spec.name)).arg(codec::encode_values(key));
        }
        let stored: Vec<Option<String>> =
            self.call(async |mut c| pipe.query_async(&mut c).await).await?;
        for ((spec, key), text) in wanted.into_iter().zip(stored) {
            let rows = tables.entry(spec.name).or_default();
            if let Some(text) = text {
                rows.insert(key, codec::decode_row(spec, &text).map_err(corrupt)?);
            }
        }
        Ok(tables)
    }

    async fn checkpoint_fields(&self, key: String) -> Result<HashMap<String, String>, ViewError> {
        self.call(async |mut c| redis::cmd("HGETALL").arg(key).query_async(&mut c).await).await
    }
}

fn corrupt(error: Unreadable) -> ViewError {
    ViewError::Backend(Box::new(error))
}

fn number(fields: &HashMap<String, String>, name: &str) -> Result<u64, ViewError> {
    fields.get(name).map_or(Ok(0), |text| {
        text.parse().map_err(|_| ViewError::Backend(format!("checkpoint {name} {text:?}").into()))
    })
}

fn checkpoint_of(fields: &HashMap<String, String>) -> Result<Checkpoint, ViewError> {
    Ok(Checkpoint {
        position: Position(number(fields, "position")?),
        revision: number(fields, "revision")?,
    })
}

fn version_of(fields: &HashMap<String, String>) -> Result<u32, ViewError> {
    u32::try_from(number(fields, "version")?)
        .map_err(|_| ViewError::Backend("a definition version out of range".into()))
}

/// The checkpoint a script found instead of the expected one.
fn found_checkpoint(answer: &[String]) -> Result<Checkpoint, ViewError> {
    let parse = |i: usize| -> Result<u64, ViewError> {
        answer.get(i).and_then(|text| text.parse().ok()).ok_or_else(|| {
            ViewError::Backend(format!("unexpected answer from a script: {answer:?}").into())
        })
    };
    let n = answer.len();
    Ok(Checkpoint {
        position: Position(parse(n.saturating_sub(2))?),
        revision: parse(n.saturating_sub(1))?,
    })
}

fn unexpected(answer: &[String]) -> ViewError {
    ViewError::Backend(format!("unexpected answer from a script: {answer:?}").into())
}

/// A commit's writes: one key and one operation (with its arguments) each, as the commit
/// script reads them.
#[derive(Default)]
struct Writes {
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

impl Writes {
    fn push(&mut self, key: String, op: &str, args: impl IntoIterator<Item = Vec<u8>>) {
        self.keys.push(key);
        self.args.push(op.as_bytes().to_vec());
        self.args.extend(args);
    }
}

impl RedisViewManager {
    fn writes(
        &self,
        projection: &str,
        slot: Slot,
        commit: &EncodedCommit,
        mut sums: HashMap<&'static str, HashMap<Vec<Value>, Vec<Value>>>,
    ) -> Writes {
        let keys = &self.keys;
        let (positions, parking) =
            (keys.positions(projection, slot), keys.parking(projection, slot));
        let mut writes = Writes::default();
        for view in &commit.views {
            let id = view.id.as_bytes().to_vec();
            let key = keys.view(projection, slot, &view.id);
            match &view.data {
                Some(data) => {
                    writes.push(key, "set", [data.clone()]);
                    let position = view.position.0.to_string().into_bytes();
                    writes.push(positions.clone(), "hset", [id.clone(), position]);
                    match &view.parked {
                        Some(parked) => writes.push(
                            parking.clone(),
                            "hset",
                            [id, codec::encode_parking(parked).into_bytes()],
                        ),
                        None => writes.push(parking.clone(), "hdel", [id]),
                    }
                }
                None => {
                    writes.push(key, "del", []);
                    writes.push(positions.clone(), "hdel", [id.clone()]);
                    writes.push(parking.clone(), "hdel", [id]);
                }
            }
        }
        let waiting = keys.parked_events(projection, slot);
        for id in &commit.released {
            writes.push(waiting.clone(), "hdelprefix", [instance_prefix(id).into_bytes()]);
        }
        for (id, event) in &commit.parked_events {
            let field = instance_field(id, event.position.0).into_bytes();
            writes.push(waiting.clone(), "hset", [field, codec::encode_event(event).into_bytes()]);
        }
        for skipped in &commit.skipped {
            // Kept once per instance and event, however often an operator's skip is redone.
            let field = instance_field(&skipped.view_id, skipped.position.0).into_bytes();
            let text = codec::encode_skipped(skipped).into_bytes();
            writes.push(keys.skipped(projection), "hsetnx", [field, text]);
        }
        // Each row touched ends as it stands after every change of the commit, in order.
        let mut touched: Vec<(&'static TableSpec, Vec<Value>)> = Vec::new();
        for change in &commit.rows {
            let spec = change.table();
            let key = match change {
                RowChange::Upsert { row, .. } | RowChange::Add { row, .. } => {
                    row[..spec.key_columns].to_vec()
                }
                RowChange::Delete { key, .. } => key.clone(),
            };
            table::apply_change(sums.entry(spec.name).or_default(), change);
            if !touched.iter().any(|(t, k)| t.name == spec.name && *k == key) {
                touched.push((spec, key));
            }
        }
        for (spec, key) in touched {
            let field = codec::encode_values(&key).into_bytes();
            let table = keys.table(slot, spec.name);
            match sums.get(spec.name).and_then(|rows| rows.get(&key)) {
                Some(row) => {
                    writes.push(table, "hset", [field, codec::encode_values(row).into_bytes()]);
                }
                None => writes.push(table, "hdel", [field]),
            }
        }
        writes
    }
}

impl ViewManager for RedisViewManager {
    async fn prepare(
        &self,
        projection: &str,
        tables: &[&'static TableSpec],
        version: u32,
    ) -> Result<u32, ViewError> {
        Keys::check(projection)?;
        for spec in tables {
            spec.check().map_err(ViewError::InvalidTable)?;
        }
        // Tables are hashes made by their first row: nothing to create.
        let key = self.keys.checkpoint(projection, Slot::Live);
        let stored: u64 = self
            .call(async |mut c| PREPARE.key(key).arg(version).invoke_async(&mut c).await)
            .await?;
        u32::try_from(stored)
            .map_err(|_| ViewError::Backend("a definition version out of range".into()))
    }

    async fn load<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        slot: Slot,
        ids: &[String],
    ) -> Result<HashMap<String, StoredView<V>>, ViewError> {
        self.read_views(projection, slot, ids).await
    }

    async fn get<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        id: &str,
    ) -> Result<Option<StoredView<V>>, ViewError> {
        let mut found = self.read_views(projection, Slot::Live, &[id.to_owned()]).await?;
        Ok(found.remove(id))
    }

    async fn checkpoint(&self, projection: &str, slot: Slot) -> Result<Checkpoint, ViewError> {
        checkpoint_of(&self.checkpoint_fields(self.keys.checkpoint(projection, slot)).await?)
    }

    async fn commit<V: Serialize + Send + Sync + 'static>(
        &self,
        projection: &str,
        slot: Slot,
        commit: Commit<V>,
    ) -> Result<(), ViewError> {
        Keys::check(projection)?;
        let encoded = encode_commit(projection, commit)?;
        // Rows read here can only have changed since if the checkpoint moved too, and then
        // the script's fence refuses the commit.
        let sums = self.rows_to_sum(slot, &encoded.rows).await?;
        let writes = self.writes(projection, slot, &encoded, sums);
        let next = encoded.next();
        let checkpoint = self.keys.checkpoint(projection, slot);
        let answer: Vec<String> = self
            .call(async |mut c| {
                let mut invocation = COMMIT.prepare_invoke();
                invocation
                    .key(checkpoint)
                    .key(&writes.keys)
                    .arg(encoded.from.position.0)
                    .arg(encoded.from.revision)
                    .arg(next.position.0)
                    .arg(next.revision)
                    .arg(&writes.args);
                invocation.invoke_async(&mut c).await
            })
            .await?;
        match answer.first().map(String::as_str) {
            Some("ok") => Ok(()),
            Some("fenced") => Err(ViewError::Fenced {
                projection: slot.key(projection),
                expected: encoded.from,
                actual: found_checkpoint(&answer)?,
            }),
            _ => Err(unexpected(&answer)),
        }
    }

    async fn parked(&self, projection: &str, slot: Slot) -> Result<Vec<ParkedInstance>, ViewError> {
        let (parking, waiting) =
            (self.keys.parking(projection, slot), self.keys.parked_events(projection, slot));
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("HGETALL").arg(parking).cmd("HKEYS").arg(waiting);
        let (parking, waiting): (HashMap<String, String>, Vec<String>) =
            self.call(async |mut c| pipe.query_async(&mut c).await).await?;
        let mut parked = Vec::with_capacity(parking.len());
        for (view_id, text) in parking {
            let parking = codec::decode_parking(&text).map_err(corrupt)?;
            let prefix = instance_prefix(&view_id);
            let events = waiting.iter().filter(|field| field.starts_with(&prefix)).count();
            parked.push(ParkedInstance {
                view_id,
                position: parking.position,
                events: events as u64,
                error: parking.error,
                attempts: parking.attempts,
                parked_at: parking.parked_at,
            });
        }
        parked.sort_by(|a, b| (a.position, &a.view_id).cmp(&(b.position, &b.view_id)));
        Ok(parked)
    }

    async fn parked_events(
        &self,
        projection: &str,
        slot: Slot,
        id: &str,
    ) -> Result<Vec<RecordedEvent>, ViewError> {
        let key = self.keys.parked_events(projection, slot);
        let all: HashMap<String, String> = self
            .call(async |mut c| redis::cmd("HGETALL").arg(key).query_async(&mut c).await)
            .await?;
        let prefix = instance_prefix(id);
        let mut events = all
            .iter()
            .filter(|(field, _)| field.starts_with(&prefix))
            .map(|(_, text)| codec::decode_event(text).map_err(corrupt))
            .collect::<Result<Vec<_>, _>>()?;
        events.sort_by_key(|event| event.position);
        Ok(events)
    }

    async fn skipped(&self, projection: &str) -> Result<Vec<SkippedEvent>, ViewError> {
        let key = self.keys.skipped(projection);
        let all: Vec<String> =
            self.call(async |mut c| redis::cmd("HVALS").arg(key).query_async(&mut c).await).await?;
        let mut skipped = all
            .iter()
            .map(|text| codec::decode_skipped(text).map_err(corrupt))
            .collect::<Result<Vec<_>, _>>()?;
        skipped.sort_by_key(|s| (s.skipped_at, s.position));
        Ok(skipped)
    }

    async fn record(&self, projection: &str) -> Result<ProjectionRecord, ViewError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HGETALL")
            .arg(self.keys.checkpoint(projection, Slot::Live))
            .cmd("HLEN")
            .arg(self.keys.parking(projection, Slot::Live))
            .cmd("HGETALL")
            .arg(self.keys.checkpoint(projection, Slot::Rebuild));
        type Found = (HashMap<String, String>, u64, HashMap<String, String>);
        let (live, parked, rebuild): Found =
            self.call(async |mut c| pipe.query_async(&mut c).await).await?;
        let rebuild = match rebuild.get("started_at") {
            Some(started_at) => Some(RebuildRecord {
                checkpoint: checkpoint_of(&rebuild)?,
                started_at: DateTime::parse_from_rfc3339(started_at)
                    .map_err(|_| {
                        ViewError::Backend(format!("a rebuild begun at {started_at:?}").into())
                    })?
                    .with_timezone(&Utc),
                error: rebuild.get("error").cloned(),
                version: version_of(&rebuild)?,
            }),
            None => None,
        };
        Ok(ProjectionRecord {
            checkpoint: checkpoint_of(&live)?,
            version: version_of(&live)?,
            parked,
            rebuild,
        })
    }

    async fn select(
        &self,
        table: &'static TableSpec,
        query: &TableQuery,
    ) -> Result<Vec<Vec<Value>>, ViewError> {
        query.check(table).map_err(ViewError::InvalidTable)?;
        let key = self.keys.table(Slot::Live, table.name);
        let stored: Vec<String> =
            self.call(async |mut c| redis::cmd("HVALS").arg(key).query_async(&mut c).await).await?;
        let rows = stored
            .iter()
            .map(|text| codec::decode_row(table, text).map_err(corrupt))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(query.run(table, rows))
    }

    async fn begin_rebuild(
        &self,
        projection: &str,
        tables: &[&'static TableSpec],
        version: u32,
        started_at: DateTime<Utc>,
    ) -> Result<Checkpoint, ViewError> {
        Keys::check(projection)?;
        for spec in tables {
            spec.check().map_err(ViewError::InvalidTable)?;
        }
        let slot = Slot::Rebuild;
        let keys = &self.keys;
        let mut emptied = vec![
            keys.checkpoint(projection, slot),
            keys.positions(projection, slot),
            keys.parking(projection, slot),
            keys.parked_events(projection, slot),
        ];
        emptied.extend(tables.iter().map(|spec| keys.table(slot, spec.name)));
        let views = keys.views(projection, slot);
        let answer: Vec<String> = self
            .call(async |mut c| {
                let mut invocation = BEGIN_REBUILD.prepare_invoke();
                invocation.key(&emptied).arg(views).arg(started_at.to_rfc3339()).arg(version);
                invocation.invoke_async(&mut c).await
            })
            .await?;
        match (answer.first().map(String::as_str), answer.get(1)) {
            (Some("ok"), Some(revision)) => Ok(Checkpoint {
                position: Position::START,
                revision: revision.parse().map_err(|_| unexpected(&answer))?,
            }),
            (Some("busy"), _) => Err(ViewError::RebuildInProgress(projection.to_owned())),
            _ => Err(unexpected(&answer)),
        }
    }

    async fn fail_rebuild(
        &self,
        projection: &str,
        at: Checkpoint,
        error: &str,
    ) -> Result<(), ViewError> {
        let key = self.keys.checkpoint(projection, Slot::Rebuild);
        let answer: Vec<String> = self
            .call(async |mut c| {
                let mut invocation = FAIL_REBUILD.prepare_invoke();
                invocation.key(key).arg(at.position.0).arg(at.revision).arg(error);
                invocation.invoke_async(&mut c).await
            })
            .await?;
        match answer.first().map(String::as_str) {
            Some("ok") => Ok(()),
            Some("none") => Err(ViewError::NoRebuild(projection.to_owned())),
            Some("fenced") => Err(ViewError::Fenced {
                projection: Slot::Rebuild.key(projection),
                expected: at,
                actual: found_checkpoint(&answer)?,
            }),
            _ => Err(unexpected(&answer)),
        }
    }

    async fn finish_rebuild(
        &self,
        projection: &str,
        tables: &[&'static TableSpec],
        rebuilt: Checkpoint,
        live: Checkpoint,
    ) -> Result<Checkpoint, ViewError> {
        let keys = &self.keys;
        let (l, r) = (Slot::Live, Slot::Rebuild);
        let mut pairs = vec![
            keys.checkpoint(projection, l),
            keys.checkpoint(projection, r),
            keys.positions(projection, l),
            keys.positions(projection, r),
            keys.parking(projection, l),
            keys.parking(projection, r),
            keys.parked_events(projection, l),
            keys.parked_events(projection, r),
        ];
        for spec in tables {
            pairs.push(keys.table(l, spec.name));
            pairs.push(keys.table(r, spec.name));
        }
        let swapped = live.next(rebuilt.position);
        let (live_views, rebuild_views) = (keys.views(projection, l), keys.views(projection, r));
        let answer: Vec<String> = self
            .call(async |mut c| {
                let mut invocation = FINISH_REBUILD.prepare_invoke();
                invocation
                    .key(&pairs)
                    .arg(rebuilt.position.0)
                    .arg(rebuilt.revision)
                    .arg(live.position.0)
                    .arg(live.revision)
                    .arg(live_views)
                    .arg(rebuild_views)
                    .arg(swapped.revision);
                invocation.invoke_async(&mut c).await
            })
            .await?;
        match (answer.first().map(String::as_str), answer.get(1).map(String::as_str)) {
            (Some("ok"), _) => Ok(swapped),
            (Some("none"), _) => Err(ViewError::NoRebuild(projection.to_owned())),
            (Some("fenced"), Some("rebuild")) => Err(ViewError::Fenced {
                projection: r.key(projection),
                expected: rebuilt,
                actual: found_checkpoint(&answer)?,
            }),
            (Some("fenced"), _) => Err(ViewError::Fenced {
                projection: projection.to_owned(),
                expected: live,
                actual: found_checkpoint(&answer)?,
            }),
            _ => Err(unexpected(&answer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::masked;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(masked("redis://:secret@host:6379/2"), "redis://***@host:6379/2");
        assert_eq!(masked("redis://host:6379"), "redis://host:6379");
    }
}
