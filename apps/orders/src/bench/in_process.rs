//! Runs W1 in this process against a store: client tasks call the command bus directly, one
//! projection keeps `order_summary`, and (unless the caller skips them) a replay and rebuilds
//! from zero are timed at the end.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use strata::{
    BusConfig, CommandBus, CommandContext, CommandError, EventStore, ProjectionRunner, ViewManager,
};

use super::histogram::Histogram;
use super::plan::{Plan, Step};
use super::progress::Progress;
use super::report::{Correctness, Figures, GroupCommit};
use super::system;
use super::workload::{
    BenchCommand, BenchOrder, ORDER_SUMMARY, OrderSummary, customer_id, line, order_id,
    order_summary,
};

/// How many times the rebuild is timed; the median is reported.
const REBUILDS: usize = 3;

/// How long the views may take to catch up before the run is declared broken.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(600);

fn command(step: Step) -> (String, BenchCommand) {
    match step {
        Step::Place(n) => {
            (order_id(n), BenchCommand::PlaceOrder { customer_id: customer_id(n), total_cents: 0 })
        }
        Step::Line(n, k) => {
            let (sku, qty, price_cents) = line(k);
            (order_id(n), BenchCommand::AddLine { sku, qty, price_cents })
        }
    }
}

async fn send<S: EventStore>(bus: &CommandBus<S>, step: Step) -> anyhow::Result<()> {
    let (id, command) = command(step);
    let context = CommandContext::new("bench");
    loop {
        match bus.execute::<BenchOrder>(&id, command.clone(), &context).await {
            Ok(_) => return Ok(()),
            // Another writer won every retry inside the bus: the client retries, as W1 says.
            Err(CommandError::Conflict { .. }) => continue,
            Err(error) => return Err(error).with_context(|| format!("command {step:?} failed")),
        }
    }
}

/// The type that spells `None` for `fresh_views`, in a run that needs only the load.
pub type NoRebuilds = fn() -> std::future::Ready<anyhow::Result<strata::InMemoryViewManager>>;

/// Runs the plan; `fresh_views` opens an empty view store for the replay (without it, the
/// replay and the rebuilds are skipped), and `bytes_on_disk` measures the store's size after
/// the load.
pub async fn run<S, M, R, F, Fut>(
    plan: Plan,
    events: Arc<S>,
    views: Arc<M>,
    fresh_views: Option<F>,
    bytes_on_disk: impl FnOnce() -> Option<u64>,
) -> anyhow::Result<(Figures, Correctness)>
where
    S: EventStore,
    M: ViewManager,
    R: ViewManager,
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<R>>,
{
    let config = BusConfig { codec: plan.codec, ..BusConfig::default() };
    let bus = Arc::new(CommandBus::new(events.clone(), config));
    let projection =
        ProjectionRunner::new("bench").spawn(order_summary(), events.clone(), views.clone());
    let done = Arc::new(AtomicU64::new(0));
    let events_before = events.head();
    let progress = Progress::start("commands", plan.total_commands(), done.clone());

    let started = Instant::now();
    let mut latencies = Histogram::default();
    for step in plan.setup() {
        let sent = Instant::now();
        send(&bus, step).await?;
        latencies.record(sent.elapsed());
        done.fetch_add(1, Ordering::Relaxed);
    }
    let mut tasks = Vec::with_capacity(plan.tasks);
    for task in 0..plan.tasks {
        let (bus, done) = (bus.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Histogram::default();
            for step in plan.task(task) {
                let sent = Instant::now();
                send(&bus, step).await?;
                latencies.record(sent.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(latencies)
        }));
    }
    for task in tasks {
        latencies.merge(&task.await.context("a client task panicked")??);
    }
    let load = started.elapsed();
    progress.finish();

    let head = events.head();
    let caught_up = Instant::now();
    if projection.wait_for(head, CATCH_UP_LIMIT).await.is_err() {
        bail!("order_summary did not reach position {head} within {CATCH_UP_LIMIT:?}");
    }
    let catchup = caught_up.elapsed();
    projection.stop();

    let correctness = check(views.as_ref(), &plan).await?;
    // Measured before the rebuilds, whose own writes would count otherwise.
    let bytes = bytes_on_disk();

    let (replay, rebuild, others) = match fresh_views {
        Some(fresh_views) => {
            let (replay, rebuild, others) =
                replay_and_rebuild(&plan, events.clone(), views.clone(), fresh_views().await?)
                    .await?;
            (Some(replay), Some(rebuild), others)
        }
        None => (None, None, Vec::new()),
    };

    let mut correctness = correctness;
    for (what, other) in others {
        if !other.passed() {
            correctness.mismatch_count += other.mismatch_count;
            correctness
                .mismatches
                .extend(other.mismatches.into_iter().map(|m| format!("{what}: {m}")));
        }
    }
    let commands = latencies.count();
    let figures = Figures {
        commands_per_s: commands as f64 / load.as_secs_f64(),
        p50_ms: latencies.quantile(0.50).as_secs_f64() * 1000.0,
        p99_ms: latencies.quantile(0.99).as_secs_f64() * 1000.0,
        catchup_ms: catchup.as_secs_f64() * 1000.0,
        rebuild_events_per_s: rebuild.map(|took| head.0 as f64 / took.as_secs_f64()),
        replay_events_per_s: replay.map(|took| head.0 as f64 / took.as_secs_f64()),
        bytes_per_event: bytes.map(|bytes| bytes as f64 / head.0.max(1) as f64),
        peak_rss_bytes: system::peak_rss_bytes(),
        correct: correctness.passed() && plan.orders().count() as u64 == correctness.checked,
        commands,
        events: head.0 - events_before.0,
        events_before: events_before.0,
        group_commit: events.group_commit_metrics().map(|m| GroupCommit {
            groups: m.groups,
            mean_appends: m.mean_group_size(),
            largest: m.largest_group,
            mean_ms: m.mean_group_ms(),
        }),
    };
    Ok((figures, correctness))
}

/// Replays the log into `fresh`, then rebuilds the live views a few times; how long the
/// replay and the median rebuild took, and whether each left every row correct.
async fn replay_and_rebuild<S: EventStore, M: ViewManager, R: ViewManager>(
    plan: &Plan,
    events: Arc<S>,
    views: Arc<M>,
    fresh: R,
) -> anyhow::Result<(Duration, Duration, Vec<(&'static str, Correctness)>)> {
    let head = events.head();
    eprintln!("bench: replaying order_summary from zero into empty views");
    let replayed = Arc::new(fresh);
    let replay_started = Instant::now();
    order_summary().catch_up(events.clone(), replayed.clone()).await.context("replay failed")?;
    let replay = replay_started.elapsed();
    let replayed_correctness = check(replayed.as_ref(), plan).await?;

    // The median of a few rebuilds: one takes well under a second at this size, where a
    // single figure swings with whatever else the machine does.
    let mut rebuilds = Vec::with_capacity(REBUILDS);
    for round in 1..=REBUILDS {
        eprintln!("bench: rebuilding order_summary beside its live views ({round} of {REBUILDS})");
        let rebuilt_events = Arc::new(AtomicU64::new(0));
        let rebuild_progress = Progress::start("events rebuilt", head.0, rebuilt_events.clone());
        let report = |position: strata::Position, _head: strata::Position| {
            rebuilt_events.store(position.0, Ordering::Relaxed);
        };
        let rebuild_started = Instant::now();
        order_summary()
            .rebuild(events.clone(), views.clone(), &report)
            .await
            .context("rebuild failed")?;
        rebuilds.push(rebuild_started.elapsed());
        rebuild_progress.finish();
    }
    rebuilds.sort();
    let rebuild = rebuilds[rebuilds.len() / 2];
    let rebuilt_correctness = check(views.as_ref(), plan).await?;

    Ok((
        replay,
        rebuild,
        vec![("replayed", replayed_correctness), ("rebuilt", rebuilt_correctness)],
    ))
}

async fn check<M: ViewManager>(views: &M, plan: &Plan) -> anyhow::Result<Correctness> {
    let mut correctness = Correctness::new();
    let numbers: Vec<u64> = plan.orders().collect();
    for chunk in numbers.chunks(1000) {
        let ids: Vec<String> = chunk.iter().map(|&n| order_id(n)).collect();
        let rows = views.load::<OrderSummary>(ORDER_SUMMARY, strata::Slot::Live, &ids).await?;
        for (&n, id) in chunk.iter().zip(&ids) {
            let (lines, total_cents) = plan.expected(n);
            let want = OrderSummary { customer_id: customer_id(n), lines, total_cents };
            let got = rows.get(id).map(|stored| &stored.view);
            correctness
                .check(got == Some(&want), || format!("{id}: expected {want:?}, found {got:?}"));
        }
    }
    Ok(correctness)
}
