//! The view manager contract, projection half: projections running for real on the view
//! manager under test (events in the in-memory store) park a failing instance and nothing
//! else, let an operator retry or skip it, keep parked work across a change of owner and a
//! restart, and rebuild beside live processing.

use std::sync::Arc;
use std::time::Duration;

use strata::table::{Comparison, Filter, TableQuery};
use strata::{
    ControlError, EventStore, ExpectedVersion, InMemoryEventStore, NewEvent, Position,
    ProjectionHandle, ProjectionRunner, ProjectionState, Slot, StreamId, Value, Version,
    ViewManager,
};

use crate::leases::SharedLeases;
use crate::tally::{self, TALLY, TALLY_ROWS, TALLY_SUMS, Tally};

/// How long a projection may take to reach what a check waits for.
const PATIENCE: Duration = Duration::from_secs(20);

async fn append(store: &InMemoryEventStore, id: &str, event: NewEvent) -> Position {
    let stream = StreamId::new(TALLY, id);
    let outcome = store.append(&stream, ExpectedVersion::Any, vec![event]).await.expect("append");
    outcome.last_position
}

async fn reach(handle: &ProjectionHandle, position: Position) {
    if let Err(reached) = handle.wait_for(position, PATIENCE).await {
        panic!("{} reached only {reached}, not {position}", handle.name());
    }
}

async fn tally<M: ViewManager>(views: &M, projection: &str, id: &str) -> strata::StoredView<Tally> {
    views
        .get::<Tally>(projection, id)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("{projection}/{id} exists"))
}

async fn row_of<M: ViewManager>(views: &M, id: &str) -> Option<Vec<Value>> {
    let query = TableQuery {
        filters: vec![Filter {
            column: "id",
            comparison: Comparison::Eq,
            value: Value::Text(id.to_owned()),
        }],
        ..TableQuery::default()
    };
    views.select(&TALLY_ROWS, &query).await.expect("select").pop()
}

async fn sum_of_all<M: ViewManager>(views: &M) -> (i64, i64) {
    let rows = views.select(&TALLY_SUMS, &TableQuery::default()).await.expect("select");
    rows.first()
        .map_or((0, 0), |row| (row[1].as_integer().unwrap_or(0), row[2].as_integer().unwrap_or(0)))
}

/// Waits until the projection's status satisfies `done`.
async fn until<F: Fn(&strata::ProjectionStatus) -> bool>(
    handle: &ProjectionHandle,
    what: &str,
    done: F,
) -> strata::ProjectionStatus {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = handle.status().await.expect("status");
        if done(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never {what}: {status:?}",
            handle.name()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A poison event parks only its instance while the rest and the checkpoint move on; an
/// undecodable one too; later events wait with them; retry after a fix applies them once;
/// skip drops the failing event for good and applies the rest; a rebuild honours the skip.
pub(crate) async fn projections_park_retry_skip_and_rebuild<M: ViewManager>(views: &Arc<M>) {
    let name = "tally_parking";
    let token = uuid::Uuid::now_v7().to_string();
    let store = Arc::new(InMemoryEventStore::new());
    append(&store, "t1", tally::added(1)).await;
    append(&store, "t2", tally::added(2)).await;
    let poison = append(&store, "t1", tally::poisoned(10, &token)).await;
    append(&store, "t2", tally::added(3)).await;
    append(&store, "t1", tally::added(4)).await;
    let garbage = append(&store, "t3", tally::undecodable()).await;
    let head = append(&store, "t3", tally::added(5)).await;

    let handle = ProjectionRunner::new("contract-node").spawn(
        tally::projection(name, true),
        store.clone(),
        views.clone(),
    );
    reach(&handle, head).await;
    assert_eq!(tally(views.as_ref(), name, "t2").await.view.total, 5, "other instances move on");
    let t1 = tally(views.as_ref(), name, "t1").await;
    assert_eq!(
        (t1.view.total, t1.position),
        (1, Position(1)),
        "the parked instance keeps its state before the failure"
    );
    assert_eq!(
        t1.parked.as_ref().map(|p| p.position),
        Some(poison),
        "and reads as parked at the failing event"
    );
    let parked = handle.parked().await.expect("parked");
    let listed: Vec<(&str, Position, u64)> =
        parked.iter().map(|p| (p.view_id.as_str(), p.position, p.events)).collect();
    assert_eq!(
        listed,
        [("t1", poison, 2), ("t3", garbage, 2)],
        "each parked instance with every later event of its own"
    );
    assert!(parked[0].error.contains(&token), "{}", parked[0].error);
    assert!(parked[1].error.contains("does not decode"), "{}", parked[1].error);
    assert_eq!(parked[0].attempts, strata::projection::MAX_ATTEMPTS);
    assert_eq!(
        row_of(views.as_ref(), "t1").await.map(|row| row[1].clone()),
        Some(Value::Integer(1))
    );
    assert_eq!(
        row_of(views.as_ref(), "t3").await,
        None,
        "an instance that applied nothing has no rows"
    );
    assert_eq!(sum_of_all(views.as_ref()).await, (6, 2));
    let status = handle.status().await.expect("status");
    assert_eq!(
        (status.position, status.lag_events, status.parked, status.status),
        (head, 0, 2, ProjectionState::Running)
    );

    // Live events keep coming: the parked instance collects its own, the rest apply.
    append(&store, "t2", tally::added(1)).await;
    let head = append(&store, "t1", tally::added(100)).await;
    reach(&handle, head).await;
    assert_eq!(tally(views.as_ref(), name, "t2").await.view.total, 6);
    assert_eq!(handle.parked().await.expect("parked")[0].events, 3);

    // Retry before the fix parks again with the new attempt; after it, applies each once.
    let again = handle.retry("t1").await.expect("retry");
    let still = again.parked.expect("still parked");
    assert_eq!(
        (still.position, still.attempts, still.events),
        (poison, strata::projection::MAX_ATTEMPTS + 1, 3)
    );
    tally::fix(&token);
    let released = handle.retry("t1").await.expect("retry");
    assert_eq!(released.parked, None);
    assert_eq!(released.position, head);
    let t1 = tally(views.as_ref(), name, "t1").await;
    assert_eq!(
        (t1.view.total, t1.view.events, t1.parked),
        (115, 4, None),
        "every waiting event applied once, in order"
    );
    assert_eq!(
        row_of(views.as_ref(), "t1").await.map(|row| row[1].clone()),
        Some(Value::Integer(115)),
        "rows follow"
    );
    assert!(matches!(handle.retry("t1").await, Err(ControlError::NotParked { .. })));

    // The undecodable event never applies: skip it, and the rest applies.
    let skipped = handle.skip("t3", "written by a broken importer").await.expect("skip");
    assert_eq!(
        (skipped.parked, skipped.view),
        (None, Some(serde_json::json!({"total": 5, "events": 1})))
    );
    let recorded = handle.skipped().await.expect("skipped");
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        (recorded[0].view_id.as_str(), recorded[0].position, recorded[0].event_type.as_str()),
        ("t3", garbage, "Added")
    );
    assert_eq!(recorded[0].reason, "written by a broken importer");
    assert!(handle.parked().await.expect("parked").is_empty());
    assert_eq!(sum_of_all(views.as_ref()).await, (126, 3));

    // The runner, fenced by the operator's commits, goes on without doubling anything.
    let head = append(&store, "t3", tally::added(1)).await;
    reach(&handle, head).await;
    assert_eq!(tally(views.as_ref(), name, "t3").await.view.total, 6);

    // A rebuild reproduces the same views from zero, dropping the skipped event again.
    handle.rebuild().await.expect("rebuild");
    let done = until(&handle, "finished its rebuild", |s| {
        s.status == ProjectionState::Running && s.rebuild.is_none()
    })
    .await;
    assert_eq!((done.position, done.parked), (head, 0));
    for (id, total) in [("t1", 115), ("t2", 6), ("t3", 6)] {
        assert_eq!(
            tally(views.as_ref(), name, id).await.view.total,
            total,
            "{id} after the rebuild"
        );
    }
    assert_eq!(
        sum_of_all(views.as_ref()).await,
        (127, 3),
        "the rebuilt tables replaced the live ones"
    );
    handle.stop();
}

/// Parked work is stored, not held by the runner: a new owner after a handover keeps
/// collecting the parked instance's events, and a restart finds them all.
pub(crate) async fn parked_work_survives_a_lease_handover<M: ViewManager>(views: &Arc<M>) {
    let name = "tally_handover";
    let store = Arc::new(InMemoryEventStore::new());
    let leases = SharedLeases::new();
    let start = |node: &str| {
        ProjectionRunner::new(node).spawn_leased(
            tally::projection(name, false),
            store.clone(),
            views.clone(),
            leases.node(node),
        )
    };
    let (a, b) = (start("a"), start("b"));
    append(&store, "h1", tally::undecodable()).await;
    let head = append(&store, "h2", tally::added(1)).await;
    reach(&a, head).await;
    reach(&b, head).await;
    assert_eq!(a.parked().await.expect("parked").len(), 1);

    let first = leases.holder(name).expect("someone runs it");
    let (holder, survivor) = if first == "a" { (&a, &b) } else { (&b, &a) };
    holder.stop();
    leases.kill_holder(name);
    append(&store, "h1", tally::added(7)).await;
    let head = append(&store, "h2", tally::added(2)).await;
    reach(survivor, head).await;
    assert_ne!(leases.holder(name), Some(first), "the other node took over");
    assert_eq!(tally(views.as_ref(), name, "h2").await.view.total, 3);
    let parked = survivor.parked().await.expect("parked");
    assert_eq!(
        parked.iter().map(|p| (p.view_id.as_str(), p.events)).collect::<Vec<_>>(),
        [("h1", 2)],
        "the new owner kept parking"
    );
    survivor.stop();
}

/// After the manager is reopened (a restart): the handover test's parked instance and its
/// two waiting events are still there.
pub(crate) async fn parked_work_survived_reopening<M: ViewManager>(views: &M) {
    let parked = views.parked("tally_handover", Slot::Live).await.expect("parked");
    assert_eq!(
        parked.iter().map(|p| (p.view_id.as_str(), p.events)).collect::<Vec<_>>(),
        [("h1", 2)]
    );
    let waiting = views.parked_events("tally_handover", Slot::Live, "h1").await.expect("events");
    assert_eq!(waiting.iter().map(|e| e.version).collect::<Vec<_>>(), [Version(1), Version(2)]);
}

/// A rebuild that meets an event live processing did not park stops, says where, and leaves
/// the live views serving; fixed, the next rebuild swaps in.
pub(crate) async fn a_failing_rebuild_leaves_the_live_views_serving<M: ViewManager>(
    views: &Arc<M>,
) {
    let name = "tally_failing_rebuild";
    let token = uuid::Uuid::now_v7().to_string();
    tally::fix(&token);
    let store = Arc::new(InMemoryEventStore::new());
    append(&store, "r1", tally::added(1)).await;
    let regressed = append(&store, "r1", tally::poisoned(2, &token)).await;
    let head = append(&store, "r2", tally::added(3)).await;
    let handle = ProjectionRunner::new("contract-node").spawn(
        tally::projection(name, false),
        store.clone(),
        views.clone(),
    );
    reach(&handle, head).await;

    tally::break_again(&token);
    handle.rebuild().await.expect("rebuild");
    let failed =
        until(&handle, "failed its rebuild", |s| s.status == ProjectionState::Failed).await;
    let error = failed.error.unwrap_or_default();
    assert!(error.contains(&format!("position {regressed}")) && error.contains("r1"), "{error}");
    assert_eq!(
        tally(views.as_ref(), name, "r1").await.view.total,
        3,
        "the live views keep serving"
    );
    assert_eq!(failed.position, head);

    tally::fix(&token);
    handle.rebuild().await.expect("a failed rebuild can be asked for again");
    until(&handle, "finished its rebuild", |s| {
        s.status == ProjectionState::Running && s.rebuild.is_none()
    })
    .await;
    assert_eq!(tally(views.as_ref(), name, "r1").await.view.total, 3);
    handle.stop();
}

/// The audit projection finds every event of one request, one stream or one user, newest
/// first and paged, from its table and the store, including events no view can decode.
pub(crate) async fn audits_find_events_by_request_stream_and_user<M: ViewManager>(views: &Arc<M>) {
    use strata::{AuditQuery, AuditSubject};
    let store = Arc::new(InMemoryEventStore::new());
    let base = chrono::DateTime::from_timestamp(1_900_000_000, 0).expect("a time");
    let mut positions = Vec::new();
    for (n, (id, request, user)) in [
        ("a1", "checkout", "ada"),
        ("a2", "checkout", "grace"),
        ("a1", "checkout", "ada"),
        ("a3", "other", "ada"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut event = if n == 1 { tally::undecodable() } else { tally::added(1) };
        event.metadata.correlation_id = request.to_owned();
        event.metadata.user = Some(user.to_owned());
        event.metadata.recorded_at = base + chrono::Duration::seconds(n as i64);
        positions.push(append(&store, id, event).await);
    }
    let handle = ProjectionRunner::new("contract-node").spawn(
        strata::audit::projection::<tally::TallyEvent>(),
        store.clone(),
        views.clone(),
    );
    reach(&handle, positions[3]).await;
    let ask = |subject| AuditQuery { subject, from: None, to: None, before: None, limit: 100 };
    let found =
        |events: Vec<strata::RecordedEvent>| events.iter().map(|e| e.position).collect::<Vec<_>>();
    let audit = |query: AuditQuery| {
        let (store, views) = (store.clone(), views.clone());
        async move { strata::audit::audit(store.as_ref(), views.as_ref(), &query).await.expect("audit") }
    };

    let request = audit(ask(AuditSubject::Correlation("checkout".into()))).await;
    assert_eq!(
        found(request.clone()),
        [positions[2], positions[1], positions[0]],
        "a request's events, newest first"
    );
    assert_eq!(
        request[1].payload,
        tally::undecodable().payload,
        "events come as stored, decodable or not"
    );
    let stream = audit(ask(AuditSubject::Stream(StreamId::new(TALLY, "a1")))).await;
    assert_eq!(found(stream), [positions[2], positions[0]], "a stream's events");
    assert_eq!(
        found(audit(ask(AuditSubject::User("grace".into()))).await),
        [positions[1]],
        "a user's events"
    );
    let first_page = AuditQuery { limit: 2, ..ask(AuditSubject::Correlation("checkout".into())) };
    let first = audit(first_page.clone()).await;
    let next = AuditQuery { before: first.last().map(|e| e.position), ..first_page };
    assert_eq!(found(audit(next).await), [positions[0]], "the next page starts below the last");
    let window = AuditQuery {
        from: Some(base + chrono::Duration::seconds(1)),
        to: Some(base + chrono::Duration::seconds(2)),
        ..ask(AuditSubject::Correlation("checkout".into()))
    };
    assert_eq!(found(audit(window).await), [positions[1]], "from is inclusive, to exclusive");
    assert!(audit(ask(AuditSubject::User("nobody".into()))).await.is_empty());
    handle.stop();
}

/// What an operator does on the live views while a rebuild runs is kept: a skip of an event
/// the rebuild had already parked is replayed into the rebuild before it is swapped in, so
/// the instance does not come back parked.
pub(crate) async fn operator_actions_during_a_rebuild_are_kept<M: ViewManager>(views: &Arc<M>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let name = "tally_operated_rebuild";
    let token = uuid::Uuid::now_v7().to_string();
    let store = Arc::new(InMemoryEventStore::new());
    append(&store, "o1", tally::added(1)).await;
    let poison = append(&store, "o1", tally::poisoned(10, &token)).await;
    append(&store, "o1", tally::added(2)).await;
    let head = append(&store, "o2", tally::added(5)).await;
    let live = ProjectionRunner::new("contract-node").spawn(
        tally::projection(name, false),
        store.clone(),
        views.clone(),
    );
    reach(&live, head).await;
    assert_eq!(live.parked().await.expect("parked").len(), 1);
    // From here on an operator acts and an offline rebuild runs; the runner stays out of it.
    live.stop();

    let (asked, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let operator = {
        let (asked, done) = (asked.clone(), done.clone());
        tokio::spawn(async move {
            while !asked.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let skipped = live.skip("o1", "the poisoned amount was a test").await.expect("skip");
            done.store(true, Ordering::SeqCst);
            skipped
        })
    };
    // Each event is a batch of the rebuild; once it has parked o1, the operator skips on
    // live, and the rebuild waits for that before it goes on to its swap.
    let pause = |position: Position, _head: Position| {
        if position >= poison && !asked.swap(true, Ordering::SeqCst) {
            let deadline = std::time::Instant::now() + PATIENCE;
            while !done.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(done.load(Ordering::SeqCst), "the operator's skip came during the rebuild");
        }
    };
    let rebuilt = tally::projection(name, false)
        .with_rebuild_batch_size(1)
        .rebuild(store.clone(), views.clone(), &pause)
        .await;
    assert_eq!(rebuilt.expect("the rebuild swaps in"), head);
    let skipped = operator.await.expect("operator task");
    assert_eq!(
        (skipped.parked, skipped.position),
        (None, Position(3)),
        "live applied the rest at once"
    );
    let o1 = tally(views.as_ref(), name, "o1").await;
    assert_eq!((o1.view.total, o1.parked), (3, None), "the skip survived the swap");
    assert!(views.parked(name, Slot::Live).await.expect("parked").is_empty());
}

/// Definitions move forward only, on a rolling deploy too: a node still on an older version
/// leaves a newer version's rebuild alone; a node with a newer version runs it, supersedes an
/// older version's rebuild and rebuilds the views; a node rolled back to an older version
/// leaves newer views alone and says so, until an operator rebuilds them with its version.
pub(crate) async fn rebuilds_follow_the_newest_definition<M: ViewManager>(views: &Arc<M>) {
    let name = "tally_versions";
    let store = Arc::new(InMemoryEventStore::new());
    let start = |version: u32| {
        ProjectionRunner::new("contract-node").spawn(
            tally::projection(name, false).with_version(version),
            store.clone(),
            views.clone(),
        )
    };
    let record = || async { views.record(name).await.expect("record") };
    let begin = |version: u32| async move {
        views.begin_rebuild(name, &[], version, chrono::Utc::now()).await.expect("begin")
    };
    let swapped = |handle| {
        until(handle, "swapped its rebuild in", |s| {
            s.status == ProjectionState::Running && s.rebuild.is_none()
        })
    };

    let head = append(&store, "v1", tally::added(1)).await;
    let first = start(1);
    reach(&first, head).await;
    first.stop();

    // A node of version 2 began its rebuild and died before the swap; one still on version
    // 1 runs the projection. Its first look for a rebuild comes before its first batch.
    begin(2).await;
    let old = start(1);
    let head = append(&store, "v1", tally::added(2)).await;
    reach(&old, head).await;
    let waiting = record().await.rebuild.expect("version 2's rebuild is still there");
    assert_eq!(
        (waiting.version, waiting.checkpoint.position, waiting.error),
        (2, Position::START, None),
        "an older node leaves a newer version's rebuild alone"
    );
    assert_eq!(record().await.version, 1);
    old.stop();

    let second = start(2);
    swapped(&second).await;
    assert_eq!(record().await.version, 2, "version 2 ran its rebuild");
    assert_eq!(tally(views.as_ref(), name, "v1").await.view.total, 3);
    second.stop();

    // An operator's rebuild under version 2, cut short by the deploy of version 3.
    begin(2).await;
    let third = start(3);
    swapped(&third).await;
    assert_eq!(record().await.version, 3, "version 3 superseded it and rebuilt the views");
    third.stop();

    // Rolled back to version 1.
    let back = start(1);
    let head = append(&store, "v2", tally::added(4)).await;
    let aside =
        until(&back, "said why it stands aside", |s| s.status == ProjectionState::Failed).await;
    let error = aside.error.unwrap_or_default();
    assert!(error.contains("version 3") && error.contains("runs version 1"), "{error}");
    assert!(
        views.get::<Tally>(name, "v2").await.expect("get").is_none(),
        "older code writes nothing into a newer definition's views"
    );
    back.rebuild().await.expect("an operator brings them back to version 1");
    swapped(&back).await;
    reach(&back, head).await;
    assert_eq!(record().await.version, 1);
    assert_eq!(tally(views.as_ref(), name, "v2").await.view.total, 4);
    back.stop();
}

/// Views kept beside an older copy of the log (a store restored from a backup) are ahead of
/// it: the projection says so rather than follow from a position the log has not reached,
/// and a rebuild brings the views back in line with the log.
pub(crate) async fn views_ahead_of_the_log_are_rebuilt_from_it<M: ViewManager>(views: &Arc<M>) {
    let name = "tally_ahead";
    let start = |store: &Arc<InMemoryEventStore>| {
        ProjectionRunner::new("contract-node").spawn(
            tally::projection(name, false),
            store.clone(),
            views.clone(),
        )
    };
    let longer = Arc::new(InMemoryEventStore::new());
    append(&longer, "x1", tally::added(1)).await;
    append(&longer, "x1", tally::added(2)).await;
    let head = append(&longer, "x2", tally::added(4)).await;
    let first = start(&longer);
    reach(&first, head).await;
    first.stop();

    let restored = Arc::new(InMemoryEventStore::new());
    let head = append(&restored, "x1", tally::added(1)).await;
    let handle = start(&restored);
    let ahead = until(&handle, "said its views are ahead of the log", |s| {
        s.status == ProjectionState::Failed
    })
    .await;
    let error = ahead.error.unwrap_or_default();
    assert!(error.contains("beyond the event log's head"), "{error}");
    handle.rebuild().await.expect("rebuild");
    until(&handle, "swapped its rebuild in", |s| {
        s.status == ProjectionState::Running && s.rebuild.is_none()
    })
    .await;
    assert_eq!(views.checkpoint(name, Slot::Live).await.expect("checkpoint").position, head);
    assert_eq!(tally(views.as_ref(), name, "x1").await.view.total, 1);
    assert!(views.get::<Tally>(name, "x2").await.expect("get").is_none(), "the log has no x2");
    let head = append(&restored, "x1", tally::added(8)).await;
    reach(&handle, head).await;
    assert_eq!(tally(views.as_ref(), name, "x1").await.view.total, 9, "and it follows the log");
    handle.stop();
}
