//! `/health` and `/metrics`.

use std::fmt::Write;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde::Serialize;
use strata::{EventStore, ProjectionState, ViewManager};

use super::Admin;
use crate::Problem;

#[derive(Serialize)]
pub(super) struct Health {
    /// `ok`, or `degraded` while a projection fails.
    status: &'static str,
    node_id: String,
    /// Projections whose batches or last rebuild failed, with why.
    failing: Vec<Failing>,
}

#[derive(Serialize)]
struct Failing {
    projection: String,
    error: String,
}

pub(super) async fn health<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
) -> Result<Json<Health>, Problem> {
    // A read that touches the store proves it answers, not just that the process is up.
    admin.store.read_all(admin.store.head(), 1).await?;
    let failing: Vec<Failing> = admin
        .projections
        .statuses()
        .await?
        .into_iter()
        .filter(|status| status.status == ProjectionState::Failed)
        .map(|status| Failing { projection: status.name, error: status.error.unwrap_or_default() })
        .collect();
    let status = if failing.is_empty() { "ok" } else { "degraded" };
    Ok(Json(Health { status, node_id: admin.node_id.clone(), failing }))
}

/// Writes one metric family: its help, its type and its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// `GET /metrics`: Prometheus text exposition of the store's group commits and every
/// projection's progress, lag, parked instances, applies and rebuild.
pub(super) async fn metrics<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
) -> Result<impl IntoResponse, Problem> {
    let mut out = String::new();
    let one = |value: f64| vec![(String::new(), value)];
    family(
        &mut out,
        "strata_store_head_position",
        "gauge",
        "Position of the last committed event.",
        &one(admin.store.head().0 as f64),
    );
    if let Some(group) = admin.store.group_commit_metrics() {
        family(
            &mut out,
            "strata_group_commit_groups_total",
            "counter",
            "Transactions committed, one fsync each.",
            &one(group.groups as f64),
        );
        family(
            &mut out,
            "strata_group_commit_appends_total",
            "counter",
            "Appends answered by group commits.",
            &one(group.appends as f64),
        );
        family(
            &mut out,
            "strata_group_commit_events_total",
            "counter",
            "Events written by group commits.",
            &one(group.events as f64),
        );
        family(
            &mut out,
            "strata_group_commit_busy_seconds_total",
            "counter",
            "Time spent writing and committing groups.",
            &one(group.busy_micros as f64 / 1e6),
        );
        family(
            &mut out,
            "strata_group_commit_largest_group",
            "gauge",
            "Most appends committed in one group.",
            &one(group.largest_group as f64),
        );
    }
    let statuses = admin.projections.statuses().await?;
    let per = |value: &dyn Fn(&strata::ProjectionStatus) -> f64| -> Vec<(String, f64)> {
        statuses.iter().map(|s| (format!("{{projection=\"{}\"}}", s.name), value(s))).collect()
    };
    family(
        &mut out,
        "strata_projection_position",
        "gauge",
        "Position each projection's views reflect.",
        &per(&|s| s.position.0 as f64),
    );
    family(
        &mut out,
        "strata_projection_lag_events",
        "gauge",
        "Events a projection is behind the head.",
        &per(&|s| s.lag_events as f64),
    );
    family(
        &mut out,
        "strata_projection_lag_seconds",
        "gauge",
        "Age of the oldest event a projection has not applied.",
        &per(&|s| s.lag_seconds),
    );
    family(
        &mut out,
        "strata_projection_parked_instances",
        "gauge",
        "View instances parked after failing to apply an event.",
        &per(&|s| s.parked as f64),
    );
    family(
        &mut out,
        "strata_projection_failed",
        "gauge",
        "1 while a projection's batches or last rebuild fail.",
        &per(&|s| f64::from(u8::from(s.status == ProjectionState::Failed))),
    );
    family(
        &mut out,
        "strata_projection_rebuilding",
        "gauge",
        "1 while a projection is being rebuilt.",
        &per(&|s| f64::from(u8::from(s.rebuild.is_some()))),
    );
    family(
        &mut out,
        "strata_projection_rebuild_position",
        "gauge",
        "Position a running rebuild has reached (0 when none runs).",
        &per(&|s| s.rebuild.as_ref().map_or(0.0, |r| r.position.0 as f64)),
    );
    let counted = |value: &dyn Fn(&strata::ProjectionHandle) -> u64| -> Vec<(String, f64)> {
        admin
            .projections
            .iter()
            .map(|h| (format!("{{projection=\"{}\"}}", h.name()), value(h) as f64))
            .collect()
    };
    family(
        &mut out,
        "strata_projection_events_applied_total",
        "counter",
        "Events this node committed into a projection's views.",
        &counted(&|h| h.events_applied()),
    );
    family(
        &mut out,
        "strata_projection_failed_applies_total",
        "counter",
        "Tries of an event on a view instance that failed on this node.",
        &counted(&|h| h.failed_applies()),
    );
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
