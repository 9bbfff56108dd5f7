//! One batch of a projection, and an operator's replay of one parked instance.
//!
//! A batch is located (which instances each event touches), each touched instance is loaded
//! once, events are applied in order, and everything is committed with the new checkpoint.
//! Per instance, in order of precedence, an event is:
//! 1. added to the instance's waiting events, if the instance is parked;
//! 2. passed over, if the instance already reflects it (its position is at or beyond it);
//! 3. dropped, if an operator skipped it for this instance (kept for good, so that a rebuild
//!    drops it too);
//! 4. the first waiting event, if the runner decided to park the instance here;
//! 5. applied.
//!
//! A failure to decode or apply fails the pass without committing anything; the runner
//! retries, and after [`super::MAX_ATTEMPTS`] tries it runs the pass again with the instance
//! planned for parking at that event. Since nothing of a failed pass is kept, an instance
//! that a view left half-changed is never saved.

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use chrono::Utc;

use super::reader::ReadEvent;
use super::{Projection, ProjectionError, ReactionFailed};
use crate::event::DomainEvent;
use crate::stream::Position;
use crate::table::{self, RowChange, TableRows, Value};
use crate::view::{Parking, StoredView, View, ViewLocator};
use crate::view_manager::{Checkpoint, Commit, SkippedEvent, Slot, ViewManager};

/// An instance that could not take an event in a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceFailure {
    /// The instance.
    pub view_id: String,
    /// The event.
    pub position: Position,
    /// Why.
    pub error: String,
}

/// An instance the next pass parks at `position`.
#[derive(Debug, Clone)]
pub(crate) struct PlannedPark {
    pub(crate) position: Position,
    pub(crate) error: String,
    pub(crate) attempts: u32,
}

/// What a pass did.
#[derive(Debug)]
pub(crate) enum Pass {
    /// The batch committed; the checkpoint is now at `to`.
    Committed {
        /// The new checkpoint position.
        to: Position,
        /// Events in the batch.
        events: u64,
        /// Instances parked by this batch, with the event they wait on.
        parked: Vec<InstanceFailure>,
    },
    /// Instances failed; nothing was written.
    Failed(Vec<InstanceFailure>),
}

/// The instances a cursor's last batch left, as committed: the next batch takes them from
/// here instead of loading them, since nothing else writes its slot (anything that does
/// moves the checkpoint's revision, fences the next commit, and the pass starts cold).
pub(crate) type Warm<V> = HashMap<String, StoredView<V>>;

/// An instance while a batch is applied to it.
struct Working<V> {
    stored: StoredView<V>,
    old_rows: Vec<(&'static str, Vec<Value>)>,
    changed: bool,
    /// Failed in this pass: later events of the batch are not applied to it.
    broken: bool,
    last_applied: Option<Position>,
    /// The indexes of the batch's events applied to it, when the projection reacts to them.
    applied: Vec<usize>,
}

/// The state an operator's retry or skip left an instance in.
#[derive(Debug, Clone)]
pub(crate) struct Replayed<V> {
    pub(crate) stored: StoredView<V>,
    pub(crate) waiting: u64,
}

impl<E, V, L> Projection<E, V, L>
where
    E: DomainEvent,
    V: View<E>,
    L: ViewLocator<E>,
{
    /// Applies `events` (all after `from`) to `slot` and commits them with the checkpoint.
    #[expect(
        clippy::too_many_arguments,
        reason = "each is a separate input of one batch; a struct would only rename them"
    )]
    pub(crate) async fn pass<M: ViewManager>(
        &self,
        views: &M,
        slot: Slot,
        from: Checkpoint,
        events: &[Arc<ReadEvent<E>>],
        skips: &HashSet<(String, Position)>,
        plan: &HashMap<String, PlannedPark>,
        warm: &mut Warm<V>,
    ) -> Result<Pass, ProjectionError> {
        // Taken whole: if this pass fails, the next one starts cold.
        let mut cached = std::mem::take(warm);
        let Some(last) = events.last().map(|event| event.position) else {
            return Ok(Pass::Committed { to: from.position, events: 0, parked: Vec::new() });
        };
        let (located, ids) = self.locate(events)?;
        let mut unique: Vec<&String> = ids.iter().collect();
        unique.sort_unstable();
        unique.dedup();
        let unique: Vec<String> = unique.into_iter().cloned().collect();
        let misses: Vec<String> =
            unique.iter().filter(|id| !cached.contains_key(*id)).cloned().collect();
        let mut loaded = if misses.is_empty() {
            HashMap::new()
        } else {
            views.load::<V>(self.name, slot, &misses).await?
        };
        let mut instances: HashMap<String, Working<V>> = HashMap::with_capacity(unique.len());
        let mut failures = Vec::new();
        for id in unique {
            let stored = cached
                .remove(&id)
                .or_else(|| loaded.remove(&id))
                .unwrap_or_else(|| StoredView::current(V::default(), Position::START));
            // Rows stored by an earlier version of the view that no longer fit are simply
            // not subtracted; the new rows are checked below.
            let old_rows = self.rows_of(&id, &stored).unwrap_or_default();
            let working = Working {
                stored,
                old_rows,
                changed: false,
                broken: false,
                last_applied: None,
                applied: Vec::new(),
            };
            instances.insert(id, working);
        }

        let now = Utc::now();
        let mut parked_events = Vec::new();
        let mut newly_parked = Vec::new();
        for (index, range) in located {
            let event = &events[index];
            let position = event.position;
            for id in &ids[range] {
                let Some(working) = instances.get_mut(id) else { continue };
                if working.broken {
                    continue;
                }
                if working.stored.parked.is_some() {
                    parked_events.push((id.clone(), event.record()));
                    continue;
                }
                if position <= working.stored.position {
                    continue;
                }
                if !skips.is_empty() && skips.contains(&(id.clone(), position)) {
                    working.stored.position = position;
                    working.changed = true;
                    continue;
                }
                if let Some(planned) = plan.get(id).filter(|planned| planned.position == position) {
                    working.stored.parked = Some(Parking {
                        position,
                        error: planned.error.clone(),
                        attempts: planned.attempts,
                        parked_at: now,
                    });
                    working.changed = true;
                    parked_events.push((id.clone(), event.record()));
                    newly_parked.push(InstanceFailure {
                        view_id: id.clone(),
                        position,
                        error: planned.error.clone(),
                    });
                    continue;
                }
                match apply(&mut working.stored.view, event) {
                    Ok(()) => {
                        working.stored.position = position;
                        working.changed = true;
                        working.last_applied = Some(position);
                        if self.reactor.is_some() {
                            working.applied.push(index);
                        }
                    }
                    Err(error) => {
                        working.broken = true;
                        failures.push(InstanceFailure { view_id: id.clone(), position, error });
                    }
                }
            }
        }
        if !failures.is_empty() {
            return Ok(Pass::Failed(failures));
        }
        self.react(slot, events, &mut instances, &mut failures).await?;
        if !failures.is_empty() {
            return Ok(Pass::Failed(failures));
        }

        let mut commit = Commit::new(from, last);
        if let Some(event_rows) = self.event_rows {
            let mut rows = TableRows::default();
            for event in events {
                event_rows(&event.logged(), &mut rows);
            }
            let rows = rows.into_rows();
            table::check_rows(self.tables, &rows)
                .map_err(|error| ProjectionError::EventRows { last, error })?;
            for (name, row) in rows {
                if let Some(spec) = self.tables.iter().find(|spec| spec.name == name) {
                    commit.rows.push(RowChange::Upsert { table: spec, row });
                }
            }
        }
        let mut kept: Warm<V> = HashMap::with_capacity(instances.len());
        for (id, working) in instances {
            if !working.changed {
                kept.insert(id, working.stored);
                continue;
            }
            if !self.tables.is_empty() {
                let new_rows = match self.rows_of(&id, &working.stored) {
                    Ok(rows) => rows,
                    Err(error) => {
                        let position = working.last_applied.unwrap_or(working.stored.position);
                        failures.push(InstanceFailure { view_id: id, position, error });
                        continue;
                    }
                };
                table::diff_rows(self.tables, working.old_rows, new_rows, &mut commit.rows);
            }
            commit.views.push((id.clone(), working.stored.clone()));
            kept.insert(id, working.stored);
        }
        if !failures.is_empty() {
            return Ok(Pass::Failed(failures));
        }
        commit.parked_events = parked_events;
        views.commit(self.name, slot, commit).await?;
        tracing::debug!(
            projection = self.name,
            ?slot,
            from = %from.position,
            to = %last,
            events = events.len(),
            "batch committed"
        );
        *warm = kept;
        Ok(Pass::Committed { to: last, events: events.len() as u64, parked: newly_parked })
    }

    /// Runs the projection's reactor, if it has one, over the events each instance took:
    /// instances at once (a saga's commands then share the store's group commits), each
    /// instance's events in order. A failing instance is added to `failures`.
    async fn react(
        &self,
        slot: Slot,
        events: &[Arc<ReadEvent<E>>],
        instances: &mut HashMap<String, Working<V>>,
        failures: &mut Vec<InstanceFailure>,
    ) -> Result<(), ProjectionError> {
        let Some(reactor) = self.reactor.as_deref() else { return Ok(()) };
        let acting = slot == Slot::Live;
        let reactions = instances
            .iter_mut()
            .filter(|(_, working)| !working.applied.is_empty())
            .map(|(id, working)| async move {
                for &index in &working.applied {
                    let event = &events[index];
                    // Only events that decode were applied.
                    let Ok(envelope) = event.envelope() else { continue };
                    let reacted =
                        reactor.react(id, &mut working.stored.view, envelope, acting).await;
                    if let Err(failed) = reacted {
                        return Err((id.clone(), event.position, failed));
                    }
                }
                Ok(())
            });
        for reaction in futures_util::future::join_all(reactions).await {
            match reaction {
                Ok(()) => {}
                Err((view_id, position, ReactionFailed::Instance(error))) => {
                    failures.push(InstanceFailure { view_id, position, error });
                }
                Err((_, _, ReactionFailed::Batch(error))) => return Err(error),
            }
        }
        Ok(())
    }

    /// Which instances each event touches: for each event its index and a range of `ids`.
    #[expect(clippy::type_complexity, reason = "a private pair of parallel lists")]
    fn locate(
        &self,
        events: &[Arc<ReadEvent<E>>],
    ) -> Result<(Vec<(usize, std::ops::Range<usize>)>, Vec<String>), ProjectionError> {
        let mut located = Vec::with_capacity(events.len());
        let mut ids = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let start = ids.len();
            match (event.envelope(), event.undecodable()) {
                (Ok(envelope), _) => {
                    let found =
                        catch_unwind(AssertUnwindSafe(|| self.locator.locate(envelope, &mut ids)));
                    if found.is_err() {
                        return Err(ProjectionError::LocatorPanicked(event.position));
                    }
                }
                (Err(error), stored) => match (self.raw_locator, stored) {
                    (Some(raw), Some(stored)) => raw(stored, &mut ids),
                    _ => {
                        return Err(ProjectionError::Undecodable {
                            position: event.position,
                            error: error.to_owned(),
                        });
                    }
                },
            }
            located.push((index, start..ids.len()));
        }
        Ok((located, ids))
    }

    /// The rows `stored` contributes, checked against the tables; none for an instance that
    /// reflects no event.
    fn rows_of(
        &self,
        id: &str,
        stored: &StoredView<V>,
    ) -> Result<Vec<(&'static str, Vec<Value>)>, String> {
        if self.tables.is_empty() || stored.position == Position::START {
            return Ok(Vec::new());
        }
        let mut rows = TableRows::default();
        catch_unwind(AssertUnwindSafe(|| stored.view.rows(id, &mut rows))).map_err(|panic| {
            format!("the view panicked stating its rows: {}", panic_message(&*panic))
        })?;
        let rows = rows.into_rows();
        table::check_rows(self.tables, &rows)?;
        Ok(rows)
    }

    /// Applies the events waiting on parked instance `id` of the live slot, in order, and
    /// unparks it, or parks it again at the first event that still fails. With `skip`, the
    /// first waiting event is dropped for good (recorded with the reason) before the rest
    /// are applied. Fenced like a batch: `None` when the checkpoint moved meanwhile (the
    /// caller tries again), `Some(None)` when the instance is not parked.
    pub(crate) async fn replay_parked<M: ViewManager>(
        &self,
        views: &M,
        slot: Slot,
        id: &str,
        skip: Option<&str>,
    ) -> Result<Option<Option<Replayed<V>>>, ProjectionError> {
        let from = views.checkpoint(self.name, slot).await?;
        let ids = [id.to_owned()];
        let Some(stored) = views.load::<V>(self.name, slot, &ids).await?.remove(id) else {
            return Ok(Some(None));
        };
        let Some(parking) = stored.parked.clone() else { return Ok(Some(None)) };
        let waiting = views.parked_events(self.name, slot, id).await?;
        // Events skipped earlier (on the live slot, while a rebuild had parked them) are
        // dropped here too.
        let skipped: HashSet<Position> = views
            .skipped(self.name)
            .await?
            .into_iter()
            .filter(|s| s.view_id == id)
            .map(|s| s.position)
            .collect();
        let old_rows = self.rows_of(id, &stored).unwrap_or_default();

        let now = Utc::now();
        let mut commit = Commit::new(from, from.position);
        commit.released.push(id.to_owned());
        let mut state = StoredView { parked: None, ..stored };
        let mut rest = waiting.into_iter().peekable();
        if let (Some(reason), Some(first)) = (skip, rest.peek()) {
            commit.skipped.push(SkippedEvent {
                view_id: id.to_owned(),
                position: first.position,
                event_type: first.event_type.clone(),
                reason: reason.to_owned(),
                skipped_at: now,
            });
            state.position = state.position.max(first.position);
            rest.next();
        }
        let mut still_waiting = 0;
        while let Some(record) = rest.next() {
            let position = record.position;
            if position <= state.position {
                continue;
            }
            if skipped.contains(&position) {
                state.position = position;
                continue;
            }
            let event = ReadEvent::<E>::new(record.clone());
            let mut attempt = state.view.clone();
            let mut applied = apply(&mut attempt, &event);
            if applied.is_ok()
                && let Some(reactor) = self.reactor.as_deref()
                && let Ok(envelope) = event.envelope()
            {
                let acting = slot == Slot::Live;
                match reactor.react(id, &mut attempt, envelope, acting).await {
                    Ok(()) => {}
                    Err(ReactionFailed::Instance(error)) => applied = Err(error),
                    Err(ReactionFailed::Batch(error)) => return Err(error),
                }
            }
            match applied {
                Ok(()) => {
                    state.view = attempt;
                    state.position = position;
                }
                Err(error) => {
                    let attempts =
                        if position == parking.position { parking.attempts + 1 } else { 1 };
                    state.parked = Some(Parking { position, error, attempts, parked_at: now });
                    commit.parked_events.push((id.to_owned(), record));
                    commit
                        .parked_events
                        .extend(rest.by_ref().map(|record| (id.to_owned(), record)));
                    still_waiting = commit.parked_events.len() as u64;
                    break;
                }
            }
        }
        if !self.tables.is_empty() {
            let new_rows = self
                .rows_of(id, &state)
                .map_err(|error| ProjectionError::Rows { view_id: id.to_owned(), error })?;
            table::diff_rows(self.tables, old_rows, new_rows, &mut commit.rows);
        }
        commit.views.push((id.to_owned(), state.clone()));
        match views.commit(self.name, slot, commit).await {
            Ok(()) => Ok(Some(Some(Replayed { stored: state, waiting: still_waiting }))),
            Err(crate::ViewError::Fenced { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }
}

/// Applies one event to a view, turning a decode failure, a refusal or a panic into the
/// message the instance is parked with.
fn apply<E, V: View<E>>(view: &mut V, event: &ReadEvent<E>) -> Result<(), String> {
    let envelope = event.envelope().map_err(|error| format!("does not decode: {error}"))?;
    match catch_unwind(AssertUnwindSafe(|| view.apply(envelope))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(refused)) => Err(refused.to_string()),
        Err(panic) => Err(format!("the view panicked: {}", panic_message(&*panic))),
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "(no message)".to_owned()
    }
}
