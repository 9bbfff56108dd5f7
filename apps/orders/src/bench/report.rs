//! The benchmark's results: a table for people, one JSON object for scripts. Figures are
//! printed only when the correctness check passed.

use serde::Serialize;

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Acknowledged commands per second of load.
    pub commands_per_s: f64,
    /// Median command latency.
    pub p50_ms: f64,
    /// 99th percentile command latency.
    pub p99_ms: f64,
    /// From the last acknowledgement until every view reflects every event.
    pub catchup_ms: f64,
    /// Events per second of an operator's rebuild: from zero into the rebuild slot beside the
    /// live views, then swapped in; the median of three (in-process runs without --keep).
    pub rebuild_events_per_s: Option<f64>,
    /// Events per second of a replay from zero into an empty view store, as a new node or a
    /// deleted `views.sqlite` does it (in-process runs without --keep).
    pub replay_events_per_s: Option<f64>,
    /// Bytes on disk per stored event (persistent in-process stores only).
    pub bytes_per_event: Option<f64>,
    /// Peak resident memory of this process.
    pub peak_rss_bytes: Option<u64>,
    /// Whether every `order_summary` row matched what the commands imply.
    pub correct: bool,
    /// Commands acknowledged.
    pub commands: u64,
    /// Events the run stored.
    pub events: u64,
    /// Events the store held before the run (`--keep` runs on a grown store).
    pub events_before: u64,
    /// The store's group commits, where it reports them.
    pub group_commit: Option<GroupCommit>,
}

/// How the store grouped appends during the run.
#[derive(Debug, Clone, Serialize)]
pub struct GroupCommit {
    /// Transactions committed.
    pub groups: u64,
    /// Appends per group on average.
    pub mean_appends: f64,
    /// The largest group.
    pub largest: u64,
    /// Time per group on average.
    pub mean_ms: f64,
}

/// How the run was set up, printed above the table.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    /// What ran: the store and its durability settings, or the URL driven.
    pub target: String,
    /// Orders in the workload.
    pub orders: u64,
    /// Client tasks.
    pub concurrency: usize,
    /// Whether all tasks wrote to the same 16 orders.
    pub contended: bool,
    /// The machine.
    pub machine: String,
}

/// The outcome of the correctness check.
#[derive(Debug, Clone)]
pub struct Correctness {
    /// Rows checked.
    pub checked: u64,
    /// Rows that did not match, with the first few described.
    pub mismatches: Vec<String>,
    /// How many mismatched in all.
    pub mismatch_count: u64,
}

impl Correctness {
    /// Starts an empty check.
    pub fn new() -> Self {
        Self { checked: 0, mismatches: Vec::new(), mismatch_count: 0 }
    }

    /// Records one row's verdict.
    pub fn check(&mut self, ok: bool, describe: impl FnOnce() -> String) {
        self.checked += 1;
        if !ok {
            self.mismatch_count += 1;
            if self.mismatches.len() < 5 {
                self.mismatches.push(describe());
            }
        }
    }

    /// Whether every row matched.
    pub fn passed(&self) -> bool {
        self.mismatch_count == 0 && self.checked > 0
    }
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn or_na(value: Option<String>) -> String {
    value.unwrap_or_else(|| "n/a".to_owned())
}

/// The human-readable report.
pub fn table(setup: &Setup, figures: &Figures, correctness: &Correctness) -> String {
    let rows = [
        ("commands/s", thousands(figures.commands_per_s)),
        ("p50 command latency", format!("{:.3} ms", figures.p50_ms)),
        ("p99 command latency", format!("{:.3} ms", figures.p99_ms)),
        ("catch-up (last ack to views current)", format!("{:.1} ms", figures.catchup_ms)),
        (
            "rebuild (beside live views, swapped in)",
            or_na(figures.rebuild_events_per_s.map(|v| format!("{} events/s", thousands(v)))),
        ),
        (
            "replay into empty views",
            or_na(figures.replay_events_per_s.map(|v| format!("{} events/s", thousands(v)))),
        ),
        ("bytes per event on disk", or_na(figures.bytes_per_event.map(|v| format!("{v:.0}")))),
        (
            "peak RSS",
            or_na(
                figures.peak_rss_bytes.map(|b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))),
            ),
        ),
    ];
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let value_width = rows.iter().map(|(_, value)| value.len()).max().unwrap_or(0);
    let mut out = format!(
        "W1: {} orders, {} tasks, contended: {}\ntarget: {}\nmachine: {}\n\n",
        thousands(setup.orders as f64),
        setup.concurrency,
        if setup.contended { "yes" } else { "no" },
        setup.target,
        setup.machine
    );
    out.push_str(&format!("| {:width$} | {:>value_width$} |\n", "figure", "value"));
    out.push_str(&format!("|{}|{}|\n", "-".repeat(width + 2), "-".repeat(value_width + 2)));
    for (name, value) in rows {
        out.push_str(&format!("| {name:width$} | {value:>value_width$} |\n"));
    }
    if let Some(group) = &figures.group_commit {
        out.push_str(&format!(
            "\ngroup commit: {} groups, {:.1} appends per group on average (largest {}), {:.2} ms per group\n",
            thousands(group.groups as f64),
            group.mean_appends,
            group.largest,
            group.mean_ms
        ));
    }
    out.push_str(&format!(
        "\ncorrect: all {} order_summary rows match ({} commands, {} events)\n",
        thousands(correctness.checked as f64),
        thousands(figures.commands as f64),
        thousands(figures.events as f64)
    ));
    if figures.events_before > 0 {
        out.push_str(&format!(
            "the store held {} events before this run\n",
            thousands(figures.events_before as f64)
        ));
    }
    out
}

/// Why no figures are printed.
pub fn failure(correctness: &Correctness) -> String {
    let mut out = format!(
        "correct: NO: {} of {} order_summary rows do not match; no figures are reported\n",
        correctness.mismatch_count, correctness.checked
    );
    for mismatch in &correctness.mismatches {
        out.push_str(&format!("  {mismatch}\n"));
    }
    out
}
