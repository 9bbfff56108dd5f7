//! A service on a fresh SQLite data directory, driven in-process through the router.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use orders::app::{App, Role};
use orders::backends::{SqliteBackend, open_sqlite};
use orders::sagas::FulfilmentSettings;
use serde_json::Value;
use strata::{BusConfig, EventStore};
use strata_sqlite::SqliteError;
use tempfile::TempDir;
use tower::ServiceExt;

pub struct Service {
    pub app: Arc<App<SqliteBackend>>,
    router: Router,
    _dir: Option<TempDir>,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn position(&self) -> u64 {
        self.body["position"].as_u64().expect("answer has a position")
    }

    #[track_caller]
    pub fn expect_problem(&self, status: u16, detail_contains: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(self.header("content-type"), Some("application/problem+json"));
        assert_eq!(self.body["status"].as_u64(), Some(u64::from(status)));
        assert!(self.body["type"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(self.body["title"].as_str().is_some_and(|t| !t.is_empty()));
        let detail = self.body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(detail_contains),
            "detail {detail:?} should mention {detail_contains:?}"
        );
    }
}

impl Service {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir).await
    }

    /// A service whose HTTP API accepts only `tokens`.
    pub async fn start_with_tokens(tokens: Arc<strata_http::Tokens>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stores = open_sqlite(dir.path()).unwrap();
        let mut app = App::start(stores, "test-node", BusConfig::default()).await.unwrap();
        app.tokens = Some(tokens);
        let app = Arc::new(app);
        let router = orders::http::router(app.clone());
        Self { app, router, _dir: Some(dir) }
    }

    /// The status, headers and raw body of a request, whatever its body is.
    pub async fn raw(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, bytes.to_vec())
    }

    pub async fn start_in(dir: TempDir) -> Self {
        let mut service = Self::start_in_path(dir.path()).await;
        service._dir = Some(dir);
        service
    }

    /// A service on `path`, which outlives it. A service on the same path that was just
    /// dropped may still be releasing the store's lock; opening waits for that, a while.
    pub async fn start_in_path(path: &Path) -> Self {
        Self::start_in_path_with(path, FulfilmentSettings::default()).await
    }

    /// [`Service::start_in_path`] with the fulfilment saga's settings.
    pub async fn start_in_path_with(path: &Path, fulfilment: FulfilmentSettings) -> Self {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let stores = loop {
            match open_sqlite(path) {
                Ok(stores) => break stores,
                Err(SqliteError::Locked { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => panic!("cannot open {}: {error}", path.display()),
            }
        };
        let app =
            App::start_with(stores, "test-node", BusConfig::default(), Role::Writer(fulfilment));
        let app = Arc::new(app.await.unwrap());
        let router = orders::http::router(app.clone());
        Self { app, router, _dir: None }
    }

    /// Stops the service and waits until its store is closed, so that the directory can be
    /// used by another process.
    pub async fn stop_and_wait(self) {
        let path = self.app.events().path().parent().map(Path::to_owned);
        drop(self);
        let Some(path) = path else { return };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while strata_sqlite::SqliteEventStore::open(&path).is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the store in {} was never released",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn head(&self) -> u64 {
        self.app.events().head().0
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut builder = Request::builder().method(method).uri(path);
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request =
            builder.body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned()))).unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        Answer { status, headers, body }
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.request(Method::POST, path, Some(&body.to_string()), &[]).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.request(Method::GET, path, None, &[]).await
    }

    /// A `GET` whose answer is text, not JSON.
    pub async fn get_text(&self, path: &str) -> String {
        let request = Request::builder().uri(path).body(Body::empty()).unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// Reads a view once it reflects everything committed so far.
    pub async fn view(&self, path: &str) -> Answer {
        let separator = if path.contains('?') { '&' } else { '?' };
        self.get(&format!("{path}{separator}min_position={}", self.head())).await
    }

    /// Waits until every projection, the sagas' included, has caught up with the log (the
    /// sagas have no query to wait with), for at most ten seconds.
    pub async fn settled(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let statuses = self.get("/admin/projections").await.body;
            let caught_up = statuses
                .as_array()
                .is_some_and(|all| all.iter().all(|p| p["position"].as_u64() == Some(self.head())));
            if caught_up {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "projections lag: {statuses}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the fulfilment saga of `order_id` has `status`, for at most ten seconds;
    /// returns the instance as `/admin/sagas` shows it.
    pub async fn saga_reaches(&self, order_id: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let saga = self.get(&format!("/admin/sagas/fulfilment/{order_id}")).await.body;
            if saga["status"] == status {
                return saga;
            }
            assert!(tokio::time::Instant::now() < deadline, "the saga is not {status}: {saga}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A customer `ada`, products `tea` (450) and `cake` (300) with 100 units each in stock,
    /// and order `o1` with 2 tea.
    pub async fn seed(&self) {
        let ok = |a: Answer| assert!(a.status.is_success(), "seed failed: {}", a.body);
        ok(self.post("/customers", serde_json::json!({"customer_id": "ada", "name": "Ada", "email": "ada@example.com"})).await);
        ok(self
            .post("/products", serde_json::json!({"sku": "tea", "name": "Tea", "price_cents": 450}))
            .await);
        ok(self
            .post(
                "/products",
                serde_json::json!({"sku": "cake", "name": "Cake", "price_cents": 300}),
            )
            .await);
        for sku in ["tea", "cake"] {
            ok(self
                .post(&format!("/products/{sku}/restock"), serde_json::json!({"qty": 100}))
                .await);
        }
        ok(self.post("/orders", serde_json::json!({"order_id": "o1", "customer_id": "ada", "lines": [{"sku": "tea", "qty": 2}]})).await);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.app.stop();
    }
}
