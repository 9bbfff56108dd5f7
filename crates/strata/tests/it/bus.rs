//! The command bus: emit/apply, atomic commands, conflicts, If-Match and serialization.

use std::sync::Arc;
use std::time::Duration;

use strata::bus::CommandContext;
use strata::testing::given;
use strata::{
    BusConfig, CommandBus, CommandError, EventStore, ExpectedVersion, InMemoryEventStore, StreamId,
    Version,
};
use strata_testkit::sample_event;

use crate::counter::{Counter, CounterCommand, CounterError, CounterEvent};

fn bus() -> CommandBus<InMemoryEventStore> {
    node(&Arc::new(InMemoryEventStore::new()))
}

/// A bus of its own, as another node has, over `store`.
fn node(store: &Arc<InMemoryEventStore>) -> CommandBus<InMemoryEventStore> {
    CommandBus::new(store.clone(), BusConfig::default())
}

fn context() -> CommandContext {
    CommandContext::new("test-correlation")
}

fn open(owner: &str) -> CounterCommand {
    CounterCommand::Open { owner: owner.to_owned() }
}

#[test]
fn emitted_events_are_applied_at_once_to_the_in_flight_state() {
    given::<Counter>([CounterEvent::Opened { owner: "o".into() }])
        .when(CounterCommand::Increment { amounts: vec![60, 30] })
        .then([CounterEvent::Incremented { by: 60 }, CounterEvent::Incremented { by: 30 }]);
    given::<Counter>([CounterEvent::Opened { owner: "o".into() }])
        .when(CounterCommand::Increment { amounts: vec![60, 50] })
        .then_error(CounterError::OverLimit);
}

#[tokio::test]
async fn a_refused_command_appends_none_of_its_events() {
    let bus = bus();
    bus.execute::<Counter>("o.c", open("o"), &context()).await.unwrap();
    let refused = bus
        .execute::<Counter>("o.c", CounterCommand::Increment { amounts: vec![60, 50] }, &context())
        .await;
    assert!(matches!(refused, Err(CommandError::Rejected(CounterError::OverLimit))));
    let stream = StreamId::new("counter", "o.c");
    let stored = bus.store().read_stream(&stream, Version::NONE).await.unwrap();
    assert_eq!(stored.len(), 1, "the first increment of the refused command is not stored");
    // The cached state was not touched by the refused command either.
    let ok = bus
        .execute::<Counter>("o.c", CounterCommand::Increment { amounts: vec![100] }, &context())
        .await
        .unwrap();
    assert_eq!(ok.version, Version(2));
}

#[tokio::test]
async fn events_carry_the_command_metadata() {
    let bus = bus();
    let mut ctx = context();
    ctx.user = Some("alice".into());
    bus.execute::<Counter>("o.c", open("o"), &ctx).await.unwrap();
    let stored =
        bus.store().read_stream(&StreamId::new("counter", "o.c"), Version::NONE).await.unwrap();
    let metadata = &stored[0].metadata;
    assert_eq!(metadata.correlation_id, "test-correlation");
    assert_eq!(metadata.causation_id.as_deref(), Some(ctx.command_id.as_str()));
    assert_eq!(metadata.user.as_deref(), Some("alice"));
    assert_eq!(metadata.event_id.get_version_num(), 7, "event ids are UUID v7");
}

#[tokio::test]
async fn a_writer_outside_the_bus_is_caught_by_the_version_check_and_retried() {
    let bus = bus();
    bus.execute::<Counter>("o.c", open("o"), &context()).await.unwrap();
    // Another process appends behind the bus's back: its cached counter is now stale.
    let stream = StreamId::new("counter", "o.c");
    let foreign = CounterEvent::Incremented { by: 90 };
    let new_event = strata::DomainEvent::to_new_event(&foreign, sample_event(0).metadata).unwrap();
    bus.store().append(&stream, ExpectedVersion::Exact(Version(1)), vec![new_event]).await.unwrap();

    let refused = bus
        .execute::<Counter>("o.c", CounterCommand::Increment { amounts: vec![20] }, &context())
        .await;
    assert!(
        matches!(refused, Err(CommandError::Rejected(CounterError::OverLimit))),
        "after the conflict the command decides against the fresh state (90 + 20 > 100)"
    );
    let ok = bus
        .execute::<Counter>("o.c", CounterCommand::Increment { amounts: vec![10] }, &context())
        .await
        .unwrap();
    assert_eq!(ok.version, Version(3));
}

#[tokio::test]
async fn if_match_makes_a_command_conditional() {
    let bus = bus();
    bus.execute::<Counter>("o.c", open("o"), &context()).await.unwrap();
    let mut stale = context();
    stale.expected_version = Some(Version(0));
    match bus
        .execute::<Counter>("o.c", CounterCommand::Increment { amounts: vec![1] }, &stale)
        .await
    {
        Err(CommandError::PreconditionFailed { actual, .. }) => assert_eq!(actual, Version(1)),
        other => panic!("a stale If-Match must fail its precondition, got {other:?}"),
    }
    let mut current = context();
    current.expected_version = Some(Version(1));
    let ok = bus
        .execute::<Counter>("o.c", CounterCommand::Increment { amounts: vec![1] }, &current)
        .await
        .unwrap();
    assert_eq!(ok.version, Version(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_on_one_aggregate_lose_nothing() {
    let bus = Arc::new(CommandBus::new(
        Arc::new(InMemoryEventStore::new()),
        BusConfig { conflict_budget: Duration::ZERO, cache_capacity: 2, ..BusConfig::default() },
    ));
    bus.execute::<Counter>("o.hot", open("o"), &context()).await.unwrap();
    let mut tasks = Vec::new();
    for n in 0..50 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            // Touch other aggregates too, so the tiny cache evicts while commands run.
            bus.execute::<Counter>(&format!("o.other{n}"), open("o"), &context()).await.unwrap();
            let one = CounterCommand::Increment { amounts: vec![1] };
            bus.execute::<Counter>("o.hot", one, &context()).await.unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let counter = bus.load::<Counter>("o.hot").await.unwrap();
    assert_eq!(counter.state.value, 50, "with no retries allowed, serialization alone wins");
    assert_eq!(counter.version, Version(51));
}

#[tokio::test]
async fn a_refusal_decided_on_a_stale_cache_is_checked_against_the_store() {
    let bus = bus();
    // The bus caches the counter as not open...
    let refused = bus
        .execute::<Counter>("o.c", CounterCommand::Increment { amounts: vec![1] }, &context())
        .await;
    assert!(matches!(refused, Err(CommandError::Rejected(CounterError::NotOpen))));
    assert!(!bus.load::<Counter>("o.c").await.unwrap().state.open);
    // ...then another process opens it. A refusal appends nothing, so no version check
    // would ever catch this; the bus must look at the stream before refusing again.
    let opened = CounterEvent::Opened { owner: "o".into() };
    let new_event = strata::DomainEvent::to_new_event(&opened, sample_event(0).metadata).unwrap();
    let stream = StreamId::new("counter", "o.c");
    bus.store().append(&stream, ExpectedVersion::NoStream, vec![new_event]).await.unwrap();
    let ok = bus
        .execute::<Counter>("o.c", CounterCommand::Increment { amounts: vec![1] }, &context())
        .await
        .unwrap();
    assert_eq!(ok.version, Version(2));
}

#[tokio::test]
async fn doing_nothing_decided_on_a_stale_cache_is_checked_against_the_store() {
    let bus = bus();
    bus.execute::<Counter>("o.c", open("o"), &context()).await.unwrap();
    bus.execute::<Counter>("o.c", CounterCommand::Increment { amounts: vec![4] }, &context())
        .await
        .unwrap();
    // Another process makes the value odd behind the bus's back. Deciding to do nothing on
    // the cached (even) value appends nothing, so no version check would catch it.
    let incremented = CounterEvent::Incremented { by: 1 };
    let new_event =
        strata::DomainEvent::to_new_event(&incremented, sample_event(0).metadata).unwrap();
    let stream = StreamId::new("counter", "o.c");
    bus.store().append(&stream, ExpectedVersion::Exact(Version(2)), vec![new_event]).await.unwrap();
    let evened = bus.execute::<Counter>("o.c", CounterCommand::MakeEven, &context()).await.unwrap();
    assert_eq!(evened.version, Version(4), "decided on the stored value, 5");
    assert_eq!(bus.load::<Counter>("o.c").await.unwrap().state.value, 6);
}

#[tokio::test]
async fn a_command_on_a_stream_this_bus_has_not_seen_is_decided_on_what_the_store_holds() {
    let store = Arc::new(InMemoryEventStore::new());
    let (node_a, node_b) = (node(&store), node(&store));
    node_a.execute::<Counter>("o.c", open("o"), &context()).await.unwrap();
    node_a
        .execute::<Counter>("o.c", CounterCommand::Increment { amounts: vec![3] }, &context())
        .await
        .unwrap();
    // Node B has never seen the counter. Deciding on an empty one would open it a second
    // time (emitted), refuse the increment (not open) and leave 3 odd (nothing to do); each
    // must be decided again on the stored counter instead.
    let reopened = node_b.execute::<Counter>("o.c", open("o"), &context()).await;
    assert!(
        matches!(reopened, Err(CommandError::Rejected(CounterError::AlreadyOpen))),
        "an open counter cannot be opened again, got {reopened:?}"
    );
    let node_c = node(&store);
    let evened = node_c.execute::<Counter>("o.c", CounterCommand::MakeEven, &context()).await;
    assert_eq!(evened.unwrap().version, Version(3), "3 made even");
    let node_d = node(&store);
    let incremented = node_d
        .execute::<Counter>("o.c", CounterCommand::Increment { amounts: vec![2] }, &context())
        .await;
    assert_eq!(incremented.unwrap().version, Version(4));
    let stream = StreamId::new("counter", "o.c");
    let stored = store.read_stream(&stream, Version::NONE).await.unwrap();
    assert_eq!(stored.len(), 4, "opened once, then 3, 1 and 2 added");
    let fresh = node(&store);
    assert_eq!(fresh.load::<Counter>("o.c").await.unwrap().state.value, 6);
}

#[tokio::test]
async fn a_retry_refused_by_its_own_first_attempt_on_another_node_gets_the_first_answer() {
    let store = Arc::new(InMemoryEventStore::new());
    let (node_a, node_b) = (node(&store), node(&store));
    let keyed = |fingerprint: &str| {
        let mut context = context();
        context.idempotency = Some(strata::IdempotencyClaim {
            key: "open-1".into(),
            fingerprint: fingerprint.into(),
            recorded: None,
        });
        context
    };
    let first = node_a.execute::<Counter>("o.k", open("o"), &keyed("f")).await.unwrap();
    // Node B has the counter as stored (without it, B would guess a new stream and meet the
    // key in the append instead).
    node_b.load::<Counter>("o.k").await.unwrap();
    // Node B's look-up missed the record (the first attempt had not committed yet), so it
    // decides: the counter is open already, which the first attempt did.
    let retry = node_b.execute::<Counter>("o.k", open("o"), &keyed("f")).await.unwrap();
    assert!(!first.replayed);
    assert_eq!(
        retry,
        strata::CommandOutcome { replayed: true, ..first.clone() },
        "the retry gets the first answer, not a refusal, and says it is a replay"
    );
    assert_eq!(
        store.read_stream(&StreamId::new("counter", "o.k"), Version::NONE).await.unwrap().len(),
        1
    );
    let other = node_b.execute::<Counter>("o.k", open("o"), &keyed("another body")).await;
    assert!(matches!(other, Err(CommandError::KeyReused(_))), "{other:?}");
}
