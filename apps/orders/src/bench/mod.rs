//! `strata bench`: the standard workload W1 against a store in this process, or over HTTP
//! against a running service, ending with a table (or `--json`) of the figures people compare.
//! Figures are printed only when every `order_summary` row is correct.

mod codecs;
mod compare;
mod histogram;
mod http;
mod in_process;
mod long_stream;
mod plan;
mod progress;
mod publish;
mod report;
mod saga;
mod search;
mod system;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use strata::{InMemoryEventStore, InMemoryViewManager};
use strata_sqlite::{SqliteEventStore, SqliteViewManager};

use plan::Plan;
use report::{Correctness, Figures, Setup};

/// Options of `strata bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The store to run against in this process: `memory`, `sqlite` (or `sqlite:DIR`), or
    /// `postgres` (or a `postgres://` URL; a fresh schema is created and dropped afterwards;
    /// `postgres` alone means `postgres://postgres@127.0.0.1:5432/test`).
    #[arg(long, default_value = "sqlite", value_name = "STORE")]
    pub store: String,
    /// Orders in the workload; each gets one PlaceOrder and nine AddLine.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub orders: u64,
    /// Client tasks sending commands at once (connections, with --http).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub concurrency: usize,
    /// Every task sends AddLine to the same 16 orders, retrying on conflicts.
    #[arg(long)]
    pub contended: bool,
    /// Where a SQLite store is written; must be empty or absent, unless --keep [default: a
    /// fresh temporary directory, removed afterwards].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Run W1 on the SQLite store that an earlier `--keep` run left in --data-dir (or on a
    /// fresh one there), with orders of its own, and keep it: repeated, this measures the
    /// rate as the store grows. Replay and rebuilds are skipped, since they read every event.
    #[arg(long)]
    pub keep: bool,
    /// Drive a running `strata serve` at this URL over HTTP instead of a store in-process.
    #[arg(long, value_name = "URL")]
    pub http: Option<String>,
    /// Print the figures as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How the workload's events are encoded (in-process runs): json or binary.
    #[arg(long, default_value = "json", value_name = "CODEC")]
    pub event_codec: strata::Codec,
    /// Instead of W1: the cost of the first command on an order of N events after a restart,
    /// with and without its snapshot, against an order of 20 events.
    #[arg(long, value_name = "N")]
    pub long_stream: Option<u64>,
    /// Instead of W1: bytes per event and encode/decode cost of each payload codec, on
    /// --orders × 10 events of W1.
    #[arg(long)]
    pub codecs: bool,
    /// Print this W1 run beside an earlier one: OTHER_JSON is what `strata bench --json`
    /// printed then. Each figure with the ratio this run ÷ baseline.
    #[arg(long, value_name = "OTHER_JSON")]
    pub compare: Option<PathBuf>,
    /// Instead of W1: --orders orders placed and confirmed through the fulfilment saga by
    /// --concurrency clients on --store; orders confirmed per second and the confirmation's
    /// latency.
    #[arg(long)]
    pub saga: bool,
    /// Instead of W1: --orders orders placed in memory, then a search index built from
    /// that log and queried; orders indexed per second and query latency.
    #[arg(long)]
    pub search: bool,
    /// Keep the benchmark's views (order_summary, and its rebuild) in Redis at this URL,
    /// under a fresh key prefix deleted afterwards; events stay in --store (memory or
    /// sqlite). Catch-up and rebuild then measure Redis.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Instead of W1: make W1's events in memory, then publish them all to a fresh
    /// JetStream stream at this URL (deleted afterwards); events per second acknowledged,
    /// then how fast a read replica copies them.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
}

/// Why a benchmark could not run as asked; exits with the usage code.
#[derive(Debug, thiserror::Error)]
pub enum BenchUsageError {
    /// A number out of range.
    #[error("{0}")]
    Invalid(String),
}

impl BenchArgs {
    fn plan(&self) -> Result<Plan, BenchUsageError> {
        if self.orders == 0 {
            return Err(BenchUsageError::Invalid("--orders must be at least 1".into()));
        }
        if self.concurrency == 0 || self.concurrency > 10_000 {
            return Err(BenchUsageError::Invalid(
                "--concurrency must be between 1 and 10000".into(),
            ));
        }
        if self.contended && self.orders < 16 {
            return Err(BenchUsageError::Invalid(
                "--contended needs --orders of at least 16".into(),
            ));
        }
        Ok(Plan {
            orders: self.orders,
            tasks: self.concurrency,
            contended: self.contended,
            codec: self.event_codec,
            first_order: 0,
        })
    }
}

/// A data directory that is removed afterwards unless the user named it.
enum DataDir {
    Temporary(tempfile::TempDir),
    Given(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Temporary(dir) => dir.path(),
            DataDir::Given(dir) => dir,
        }
    }
}

fn data_dir(given: Option<PathBuf>) -> anyhow::Result<DataDir> {
    match given {
        None => Ok(DataDir::Temporary(
            tempfile::tempdir().context("cannot create a temporary directory")?,
        )),
        Some(dir) => {
            if occupied(&dir) {
                return Err(BenchUsageError::Invalid(format!(
                    "--data-dir {} is not empty; the benchmark needs a fresh store \
                     (or --keep, to run on the store an earlier --keep run left there)",
                    dir.display()
                ))
                .into());
            }
            Ok(DataDir::Given(dir))
        }
    }
}

/// Whether `dir` exists and holds anything.
fn occupied(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|mut entries| entries.next().is_some()).unwrap_or(false)
}

/// The file in a kept store's directory that holds the first order number no run has used.
const NEXT_ORDER_FILE: &str = "bench-next-order";

/// Records `next` as the first order number a later `--keep` run in `dir` may use. Written
/// beside and renamed over the old file, so that a crash leaves the old number or the new
/// one, never part of one.
fn write_next_order(dir: &Path, next: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let marker = dir.join(NEXT_ORDER_FILE);
    let written = dir.join(format!("{NEXT_ORDER_FILE}.new"));
    std::fs::write(&written, next.to_string())
        .and_then(|()| std::fs::rename(&written, &marker))
        .with_context(|| format!("cannot write {}", marker.display()))
}

/// The first order of a `--keep` run in `dir`: 0 in a fresh directory, else what the last
/// run there recorded. A directory that holds something else is refused, because its orders
/// could collide with the run's.
fn kept_first_order(dir: &Path) -> anyhow::Result<u64> {
    let marker = dir.join(NEXT_ORDER_FILE);
    match std::fs::read_to_string(&marker) {
        Ok(text) => text.trim().parse().map_err(|_| {
            BenchUsageError::Invalid(format!(
                "{} does not hold an order number: {text:?}",
                marker.display()
            ))
            .into()
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if !occupied(dir) {
                return Ok(0);
            }
            Err(BenchUsageError::Invalid(format!(
                "--keep: {} holds files but no {NEXT_ORDER_FILE}; it was not made by \
                 strata bench --keep",
                dir.display()
            ))
            .into())
        }
        Err(error) => Err(error).with_context(|| format!("cannot read {}", marker.display())),
    }
}

/// Runs the benchmark and prints the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.compare.is_some()
        && (args.long_stream.is_some() || args.codecs || args.saga || args.nats.is_some())
    {
        return Err(BenchUsageError::Invalid(
            "--compare compares W1 runs, not --long-stream, --codecs, --saga or --nats".into(),
        )
        .into());
    }
    if args.redis.is_some()
        && (args.http.is_some()
            || args.long_stream.is_some()
            || args.codecs
            || args.saga
            || args.nats.is_some())
    {
        return Err(BenchUsageError::Invalid(
            "--redis keeps W1's views in-process; not with --http, --long-stream, --codecs, --saga or --nats"
                .into(),
        )
        .into());
    }
    if args.keep
        && (args.http.is_some()
            || args.redis.is_some()
            || args.long_stream.is_some()
            || args.codecs
            || args.saga
            || args.search
            || args.nats.is_some())
    {
        return Err(BenchUsageError::Invalid(
            "--keep runs W1 in-process on SQLite; not with --http, --redis, --long-stream, \
             --codecs, --saga, --search or --nats"
                .into(),
        )
        .into());
    }
    if let Some(events) = args.long_stream {
        return run_long_stream(&args, events).await;
    }
    if args.codecs {
        let events = usize::try_from(args.orders.saturating_mul(10)).unwrap_or(usize::MAX);
        let figures = codecs::run(events)?;
        if args.json {
            let rows: Vec<_> = figures
                .iter()
                .map(|f| {
                    serde_json::json!({"codec": f.codec, "bytes_per_event": f.bytes_per_event,
                        "encode_ns": f.encode_ns, "decode_ns": f.decode_ns})
                })
                .collect();
            println!("{}", serde_json::json!({"codecs": rows, "machine": system::machine()}));
        } else {
            print!("{}", codecs::table(events, &figures));
        }
        return Ok(());
    }
    let plan = args.plan()?;
    // Read before the run: a baseline that cannot be used should not cost a benchmark.
    let baseline = args.compare.as_deref().map(compare::Baseline::read).transpose()?;
    if args.saga {
        return run_saga(&args, plan).await;
    }
    if args.search {
        let figures = search::run(plan.orders).await?;
        if args.json {
            let object = serde_json::json!({
                "orders": figures.orders,
                "events": figures.events,
                "build_seconds": figures.build.as_secs_f64(),
                "index_bytes": figures.bytes,
                "query_p50_ms": figures.latency.quantile(0.5).as_secs_f64() * 1000.0,
                "query_p99_ms": figures.latency.quantile(0.99).as_secs_f64() * 1000.0,
                "machine": system::machine(),
            });
            println!("{object}");
        } else {
            print!("{}", search::table(&figures));
        }
        return Ok(());
    }
    if let Some(url) = &args.nats {
        let figures = publish::run(plan, url).await?;
        if args.json {
            let object = serde_json::json!({
                "events": figures.events,
                "events_per_s": figures.events as f64 / figures.elapsed.as_secs_f64(),
                "body_bytes": figures.body_bytes,
                "seconds": figures.elapsed.as_secs_f64(),
                "replica_copy_seconds": figures.replica_copied.as_secs_f64(),
                "machine": system::machine(),
            });
            println!("{object}");
        } else {
            print!("{}", publish::table(url, &figures));
        }
        return Ok(());
    }
    let (target, outcome) = match &args.http {
        Some(url) => {
            (format!("{url} over HTTP, {} connections", plan.tasks), http::run(plan, url).await?)
        }
        None => run_store(&args, plan).await?,
    };
    let setup = Setup {
        target: format!("{target}, {} payloads", plan.codec),
        orders: plan.orders,
        concurrency: plan.tasks,
        contended: plan.contended,
        machine: system::machine(),
    };
    report(&args, &setup, outcome, baseline.as_ref())
}

async fn run_store(
    args: &BenchArgs,
    plan: Plan,
) -> anyhow::Result<(String, (Figures, Correctness))> {
    let store = args.store.as_str();
    if let Some(url) = &args.redis {
        return run_on_redis(args, url, plan).await;
    }
    if args.keep && !store.starts_with("sqlite") {
        return Err(BenchUsageError::Invalid(format!(
            "--keep keeps a SQLite store; not --store {store}"
        ))
        .into());
    }
    if store == "memory" {
        if args.data_dir.is_some() {
            return Err(BenchUsageError::Invalid(
                "--data-dir has no meaning with --store memory".into(),
            )
            .into());
        }
        let outcome = in_process::run(
            plan,
            Arc::new(InMemoryEventStore::new()),
            Arc::new(InMemoryViewManager::new()),
            Some(|| async { Ok(InMemoryViewManager::new()) }),
            || None,
        )
        .await?;
        return Ok(("memory (not durable)".to_owned(), outcome));
    }
    if store == "postgres" || store.starts_with("postgres://") || store.starts_with("postgresql://")
    {
        let url = if store == "postgres" { DEFAULT_POSTGRES_URL } else { store };
        return run_postgres(url, plan).await;
    }
    let dir = match store.strip_prefix("sqlite") {
        Some("") => args.data_dir.clone(),
        Some(rest) if rest.starts_with(':') && rest.len() > 1 => Some(PathBuf::from(&rest[1..])),
        _ => {
            return Err(BenchUsageError::Invalid(format!(
                "unknown --store {store:?}; expected memory, sqlite, sqlite:DIR, postgres or postgres://…"
            ))
            .into());
        }
    };
    let (dir, plan) = if args.keep {
        let Some(dir) = dir else {
            return Err(BenchUsageError::Invalid(
                "--keep needs the store's directory: --data-dir DIR".into(),
            )
            .into());
        };
        let plan = Plan { first_order: kept_first_order(&dir)?, ..plan };
        // Before the store is opened, so that a run cut short (or refused the store's lock
        // by a run in progress) leaves its orders to itself.
        write_next_order(&dir, plan.next_order())?;
        (DataDir::Given(dir), plan)
    } else {
        (data_dir(dir)?, plan)
    };
    let events_dir = dir.path().join("events");
    let rebuild_dir = dir.path().join("rebuild");
    let events = Arc::new(SqliteEventStore::open(&events_dir)?);
    let views = Arc::new(SqliteViewManager::open(&events_dir)?);
    let rebuilds =
        (!args.keep).then_some(move || async move { Ok(SqliteViewManager::open(&rebuild_dir)?) });
    let outcome =
        in_process::run(plan, events, views, rebuilds, || system::bytes_below(&events_dir).ok())
            .await?;
    let target = format!("sqlite in {} (WAL, synced before each answer)", dir.path().display());
    Ok((target, outcome))
}

/// W1 with events in memory or SQLite and the views in Redis under a fresh prefix.
async fn run_on_redis(
    args: &BenchArgs,
    url: &str,
    plan: Plan,
) -> anyhow::Result<(String, (Figures, Correctness))> {
    use strata_redis::RedisViewManager;
    let prefix = format!("strata_bench:{}:", std::process::id());
    let rebuild_prefix = format!("{prefix}rebuild:");
    let views = Arc::new(
        RedisViewManager::connect(url, &prefix)
            .await
            .context("cannot open the Redis view store")?,
    );
    let fresh = || async { Ok(RedisViewManager::connect(url, &rebuild_prefix).await?) };
    let target = format!("views in Redis {} under {prefix}", crate::cli::config::masked(url));
    let outcome = match args.store.as_str() {
        "memory" => {
            let events = Arc::new(InMemoryEventStore::new());
            let outcome = in_process::run(plan, events, views.clone(), Some(fresh), || None).await;
            (format!("events in memory, {target}"), outcome)
        }
        "sqlite" => {
            let dir = data_dir(args.data_dir.clone())?;
            let events = Arc::new(SqliteEventStore::open(dir.path())?);
            let outcome = in_process::run(plan, events, views.clone(), Some(fresh), || None).await;
            (
                format!(
                    "events in sqlite in {} (WAL, synced before each answer), {target}",
                    dir.path().display()
                ),
                outcome,
            )
        }
        other => {
            return Err(BenchUsageError::Invalid(format!(
                "--redis keeps the views; the events go to --store memory or sqlite, not {other:?}"
            ))
            .into());
        }
    };
    if let Err(error) = views.delete_prefix().await {
        eprintln!("bench: could not delete the keys under {prefix}: {error}");
    }
    Ok((outcome.0, outcome.1?))
}

async fn run_long_stream(args: &BenchArgs, events: u64) -> anyhow::Result<()> {
    if args.http.is_some() {
        return Err(BenchUsageError::Invalid(
            "--long-stream runs in-process, not with --http".into(),
        )
        .into());
    }
    let (target, figures) = match args.store.as_str() {
        "memory" => (
            "memory".to_owned(),
            long_stream::run(Arc::new(InMemoryEventStore::new()), events).await?,
        ),
        "sqlite" => {
            let dir = data_dir(args.data_dir.clone())?;
            let store = Arc::new(SqliteEventStore::open(dir.path())?);
            let target =
                format!("sqlite in {} (WAL, synced before each answer)", dir.path().display());
            (target, long_stream::run(store, events).await?)
        }
        other => {
            return Err(BenchUsageError::Invalid(format!(
                "--long-stream runs on --store memory or sqlite, not {other:?}"
            ))
            .into());
        }
    };
    if args.json {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let object = serde_json::json!({
            "events": figures.events,
            "short_ms": ms(figures.short),
            "long_replayed_ms": ms(figures.long_replayed),
            "long_from_snapshot_ms": ms(figures.long_from_snapshot),
            "machine": system::machine(),
        });
        println!("{object}");
    } else {
        print!("{}", long_stream::table(&target, &figures));
    }
    Ok(())
}

async fn run_saga(args: &BenchArgs, plan: Plan) -> anyhow::Result<()> {
    if args.http.is_some() || args.contended {
        return Err(BenchUsageError::Invalid(
            "--saga runs in-process, without --http or --contended".into(),
        )
        .into());
    }
    let (orders, tasks) = (plan.orders, plan.tasks);
    let store = args.store.as_str();
    let (target, figures) = if store == "memory" {
        (
            "memory (not durable)".to_owned(),
            saga::run(crate::backends::memory(), orders, tasks).await?,
        )
    } else if store == "postgres" || store.starts_with("postgres://") {
        let url = if store == "postgres" { DEFAULT_POSTGRES_URL } else { store };
        let schema = format!("strata_bench_saga_{}", std::process::id());
        let database = strata_postgres::PgDatabase::connect(url, Some(&schema))
            .await
            .context("cannot connect to PostgreSQL")?;
        let stores = crate::backends::postgres_stores(&database, "bench").await?;
        let figures = saga::run(stores, orders, tasks).await;
        let client = database.pool().get().await?;
        if let Err(error) = client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await {
            eprintln!("bench: could not drop schema {schema}: {error}");
        }
        (format!("postgres {url}, schema {schema}"), figures?)
    } else if store == "sqlite" {
        let dir = data_dir(args.data_dir.clone())?;
        let stores = crate::backends::open_sqlite(dir.path())?;
        let target = format!("sqlite in {} (WAL, synced before each answer)", dir.path().display());
        (target, saga::run(stores, orders, tasks).await?)
    } else {
        return Err(BenchUsageError::Invalid(format!(
            "--saga runs on --store memory, sqlite or postgres, not {store:?}"
        ))
        .into());
    };
    if args.json {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let object = serde_json::json!({
            "orders": figures.orders,
            "concurrency": tasks,
            "orders_per_s": figures.orders_per_s(),
            "events": figures.events,
            "latency_p50_ms": ms(figures.latency.quantile(0.5)),
            "latency_p99_ms": ms(figures.latency.quantile(0.99)),
            "target": target,
            "machine": system::machine(),
        });
        println!("{object}");
    } else {
        print!("{}", saga::table(&target, tasks, &figures));
    }
    Ok(())
}

/// Where `--store postgres` runs.
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Runs the plan in fresh schemas of the database at `url` (events and views in one, the
/// rebuild's views in another), dropped afterwards.
async fn run_postgres(url: &str, plan: Plan) -> anyhow::Result<(String, (Figures, Correctness))> {
    use strata_postgres::{PgDatabase, PgEventStore, PgViewManager};
    let schema = format!("strata_bench_{}", std::process::id());
    let rebuild_schema = format!("{schema}_rebuild");
    let database =
        PgDatabase::connect(url, Some(&schema)).await.context("cannot connect to PostgreSQL")?;
    let rebuild = PgDatabase::connect(url, Some(&rebuild_schema)).await?;
    let events = Arc::new(PgEventStore::open(&database).await?);
    let views = Arc::new(PgViewManager::new(&database));
    let client = database.pool().get().await?;
    let outcome = in_process::run(
        plan,
        events,
        views,
        Some(|| async move { Ok(PgViewManager::new(&rebuild)) }),
        || None,
    )
    .await;
    let size = "SELECT pg_total_relation_size('strata_events')::bigint, \
                (SELECT count(*) FROM strata_events)";
    let bytes_per_event = client.query_one(size, &[]).await.ok().and_then(|row| {
        let (bytes, events): (i64, i64) = (row.get(0), row.get(1));
        (events > 0).then(|| bytes as f64 / events as f64)
    });
    let drop = format!("DROP SCHEMA {schema} CASCADE; DROP SCHEMA {rebuild_schema} CASCADE");
    if let Err(error) = client.batch_execute(&drop).await {
        eprintln!("bench: could not drop schemas {schema} and {rebuild_schema}: {error}");
    }
    let (mut figures, correctness) = outcome?;
    figures.bytes_per_event = bytes_per_event;
    let target = format!("postgres {url}, schema {schema} (fsync on, synchronous_commit on)");
    Ok((target, (figures, correctness)))
}

fn report(
    args: &BenchArgs,
    setup: &Setup,
    (figures, correctness): (Figures, Correctness),
    baseline: Option<&compare::Baseline>,
) -> anyhow::Result<()> {
    if !figures.correct {
        if args.json {
            println!(
                "{}",
                serde_json::json!({"correct": false, "mismatches": correctness.mismatch_count})
            );
        }
        eprint!("{}", report::failure(&correctness));
        bail!("the correctness check failed");
    }
    if args.json {
        let mut object = serde_json::to_value(&figures)?;
        object["setup"] = serde_json::to_value(setup)?;
        if let Some(baseline) = baseline {
            object["compare"] = baseline.json(&figures);
        }
        println!("{object}");
    } else {
        print!("{}", report::table(setup, &figures, &correctness));
        if let Some(baseline) = baseline {
            print!("{}", baseline.table(&figures));
        }
    }
    Ok(())
}
