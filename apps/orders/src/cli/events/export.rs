//! `strata events export`: the whole log, oldest first, as JSON lines to a file or stdout.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use strata::{EventStore, Position};

use super::line::EventLine;
use super::{
    ExportArgs, Progress, connect_postgres, describe, event_count, memory_refused, open_sqlite,
};
use crate::cli::store::StoreLocation;

/// Events read from the source per query: large enough to amortise the round trip, small
/// enough to keep memory flat on any log.
const EXPORT_BATCH: usize = 1000;

/// Where export lines go. A file is written under a temporary name and renamed when the
/// export is complete, so that a failed export never leaves a file that looks whole. The
/// file keeps the temporary file's owner-only permissions, which suit a copy of every
/// customer's data.
enum Sink {
    Stdout(BufWriter<std::io::StdoutLock<'static>>),
    File { writer: BufWriter<tempfile::NamedTempFile>, path: PathBuf },
}

impl Sink {
    fn open(out: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = out.filter(|p| *p != Path::new("-")) else {
            return Ok(Sink::Stdout(BufWriter::new(std::io::stdout().lock())));
        };
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let file = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        Ok(Sink::File { writer: BufWriter::new(file), path: path.to_owned() })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(writer) => writer,
            Sink::File { writer, .. } => writer,
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::Stdout(mut writer) => writer.flush().context("cannot write to stdout"),
            Sink::File { writer, path } => {
                let file = writer
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .with_context(|| format!("cannot write {}", path.display()))?;
                file.as_file()
                    .sync_all()
                    .with_context(|| format!("cannot write {}", path.display()))?;
                file.persist(&path).with_context(|| format!("cannot write {}", path.display()))?;
                Ok(())
            }
        }
    }
}

pub(super) async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let location = args.store.location()?;
    if location == StoreLocation::Memory {
        return Err(memory_refused("export"));
    }
    let mut sink = Sink::open(args.out.as_deref())?;
    let count = match &location {
        StoreLocation::Sqlite(dir) => {
            // Opening would create an empty store, and exporting that would look like
            // success; a missing store is almost always a wrong path.
            let file = dir.join("events.sqlite");
            if !file.exists() {
                bail!("there is no event store in {} (no {})", dir.display(), file.display());
            }
            export_from(&open_sqlite(dir)?, sink.writer()).await?
        }
        StoreLocation::Postgres(url) => {
            export_from(&connect_postgres(url).await?, sink.writer()).await?
        }
        StoreLocation::Memory => return Err(memory_refused("export")),
    };
    sink.finish()?;
    eprintln!("exported {} from {}", event_count(count), describe(&location));
    Ok(())
}

/// Writes every event up to the head as the export began, oldest first; returns the count.
/// Events committed while the export runs are not included, so the file is the log as of
/// one moment.
async fn export_from<S: EventStore>(store: &S, out: &mut dyn Write) -> anyhow::Result<u64> {
    let end = store.head();
    // Positions are dense from 1 in every store, so the head is also the number of events.
    let mut progress = Progress::new("exported", end.0);
    let mut after = Position::START;
    while after < end {
        let batch = store
            .read_all(after, EXPORT_BATCH)
            .await
            .with_context(|| format!("cannot read the log after position {after}"))?;
        let Some(last) = batch.last() else {
            bail!("the store's head is at position {end}, but nothing can be read after {after}");
        };
        after = last.position;
        let mut written = 0;
        for event in batch.iter().take_while(|event| event.position <= end) {
            let line = EventLine::from_recorded(event)?;
            serde_json::to_writer(&mut *out, &line).context("cannot write the export")?;
            out.write_all(b"\n").context("cannot write the export")?;
            written += 1;
        }
        progress.add(written);
    }
    // These writes are synchronous: the export is the only work this process does, so
    // blocking a runtime thread on them holds nothing else up.
    out.flush().context("cannot write the export")?;
    Ok(progress.done)
}
