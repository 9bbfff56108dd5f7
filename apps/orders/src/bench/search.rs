//! `strata bench --search`: the search index. Orders of the real domain (customers,
//! products and shipping addresses named from small word lists) are placed in memory
//! first; then a fresh index is built from that log, as a new node builds it, and timed;
//! then single-word and two-word queries are timed one after another. Reported: events and
//! orders indexed per second, the index's size on disk, and query latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use strata::{BusConfig, CommandContext, EventStore, ProjectionRunner};
use strata_search::{SearchIndex, SearchProjection};

use super::histogram::Histogram;
use super::progress::Progress;
use crate::app::{App, LineRequest, PlaceOrder};
use crate::views::{ORDER, ORDER_SEARCH, OrderIndexer};

const FIRST_NAMES: [&str; 8] =
    ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John"];
const LAST_NAMES: [&str; 8] =
    ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Backus"];
const PRODUCT_WORDS: [&str; 10] =
    ["Green", "Tea", "Black", "Coffee", "Carrot", "Cake", "Cheese", "Scone", "Rye", "Bread"];
const STREETS: [&str; 6] =
    ["Harbour Street", "Mill Lane", "Castle Road", "Quay Walk", "Kings Row", "Elm Close"];
const TOWNS: [&str; 5] = ["Leith", "Oxford", "Cardiff", "Bristol", "York"];
const CUSTOMERS: usize = 64;
const PRODUCTS: usize = 40;
const QUERIES: usize = 2_000;

/// What the run measured.
pub struct SearchFigures {
    /// Orders in the log.
    pub orders: u64,
    /// Events in the log.
    pub events: u64,
    /// Building the index from the whole log.
    pub build: Duration,
    /// The index's files.
    pub bytes: u64,
    /// Query latency, one query at a time.
    pub latency: Histogram,
}

fn directory_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()
        })
        .unwrap_or(0)
}

/// Places `orders` orders in memory, builds an index from them, and queries it.
pub async fn run(orders: u64) -> anyhow::Result<SearchFigures> {
    let app = App::start(crate::backends::memory(), "bench", BusConfig::default()).await?;
    let setup = CommandContext::new("bench-search-setup");
    let mut rng = fastrand::Rng::with_seed(7);
    for n in 0..CUSTOMERS {
        let name = format!("{} {}", FIRST_NAMES[n % 8], LAST_NAMES[n / 8 % 8]);
        app.register_customer(&format!("c{n}"), name, format!("c{n}@example.com"), &setup).await?;
    }
    for n in 0..PRODUCTS {
        let name = format!("{} {}", PRODUCT_WORDS[n % 10], PRODUCT_WORDS[(n / 10 + n) % 10]);
        app.create_product(&format!("p{n}"), name, 100, &setup).await?;
    }
    eprintln!("bench: placing {orders} orders in memory");
    for n in 0..orders {
        let lines = (0..rng.usize(1..=3))
            .map(|_| LineRequest { sku: format!("p{}", rng.usize(..PRODUCTS)), qty: 1 })
            .collect();
        let address = format!(
            "{} {} {}",
            rng.usize(1..200),
            STREETS[rng.usize(..STREETS.len())],
            TOWNS[rng.usize(..TOWNS.len())]
        );
        let order = PlaceOrder {
            customer_id: format!("c{}", rng.usize(..CUSTOMERS)),
            lines,
            payment_method: None,
            shipping_address: Some(address),
        };
        app.place_order(&format!("o{n}"), order, &setup).await?;
    }
    let store = app.events().clone();
    let head = store.head();
    app.stop();

    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let index = Arc::new(SearchIndex::open(dir.path())?);
    let view = Arc::new(SearchProjection::new(index.clone(), OrderIndexer::default()));
    let indexed = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("events indexed", head.0, indexed.clone());
    let started = Instant::now();
    let handle = ProjectionRunner::new("bench").spawn_local(ORDER_SEARCH, view, store);
    while handle.position() < head {
        indexed.store(handle.position().0, Ordering::Relaxed);
        if let Some(error) = handle.status().await.ok().and_then(|status| status.error) {
            handle.stop();
            anyhow::bail!("the index failed: {error}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let build = started.elapsed();
    progress.finish();
    handle.stop();

    let words: Vec<String> = FIRST_NAMES
        .iter()
        .chain(&LAST_NAMES)
        .chain(&PRODUCT_WORDS)
        .chain(&TOWNS)
        .map(|word| word.to_lowercase())
        .collect();
    let mut latency = Histogram::default();
    for n in 0..QUERIES {
        let query = if n % 2 == 0 {
            words[rng.usize(..words.len())].clone()
        } else {
            format!("{} {}", words[rng.usize(..words.len())], words[rng.usize(..words.len())])
        };
        let asked = Instant::now();
        let index = index.clone();
        tokio::task::spawn_blocking(move || index.search(ORDER, &query, 10)).await??;
        latency.record(asked.elapsed());
    }
    Ok(SearchFigures { orders, events: head.0, build, bytes: directory_bytes(dir.path()), latency })
}

/// The report of a run.
pub fn table(figures: &SearchFigures) -> String {
    let seconds = figures.build.as_secs_f64();
    let mut out = format!(
        "\nSearch index: {} orders ({} events) indexed from the log, then {QUERIES} queries of \
         one or two words, 10 hits each, one at a time\n\n",
        figures.orders, figures.events
    );
    out.push_str("| figure                      |        value |\n");
    out.push_str("|-----------------------------|-------------:|\n");
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    let rows = [
        ("events indexed/s".to_owned(), format!("{:.0}", figures.events as f64 / seconds)),
        ("orders indexed/s".to_owned(), format!("{:.0}", figures.orders as f64 / seconds)),
        ("build time".to_owned(), format!("{seconds:.2} s")),
        ("index size".to_owned(), format!("{:.1} MiB", figures.bytes as f64 / 1_048_576.0)),
        ("query p50".to_owned(), ms(figures.latency.quantile(0.5))),
        ("query p99".to_owned(), ms(figures.latency.quantile(0.99))),
    ];
    for (name, value) in rows {
        out.push_str(&format!("| {name:<27} | {value:>12} |\n"));
    }
    out
}
