//! The view manager's fenced checkpoint across handles: a second runner of the same
//! projection, through another handle on the same directory, fails instead of applying twice.

use serde::{Deserialize, Serialize};
use strata::{Checkpoint, Commit, Position, Slot, StoredView, ViewError, ViewManager};
use strata_sqlite::SqliteViewManager;
use tempfile::TempDir;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct Count {
    n: u64,
}

fn count(n: u64, position: u64) -> StoredView<Count> {
    StoredView::current(Count { n }, Position(position))
}

fn commit(from: Checkpoint, to: u64, views: Vec<(&str, StoredView<Count>)>) -> Commit<Count> {
    let mut commit = Commit::new(from, Position(to));
    commit.views = views.into_iter().map(|(id, view)| (id.to_owned(), view)).collect();
    commit
}

#[tokio::test]
async fn a_commit_from_a_stale_checkpoint_is_fenced_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let runner = SqliteViewManager::open(dir.path()).unwrap();
    let intruder = SqliteViewManager::open(dir.path()).unwrap();

    runner
        .commit("totals", Slot::Live, commit(Checkpoint::START, 3, vec![("a", count(1, 3))]))
        .await
        .unwrap();

    // The intruder still believes the projection is at 0.
    let fenced = intruder
        .commit(
            "totals",
            Slot::Live,
            commit(Checkpoint::START, 5, vec![("a", count(99, 5)), ("b", count(7, 5))]),
        )
        .await;
    let at3 = Checkpoint { position: Position(3), revision: 1 };
    match fenced {
        Err(ViewError::Fenced { projection, expected, actual }) => {
            assert_eq!(projection, "totals");
            assert_eq!(expected, Checkpoint::START);
            assert_eq!(actual, at3);
        }
        other => panic!("expected a fenced commit, got {other:?}"),
    }
    assert_eq!(runner.checkpoint("totals", Slot::Live).await.unwrap(), at3);
    assert_eq!(runner.get::<Count>("totals", "a").await.unwrap(), Some(count(1, 3)));
    assert_eq!(runner.get::<Count>("totals", "b").await.unwrap(), None);

    // The rightful runner goes on from where it is.
    runner.commit("totals", Slot::Live, commit(at3, 4, vec![("a", count(2, 4))])).await.unwrap();
    drop((runner, intruder));

    let reopened = SqliteViewManager::open(dir.path()).unwrap();
    assert_eq!(
        reopened.checkpoint("totals", Slot::Live).await.unwrap(),
        Checkpoint { position: Position(4), revision: 2 }
    );
    let ids = ["a".to_owned(), "missing".to_owned()];
    let loaded = reopened.load::<Count>("totals", Slot::Live, &ids).await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded["a"], count(2, 4));
}
