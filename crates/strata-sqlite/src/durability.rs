//! The second half of a group commit: making committed groups durable, then answering them.
//!
//! The writer commits a group with `synchronous = NORMAL`, which writes its frames to the
//! write-ahead log without syncing it, and hands the group to the thread here, which syncs
//! the log file and only then answers the group's callers and moves the published head.
//! Meanwhile the writer is already writing the next group, so the disk's sync overlaps the
//! next group's inserts instead of stopping them (docs/benchmarks.md, sixth round). The
//! writer commits that next group only once the sync has returned (or after [`SYNC_WAIT`]),
//! taking in the requests that arrived meanwhile: committed earlier, it would only wait for
//! a sync of its own, and smaller groups cost more per append.
//!
//! An answer still means the events are on disk (invariant 5). What changes is that a
//! committed group is in the file before it is durable, so the store's reads of events stop
//! at the published head (`event_store.rs`): no event is read, projected or relied on before
//! its sync. SQLite keeps the file consistent in this mode by itself (it syncs the log before
//! a checkpoint and when the log starts over); a power cut loses at most groups that were
//! not answered yet, never one that came before an answered group, since the log is
//! replayed in order up to its first incomplete frame.
//!
//! A group that failed to commit comes through here too, after the groups before it, so
//! that callers and the failure that `/health` reports hear of groups in their order.
//!
//! Opening the store syncs the log before its head is read, so that groups a killed process
//! committed but never synced are on disk before anything reads them.
//!
//! A failed sync leaves it unknown what reached the disk, and the kernel may already have
//! dropped the pages it could not write, so a later sync succeeding would prove nothing:
//! the failed groups are answered [`StoreError::OutcomeUnknown`] and the store takes no
//! more writes until it is opened again (restarting the service). What such a sync left
//! unwritten is certain only once the machine has restarted too: until then the kernel may
//! serve those pages from memory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use strata::{GroupCommitCounters, Position, StoreError};
use tokio::sync::watch;

use crate::writer::{Done, GroupFailed, WriteRequest};

/// Makes everything committed so far durable.
pub(crate) type SyncLog = Box<dyn FnMut() -> std::io::Result<()> + Send>;

/// Why the store stopped taking writes: a sync failed, or the durability thread is gone. Set
/// once; read by the writer before each group.
pub(crate) type SyncFailure = Arc<OnceLock<Arc<std::io::Error>>>;

/// How long the writer holds a written group back while the previous one is being synced.
/// A sync takes well under a millisecond; the bound keeps a stuck disk from holding the
/// writer.
pub(crate) const SYNC_WAIT: Duration = Duration::from_millis(20);

/// The number of groups sent to the durability thread and not yet answered, for the writer to
/// wait on.
#[derive(Default)]
pub(crate) struct PendingSyncs {
    groups: Mutex<usize>,
    synced: Condvar,
}

impl PendingSyncs {
    pub(crate) fn sent(&self) {
        *self.lock() += 1;
    }

    pub(crate) fn synced(&self, groups: usize) {
        let mut pending = self.lock();
        *pending = pending.saturating_sub(groups);
        if *pending == 0 {
            self.synced.notify_all();
        }
    }

    /// Waits until every group sent has been synced, or for `limit`.
    pub(crate) fn wait_until_synced(&self, limit: Duration) {
        let pending = self.lock();
        let _ = self.synced.wait_timeout_while(pending, limit, |pending| *pending > 0);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.groups.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What the writer sends, in the order of its groups.
pub(crate) enum Group {
    /// To be synced, then answered.
    Committed(Committed),
    /// Rolled back: to be answered in its turn.
    Failed(FailedGroup),
}

/// A group whose transaction failed: nothing of it was written.
pub(crate) struct FailedGroup {
    pub(crate) group: Vec<WriteRequest>,
    pub(crate) error: Arc<rusqlite::Error>,
}

/// A group committed by the writer, waiting for its sync to be answered.
pub(crate) struct Committed {
    pub(crate) group: Vec<WriteRequest>,
    pub(crate) outcomes: Vec<Done>,
    /// The head after this group.
    pub(crate) head: Position,
    /// Events the group wrote.
    pub(crate) events: u64,
    /// When the writer started writing it.
    pub(crate) started: Instant,
}

/// A sync that failed, as the answer to the appends it was for and to every later one.
#[derive(Debug, thiserror::Error)]
#[error(
    "syncing the event log to disk failed, so it is unknown what was written; the store \
     takes no writes until it is opened again: {0}"
)]
pub(crate) struct SyncFailed(#[source] pub(crate) Arc<std::io::Error>);

/// Syncs the write-ahead log of `database` (SQLite's name for the file, symlinks followed,
/// since the log is kept beside the real file), the file every commit appends to. The file
/// is opened at the first sync and kept: SQLite keeps the same file while the writer's
/// connection is open, writing it from the start again after a checkpoint rather than
/// replacing it. Its directory is synced once too, as SQLite does for a log it creates. A
/// missing log is an error, except at the sync at opening: any read makes SQLite create it.
pub(crate) fn write_ahead_log(database: &Path) -> SyncLog {
    let mut log_path = database.as_os_str().to_owned();
    log_path.push("-wal");
    let log_path = PathBuf::from(log_path);
    let directory = match database.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut log: Option<File> = None;
    let mut first = true;
    Box::new(move || {
        let file = match &mut log {
            Some(file) => file,
            None => {
                let opening = std::mem::replace(&mut first, false);
                let file = match File::options().write(true).open(&log_path) {
                    Ok(file) => file,
                    Err(error) if opening && error.kind() == std::io::ErrorKind::NotFound => {
                        return Ok(());
                    }
                    Err(error) => return Err(error),
                };
                sync_directory(&directory);
                log.insert(file)
            }
        };
        file.sync_data()
    })
}

/// Some file systems cannot sync a directory (FUSE, network mounts); SQLite carries on
/// there, and so does this.
#[cfg(unix)]
fn sync_directory(directory: &Path) {
    if let Err(error) = File::open(directory).and_then(|directory| directory.sync_all()) {
        tracing::warn!(%error, directory = %directory.display(), "cannot sync the event log's directory");
    }
}

/// Elsewhere a directory cannot be opened as a file to sync it.
#[cfg(not(unix))]
fn sync_directory(_: &Path) {}

/// Starts the durability thread. It runs until every sender of `groups` is dropped,
/// syncing and answering the groups already sent.
pub(crate) fn spawn(
    sync: SyncLog,
    published: watch::Sender<Position>,
    metrics: Arc<GroupCommitCounters>,
    failure: SyncFailure,
    pending: Arc<PendingSyncs>,
    groups: mpsc::Receiver<Group>,
) -> std::io::Result<JoinHandle<()>> {
    let durability = Durability { sync, published, metrics, failure, pending };
    std::thread::Builder::new()
        .name("strata-sqlite-sync".to_owned())
        .spawn(move || durability.run(groups))
}

struct Durability {
    sync: SyncLog,
    /// Where readers and followers learn of durable events.
    published: watch::Sender<Position>,
    metrics: Arc<GroupCommitCounters>,
    failure: SyncFailure,
    pending: Arc<PendingSyncs>,
}

impl Durability {
    fn run(mut self, received: mpsc::Receiver<Group>) {
        while let Ok(first) = received.recv() {
            let mut groups = vec![first];
            groups.extend(received.try_iter());
            let count = groups.len();
            let any_committed = groups.iter().any(|group| matches!(group, Group::Committed(_)));
            let synced = match self.failure.get() {
                Some(error) => Err(Arc::clone(error)),
                None if any_committed => self.sync_log(),
                None => Ok(()),
            };
            for group in groups {
                match (group, &synced) {
                    (Group::Committed(committed), Ok(())) => self.answer(committed),
                    (Group::Committed(committed), Err(error)) => {
                        answer_unknown(&self.metrics, committed, error);
                    }
                    (Group::Failed(failed), _) => answer_refused(&self.metrics, failed),
                }
            }
            self.pending.synced(count);
        }
        tracing::debug!("event log sync stopped: the writer stopped");
    }

    /// Syncs the log; a failure (or a panic, which would otherwise leave the groups
    /// unanswered) stops the store's writes.
    fn sync_log(&mut self) -> Result<(), Arc<std::io::Error>> {
        let synced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.sync)()))
            .unwrap_or_else(|_| Err(std::io::Error::other("syncing the event log panicked")));
        synced.map_err(|error| {
            tracing::error!(%error, "syncing the event log failed; the store takes no more writes");
            Arc::clone(self.failure.get_or_init(|| Arc::new(error)))
        })
    }

    fn answer(&self, committed: Committed) {
        // Before the answers: a caller that reads after its answer must find its events.
        self.published.send_if_modified(|published| {
            let moved = *published != committed.head;
            *published = committed.head;
            moved
        });
        let appends = committed.group.len();
        self.metrics.record(appends, committed.events, committed.started.elapsed());
        for (request, done) in committed.group.into_iter().zip(committed.outcomes) {
            request.reply(done);
        }
    }
}

/// Answers every request of a committed group whose sync failed that its outcome is unknown.
pub(crate) fn answer_unknown(
    metrics: &GroupCommitCounters,
    committed: Committed,
    error: &Arc<std::io::Error>,
) {
    metrics.record_failure(&SyncFailed(Arc::clone(error)));
    for request in committed.group {
        let unknown = SyncFailed(Arc::clone(error));
        request.fail(StoreError::OutcomeUnknown(Box::new(unknown)));
    }
}

/// Answers every request of a group that did not commit that nothing of it was written.
pub(crate) fn answer_refused(metrics: &GroupCommitCounters, failed: FailedGroup) {
    metrics.record_failure(&failed.error);
    for request in failed.group {
        let refused = GroupFailed(Arc::clone(&failed.error));
        request.fail(StoreError::Backend(Box::new(refused)));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::RecvTimeoutError;
    use std::time::Duration;

    use strata::{
        EventMetadata, EventStore, ExpectedVersion, IdempotencyClaim, NewEvent, StreamId, Version,
    };

    use super::*;
    use crate::SqliteEventStore;

    const DEADLINE: Duration = Duration::from_secs(10);

    fn event() -> NewEvent {
        NewEvent {
            event_type: "Placed".to_owned(),
            schema_version: 1,
            payload: b"{}".to_vec(),
            metadata: EventMetadata::new("test", None),
        }
    }

    /// Rows in the file, committed whether or not they are durable.
    fn rows_in_file(dir: &Path) -> i64 {
        let connection = rusqlite::Connection::open(dir.join("events.sqlite")).unwrap();
        connection.query_row("SELECT count(*) FROM events", [], |row| row.get(0)).unwrap()
    }

    /// Polls until the writer has committed `rows` rows to the file.
    fn wait_for_rows(dir: &Path, rows: i64) {
        let deadline = Instant::now() + DEADLINE;
        while rows_in_file(dir) < rows {
            assert!(Instant::now() < deadline, "the writer did not commit in time");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_committed_group_is_neither_answered_nor_read_before_its_sync_returns() {
        let dir = tempfile::tempdir().unwrap();
        let (release, released) = mpsc::channel::<()>();
        release.send(()).unwrap(); // the sync at opening
        let store = SqliteEventStore::open_with(dir.path(), move |_| {
            Box::new(move || match released.recv_timeout(DEADLINE) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => Ok(()),
                Err(RecvTimeoutError::Timeout) => Err(std::io::Error::other("never released")),
            })
        })
        .unwrap();
        let stream = StreamId::new("Order", "o1");
        release.send(()).unwrap();
        store.append(&stream, ExpectedVersion::NoStream, vec![event()]).await.unwrap();

        let claim =
            IdempotencyClaim { key: "k1".to_owned(), fingerprint: "f1".to_owned(), recorded: None };
        let appending = tokio::spawn({
            let (store, stream) = (store.clone(), stream.clone());
            async move {
                let expected = ExpectedVersion::Exact(Version(1));
                store.append_claimed(&stream, expected, vec![event()], Some(&claim)).await
            }
        });
        wait_for_rows(dir.path(), 2);
        assert!(!appending.is_finished(), "answered before its sync");
        assert_eq!(store.read_all(Position(0), 10).await.unwrap().len(), 1);
        assert_eq!(store.read_stream(&stream, Version::NONE).await.unwrap().len(), 1);
        assert!(store.read_stream(&stream, Version(1)).await.unwrap().is_empty());
        assert!(store.read_positions(&[Position(2)]).await.unwrap().is_empty());
        assert!(store.read_claim("k1").await.unwrap().is_none(), "its key is not there yet");
        assert_eq!(*store.subscribe().borrow(), Position(1));

        release.send(()).unwrap();
        let appended = appending.await.unwrap().unwrap();
        assert_eq!(appended.last_position, Position(2));
        assert_eq!(store.read_all(Position(0), 10).await.unwrap().len(), 2);
        assert_eq!(store.read_stream(&stream, Version(1)).await.unwrap().len(), 1);
        assert_eq!(store.read_positions(&[Position(2)]).await.unwrap().len(), 1);
        assert!(store.read_claim("k1").await.unwrap().is_some());
        assert_eq!(*store.subscribe().borrow(), Position(2));
    }

    #[cfg(unix)]
    #[tokio::test(flavor = "multi_thread")]
    async fn a_store_opened_through_a_symlink_syncs_the_log_beside_the_real_file() {
        let (real, linked) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        drop(SqliteEventStore::open(real.path()).unwrap());
        let file = "events.sqlite";
        std::os::unix::fs::symlink(real.path().join(file), linked.path().join(file)).unwrap();
        let store = SqliteEventStore::open(linked.path()).unwrap();
        let stream = StreamId::new("Order", "o1");
        let appended = store.append(&stream, ExpectedVersion::NoStream, vec![event()]).await;
        // A sync of a log that is not there would fail the append.
        assert!(appended.is_ok(), "{appended:?}");
        assert!(real.path().join("events.sqlite-wal").exists());
        assert!(!linked.path().join("events.sqlite-wal").exists());
    }

    #[test]
    fn opening_syncs_the_log_and_refuses_to_open_when_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteEventStore::open(dir.path()).unwrap());
        let syncs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let refused = SqliteEventStore::open_with(dir.path(), |_| {
            Box::new(|| Err(std::io::Error::other("the disk went away")))
        });
        assert!(matches!(refused, Err(crate::SqliteError::Sync { .. })), "{refused:?}");
        let counted = Arc::clone(&syncs);
        let _store = SqliteEventStore::open_with(dir.path(), move |_| {
            Box::new(move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            })
        })
        .unwrap();
        assert_eq!(syncs.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_sync_answers_outcome_unknown_and_stops_writes_visibly() {
        let dir = tempfile::tempdir().unwrap();
        let mut opened = false;
        let store = SqliteEventStore::open_with(dir.path(), |_| {
            Box::new(move || match std::mem::replace(&mut opened, true) {
                false => Ok(()), // the sync at opening
                true => Err(std::io::Error::other("the disk went away")),
            })
        })
        .unwrap();
        let first = StreamId::new("Order", "o1");
        let unknown = store.append(&first, ExpectedVersion::NoStream, vec![event()]).await;
        assert!(matches!(unknown, Err(StoreError::OutcomeUnknown(_))), "{unknown:?}");
        assert!(store.read_all(Position(0), 10).await.unwrap().is_empty());

        let refused = store
            .append(&StreamId::new("Order", "o2"), ExpectedVersion::NoStream, vec![event()])
            .await;
        let Err(StoreError::Backend(error)) = refused else { panic!("{refused:?}") };
        assert!(error.to_string().contains("opened again"), "{error}");
        assert_eq!(rows_in_file(dir.path()), 1, "the refused append wrote nothing");
        let failure = store.write_failure().expect("the failure shows");
        assert!(failure.error.contains("the disk went away"), "{}", failure.error);
        assert_eq!(failure.groups, 2);
    }
}
