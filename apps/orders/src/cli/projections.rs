//! `strata projections list` and `strata projections rebuild NAME`: where each projection
//! stands, as a table, and an offline rebuild with a progress line.
//!
//! A rebuild here is the same operation as `POST /admin/projections/{name}/rebuild` (fresh
//! storage beside the live views, swapped in at the end; interrupted, it resumes), run in
//! this process. On SQLite the service must be stopped (it holds the store); on PostgreSQL
//! this process takes the projection's lease, so no node runs it meanwhile.

use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use strata::{EventStore, Leases, Position, ProjectionStatus, ViewManager, status_of};
use strata_postgres::{PgDatabase, PgEventStore, PgLeases, PgViewManager};
use strata_sqlite::{SqliteEventStore, SqliteViewManager};

use super::progress::{Counter, ProgressLine, thousands};
use super::store::{RedisArgs, StoreArgs, StoreLocation};
use crate::domain::OrdersEvent;
use crate::views;

/// Where projections stand, and rebuilding one.
#[derive(Debug, Args)]
pub struct ProjectionsArgs {
    #[command(subcommand)]
    command: ProjectionsCommand,
}

#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// Prints every projection's position, the head, lag, status and parked instances.
    List(ListArgs),
    /// Rebuilds one projection from position 0 into fresh storage, then swaps it in.
    Rebuild(RebuildArgs),
}

/// Flags of `strata projections list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    redis: RedisArgs,
}

/// Flags of `strata projections rebuild`.
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The projection: customers, customer_orders, products, orders, sales_daily or audit.
    #[arg(value_name = "NAME")]
    name: String,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    redis: RedisArgs,
}

/// A projection name this service cannot rebuild offline; exits with the usage code.
#[derive(Debug, thiserror::Error)]
pub enum UnknownProjection {
    /// No such projection.
    #[error("no projection {0:?}; the projections are {names}", names = views::PROJECTIONS.join(", "))]
    Unknown(String),
    /// A saga: its rebuild must be swapped in where it runs, never past events it has not
    /// acted on, which only a serving node can see to.
    #[error(
        "{0} is a saga; it is rebuilt by the service that runs it: POST /admin/projections/{0}/rebuild"
    )]
    Saga(String),
}

/// Every projection `strata projections list` shows: the views, then the sagas.
fn listed() -> impl Iterator<Item = &'static str> {
    views::PROJECTIONS.into_iter().chain(crate::sagas::NAMES)
}

/// Runs `strata projections …`.
pub async fn run(args: ProjectionsArgs) -> anyhow::Result<()> {
    match args.command {
        ProjectionsCommand::List(args) => list(args).await,
        ProjectionsCommand::Rebuild(args) => rebuild(args).await,
    }
}

/// Runs `$body` with `$v` bound to `$views`, or, with `--redis`, to `$views` beside Redis as
/// the service keeps them.
macro_rules! with_redis {
    ($redis:expr, $views:expr, |$v:ident| $body:expr) => {
        match $redis.connect().await? {
            Some(redis) => {
                let $v = Arc::new(crate::backends::routed(Arc::new($views), redis));
                $body
            }
            None => {
                let $v = Arc::new($views);
                $body
            }
        }
    };
}

fn memory_refused() -> anyhow::Error {
    anyhow::anyhow!(
        "the memory store keeps nothing between runs; give --store sqlite:DIR or --store postgres://…"
    )
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let statuses = match args.store.location()? {
        StoreLocation::Sqlite(dir) => {
            // Read-only beside a running service, which may hold the store.
            let events = SqliteEventStore::open_read_only(&dir)
                .with_context(|| format!("cannot read the SQLite store in {}", dir.display()))?;
            let views = SqliteViewManager::open(&dir).context("cannot open the view store")?;
            let running = SqliteEventStore::is_open_for_writing(&dir)
                .then(|| "the service on this directory".to_owned());
            with_redis!(args.redis, views, |views| statuses(&events, &*views, |_| running.clone())
                .await?)
        }
        StoreLocation::Postgres(url) => {
            let database = PgDatabase::connect(&url, None)
                .await
                .context("cannot open the PostgreSQL store")?;
            let events = PgEventStore::open(&database).await?;
            let views = PgViewManager::new(&database);
            let leases = PgLeases::new(&database, "strata projections list");
            let mut owners = Vec::new();
            for name in listed() {
                owners
                    .push(leases.owner(name).await.context("cannot read the projections' owners")?);
            }
            with_redis!(args.redis, views, |views| statuses(&events, &*views, |i| owners[i]
                .clone())
            .await?)
        }
        StoreLocation::Memory => return Err(memory_refused()),
    };
    print!("{}", table(&statuses));
    Ok(())
}

async fn statuses<S: EventStore, M: ViewManager>(
    events: &S,
    views: &M,
    owner: impl Fn(usize) -> Option<String>,
) -> anyhow::Result<Vec<ProjectionStatus>> {
    let mut statuses = Vec::new();
    for (i, name) in listed().enumerate() {
        let status = status_of(name, events, views, owner(i), None, Position::START).await?;
        statuses.push(status);
    }
    Ok(statuses)
}

/// The projections as a table.
fn table(statuses: &[ProjectionStatus]) -> String {
    let mut rows =
        vec![["projection", "position", "head", "lag", "status", "parked"].map(str::to_owned)];
    for status in statuses {
        let lag = if status.lag_events == 0 {
            "0".to_owned()
        } else {
            format!("{} ({:.1} s)", thousands(status.lag_events), status.lag_seconds)
        };
        let state = serde_json::to_value(status.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        rows.push([
            status.name.clone(),
            thousands(status.position.0),
            thousands(status.head.0),
            lag,
            state,
            thousands(status.parked),
        ]);
    }
    let widths: Vec<usize> =
        (0..6).map(|c| rows.iter().map(|row| row[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c == 0 || c == 4 {
                    format!("{cell:<w$}", w = widths[c])
                } else {
                    format!("{cell:>w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
        if i == 0 {
            let rules: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(c, w)| {
                    let dashes = "-".repeat(*w);
                    if c == 0 || c == 4 { format!("-{dashes}-") } else { format!("-{dashes}:") }
                })
                .collect();
            out.push_str(&format!("|{}|\n", rules.join("|")));
        }
    }
    for status in statuses.iter().filter(|s| s.error.is_some()) {
        out.push_str(&format!(
            "\n{}: {}\n",
            status.name,
            status.error.as_deref().unwrap_or_default()
        ));
    }
    out
}

async fn rebuild(args: RebuildArgs) -> anyhow::Result<()> {
    if crate::sagas::NAMES.contains(&args.name.as_str()) {
        return Err(UnknownProjection::Saga(args.name).into());
    }
    let name = views::PROJECTIONS
        .into_iter()
        .find(|known| *known == args.name)
        .ok_or_else(|| UnknownProjection::Unknown(args.name.clone()))?;
    let counter = Arc::new(Counter::default());
    let line = ProgressLine::start(format!("rebuilding {name}"), "events", counter.clone());
    let report = |position: Position, head: Position| counter.set(position.0, head.0);
    let rebuilt = match args.store.location()? {
        StoreLocation::Sqlite(dir) => {
            let events = SqliteEventStore::open(&dir).with_context(|| {
                format!(
                    "cannot open the SQLite store in {}; stop the service first, or ask it with \
                     POST /admin/projections/{name}/rebuild",
                    dir.display()
                )
            })?;
            let views = SqliteViewManager::open(&dir).context("cannot open the view store")?;
            with_redis!(args.redis, views, |views| rebuild_with(
                name,
                Arc::new(events),
                views,
                &report
            )
            .await)
        }
        StoreLocation::Postgres(url) => {
            let database = PgDatabase::connect(&url, None)
                .await
                .context("cannot open the PostgreSQL store")?;
            let leases = PgLeases::new(&database, "strata projections rebuild");
            let Some(lease) =
                leases.try_acquire(name).await.context("cannot take the projection's lease")?
            else {
                let owner = leases
                    .owner(name)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| "another node".to_owned());
                anyhow::bail!(
                    "projection {name} runs on {owner}; ask it with POST /admin/projections/{name}/rebuild, \
                     or stop the nodes first"
                );
            };
            let events = Arc::new(PgEventStore::open(&database).await?);
            let views = PgViewManager::new(&database);
            let rebuilt =
                with_redis!(args.redis, views, |views| rebuild_with(name, events, views, &report)
                    .await);
            drop(lease);
            rebuilt
        }
        StoreLocation::Memory => return Err(memory_refused()),
    };
    line.finish("events");
    let position = rebuilt
        .with_context(|| format!("rebuilding {name} failed; its live views are as they were"))?;
    println!("strata: rebuilt {name} up to position {}", thousands(position.0));
    Ok(())
}

/// Rebuilds projection `name` of this service (one of [`views::PROJECTIONS`]).
async fn rebuild_with<S: EventStore, M: ViewManager>(
    name: &str,
    events: Arc<S>,
    views: Arc<M>,
    report: &(dyn Fn(Position, Position) + Sync),
) -> Result<Position, strata::ProjectionError> {
    match name {
        "customers" => views::customers().rebuild(events, views, report).await,
        "customer_orders" => views::customer_orders().rebuild(events, views, report).await,
        "products" => views::products().rebuild(events, views, report).await,
        "orders" => views::orders().rebuild(events, views, report).await,
        "sales_daily" => views::sales_daily().rebuild(events, views, report).await,
        _ => strata::audit::projection::<OrdersEvent>().rebuild(events, views, report).await,
    }
}
