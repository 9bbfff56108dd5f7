//! The admin UI in a real browser: headless Chromium, driven over WebDriver (chromedriver),
//! against a real `strata serve` holding real data: a parked order, a saga, streams. Each
//! page is saved as a screenshot under `target/ui-screenshots/`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::operations::{append, broken_line, good_line};
use crate::process::{Server, add_token};
use crate::support::Service;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the page may take to show what a step waits for.
const PATIENCE: Duration = Duration::from_secs(20);

/// chromedriver, and a WebDriver session with headless Chromium.
struct Browser {
    driver: Child,
    client: Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts one, or says why it cannot and returns `None` (a failure when CI requires it).
    async fn start() -> Option<Browser> {
        let missing: Vec<&str> =
            [CHROMIUM, CHROMEDRIVER].into_iter().filter(|path| !Path::new(path).exists()).collect();
        if !missing.is_empty() {
            let why = format!(
                "{} not installed (apt-get install chromium chromium-driver)",
                missing.join(" and ")
            );
            assert!(!strata_testkit::services::services_required(), "{why}");
            eprintln!("skipping the browser test: {why}");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let capabilities = capabilities.as_object().unwrap().clone();
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(error) if started.elapsed() < PATIENCE => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("chromedriver on {url} gave no session: {error}"),
            }
        };
        Some(Browser { driver, client, _profile: profile })
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }

    /// Waits for an element matching `css` and returns it.
    async fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("no {css} on the page: {error}"))
    }

    /// Waits until the element matching `css` shows `text`.
    async fn shows(&self, css: &str, text: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let shown = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if shown.contains(text) {
                return;
            }
            assert!(Instant::now() < deadline, "{css} never showed {text:?}; it shows {shown:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.element(css).await.click().await.unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshots();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"), PathBuf::from);
    target.join("ui-screenshots")
}

/// A store with customers, products, orders, a confirmed order's saga, and order o1 parked
/// on an event no view can read.
async fn prepared_store(dir: &Path) {
    let service = Service::start_in_path(dir).await;
    service.seed().await;
    service
        .post(
            "/orders",
            json!({"order_id": "o2", "customer_id": "ada", "lines": [{"sku": "cake", "qty": 1}]}),
        )
        .await;
    let confirmed = service.post("/orders/o2/confirm?wait_ms=5000", json!({})).await;
    assert_eq!(confirmed.body["status"], "confirmed", "{}", confirmed.body);
    append(&service, "o1", broken_line()).await;
    append(&service, "o1", good_line("cake", 2, 300)).await;
    service.settled().await;
    service.stop_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_rebuilds_skips_and_browses_in_the_admin_ui() {
    let Some(browser) = Browser::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    prepared_store(dir.path()).await;
    let server = Server::spawn(&["--data-dir", &dir.path().display().to_string()]);
    let ui = format!("{}/admin/ui", server.base());

    // Projections: position, lag, status and parked count; a rebuild runs to its end.
    browser.client.goto(&ui).await.unwrap();
    browser.shows("tr[data-projection='orders'] [data-field='parked']", "1").await;
    browser.shows("tr[data-projection='orders'] [data-field='status']", "running").await;
    browser.shows("#health", "ok").await;
    browser.screenshot("projections").await;
    browser.click("tr[data-projection='products'] button[data-action='rebuild']").await;
    browser.shows("#notice", "Rebuild of products finished").await;
    browser.screenshot("projections-rebuilt").await;

    // The parked order, with its error; skipping its bad event releases it.
    browser.click("tr[data-projection='orders'] [data-field='parked'] a").await;
    browser.shows("tr[data-view='o1']", "LineAdded").await;
    browser.screenshot("parked").await;
    let reason = browser.element("tr[data-view='o1'] input[name='reason']").await;
    assert!(!reason.is_displayed().await.unwrap(), "the reason is asked for only on Skip…");
    browser.click("tr[data-view='o1'] button[data-action='skip']").await;
    browser
        .element("tr[data-view='o1'] input[name='reason']")
        .await
        .send_keys("bad import")
        .await
        .unwrap();
    browser.click("tr[data-view='o1'] button[data-action='confirm-skip']").await;
    browser.shows("#notice", "o1 is released").await;
    browser.shows("#skipped", "bad import").await;
    browser.shows("#parked", "No parked instances").await;
    browser.screenshot("skipped").await;
    let (status, order) = server.send("GET", "/orders/o1", None).await;
    assert_eq!(status, 200, "the order is served again: {order}");
    assert_eq!(order["lines"].as_array().map(Vec::len), Some(2), "the good line after it applied");

    // A stream, event by event, and the audit of one of its requests.
    browser.click("nav a[data-nav='streams']").await;
    let id = browser.element("form.lookup input[name='id']").await;
    id.send_keys("o2").await.unwrap();
    browser.click("form.lookup button[type='submit']").await;
    browser.shows("#stream-events", "OrderConfirmed").await;
    browser.screenshot("stream").await;
    browser.click("#stream-events tr[data-position] td:nth-child(7) a").await;
    browser.shows("#audit-events", "OrderPlaced").await;
    browser.shows("#audit", "1 event, newest first").await;
    browser.screenshot("audit").await;

    // Sagas by state, and one instance.
    browser.click("nav a[data-nav='sagas']").await;
    browser.shows("#saga-counts tr[data-saga='fulfilment']", "fulfilment").await;
    browser.element("form.lookup input[name='id']").await.send_keys("o2").await.unwrap();
    browser.click("form.lookup button[type='submit']").await;
    browser.shows("#saga-instance", "\"order_id\": \"o2\"").await;
    browser.screenshot("sagas").await;

    // The live tail shows an event appended while it watches.
    browser.click("nav a[data-nav='tail']").await;
    browser.element("#tail-events").await;
    let (status, _) = server
        .send(
            "POST",
            "/customers",
            Some(json!({"customer_id": "carol", "name": "Carol", "email": "carol@example.com"})),
        )
        .await;
    assert_eq!(status, 201);
    browser.shows("#tail-events", "customer/carol").await;
    browser.screenshot("tail").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_the_page_asks_for_an_admin_token_and_then_shows_the_projections() {
    let Some(browser) = Browser::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.toml");
    let file = file.to_str().unwrap();
    let add = |subject, role| {
        let (code, out, err) = add_token(file, subject, role);
        assert_eq!(code, 0, "{err}");
        out.lines().last().unwrap().to_owned()
    };
    let reader = add("reader", "read");
    let admin = add("ops", "admin");
    let server = Server::spawn(&["--store", "memory", "--auth-file", file]);

    browser.client.goto(&format!("{}/admin/ui", server.base())).await.unwrap();
    browser.element("#token-form:not([hidden])").await;
    browser.screenshot("token").await;
    browser.element("#token").await.send_keys(&reader).await.unwrap();
    browser.click("#token-form button[type='submit']").await;
    browser.shows("#notice", "admin").await;
    browser.element("#token").await.clear().await.unwrap();
    browser.element("#token").await.send_keys(&admin).await.unwrap();
    browser.click("#token-form button[type='submit']").await;
    browser.shows("tr[data-projection='orders'] [data-field='status']", "running").await;
    assert!(browser.element("#token-form").await.attr("hidden").await.unwrap().is_some());
    browser.close().await;
}
