//! The load a fault lands on: client tasks placing orders and adding lines, every request
//! with its own `Idempotency-Key` and correlation id, retried with the same key after any
//! 5xx, lost connection or timeout, as a careful client would. The ledger keeps each
//! request's final answer, to be held against the log afterwards.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::client::Client;

/// Lines added to each order after it is placed.
pub const LINES_PER_ORDER: usize = 4;
/// The customer and product every chaos order uses.
pub const CUSTOMER: &str = "chaos-customer";
/// See [`CUSTOMER`].
pub const SKU: &str = "chaos-tea";

/// What a request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `POST /orders`.
    Place,
    /// `POST /orders/{id}/lines`.
    Line,
}

/// The last thing the client heard for one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 2xx, at this position.
    Acknowledged(u64),
    /// A 4xx: the service says it did nothing and never will for this request.
    Refused(u16, String),
    /// No final answer before the client gave up.
    Unresolved(String),
}

/// One request and its final answer.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The correlation id every event of the request carries.
    pub correlation: String,
    /// The order it was about.
    pub order: String,
    /// What it asked.
    pub kind: Kind,
    /// What the service finally said.
    pub answer: Answer,
}

/// Running clients; [`Load::finish`] stops them and returns the ledger.
pub struct Load {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU64>,
    slowest_ms: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
    ledger: Arc<Mutex<Vec<Entry>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// What the clients saw, besides the ledger.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen {
    /// The longest any one attempt waited for an answer.
    pub slowest: Duration,
    /// Attempts that failed (5xx, lost connection, timeout) and were sent again.
    pub retries: u64,
}

struct Worker {
    client: Client,
    base: String,
    stop: Arc<AtomicBool>,
    /// How long a request goes on retrying after the load was told to stop.
    patience: Duration,
    acknowledged: Arc<AtomicU64>,
    slowest_ms: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
    ledger: Arc<Mutex<Vec<Entry>>>,
}

impl Load {
    /// Starts `workers` client tasks against `base`; order ids start with `chaos-{run}-`.
    pub fn start(client: &Client, base: &str, run: &str, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let slowest_ms = Arc::new(AtomicU64::new(0));
        let retries = Arc::new(AtomicU64::new(0));
        let ledger = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..workers)
            .map(|w| {
                let worker = Worker {
                    client: client.clone(),
                    base: base.to_owned(),
                    stop: stop.clone(),
                    patience: Duration::from_secs(30),
                    acknowledged: acknowledged.clone(),
                    slowest_ms: slowest_ms.clone(),
                    retries: retries.clone(),
                    ledger: ledger.clone(),
                };
                let prefix = format!("chaos-{run}-{w}");
                tokio::spawn(async move { worker.run(&prefix).await })
            })
            .collect();
        Load { stop, acknowledged, slowest_ms, retries, ledger, tasks }
    }

    /// Requests acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Relaxed)
    }

    /// Waits until `more` further requests are acknowledged, or `limit` passes; whether
    /// they were. Shows that the service took load again after a fault.
    pub async fn until_acknowledged(&self, more: u64, limit: Duration) -> bool {
        let target = self.acknowledged() + more;
        let started = Instant::now();
        while self.acknowledged() < target {
            if started.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Stops the clients (each request in flight still retries for a while) and returns
    /// every request's final answer and what the clients saw.
    pub async fn finish(mut self) -> anyhow::Result<(Vec<Entry>, Seen)> {
        self.stop.store(true, Ordering::SeqCst);
        for task in std::mem::take(&mut self.tasks) {
            // A client task that panicked took its ledger entries with it: nothing of the
            // run can be judged then.
            task.await.map_err(|error| anyhow::anyhow!("a client task failed: {error}"))?;
        }
        let entries = std::mem::take(&mut *self.ledger.lock().unwrap_or_else(|e| e.into_inner()));
        let seen = Seen {
            slowest: Duration::from_millis(self.slowest_ms.load(Ordering::Relaxed)),
            retries: self.retries.load(Ordering::Relaxed),
        };
        Ok((entries, seen))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // A run that ended early (an error) leaves no clients behind it.
        self.stop.store(true, Ordering::SeqCst);
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Worker {
    async fn run(self, prefix: &str) {
        let mut n = 0;
        while !self.stop.load(Ordering::SeqCst) {
            let order = format!("{prefix}-{n}");
            n += 1;
            let body = json!({"order_id": order, "customer_id": CUSTOMER, "lines": []});
            if !self.request(&order, Kind::Place, "/orders", &body).await {
                continue;
            }
            for _ in 0..LINES_PER_ORDER {
                if self.stop.load(Ordering::SeqCst) {
                    return;
                }
                let body = json!({"sku": SKU, "qty": 1});
                if !self.request(&order, Kind::Line, &format!("/orders/{order}/lines"), &body).await
                {
                    break;
                }
            }
        }
    }

    /// Sends one request until it has a final answer; whether it was acknowledged.
    async fn request(&self, order: &str, kind: Kind, path: &str, body: &Value) -> bool {
        let key = uuid::Uuid::new_v4().simple().to_string();
        let correlation = format!("chaos-{key}");
        let url = format!("{}{path}", self.base);
        let headers =
            [("idempotency-key", key.as_str()), ("x-correlation-id", correlation.as_str())];
        let mut stopped: Option<Instant> = None;
        let answer = loop {
            let sent = Instant::now();
            let result = self.client.send("POST", &url, &headers, Some(body)).await;
            let waited = u64::try_from(sent.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.slowest_ms.fetch_max(waited, Ordering::Relaxed);
            let failure = match result {
                Ok((status, answer)) if status < 300 => match answer["position"].as_u64() {
                    Some(position) => break Answer::Acknowledged(position),
                    None => {
                        break Answer::Refused(status, format!("2xx without a position: {answer}"));
                    }
                },
                // The key's first attempt may still run on the server (this client gave up
                // on it); its answer comes to a later attempt.
                Ok((409, answer))
                    if answer["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("still being processed")) =>
                {
                    format!("409 {answer}")
                }
                Ok((status, answer)) if status < 500 => {
                    break Answer::Refused(
                        status,
                        answer["detail"].as_str().unwrap_or("").to_owned(),
                    );
                }
                Ok((status, answer)) => format!("{status} {answer}"),
                Err(error) => format!("{error:#}"),
            };
            if self.stop.load(Ordering::SeqCst)
                && stopped.get_or_insert_with(Instant::now).elapsed() > self.patience
            {
                break Answer::Unresolved(failure);
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50 + fastrand::u64(0..50))).await;
        };
        let acknowledged = matches!(answer, Answer::Acknowledged(_));
        if acknowledged {
            self.acknowledged.fetch_add(1, Ordering::Relaxed);
        }
        let entry = Entry { correlation, order: order.to_owned(), kind, answer };
        self.ledger.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
        acknowledged
    }
}
