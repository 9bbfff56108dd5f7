//! The view manager contract: what every [`ViewManager`] must do, checked on a real instance.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use strata::{Position, StoredView, ViewError, ViewManager};

use crate::ViewManagerFactory;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Counter {
    name: String,
    count: u64,
}

fn counter(name: &str, count: u64, position: u64) -> (String, StoredView<Counter>) {
    (
        name.to_owned(),
        StoredView { view: Counter { name: name.to_owned(), count }, position: Position(position) },
    )
}

fn ids(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// Runs every view manager check against managers opened by `factory`.
pub async fn view_manager_contract<F: ViewManagerFactory>(factory: F) {
    let views = factory.open().await;
    unknown_projection_is_empty(&views).await;
    commit_saves_views_with_checkpoint(&views).await;
    stale_checkpoint_is_fenced_and_writes_nothing(&views).await;
    projections_are_independent(&views).await;
    let views = Arc::new(views);
    racing_commits_let_exactly_one_win(&views).await;
    drop(views);
    if factory.durable() {
        let reopened = factory.open().await;
        reopened_manager_keeps_everything(&reopened).await;
    }
}

async fn unknown_projection_is_empty<M: ViewManager>(views: &M) {
    assert_eq!(views.checkpoint("counters").await.expect("checkpoint"), Position::START);
    assert!(views.get::<Counter>("counters", "a").await.expect("get").is_none());
    let loaded = views.load::<Counter>("counters", &ids(&["a", "b"])).await.expect("load");
    assert!(loaded.is_empty());
}

async fn commit_saves_views_with_checkpoint<M: ViewManager>(views: &M) {
    let batch = vec![counter("a", 1, 3), counter("b", 2, 5)];
    views.commit("counters", Position::START, Position(5), batch).await.expect("commit");
    assert_eq!(views.checkpoint("counters").await.expect("checkpoint"), Position(5));
    let a = views.get::<Counter>("counters", "a").await.expect("get").expect("a exists");
    assert_eq!(a, counter("a", 1, 3).1, "a view keeps its state and last applied position");
    let loaded = views.load::<Counter>("counters", &ids(&["a", "b", "c"])).await.expect("load");
    assert_eq!(loaded.len(), 2, "load returns the stored ids only");
    assert_eq!(loaded["b"], counter("b", 2, 5).1);

    views
        .commit("counters", Position(5), Position(9), vec![counter("a", 7, 9)])
        .await
        .expect("next");
    let a = views.get::<Counter>("counters", "a").await.expect("get").expect("a exists");
    assert_eq!(a.view.count, 7, "a later commit replaces the instance");
    let b = views.get::<Counter>("counters", "b").await.expect("get").expect("b exists");
    assert_eq!(b.view.count, 2, "instances not in the batch are untouched");

    views
        .commit::<Counter>("counters", Position(9), Position(12), Vec::new())
        .await
        .expect("empty");
    assert_eq!(
        views.checkpoint("counters").await.expect("checkpoint"),
        Position(12),
        "a batch that touches no view still moves the checkpoint"
    );
}

async fn stale_checkpoint_is_fenced_and_writes_nothing<M: ViewManager>(views: &M) {
    let batch = vec![counter("a", 100, 20), counter("c", 1, 20)];
    match views.commit("counters", Position(5), Position(20), batch).await {
        Err(ViewError::Fenced { projection, expected, actual }) => {
            assert_eq!(projection, "counters");
            assert_eq!(expected, Position(5));
            assert_eq!(actual, Position(12));
        }
        other => panic!("a commit from a stale checkpoint must be fenced, got {other:?}"),
    }
    assert_eq!(views.checkpoint("counters").await.expect("checkpoint"), Position(12));
    let a = views.get::<Counter>("counters", "a").await.expect("get").expect("a exists");
    assert_eq!(a.view.count, 7, "a fenced commit changes no view");
    assert!(views.get::<Counter>("counters", "c").await.expect("get").is_none());
}

async fn projections_are_independent<M: ViewManager>(views: &M) {
    assert_eq!(views.checkpoint("others").await.expect("checkpoint"), Position::START);
    assert!(views.get::<Counter>("others", "a").await.expect("get").is_none());
    views
        .commit("others", Position::START, Position(2), vec![counter("a", 42, 2)])
        .await
        .expect("commit");
    let theirs = views.get::<Counter>("others", "a").await.expect("get").expect("exists");
    let ours = views.get::<Counter>("counters", "a").await.expect("get").expect("exists");
    assert_eq!((theirs.view.count, ours.view.count), (42, 7), "same id, separate projections");
}

async fn racing_commits_let_exactly_one_win<M: ViewManager>(views: &Arc<M>) {
    let from = views.checkpoint("counters").await.expect("checkpoint");
    let mut racers = Vec::new();
    for n in 0..8u64 {
        let views = views.clone();
        racers.push(tokio::spawn(async move {
            let to = Position(from.0 + 1 + n);
            views.commit("counters", from, to, vec![counter("race", n, to.0)]).await
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
    let checkpoint = views.checkpoint("counters").await.expect("checkpoint");
    let race = views.get::<Counter>("counters", "race").await.expect("get").expect("exists");
    assert_eq!(race.position, checkpoint, "the winner's views and checkpoint went together");
}

async fn reopened_manager_keeps_everything<M: ViewManager>(views: &M) {
    let a = views.get::<Counter>("counters", "a").await.expect("get").expect("a survives");
    assert_eq!(a.view.count, 7);
    assert!(views.checkpoint("counters").await.expect("checkpoint") > Position(12));
    assert_eq!(views.checkpoint("others").await.expect("checkpoint"), Position(2));
}
