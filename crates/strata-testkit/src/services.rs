//! Probes for the outside services that backend tests need, and fresh, self-cleaning
//! resources on them.
//!
//! A test asks for a service with, e.g., [`postgres`]. When the service is unreachable the
//! probe prints why and returns `None`, and the test returns early: a developer without a
//! local PostgreSQL can still run everything else. CI sets `STRATA_REQUIRE_SERVICES=1`,
//! which turns an unreachable service into a panic, so a missing server never passes
//! silently there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::{Config, NoTls};

/// The PostgreSQL server tests use unless `STRATA_TEST_POSTGRES_URL` names another.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The prefix of every schema [`postgres`] creates. Schemas with it that are older than
/// [`STALE_AFTER`] are left over from killed test runs and are dropped by later runs.
pub const SCHEMA_PREFIX: &str = "strata_test_";

/// How old a leftover test schema must be before a later run drops it.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// How long a probe waits for the server before calling it unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether unreachable services must fail the tests (`STRATA_REQUIRE_SERVICES=1`).
pub fn services_required() -> bool {
    std::env::var("STRATA_REQUIRE_SERVICES").is_ok_and(|value| value == "1")
}

/// The base URL of the test PostgreSQL server: `STRATA_TEST_POSTGRES_URL` or
/// [`DEFAULT_POSTGRES_URL`].
pub fn postgres_url() -> String {
    std::env::var("STRATA_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

/// A fresh schema on the test PostgreSQL server, dropped (with everything in it) when this
/// value is dropped. Declare it before the stores that use it, so that they are dropped
/// first.
#[derive(Debug)]
pub struct PostgresFixture {
    base_url: String,
    schema: String,
}

impl PostgresFixture {
    /// The server's URL, without any schema setting.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The fresh schema's name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The server's URL with `search_path` pinned to the fresh schema (through the
    /// connection's `options`), for code that takes only a URL.
    pub fn url(&self) -> String {
        let separator = if self.base_url.contains('?') { '&' } else { '?' };
        format!("{}{separator}options=-csearch_path%3D{}", self.base_url, self.schema)
    }
}

impl Drop for PostgresFixture {
    fn drop(&mut self) {
        // Drop is synchronous and the test's runtime may be ending, so the cleanup runs on
        // a thread with a runtime of its own, and the drop waits for it.
        let base_url = self.base_url.clone();
        let schema = self.schema.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => return Err(error.to_string()),
            };
            runtime.block_on(drop_schema(&base_url, &schema))
        });
        match cleanup.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                eprintln!("could not drop test schema {}: {error}", self.schema);
            }
            Err(_) => eprintln!("dropping test schema {} panicked", self.schema),
        }
    }
}

/// A fresh, uniquely named schema on the test PostgreSQL server, or `None` (after printing
/// why) when the server is unreachable. Panics instead when `STRATA_REQUIRE_SERVICES=1`.
pub async fn postgres() -> Option<PostgresFixture> {
    let base_url = postgres_url();
    match create_schema(&base_url).await {
        Ok(schema) => Some(PostgresFixture { base_url, schema }),
        Err(error) => {
            let message = format!("PostgreSQL at {base_url} is not usable: {error}");
            if services_required() {
                panic!("{message} (STRATA_REQUIRE_SERVICES=1)");
            }
            eprintln!("skipping: {message}");
            None
        }
    }
}

async fn client(url: &str) -> Result<tokio_postgres::Client, String> {
    let mut config: Config = url.parse().map_err(|error| format!("bad URL: {error}"))?;
    config.connect_timeout(PROBE_TIMEOUT);
    let (client, connection) = config.connect(NoTls).await.map_err(|error| describe(&error))?;
    tokio::spawn(async move {
        // The connection ends when the client is dropped; its error, if any, surfaces on
        // the client's next query.
        let _ = connection.await;
    });
    Ok(client)
}

/// The error with its causes: tokio-postgres says "error connecting to server" and keeps
/// the reason (refused, timed out, bad password) in its source.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn create_schema(base_url: &str) -> Result<String, String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let client = client(base_url).await?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    drop_stale_schemas(&client, now).await;
    let schema = format!(
        "{SCHEMA_PREFIX}{now}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .map_err(|error| format!("cannot create schema {schema}: {error}"))?;
    Ok(schema)
}

/// Drops test schemas left by runs that were killed before their fixtures' drops ran.
/// Their names carry their creation time; only old ones go, so that concurrent runs keep
/// theirs. Failures are ignored: this is housekeeping.
async fn drop_stale_schemas(client: &tokio_postgres::Client, now: u64) {
    let pattern = format!("{SCHEMA_PREFIX}%");
    let Ok(rows) =
        client.query("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", &[&pattern]).await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let created = name
            .strip_prefix(SCHEMA_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|created| created + STALE_AFTER.as_secs() < now) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await;
        }
    }
}

async fn drop_schema(base_url: &str, schema: &str) -> Result<(), String> {
    let client = client(base_url).await?;
    // A lock held by a connection of a test that failed mid-transaction would make the
    // drop wait forever; give up instead and leave the schema for a later run.
    client
        .batch_execute(&format!("SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .map_err(|error| error.to_string())
}

/// The Redis server tests use unless `STRATA_TEST_REDIS_URL` names another.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The base URL of the test Redis server: `STRATA_TEST_REDIS_URL` or [`DEFAULT_REDIS_URL`].
pub fn redis_url() -> String {
    std::env::var("STRATA_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned())
}

/// A fresh key prefix on the test Redis server; every key under it is deleted when this value
/// is dropped. Declare it before the managers that use it.
#[derive(Debug)]
pub struct RedisFixture {
    url: String,
    prefix: String,
}

impl RedisFixture {
    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The fresh prefix, ending in `:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Drop for RedisFixture {
    fn drop(&mut self) {
        let deleted = redis_connection(&self.url).and_then(|mut connection| {
            let keys = redis_keys(&self.url, &self.prefix)?;
            for chunk in keys.chunks(500) {
                redis::cmd("DEL").arg(chunk).exec(&mut connection).map_err(|e| e.to_string())?;
            }
            Ok(())
        });
        if let Err(error) = deleted {
            eprintln!("could not delete the test keys under {}: {error}", self.prefix);
        }
    }
}

fn redis_connection(url: &str) -> Result<redis::Connection, String> {
    let client = redis::Client::open(url).map_err(|error| format!("bad URL: {error}"))?;
    let connection =
        client.get_connection_with_timeout(PROBE_TIMEOUT).map_err(|error| error.to_string())?;
    connection.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(|error| error.to_string())?;
    connection.set_write_timeout(Some(PROBE_TIMEOUT)).map_err(|error| error.to_string())?;
    Ok(connection)
}

/// Every key under `prefix` (whose characters are plain, so it needs no glob escaping).
fn redis_keys(url: &str, prefix: &str) -> Result<Vec<String>, String> {
    let mut connection = redis_connection(url)?;
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, mut batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query(&mut connection)
            .map_err(|error| error.to_string())?;
        keys.append(&mut batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// A fresh, unique key prefix on the test Redis server, or `None` (after printing why) when
/// the server is unreachable. Panics instead when `STRATA_REQUIRE_SERVICES=1`.
pub fn redis() -> Option<RedisFixture> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let url = redis_url();
    let answered = redis_connection(&url).and_then(|mut connection| {
        redis::cmd("PING").query::<String>(&mut connection).map_err(|error| error.to_string())
    });
    match answered {
        Ok(_) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            let prefix = format!(
                "strata_test:{now}_{}_{}:",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            Some(RedisFixture { url, prefix })
        }
        Err(error) => {
            let message = format!("Redis at {url} is not usable: {error}");
            if services_required() {
                panic!("{message} (STRATA_REQUIRE_SERVICES=1)");
            }
            eprintln!("skipping: {message}");
            None
        }
    }
}

/// The NATS server tests use unless `STRATA_TEST_NATS_URL` names another.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// A NATS server that answered, and names unique to one test: a stream name and a subject
/// prefix. The test deletes its stream when done (this crate speaks no NATS beyond the probe).
#[derive(Debug, Clone)]
pub struct NatsFixture {
    /// The server's URL.
    pub url: String,
    /// A stream name no other test uses.
    pub stream: String,
    /// A subject prefix no other test uses.
    pub subject_prefix: String,
}

/// A NATS server that answers (its greeting read over TCP) with fresh names, or `None`
/// (after printing why) when it does not. Panics instead when `STRATA_REQUIRE_SERVICES=1`.
pub fn nats() -> Option<NatsFixture> {
    use std::io::Read;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let url = std::env::var("STRATA_TEST_NATS_URL").unwrap_or_else(|_| DEFAULT_NATS_URL.to_owned());
    let address = url.trim_start_matches("nats://").to_owned();
    let greeted = (|| -> Result<(), String> {
        let socket = address
            .parse::<std::net::SocketAddr>()
            .map_err(|error| format!("{address}: {error}"))?;
        let mut stream = std::net::TcpStream::connect_timeout(&socket, PROBE_TIMEOUT)
            .map_err(|error| error.to_string())?;
        stream.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(|error| error.to_string())?;
        let mut greeting = [0_u8; 4];
        stream.read_exact(&mut greeting).map_err(|error| error.to_string())?;
        if &greeting == b"INFO" { Ok(()) } else { Err("it does not speak NATS".to_owned()) }
    })();
    match greeted {
        Ok(()) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            let unique =
                format!("{now}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
            Some(NatsFixture {
                url,
                stream: format!("STRATA_TEST_{unique}"),
                subject_prefix: format!("strata_test.{unique}"),
            })
        }
        Err(error) => {
            let message = format!("NATS at {url} is not usable: {error}");
            if services_required() {
                panic!("{message} (STRATA_REQUIRE_SERVICES=1)");
            }
            eprintln!("skipping: {message}");
            None
        }
    }
}
