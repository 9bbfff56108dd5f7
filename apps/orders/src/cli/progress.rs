//! A progress line on standard error for long work: done of total, the rate, and the time
//! left at that rate. Redrawn in place on a terminal; one line every few seconds otherwise,
//! so that logs stay readable.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// How far a piece of work has got; shared with the code doing it.
#[derive(Debug, Default)]
pub struct Counter {
    done: AtomicU64,
    total: AtomicU64,
}

impl Counter {
    /// Records that `done` of `total` are done.
    pub fn set(&self, done: u64, total: u64) {
        self.done.store(done, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }
}

/// A progress line that redraws itself until finished.
pub struct ProgressLine {
    task: JoinHandle<()>,
    counter: Arc<Counter>,
    label: String,
    started: Instant,
}

impl ProgressLine {
    /// Starts reporting `counter` as `label`, in `unit`s.
    pub fn start(label: impl Into<String>, unit: &'static str, counter: Arc<Counter>) -> Self {
        let label = label.into();
        let terminal = std::io::stderr().is_terminal();
        let every = if terminal { Duration::from_millis(250) } else { Duration::from_secs(5) };
        let started = Instant::now();
        let task = {
            let (counter, label) = (counter.clone(), label.clone());
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(every);
                ticker.tick().await;
                loop {
                    ticker.tick().await;
                    let line = describe(&label, unit, &counter, started.elapsed());
                    if terminal {
                        eprint!("\r{line}   ");
                    } else {
                        eprintln!("{line}");
                    }
                    let _ = std::io::stderr().flush();
                }
            })
        };
        Self { task, counter, label, started }
    }

    /// Stops redrawing and prints the final line.
    pub fn finish(self, unit: &'static str) {
        self.task.abort();
        let line = describe(&self.label, unit, &self.counter, self.started.elapsed());
        if std::io::stderr().is_terminal() {
            eprintln!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    }
}

fn describe(label: &str, unit: &str, counter: &Counter, elapsed: Duration) -> String {
    let done = counter.done.load(Ordering::Relaxed);
    let total = counter.total.load(Ordering::Relaxed).max(done);
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    let percent = if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 };
    let eta =
        if rate > 0.0 { format!("{:.1} s", (total - done) as f64 / rate) } else { "?".to_owned() };
    format!(
        "{label}: {} / {} {unit} ({percent:.0}%), {} {unit}/s, ETA {eta}",
        thousands(done),
        thousands(total),
        thousands(rate as u64)
    )
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_done_total_rate_and_time_left() {
        let counter = Counter::default();
        counter.set(250_000, 1_000_000);
        let line = describe("rebuilding orders", "events", &counter, Duration::from_secs(1));
        assert_eq!(
            line,
            "rebuilding orders: 250,000 / 1,000,000 events (25%), 250,000 events/s, ETA 3.0 s"
        );
    }
}
