//! The task that sends a saga's scheduled commands when they fall due, on the node that
//! holds the saga's lease.
//!
//! Deadlines live in the instances (durable, and moved with the lease, since every node
//! reads the same view store); the saga's deadlines table holds each instance's next one,
//! so a look for what is due is one indexed query. A deadline's command carries an
//! idempotency key made of the instance, the event that scheduled it and its name, so it
//! acts once however often it is sent: after a restart, by a new owner, or while the saga
//! has not yet decided on the events the command caused (and dropped the deadline).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::future::join_all;
use tokio::sync::watch;
use tokio::time::Instant;

use super::instance::SagaInstance;
use super::reactor::{command_key, context};
use super::{DispatchError, Saga};
use crate::event::DomainEvent;
use crate::table::{Comparison, Filter, TableQuery, Value};
use crate::view_manager::{Slot, ViewError, ViewManager};

/// How often the owner looks for deadlines that fell due.
pub const TICK: Duration = Duration::from_millis(250);

/// How long after a failed send a deadline is sent again.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// How long one send may take before it counts as failed.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What this node did with a due deadline, by its command's key.
enum Sent {
    /// Sent and answered: not sent again while the instance still shows it (the saga has
    /// not yet decided on what it caused, or it caused nothing).
    Answered,
    /// Failed at this instant: sent again after [`RETRY_AFTER`].
    Failed(Instant),
}

/// How many due instances one look reads at most.
const PAGE: usize = 200;

/// Sends `saga`'s due deadlines every [`TICK`] while `owner` names `node_id`, until aborted.
pub(crate) async fn run<E, G, M>(
    saga: Arc<G>,
    views: Arc<M>,
    owner: watch::Receiver<Option<String>>,
    node_id: String,
) where
    E: DomainEvent,
    G: Saga<E>,
    M: ViewManager,
{
    let mut sent: HashMap<String, Sent> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if owner.borrow().as_deref() != Some(node_id.as_str()) {
            sent.clear();
            continue;
        }
        if let Err(error) = send_due::<E, G, M>(&saga, &views, &mut sent).await {
            tracing::warn!(saga = G::NAME, %error, "cannot read the saga's deadlines; trying again");
        }
    }
}

async fn send_due<E, G, M>(
    saga: &G,
    views: &M,
    sent: &mut HashMap<String, Sent>,
) -> Result<(), ViewError>
where
    E: DomainEvent,
    G: Saga<E>,
    M: ViewManager,
{
    let now = Utc::now();
    let mut query = TableQuery {
        filters: vec![Filter {
            column: "due",
            comparison: Comparison::Le,
            value: Value::timestamp(now),
        }],
        order_by: vec!["due", "id"],
        limit: Some(PAGE),
        ..TableQuery::default()
    };
    // Keys of deadlines still due; what this node remembers of any other is dropped.
    let mut due_keys = std::collections::HashSet::new();
    loop {
        let rows = views.select(&G::TABLES.deadlines, &query).await?;
        let ids: Vec<String> =
            rows.iter().filter_map(|row| Some(row.first()?.as_text()?.to_owned())).collect();
        let instances = views.load::<SagaInstance<G, E>>(G::NAME, Slot::Live, &ids).await?;
        let mut due = Vec::new();
        // Parked instances too: a deadline is what ends a saga stuck on a failing event.
        for (id, stored) in &instances {
            for deadline in stored.view.deadlines.iter().filter(|deadline| deadline.due <= now) {
                let which = format!("deadline {}", deadline.name);
                let key = command_key(G::NAME, id, deadline.scheduled_at, &which);
                due_keys.insert(key.clone());
                let wanted = match sent.get(&key) {
                    None => true,
                    Some(Sent::Answered) => false,
                    Some(Sent::Failed(at)) => at.elapsed() >= RETRY_AFTER,
                };
                if wanted {
                    due.push((id.clone(), deadline.name.clone(), deadline.command.clone(), key));
                }
            }
        }
        let sends = due.into_iter().map(|(id, name, command, key)| async move {
            let context = context(G::NAME, &key, key.clone());
            let result = tokio::time::timeout(SEND_TIMEOUT, saga.dispatch(&id, command, &context))
                .await
                .unwrap_or_else(|_| Err(DispatchError::Unavailable("timed out".to_owned())));
            (id, name, key, result)
        });
        for (id, name, key, result) in join_all(sends).await {
            match result {
                Ok(()) => {
                    tracing::debug!(saga = G::NAME, %id, deadline = %name, "deadline sent");
                    sent.insert(key, Sent::Answered);
                }
                Err(error) => {
                    tracing::warn!(saga = G::NAME, %id, deadline = %name, %error, "deadline not sent; trying again in {RETRY_AFTER:?}");
                    sent.insert(key, Sent::Failed(Instant::now()));
                }
            }
        }
        if rows.len() < PAGE {
            sent.retain(|key, _| due_keys.contains(key));
            return Ok(());
        }
        // The cursor is the last row's (due, id), in the query's order.
        query.after = match rows.last().map(Vec::as_slice) {
            Some([id, due]) => Some(vec![due.clone(), id.clone()]),
            _ => return Ok(()),
        };
    }
}
