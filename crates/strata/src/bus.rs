//! The command bus: routes a command to its aggregate, serializes commands for one aggregate
//! in-process, keeps recently used aggregates in memory, and decides again, with jittered
//! backoff for a bounded time, when another writer got there first.
//!
//! A command with an idempotency key appends with [`EventStore::append_claimed`]; a retry
//! whose key already appended is answered with what the first one appended, undecided.
//!
//! The cache is safe without any invalidation protocol because every append states the
//! version it decided against: a stale cached aggregate (another process appended) makes the
//! append fail with a conflict, which evicts the entry, reloads it and decides again. The
//! same check lets a command on a stream the cache has not seen skip the read: it is decided
//! on the empty aggregate and appended as a new stream, and only a conflict (or a refusal,
//! or nothing to append) makes it read the stream and decide again.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Mutex as AsyncMutex;
use tracing::Instrument;

use crate::aggregate::{Aggregate, Decision};
use crate::command_counts::{CommandCounts, CommandResult};
use crate::event::{DecodeError, DomainEvent, EventMetadata};
use crate::idempotency::IdempotencyClaim;
use crate::snapshot::Snapshot;
use crate::store::{EventStore, StoreError};
use crate::stream::{ExpectedVersion, Position, StreamId, Version};

/// Tuning of the [`CommandBus`].
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// How long a command without an expected version keeps being decided again after
    /// version conflicts (other nodes writing the same aggregate) before it answers one;
    /// measured from its first conflict.
    pub conflict_budget: Duration,
    /// How many aggregates are kept in memory at most.
    pub cache_capacity: usize,
    /// How new events' payloads are encoded.
    pub codec: crate::codec::Codec,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            conflict_budget: Duration::from_secs(2),
            cache_capacity: 10_000,
            codec: crate::codec::Codec::Json,
        }
    }
}

/// Who sends a command and under which conditions.
#[derive(Debug, Clone)]
pub struct CommandContext {
    /// Stored on every event the command causes.
    pub correlation_id: String,
    /// The id of this command; stored as the causation id of its events.
    pub command_id: String,
    /// The user on whose behalf the command runs.
    pub user: Option<String>,
    /// When set, the command applies only if the aggregate is at this version (`If-Match`).
    pub expected_version: Option<Version>,
    /// The request's idempotency key, when it had one.
    pub idempotency: Option<IdempotencyClaim>,
}

impl CommandContext {
    /// A context with a fresh command id under `correlation_id`.
    pub fn new(correlation_id: impl Into<String>) -> Self {
        Self {
            correlation_id: correlation_id.into(),
            command_id: uuid::Uuid::now_v7().to_string(),
            user: None,
            expected_version: None,
            idempotency: None,
        }
    }
}

/// What a handled command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// The aggregate's stream.
    pub stream: StreamId,
    /// The aggregate's version after the command.
    pub version: Version,
    /// The position of the command's last event; `None` when it emitted nothing.
    pub position: Option<Position>,
    /// This is an earlier request's outcome, found under the same idempotency key: the
    /// command did not act again (`Idempotency-Replayed: true` over HTTP).
    pub replayed: bool,
}

/// Why a command did not take effect. Nothing was appended in any case.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The aggregate refused the command.
    #[error(transparent)]
    Rejected(E),
    /// The aggregate was not at the version the caller's `If-Match` named.
    #[error("aggregate {stream} is at version {actual}, not {expected}")]
    PreconditionFailed {
        /// The aggregate's stream.
        stream: StreamId,
        /// The version the caller named.
        expected: Version,
        /// The version found.
        actual: Version,
    },
    /// Other writers kept winning the version race for the whole conflict budget.
    #[error("aggregate {stream} is at version {actual}, not {expected}")]
    Conflict {
        /// The aggregate's stream.
        stream: StreamId,
        /// The version the command expected.
        expected: ExpectedVersion,
        /// The version found.
        actual: Version,
    },
    /// The idempotency key was used first by another request (another route, `If-Match` or
    /// body).
    #[error("idempotency key {0:?} was used by another request")]
    KeyReused(String),
    /// The idempotency key's first request appended nothing and its answer was being stored
    /// while this one ran; sent again, the request gets that answer.
    #[error("idempotency key {0:?} was being answered at the same time")]
    KeyBusy(String),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// A stored event of the aggregate could not be decoded.
    #[error("cannot load aggregate: {0}")]
    Decode(#[from] DecodeError),
    /// An emitted event could not be encoded.
    #[error("cannot encode event: {0}")]
    Encode(#[from] crate::codec::CodecError),
}

/// An aggregate as loaded: its state and the stream version it reflects.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The stream version the state reflects; `Version::NONE` for a stream with no events.
    pub version: Version,
}

type Slot = Arc<AsyncMutex<Option<Box<dyn Any + Send>>>>;

/// Where the aggregate a command is decided on came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Cache,
    /// Not read: a stream the cache has not seen, taken to be new until the append says.
    AssumedNew,
    Store,
}

/// Routes commands to aggregates over an [`EventStore`].
pub struct CommandBus<S> {
    store: Arc<S>,
    config: BusConfig,
    cache: AggregateCache,
    counts: Arc<CommandCounts>,
}

impl<S: EventStore> CommandBus<S> {
    /// A bus over `store`.
    pub fn new(store: Arc<S>, config: BusConfig) -> Self {
        let cache = AggregateCache::new(config.cache_capacity);
        Self { store, config, cache, counts: Arc::default() }
    }

    /// How many commands this bus handled, by aggregate type, command and outcome.
    pub fn counts(&self) -> &Arc<CommandCounts> {
        &self.counts
    }

    /// The store this bus appends to.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Handles `command` on aggregate `id` of type `A`: loads it (from the cache when
    /// possible; a stream the cache has not seen is first taken to be new, unread, and read
    /// only if the append, a refusal or a no-op says otherwise), decides, appends what it
    /// emitted with the version it decided against, and decides again after a conflict
    /// until [`BusConfig::conflict_budget`] is spent.
    ///
    /// With an idempotency claim, a key that appended already is answered with what it
    /// appended, undecided; and a refusal or conflict is checked against the key's record,
    /// since the key's first request may have acted on another node meanwhile (its own
    /// effect, an order already shipped, is then what refused this one).
    pub async fn execute<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<CommandOutcome, CommandError<A::Error>> {
        let span = tracing::debug_span!("command", aggregate = A::TYPE, id);
        let name = A::command_name(&command);
        let outcome = self.execute_claimed::<A>(id, command, context).instrument(span).await;
        let result = match &outcome {
            Ok(_) => CommandResult::Ok,
            Err(CommandError::Rejected(_) | CommandError::KeyReused(_)) => CommandResult::Rejected,
            Err(
                CommandError::Conflict { .. }
                | CommandError::PreconditionFailed { .. }
                | CommandError::KeyBusy(_),
            ) => CommandResult::Conflict,
            Err(_) => CommandResult::Error,
        };
        self.counts.count(A::TYPE, name, result);
        if let Ok(outcome) = &outcome {
            let position = outcome.position.map(|p| p.0);
            tracing::debug!(aggregate = A::TYPE, id, version = %outcome.version, ?position, "command handled");
        }
        outcome
    }

    async fn execute_claimed<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<CommandOutcome, CommandError<A::Error>> {
        let Some(claim) = context.idempotency.as_ref() else {
            return self.decide_and_append::<A>(id, command, context, None).await;
        };
        if let Some(recorded) = &claim.recorded {
            return Ok(CommandOutcome { replayed: true, ..recorded.clone() });
        }
        let decided = self.decide_and_append::<A>(id, command, context, Some(claim)).await;
        match decided {
            Err(
                error @ (CommandError::Rejected(_)
                | CommandError::Conflict { .. }
                | CommandError::PreconditionFailed { .. }),
            ) => {
                let record =
                    self.store.read_claim(&claim.key).await.map_err(CommandError::Store)?;
                match record.map(|record| answered_by(claim, record)) {
                    Some(Some(answer)) => answer,
                    _ => Err(error),
                }
            }
            other => other,
        }
    }

    async fn decide_and_append<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
        context: &CommandContext,
        claim: Option<&IdempotencyClaim>,
    ) -> Result<CommandOutcome, CommandError<A::Error>> {
        let stream = StreamId::new(A::TYPE, id);
        let slot = self.cache.slot(&stream);
        let mut cached = slot.lock().await;
        let mut conflicts = 0;
        // Taken at the first conflict: most commands never have one, and reading the clock
        // for each showed in profiles of the in-memory store.
        let mut started: Option<Instant> = None;
        let mut assumed_new = false;
        loop {
            let (loaded, source) = match take_cached::<A>(&mut cached) {
                Some(loaded) => (loaded, Source::Cache),
                // A stream the cache has not seen is most often the one this command creates:
                // decide on the empty aggregate without reading the store, and let the
                // append's expected version (no stream) say otherwise, as it does for a
                // stale cache entry. Only once: after a conflict, a refusal or nothing to
                // do, the stream is read.
                None if !assumed_new && context.expected_version.is_none() => {
                    assumed_new = true;
                    (Loaded { state: A::default(), version: Version::NONE }, Source::AssumedNew)
                }
                None => (load::<A, S>(&self.store, &stream).await?, Source::Store),
            };
            if let Some(expected) = context.expected_version
                && loaded.version != expected
            {
                if source == Source::Cache {
                    // The cache may lag another process; only the store may refuse.
                    continue;
                }
                // A missing aggregate is the aggregate's to report (404), not a version race.
                if loaded.version == Version::NONE
                    && let Err(rejection) =
                        A::handle(&mut Decision::new(&loaded.state), command.clone())
                {
                    return Err(CommandError::Rejected(rejection));
                }
                let actual = loaded.version;
                *cached = Some(Box::new(loaded));
                return Err(CommandError::PreconditionFailed { stream, expected, actual });
            }
            let mut decision = Decision::new(&loaded.state);
            let decided = A::handle(&mut decision, command.clone());
            let (next_state, events) = decision.into_parts();
            if let Err(rejection) = decided {
                if source == Source::AssumedNew {
                    continue;
                }
                if source == Source::Cache {
                    // A refusal appends nothing, so no version check would ever correct a
                    // cached state that another process has moved on from: look at the
                    // stream's tail before refusing, and decide again if it grew.
                    let (fresh, grew) = catch_up::<A, S>(&self.store, &stream, loaded).await?;
                    *cached = Some(Box::new(fresh));
                    if grew {
                        continue;
                    }
                } else {
                    *cached = Some(Box::new(loaded));
                }
                return Err(CommandError::Rejected(rejection));
            }
            let Some(next_state) = next_state else {
                if source == Source::AssumedNew {
                    continue;
                }
                // Deciding to do nothing appends nothing either: like a refusal, it must not
                // rest on a cached state that another process has moved on from.
                let loaded = if source == Source::Cache {
                    let (fresh, grew) = catch_up::<A, S>(&self.store, &stream, loaded).await?;
                    if grew {
                        *cached = Some(Box::new(fresh));
                        continue;
                    }
                    fresh
                } else {
                    loaded
                };
                let version = loaded.version;
                *cached = Some(Box::new(loaded));
                return Ok(CommandOutcome { stream, version, position: None, replayed: false });
            };
            let new_events = events
                .iter()
                .map(|event| {
                    let mut metadata = EventMetadata::new(
                        context.correlation_id.clone(),
                        Some(context.command_id.clone()),
                    );
                    metadata.user = context.user.clone();
                    event.to_new_event_as(metadata, self.config.codec)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let expected = ExpectedVersion::of(loaded.version);
            match self.store.append_claimed(&stream, expected, new_events, claim).await {
                Ok(appended) => {
                    if A::SNAPSHOTS.is_some_and(|p| p.due(loaded.version, appended.version)) {
                        snapshot(&self.store, &stream, &next_state, appended.version);
                    }
                    let loaded = Loaded { state: next_state, version: appended.version };
                    *cached = Some(Box::new(loaded));
                    return Ok(CommandOutcome {
                        stream,
                        version: appended.version,
                        position: Some(appended.last_position),
                        replayed: false,
                    });
                }
                // The stream existed: read it and decide again, no race to count.
                Err(StoreError::Conflict { .. }) if source == Source::AssumedNew => {}
                Err(StoreError::Conflict { stream, expected, actual }) => {
                    // Leave the slot empty: the next attempt reloads from the store.
                    conflicts += 1;
                    let spent = started.get_or_insert_with(Instant::now).elapsed();
                    if spent >= self.config.conflict_budget {
                        return Err(CommandError::Conflict { stream, expected, actual });
                    }
                    tracing::debug!(%stream, conflicts, "version conflict, deciding again");
                    // The first retry is at once: most conflicts are a cached aggregate that
                    // another node moved on. Repeated ones are writers racing; random waits
                    // that grow keep them from colliding in step.
                    if conflicts > 1 {
                        let ceiling = 2_u64.saturating_pow(conflicts.min(7)).min(100);
                        let wait = Duration::from_millis(fastrand::u64(1..=ceiling))
                            .min(self.config.conflict_budget - spent);
                        tokio::time::sleep(wait).await;
                    }
                }
                Err(StoreError::KeyClaimed { key, record }) => {
                    // Another request with the same key got there first, on any node.
                    match claim.and_then(|claim| answered_by(claim, *record)) {
                        Some(answer) => return answer,
                        // A store may check the key before the version: decided on the
                        // stored stream, this command might be refused instead.
                        None if source == Source::AssumedNew => {}
                        None => return Err(CommandError::KeyBusy(key)),
                    }
                }
                Err(other) => return Err(CommandError::Store(other)),
            }
        }
    }

    /// The current state of aggregate `id` of type `A`, for commands that must consult
    /// another aggregate (an order line reads its product's price).
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<Loaded<A>, CommandError<A::Error>> {
        let stream = StreamId::new(A::TYPE, id);
        let slot = self.cache.slot(&stream);
        let mut cached = slot.lock().await;
        let loaded = match take_cached::<A>(&mut cached) {
            // An aggregate cached as missing may have been created by another process since;
            // its absence is what callers refuse on, so it is checked again.
            Some(loaded) if loaded.version == Version::NONE => {
                catch_up::<A, S>(&self.store, &stream, loaded).await?.0
            }
            Some(loaded) => loaded,
            None => load::<A, S>(&self.store, &stream).await?,
        };
        *cached = Some(Box::new(loaded.clone()));
        Ok(loaded)
    }
}

/// What `record`, found for `claim`'s key, answers: the first request's outcome when it was
/// this request and appended, a refusal when it was another request, nothing otherwise.
fn answered_by<E: std::error::Error + 'static>(
    claim: &IdempotencyClaim,
    record: crate::idempotency::IdempotencyRecord,
) -> Option<Result<CommandOutcome, CommandError<E>>> {
    if record.fingerprint != claim.fingerprint {
        return Some(Err(CommandError::KeyReused(claim.key.clone())));
    }
    record.appended.map(|outcome| Ok(CommandOutcome { replayed: true, ..outcome }))
}

/// Applies the events appended to `stream` after `loaded.version`; says whether there were any.
async fn catch_up<A: Aggregate, S: EventStore>(
    store: &S,
    stream: &StreamId,
    mut loaded: Loaded<A>,
) -> Result<(Loaded<A>, bool), CommandError<A::Error>> {
    let tail = store.read_stream(stream, loaded.version).await.map_err(CommandError::Store)?;
    for record in &tail {
        loaded.state.apply(&A::Event::decode(record)?);
        loaded.version = record.version;
    }
    Ok((loaded, !tail.is_empty()))
}

fn take_cached<A: Aggregate>(slot: &mut Option<Box<dyn Any + Send>>) -> Option<Loaded<A>> {
    let boxed = slot.take()?;
    boxed.downcast::<Loaded<A>>().ok().map(|loaded| *loaded)
}

/// Loads an aggregate from the store: from its snapshot and the events after it when it has
/// a readable one, else from all its events. A long tail past the snapshot (or a long stream
/// without one) gets a snapshot now, so the next load is short.
async fn load<A: Aggregate, S: EventStore>(
    store: &Arc<S>,
    stream: &StreamId,
) -> Result<Loaded<A>, CommandError<A::Error>> {
    let mut loaded = Loaded { state: A::default(), version: Version::NONE };
    if let Some(policy) = A::SNAPSHOTS {
        let stored = store.read_snapshot(stream).await.map_err(CommandError::Store)?;
        // A snapshot of another format, or one that does not decode, is only a lost
        // shortcut: the events are the truth, and are all read below.
        if let Some(snapshot) = stored.filter(|snapshot| snapshot.format == policy.format)
            && let Some(state) = A::from_snapshot(&snapshot.state)
        {
            loaded = Loaded { state, version: snapshot.version };
        }
    }
    let from = loaded.version;
    let records = store.read_stream(stream, from).await.map_err(CommandError::Store)?;
    for record in &records {
        let event = A::Event::decode(record)?;
        loaded.state.apply(&event);
        loaded.version = record.version;
    }
    if A::SNAPSHOTS.is_some_and(|policy| policy.due(from, loaded.version)) {
        snapshot(store, stream, &loaded.state, loaded.version);
    }
    Ok(loaded)
}

/// Writes a snapshot of `state` at `version` in the background: the command that made it
/// due has its answer already, and a lost snapshot only makes one later load longer.
fn snapshot<A: Aggregate, S: EventStore>(
    store: &Arc<S>,
    stream: &StreamId,
    state: &A,
    version: Version,
) {
    let (Some(policy), Some(state)) = (A::SNAPSHOTS, state.to_snapshot()) else { return };
    let (store, stream) = (store.clone(), stream.clone());
    let snapshot = Snapshot { version, format: policy.format, state };
    let write = async move {
        if let Err(error) = store.write_snapshot(&stream, &snapshot).await {
            tracing::warn!(%error, %stream, "cannot write a snapshot; loads replay more events");
        }
    };
    tokio::spawn(write.in_current_span());
}

/// A bounded map from stream to a locked slot holding its loaded aggregate.
///
/// Holding a slot's lock serializes commands for that aggregate. When the map is over
/// capacity the oldest entries not in use are dropped (first in, first out, skipping locked
/// ones), which is cheap and good enough until measurements ask for recency.
struct AggregateCache {
    capacity: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    slots: HashMap<StreamId, Slot>,
    order: VecDeque<StreamId>,
}

impl AggregateCache {
    fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), inner: Mutex::new(CacheInner::default()) }
    }

    fn slot(&self, stream: &StreamId) -> Slot {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = inner.slots.get(stream) {
            return slot.clone();
        }
        let slot = Slot::default();
        inner.slots.insert(stream.clone(), slot.clone());
        inner.order.push_back(stream.clone());
        let mut skipped = 0;
        while inner.slots.len() > self.capacity && skipped < inner.order.len() {
            let Some(oldest) = inner.order.pop_front() else { break };
            let in_use = inner.slots.get(&oldest).is_some_and(|slot| Arc::strong_count(slot) > 1);
            if in_use {
                inner.order.push_back(oldest);
                skipped += 1;
            } else {
                inner.slots.remove(&oldest);
            }
        }
        slot
    }
}
