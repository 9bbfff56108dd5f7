//! The view manager contract, storage half: what every [`ViewManager`] must keep, checked on
//! a real instance. The checks run in order on one store; each uses projections and tables
//! of its own.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use strata::table::{Column, ColumnType, Comparison, Filter, TableKind, TableQuery, TableSpec};
use strata::{
    Checkpoint, Commit, EventMetadata, Parking, Position, RecordedEvent, RowChange, SkippedEvent,
    Slot, StoredView, StreamId, Value, Version, ViewError, ViewManager,
};

use crate::ViewManagerFactory;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counter {
    name: String,
    count: u64,
}

fn counter(name: &str, count: u64, position: u64) -> (String, StoredView<Counter>) {
    (
        name.to_owned(),
        StoredView::current(Counter { name: name.to_owned(), count }, Position(position)),
    )
}

fn ids(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn at(position: u64, revision: u64) -> Checkpoint {
    Checkpoint { position: Position(position), revision }
}

fn commit(from: Checkpoint, to: u64, views: Vec<(String, StoredView<Counter>)>) -> Commit<Counter> {
    let mut commit = Commit::new(from, Position(to));
    commit.views = views;
    commit
}

/// A stored event with every field set, as parking keeps it.
fn recorded(position: u64, version: u64) -> RecordedEvent {
    let mut metadata =
        EventMetadata::new("contract-correlation", Some(format!("cause-{position}")));
    metadata.event_id =
        uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + u128::from(position));
    metadata.user = Some("contract-user".to_owned());
    metadata.recorded_at = DateTime::from_timestamp(1_800_000_000, 123_456_789).unwrap_or_default();
    RecordedEvent {
        stream: StreamId::new("contract", "p"),
        version: Version(version),
        position: Position(position),
        event_type: "Sample".to_owned(),
        schema_version: 2,
        payload: vec![0, 159, 146, 150, b'{'],
        metadata,
    }
}

fn parking(position: u64, attempts: u32) -> Parking {
    Parking {
        position: Position(position),
        error: format!("cannot apply {position}"),
        attempts,
        parked_at: DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap_or_default(),
    }
}

static ITEMS: TableSpec = TableSpec {
    name: "contract_items",
    columns: &[
        Column::new("id", ColumnType::Text),
        Column::new("owner", ColumnType::Text),
        Column::new("at", ColumnType::Timestamp),
        Column::new("amount", ColumnType::Integer),
        Column::nullable("note", ColumnType::Text),
    ],
    key_columns: 1,
    indexes: &[&["owner", "at", "id"], &["at", "id"]],
    kind: TableKind::Rows,
};

static DAILY: TableSpec = TableSpec {
    name: "contract_daily",
    columns: &[
        Column::new("day", ColumnType::Date),
        Column::new("sku", ColumnType::Text),
        Column::new("units", ColumnType::Integer),
        Column::new("revenue", ColumnType::Integer),
    ],
    key_columns: 2,
    indexes: &[],
    kind: TableKind::Sums,
};

/// `contract_rebuilt` as a later version of the projection defines it: one more column.
static REBUILT_V2: TableSpec = TableSpec {
    name: "contract_rebuilt",
    columns: &[
        Column::new("id", ColumnType::Text),
        Column::new("n", ColumnType::Integer),
        Column::nullable("label", ColumnType::Text),
    ],
    key_columns: 1,
    indexes: &[&["label", "id"]],
    kind: TableKind::Rows,
};

static REBUILT: TableSpec = TableSpec {
    name: "contract_rebuilt",
    columns: &[Column::new("id", ColumnType::Text), Column::new("n", ColumnType::Integer)],
    key_columns: 1,
    indexes: &[],
    kind: TableKind::Rows,
};

fn time(seconds: i64, micros: u32) -> Value {
    Value::timestamp(
        DateTime::from_timestamp(1_800_000_000 + seconds, micros * 1000).unwrap_or_default(),
    )
}

fn item(id: &str, owner: &str, seconds: i64, amount: i64) -> Vec<Value> {
    vec![
        Value::Text(id.to_owned()),
        Value::Text(owner.to_owned()),
        time(seconds, 250),
        Value::Integer(amount),
        if amount % 2 == 0 { Value::Null } else { Value::Text(format!("odd {amount}")) },
    ]
}

fn day(d: u32) -> Value {
    Value::Date(NaiveDate::from_ymd_opt(2026, 11, d).unwrap_or_default())
}

fn sale(d: u32, sku: &str, units: i64, revenue: i64) -> RowChange {
    RowChange::Add {
        table: &DAILY,
        row: vec![
            day(d),
            Value::Text(sku.to_owned()),
            Value::Integer(units),
            Value::Integer(revenue),
        ],
    }
}

/// Runs every view manager check against managers opened by `factory`: storage first, then
/// projections running on it (see `crate::projection`).
pub async fn view_manager_contract<F: ViewManagerFactory>(factory: F) {
    let views = factory.open().await;
    unknown_projection_is_empty(&views).await;
    commit_saves_views_with_checkpoint(&views).await;
    stale_checkpoint_is_fenced_and_writes_nothing(&views).await;
    projections_are_independent(&views).await;
    parked_instances_keep_their_events_as_stored(&views).await;
    tables_change_with_the_checkpoint_and_answer_queries(&views).await;
    a_rebuild_fills_apart_and_swaps_in_at_once(&views).await;
    let views = Arc::new(views);
    racing_commits_let_exactly_one_win(&views).await;
    crate::projection::projections_park_retry_skip_and_rebuild(&views).await;
    crate::projection::parked_work_survives_a_lease_handover(&views).await;
    crate::projection::a_failing_rebuild_leaves_the_live_views_serving(&views).await;
    crate::projection::audits_find_events_by_request_stream_and_user(&views).await;
    crate::projection::operator_actions_during_a_rebuild_are_kept(&views).await;
    crate::projection::rebuilds_follow_the_newest_definition(&views).await;
    crate::projection::views_ahead_of_the_log_are_rebuilt_from_it(&views).await;
    drop(views);
    if factory.durable() {
        let reopened = factory.open().await;
        reopened_manager_keeps_everything(&reopened).await;
    }
}

async fn unknown_projection_is_empty<M: ViewManager>(views: &M) {
    assert_eq!(
        views.checkpoint("counters", Slot::Live).await.expect("checkpoint"),
        Checkpoint::START
    );
    assert!(views.get::<Counter>("counters", "a").await.expect("get").is_none());
    let loaded =
        views.load::<Counter>("counters", Slot::Live, &ids(&["a", "b"])).await.expect("load");
    assert!(loaded.is_empty());
    let record = views.record("counters").await.expect("record");
    assert_eq!((record.checkpoint, record.parked, record.rebuild), (Checkpoint::START, 0, None));
    assert!(views.parked("counters", Slot::Live).await.expect("parked").is_empty());
    assert!(views.skipped("counters").await.expect("skipped").is_empty());
}

async fn commit_saves_views_with_checkpoint<M: ViewManager>(views: &M) {
    assert_eq!(
        views.prepare("counters", &[], 1).await.expect("prepare"),
        1,
        "a new projection records its version"
    );
    let batch = vec![counter("a", 1, 3), counter("b", 2, 5)];
    views
        .commit("counters", Slot::Live, commit(Checkpoint::START, 5, batch))
        .await
        .expect("commit");
    assert_eq!(views.checkpoint("counters", Slot::Live).await.expect("checkpoint"), at(5, 1));
    let a = views.get::<Counter>("counters", "a").await.expect("get").expect("a exists");
    assert_eq!(a, counter("a", 1, 3).1, "a view keeps its state and last applied position");
    let loaded =
        views.load::<Counter>("counters", Slot::Live, &ids(&["a", "b", "c"])).await.expect("load");
    assert_eq!(loaded.len(), 2, "load returns the stored ids only");
    assert_eq!(loaded["b"], counter("b", 2, 5).1);

    views
        .commit("counters", Slot::Live, commit(at(5, 1), 9, vec![counter("a", 7, 9)]))
        .await
        .expect("next");
    let a = views.get::<Counter>("counters", "a").await.expect("get").expect("a exists");
    assert_eq!(a.view.count, 7, "a later commit replaces the instance");
    let b = views.get::<Counter>("counters", "b").await.expect("get").expect("b exists");
    assert_eq!(b.view.count, 2, "instances not in the batch are untouched");

    views.commit("counters", Slot::Live, commit(at(9, 2), 12, Vec::new())).await.expect("empty");
    assert_eq!(
        views.checkpoint("counters", Slot::Live).await.expect("checkpoint"),
        at(12, 3),
        "a batch that touches no view still moves the checkpoint"
    );
}

async fn stale_checkpoint_is_fenced_and_writes_nothing<M: ViewManager>(views: &M) {
    // A stale position, and the right position with a stale revision (an operator's retry
    // committed in between without moving the position).
    for stale in [at(5, 1), at(12, 2)] {
        let batch = vec![counter("a", 100, 20), counter("c", 1, 20)];
        match views.commit("counters", Slot::Live, commit(stale, 20, batch)).await {
            Err(ViewError::Fenced { projection, expected, actual }) => {
                assert_eq!(projection, "counters");
                assert_eq!(expected, stale);
                assert_eq!(actual, at(12, 3));
            }
            other => panic!("a commit from a stale checkpoint must be fenced, got {other:?}"),
        }
    }
    assert_eq!(views.checkpoint("counters", Slot::Live).await.expect("checkpoint"), at(12, 3));
    let a = views.get::<Counter>("counters", "a").await.expect("get").expect("a exists");
    assert_eq!(a.view.count, 7, "a fenced commit changes no view");
    assert!(views.get::<Counter>("counters", "c").await.expect("get").is_none());
}

async fn projections_are_independent<M: ViewManager>(views: &M) {
    assert_eq!(
        views.checkpoint("others", Slot::Live).await.expect("checkpoint"),
        Checkpoint::START
    );
    assert!(views.get::<Counter>("others", "a").await.expect("get").is_none());
    views
        .commit("others", Slot::Live, commit(Checkpoint::START, 2, vec![counter("a", 42, 2)]))
        .await
        .expect("commit");
    let theirs = views.get::<Counter>("others", "a").await.expect("get").expect("exists");
    let ours = views.get::<Counter>("counters", "a").await.expect("get").expect("exists");
    assert_eq!((theirs.view.count, ours.view.count), (42, 7), "same id, separate projections");
}

async fn parked_instances_keep_their_events_as_stored<M: ViewManager>(views: &M) {
    let name = "parking";
    views.prepare(name, &[], 1).await.expect("prepare");
    let mut first = commit(Checkpoint::START, 16, vec![counter("ok", 1, 13)]);
    first.views.push((
        "p".to_owned(),
        StoredView { parked: Some(parking(14, 3)), ..counter("p", 5, 12).1 },
    ));
    // An instance whose very first event failed: no event applied, parked all the same.
    first.views.push((
        "q".to_owned(),
        StoredView {
            view: Counter::default(),
            position: Position::START,
            parked: Some(parking(16, 3)),
        },
    ));
    first.parked_events = vec![
        ("p".to_owned(), recorded(14, 3)),
        ("p".to_owned(), recorded(15, 4)),
        ("q".to_owned(), recorded(16, 1)),
    ];
    views.commit(name, Slot::Live, first).await.expect("park");

    let p = views.get::<Counter>(name, "p").await.expect("get").expect("p exists");
    assert_eq!(p.parked, Some(parking(14, 3)), "a parked instance reads as parked, with why");
    assert_eq!(
        (p.view.count, p.position),
        (5, Position(12)),
        "its state is the one before the failure"
    );
    let parked = views.parked(name, Slot::Live).await.expect("parked");
    let listed: Vec<(&str, u64, u64, u32)> =
        parked.iter().map(|p| (p.view_id.as_str(), p.position.0, p.events, p.attempts)).collect();
    assert_eq!(
        listed,
        [("p", 14, 2, 3), ("q", 16, 1, 3)],
        "parked instances, oldest first, with counts"
    );
    assert_eq!(parked[0].error, "cannot apply 14");
    assert_eq!(parked[0].parked_at, parking(14, 3).parked_at);
    assert_eq!(views.record(name).await.expect("record").parked, 2);
    let waiting = views.parked_events(name, Slot::Live, "p").await.expect("parked events");
    assert_eq!(
        waiting,
        vec![recorded(14, 3), recorded(15, 4)],
        "waiting events come back exactly as stored"
    );

    // A stale runner's batch that would release, delete, park and skip is fenced, and
    // leaves none of it behind (PostgreSQL sends its writes before it knows the fence).
    let mut stale = commit(Checkpoint::START, 17, vec![counter("p", 9, 15)]);
    stale.views.push(("ok".to_owned(), StoredView::current(Counter::default(), Position::START)));
    stale.views.push((
        "r".to_owned(),
        StoredView { parked: Some(parking(17, 1)), ..counter("r", 1, 16).1 },
    ));
    stale.released = ids(&["p", "q"]);
    stale.parked_events = vec![("r".to_owned(), recorded(17, 2))];
    stale.skipped.push(SkippedEvent {
        view_id: "q".to_owned(),
        position: Position(16),
        event_type: "Sample".to_owned(),
        reason: "from a stale runner".to_owned(),
        skipped_at: parking(16, 1).parked_at,
    });
    let fenced = views.commit(name, Slot::Live, stale).await;
    assert!(matches!(fenced, Err(ViewError::Fenced { .. })), "a stale batch is fenced: {fenced:?}");
    let still: Vec<(String, u64)> = views
        .parked(name, Slot::Live)
        .await
        .expect("parked")
        .into_iter()
        .map(|p| (p.view_id, p.events))
        .collect();
    assert_eq!(still, [("p".to_owned(), 2), ("q".to_owned(), 1)], "nothing released or parked");
    assert_eq!(
        views.parked_events(name, Slot::Live, "p").await.expect("parked events"),
        vec![recorded(14, 3), recorded(15, 4)]
    );
    assert!(views.parked_events(name, Slot::Live, "r").await.expect("events").is_empty());
    assert!(views.get::<Counter>(name, "r").await.expect("get").is_none(), "nothing written");
    assert_eq!(views.get::<Counter>(name, "ok").await.expect("get"), Some(counter("ok", 1, 13).1));
    assert!(views.skipped(name).await.expect("skipped").is_empty(), "nothing skipped");
    assert_eq!(views.checkpoint(name, Slot::Live).await.expect("checkpoint"), at(16, 1));

    // Released with both events applied; q's only event skipped for good, so q goes.
    let mut release = commit(at(16, 1), 16, vec![counter("p", 9, 15)]);
    release.views.push(("q".to_owned(), StoredView::current(Counter::default(), Position::START)));
    release.released = ids(&["p", "q"]);
    release.skipped.push(SkippedEvent {
        view_id: "q".to_owned(),
        position: Position(16),
        event_type: "Sample".to_owned(),
        reason: "bad data from the import".to_owned(),
        skipped_at: parking(16, 1).parked_at,
    });
    views.commit(name, Slot::Live, release).await.expect("release");
    assert!(views.parked(name, Slot::Live).await.expect("parked").is_empty());
    assert!(views.parked_events(name, Slot::Live, "p").await.expect("events").is_empty());
    assert_eq!(views.get::<Counter>(name, "p").await.expect("get"), Some(counter("p", 9, 15).1));
    assert!(
        views.get::<Counter>(name, "q").await.expect("get").is_none(),
        "an instance at 0 is deleted"
    );
    let skipped = views.skipped(name).await.expect("skipped");
    assert_eq!(skipped.len(), 1);
    assert_eq!(
        (skipped[0].view_id.as_str(), skipped[0].position, skipped[0].reason.as_str()),
        ("q", Position(16), "bad data from the import")
    );
    assert_eq!(
        views.checkpoint(name, Slot::Live).await.expect("checkpoint"),
        at(16, 2),
        "a release moves the revision only"
    );
}

async fn tables_change_with_the_checkpoint_and_answer_queries<M: ViewManager>(views: &M) {
    let name = "tables";
    views.prepare(name, &[&ITEMS, &DAILY], 1).await.expect("prepare");
    views.prepare(name, &[&ITEMS, &DAILY], 1).await.expect("preparing again changes nothing");
    let mut first = Commit::<Counter>::new(Checkpoint::START, Position(10));
    for (i, owner) in ["ann", "bob", "ann", "ann", "bob"].iter().enumerate() {
        let i = i as i64;
        first.rows.push(RowChange::Upsert {
            table: &ITEMS,
            row: item(&format!("i{i}"), owner, i, i + 1),
        });
    }
    first.rows.extend([sale(1, "tea", 2, 900), sale(1, "cake", 1, 300), sale(2, "tea", 1, 450)]);
    views.commit(name, Slot::Live, first).await.expect("rows");

    let newest_of_ann = TableQuery {
        filters: vec![Filter {
            column: "owner",
            comparison: Comparison::Eq,
            value: Value::Text("ann".into()),
        }],
        order_by: vec!["at", "id"],
        descending: true,
        after: None,
        limit: Some(2),
    };
    let page = views.select(&ITEMS, &newest_of_ann).await.expect("select");
    assert_eq!(
        page,
        vec![item("i3", "ann", 3, 4), item("i2", "ann", 2, 3)],
        "filtered, newest first, limited"
    );
    let next = TableQuery {
        after: Some(vec![time(2, 250), Value::Text("i2".into())]),
        ..newest_of_ann.clone()
    };
    assert_eq!(
        views.select(&ITEMS, &next).await.expect("select"),
        vec![item("i0", "ann", 0, 1)],
        "the next page by key"
    );
    let window = TableQuery {
        filters: vec![
            Filter { column: "at", comparison: Comparison::Ge, value: time(1, 250) },
            Filter { column: "at", comparison: Comparison::Lt, value: time(4, 250) },
        ],
        order_by: vec!["at", "id"],
        descending: false,
        after: None,
        limit: None,
    };
    let ids_of =
        |rows: Vec<Vec<Value>>| rows.into_iter().map(|row| row[0].clone()).collect::<Vec<_>>();
    assert_eq!(
        ids_of(views.select(&ITEMS, &window).await.expect("select")),
        vec![Value::Text("i1".into()), Value::Text("i2".into()), Value::Text("i3".into())],
        "a time window, oldest first"
    );

    // A fenced commit writes no rows.
    let mut fenced = Commit::<Counter>::new(Checkpoint::START, Position(11));
    fenced.rows.push(RowChange::Delete { table: &ITEMS, key: vec![Value::Text("i0".into())] });
    fenced.rows.push(sale(1, "tea", 100, 100));
    assert!(matches!(views.commit(name, Slot::Live, fenced).await, Err(ViewError::Fenced { .. })));

    let mut second = Commit::<Counter>::new(at(10, 1), Position(12));
    second.rows.push(RowChange::Delete { table: &ITEMS, key: vec![Value::Text("i0".into())] });
    second.rows.push(RowChange::Upsert { table: &ITEMS, row: item("i1", "ann", 1, 20) });
    second.rows.extend([sale(1, "cake", -1, -300), sale(2, "tea", 2, 900)]);
    views.commit(name, Slot::Live, second).await.expect("more rows");
    let all_ann = TableQuery { limit: None, ..newest_of_ann };
    assert_eq!(
        ids_of(views.select(&ITEMS, &all_ann).await.expect("select")),
        vec![Value::Text("i3".into()), Value::Text("i2".into()), Value::Text("i1".into())],
        "a deleted row is gone and a replaced one moved owner"
    );
    let sales = TableQuery { order_by: vec!["day", "sku"], ..TableQuery::default() };
    assert_eq!(
        views.select(&DAILY, &sales).await.expect("select"),
        vec![
            vec![day(1), Value::Text("tea".into()), Value::Integer(2), Value::Integer(900)],
            vec![day(2), Value::Text("tea".into()), Value::Integer(3), Value::Integer(1350)],
        ],
        "sums add up, and a row whose sums reach zero is removed"
    );
}

async fn a_rebuild_fills_apart_and_swaps_in_at_once<M: ViewManager>(views: &M) {
    let name = "rebuilt";
    let tables = [&REBUILT];
    views.prepare(name, &tables, 1).await.expect("prepare");
    let mut live =
        commit(Checkpoint::START, 20, vec![counter("old", 1, 10), counter("kept", 1, 11)]);
    live.rows.push(RowChange::Upsert {
        table: &REBUILT,
        row: vec![Value::Text("old".into()), Value::Integer(1)],
    });
    views.commit(name, Slot::Live, live).await.expect("live");
    let live_at = at(20, 1);

    let started = Utc::now();
    let rebuild_at = views.begin_rebuild(name, &tables, 1, started).await.expect("begin");
    assert_eq!(rebuild_at.position, Position::START);
    assert!(
        matches!(
            views.begin_rebuild(name, &tables, 1, started).await,
            Err(ViewError::RebuildInProgress(_))
        ),
        "one rebuild at a time"
    );
    let record = views.record(name).await.expect("record");
    let rebuild = record.rebuild.expect("a rebuild is recorded");
    assert_eq!((rebuild.checkpoint, rebuild.error, rebuild.version), (rebuild_at, None, 1));
    assert_eq!(rebuild.started_at.timestamp_micros(), started.timestamp_micros());

    let mut filled = commit(rebuild_at, 25, vec![counter("kept", 2, 11), counter("new", 3, 24)]);
    filled.views.push((
        "sick".to_owned(),
        StoredView { parked: Some(parking(22, 3)), ..counter("sick", 1, 21).1 },
    ));
    filled.parked_events.push(("sick".to_owned(), recorded(22, 2)));
    filled.rows.push(RowChange::Upsert {
        table: &REBUILT,
        row: vec![Value::Text("new".into()), Value::Integer(3)],
    });
    views.commit(name, Slot::Rebuild, filled).await.expect("rebuild batch");
    let rebuilt_at = rebuild_at.next(Position(25));

    assert_eq!(
        views.get::<Counter>(name, "kept").await.expect("get"),
        Some(counter("kept", 1, 11).1),
        "queries read the live views meanwhile"
    );
    assert!(views.get::<Counter>(name, "new").await.expect("get").is_none());
    let everything = TableQuery { order_by: vec!["id"], ..TableQuery::default() };
    assert_eq!(views.select(&REBUILT, &everything).await.expect("select").len(), 1);
    assert!(views.parked(name, Slot::Live).await.expect("parked").is_empty());

    assert!(
        matches!(
            views.finish_rebuild(name, &tables, rebuilt_at, at(19, 1)).await,
            Err(ViewError::Fenced { .. })
        ),
        "the swap is fenced on the live checkpoint"
    );
    let swapped = views.finish_rebuild(name, &tables, rebuilt_at, live_at).await.expect("swap");
    assert_eq!(swapped, at(25, 2));
    assert_eq!(views.checkpoint(name, Slot::Live).await.expect("checkpoint"), swapped);
    assert!(
        views.get::<Counter>(name, "old").await.expect("get").is_none(),
        "live instances the rebuild lacks are gone"
    );
    assert_eq!(
        views.get::<Counter>(name, "kept").await.expect("get"),
        Some(counter("kept", 2, 11).1)
    );
    assert_eq!(
        views.select(&REBUILT, &everything).await.expect("select"),
        vec![vec![Value::Text("new".into()), Value::Integer(3)]],
        "the rebuilt table replaced the live one"
    );
    let parked = views.parked(name, Slot::Live).await.expect("parked");
    assert_eq!(
        parked.iter().map(|p| (p.view_id.as_str(), p.events)).collect::<Vec<_>>(),
        [("sick", 1)]
    );
    assert_eq!(
        views.parked_events(name, Slot::Live, "sick").await.expect("events"),
        vec![recorded(22, 2)]
    );
    assert_eq!(views.record(name).await.expect("record").rebuild, None, "the rebuild is over");

    let again = views.begin_rebuild(name, &tables, 1, Utc::now()).await.expect("begin again");
    views.fail_rebuild(name, again, "rebuild stopped at position 3").await.expect("fail");
    let failed = views.record(name).await.expect("record").rebuild.expect("still recorded");
    assert_eq!(failed.error.as_deref(), Some("rebuild stopped at position 3"));
    assert_eq!(
        views.checkpoint(name, Slot::Live).await.expect("checkpoint"),
        swapped,
        "a failed rebuild leaves live alone"
    );
    let again = views
        .begin_rebuild(name, &tables, 1, Utc::now())
        .await
        .expect("a failed rebuild can be begun again");
    assert!(
        views.load::<Counter>(name, Slot::Rebuild, &ids(&["new"])).await.expect("load").is_empty(),
        "it starts empty"
    );

    // A later version of the projection changed the table: its rebuild makes it anew.
    views.fail_rebuild(name, again, "superseded").await.expect("fail");
    let changed = [&REBUILT_V2];
    let begun =
        views.begin_rebuild(name, &changed, 2, Utc::now()).await.expect("begin with the new table");
    let mut filled = Commit::<Counter>::new(begun, Position(25));
    filled.rows.push(RowChange::Upsert {
        table: &REBUILT_V2,
        row: vec![Value::Text("new".into()), Value::Integer(4), Value::Text("labelled".into())],
    });
    views.commit(name, Slot::Rebuild, filled).await.expect("rebuild batch");
    let live_now = views.checkpoint(name, Slot::Live).await.expect("checkpoint");
    assert_eq!(
        views.record(name).await.expect("record").rebuild.map(|r| r.version),
        Some(2),
        "the rebuild says which version runs it"
    );
    // A definition that stores other instances or tables declares a new version; the
    // view store says which version built the live views, so that a node can tell.
    assert_eq!(views.prepare(name, &changed, 2).await.expect("prepare"), 1, "built by version 1");
    views.finish_rebuild(name, &changed, begun.next(Position(25)), live_now).await.expect("swap");
    assert_eq!(
        views.record(name).await.expect("record").version,
        2,
        "the swap records the rebuild's version"
    );
    assert_eq!(views.prepare(name, &changed, 2).await.expect("prepare"), 2);
    let labelled = TableQuery { order_by: vec!["id"], ..TableQuery::default() };
    assert_eq!(
        views.select(&REBUILT_V2, &labelled).await.expect("select the new columns"),
        vec![vec![Value::Text("new".into()), Value::Integer(4), Value::Text("labelled".into())]],
        "the swapped-in table has the new spec's columns"
    );
    views
        .begin_rebuild(name, &changed, 2, Utc::now())
        .await
        .expect("one more, left running for the reopening");
}

async fn racing_commits_let_exactly_one_win<M: ViewManager>(views: &Arc<M>) {
    let from = views.checkpoint("counters", Slot::Live).await.expect("checkpoint");
    let mut racers = Vec::new();
    for n in 0..8u64 {
        let views = views.clone();
        racers.push(tokio::spawn(async move {
            let to = from.position.0 + 1 + n;
            views
                .commit("counters", Slot::Live, commit(from, to, vec![counter("race", n, to)]))
                .await
        }));
    }
    let mut wins = 0;
    for racer in racers {
        match racer.await.expect("racer task") {
            Ok(()) => wins += 1,
            Err(ViewError::Fenced { .. }) => {}
            Err(other) => panic!("a losing racer must be fenced, got {other}"),
        }
    }
    assert_eq!(wins, 1, "exactly one runner commits from the same checkpoint");
    let checkpoint = views.checkpoint("counters", Slot::Live).await.expect("checkpoint");
    let race = views.get::<Counter>("counters", "race").await.expect("get").expect("exists");
    assert_eq!(
        race.position, checkpoint.position,
        "the winner's views and checkpoint went together"
    );
}

async fn reopened_manager_keeps_everything<M: ViewManager>(views: &M) {
    let a = views.get::<Counter>("counters", "a").await.expect("get").expect("a survives");
    assert_eq!(a.view.count, 7);
    assert!(
        views.checkpoint("counters", Slot::Live).await.expect("checkpoint").position > Position(12)
    );
    assert_eq!(views.checkpoint("others", Slot::Live).await.expect("checkpoint"), at(2, 1));
    assert_eq!(
        views.skipped("parking").await.expect("skipped").len(),
        1,
        "skips are kept for good"
    );
    let sales = TableQuery { order_by: vec!["day", "sku"], ..TableQuery::default() };
    assert_eq!(views.select(&DAILY, &sales).await.expect("select").len(), 2, "tables survive");
    let record = views.record("rebuilt").await.expect("record");
    let rebuild = record.rebuild.expect("a rebuild in progress survives");
    // A second swap of the same tables: the first left no names behind that clash.
    let mut filled = Commit::<Counter>::new(rebuild.checkpoint, Position(26));
    filled.rows.push(RowChange::Upsert {
        table: &REBUILT_V2,
        row: vec![Value::Text("again".into()), Value::Integer(5), Value::Null],
    });
    views.commit("rebuilt", Slot::Rebuild, filled).await.expect("rebuild batch");
    let rebuilt = rebuild.checkpoint.next(Position(26));
    views
        .finish_rebuild("rebuilt", &[&REBUILT_V2], rebuilt, record.checkpoint)
        .await
        .expect("swap");
    let everything = TableQuery { order_by: vec!["id"], ..TableQuery::default() };
    assert_eq!(
        views.select(&REBUILT_V2, &everything).await.expect("select"),
        vec![vec![Value::Text("again".into()), Value::Integer(5), Value::Null]]
    );
    crate::projection::parked_work_survived_reopening(views).await;
}
