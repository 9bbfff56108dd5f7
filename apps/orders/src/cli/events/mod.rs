//! `strata events export` and `strata events import`: the whole event log as JSON lines, for
//! moving a store to another backend (typically the embedded SQLite store to PostgreSQL).
//!
//! One line per event, oldest first: the envelope (position, stream, version, type, schema
//! version), the payload as JSON under `data`, and the metadata. Import appends the events in
//! file order with the file's stream versions and metadata, so event ids, versions and the
//! relative order survive; global positions are assigned afresh by the target. Import reads
//! and checks the whole input, and checks it against the target, before it writes anything.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use strata_postgres::PgEventStore;
use strata_sqlite::SqliteEventStore;

use super::progress::thousands;
use super::store::{StoreArgs, StoreLocation};

/// `event` as the JSON object `strata events export` writes for it (without the line break):
/// the body of the message the NATS publisher sends.
pub fn export_object(event: &strata::RecordedEvent) -> Result<Vec<u8>, String> {
    let line = line::EventLine::from_recorded(event).map_err(|error| error.to_string())?;
    serde_json::to_vec(&line).map_err(|error| error.to_string())
}

/// The event a message body made by [`export_object`] holds, its position included: what a
/// read-only replica appends.
pub fn import_object(body: &[u8]) -> Result<strata::RecordedEvent, String> {
    let line: line::EventLine = serde_json::from_slice(body).map_err(|error| error.to_string())?;
    line.into_recorded().map_err(|error| error.to_string())
}

/// Progress is reported on stderr every this many events.
const PROGRESS_EVERY: u64 = 10_000;

/// Moves the event log in and out of a store as JSON lines.
#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    command: EventsCommand,
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Writes the whole event log as JSON lines, oldest first, to FILE or stdout.
    Export(ExportArgs),
    /// Appends the events of a JSON-lines file (or stdin) to a store, keeping stream
    /// versions, event ids, metadata and order; refuses, writing nothing, when the
    /// file's streams conflict with what the store holds.
    Import(ImportArgs),
}

/// Flags of `strata events export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Where to write the lines; stdout when left out or `-`.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// Flags of `strata events import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The JSON-lines file to read; stdin when left out or `-`.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
}

/// Runs `strata events …`.
mod export;
mod import;
mod line;

pub async fn run(args: EventsArgs) -> anyhow::Result<()> {
    match args.command {
        EventsCommand::Export(args) => export::export(args).await,
        EventsCommand::Import(args) => import::import(args).await,
    }
}

/// Reads and checks an import file as `strata events import` does before it writes
/// anything; how many events it holds. The fuzz target `import_file` feeds it any bytes.
pub fn check_import(input: &[u8]) -> anyhow::Result<u64> {
    Ok(import::parse(input)?.events)
}

/// Says what to do with a store location the commands cannot use.
pub(super) fn memory_refused(what: &str) -> anyhow::Error {
    anyhow!(
        "the memory store keeps nothing between runs, so there is nothing to {what}; \
         give --store sqlite:DIR or --store postgres://…"
    )
}

/// A store for messages. A PostgreSQL URL may carry a password, so it is not printed.
pub(super) fn describe(location: &StoreLocation) -> String {
    match location {
        StoreLocation::Sqlite(dir) => format!("the SQLite store in {}", dir.display()),
        StoreLocation::Postgres(_) => "the PostgreSQL store".to_owned(),
        StoreLocation::Memory => "the memory store".to_owned(),
    }
}

pub(super) fn open_sqlite(dir: &Path) -> anyhow::Result<SqliteEventStore> {
    SqliteEventStore::open(dir)
        .with_context(|| format!("cannot open the SQLite event store in {}", dir.display()))
}

pub(super) async fn connect_postgres(url: &str) -> anyhow::Result<PgEventStore> {
    PgEventStore::connect(url, None).await.context("cannot open the PostgreSQL event store")
}

/// Counts events and says so on stderr every [`PROGRESS_EVERY`] and at the end.
pub(super) struct Progress {
    verb: &'static str,
    total: u64,
    done: u64,
}

impl Progress {
    pub(super) fn new(verb: &'static str, total: u64) -> Self {
        Self { verb, total, done: 0 }
    }

    pub(super) fn add(&mut self, n: u64) {
        let before = self.done / PROGRESS_EVERY;
        self.done += n;
        if self.done / PROGRESS_EVERY > before {
            self.report();
        }
    }

    pub(super) fn report(&self) {
        eprintln!("{} {} of {} events", self.verb, thousands(self.done), thousands(self.total));
    }
}

/// `1` as `1 event`, `1234567` as `1,234,567 events`.
pub(super) fn event_count(n: u64) -> String {
    format!("{} event{}", thousands(n), if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(123_456_789), "123,456,789");
        assert_eq!(
            (event_count(1), event_count(0), event_count(12_345)),
            ("1 event".into(), "0 events".into(), "12,345 events".into())
        );
    }
}
