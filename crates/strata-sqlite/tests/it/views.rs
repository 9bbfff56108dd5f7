//! The view manager's fenced checkpoint: a second runner of the same projection, even
//! through another handle on the same directory, fails instead of applying twice.

use serde::{Deserialize, Serialize};
use strata::{Position, StoredView, ViewError, ViewManager};
use strata_sqlite::SqliteViewManager;
use tempfile::TempDir;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct Count {
    n: u64,
}

fn count(n: u64, position: u64) -> StoredView<Count> {
    StoredView { view: Count { n }, position: Position(position) }
}

#[tokio::test]
async fn a_commit_from_a_stale_checkpoint_is_fenced_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let runner = SqliteViewManager::open(dir.path()).unwrap();
    let intruder = SqliteViewManager::open(dir.path()).unwrap();

    runner
        .commit("totals", Position(0), Position(3), vec![("a".to_owned(), count(1, 3))])
        .await
        .unwrap();

    // The intruder still believes the projection is at 0.
    let fenced = intruder
        .commit(
            "totals",
            Position(0),
            Position(5),
            vec![("a".to_owned(), count(99, 5)), ("b".to_owned(), count(7, 5))],
        )
        .await;
    match fenced {
        Err(ViewError::Fenced { projection, expected, actual }) => {
            assert_eq!(projection, "totals");
            assert_eq!(expected, Position(0));
            assert_eq!(actual, Position(3));
        }
        other => panic!("expected a fenced commit, got {other:?}"),
    }
    assert_eq!(runner.checkpoint("totals").await.unwrap(), Position(3));
    assert_eq!(runner.get::<Count>("totals", "a").await.unwrap(), Some(count(1, 3)));
    assert_eq!(runner.get::<Count>("totals", "b").await.unwrap(), None);

    // Other projections have checkpoints of their own.
    assert_eq!(runner.checkpoint("other").await.unwrap(), Position::START);
    intruder.commit::<Count>("other", Position(0), Position(1), Vec::new()).await.unwrap();

    // The rightful runner goes on from where it is.
    runner
        .commit("totals", Position(3), Position(4), vec![("a".to_owned(), count(2, 4))])
        .await
        .unwrap();
    drop((runner, intruder));

    let reopened = SqliteViewManager::open(dir.path()).unwrap();
    assert_eq!(reopened.checkpoint("totals").await.unwrap(), Position(4));
    assert_eq!(reopened.checkpoint("other").await.unwrap(), Position(1));
    let loaded =
        reopened.load::<Count>("totals", &["a".to_owned(), "missing".to_owned()]).await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded["a"], count(2, 4));
}
