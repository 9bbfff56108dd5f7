//! `/health` with a store that stops answering (it says so within a second, with 503) and
//! with one whose writes fail while its reads answer.

#![expect(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use strata::{
    AppendOutcome, EventStore, ExpectedVersion, GroupCommitCounters, IdempotencyClaim,
    IdempotencyRecord, InMemoryEventStore, InMemoryViewManager, NewEvent, Position, Projections,
    RecordedEvent, Snapshot, StoreError, StreamId, Version, WriteFailure,
};
use strata_http::HttpMetrics;
use strata_http::admin::{self, Admin};
use tower::ServiceExt;

/// An in-memory store whose reads of the log hang while `hung` is set, as a frozen database's
/// would, and whose writes' health is what `writes` recorded.
#[derive(Default)]
struct Freezable {
    inner: InMemoryEventStore,
    hung: AtomicBool,
    writes: GroupCommitCounters,
}

impl EventStore for Freezable {
    async fn append_claimed(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        claim: Option<&IdempotencyClaim>,
    ) -> Result<AppendOutcome, StoreError> {
        self.inner.append_claimed(stream, expected, events, claim).await
    }
    async fn read_claim(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.inner.read_claim(key).await
    }
    async fn read_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        self.inner.read_snapshot(stream).await
    }
    async fn write_snapshot(
        &self,
        stream: &StreamId,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        self.inner.write_snapshot(stream, snapshot).await
    }
    async fn event_types(&self) -> Result<Vec<(String, u32)>, StoreError> {
        self.inner.event_types().await
    }
    async fn read_stream(
        &self,
        stream: &StreamId,
        after: Version,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(stream, after).await
    }
    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if self.hung.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.read_all(after, limit).await
    }
    async fn read_positions(
        &self,
        positions: &[Position],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_positions(positions).await
    }
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Position> {
        self.inner.subscribe()
    }
    fn write_failure(&self) -> Option<WriteFailure> {
        self.writes.failure()
    }
}

async fn health(store: &Arc<Freezable>) -> (StatusCode, serde_json::Value, Duration) {
    let router = admin::routes(Admin {
        store: store.clone(),
        views: Arc::new(InMemoryViewManager::new()),
        projections: Arc::new(Projections::new()),
        sagas: Arc::default(),
        node_id: "n1".into(),
        aggregate_types: vec![],
        http: HttpMetrics::new(),
        commands: Arc::default(),
        tokens: None,
    });
    let started = Instant::now();
    let request = Request::builder().uri("/health").body(Body::empty()).unwrap();
    let response = axum::Router::from(router).oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap(), started.elapsed())
}

#[tokio::test]
async fn a_store_that_stops_answering_shows_in_health_within_a_second() {
    let store = Arc::new(Freezable::default());
    let (status, body, _) = health(&store).await;
    assert_eq!(
        (status, &body["status"], &body["checks"]["store"]),
        (StatusCode::OK, &"ok".into(), &"ok".into())
    );

    store.hung.store(true, Ordering::SeqCst);
    let (status, body, took) = health(&store).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "degraded");
    assert!(body["checks"]["store"].as_str().unwrap().contains("no answer"), "{body}");
    assert!(took < Duration::from_secs(1), "answered in {took:?}");
}

#[tokio::test]
async fn writes_that_fail_while_reads_answer_show_in_health_until_events_are_written() {
    let store = Arc::new(Freezable::default());
    store.writes.record_failure(&"database or disk is full");
    store.writes.record_failure(&"database or disk is full");
    let (status, body, _) = health(&store).await;
    // Still 200: queries answer, and the next append that commits clears it.
    assert_eq!((status, &body["status"]), (StatusCode::OK, &"degraded".into()), "{body}");
    let check = body["checks"]["store"].as_str().unwrap();
    assert!(check.starts_with("writes failing (2 group commits in a row"), "{body}");
    assert!(check.ends_with("database or disk is full"), "{body}");

    // A group that wrote nothing (every append refused, an expiry that found no key) commits
    // on a full disk too, so it proves nothing.
    store.writes.record(3, 0, Duration::from_millis(1));
    let (_, body, _) = health(&store).await;
    assert_eq!(body["status"], "degraded", "{body}");
    store.writes.record(1, 1, Duration::from_millis(1));
    let (status, body, _) = health(&store).await;
    assert_eq!(
        (status, &body["status"], &body["checks"]["store"]),
        (StatusCode::OK, &"ok".into(), &"ok".into())
    );
    assert_eq!(store.writes.snapshot().failed_groups, 2, "failures are counted for /metrics");
}
