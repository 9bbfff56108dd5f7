//! `strata bench --nats URL`: how fast the NATS publisher hands the log to JetStream, and a
//! read replica takes it back. W1's events are made in memory first; then a delivery
//! publishes all of them (bodies as `strata events export` writes them, each acknowledged
//! by the server) to a fresh stream, and the time from start to the last acknowledgement is
//! reported. Then a replica's follower copies the whole stream into a fresh SQLite store
//! opened as `serve --read-only` opens it, and the time until it holds the head is
//! reported (its views then catch up as on any node: see catch-up in W1's figures). The
//! stream is deleted afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use strata::{
    EventStore, InMemoryEventStore, InMemoryViewManager, LocalLeases, Position, ProjectionRunner,
};
use strata_nats::{JetStreamOutlet, JetStreamSource, NatsSettings};
use strata_sqlite::SqliteEventStore;

use super::plan::Plan;
use super::progress::Progress;
use crate::cli::store::NATS_SOURCE;

/// What the run measured.
pub struct PublishFigures {
    /// Events published.
    pub events: u64,
    /// From the delivery's start to the last event acknowledged.
    pub elapsed: Duration,
    /// Bytes of message bodies.
    pub body_bytes: u64,
    /// From a replica's start until its copy of the log held every event.
    pub replica_copied: Duration,
}

/// How long publishing may take before the run is called failed.
const PATIENCE: Duration = Duration::from_secs(600);

/// Makes W1's events for `plan`, then publishes them to a fresh stream at `url`.
pub async fn run(plan: Plan, url: &str) -> anyhow::Result<PublishFigures> {
    let events = Arc::new(InMemoryEventStore::new());
    eprintln!("bench: making W1's events in memory");
    let views = Arc::new(InMemoryViewManager::new());
    super::in_process::run(
        plan,
        events.clone(),
        views,
        None::<super::in_process::NoRebuilds>,
        || None,
    )
    .await?;
    let head = events.head();
    let all = events.read_all(strata::Position::START, usize::MAX).await?;
    let body_bytes = all
        .iter()
        .map(|event| crate::cli::events::export_object(event).map(|body| body.len() as u64))
        .sum::<Result<u64, String>>()
        .map_err(anyhow::Error::msg)?;
    let unique = std::process::id();
    let settings = NatsSettings {
        url: url.to_owned(),
        stream: format!("STRATA_BENCH_{unique}"),
        subject_prefix: format!("strata_bench.{unique}"),
    };
    let outlet = Arc::new(
        JetStreamOutlet::connect(&settings, crate::cli::events::export_object)
            .await
            .context("cannot open the NATS publisher")?,
    );
    let context = outlet.context().clone();
    let started = Instant::now();
    let publisher = ProjectionRunner::new("bench").spawn_delivery(
        "nats_publisher",
        outlet,
        events,
        Arc::new(InMemoryViewManager::new()),
        Arc::new(LocalLeases),
    );
    let published = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("events published", head.0, published.clone());
    let reached = loop {
        let at = publisher.position();
        published.store(at.0, Ordering::Relaxed);
        if at >= head {
            break Ok(started.elapsed());
        }
        if started.elapsed() > PATIENCE {
            break Err(publisher.status().await.ok().and_then(|s| s.error));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    progress.finish();
    publisher.stop();
    let replica = match reached {
        Ok(_) => follow(&settings, head).await,
        Err(_) => Ok(Duration::ZERO),
    };
    if let Err(error) = context.delete_stream(&settings.stream).await {
        eprintln!("bench: could not delete the stream {}: {error}", settings.stream);
    }
    let replica_copied = replica?;
    match reached {
        Ok(elapsed) => Ok(PublishFigures { events: head.0, elapsed, body_bytes, replica_copied }),
        Err(error) => bail!("the publisher did not finish in {PATIENCE:?}: {error:?}"),
    }
}

/// Follows the stream of `settings` up to `head` into a fresh SQLite store opened as a
/// replica's: how long until the copy held every event.
async fn follow(settings: &NatsSettings, head: Position) -> anyhow::Result<Duration> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let store = Arc::new(
        SqliteEventStore::open_copy(dir.path()).context("cannot open the replica's store")?,
    );
    let source = JetStreamSource::connect(settings, crate::cli::events::import_object)
        .await
        .context("cannot reach the replica's source")?;
    let started = Instant::now();
    let follower =
        ProjectionRunner::new("bench").spawn_follower(NATS_SOURCE, source, store.clone());
    let copied = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("events copied by a replica", head.0, copied.clone());
    let outcome = loop {
        let at = store.head();
        copied.store(at.0, Ordering::Relaxed);
        if at >= head {
            break Ok(started.elapsed());
        }
        if started.elapsed() > PATIENCE {
            let error = follower.status().await.ok().and_then(|s| s.error);
            break Err(anyhow::anyhow!("the replica did not catch up in {PATIENCE:?}: {error:?}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    progress.finish();
    follower.stop();
    outcome
}

/// The report of a run.
pub fn table(url: &str, figures: &PublishFigures) -> String {
    let seconds = figures.elapsed.as_secs_f64();
    let mut out = format!(
        "\nNATS publisher: {} events of W1 to JetStream at {url}, each acknowledged\n\n",
        figures.events
    );
    out.push_str("| figure                      |        value |\n");
    out.push_str("|-----------------------------|-------------:|\n");
    let rows = [
        ("events/s".to_owned(), format!("{:.0}", figures.events as f64 / seconds)),
        (
            "MiB/s of bodies".to_owned(),
            format!("{:.1}", figures.body_bytes as f64 / seconds / 1_048_576.0),
        ),
        (
            "bytes per body".to_owned(),
            format!("{:.0}", figures.body_bytes as f64 / figures.events.max(1) as f64),
        ),
        ("wall time".to_owned(), format!("{seconds:.2} s")),
        (
            "replica: events copied/s".to_owned(),
            format!("{:.0}", figures.events as f64 / figures.replica_copied.as_secs_f64()),
        ),
    ];
    for (name, value) in rows {
        out.push_str(&format!("| {name:<27} | {value:>12} |\n"));
    }
    out
}
