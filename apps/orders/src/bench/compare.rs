//! `strata bench --compare OTHER_JSON`: this run beside an earlier one (its `--json`
//! output), figure by figure with the ratio, so a change is judged against a baseline taken
//! on the same machine at the same time rather than against a number from another day.

use std::path::Path;

use serde_json::{Value, json};

use super::BenchUsageError;
use super::report::Figures;

/// The figures compared, their labels, and whether more is better.
const COMPARED: [(&str, &str, bool); 8] = [
    ("commands_per_s", "commands/s", true),
    ("p50_ms", "p50 command latency (ms)", false),
    ("p99_ms", "p99 command latency (ms)", false),
    ("catchup_ms", "catch-up (ms)", false),
    ("rebuild_events_per_s", "rebuild (events/s)", true),
    ("replay_events_per_s", "replay into empty views (events/s)", true),
    ("bytes_per_event", "bytes per event on disk", false),
    ("peak_rss_bytes", "peak RSS (bytes)", false),
];

/// One figure of both runs.
struct Row {
    key: &'static str,
    label: &'static str,
    before: Option<f64>,
    after: Option<f64>,
    /// This run ÷ the baseline.
    ratio: Option<f64>,
    more_is_better: bool,
}

/// An earlier run's figures.
pub struct Baseline {
    path: String,
    figures: Value,
}

impl Baseline {
    /// Reads `path`, which must hold what `strata bench --json` printed for a W1 run.
    pub fn read(path: &Path) -> Result<Self, BenchUsageError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| {
            BenchUsageError::Invalid(format!("cannot read --compare {shown}: {error}"))
        })?;
        let figures: Value = serde_json::from_str(text.trim()).map_err(|error| {
            BenchUsageError::Invalid(format!("--compare {shown} is not JSON: {error}"))
        })?;
        if !figures["commands_per_s"].is_number() {
            return Err(BenchUsageError::Invalid(format!(
                "--compare {shown} is not the output of strata bench --json for a W1 run \
                 (it has no commands_per_s)"
            )));
        }
        Ok(Baseline { path: shown, figures })
    }

    /// Each compared figure beside its baseline.
    fn rows(&self, figures: &Figures) -> Vec<Row> {
        let now = serde_json::to_value(figures).unwrap_or(Value::Null);
        COMPARED
            .iter()
            .map(|(key, label, more_is_better)| {
                let (before, after) = (self.figures[key].as_f64(), now[key].as_f64());
                let ratio = match (before, after) {
                    (Some(before), Some(after)) if before > 0.0 => Some(after / before),
                    _ => None,
                };
                Row { key, label, before, after, ratio, more_is_better: *more_is_better }
            })
            .collect()
    }

    /// The comparison as a table.
    pub fn table(&self, figures: &Figures) -> String {
        let setup = &self.figures["setup"];
        let mut out = format!(
            "\ncompared with {} ({}, {} orders, {} tasks)\n\n",
            self.path,
            setup["target"].as_str().unwrap_or("target unknown"),
            setup["orders"],
            setup["concurrency"]
        );
        out.push_str(
            "| figure | baseline | this run | this ÷ baseline |\n| --- | ---: | ---: | ---: |\n",
        );
        // Whole numbers for large figures, three decimals for milliseconds.
        let shown = |value: Option<f64>| {
            value.map_or("n/a".to_owned(), |v| {
                if v.abs() >= 100.0 { format!("{v:.0}") } else { format!("{v:.3}") }
            })
        };
        for Row { label, before, after, ratio, more_is_better, .. } in self.rows(figures) {
            let ratio = ratio.map_or("n/a".to_owned(), |r| {
                let better = if more_is_better { r > 1.0 } else { r < 1.0 };
                let verdict = if (r - 1.0).abs() < 0.02 {
                    ""
                } else if better {
                    " (better)"
                } else {
                    " (worse)"
                };
                format!("{r:.2}×{verdict}")
            });
            out.push_str(&format!(
                "| {label} | {} | {} | {ratio} |\n",
                shown(before),
                shown(after)
            ));
        }
        out
    }

    /// The comparison as JSON: per figure its baseline, this run and the ratio.
    pub fn json(&self, figures: &Figures) -> Value {
        let rows: serde_json::Map<String, Value> = self
            .rows(figures)
            .into_iter()
            .map(|row| {
                let compared =
                    json!({"baseline": row.before, "this": row.after, "ratio": row.ratio});
                (row.key.to_owned(), compared)
            })
            .collect();
        json!({"baseline": self.path, "figures": rows})
    }
}
