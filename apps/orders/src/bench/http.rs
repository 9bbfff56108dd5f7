//! Runs W1 over HTTP against a running `strata serve`, with one connection per client task.
//! W1 maps onto the service's own routes: `PlaceOrder` is `POST /orders` with no lines,
//! `AddLine` is `POST /orders/{id}/lines`, whose price comes from a product created with
//! W1's price. Correctness reads every `GET /orders/{id}` back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::histogram::Histogram;
use super::plan::{Plan, Step};
use super::progress::Progress;
use super::report::{Correctness, Figures};
use super::workload::{LINES_PER_ORDER, customer_id, line};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Target {
    client: HttpClient,
    base: String,
    /// Makes this run's order ids unique, so runs against one service do not collide.
    run: String,
}

impl Target {
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request =
            hyper::Request::builder().method(method).uri(format!("{}{path}", self.base));
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let response = self
            .client
            .request(request.body(Full::new(bytes))?)
            .await
            .with_context(|| format!("{method} {}{path} failed", self.base))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    fn order(&self, n: u64) -> String {
        format!("w1-{}-{n}", self.run)
    }

    /// Sends one step; retries on 409 only for version races, which a busy service may
    /// report after its own retries.
    async fn step(&self, step: Step) -> anyhow::Result<u64> {
        let (path, body) = match step {
            Step::Place(n) => (
                "/orders".to_owned(),
                json!({"order_id": self.order(n), "customer_id": format!("w1-{}", customer_id(n)), "lines": []}),
            ),
            Step::Line(n, k) => {
                let (sku, qty, _) = line(k);
                (
                    format!("/orders/{}/lines", self.order(n)),
                    json!({"sku": format!("w1-{sku}"), "qty": qty}),
                )
            }
        };
        loop {
            let (status, answer) = self.send("POST", &path, Some(body.clone())).await?;
            match status {
                200 | 201 => {
                    return answer["position"].as_u64().context("answer without a position");
                }
                409 if answer["detail"].as_str().is_some_and(|d| d.contains("version")) => continue,
                _ => bail!("{step:?}: {status} {answer}"),
            }
        }
    }
}

/// Creates the customers and products W1 refers to; ones that exist already are fine.
async fn prepare(target: &Target, plan: &Plan) -> anyhow::Result<()> {
    let customers: std::collections::BTreeSet<String> = plan.orders().map(customer_id).collect();
    for customer in customers {
        let body = json!({"customer_id": format!("w1-{customer}"), "name": customer, "email": "w1@example.com"});
        let (status, answer) = target.send("POST", "/customers", Some(body)).await?;
        if status != 201 && status != 409 {
            bail!("cannot create customer {customer}: {status} {answer}");
        }
    }
    for k in 0..LINES_PER_ORDER {
        let (sku, _, price_cents) = line(k);
        let body = json!({"sku": format!("w1-{sku}"), "name": sku, "price_cents": price_cents});
        let (status, answer) = target.send("POST", "/products", Some(body)).await?;
        if status != 201 && status != 409 {
            bail!("cannot create product {sku}: {status} {answer}");
        }
    }
    Ok(())
}

/// Drives `base` (e.g. `http://127.0.0.1:8080`) with the plan.
pub async fn run(plan: Plan, base: &str) -> anyhow::Result<(Figures, Correctness)> {
    let client =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(plan.tasks).build_http();
    let run = uuid::Uuid::now_v7().simple().to_string()[..12].to_owned();
    let target = Arc::new(Target { client, base: base.trim_end_matches('/').to_owned(), run });
    let (status, _) = target.send("GET", "/health", None).await?;
    if status != 200 {
        bail!("{base}/health answered {status}; is strata serve running there?");
    }
    eprintln!("bench: preparing customers and products on {base}");
    prepare(&target, &plan).await?;

    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("commands", plan.total_commands(), done.clone());
    let started = Instant::now();
    let mut latencies = Histogram::default();
    let mut last_position = 0;
    for step in plan.setup() {
        let sent = Instant::now();
        last_position = last_position.max(target.step(step).await?);
        latencies.record(sent.elapsed());
    }
    let mut tasks = Vec::new();
    for task in 0..plan.tasks {
        let (target, done) = (target.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Histogram::default();
            let mut last = 0;
            for step in plan.task(task) {
                let sent = Instant::now();
                last = last.max(target.step(step).await?);
                latencies.record(sent.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((latencies, last))
        }));
    }
    for task in tasks {
        let (task_latencies, last) = task.await.context("a client task panicked")??;
        latencies.merge(&task_latencies);
        last_position = last_position.max(last);
    }
    let load = started.elapsed();
    progress.finish();

    // Catch-up: every view of the service reflects the last acknowledged position.
    let caught_up = Instant::now();
    let wait = format!("min_position={last_position}&wait_ms=30000");
    let probes = [
        format!("/orders/{}?{wait}", target.order(0)),
        format!("/customers/w1-{}/orders?{wait}", customer_id(0)),
        format!("/customers/w1-{}?{wait}", customer_id(0)),
        format!("/products/w1-{}?{wait}", line(0).0),
    ];
    for probe in &probes {
        let (status, answer) = target.send("GET", probe, None).await?;
        if status != 200 {
            bail!("views did not catch up: GET {probe} answered {status} {answer}");
        }
    }
    let catchup = caught_up.elapsed();

    let mut correctness = Correctness::new();
    for n in plan.orders() {
        let (lines, total_cents) = plan.expected(n);
        let (status, order) =
            target.send("GET", &format!("/orders/{}", target.order(n)), None).await?;
        let got_lines = order["lines"].as_array().map_or(0, Vec::len) as u64;
        let ok = status == 200
            && got_lines == lines
            && order["total_cents"].as_i64() == Some(total_cents)
            && order["customer_id"].as_str() == Some(&format!("w1-{}", customer_id(n)));
        correctness.check(ok, || {
            format!(
                "order {}: expected {lines} lines totalling {total_cents}, found {status} {order}",
                target.order(n)
            )
        });
    }
    let commands = latencies.count();
    let figures = Figures {
        commands_per_s: commands as f64 / load.as_secs_f64(),
        p50_ms: latencies.quantile(0.50).as_secs_f64() * 1000.0,
        p99_ms: latencies.quantile(0.99).as_secs_f64() * 1000.0,
        catchup_ms: catchup.as_secs_f64() * 1000.0,
        rebuild_events_per_s: None,
        replay_events_per_s: None,
        bytes_per_event: None,
        // The server's memory is not ours to read; this process only generates load.
        peak_rss_bytes: None,
        correct: correctness.passed(),
        commands,
        events: commands,
        events_before: 0,
        group_commit: None,
    };
    Ok((figures, correctness))
}
