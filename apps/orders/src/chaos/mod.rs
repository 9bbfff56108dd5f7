//! `strata chaos`: repeats the faults a bad day brings (kill -9 under load, PostgreSQL
//! frozen, stopped or with its connections terminated, a full disk, a damaged view file,
//! hostile clients) against real `strata serve` processes under load, then holds every
//! answer the clients got against the log and the views, and prints a table: fault, runs,
//! acknowledged, lost, duplicated, wrong. Exits 1 when anything was lost, doubled or wrong.

mod check;
mod client;
mod database;
mod faults;
mod load;
mod node;
mod proxy;

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::json;

use check::Tally;
use client::Client;
use database::ChaosDatabase;
use faults::HealthSeen;
use load::Load;
use node::Node;
use proxy::{Mode, Proxy};

/// Options of `strata chaos`.
#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// The faults to run, comma-separated [default: all].
    #[arg(long, value_delimiter = ',', value_name = "FAULT")]
    pub faults: Vec<Fault>,
    /// Runs of each kill -9 fault [default: 20, or 3 with --short].
    #[arg(long, value_name = "N")]
    pub kills: Option<u32>,
    /// Runs of each other fault [default: 3, or 1 with --short].
    #[arg(long, value_name = "N")]
    pub runs: Option<u32>,
    /// A short version for CI: fewer runs of each fault.
    #[arg(long)]
    pub short: bool,
    /// Client tasks sending commands throughout.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub clients: usize,
    /// The PostgreSQL server for the PostgreSQL faults; each creates a database of its own
    /// there and drops it afterwards.
    #[arg(
        long,
        env = "STRATA_TEST_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:5432/test",
        value_name = "URL"
    )]
    pub postgres: String,
}

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fault {
    /// kill -9 of the service under load, then a restart, on SQLite.
    KillSqlite,
    /// kill -9 of the service under load, then a restart, on PostgreSQL.
    KillPostgres,
    /// PostgreSQL frozen for 6 s: connections open, nothing answered.
    PostgresFrozen,
    /// PostgreSQL stopped for 3 s: every connection closed, new ones refused.
    PostgresStopped,
    /// Every connection of the service to PostgreSQL terminated by the server.
    ConnectionsTerminated,
    /// The SQLite data directory's disk full for 2 s.
    DiskFull,
    /// views.sqlite damaged while the service was down (after a kill -9).
    DamagedViews,
    /// 1,100 idle connections held, the service limited to 1,024 open files.
    IdleConnections,
    /// 1,100 connections each sending half a request head, same limit.
    Slowloris,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillSqlite | Fault::KillPostgres => "kill -9 under load",
            Fault::PostgresFrozen => "PostgreSQL frozen 6 s",
            Fault::PostgresStopped => "PostgreSQL stopped 3 s",
            Fault::ConnectionsTerminated => "connections terminated",
            Fault::DiskFull => "disk full 2 s",
            Fault::DamagedViews => "views.sqlite damaged",
            Fault::IdleConnections => "1,100 idle connections",
            Fault::Slowloris => "1,100 slowloris connections",
        }
    }

    fn on_postgres(self) -> bool {
        matches!(
            self,
            Fault::KillPostgres
                | Fault::PostgresFrozen
                | Fault::PostgresStopped
                | Fault::ConnectionsTerminated
        )
    }
}

/// What one fault's runs came to, or why they did not run.
struct Row {
    fault: Fault,
    runs: u32,
    outcome: Result<Outcome, String>,
}

struct Outcome {
    tally: Tally,
    clients: load::Seen,
    health: HealthSeen,
}

/// Where a fault's service runs and what it needs to do the fault.
struct Setting {
    node: Node,
    /// For SQLite, the data directory.
    data_dir: Option<std::path::PathBuf>,
    proxy: Option<Proxy>,
    database: Option<ChaosDatabase>,
    /// Declared last: dropped after the node is gone.
    disk: Option<faults::SmallDisk>,
}

/// Runs the faults and prints the table.
pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.clients > 1000 {
        return Err(crate::bench::BenchUsageError::Invalid(
            "--clients must be between 1 and 1000".into(),
        )
        .into());
    }
    let kills = args.kills.unwrap_or(if args.short { 3 } else { 20 });
    let runs = args.runs.unwrap_or(if args.short { 1 } else { 3 });
    let chosen: Vec<Fault> =
        if args.faults.is_empty() { Fault::value_variants().to_vec() } else { args.faults.clone() };
    let work = tempfile::tempdir().context("cannot create a temporary directory")?;
    let mut rows = Vec::new();
    for fault in chosen {
        let runs =
            if matches!(fault, Fault::KillSqlite | Fault::KillPostgres) { kills } else { runs };
        eprintln!("chaos: {} ({}), {runs} runs", fault.name(), store_name(fault));
        let outcome = match one_fault(&args, fault, runs, work.path()).await {
            Ok(outcome) => Ok(outcome),
            Err(Skip::Unavailable(why)) if !services_required() => Err(format!("skipped: {why}")),
            Err(Skip::Unavailable(why)) => {
                Err(format!("failed: {why} (STRATA_REQUIRE_SERVICES=1)"))
            }
            Err(Skip::Failed(error)) => Err(format!("failed: {error:#}")),
        };
        if let Err(why) = &outcome {
            eprintln!("chaos: {why}");
        }
        rows.push(Row { fault, runs, outcome });
    }
    print!("{}", table(&rows));
    let failed = rows.iter().filter(|row| match &row.outcome {
        Ok(outcome) => {
            outcome.tally.failed() || outcome.health.slow > 0 || outcome.health.missed.is_some()
        }
        Err(why) => why.starts_with("failed"),
    });
    let failed: Vec<&str> = failed.map(|row| row.fault.name()).collect();
    if !failed.is_empty() {
        // Keep the service logs of a failed run for a look.
        let kept = work.keep();
        bail!(
            "chaos found faults handled wrongly: {}; logs in {}",
            failed.join(", "),
            kept.display()
        );
    }
    Ok(())
}

fn services_required() -> bool {
    std::env::var("STRATA_REQUIRE_SERVICES").is_ok_and(|value| value == "1")
}

fn store_name(fault: Fault) -> &'static str {
    if fault.on_postgres() { "PostgreSQL" } else { "SQLite" }
}

/// Why a fault did not come to a tally.
enum Skip {
    /// Something it needs is not here (a PostgreSQL server, permission to mount).
    Unavailable(String),
    /// It ran and broke.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Skip {
    fn from(error: anyhow::Error) -> Self {
        Skip::Failed(error)
    }
}

async fn set_up(args: &ChaosArgs, fault: Fault, run: &str, work: &Path) -> Result<Setting, Skip> {
    let log = work.join(format!("{run}.log"));
    let node_args = |store: String| {
        vec!["--node-id".to_owned(), format!("chaos-{run}"), "--store".to_owned(), store]
    };
    if fault.on_postgres() {
        let database = ChaosDatabase::create(&args.postgres, run)
            .await
            .map_err(|error| Skip::Unavailable(format!("{error:#}")))?;
        let rest = async {
            let proxy = Proxy::start(database.server_address()?).await?;
            let url = database.url_through(proxy.port())?;
            anyhow::Ok((Node::new(node_args(url), &log)?, proxy))
        };
        return match rest.await {
            Ok((node, proxy)) => Ok(Setting {
                node,
                data_dir: None,
                proxy: Some(proxy),
                database: Some(database),
                disk: None,
            }),
            Err(error) => {
                // The database is this run's; it goes whatever else failed.
                let _ = database.drop_database().await;
                Err(Skip::Failed(error))
            }
        };
    }
    let dir = work.join(run);
    let disk = if fault == Fault::DiskFull {
        Some(
            faults::SmallDisk::mount(&dir, 64)
                .map_err(|error| Skip::Unavailable(format!("{error:#}")))?,
        )
    } else {
        std::fs::create_dir_all(&dir).map_err(anyhow::Error::from)?;
        None
    };
    let mut node = Node::new(node_args(format!("sqlite:{}", dir.display())), &log)?;
    if matches!(fault, Fault::IdleConnections | Fault::Slowloris) {
        node = node.with_fd_limit(1024);
    }
    Ok(Setting { node, data_dir: Some(dir), proxy: None, database: None, disk })
}

/// The customer and product every chaos order refers to.
async fn seed(client: &Client, base: &str) -> anyhow::Result<()> {
    let customer =
        json!({"customer_id": load::CUSTOMER, "name": "Chaos", "email": "chaos@example.com"});
    let product = json!({"sku": load::SKU, "name": "Tea", "price_cents": 450});
    for (path, body) in [("/customers", customer), ("/products", product)] {
        let (status, answer) =
            client.send("POST", &format!("{base}{path}"), &[], Some(&body)).await?;
        if status != 201 && status != 409 {
            bail!("POST {path} answered {status}: {answer}");
        }
    }
    Ok(())
}

/// How long the service may take to take load again after a fault ends.
const RECOVERY: Duration = Duration::from_secs(30);

async fn one_fault(
    args: &ChaosArgs,
    fault: Fault,
    runs: u32,
    work: &Path,
) -> Result<Outcome, Skip> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let mut setting = set_up(args, fault, &run, work).await?;
    let client = Client::new(args.clients);
    let outcome = under_load(&mut setting, &client, fault, runs, &run, args.clients).await;
    setting.node.kill();
    let dropped = match setting.database.take() {
        Some(database) => database.drop_database().await,
        None => Ok(()),
    };
    // The run's own failure says more than a failure to clean up after it.
    let outcome = outcome?;
    dropped?;
    Ok(outcome)
}

async fn under_load(
    setting: &mut Setting,
    client: &Client,
    fault: Fault,
    runs: u32,
    run: &str,
    clients: usize,
) -> anyhow::Result<Outcome> {
    setting.node.start(client).await?;
    let base = setting.node.base();
    seed(client, &base).await?;
    let load = Load::start(client, &base, run, clients);
    if !load.until_acknowledged(50, RECOVERY).await {
        bail!("the service took no load before the fault");
    }
    let mut health = HealthSeen::default();
    for n in 1..=runs {
        health.merge(inject(setting, client, fault).await?);
        if !load.until_acknowledged(20, RECOVERY).await {
            bail!("the service took no load within {RECOVERY:?} after run {n}");
        }
        eprintln!(
            "chaos: {} run {n}/{runs} done, {} acknowledged so far",
            fault.name(),
            load.acknowledged()
        );
    }
    let (ledger, clients) = load.finish().await?;
    let tally = check::check(client, &base, &ledger).await?;
    Ok(Outcome { tally, clients, health })
}

/// Does one run of `fault` to the running service and undoes it; what `/health` said.
async fn inject(
    setting: &mut Setting,
    client: &Client,
    fault: Fault,
) -> anyhow::Result<HealthSeen> {
    let base = setting.node.base();
    let watch = |lasting| faults::watch_health(&base, lasting, Duration::from_millis(250));
    let mut seen = HealthSeen::default();
    match fault {
        Fault::KillSqlite | Fault::KillPostgres => {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(200..1200))).await;
            setting.node.kill();
            setting.node.start(client).await?;
        }
        Fault::PostgresFrozen | Fault::PostgresStopped => {
            let proxy = setting.proxy.as_ref().context("no proxy")?;
            let (mode, lasting) = if fault == Fault::PostgresFrozen {
                (Mode::Frozen, Duration::from_secs(6))
            } else {
                (Mode::Gone, Duration::from_secs(3))
            };
            proxy.set(mode);
            seen = watch(lasting).await;
            proxy.set(Mode::Pass);
        }
        Fault::ConnectionsTerminated => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let database = setting.database.as_ref().context("no database")?;
            if database.terminate_backends().await? == 0 {
                bail!("the service had no connection to terminate");
            }
            seen = watch(Duration::from_secs(1)).await;
        }
        Fault::DiskFull => {
            let disk = setting.disk.as_ref().context("no small disk")?;
            let filler = disk.fill()?;
            seen = watch(Duration::from_secs(2)).await;
            std::fs::remove_file(&filler).context("cannot free the disk")?;
            // Reads still answer on a full disk: only the writer's failed groups show it.
            if seen.writes_failing == 0 {
                seen.missed =
                    Some("the full disk never showed in /health as failing writes".into());
            }
        }
        Fault::DamagedViews => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            setting.node.kill();
            let dir = setting.data_dir.as_deref().context("no data directory")?;
            let set_aside = faults::damaged_files_set_aside(dir)?;
            faults::damage_views(dir)?;
            setting.node.start(client).await?;
            if faults::damaged_files_set_aside(dir)? != set_aside + 1 {
                bail!("the service started on the damaged views.sqlite without setting it aside");
            }
        }
        Fault::IdleConnections | Fault::Slowloris => {
            let port = setting.node.port();
            let held = faults::hostile_connections(port, 1100, fault == Fault::Slowloris).await;
            seen = watch(Duration::from_secs(3)).await;
            drop(held);
        }
    }
    Ok(seen)
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| fault | store | runs | acknowledged | lost | duplicated | wrong | unresolved | retried | slowest answer | /health |"
    );
    let _ = writeln!(
        out,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for row in rows {
        let (fault, store, runs) = (row.fault.name(), store_name(row.fault), row.runs);
        match &row.outcome {
            Ok(Outcome { tally, clients, health }) => {
                let summary = if health.probes == 0 {
                    "-".to_owned()
                } else {
                    let writes = match health.writes_failing {
                        0 => String::new(),
                        n => format!(", {n} said writes failing"),
                    };
                    format!(
                        "{} probes, slowest {} ms, {} over 1 s, {} said 503{writes}",
                        health.probes,
                        health.slowest.as_millis(),
                        health.slow,
                        health.unavailable
                    )
                };
                let _ = writeln!(
                    out,
                    "| {fault} | {store} | {runs} | {} | {} | {} | {} | {} | {} | {} ms | {summary} |",
                    tally.acknowledged,
                    tally.lost,
                    tally.duplicated,
                    tally.wrong,
                    tally.unresolved,
                    clients.retries,
                    clients.slowest.as_millis()
                );
                for failure in health.first_failure.iter().chain(&health.missed) {
                    let _ = writeln!(out, "|  | /health: {failure} | | | | | | | | | |");
                }
                for example in &tally.examples {
                    let _ = writeln!(out, "|  | {example} | | | | | | | | | |");
                }
            }
            Err(why) => {
                let _ = writeln!(out, "| {fault} | {store} | {runs} | {why} | | | | | | | |");
            }
        }
    }
    out
}
