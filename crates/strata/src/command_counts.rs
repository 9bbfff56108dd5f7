//! How many commands the bus handled, by aggregate type, command and outcome, for metrics.

use std::collections::HashMap;
use std::sync::Mutex;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CommandResult {
    /// It was decided and its events (if any) appended.
    Ok,
    /// The aggregate refused it.
    Rejected,
    /// A version race or a stale `If-Match`.
    Conflict,
    /// The store, decoding or encoding failed.
    Error,
}

impl CommandResult {
    /// The label value: `ok`, `rejected`, `conflict` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandResult::Ok => "ok",
            CommandResult::Rejected => "rejected",
            CommandResult::Conflict => "conflict",
            CommandResult::Error => "error",
        }
    }
}

/// Counts of handled commands. One lock per command: far below the cost of deciding one.
#[derive(Debug, Default)]
pub struct CommandCounts {
    counts: Mutex<HashMap<(&'static str, &'static str, CommandResult), u64>>,
}

impl CommandCounts {
    pub(crate) fn count(
        &self,
        aggregate: &'static str,
        command: &'static str,
        result: CommandResult,
    ) {
        let mut counts = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *counts.entry((aggregate, command, result)).or_default() += 1;
    }

    /// Every (aggregate type, command, outcome) seen, with its count, sorted.
    pub fn snapshot(&self) -> Vec<((&'static str, &'static str, CommandResult), u64)> {
        let counts = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut all: Vec<_> = counts.iter().map(|(key, count)| (*key, *count)).collect();
        all.sort_unstable();
        all
    }
}
