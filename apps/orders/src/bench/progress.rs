//! Progress on standard error while a long run goes: done, total and the current rate,
//! once a second.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// A progress line that updates itself until finished.
pub struct Progress {
    task: JoinHandle<()>,
}

impl Progress {
    /// Reports `done` out of `total` `what` every second.
    pub fn start(what: &'static str, total: u64, done: Arc<AtomicU64>) -> Self {
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let now = done.load(Ordering::Relaxed);
                let rate = now as f64 / started.elapsed().as_secs_f64();
                let percent = if total == 0 { 100.0 } else { now as f64 * 100.0 / total as f64 };
                eprint!("\rbench: {now} / {total} {what} ({percent:.0}%), {rate:.0}/s   ");
                let _ = std::io::stderr().flush();
            }
        });
        Self { task }
    }

    /// Stops reporting and ends the line.
    pub fn finish(self) {
        self.task.abort();
        eprintln!();
    }
}
