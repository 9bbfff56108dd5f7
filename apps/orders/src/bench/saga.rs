//! `strata bench --saga`: orders confirmed through the fulfilment saga, on the real service
//! in this process. Each client places an order of two lines and confirms it, waiting for
//! the saga's outcome; reported are orders confirmed per second and the confirmation's
//! latency from the request to the decision (p50, p99). Figures are printed only when every
//! order was confirmed and every product's reservations equal its confirmed units.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use strata::{BusConfig, CommandContext, EventStore};

use super::histogram::Histogram;
use super::progress::Progress;
use crate::app::{App, Backend, LineRequest, PlaceOrder, Stores};
use crate::domain::{OrderStatus, Product};

/// Products the orders draw from; stock enough for every order.
const PRODUCTS: usize = 16;

/// How long one confirmation may take before the run is called failed.
const CONFIRM_WAIT: Duration = Duration::from_secs(30);

/// What the run measured.
pub struct SagaFigures {
    /// Orders confirmed.
    pub orders: u64,
    /// Wall time of the place-and-confirm phase.
    pub elapsed: Duration,
    /// Events appended in that phase (the clients' and the saga's).
    pub events: u64,
    /// Confirmation latency, request to decision.
    pub latency: Histogram,
}

impl SagaFigures {
    /// Orders confirmed per second.
    pub fn orders_per_s(&self) -> f64 {
        self.orders as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `orders` orders from `tasks` clients on a service over `stores`.
pub async fn run<B: Backend>(
    stores: Stores<B>,
    orders: u64,
    tasks: usize,
) -> anyhow::Result<SagaFigures> {
    let app = Arc::new(App::start(stores, "bench", BusConfig::default()).await?);
    let setup = CommandContext::new("bench-saga-setup");
    app.register_customer("ada", "Ada".into(), "ada@example.com".into(), &setup).await?;
    // Two lines of at most 3 units per order: every order finds its stock.
    let stock = i64::try_from(orders.saturating_mul(6)).unwrap_or(i64::MAX).max(1);
    for sku in 0..PRODUCTS {
        let sku = format!("p{sku}");
        app.create_product(&sku, sku.clone(), 100, &setup).await?;
        let mut left = stock;
        while left > 0 {
            let qty = left.min(crate::domain::product::MAX_QTY);
            app.restock_product(&sku, qty, &setup).await?;
            left -= qty;
        }
    }
    let head = app.events().head();

    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("orders confirmed", orders, done.clone());
    let started = Instant::now();
    let mut clients = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let (app, done) = (app.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let (mut latency, mut units) = (Histogram::default(), 0);
            let mut rng = fastrand::Rng::with_seed(task as u64);
            for n in (task as u64..orders).step_by(tasks) {
                let id = format!("s{n}");
                let context = CommandContext::new(format!("bench-saga-{n}"));
                let first = rng.usize(..PRODUCTS);
                let second = (first + 1 + rng.usize(..PRODUCTS - 1)) % PRODUCTS;
                let lines = [first, second]
                    .map(|p| LineRequest { sku: format!("p{p}"), qty: rng.i64(1..=3) })
                    .to_vec();
                units += lines.iter().map(|line| line.qty).sum::<i64>();
                let order = PlaceOrder {
                    customer_id: "ada".into(),
                    lines,
                    payment_method: None,
                    shipping_address: None,
                };
                app.place_order(&id, order, &context).await?;
                let asked = Instant::now();
                let (_, decided) = app.confirm_order(&id, &context, CONFIRM_WAIT).await?;
                match decided {
                    Some(decided) if decided.status == OrderStatus::Confirmed => {}
                    Some(decided) => bail!("order {id} was {}, not confirmed", decided.status),
                    None => bail!("order {id} was not decided within {CONFIRM_WAIT:?}"),
                }
                latency.record(asked.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>((latency, units))
        }));
    }
    let (mut latency, mut asked) = (Histogram::default(), 0);
    let mut failed = None;
    for client in clients {
        match client.await.context("a client task failed") {
            Ok(Ok((client_latency, units))) => {
                latency.merge(&client_latency);
                asked += units;
            }
            Ok(Err(error)) | Err(error) => {
                failed.get_or_insert(error);
            }
        }
    }
    if let Some(error) = failed {
        // Every client has ended; stop the service before the store is dropped.
        app.stop();
        return Err(error);
    }
    let elapsed = started.elapsed();
    progress.finish();
    let events = app.events().head().0.saturating_sub(head.0);

    // Every product's reservations are the confirmed units: nothing lost, nothing doubled.
    let mut reserved = 0;
    for sku in 0..PRODUCTS {
        let product = app.bus.load::<Product>(&format!("p{sku}")).await?;
        reserved += product.state.reserved();
    }
    if reserved != asked {
        bail!("the products hold {reserved} units reserved; the confirmed orders asked {asked}");
    }
    app.stop();
    Ok(SagaFigures { orders, elapsed, events, latency })
}

/// The figures as a table.
pub fn table(target: &str, tasks: usize, figures: &SagaFigures) -> String {
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    let mut out = format!(
        "\norders confirmed through the fulfilment saga: {} orders of 2 lines from {PRODUCTS} products, {tasks} clients, {target}\n\n",
        figures.orders
    );
    out.push_str("| figure                                  |        value |\n");
    out.push_str("|-----------------------------------------|-------------:|\n");
    let rows = [
        ("orders confirmed/s".to_owned(), format!("{:.0}", figures.orders_per_s())),
        (
            "events/s (clients' and saga's)".to_owned(),
            format!("{:.0}", figures.events as f64 / figures.elapsed.as_secs_f64()),
        ),
        ("confirmation latency p50".to_owned(), ms(figures.latency.quantile(0.5))),
        ("confirmation latency p99".to_owned(), ms(figures.latency.quantile(0.99))),
        ("wall time".to_owned(), format!("{:.2} s", figures.elapsed.as_secs_f64())),
    ];
    for (name, value) in rows {
        out.push_str(&format!("| {name:<39} | {value:>12} |\n"));
    }
    out
}
