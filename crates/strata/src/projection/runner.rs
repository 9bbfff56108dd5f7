//! The runner: one task per projection and node. While the node holds the projection's
//! lease, the task follows the log into the live slot and, when a rebuild was asked for,
//! fills the rebuild slot in the same loop, one batch of each in turn, and swaps it in once
//! it has caught up. Without the lease it watches the checkpoint, so that queries on this
//! node can still wait for a position.
//!
//! Failures are bounded and visible: a failing batch is retried with backoff and shown as
//! the projection's failure until one succeeds; an instance that cannot take an event is
//! retried [`MAX_ATTEMPTS`] times and then parked, and the rest of the projection moves on;
//! a rebuild that cannot go on is marked failed, and the live views keep serving.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::batch::{InstanceFailure, Pass, PlannedPark, Warm};
use super::control::{Control, ProjectionHandle};
use super::reader::{ReadAhead, ReadEvent, SharedReader};
use super::{MAX_ATTEMPTS, Projection, ProjectionError};
use crate::event::DomainEvent;
use crate::lease::{Lease, Leases, LocalLeases};
use crate::store::EventStore;
use crate::stream::Position;
use crate::view::{View, ViewLocator};
use crate::view_manager::{Checkpoint, Slot, ViewError, ViewManager};

/// How often a node that does not hold a projection's lease tries to take it. A dead
/// owner's lease is released when its database connection closes, so this bounds the time
/// to take over.
const ACQUIRE_INTERVAL: Duration = Duration::from_secs(1);

/// How often a node that does not run a projection reads its checkpoint, so that queries
/// on that node can wait for a position.
const OBSERVE_INTERVAL: Duration = Duration::from_millis(50);

/// How often the owner looks for a rebuild asked for on another node (one asked for on
/// this node wakes it at once).
const REBUILD_POLL: Duration = Duration::from_secs(1);

/// How many times in a row a rebuild's batch may fail (reading or writing) before the
/// rebuild is given up. With the backoff that is about half a minute: long enough to ride
/// out a database restart, short enough to say so while someone is watching.
const REBUILD_BATCH_FAILURES: u32 = 10;

/// How many batches a bulk read keeps reading ahead. Two keep both cores reading while a
/// third batch is applied; more only hold memory.
const READS_AHEAD: usize = 2;

/// The longest wait between two tries of a failing batch.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// After a live batch that was not full, the projection rests for this many times what the batch
/// took before it reads again, so that under load it spends about a tenth of its time on batches:
/// every commit costs a transaction, and many small ones cost far more than a few large ones (serve
/// on SQLite spent a quarter less CPU per command; docs/benchmarks.md, ninth round). A query
/// waiting for a position, or a request holding `ProjectionHandle::awaited`, ends the rest at
/// once.
const REST_FACTOR: u32 = 9;

/// The longest rest: only batches that took over 5 ms, on a machine already busy, rest this
/// long (with it, the search index's longer interval and resting sagas, serve spent a third less
/// CPU per command; docs/benchmarks.md, tenth round).
const MAX_REST: Duration = Duration::from_millis(50);

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(50u64 << failures.min(7)).min(MAX_BACKOFF)
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a runner task tells its handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) position: watch::Sender<Position>,
    pub(crate) owner: watch::Sender<Option<String>>,
    /// Why the live slot is failing right now, on this node.
    pub(crate) failure: Mutex<Option<String>>,
    /// Wakes the owner when a rebuild is asked for on this node.
    pub(crate) wake: Notify,
    /// Queries on this node waiting for a position the views have not reached, and requests
    /// holding [`ProjectionHandle::awaited`](super::ProjectionHandle::awaited); while there
    /// are any, the live slot does not rest between batches.
    pub(crate) waiters: AtomicUsize,
    /// Ends the live slot's rest (and a local view's): a query began to wait, or a request
    /// took an [`Awaited`](super::Awaited) guard.
    pub(crate) hurry: Notify,
    pub(crate) events_applied: AtomicU64,
    pub(crate) failed_applies: AtomicU64,
    /// The task processing the projection while this node holds its lease, so that a stop
    /// takes effect at its next wait rather than when the supervisor gets round to it.
    running: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            position: watch::channel(Position::START).0,
            owner: watch::channel(None).0,
            failure: Mutex::new(None),
            wake: Notify::new(),
            waiters: AtomicUsize::new(0),
            hurry: Notify::new(),
            events_applied: AtomicU64::new(0),
            failed_applies: AtomicU64::new(0),
            running: Mutex::new(None),
        }
    }

    /// Stops the processing task, if one runs.
    pub(crate) fn stop_running(&self) {
        if let Some(running) = locked(&self.running).take() {
            running.abort();
        }
    }

    /// Moves the reported position forward (never back: checkpoints only grow).
    pub(crate) fn advance(&self, to: Position) {
        self.position.send_if_modified(|position| {
            let moved = to > *position;
            if moved {
                *position = to;
            }
            moved
        });
    }

    /// Reports exactly the stored checkpoint `to`: ahead of what was reported, or behind it
    /// when the view store was begun afresh (a damaged file set aside), since the views then
    /// hold less and a query waiting for a position must wait for them again.
    pub(crate) fn set_to(&self, to: Position) {
        self.position.send_if_modified(|position| {
            let changed = *position != to;
            *position = to;
            changed
        });
    }

    pub(crate) fn failure(&self) -> Option<String> {
        locked(&self.failure).clone()
    }

    pub(crate) fn set_failure(&self, failure: Option<String>) {
        *locked(&self.failure) = failure;
    }
}

/// Starts projections as background tasks on this node.
#[derive(Debug, Clone)]
pub struct ProjectionRunner {
    node_id: String,
}

impl ProjectionRunner {
    /// A runner for node `node_id`.
    pub fn new(node_id: impl Into<String>) -> Self {
        Self { node_id: node_id.into() }
    }

    /// The node this runner runs projections for.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Runs `projection` on this node alone (no other node competes for it), reading the
    /// store on its own, until the handle is stopped or dropped.
    pub fn spawn<S, M, E, V, L>(
        &self,
        projection: Projection<E, V, L>,
        store: Arc<S>,
        views: Arc<M>,
    ) -> ProjectionHandle
    where
        S: EventStore,
        M: ViewManager,
        E: DomainEvent,
        V: View<E>,
        L: ViewLocator<E>,
    {
        self.spawn_shared(projection, SharedReader::new(store), views, Arc::new(LocalLeases))
    }

    /// Runs `projection` whenever this node holds its lease, reading the store on its own.
    pub fn spawn_leased<S, M, E, V, L, G>(
        &self,
        projection: Projection<E, V, L>,
        store: Arc<S>,
        views: Arc<M>,
        leases: Arc<G>,
    ) -> ProjectionHandle
    where
        S: EventStore,
        M: ViewManager,
        E: DomainEvent,
        V: View<E>,
        L: ViewLocator<E>,
        G: Leases,
    {
        self.spawn_shared(projection, SharedReader::new(store), views, leases)
    }

    /// Runs `projection` whenever this node holds its lease: catches up from the checkpoint,
    /// then follows new commits (and runs its rebuilds) until the lease is lost. Reads go
    /// through `reader`, which the node's other projections of the same event type share.
    pub fn spawn_shared<S, M, E, V, L, G>(
        &self,
        projection: Projection<E, V, L>,
        reader: Arc<SharedReader<S, E>>,
        views: Arc<M>,
        leases: Arc<G>,
    ) -> ProjectionHandle
    where
        S: EventStore,
        M: ViewManager,
        E: DomainEvent,
        V: View<E>,
        L: ViewLocator<E>,
        G: Leases,
    {
        let engine = Arc::new(Engine {
            projection: Arc::new(projection),
            reader,
            views,
            shared: Arc::new(Shared::new()),
        });
        let name = engine.projection.name();
        let task = tokio::spawn(supervise(engine.clone(), leases, self.node_id.clone()));
        ProjectionHandle::new(name, engine.shared.clone(), Arc::new(Control { engine }), task)
    }
}

/// Everything one projection's work needs, shared by its task and its handle.
pub(crate) struct Engine<S, M, E, V, L> {
    pub(crate) projection: Arc<Projection<E, V, L>>,
    pub(crate) reader: Arc<SharedReader<S, E>>,
    pub(crate) views: Arc<M>,
    pub(crate) shared: Arc<Shared>,
}

/// Where one slot's processing stands between batches.
pub(crate) struct Cursor<E, V> {
    slot: Slot,
    /// A rebuild for a changed definition: live was built by other code, so what it parked
    /// says nothing, and every failure parks.
    parks_all: bool,
    /// Parked instances a rebuild has already replayed to match live, so that one that fails
    /// again is not replayed forever.
    reconciled: HashSet<(String, Position)>,
    /// The last checkpoint position known, kept when the checkpoint is to be read again.
    reached: Position,
    /// The instances the last batch committed (see [`Warm`]).
    warm: Warm<V>,
    /// Reads past the shared reader's memory, one batch ahead: a rebuild (in batches of
    /// the rebuild size), or a replay into empty views.
    bulk: bool,
    /// The next batches of a bulk read, read while the current one is applied and
    /// committed: reading and decoding, the slowest part of a rebuild, run on other cores.
    ahead: VecDeque<ReadAhead<E>>,
    /// `None` until read, and again after a failure (a fenced commit means it moved).
    checkpoint: Option<Checkpoint>,
    skips: HashSet<(String, Position)>,
    plan: HashMap<String, PlannedPark>,
    attempts: HashMap<(String, Position), u32>,
    batch_failures: u32,
    fences: u32,
    not_before: Option<Instant>,
    /// Resting after a small live batch until then (see [`REST_FACTOR`]).
    resting_until: Option<Instant>,
}

/// What bringing a rebuild's parked instances in line with live did.
enum Reconciled {
    Nothing,
    /// Replayed some: the rebuild's checkpoint moved.
    Replayed,
    /// An instance failed anew.
    Failed(String),
    /// Another runner moved the rebuild.
    Lost,
}

/// What live processing did with an event a rebuild cannot apply.
enum LiveVerdict {
    /// Parked its instance there (or before), or has not reached it: the rebuild parks it.
    Parked,
    /// Got past it without parking.
    Applied,
}

/// What an attempt to swap a rebuild in did.
enum Finish {
    /// Swapped.
    Over,
    /// The rebuild was replaced or finished elsewhere; this cursor has nothing to do.
    Lost,
    /// Not yet: the rebuild reads on, or tries again.
    NotYet,
    /// The swap keeps failing.
    GiveUp(String),
}

/// What one step of a cursor did.
#[derive(Debug)]
enum Step {
    /// A batch committed, or the cursor is ready to try again at once.
    Advanced,
    /// Nothing to read after the checkpoint.
    Idle,
    /// Backing off until then.
    Waiting(Instant),
    /// A rebuild that cannot go on.
    GiveUp(String),
    /// A rebuild that another runner replaced or moved: this cursor stops, the rebuild
    /// record stays as that runner left it.
    Lost,
}

impl<E, V> Cursor<E, V> {
    pub(crate) fn new(slot: Slot) -> Self {
        Self {
            slot,
            parks_all: false,
            reconciled: HashSet::new(),
            reached: Position::START,
            warm: HashMap::new(),
            bulk: slot == Slot::Rebuild,
            ahead: VecDeque::new(),
            checkpoint: None,
            skips: HashSet::new(),
            plan: HashMap::new(),
            attempts: HashMap::new(),
            batch_failures: 0,
            fences: 0,
            not_before: None,
            resting_until: None,
        }
    }

    fn committed(&mut self, to: Checkpoint) {
        self.checkpoint = Some(to);
        self.reached = to.position;
        self.plan.clear();
        self.attempts.clear();
        self.batch_failures = 0;
        self.fences = 0;
    }

    /// Counts one more try of each failure; returns those tried [`MAX_ATTEMPTS`] times,
    /// or `None` while some may still succeed.
    fn tried(&mut self, failures: &[InstanceFailure]) -> Option<u32> {
        let mut fewest = u32::MAX;
        for failure in failures {
            let tries =
                self.attempts.entry((failure.view_id.clone(), failure.position)).or_insert(0);
            *tries += 1;
            fewest = fewest.min(*tries);
        }
        (fewest >= MAX_ATTEMPTS).then_some(fewest)
    }

    fn plan_park(&mut self, failure: &InstanceFailure, attempts: u32) {
        let planned =
            PlannedPark { position: failure.position, error: failure.error.clone(), attempts };
        self.plan.insert(failure.view_id.clone(), planned);
    }
}

impl<S, M, E, V, L> Engine<S, M, E, V, L>
where
    S: EventStore,
    M: ViewManager,
    E: DomainEvent,
    V: View<E>,
    L: ViewLocator<E>,
{
    fn name(&self) -> &'static str {
        self.projection.name()
    }

    /// Reads the slot's checkpoint and the skipped events into `cursor`.
    async fn load(&self, cursor: &mut Cursor<E, V>) -> Result<Checkpoint, ProjectionError> {
        // Whatever made the checkpoint unknown may have changed instances too (an
        // operator's retry, a swap): warm instances are only good for the checkpoint they
        // were committed at.
        cursor.warm.clear();
        let checkpoint = self.views.checkpoint(self.name(), cursor.slot).await?;
        if cursor.slot == Slot::Live {
            let head = self.reader.store().head();
            // Views ahead of the log were built from another log (a store replaced under
            // its views); following from there would skip events silently.
            if checkpoint.position > head {
                return Err(ProjectionError::AheadOfLog { checkpoint: checkpoint.position, head });
            }
            self.shared.set_to(checkpoint.position);
        }
        let skipped = self.views.skipped(self.name()).await?;
        cursor.skips = skipped.into_iter().map(|s| (s.view_id, s.position)).collect();
        cursor.checkpoint = Some(checkpoint);
        cursor.reached = checkpoint.position;
        Ok(checkpoint)
    }

    async fn read(
        &self,
        cursor: &mut Cursor<E, V>,
        after: Position,
    ) -> Result<Vec<Arc<ReadEvent<E>>>, ProjectionError> {
        if !cursor.bulk {
            return Ok(self.reader.read(after, self.projection.batch_size).await?);
        }
        let limit = match cursor.slot {
            Slot::Rebuild => self.projection.rebuild_batch_size,
            Slot::Live => self.projection.batch_size,
        };
        let mut events = match cursor.ahead.pop_front() {
            Some(ahead) if ahead.after() == after => ahead.events().await?,
            _ => {
                cursor.ahead.clear();
                self.reader.read_past(after, limit).await?
            }
        };
        if cursor.slot == Slot::Rebuild && self.projection.reactor.is_some() {
            // A projection that acts (a saga) sends nothing while rebuilding, so its rebuild
            // must not pass live: the swap would move live past events nobody acted on.
            let live = *self.shared.position.borrow();
            events.retain(|event| event.position <= live);
        }
        // Keep reads of the next batches running while this one is applied. Positions are
        // dense in every store, so the batch after next starts `limit` later; were they not,
        // its read would not match and would simply be done again.
        if let Some(last) = events.last().map(|event| event.position) {
            let full = events.len() == limit;
            for k in 0..READS_AHEAD {
                let start = Position(last.0 + (k as u64) * limit as u64);
                let wanted = k == 0 || full;
                if wanted && !cursor.ahead.iter().any(|ahead| ahead.after() == start) {
                    cursor.ahead.push_back(self.reader.read_ahead(start, limit));
                }
            }
        }
        Ok(events)
    }

    /// Processes one batch of `cursor`'s slot.
    async fn step(&self, cursor: &mut Cursor<E, V>) -> Step {
        if let Some(not_before) = cursor.not_before {
            if Instant::now() < not_before {
                return Step::Waiting(not_before);
            }
            cursor.not_before = None;
        }
        // The count of waiting queries decides; their wake (in `follow`) only ends the
        // loop's wait, and a rebuild that keeps the loop busy comes here without it.
        if let Some(until) = cursor.resting_until.take()
            && Instant::now() < until
            && self.shared.waiters.load(Ordering::Acquire) == 0
        {
            cursor.resting_until = Some(until);
            return Step::Waiting(until);
        }
        let started = Instant::now();
        let from = match cursor.checkpoint {
            Some(from) => from,
            None => match self.load(cursor).await {
                Ok(from) => from,
                Err(error) => return self.batch_failed(cursor, &error),
            },
        };
        let events = match self.read(&mut *cursor, from.position).await {
            Ok(events) if events.is_empty() => {
                if cursor.slot == Slot::Live {
                    // Read and found nothing: whatever failed before does not now.
                    self.shared.set_failure(None);
                }
                return Step::Idle;
            }
            Ok(events) => events,
            Err(error) => return self.batch_failed(cursor, &error),
        };
        let passed = self
            .projection
            .pass(
                self.views.as_ref(),
                cursor.slot,
                from,
                &events,
                &cursor.skips,
                &cursor.plan,
                &mut cursor.warm,
            )
            .await;
        let read = events.len();
        match passed {
            Ok(Pass::Committed { to, events, parked }) => {
                cursor.committed(from.next(to));
                if cursor.slot == Slot::Live {
                    // Sagas rest too: a request that waits on what a saga does next
                    // without a position to wait for holds `ProjectionHandle::awaited`.
                    let rests = read < self.projection.batch_size
                        && self.shared.waiters.load(Ordering::Acquire) == 0;
                    if rests {
                        let rest = (started.elapsed() * REST_FACTOR).min(MAX_REST);
                        cursor.resting_until = Some(Instant::now() + rest);
                    }
                    self.shared.advance(to);
                    self.shared.set_failure(None);
                    self.shared.events_applied.fetch_add(events, Ordering::Relaxed);
                }
                for instance in parked {
                    tracing::warn!(
                        projection = self.name(),
                        slot = ?cursor.slot,
                        view_id = %instance.view_id,
                        position = %instance.position,
                        error = %instance.error,
                        "parked a view instance; its later events wait with it"
                    );
                }
                Step::Advanced
            }
            Ok(Pass::Failed(failures)) => self.instances_failed(cursor, failures).await,
            Err(ProjectionError::View(ViewError::Fenced { .. }))
                if cursor.slot == Slot::Rebuild =>
            {
                // Only another runner moves a rebuild (a node with a newer definition that
                // superseded it, or one that took over): going on would mix its rows with
                // ours. The next look decides afresh which rebuild to run.
                tracing::warn!(
                    projection = self.name(),
                    "the rebuild changed elsewhere; leaving it"
                );
                Step::Lost
            }
            Err(ProjectionError::View(ViewError::Fenced { .. })) if cursor.fences < 2 => {
                // An operator's retry or a rebuild's swap moved the checkpoint: read it again
                // and redo the batch at once. Repeated fences mean another runner; back off.
                cursor.fences += 1;
                cursor.checkpoint = None;
                Step::Advanced
            }
            Err(error) => self.batch_failed(cursor, &error),
        }
    }

    async fn instances_failed(
        &self,
        cursor: &mut Cursor<E, V>,
        failures: Vec<InstanceFailure>,
    ) -> Step {
        if cursor.slot == Slot::Live {
            self.shared.failed_applies.fetch_add(failures.len() as u64, Ordering::Relaxed);
        }
        let Some(attempts) = cursor.tried(&failures) else {
            let tries = failures
                .iter()
                .filter_map(|f| cursor.attempts.get(&(f.view_id.clone(), f.position)))
                .max();
            let wait = backoff(tries.copied().unwrap_or(1));
            for failure in &failures {
                tracing::warn!(
                    projection = self.name(),
                    view_id = %failure.view_id,
                    position = %failure.position,
                    error = %failure.error,
                    ?wait,
                    "a view instance cannot apply an event; trying again"
                );
            }
            let not_before = Instant::now() + wait;
            cursor.not_before = Some(not_before);
            return Step::Waiting(not_before);
        };
        if cursor.slot == Slot::Rebuild {
            // An operator may have skipped the event since the rebuild read its skips.
            match self.views.skipped(self.name()).await {
                Ok(skipped) => {
                    let skips: HashSet<(String, Position)> =
                        skipped.into_iter().map(|s| (s.view_id, s.position)).collect();
                    if failures.iter().any(|f| skips.contains(&(f.view_id.clone(), f.position))) {
                        cursor.skips = skips;
                        return Step::Advanced;
                    }
                }
                Err(error) => return self.batch_failed(cursor, &error.into()),
            }
        }
        for failure in &failures {
            if cursor.slot == Slot::Rebuild && !cursor.parks_all {
                match self.live_verdict(&failure.view_id, failure.position).await {
                    Ok(LiveVerdict::Parked) => {}
                    Ok(LiveVerdict::Applied) => {
                        // A rebuild reproduces what live processing parked, but a new
                        // failure stops it: the live views keep serving rather than be
                        // replaced by broken ones.
                        return Step::GiveUp(format!(
                            "rebuild stopped at position {}: view {} cannot apply it: {}",
                            failure.position, failure.view_id, failure.error
                        ));
                    }
                    Err(error) => return self.batch_failed(cursor, &error),
                }
            }
            cursor.plan_park(failure, attempts);
        }
        Step::Advanced
    }

    /// What live processing did with the event at `position` of instance `id`, for a rebuild
    /// that failed on it. An event live has not reached yet counts as parked: after the swap,
    /// live goes on from the rebuild's state, past the event, exactly as if it had parked it
    /// itself.
    async fn live_verdict(
        &self,
        id: &str,
        position: Position,
    ) -> Result<LiveVerdict, ProjectionError> {
        let ids = [id.to_owned()];
        let mut found = self.views.load::<V>(self.name(), Slot::Live, &ids).await?;
        let live = self.views.checkpoint(self.name(), Slot::Live).await?;
        let parked = found.remove(id).and_then(|stored| stored.parked);
        Ok(match parked {
            Some(parking) if parking.position <= position => LiveVerdict::Parked,
            _ if live.position < position => LiveVerdict::Parked,
            _ => LiveVerdict::Applied,
        })
    }

    fn batch_failed(&self, cursor: &mut Cursor<E, V>, error: &ProjectionError) -> Step {
        cursor.checkpoint = None;
        cursor.batch_failures += 1;
        let wait = backoff(cursor.batch_failures);
        tracing::warn!(
            projection = self.name(),
            slot = ?cursor.slot,
            failures = cursor.batch_failures,
            ?wait,
            %error,
            "projection batch failed; retrying"
        );
        if cursor.slot == Slot::Live {
            self.shared.set_failure(Some(error.to_string()));
        } else if cursor.batch_failures >= REBUILD_BATCH_FAILURES {
            return Step::GiveUp(format!(
                "rebuild stopped after position {}: {error}",
                cursor.reached
            ));
        }
        let not_before = Instant::now() + wait;
        cursor.not_before = Some(not_before);
        Step::Waiting(not_before)
    }

    /// Swaps the rebuild in if it has reached the live checkpoint. `read_all` says whether
    /// its last read found nothing more in the log.
    async fn finish(
        &self,
        rebuild: &mut Cursor<E, V>,
        live: &mut Cursor<E, V>,
        read_all: bool,
    ) -> Finish {
        let Some(rebuilt) = rebuild.checkpoint else { return Finish::NotYet };
        // Read without the head check a live load makes: views ahead of the log are what a
        // rebuild from the log repairs.
        let live_checkpoint = match live.checkpoint {
            Some(checkpoint) => checkpoint,
            None => match self.views.checkpoint(self.name(), Slot::Live).await {
                Ok(checkpoint) => checkpoint,
                Err(error) => return self.finish_failed(rebuild, &error.to_string()),
            },
        };
        if rebuilt.position < live_checkpoint.position {
            // Not there yet: the rebuild reads on. Unless it has read the whole log and live
            // is still ahead (views kept beside an older log): then the swap repairs them.
            // Asked of the log itself, since a node's published head lags other nodes' writes.
            if !read_all {
                return Finish::NotYet;
            }
            match self.reader.store().read_all(rebuilt.position, 1).await {
                Ok(more) if more.is_empty() => {}
                Ok(_) => return Finish::NotYet,
                Err(error) => return self.finish_failed(rebuild, &error.to_string()),
            }
        }
        match self.reconcile(rebuild).await {
            Ok(Reconciled::Nothing) => {}
            Ok(Reconciled::Replayed) => {
                // The replays moved the rebuild's checkpoint; read it and come back.
                rebuild.checkpoint = None;
                return Finish::NotYet;
            }
            Ok(Reconciled::Failed(error)) => return Finish::GiveUp(error),
            Ok(Reconciled::Lost) => return Finish::Lost,
            Err(error) => return self.finish_failed(rebuild, &error.to_string()),
        }
        let tables = self.projection.tables();
        match self.views.finish_rebuild(self.name(), tables, rebuilt, live_checkpoint).await {
            Ok(swapped) => {
                // The live instances were replaced: none of the warm ones is current.
                live.warm.clear();
                live.committed(swapped);
                self.shared.advance(swapped.position);
                tracing::info!(projection = self.name(), position = %swapped.position, "rebuild swapped in");
                Finish::Over
            }
            Err(ViewError::Fenced { projection, .. }) if projection == self.name() => {
                live.checkpoint = None;
                Finish::NotYet
            }
            Err(error @ (ViewError::Fenced { .. } | ViewError::NoRebuild(_))) => {
                tracing::warn!(projection = self.name(), %error, "the rebuild changed elsewhere; leaving it");
                Finish::Lost
            }
            Err(error) => self.finish_failed(rebuild, &error.to_string()),
        }
    }

    fn finish_failed(&self, rebuild: &mut Cursor<E, V>, error: &str) -> Finish {
        rebuild.batch_failures += 1;
        if rebuild.batch_failures >= REBUILD_BATCH_FAILURES {
            return Finish::GiveUp(format!(
                "rebuild stopped at its swap, at position {}: {error}",
                rebuild.reached
            ));
        }
        tracing::warn!(projection = self.name(), %error, "cannot swap the rebuild in yet");
        rebuild.not_before = Some(Instant::now() + backoff(rebuild.batch_failures));
        Finish::NotYet
    }

    /// Brings the rebuild's parked instances in line with what live did meanwhile: an
    /// instance parked in the rebuild but not at that event in live (an operator released it,
    /// or live had not reached the event yet) is replayed in the rebuild slot, dropping events
    /// skipped since; each parked event once. One that fails again where live has applied
    /// the event is a new failure, which stops the rebuild.
    async fn reconcile(&self, rebuild: &mut Cursor<E, V>) -> Result<Reconciled, ProjectionError> {
        if rebuild.parks_all {
            // Live was built by another definition: its parked instances mean nothing here.
            return Ok(Reconciled::Nothing);
        }
        let in_rebuild = self.views.parked(self.name(), Slot::Rebuild).await?;
        if in_rebuild.is_empty() {
            return Ok(Reconciled::Nothing);
        }
        let in_live: HashMap<String, Position> = self
            .views
            .parked(self.name(), Slot::Live)
            .await?
            .into_iter()
            .map(|p| (p.view_id, p.position))
            .collect();
        let mut outcome = Reconciled::Nothing;
        for parked in in_rebuild {
            if in_live.get(&parked.view_id) == Some(&parked.position)
                || !rebuild.reconciled.insert((parked.view_id.clone(), parked.position))
            {
                continue;
            }
            let replayed = self
                .projection
                .replay_parked(self.views.as_ref(), Slot::Rebuild, &parked.view_id, None)
                .await?;
            let Some(replayed) = replayed else { return Ok(Reconciled::Lost) };
            outcome = Reconciled::Replayed;
            let Some(again) = replayed.and_then(|r| r.stored.parked) else { continue };
            if let LiveVerdict::Applied = self.live_verdict(&parked.view_id, again.position).await?
            {
                return Ok(Reconciled::Failed(format!(
                    "rebuild stopped at position {}: view {} failed where live processing applied the event: {}",
                    again.position, parked.view_id, again.error
                )));
            }
        }
        Ok(outcome)
    }

    async fn give_up(&self, rebuild: &Cursor<E, V>, error: &str) {
        tracing::error!(projection = self.name(), %error, "rebuild failed; the live views keep serving");
        let at = rebuild.checkpoint.unwrap_or_default();
        // A rebuild whose checkpoint is unknown (it failed reading it) is read again for the
        // fence; if that fails too, the failure shows in the logs and the next owner retries.
        let at = match rebuild.checkpoint {
            Some(_) => at,
            None => self.views.checkpoint(self.name(), Slot::Rebuild).await.unwrap_or(at),
        };
        if let Err(failed) = self.views.fail_rebuild(self.name(), at, error).await {
            tracing::warn!(projection = self.name(), error = %failed, "cannot record the rebuild's failure");
        }
    }

    /// The rebuild this code should run, if any: one running under this version of the
    /// definition, or one begun here when `wanted` (an operator asked) or when the live views
    /// were built by an older version. A running rebuild of an older version is superseded,
    /// since its rows would mix with this version's; one of a newer version is left to the
    /// code that runs it. Live views a newer version built are left alone too, unless an
    /// operator asks for this version's rebuild (the way back after a rollback): without a
    /// rebuild to run, that is [`ProjectionError::NewerDefinition`].
    async fn adopt_rebuild(
        &self,
        wanted: bool,
        live: Option<&mut Cursor<E, V>>,
    ) -> Result<Option<Cursor<E, V>>, ProjectionError> {
        let record = self.views.record(self.name()).await?;
        if let Some(live) = live
            && live.checkpoint.is_some_and(|known| known != record.checkpoint)
        {
            // The stored checkpoint moved without a commit of this runner's (a damaged view
            // store set aside and begun afresh, say): read it again before the next batch,
            // rather than wait for a fence that only a new event would bring.
            live.checkpoint = None;
        }
        let version = self.projection.version();
        let live_is_older = record.version != 0 && record.version < version;
        let nothing_to_run = || {
            if record.version > version && !wanted {
                Err(ProjectionError::NewerDefinition { stored: record.version, version })
            } else {
                Ok(None)
            }
        };
        let adopt = |from: Position| {
            tracing::info!(projection = self.name(), %from, version, "running a rebuild");
            let mut cursor = Cursor::new(Slot::Rebuild);
            cursor.parks_all = record.version != version;
            Some(cursor)
        };
        match &record.rebuild {
            Some(rebuild) if rebuild.error.is_none() && rebuild.version == version => {
                return Ok(adopt(rebuild.checkpoint.position));
            }
            Some(rebuild) if rebuild.error.is_none() && rebuild.version > version => {
                tracing::debug!(
                    projection = self.name(),
                    theirs = rebuild.version,
                    version,
                    "a newer definition's rebuild is running"
                );
                return nothing_to_run();
            }
            Some(rebuild) if rebuild.error.is_none() => {
                tracing::warn!(
                    projection = self.name(),
                    theirs = rebuild.version,
                    version,
                    "superseding an older definition's rebuild"
                );
                let why = format!("superseded by version {version} of the projection's definition");
                self.views.fail_rebuild(self.name(), rebuild.checkpoint, &why).await?;
            }
            // This version's rebuild failed: it runs again when an operator asks, not in a loop.
            Some(rebuild) if rebuild.version == version && !wanted => return nothing_to_run(),
            _ => {}
        }
        if !wanted && !live_is_older {
            return nothing_to_run();
        }
        if live_is_older {
            tracing::warn!(
                projection = self.name(),
                stored = record.version,
                version,
                "the views were built by an older version of the projection; rebuilding them"
            );
        }
        match self
            .views
            .begin_rebuild(self.name(), self.projection.tables(), version, Utc::now())
            .await
        {
            Ok(_) => Ok(adopt(Position::START)),
            // Begun elsewhere meanwhile: the next look adopts it.
            Err(ViewError::RebuildInProgress(_)) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Runs the projection from its checkpoint, following new commits and running rebuilds,
    /// until the store closes.
    async fn follow(&self) {
        let mut heads = self.reader.store().subscribe();
        let mut live = Cursor::new(Slot::Live);
        let mut rebuild: Option<Cursor<E, V>> = None;
        // Whether the live views were built by a newer definition: this node then leaves
        // them alone (unless it runs a rebuild an operator asked for) and says so.
        let mut aside = false;
        let mut next_check = Instant::now();
        // One timer for the whole loop, moved rather than made anew at every wait: a busy
        // projection waits after every batch, and registering a timer each time showed in
        // profiles.
        let timer = tokio::time::sleep_until(next_check);
        tokio::pin!(timer);
        loop {
            if rebuild.is_none() && Instant::now() >= next_check {
                next_check = Instant::now() + REBUILD_POLL;
                match self.adopt_rebuild(false, Some(&mut live)).await {
                    Ok(found) => {
                        rebuild = found;
                        if aside && rebuild.is_none() {
                            aside = false;
                            self.shared.set_failure(None);
                        }
                    }
                    Err(error @ ProjectionError::NewerDefinition { .. }) => {
                        if !aside {
                            tracing::error!(projection = self.name(), %error, "leaving the views alone");
                        }
                        aside = true;
                        self.shared.set_failure(Some(error.to_string()));
                    }
                    Err(error) => {
                        tracing::warn!(projection = self.name(), %error, "cannot look for a rebuild")
                    }
                }
            }
            // Looking for a rebuild is due at `next_check` only while none runs; otherwise the
            // loop wakes for commits, backoffs, or a poll's worth of time at most.
            let mut wake =
                if rebuild.is_none() { next_check } else { Instant::now() + REBUILD_POLL };
            let mut busy = false;
            // New commits matter only when live is idle; while it backs off they would only
            // wake it to wait again.
            let mut live_idle = false;
            match if aside { Step::Waiting(wake) } else { self.step(&mut live).await } {
                Step::Advanced => busy = true,
                Step::Waiting(until) => wake = wake.min(until),
                Step::Idle | Step::GiveUp(_) | Step::Lost => live_idle = true,
            }
            if let Some(cursor) = rebuild.as_mut() {
                let over = match self.step(cursor).await {
                    // Swapped in as soon as it has reached live, not only when nothing is
                    // left to read: under steady load the head never stands still, and a
                    // rebuild waiting for it would chase it forever.
                    step @ (Step::Advanced | Step::Idle) => {
                        match self.finish(cursor, &mut live, matches!(step, Step::Idle)).await {
                            Finish::Over => {
                                // The live views are this version's now, and whole.
                                aside = false;
                                self.shared.set_failure(None);
                                true
                            }
                            Finish::Lost => {
                                next_check = Instant::now();
                                true
                            }
                            Finish::NotYet => {
                                // A rebuild that read nothing and cannot swap yet waits for
                                // new commits like live does, instead of asking again at once.
                                busy |=
                                    matches!(step, Step::Advanced) || cursor.checkpoint.is_none();
                                false
                            }
                            Finish::GiveUp(error) => {
                                self.give_up(cursor, &error).await;
                                true
                            }
                        }
                    }
                    Step::Waiting(until) => {
                        wake = wake.min(until);
                        false
                    }
                    Step::GiveUp(error) => {
                        self.give_up(cursor, &error).await;
                        true
                    }
                    Step::Lost => {
                        next_check = Instant::now();
                        true
                    }
                };
                if over {
                    rebuild = None;
                    next_check = next_check.min(Instant::now() + REBUILD_POLL);
                }
            }
            if busy {
                continue;
            }
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            tokio::select! {
                changed = heads.changed(), if live_idle => if changed.is_err() { return },
                () = self.shared.wake.notified() => next_check = Instant::now(),
                () = self.shared.hurry.notified() => {}
                () = &mut timer => {}
            }
        }
    }

    /// Watches the live checkpoint until `until`, for a node that does not run the
    /// projection.
    async fn observe(&self, until: Instant) {
        while Instant::now() < until {
            if let Ok(checkpoint) = self.views.checkpoint(self.name(), Slot::Live).await {
                self.shared.advance(checkpoint.position);
            }
            tokio::time::sleep(OBSERVE_INTERVAL).await;
        }
    }

    /// Creates the projection's tables, retrying until the view store answers.
    async fn prepare(&self) {
        let mut failures = 0;
        while let Err(error) = self
            .views
            .prepare(self.name(), self.projection.tables(), self.projection.version())
            .await
        {
            failures += 1;
            tracing::warn!(projection = self.name(), %error, "cannot prepare the projection's tables; retrying");
            tokio::time::sleep(backoff(failures)).await;
        }
    }

    /// An engine for work without a task (tests, benchmarks, tools), its tables prepared;
    /// it fails rather than wait when the view store does not answer.
    async fn offline(
        projection: Projection<E, V, L>,
        store: Arc<S>,
        views: Arc<M>,
    ) -> Result<Self, ProjectionError> {
        let engine = Engine {
            projection: Arc::new(projection),
            reader: SharedReader::new(store),
            views,
            shared: Arc::new(Shared::new()),
        };
        engine
            .views
            .prepare(engine.name(), engine.projection.tables(), engine.projection.version())
            .await?;
        Ok(engine)
    }

    /// Catches the live slot up with the head as it is when called, without a lease or a
    /// task: for tests, benchmarks and tools. Failing instances are parked as a running
    /// projection parks them (after [`MAX_ATTEMPTS`] tries, without waiting between them).
    pub(crate) async fn catch_up(&self) -> Result<Position, ProjectionError> {
        let head = self.reader.store().head();
        let mut live = Cursor::new(Slot::Live);
        live.bulk = true;
        let mut from = self.load(&mut live).await?;
        while from.position < head {
            let events = self.read(&mut live, from.position).await?;
            if events.is_empty() {
                break;
            }
            let passed = self.projection.pass(
                self.views.as_ref(),
                Slot::Live,
                from,
                &events,
                &live.skips,
                &live.plan,
                &mut live.warm,
            );
            match passed.await? {
                Pass::Committed { to, .. } => {
                    from = from.next(to);
                    live.committed(from);
                }
                Pass::Failed(failures) => {
                    if let Some(attempts) = live.tried(&failures) {
                        for failure in &failures {
                            live.plan_park(failure, attempts);
                        }
                    }
                }
            }
        }
        self.shared.advance(from.position);
        Ok(from.position)
    }

    /// Rebuilds the projection into its rebuild slot and swaps it in, without a task: for
    /// `strata projections rebuild`. Resumes a rebuild that was running, or begins one.
    /// `progress` is told the rebuild's position and the head after every batch.
    pub(crate) async fn rebuild_to_end(
        &self,
        progress: &(dyn Fn(Position, Position) + Sync),
    ) -> Result<Position, ProjectionError> {
        let Some(mut rebuild) = self.adopt_rebuild(true, None).await? else {
            return Err(ProjectionError::RebuildFailed(
                "a rebuild by a newer version of the projection's definition is running; run it with that version".into(),
            ));
        };
        let mut live = Cursor::new(Slot::Live);
        loop {
            match self.step(&mut rebuild).await {
                step @ (Step::Advanced | Step::Idle) => {
                    match self.finish(&mut rebuild, &mut live, matches!(step, Step::Idle)).await {
                        Finish::Over => {
                            let position = live.checkpoint.map_or(Position::START, |c| c.position);
                            return Ok(position);
                        }
                        Finish::Lost => return Err(taken_over()),
                        Finish::NotYet
                            if matches!(step, Step::Idle) && rebuild.checkpoint.is_some() =>
                        {
                            // Caught up but not swappable yet (live moved on elsewhere): the
                            // log will have more soon.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Finish::NotYet => {}
                        Finish::GiveUp(error) => {
                            self.give_up(&rebuild, &error).await;
                            return Err(ProjectionError::RebuildFailed(error));
                        }
                    }
                }
                Step::Waiting(until) => tokio::time::sleep_until(until).await,
                Step::GiveUp(error) => {
                    self.give_up(&rebuild, &error).await;
                    return Err(ProjectionError::RebuildFailed(error));
                }
                Step::Lost => return Err(taken_over()),
            }
            let position = rebuild.checkpoint.map_or(Position::START, |c| c.position);
            progress(position, self.reader.store().head());
        }
    }
}

/// Why an offline rebuild stopped when another runner moved its rebuild.
fn taken_over() -> ProjectionError {
    ProjectionError::RebuildFailed(
        "another runner took the rebuild over (a service running this projection, or a newer definition)".into(),
    )
}

async fn supervise<S, M, E, V, L, G>(
    engine: Arc<Engine<S, M, E, V, L>>,
    leases: Arc<G>,
    node_id: String,
) where
    S: EventStore,
    M: ViewManager,
    E: DomainEvent,
    V: View<E>,
    L: ViewLocator<E>,
    G: Leases,
{
    let name = engine.name();
    engine.prepare().await;
    let mut panics = 0;
    loop {
        match leases.try_acquire(name).await {
            Ok(Some(lease)) => {
                tracing::info!(projection = name, node = %node_id, "running projection");
                engine.shared.owner.send_replace(Some(node_id.clone()));
                // Its own task, so that a panic outside views and locators (which are
                // caught per event) ends this run, not the supervisor; the guard stops it
                // if the supervisor itself is stopped.
                let run = {
                    let engine = engine.clone();
                    tokio::spawn(async move { engine.follow().await })
                };
                let _stop_with_supervisor = AbortOnDrop(run.abort_handle());
                *locked(&engine.shared.running) = Some(run.abort_handle());
                tokio::select! {
                    joined = run => match joined {
                        Err(error) if error.is_panic() => {
                            panics += 1;
                            let message = super::batch::panic_message(&*error.into_panic());
                            tracing::error!(projection = name, %message, "projection panicked; restarting it");
                            engine.shared.set_failure(Some(format!("the projection panicked: {message}")));
                            engine.shared.owner.send_replace(None);
                            drop(lease);
                            tokio::time::sleep(backoff(panics)).await;
                            continue;
                        }
                        _ => return,
                    },
                    () = lease.lost() => {
                        tracing::warn!(projection = name, "lease lost; stopping the projection here");
                    }
                }
                engine.shared.owner.send_replace(None);
            }
            Ok(None) => {
                // Another node runs it: follow its checkpoint until the next attempt.
                if let Ok(owner) = leases.owner(name).await {
                    engine.shared.owner.send_replace(owner);
                }
                engine.observe(Instant::now() + ACQUIRE_INTERVAL).await;
            }
            Err(error) => {
                tracing::warn!(projection = name, %error, "cannot take the projection's lease");
                tokio::time::sleep(ACQUIRE_INTERVAL).await;
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<E, V, L> Projection<E, V, L>
where
    E: DomainEvent,
    V: View<E>,
    L: ViewLocator<E>,
{
    /// Processes batches until the live checkpoint reaches the store's head as it was when
    /// called, parking instances that fail; returns the checkpoint reached. For tests,
    /// benchmarks and tools; a service runs projections with [`ProjectionRunner`].
    pub async fn catch_up<S: EventStore, M: ViewManager>(
        self,
        store: Arc<S>,
        views: Arc<M>,
    ) -> Result<Position, ProjectionError> {
        Engine::offline(self, store, views).await?.catch_up().await
    }

    /// Rebuilds the projection from position 0 into fresh storage while its live views keep
    /// serving, then swaps it in; resumes a rebuild that was interrupted. `progress` is told
    /// the rebuild's position and the head after every batch. Fails, leaving the live views
    /// as they were, when an event fails that live processing did not park.
    pub async fn rebuild<S: EventStore, M: ViewManager>(
        self,
        store: Arc<S>,
        views: Arc<M>,
        progress: &(dyn Fn(Position, Position) + Sync),
    ) -> Result<Position, ProjectionError> {
        Engine::offline(self, store, views).await?.rebuild_to_end(progress).await
    }
}
