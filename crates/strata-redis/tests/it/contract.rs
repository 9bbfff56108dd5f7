//! The view-manager contract of `strata-testkit`, on Redis.

use strata_redis::RedisViewManager;
use strata_testkit::ViewManagerFactory;
use strata_testkit::services::RedisFixture;

/// Opens a manager on the fixture's prefix, the same one every time, as a restarted node
/// would.
struct UnderPrefix(RedisFixture);

impl ViewManagerFactory for UnderPrefix {
    type Manager = RedisViewManager;

    async fn open(&self) -> RedisViewManager {
        RedisViewManager::connect(self.0.url(), self.0.prefix()).await.unwrap()
    }

    fn durable(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_manager_keeps_the_contract() {
    let Some(fixture) = strata_testkit::services::redis() else { return };
    strata_testkit::view_manager_contract(UnderPrefix(fixture)).await;
}

#[tokio::test]
async fn views_are_plain_json_strings_other_services_can_read() {
    use strata::{Checkpoint, Commit, Position, Slot, StoredView, ViewManager};
    let Some(fixture) = strata_testkit::services::redis() else { return };
    let views = RedisViewManager::connect(fixture.url(), fixture.prefix()).await.unwrap();
    views.prepare("docs", &[], 1).await.unwrap();
    let mut commit = Commit::new(Checkpoint::START, Position(3));
    commit.views.push((
        "a:1".to_owned(),
        StoredView::current(serde_json::json!({"name": "Ann"}), Position(3)),
    ));
    views.commit("docs", Slot::Live, commit).await.unwrap();

    let client = redis::Client::open(fixture.url()).unwrap();
    let mut connection = client.get_connection().unwrap();
    let prefix = fixture.prefix();
    let json: String =
        redis::cmd("GET").arg(format!("{prefix}docs:a:1")).query(&mut connection).unwrap();
    assert_eq!(json, r#"{"name":"Ann"}"#);
    let checkpoint: Vec<String> = redis::cmd("HMGET")
        .arg(format!("{prefix}checkpoint:docs"))
        .arg("position")
        .arg("revision")
        .query(&mut connection)
        .unwrap();
    assert_eq!(checkpoint, ["3", "1"]);
    let position: String = redis::cmd("HGET")
        .arg(format!("{prefix}view-positions:docs"))
        .arg("a:1")
        .query(&mut connection)
        .unwrap();
    assert_eq!(position, "3");
}

#[tokio::test]
async fn bad_settings_are_refused_before_anything_is_written() {
    let refused = RedisViewManager::connect("http://127.0.0.1:6379", "strata:").await;
    assert!(refused.is_err_and(|e| e.to_string().contains("not a Redis URL")));
    let refused = RedisViewManager::connect("redis://127.0.0.1:6379", "has space").await;
    assert!(refused.is_err_and(|e| e.to_string().contains("not a usable key prefix")));
    // Nothing listens on port 1.
    let refused = RedisViewManager::connect("redis://127.0.0.1:1", "strata:").await;
    assert!(refused.is_err_and(|e| e.to_string().contains("does not answer")));
}
