//! `strata events import`: reads and checks a whole JSON-lines file, and checks it against
//! the target, before writing anything; then appends it in file order.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use strata::{EventStore, ExpectedVersion, NewEvent, Position, StoreError, StreamId, Version};
use uuid::Uuid;

use super::line::EventLine;
use super::{
    ImportArgs, Progress, connect_postgres, describe, event_count, memory_refused, open_sqlite,
};
use crate::cli::progress::thousands;
use crate::cli::store::StoreLocation;
use crate::domain::SCHEMAS;

/// Most events appended in one call. Consecutive events of one stream go together, but a
/// very long run is split so that no single append (and its memory) grows with the log.
const IMPORT_BATCH: usize = 1000;

/// How many stream conflicts an import lists before summarising the rest.
const CONFLICTS_SHOWN: usize = 10;

/// Consecutive events of one stream, appended in one call.
struct Group {
    stream: StreamId,
    /// The version of the group's first event.
    first_version: u64,
    /// The input line of each event, for messages.
    lines: Vec<usize>,
    events: Vec<NewEvent>,
}

impl Group {
    fn expected(&self) -> ExpectedVersion {
        ExpectedVersion::of(Version(self.first_version - 1))
    }
}

/// Where one stream starts in the input.
struct StreamStart {
    first_version: u64,
    first_line: usize,
}

/// The whole input, parsed and checked on its own.
pub(super) struct Input {
    groups: Vec<Group>,
    /// Every stream, in order of first appearance, with where it starts.
    streams: Vec<(StreamId, StreamStart)>,
    pub(super) events: u64,
}

/// Reads and checks every line: JSON of the right shape; positions increasing; each
/// stream's versions contiguous; event ids unique. Errors name the line.
pub(super) fn parse(reader: impl BufRead) -> anyhow::Result<Input> {
    struct Seen {
        last_version: u64,
        last_line: usize,
    }
    let mut streams: Vec<(StreamId, StreamStart)> = Vec::new();
    let mut seen: HashMap<StreamId, Seen> = HashMap::new();
    let mut ids: HashMap<Uuid, usize> = HashMap::new();
    let mut groups: Vec<Group> = Vec::new();
    let mut last_position: Option<(u64, usize)> = None;
    let mut events = 0u64;

    for (index, line) in reader.lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("line {number}: cannot read the input"))?;
        if line.trim().is_empty() {
            continue;
        }
        let event: EventLine = serde_json::from_str(&line).map_err(|error| {
            // serde_json counts lines within the one it was given, which is always 1 here;
            // only the column is worth keeping beside the input's line number.
            let reason = error.to_string();
            let suffix = format!(" at line {} column {}", error.line(), error.column());
            let reason = reason.strip_suffix(&suffix).unwrap_or(&reason);
            anyhow!("line {number}, column {}: not an exported event: {reason}", error.column())
        })?;

        if let Some((previous, previous_line)) = last_position
            && event.position <= previous
        {
            bail!(
                "line {number}: position {} does not follow position {previous} of line \
                 {previous_line}; positions must increase",
                event.position
            );
        }
        last_position = Some((event.position, number));
        if event.aggregate_type.is_empty() || event.aggregate_id.is_empty() {
            bail!("line {number}: aggregate_type and aggregate_id must not be empty");
        }
        if event.version == 0 {
            bail!("line {number}: versions start at 1");
        }
        // An event this code could never read would stop every projection at it.
        if let Err(unreadable) = SCHEMAS.check(&event.event_type, event.schema_version) {
            bail!("line {number}: {unreadable}");
        }
        // Stores keep times as nanoseconds since 1970 in 64 bits; refusing here, before
        // anything is written, beats a store refusing it halfway through the import.
        if event.metadata.recorded_at.timestamp_nanos_opt().is_none() {
            bail!("line {number}: recorded_at must lie between the years 1677 and 2262");
        }
        match ids.entry(event.metadata.event_id) {
            Entry::Occupied(first) => bail!(
                "line {number}: event id {} is already used on line {}",
                event.metadata.event_id,
                first.get()
            ),
            Entry::Vacant(slot) => {
                slot.insert(number);
            }
        }

        let stream = event.stream();
        match seen.get_mut(&stream) {
            Some(state) => {
                if event.version != state.last_version + 1 {
                    bail!(
                        "line {number}: stream {stream} goes from version {} (line {}) to {}; \
                         versions of a stream must follow each other",
                        state.last_version,
                        state.last_line,
                        event.version
                    );
                }
                state.last_version = event.version;
                state.last_line = number;
            }
            None => {
                seen.insert(
                    stream.clone(),
                    Seen { last_version: event.version, last_line: number },
                );
                streams.push((
                    stream.clone(),
                    StreamStart { first_version: event.version, first_line: number },
                ));
            }
        }

        let version = event.version;
        let joins_last = groups
            .last()
            .is_some_and(|group| group.stream == stream && group.events.len() < IMPORT_BATCH);
        let event = event
            .into_new_event()
            .with_context(|| format!("line {number}: the data does not encode as binary"))?;
        match groups.last_mut() {
            Some(group) if joins_last => {
                group.lines.push(number);
                group.events.push(event);
            }
            _ => groups.push(Group {
                stream,
                first_version: version,
                lines: vec![number],
                events: vec![event],
            }),
        }
        events += 1;
    }
    Ok(Input { groups, streams, events })
}

fn read_input(file: Option<&Path>) -> anyhow::Result<Input> {
    // Reading is synchronous and finishes before any store is opened: nothing else runs yet.
    match file.filter(|p| *p != Path::new("-")) {
        Some(path) => {
            let file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            parse(BufReader::new(file)).with_context(|| format!("in {}", path.display()))
        }
        None => parse(std::io::stdin().lock()).context("in stdin"),
    }
}

pub(super) async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let location = args.store.location()?;
    if location == StoreLocation::Memory {
        return Err(memory_refused("import into"));
    }
    // The input is checked in full before the target is opened: opening creates a SQLite
    // store or the PostgreSQL tables, and bad input must change nothing. (A PostgreSQL
    // target is still migrated before its streams are checked: empty tables in the schema
    // the user named hold no events and are what `strata serve` would create anyway.)
    let input = read_input(args.file.as_deref())?;
    if input.events == 0 {
        eprintln!("the input holds no events; nothing was written");
        return Ok(());
    }
    let target = describe(&location);
    match &location {
        StoreLocation::Sqlite(dir) => {
            // Opening creates the store; a refused import must not leave one behind.
            if !dir.join("events.sqlite").exists() {
                check_against_nothing(&input.streams, &target)?;
            }
            import_into(&open_sqlite(dir)?, input, &target).await
        }
        StoreLocation::Postgres(url) => {
            import_into(&connect_postgres(url).await?, input, &target).await
        }
        StoreLocation::Memory => Err(memory_refused("import into")),
    }
}

async fn import_into<S: EventStore>(store: &S, input: Input, target: &str) -> anyhow::Result<()> {
    check_streams(store, &input.streams, target).await?;

    // Event ids already in the target are not checked here: the `EventStore` trait has no
    // lookup by id, and finding them would mean reading the target's whole log. The store
    // refuses them on append (`DuplicateEventId`), which stops the import with a clear
    // message, but after the groups before it were written.
    let mut progress = Progress::new("imported", input.events);
    let mut first_position = None;
    let mut last_position = Position::START;
    for group in input.groups {
        let count = group.events.len() as u64;
        let expected = group.expected();
        let line = group.lines.first().copied().unwrap_or_default();
        let outcome = match store.append(&group.stream, expected, group.events).await {
            Ok(outcome) => outcome,
            Err(error) => {
                let written = progress.done;
                let partial = if written == 0 {
                    "nothing was written".to_owned()
                } else {
                    format!(
                        "the {} before line {line} were imported and stay in {target}",
                        event_count(written)
                    )
                };
                return Err(match error {
                    StoreError::DuplicateEventId(id) => anyhow!(
                        "{target} already holds event id {id} (from the events of stream {} at \
                         line {line}); {partial}",
                        group.stream
                    ),
                    StoreError::Conflict { actual, .. } => anyhow!(
                        "stream {} changed in {target} during the import (it is now at version \
                         {actual}, the input continues it from version {}); is another process \
                         writing to it? {partial}",
                        group.stream,
                        group.first_version - 1
                    ),
                    other => anyhow::Error::new(other).context(format!(
                        "appending the events of stream {} at line {line} failed; {partial}",
                        group.stream
                    )),
                });
            }
        };
        first_position.get_or_insert(outcome.first_position);
        last_position = outcome.last_position;
        progress.add(count);
    }
    eprintln!(
        "imported {} into {target} (positions {}..{})",
        event_count(progress.done),
        first_position.unwrap_or_default(),
        last_position
    );
    eprintln!(
        "views are built by the projections when `strata serve` starts on this store; on a \
         fresh store they rebuild from position 0"
    );
    Ok(())
}

/// Checks that every stream of the input continues what the target holds: a stream the
/// input starts at version 1 must be absent, one it starts at version N must be at N - 1.
/// Lists every conflict; writes nothing.
async fn check_streams<S: EventStore>(
    store: &S,
    streams: &[(StreamId, StreamStart)],
    target: &str,
) -> anyhow::Result<()> {
    // An empty target holds no stream, which answers every check without a query.
    if store.head() == Position::START {
        return check_against_nothing(streams, target);
    }
    eprintln!("checking {} streams against {target}", thousands(streams.len() as u64));
    let mut conflicts = Vec::new();
    for (stream, start) in streams {
        let current = current_version(store, stream, start.first_version - 1)
            .await
            .with_context(|| format!("cannot read stream {stream} in {target}"))?;
        conflicts.extend(conflict(stream, start, current));
    }
    refuse(conflicts, target)
}

/// [`check_streams`] against a target that holds no events, or does not exist yet.
fn check_against_nothing(streams: &[(StreamId, StreamStart)], target: &str) -> anyhow::Result<()> {
    refuse(
        streams.iter().filter_map(|(stream, start)| conflict(stream, start, 0)).collect(),
        target,
    )
}

/// The version `stream` is at in `store`, reading only its tail when it is at `expected`.
async fn current_version<S: EventStore>(
    store: &S,
    stream: &StreamId,
    expected: u64,
) -> Result<u64, StoreError> {
    let tail = store.read_stream(stream, Version(expected.saturating_sub(1))).await?;
    Ok(match tail.last() {
        Some(last) => last.version.0,
        // Nothing at or after `expected`: the stream is shorter, possibly absent.
        None if expected > 0 => {
            store.read_stream(stream, Version::NONE).await?.last().map_or(0, |e| e.version.0)
        }
        None => 0,
    })
}

/// Why a stream the input starts at `start` cannot go onto a target holding it at `current`.
fn conflict(stream: &StreamId, start: &StreamStart, current: u64) -> Option<String> {
    let line = start.first_line;
    let first = start.first_version;
    if current + 1 == first {
        return None;
    }
    Some(match (first, current) {
        (1, _) => format!(
            "stream {stream}: the input (line {line}) starts it at version 1, but the target \
             already holds it at version {current}"
        ),
        (_, 0) => format!(
            "stream {stream}: the input (line {line}) continues it at version {first}, but the \
             target holds none of it"
        ),
        _ => format!(
            "stream {stream}: the input (line {line}) continues it at version {first}, but the \
             target holds it at version {current}"
        ),
    })
}

/// Succeeds when there are no conflicts; otherwise an error listing them.
fn refuse(conflicts: Vec<String>, target: &str) -> anyhow::Result<()> {
    if conflicts.is_empty() {
        return Ok(());
    }
    let total = conflicts.len();
    let mut message = format!(
        "the input conflicts with what {target} holds in {} stream{}; nothing was written",
        thousands(total as u64),
        if total == 1 { "" } else { "s" }
    );
    for conflict in conflicts.iter().take(CONFLICTS_SHOWN) {
        message.push_str("\n  ");
        message.push_str(conflict);
    }
    if total > CONFLICTS_SHOWN {
        message
            .push_str(&format!("\n  … and {} more", thousands((total - CONFLICTS_SHOWN) as u64)));
    }
    Err(anyhow!(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(position: u64, id: &str, version: u64) -> String {
        format!(
            r#"{{"position":{position},"aggregate_type":"order","aggregate_id":"{id}","version":{version},"type":"OrderPlaced","schema_version":1,"data":{{"b":1, "a":[2]}},"metadata":{{"event_id":"{}","correlation_id":"c","causation_id":null,"user":null,"recorded_at":"2024-05-01T12:00:00.123456789Z"}}}}"#,
            Uuid::now_v7()
        )
    }

    fn parse_lines(lines: &[String]) -> anyhow::Result<Input> {
        parse(lines.join("\n").as_bytes())
    }

    #[test]
    fn consecutive_events_of_a_stream_form_one_group_with_the_version_before_them() {
        let input =
            parse_lines(&[line(1, "o1", 1), line(2, "o1", 2), line(3, "o2", 4), line(5, "o1", 3)])
                .expect("valid input");
        let groups: Vec<_> = input
            .groups
            .iter()
            .map(|g| (g.stream.id.as_str(), g.expected(), g.lines.clone()))
            .collect();
        assert_eq!(
            groups,
            [
                ("o1", ExpectedVersion::NoStream, vec![1, 2]),
                ("o2", ExpectedVersion::Exact(Version(3)), vec![3]),
                ("o1", ExpectedVersion::Exact(Version(2)), vec![4]),
            ]
        );
        assert_eq!(input.events, 4);
        // The payload keeps its bytes, spacing and key order included.
        assert_eq!(input.groups[0].events[0].payload, br#"{"b":1, "a":[2]}"#);
        assert_eq!(
            input.groups[0].events[0].metadata.recorded_at.timestamp_subsec_nanos(),
            123_456_789
        );
    }

    #[test]
    fn gaps_repeats_and_bad_lines_are_refused_with_their_line() {
        let gap = parse_lines(&[line(1, "o1", 1), line(2, "o1", 3)]).err().expect("a gap");
        assert!(format!("{gap:#}").contains("line 2"), "{gap:#}");
        let order = parse_lines(&[line(2, "o1", 1), line(2, "o2", 1)]).err().expect("order");
        assert!(format!("{order:#}").contains("line 2: position 2"), "{order:#}");
        let bad = parse_lines(&[line(1, "o1", 1), "{nope".to_owned()]).err().expect("bad");
        assert!(format!("{bad:#}").contains("line 2"), "{bad:#}");
        let first = line(1, "o1", 1);
        let again =
            first.replace(r#""position":1"#, r#""position":2"#).replace(r#""o1""#, r#""o2""#);
        let repeat = parse_lines(&[first, again]).err().expect("a repeated id");
        assert!(format!("{repeat:#}").contains("already used on line 1"), "{repeat:#}");
    }

    #[test]
    fn versions_this_code_cannot_read_are_refused_by_name() {
        let newer = line(2, "o2", 1).replace(r#""schema_version":1"#, r#""schema_version":3"#);
        let refused = parse_lines(&[line(1, "o1", 1), newer]).err().expect("a newer version");
        let message = format!("{refused:#}");
        assert!(message.contains("line 2: OrderPlaced schema version 3 is newer"), "{message}");
        let unknown = line(1, "o1", 1).replace("OrderPlaced", "OrderTeleported");
        let refused = parse_lines(&[unknown]).err().expect("an unknown type");
        assert!(format!("{refused:#}").contains("\"OrderTeleported\" is unknown"), "{refused:#}");
    }
}
