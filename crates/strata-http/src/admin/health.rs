//! `/health` and `/metrics`.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use strata::{EventStore, ProjectionState, ViewManager};

use super::Admin;
use crate::Problem;

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Health {
    /// `ok`; `degraded` while a projection fails, the store's writes fail or a dependency
    /// does not answer.
    status: &'static str,
    node_id: String,
    /// Each dependency and what it said: `ok`, or why not (for the store, `writes failing …`
    /// while its reads answer but its group commits fail).
    checks: Checks,
    /// Projections whose batches or last rebuild failed, with why.
    failing: Vec<Failing>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Checks {
    store: String,
    projections: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Failing {
    projection: String,
    error: String,
}

/// How long `/health` gives the store: a hung database must show here, not hang the probe.
const STORE_CHECK: Duration = Duration::from_millis(500);

/// Whether this node can serve: 200 while the store and the view store answer (`degraded`
/// if a projection fails, since commands and the other views still work, or if the store's
/// writes fail while its reads answer, since queries still work and the next append that
/// writes events clears it), 503 when either does not answer in time. Needs no token.
#[utoipa::path(get, path = "/health", tag = "operations", security(()),
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub(super) async fn health<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
) -> Result<Response, Problem> {
    // A read that touches the store proves it answers, not just that the process is up.
    // Both checks run at once, each bounded: a hung database must show here, not hang the
    // probe.
    let silent = || format!("no answer within {} ms", STORE_CHECK.as_millis());
    let (store, statuses) = tokio::join!(
        tokio::time::timeout(STORE_CHECK, admin.store.read_all(admin.store.head(), 1)),
        tokio::time::timeout(STORE_CHECK, admin.projections.statuses()),
    );
    let store = match store {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(format!("failing: {error}")),
        Err(_) => Err(silent()),
    };
    // Reads can answer while writes fail (a full disk): the writer's last group says so.
    let writes = admin.store.write_failure().map(|failure| {
        format!(
            "writes failing ({} group commits in a row, the last at {}): {}",
            failure.groups,
            failure.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            failure.error
        )
    });
    let (failing, views): (Vec<Failing>, Result<(), String>) = match statuses {
        Ok(Ok(statuses)) => (
            statuses
                .into_iter()
                .filter(|status| status.status == ProjectionState::Failed)
                .map(|status| Failing {
                    projection: status.name,
                    error: status.error.unwrap_or_default(),
                })
                .collect(),
            Ok(()),
        ),
        Ok(Err(error)) => (Vec::new(), Err(format!("failing: {error}"))),
        Err(_) => (Vec::new(), Err(silent())),
    };
    let projections = match (&views, failing.len()) {
        (Err(why), _) => why.clone(),
        (Ok(()), 0) => "ok".to_owned(),
        (Ok(()), n) => format!("{n} failing"),
    };
    let healthy = store.is_ok() && writes.is_none() && views.is_ok() && failing.is_empty();
    let status = if healthy { "ok" } else { "degraded" };
    let code = if store.is_ok() && views.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let store = store.err().or(writes).unwrap_or_else(|| "ok".to_owned());
    let checks = Checks { store, projections };
    let health = Health { status, node_id: admin.node_id.clone(), checks, failing };
    Ok((code, Json(health)).into_response())
}

/// A gauge family with one sample per label set, for values read at scrape time.
fn gauges(registry: &mut Registry, name: &str, help: &str, samples: Vec<(Labels, f64)>) {
    let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for (labels, value) in samples {
        family.get_or_create(&labels).set(value);
    }
    registry.register(name, help, family);
}

/// A counter family read at scrape time from totals kept elsewhere.
fn counters(registry: &mut Registry, name: &str, help: &str, samples: Vec<(Labels, u64)>) {
    let family = Family::<Labels, Counter>::default();
    for (labels, value) in samples {
        family.get_or_create(&labels).inc_by(value);
    }
    registry.register(name, help, family);
}

type Labels = Vec<(String, String)>;

/// OpenMetrics text (which Prometheus reads) of the HTTP requests and connections, the
/// store's group commits, and every projection's progress, lag, parked instances, applies
/// and rebuild.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
pub(super) async fn metrics<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
) -> Result<impl IntoResponse, Problem> {
    // A registry per scrape: most values are read from the store and the projections now,
    // not kept in the registry between scrapes.
    let mut registry = Registry::default();
    admin.http.register(&mut registry);
    let commands = admin
        .commands
        .snapshot()
        .into_iter()
        .map(|((aggregate, command, result), count)| {
            let labels = vec![
                ("aggregate".to_owned(), aggregate.to_owned()),
                ("command".to_owned(), command.to_owned()),
                ("outcome".to_owned(), result.as_str().to_owned()),
            ];
            (labels, count)
        })
        .collect();
    counters(
        &mut registry,
        "strata_commands",
        "Commands handled, by aggregate type, command and outcome (ok, rejected, conflict, error)",
        commands,
    );
    let one = vec![(Labels::new(), admin.store.head().0 as f64)];
    gauges(
        &mut registry,
        "strata_store_head_position",
        "Position of the last committed event",
        one,
    );
    if let Some(group) = admin.store.group_commit_metrics() {
        let total = |value: u64| vec![(Labels::new(), value)];
        counters(
            &mut registry,
            "strata_group_commit_groups",
            "Transactions committed by the event store's group commit",
            total(group.groups),
        );
        counters(
            &mut registry,
            "strata_group_commit_appends",
            "Appends answered by group commits",
            total(group.appends),
        );
        counters(
            &mut registry,
            "strata_group_commit_events",
            "Events written by group commits",
            total(group.events),
        );
        counters(
            &mut registry,
            "strata_group_commit_failed_groups",
            "Group commits that failed",
            total(group.failed_groups),
        );
        let busy = Family::<Labels, Counter<f64, AtomicU64>>::default();
        busy.get_or_create(&Labels::new()).inc_by(group.busy_micros as f64 / 1e6);
        registry.register(
            "strata_group_commit_busy_seconds",
            "Time groups took from the start of their writing to their answer, sync included",
            busy,
        );
        gauges(
            &mut registry,
            "strata_group_commit_largest_group",
            "Most appends committed in one group",
            vec![(Labels::new(), group.largest_group as f64)],
        );
        registry.register(
            "strata_group_commit_group_size",
            "Appends per committed group",
            GroupSizes::of(&group),
        );
    }
    let statuses = admin.projections.statuses().await?;
    let label = |name: &str| vec![("projection".to_owned(), name.to_owned())];
    let per = |value: &dyn Fn(&strata::ProjectionStatus) -> f64| -> Vec<(Labels, f64)> {
        statuses.iter().map(|s| (label(&s.name), value(s))).collect()
    };
    gauges(
        &mut registry,
        "strata_projection_position",
        "Position each projection's views reflect",
        per(&|s| s.position.0 as f64),
    );
    gauges(
        &mut registry,
        "strata_projection_lag_events",
        "Events a projection is behind the head",
        per(&|s| s.lag_events as f64),
    );
    gauges(
        &mut registry,
        "strata_projection_lag_seconds",
        "Age of the oldest event a projection has not applied",
        per(&|s| s.lag_seconds),
    );
    gauges(
        &mut registry,
        "strata_projection_parked_instances",
        "View instances parked after failing to apply an event",
        per(&|s| s.parked as f64),
    );
    gauges(
        &mut registry,
        "strata_projection_failed",
        "1 while a projection's batches or last rebuild fail",
        per(&|s| f64::from(u8::from(s.status == ProjectionState::Failed))),
    );
    gauges(
        &mut registry,
        "strata_projection_rebuilding",
        "1 while a projection is being rebuilt",
        per(&|s| f64::from(u8::from(s.rebuild.is_some()))),
    );
    gauges(
        &mut registry,
        "strata_projection_rebuild_position",
        "Position a running rebuild has reached (0 when none runs)",
        per(&|s| s.rebuild.as_ref().map_or(0.0, |r| r.position.0 as f64)),
    );
    let counted = |value: &dyn Fn(&strata::ProjectionHandle) -> u64| -> Vec<(Labels, u64)> {
        admin.projections.iter().map(|h| (label(h.name()), value(h))).collect()
    };
    counters(
        &mut registry,
        "strata_projection_events_applied",
        "Events this node committed into a projection's views",
        counted(&|h| h.events_applied()),
    );
    counters(
        &mut registry,
        "strata_projection_failed_applies",
        "Tries of an event on a view instance that failed on this node",
        counted(&|h| h.failed_applies()),
    );
    let mut sagas = Vec::new();
    for counts in admin.sagas.counts().await? {
        let parked = i64::try_from(counts.parked).unwrap_or(i64::MAX);
        for (state, instances) in [
            ("active", counts.active),
            ("completed", counts.completed),
            ("failed", counts.failed),
            ("parked", parked),
        ] {
            let labels = vec![
                ("saga".to_owned(), counts.name.clone()),
                ("state".to_owned(), state.to_owned()),
            ];
            sagas.push((labels, instances as f64));
        }
    }
    gauges(
        &mut registry,
        "strata_saga_instances",
        "Saga instances by state: active, completed, failed, parked",
        sagas,
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .map_err(|error| Problem::internal(&std::io::Error::other(error.to_string())))?;
    Ok(([(axum::http::header::CONTENT_TYPE, OPENMETRICS)], out))
}

/// The group-size histogram, from the store's bucket counts (the store counts groups into
/// buckets as it commits them; there is nothing to observe again here).
#[derive(Debug)]
struct GroupSizes {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl GroupSizes {
    fn of(group: &strata::GroupCommitMetrics) -> Self {
        let bounds = strata::store::GROUP_SIZE_BOUNDS.iter().map(|bound| *bound as f64);
        let buckets = bounds.chain([f64::MAX]).zip(group.group_sizes).collect();
        Self { sum: group.appends as f64, count: group.groups, buckets }
    }
}

impl prometheus_client::encoding::EncodeMetric for GroupSizes {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum,
            self.count,
            &self.buckets,
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// The content type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
