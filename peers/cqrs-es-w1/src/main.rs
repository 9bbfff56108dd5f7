//! Workload W1 on cqrs-es 0.5's `MemStore`, so that `strata bench --store memory` has a
//! peer measured on the same machine in the same hour (docs/benchmarks.md). The orders,
//! customers, lines and expected summaries are W1's own (`orders::bench::workload`); only
//! the aggregate, its events and the query are written again here, in cqrs-es's terms.
//! Orders are split over the tasks as `strata bench` splits them, and every
//! `order_summary` is checked after the run.
//!
//! `MemStore` prints a line to standard output on every load and every commit, so the result
//! goes to standard error: `cargo run --release -- 10000 64 > /dev/null`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use cqrs_es::event_sink::EventSink;
use cqrs_es::mem_store::MemStore;
use cqrs_es::{Aggregate, CqrsFramework, DomainEvent, EventEnvelope, Query};
use orders::bench::workload::{
    LINES_PER_ORDER, OrderSummary, customer_id, expected_summary, line, order_id,
};
use serde::{Deserialize, Serialize};

// The allocator of the `strata` binary, so that the two are not told apart by malloc.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Default, Serialize, Deserialize)]
struct BenchOrder {
    placed: bool,
}

enum BenchCommand {
    PlaceOrder { customer_id: String, total_cents: i64 },
    AddLine { sku: String, qty: i64, price_cents: i64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum BenchEvent {
    OrderPlaced { customer_id: String, total_cents: i64 },
    LineAdded { sku: String, qty: i64, price_cents: i64 },
}

impl DomainEvent for BenchEvent {
    fn event_type(&self) -> String {
        match self {
            BenchEvent::OrderPlaced { .. } => "OrderPlaced".to_owned(),
            BenchEvent::LineAdded { .. } => "LineAdded".to_owned(),
        }
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug)]
struct Refused(&'static str);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Refused {}

impl Aggregate for BenchOrder {
    const TYPE: &'static str = "order";
    type Command = BenchCommand;
    type Event = BenchEvent;
    type Error = Refused;
    type Services = ();

    async fn handle(
        &mut self,
        command: BenchCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Refused> {
        match command {
            BenchCommand::PlaceOrder { customer_id, total_cents } => {
                if self.placed {
                    return Err(Refused("order already exists"));
                }
                sink.write(BenchEvent::OrderPlaced { customer_id, total_cents }, self).await;
            }
            BenchCommand::AddLine { sku, qty, price_cents } => {
                if !self.placed {
                    return Err(Refused("order does not exist"));
                }
                if qty == 0 {
                    return Err(Refused("qty must not be 0"));
                }
                sink.write(BenchEvent::LineAdded { sku, qty, price_cents }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: BenchEvent) {
        if let BenchEvent::OrderPlaced { .. } = event {
            self.placed = true;
        }
    }
}

/// The `order_summary` view of every order, kept by a query that cqrs-es runs after each
/// command's commit.
#[derive(Default, Clone)]
struct Summaries(Arc<Mutex<HashMap<String, OrderSummary>>>);

#[async_trait]
impl Query<BenchOrder> for Summaries {
    async fn dispatch(&self, order_id: &str, events: &[EventEnvelope<BenchOrder>]) {
        let mut summaries = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let summary = summaries.entry(order_id.to_owned()).or_default();
        for event in events {
            match &event.payload {
                BenchEvent::OrderPlaced { customer_id, .. } => {
                    summary.customer_id.clone_from(customer_id);
                }
                BenchEvent::LineAdded { qty, price_cents, .. } => {
                    summary.lines += 1;
                    summary.total_cents += qty * price_cents;
                }
            }
        }
    }
}

fn argument(position: usize, default: u64) -> u64 {
    std::env::args().nth(position).map_or(default, |value| {
        value.parse().unwrap_or_else(|_| panic!("argument {position} must be a number: {value}"))
    })
}

#[tokio::main]
async fn main() {
    let orders = argument(1, 10_000);
    let tasks = argument(2, 64).max(1);
    let summaries = Summaries::default();
    let store = MemStore::<BenchOrder>::default();
    let cqrs = Arc::new(CqrsFramework::new(store, vec![Box::new(summaries.clone())], ()));

    let started = Instant::now();
    let mut clients = Vec::new();
    for task in 0..tasks {
        let cqrs = Arc::clone(&cqrs);
        clients.push(tokio::spawn(async move {
            for n in (task..orders).step_by(tasks as usize) {
                let id = order_id(n);
                let place =
                    BenchCommand::PlaceOrder { customer_id: customer_id(n), total_cents: 0 };
                cqrs.execute(&id, place).await.expect("placing an order");
                for k in 0..LINES_PER_ORDER {
                    let (sku, qty, price_cents) = line(k);
                    let add = BenchCommand::AddLine { sku, qty, price_cents };
                    cqrs.execute(&id, add).await.expect("adding a line");
                }
            }
        }));
    }
    for client in clients {
        client.await.expect("a client task panicked");
    }
    let elapsed = started.elapsed();

    let summaries = summaries.0.lock().unwrap_or_else(PoisonError::into_inner);
    let correct = (0..orders)
        .all(|n| summaries.get(&order_id(n)) == Some(&expected_summary(n, LINES_PER_ORDER)));
    let commands = orders * (1 + LINES_PER_ORDER);
    let rate = commands as f64 / elapsed.as_secs_f64();
    eprintln!(r#"{{"commands": {commands}, "commands_per_s": {rate:.0}, "correct": {correct}}}"#);
}
