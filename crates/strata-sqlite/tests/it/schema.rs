//! Schema versions: a reopened file is not migrated again, and a file from a newer Strata
//! is refused without being touched.

use std::path::Path;

use strata::{EventStore, IdempotencyClaim, IdempotencyStore, Position, Version};
use strata_sqlite::{SqliteError, SqliteEventStore, SqliteViewManager};
use tempfile::TempDir;

use crate::{NEW, event, stream};

fn user_version(file: &Path) -> i64 {
    let connection = rusqlite::Connection::open(file).expect("open the file directly");
    connection.pragma_query_value(None, "user_version", |row| row.get(0)).expect("user_version")
}

#[tokio::test]
async fn reopening_keeps_the_schema_and_the_data() {
    let dir = TempDir::new().unwrap();
    {
        let store = SqliteEventStore::open(dir.path()).unwrap();
        store.append(&stream("s"), NEW, vec![event(1)]).await.unwrap();
    }
    assert_eq!(user_version(&dir.path().join("events.sqlite")), 3);
    // Running the first migration again would fail: its tables exist.
    for _ in 0..2 {
        let store = SqliteEventStore::open(dir.path()).unwrap();
        assert_eq!(store.read_stream(&stream("s"), Version::NONE).await.unwrap().len(), 1);
    }
    assert_eq!(user_version(&dir.path().join("events.sqlite")), 3);
}

#[tokio::test]
async fn an_event_log_of_schema_version_1_takes_idempotency_keys_after_migrating() {
    let dir = TempDir::new().unwrap();
    {
        let connection = rusqlite::Connection::open(dir.path().join("events.sqlite")).unwrap();
        connection.execute_batch(include_str!("../../src/sql/events_0001_create.sql")).unwrap();
        connection.pragma_update(None, "user_version", 1).unwrap();
    }
    let store = SqliteEventStore::open(dir.path()).unwrap();
    assert_eq!(user_version(&dir.path().join("events.sqlite")), 3);
    let claim = IdempotencyClaim { key: "k".into(), fingerprint: "f".into(), recorded: None };
    store.append_claimed(&stream("s"), NEW, vec![event(1)], Some(&claim)).await.unwrap();
    let record = store.get("k").await.unwrap().expect("the key is recorded with the append");
    assert_eq!(record.appended.and_then(|appended| appended.position), Some(Position(1)));
}

#[test]
fn a_file_from_a_newer_strata_is_refused_and_left_alone() {
    let dir = TempDir::new().unwrap();
    for file in ["events.sqlite", "views.sqlite"] {
        let connection = rusqlite::Connection::open(dir.path().join(file)).unwrap();
        connection.pragma_update(None, "user_version", 99).unwrap();
    }

    let refusals =
        [SqliteEventStore::open(dir.path()).err(), SqliteViewManager::open(dir.path()).err()];
    for refusal in refusals {
        let refusal = refusal.expect("a newer schema is refused");
        assert!(
            matches!(refusal, SqliteError::UnknownSchemaVersion { found: 99, known: 3, .. }),
            "{refusal:?}"
        );
        assert!(refusal.to_string().contains("newer Strata"), "{refusal}");
    }
    assert_eq!(user_version(&dir.path().join("events.sqlite")), 99);
    let connection = rusqlite::Connection::open(dir.path().join("events.sqlite")).unwrap();
    let tables: i64 =
        connection.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |row| row.get(0)).unwrap();
    assert_eq!(tables, 0, "nothing was created in the refused file");
    let mode: String =
        connection.pragma_query_value(None, "journal_mode", |row| row.get(0)).unwrap();
    assert_eq!(mode, "delete", "not even the journal mode changed");
    let mode: String =
        connection.pragma_query_value(None, "journal_mode", |row| row.get(0)).unwrap();
    assert_eq!(mode, "delete", "not even the journal mode changed");
}

#[tokio::test]
async fn a_second_writer_on_the_same_directory_is_refused_until_the_first_closes() {
    let dir = TempDir::new().unwrap();
    let first = SqliteEventStore::open(dir.path()).unwrap();
    first.append(&stream("s"), NEW, vec![event(1)]).await.unwrap();
    match SqliteEventStore::open(dir.path()) {
        Err(SqliteError::Locked { path }) => assert!(path.ends_with("events.lock")),
        other => panic!("a second writer must be refused, got {other:?}"),
    }
    drop(first);
    let second = SqliteEventStore::open(dir.path()).unwrap();
    assert_eq!(second.head(), Position(1), "the second writer sees what the first wrote");
}

#[tokio::test]
async fn views_written_by_schema_version_1_read_the_same_after_migrating() {
    use strata::{Checkpoint, Position, Slot, ViewManager};
    let dir = TempDir::new().unwrap();
    {
        // views.sqlite as the first release of Strata left it.
        let connection = rusqlite::Connection::open(dir.path().join("views.sqlite")).unwrap();
        connection.execute_batch(include_str!("../../src/sql/views_0001_create.sql")).unwrap();
        connection
            .execute_batch(
                "INSERT INTO views VALUES ('orders', 'o1', CAST('{\"n\":1}' AS BLOB), 7); \
                 INSERT INTO checkpoints VALUES ('orders', 9); PRAGMA user_version = 1;",
            )
            .unwrap();
    }
    let views = SqliteViewManager::open(dir.path()).unwrap();
    assert_eq!(user_version(&dir.path().join("views.sqlite")), 3);
    let stored = views.get::<serde_json::Value>("orders", "o1").await.unwrap().unwrap();
    assert_eq!(
        (stored.view, stored.position, stored.parked),
        (serde_json::json!({"n": 1}), Position(7), None)
    );
    assert_eq!(
        views.checkpoint("orders", Slot::Live).await.unwrap(),
        Checkpoint { position: Position(9), revision: 0 }
    );
    assert!(views.parked("orders", Slot::Live).await.unwrap().is_empty());
}
