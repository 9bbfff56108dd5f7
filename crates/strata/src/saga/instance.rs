//! One saga instance as the view store keeps it: the saga's state, where it stands, its
//! deadlines and what it did.

use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Saga;
use crate::event::{DomainEvent, Envelope};
use crate::stream::Position;
use crate::table::{TableRows, Value};
use crate::view::{ApplyError, View};

/// How many steps an instance's history keeps (the newest).
pub const HISTORY_LIMIT: usize = 100;

/// Where an instance stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Still at work (or waiting for something to happen).
    #[default]
    Active,
    /// Done as planned.
    Completed,
    /// Ended without reaching its goal.
    Failed,
}

impl SagaStatus {
    /// The name the admin API and the states table use.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Active => "active",
            SagaStatus::Completed => "completed",
            SagaStatus::Failed => "failed",
        }
    }
}

/// A command an instance sends when `due` comes, unless an event cancels it first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadline<C> {
    /// Its name within the instance; a new deadline of the same name replaces it.
    pub name: String,
    /// When it falls due.
    pub due: DateTime<Utc>,
    /// What it sends.
    pub command: C,
    /// The event that scheduled it; with the name, it makes the command's idempotency key.
    pub scheduled_at: Position,
}

/// One thing an instance did: an event it decided on, and a command it sent for it (one
/// step per command; `None` when the event sent nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The event's position.
    pub position: Position,
    /// The event's type.
    pub event: String,
    /// The command sent, by name.
    pub command: Option<String>,
}

/// A stored saga instance. Its events are applied by the saga's reactor, not by
/// [`View::apply`], since deciding needs the saga's settings and sending needs the bus.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct SagaInstance<G: Saga<E>, E: DomainEvent> {
    /// The saga's state.
    pub state: G::State,
    /// Where the instance stands.
    pub status: SagaStatus,
    /// Its pending deadlines.
    pub deadlines: Vec<Deadline<G::Command>>,
    /// What it did, oldest first (the newest [`HISTORY_LIMIT`] steps).
    pub history: Vec<Step>,
    #[serde(skip)]
    _event: PhantomData<fn() -> E>,
}

impl<G: Saga<E>, E: DomainEvent> SagaInstance<G, E> {
    /// The deadline that falls due first.
    pub fn next_deadline(&self) -> Option<&Deadline<G::Command>> {
        self.deadlines.iter().min_by_key(|deadline| deadline.due)
    }

    /// Records what was decided on `event`: deadlines, history and status.
    pub(crate) fn record(&mut self, event: &Envelope<E>, actions: &super::Actions<G::Command>) {
        let position = event.position;
        self.deadlines.retain(|deadline| {
            !actions.cancelled.contains(&deadline.name)
                && !actions.scheduled.iter().any(|(name, _, _)| *name == deadline.name)
        });
        for (name, due, command) in &actions.scheduled {
            let command = command.clone();
            self.deadlines.push(Deadline {
                name: name.clone(),
                due: *due,
                command,
                scheduled_at: position,
            });
        }
        let event_type = event.event.event_type();
        if actions.sent.is_empty() {
            self.history.push(Step { position, event: event_type.to_owned(), command: None });
        }
        for command in &actions.sent {
            let command = Some(G::command_name(command));
            self.history.push(Step { position, event: event_type.to_owned(), command });
        }
        let excess = self.history.len().saturating_sub(HISTORY_LIMIT);
        self.history.drain(..excess);
        self.status = G::status(&self.state);
    }
}

impl<G: Saga<E>, E: DomainEvent> Default for SagaInstance<G, E> {
    fn default() -> Self {
        Self {
            state: G::State::default(),
            status: SagaStatus::Active,
            deadlines: Vec::new(),
            history: Vec::new(),
            _event: PhantomData,
        }
    }
}

impl<G: Saga<E>, E: DomainEvent> Clone for SagaInstance<G, E> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            status: self.status,
            deadlines: self.deadlines.clone(),
            history: self.history.clone(),
            _event: PhantomData,
        }
    }
}

impl<G: Saga<E>, E: DomainEvent> View<E> for SagaInstance<G, E> {
    fn apply(&mut self, _event: &Envelope<E>) -> Result<(), ApplyError> {
        Ok(())
    }

    fn rows(&self, id: &str, rows: &mut TableRows) {
        let tables = G::TABLES;
        rows.push(
            tables.states.name,
            vec![Value::Text(self.status.as_str().to_owned()), Value::Integer(1)],
        );
        if let Some(deadline) = self.next_deadline() {
            rows.push(
                tables.deadlines.name,
                vec![Value::Text(id.to_owned()), Value::timestamp(deadline.due)],
            );
        }
    }
}
