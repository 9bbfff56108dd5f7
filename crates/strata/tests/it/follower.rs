//! Followers on the in-memory store: a copy of another log, event for event at the same
//! positions, through a source that fails now and then; and a source that skips an event
//! is refused rather than copied with a hole.

use std::sync::Arc;
use std::time::Duration;

use strata::{
    EventStore, ExpectedVersion, InMemoryEventStore, Position, ProjectionRunner, ProjectionState,
    Pulled, Source, StreamId,
};
use strata_testkit::tally;

/// Hands over another store's log in small pulls, failing every third one until it has
/// handed everything.
struct Upstream {
    log: Arc<InMemoryEventStore>,
    pulls: u32,
    /// A position it leaves out, to play a source with a hole.
    hole: Option<u64>,
}

impl Source for Upstream {
    async fn pull(&mut self, after: Position, max: usize) -> Result<Pulled, String> {
        if after == self.log.head() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            return Ok(Pulled::default());
        }
        self.pulls += 1;
        if self.pulls.is_multiple_of(3) {
            return Err("the broker is away".to_owned());
        }
        let mut events = self.log.read_all(after, max.min(70)).await.map_err(|e| e.to_string())?;
        events.retain(|event| Some(event.position.0) != self.hole);
        let last = events.last().map_or(after, |event| event.position);
        Ok(Pulled { events, behind: self.log.head().0 - last.0 })
    }
}

async fn log_of(events: u64) -> Arc<InMemoryEventStore> {
    let store = Arc::new(InMemoryEventStore::new());
    for n in 0..events {
        let stream = StreamId::new(tally::TALLY, format!("t{}", n % 7));
        let batch = (0..1 + n % 3).map(|_| tally::added(1)).collect();
        store.append(&stream, ExpectedVersion::Any, batch).await.unwrap();
    }
    store
}

#[tokio::test]
async fn a_follower_copies_every_event_at_its_position_with_its_version_and_id() {
    let upstream = log_of(300).await;
    let head = upstream.head();
    let copy = Arc::new(InMemoryEventStore::new());
    let source = Upstream { log: upstream.clone(), pulls: 0, hole: None };
    let handle = ProjectionRunner::new("replica").spawn_follower("source", source, copy.clone());
    handle.wait_for(head, Duration::from_secs(20)).await.unwrap();

    let (original, copied) = (
        upstream.read_all(Position::START, 10_000).await.unwrap(),
        copy.read_all(Position::START, 10_000).await.unwrap(),
    );
    assert_eq!(copied.len(), original.len());
    for (a, b) in original.iter().zip(&copied) {
        assert_eq!(
            (a.position, &a.stream, a.version, &a.event_type, &a.payload, a.metadata.event_id),
            (b.position, &b.stream, b.version, &b.event_type, &b.payload, b.metadata.event_id)
        );
        assert_eq!(a.metadata.recorded_at, b.metadata.recorded_at);
    }
    let status = handle.status().await.unwrap();
    assert_eq!(
        (status.position, status.lag_events, status.status),
        (head, 0, ProjectionState::Running)
    );
    assert_eq!(status.owner.as_deref(), Some("replica"));
    handle.stop();
}

#[tokio::test]
async fn a_source_with_a_hole_is_reported_and_nothing_past_it_is_copied() {
    let upstream = log_of(40).await;
    let copy = Arc::new(InMemoryEventStore::new());
    let source = Upstream { log: upstream.clone(), pulls: 0, hole: Some(5) };
    let handle = ProjectionRunner::new("replica").spawn_follower("source", source, copy.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = handle.status().await.unwrap();
        if status.error.as_deref().is_some_and(|error| error.contains("position 6 where 5")) {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reported: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.status, ProjectionState::Failed);
    assert_eq!(copy.head(), Position(4), "events before the hole are kept, none after it");
    handle.stop();
}
