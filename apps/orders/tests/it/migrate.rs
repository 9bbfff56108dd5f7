//! Moving a store with the real binary: `strata events export` of a SQLite store and
//! `strata events import` into PostgreSQL give back the same log; importing twice, or a
//! malformed file, is refused and writes nothing; stdout and `--out` export the same lines.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use orders::app::{App, LineRequest, PlaceOrder};
use orders::backends::open_sqlite;
use orders::domain::OrderCommand;
use strata::{BusConfig, CommandContext, EventStore, Position, RecordedEvent};
use strata_postgres::PgEventStore;
use strata_sqlite::SqliteEventStore;
use strata_testkit::services::postgres;
use tempfile::TempDir;

use crate::process::Server;

/// Runs `strata` with `args`, feeding `stdin`, with no store settings from the environment.
fn strata(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env_remove("STRATA_STORE")
        .env_remove("STRATA_DATA_DIR")
        .env("RUST_LOG", "warn")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn succeeded(output: &Output) {
    assert!(output.status.success(), "strata failed: {}", stderr(output));
}

/// A SQLite data directory holding customers, products and orders in every state, written
/// by the real application. The app runs on a runtime of its own, on a thread of its own,
/// so that dropping that runtime ends every projection task and with them the last handles
/// on the store: the binary can then take the store's lock.
fn populated_sqlite() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let app = App::start(open_sqlite(&path).unwrap(), "export-test", BusConfig::default())
                .await
                .unwrap();
            let context = CommandContext::new("corr-1");
            let mut as_user = CommandContext::new("corr-2");
            as_user.user = Some("alice".to_owned());
            app.register_customer("ada", "Ada".into(), "ada@example.com".into(), &context)
                .await
                .unwrap();
            app.register_customer("bob", "Bob".into(), "bob@example.com".into(), &as_user)
                .await
                .unwrap();
            app.create_product("tea", "Tea".into(), 450, &context).await.unwrap();
            app.create_product("cake", "Cake".into(), 300, &as_user).await.unwrap();
            app.restock_product("tea", 10, &context).await.unwrap();
            for (order, customer) in [("o1", "ada"), ("o2", "bob"), ("o3", "ada")] {
                let request = PlaceOrder {
                    customer_id: customer.to_owned(),
                    lines: vec![LineRequest { sku: "tea".into(), qty: 2 }],
                    payment_method: Some("card".into()),
                    shipping_address: None,
                };
                app.place_order(order, request, &as_user).await.unwrap();
            }
            app.add_line("o1", LineRequest { sku: "cake".into(), qty: 1 }, &context).await.unwrap();
            app.restock_product("cake", 5, &context).await.unwrap();
            let wait = std::time::Duration::from_secs(10);
            let (_, decided) = app.confirm_order("o1", &context, wait).await.unwrap();
            assert!(decided.is_some(), "the saga confirms o1");
            app.change_order(
                "o2",
                OrderCommand::Cancel { reason: "changed mind".into() },
                &as_user,
            )
            .await
            .unwrap();
            app.change_order("o1", OrderCommand::Ship, &context).await.unwrap();
            // The saga takes o1's reservations out of the stock after the ship.
            let saga = app.sagas.get("fulfilment").unwrap();
            let deadline = std::time::Instant::now() + wait;
            while saga.instance("o1").await.unwrap().unwrap()["status"] != "completed" {
                assert!(std::time::Instant::now() < deadline, "the saga never settled o1");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            app.stop();
        });
    })
    .join()
    .unwrap();
    dir
}

async fn read_everything(store: &impl EventStore) -> Vec<RecordedEvent> {
    store.read_all(Position::START, 100_000).await.unwrap()
}

/// Exports the SQLite store in `dir` to `file` with `--out` and returns the file's text.
fn export_to_file(dir: &Path, file: &Path) -> String {
    let store = format!("sqlite:{}", dir.display());
    let output =
        strata(&["events", "export", "--store", &store, "--out", file.to_str().unwrap()], None);
    succeeded(&output);
    assert!(output.stdout.is_empty(), "with --out, stdout stays empty");
    std::fs::read_to_string(file).unwrap()
}

#[tokio::test]
async fn a_sqlite_store_exported_and_imported_into_postgres_reads_back_the_same() {
    let Some(fixture) = postgres().await else { return };
    let source = populated_sqlite();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("events.jsonl");
    let text = export_to_file(source.path(), &file);

    let imported =
        strata(&["events", "import", "--store", &fixture.url(), file.to_str().unwrap()], None);
    succeeded(&imported);
    let lines = text.lines().count();
    assert!(
        stderr(&imported).contains(&format!("imported {lines} events")),
        "{}",
        stderr(&imported)
    );
    assert!(stderr(&imported).contains("rebuild from position 0"), "{}", stderr(&imported));

    let original = read_everything(&SqliteEventStore::open(source.path()).unwrap()).await;
    let copy = read_everything(&PgEventStore::connect(&fixture.url(), None).await.unwrap()).await;
    assert_eq!(original.len(), lines);
    assert!(original.len() > 10, "the fixture covers many events, got {}", original.len());
    assert!(original.iter().any(|e| e.metadata.user.as_deref() == Some("alice")));
    // Streams, versions, types, payload bytes, ids and times, in the same order; the target
    // was empty, so even the positions agree.
    assert_eq!(copy, original);

    // Served from either store, every view answers the same once rebuilt from zero.
    let head = original.len();
    let dir = source.path().display().to_string();
    let sqlite = Server::spawn(&["--node-id", "from-sqlite", "--data-dir", &dir]);
    let postgres = Server::spawn(&["--node-id", "from-postgres", "--store", &fixture.url()]);
    for path in [
        "/customers/ada",
        "/customers/bob",
        "/customers/ada/orders",
        "/customers/bob/orders",
        "/products/tea",
        "/products/cake",
        "/orders/o1",
        "/orders/o2",
        "/orders/o3",
        "/admin/streams/order/o1",
    ] {
        let waited = format!("{path}?min_position={head}&wait_ms=10000");
        let (status, from_sqlite) = sqlite.send("GET", &waited, None).await;
        assert_eq!(status, 200, "{path} on the SQLite store");
        let (status, from_postgres) = postgres.send("GET", &waited, None).await;
        assert_eq!(status, 200, "{path} on the PostgreSQL store");
        assert_eq!(from_postgres, from_sqlite, "{path} answers the same on both stores");
    }
}

#[tokio::test]
async fn importing_the_same_file_twice_is_refused_the_second_time_and_writes_nothing() {
    let Some(fixture) = postgres().await else { return };
    let source = populated_sqlite();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("events.jsonl");
    export_to_file(source.path(), &file);
    let import =
        || strata(&["events", "import", "--store", &fixture.url(), file.to_str().unwrap()], None);
    succeeded(&import());
    let head = PgEventStore::connect(&fixture.url(), None).await.unwrap().head();

    let again = import();
    assert_eq!(again.status.code(), Some(1));
    let message = stderr(&again);
    assert!(message.contains("strata: error: the input conflicts"), "{message}");
    assert!(message.contains("conflicts with what the PostgreSQL store holds"), "{message}");
    assert!(message.contains("nothing was written"), "{message}");
    assert!(
        message.contains("stream customer/ada: the input (line 1) starts it at version 1, but the target already holds it at version 1"),
        "{message}"
    );
    assert!(!message.contains("postgres://"), "the URL may hold a password: {message}");
    assert_eq!(PgEventStore::connect(&fixture.url(), None).await.unwrap().head(), head);
}

#[tokio::test]
async fn a_malformed_file_is_refused_naming_its_line_and_writes_nothing() {
    let source = populated_sqlite();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("events.jsonl");
    let text = export_to_file(source.path(), &file);
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = r#"{"position":3,"aggregate_type":"order""#;
    std::fs::write(&file, lines.join("\n")).unwrap();

    // Into a SQLite directory: refused before the store is even created.
    let target = work.path().join("target");
    let store = format!("sqlite:{}", target.display());
    let refused = strata(&["events", "import", "--store", &store, file.to_str().unwrap()], None);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused)
            .contains("line 3, column 38: not an exported event: EOF while parsing an object"),
        "{}",
        stderr(&refused)
    );
    assert!(!target.exists(), "a refused import creates nothing");

    let Some(fixture) = postgres().await else { return };
    let contents = std::fs::read(&file).unwrap();
    let refused = strata(&["events", "import", "--store", &fixture.url()], Some(&contents));
    assert_eq!(refused.status.code(), Some(1));
    let message = stderr(&refused);
    assert!(
        message.contains(
            "in stdin: line 3, column 38: not an exported event: EOF while parsing an object"
        ),
        "{message}"
    );
    assert_eq!(PgEventStore::connect(&fixture.url(), None).await.unwrap().head(), Position(0));
}

#[test]
fn export_to_stdout_equals_export_to_a_file() {
    let source = populated_sqlite();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("events.jsonl");
    let from_file = export_to_file(source.path(), &file);

    let store = format!("sqlite:{}", source.path().display());
    let output = strata(&["events", "export", "--store", &store], None);
    succeeded(&output);
    let from_stdout = String::from_utf8(output.stdout.clone()).unwrap();
    assert_eq!(from_stdout, from_file);
    // Only the lines go to stdout; progress goes to stderr.
    for line in from_stdout.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(event["data"].is_object(), "{line}");
        assert!(event["metadata"]["recorded_at"].as_str().is_some_and(|t| t.len() == 30), "{line}");
    }
    let count = from_stdout.lines().count();
    assert!(stderr(&output).contains(&format!("exported {count} events")), "{}", stderr(&output));
}
