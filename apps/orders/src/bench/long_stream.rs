//! `strata bench --long-stream N`: what the first command on a long stream costs after a
//! restart (an empty aggregate cache), against a short stream, with and without the
//! snapshot the bus keeps for orders.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use strata::{
    BusConfig, CommandBus, CommandContext, DomainEvent, EventMetadata, EventStore, ExpectedVersion,
    StreamId, Version,
};

use crate::domain::order::{LineAdded, OrderPlaced};
use crate::domain::{Order, OrderCommand, OrderEvent, OrderLine};

/// Fresh streams measured per case; the median is reported.
const ROUNDS: usize = 5;
/// The short stream's length.
const SHORT: u64 = 20;

/// The median cost of the first command after a restart, per case.
pub struct LongStreamFigures {
    pub events: u64,
    pub short: Duration,
    pub long_replayed: Duration,
    pub long_from_snapshot: Duration,
}

fn line() -> OrderLine {
    OrderLine { sku: "tea".into(), qty: 1, price_cents: 450 }
}

/// Appends an order of `events` events to `id`, a thousand at a time.
async fn write_order<S: EventStore>(store: &S, id: &str, events: u64) -> anyhow::Result<()> {
    let stream = StreamId::new("order", id);
    let mut version = 0;
    while version < events {
        let chunk = (events - version).min(1000);
        let mut batch = Vec::with_capacity(chunk as usize);
        for n in version..version + chunk {
            let event = if n == 0 {
                OrderEvent::OrderPlaced(OrderPlaced {
                    customer_id: "ada".into(),
                    lines: vec![],
                    payment_method: "card".into(),
                    shipping_address: None,
                })
            } else {
                OrderEvent::LineAdded(LineAdded { customer_id: "ada".into(), line: line() })
            };
            batch.push(event.to_new_event(EventMetadata::new("bench-long-stream", None))?);
        }
        store.append(&stream, ExpectedVersion::of(Version(version)), batch).await?;
        version += chunk;
    }
    Ok(())
}

/// The time of one AddLine on `id` through a bus with nothing cached, as after a restart.
async fn first_command<S: EventStore>(store: &Arc<S>, id: &str) -> anyhow::Result<Duration> {
    let bus = CommandBus::new(store.clone(), BusConfig::default());
    let context = CommandContext::new("bench-long-stream");
    let started = Instant::now();
    bus.execute::<Order>(id, OrderCommand::AddLine(line()), &context).await?;
    Ok(started.elapsed())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// Runs the measurement on `store`, printing progress to standard error.
pub async fn run<S: EventStore>(store: Arc<S>, events: u64) -> anyhow::Result<LongStreamFigures> {
    if events <= SHORT {
        bail!("--long-stream must be more than {SHORT} events");
    }
    let (mut short, mut replayed, mut from_snapshot) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        eprintln!("bench: round {} of {ROUNDS}: writing an order of {events} events", round + 1);
        let (long, small) = (format!("long-{round}"), format!("short-{round}"));
        write_order(store.as_ref(), &long, events).await?;
        write_order(store.as_ref(), &small, SHORT).await?;
        short.push(first_command(&store, &small).await?);
        // No snapshot yet: the whole stream is read, and the bus writes one behind.
        replayed.push(first_command(&store, &long).await?);
        let stream = StreamId::new("order", &long);
        let deadline = Instant::now() + Duration::from_secs(30);
        while store.read_snapshot(&stream).await?.is_none() {
            if Instant::now() > deadline {
                bail!("no snapshot of {stream} was written within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        from_snapshot.push(first_command(&store, &long).await.context("from the snapshot")?);
    }
    Ok(LongStreamFigures {
        events,
        short: median(short),
        long_replayed: median(replayed),
        long_from_snapshot: median(from_snapshot),
    })
}

/// The figures as a table.
pub fn table(target: &str, figures: &LongStreamFigures) -> String {
    let ms = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1000.0);
    let rows = [
        (format!("order of {SHORT} events"), ms(figures.short)),
        (format!("order of {} events, no snapshot", figures.events), ms(figures.long_replayed)),
        (
            format!("order of {} events, from its snapshot", figures.events),
            ms(figures.long_from_snapshot),
        ),
    ];
    let mut out = format!(
        "\nfirst command after a restart (AddLine, empty cache), median of {ROUNDS}, {target}\n\n"
    );
    out.push_str("| stream                                   |       cost |\n");
    out.push_str("|------------------------------------------|-----------:|\n");
    for (name, cost) in rows {
        out.push_str(&format!("| {name:<40} | {cost:>10} |\n"));
    }
    out
}
