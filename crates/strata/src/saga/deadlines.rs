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

use super::Saga;
use super::instance::SagaInstance;
use super::reactor::{command_key, context};
use crate::event::DomainEvent;
use crate::table::{Comparison, Filter, TableQuery, Value};
use crate::view_manager::{Slot, ViewError, ViewManager};

/// How often the owner looks for deadlines that fell due.
pub const TICK: Duration = Duration::from_millis(250);

/// How long a sent deadline is not sent again while its instance still shows it.
const RESEND_AFTER: Duration = Duration::from_secs(30);

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
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if owner.borrow().as_deref() != Some(node_id.as_str()) {
            sent.clear();
            continue;
        }
        sent.retain(|_, at| at.elapsed() < RESEND_AFTER);
        if let Err(error) = send_due::<E, G, M>(&saga, &views, &mut sent).await {
            tracing::warn!(saga = G::NAME, %error, "cannot read the saga's deadlines; trying again");
        }
    }
}

async fn send_due<E, G, M>(
    saga: &G,
    views: &M,
    sent: &mut HashMap<String, Instant>,
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
                if !sent.contains_key(&key) {
                    due.push((id.clone(), deadline.name.clone(), deadline.command.clone(), key));
                }
            }
        }
        let sends = due.into_iter().map(|(id, name, command, key)| async move {
            let context = context(G::NAME, &key, key.clone());
            let result = saga.dispatch(&id, command, &context).await;
            (id, name, key, result)
        });
        for (id, name, key, result) in join_all(sends).await {
            match result {
                Ok(()) => {
                    tracing::debug!(saga = G::NAME, %id, deadline = %name, "deadline sent");
                    sent.insert(key, Instant::now());
                }
                Err(error) => {
                    tracing::warn!(saga = G::NAME, %id, deadline = %name, %error, "deadline not sent; trying again");
                }
            }
        }
        if rows.len() < PAGE {
            return Ok(());
        }
        query.after = rows.last().cloned();
    }
}
