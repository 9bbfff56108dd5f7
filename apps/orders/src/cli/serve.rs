//! `strata serve`: opens the store, starts the projections and answers HTTP until Ctrl-C or
//! SIGTERM, then stops accepting, finishes requests in flight and closes the store.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use strata::BusConfig;
use strata_http::server::Limits;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::store::{
    NATS_PUBLISHER, NATS_SOURCE, NatsArgs, RedisArgs, StoreArgs, StoreLocation, StoreUrlError,
};
use crate::app::{App, Backend, Role, Stores};
use crate::backends;
use crate::domain::SCHEMAS;
use crate::sagas::FulfilmentSettings;

/// Options of `strata serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "STRATA_BIND", default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub bind: String,
    /// This node's id, shown by /health and as projection owner [default: HOST:PORT].
    #[arg(long, env = "STRATA_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// How long an Idempotency-Key is remembered: a number with ms, s, m, h or d.
    #[arg(
        long,
        env = "STRATA_IDEMPOTENCY_TTL",
        default_value = "24h",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    pub idempotency_ttl: Duration,
    /// How long an order may stay placed before it is cancelled as expired.
    #[arg(
        long,
        env = "STRATA_ORDER_TTL",
        default_value = "15m",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    pub order_ttl: Duration,
    /// How long reserving a confirmed order's stock may take before it is cancelled.
    #[arg(
        long,
        env = "STRATA_CONFIRM_TIMEOUT",
        default_value = "60s",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    pub confirm_timeout: Duration,
    /// How new events' payloads are encoded: json (readable) or binary (MessagePack;
    /// smaller). A store holds both; switching is safe.
    #[arg(long, env = "STRATA_EVENT_CODEC", default_value = "json", value_name = "CODEC")]
    pub event_codec: strata::Codec,
    /// Bearer tokens (see `strata auth add-token`): queries need read, commands write, the
    /// operator's routes and /metrics admin; /health stays open [default: no checks, and
    /// the service listens on loopback only].
    #[arg(long, env = "STRATA_AUTH_FILE", value_name = "FILE")]
    pub auth_file: Option<std::path::PathBuf>,
    /// Listen beyond loopback without --auth-file, when something in front of the service
    /// checks who calls.
    #[arg(long, env = "STRATA_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Connections open at once; beyond it, new ones are closed as they are accepted.
    #[arg(long, env = "STRATA_MAX_CONNECTIONS", default_value_t = 4096, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// How long a request's head may take to arrive, from its first byte.
    #[arg(long, env = "STRATA_HEADER_TIMEOUT", default_value = "5s", value_name = "DURATION",
          value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// How long a connection may wait idle for its next request.
    #[arg(long, env = "STRATA_IDLE_TIMEOUT", default_value = "60s", value_name = "DURATION",
          value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// How long a query may take, beyond the wait_ms it asked for; then 503.
    #[arg(long, env = "STRATA_REQUEST_TIMEOUT", default_value = "10s", value_name = "DURATION",
          value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Take no commands (their routes answer 405): a replica that builds its views, in
    /// SQLite in --data-dir, from the JetStream stream a writer publishes to (--source,
    /// --nats-stream, --nats-subject-prefix).
    #[arg(long, env = "STRATA_READ_ONLY", requires = "source", conflicts_with_all = ["nats", "redis"])]
    pub read_only: bool,
    /// The NATS server (nats://HOST:PORT) whose stream a --read-only replica follows.
    #[arg(long, env = "STRATA_SOURCE", value_name = "URL", requires = "read_only")]
    pub source: Option<String>,
    /// Where this node keeps its search index for GET /search/orders [default: DIR/search
    /// with a SQLite store, a temporary directory with memory; none on PostgreSQL, whose
    /// nodes then answer searches with 404].
    #[arg(long, env = "STRATA_SEARCH_DIR", value_name = "DIR", conflicts_with = "no_search")]
    pub search_dir: Option<std::path::PathBuf>,
    /// Keep no search index on this node: GET /search/orders answers 404.
    #[arg(long, env = "STRATA_NO_SEARCH")]
    pub no_search: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    /// A TOML file of these settings, by flag name (`order-ttl = "30m"`); flags and
    /// STRATA_* variables win over it.
    #[arg(long, env = "STRATA_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
}

/// `500ms`, `90s`, `15m`, `24h`, `7d`: a whole number and a unit, more than zero and at
/// most ten years.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let refuse = || format!("{text:?} is not a duration like 500ms, 90s, 15m, 24h or 7d");
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| refuse())?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(refuse()),
    };
    // Ten years bounds it well inside what clocks and dates can subtract.
    match number.checked_mul(millis) {
        Some(millis) if millis > 0 && millis <= 3650 * 86_400_000 => {
            Ok(Duration::from_millis(millis))
        }
        _ => Err(refuse()),
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let location = args.store.location()?;
    if args.read_only && !matches!(location, StoreLocation::Sqlite(_)) {
        let store = args.store.store.clone().unwrap_or_default();
        return Err(StoreUrlError::ReplicaNeedsSqlite(store).into());
    }
    let signals = count_signals();
    let listener = strata_http::server::bind(&args.bind)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let address = listener.local_addr().context("cannot read the bound address")?;
    let tokens = match &args.auth_file {
        Some(path) => Some(super::auth::load(path)?),
        None if address.ip().is_loopback() || args.insecure_no_auth => None,
        None => return Err(super::auth::AuthUsageError::InsecureBind(address.to_string()).into()),
    };
    let node_id =
        args.node_id.clone().unwrap_or_else(|| format!("{}:{}", host_name(), address.port()));
    // A memory store's index goes with the process, like its events.
    let mut temporary = None;
    let search = match (&args.search_dir, &location) {
        _ if args.no_search => None,
        (Some(dir), _) => Some(dir.clone()),
        (None, StoreLocation::Sqlite(dir)) => Some(dir.join("search")),
        (None, StoreLocation::Memory) => {
            let dir =
                tempfile::tempdir().context("cannot create a directory for the search index")?;
            let path = dir.path().to_owned();
            temporary = Some(dir);
            Some(path)
        }
        (None, StoreLocation::Postgres(_)) => None,
    };
    let node = Node { listener, node_id, tokens, signals, search };
    // "listening" is printed by `serve`, once the store is open and the projections started:
    // a client that waits for it finds a service that answers.
    match location {
        StoreLocation::Sqlite(dir) => {
            let open =
                if args.read_only { backends::open_sqlite_copy } else { backends::open_sqlite };
            let stores = open(&dir)
                .with_context(|| format!("cannot open the SQLite store in {}", dir.display()))?;
            println!("strata: data in {} (SQLite)", dir.display());
            serve_with_redis(stores, node, &args).await
        }
        StoreLocation::Postgres(url) => {
            let stores = backends::open_postgres(&url, &node.node_id)
                .await
                .context("cannot open the PostgreSQL store")?;
            println!("strata: data in PostgreSQL ({})", super::config::masked(&url));
            serve_with_redis(stores, node, &args).await
        }
        StoreLocation::Memory => {
            println!("strata: data in memory (lost when the process ends)");
            let served = serve_with_redis(backends::memory(), node, &args).await;
            drop(temporary);
            served
        }
    }
}

/// What a node is started with besides its stores and flags.
struct Node {
    listener: TcpListener,
    node_id: String,
    tokens: Option<Arc<strata_http::Tokens>>,
    signals: watch::Receiver<u32>,
    /// Where its search index lives, if it keeps one.
    search: Option<std::path::PathBuf>,
}

/// Serves `stores`, with the views `--redis` names in Redis when it is given.
async fn serve_with_redis<B: Backend>(
    stores: Stores<B>,
    node: Node,
    args: &ServeArgs,
) -> anyhow::Result<()> {
    let Some(redis) = args.redis.connect().await? else {
        return serve(stores, node, args).await;
    };
    serve(backends::with_redis(stores, redis), node, args).await
}

async fn serve<B: Backend>(stores: Stores<B>, node: Node, args: &ServeArgs) -> anyhow::Result<()> {
    let Node { listener, node_id, tokens, signals, search } = node;
    let (idempotency_ttl, codec) = (args.idempotency_ttl, args.event_codec);

    let fulfilment =
        FulfilmentSettings { order_ttl: args.order_ttl, confirm_timeout: args.confirm_timeout };
    // An event this code cannot read would stop the projections at it and refuse every
    // command on its aggregate: better not to start, and say which.
    let unreadable = SCHEMAS
        .unreadable_in(stores.events.as_ref())
        .await
        .context("cannot list the event types in the store")?;
    if !unreadable.is_empty() {
        let list: Vec<String> = unreadable.iter().map(|u| format!("  {u}")).collect();
        anyhow::bail!(
            "the store holds events this version of strata cannot read:\n{}\n\
             run a version that reads them, or add the missing upcasters",
            list.join("\n")
        );
    }
    // Connected before anything starts: a publisher or a replica that cannot reach its
    // server stops the service with a message rather than falling behind unseen.
    let publisher = args.nats.connect().await?;
    let source = match &args.source {
        Some(url) => Some(args.nats.follow(url).await?),
        None => None,
    };
    let role = if source.is_some() { Role::Replica } else { Role::Writer(fulfilment) };
    let mut app =
        App::start_with(stores, node_id, BusConfig { codec, ..BusConfig::default() }, role)
            .await
            .context("cannot prepare the projections' tables")?;
    if let Some(publisher) = publisher {
        app.deliver(NATS_PUBLISHER, Arc::new(publisher))
            .context("cannot start the NATS publisher")?;
    }
    if let Some(source) = source {
        app.follow(NATS_SOURCE, source).context("cannot start following the source")?;
    }
    if let Some(dir) = search {
        let index = strata_search::SearchIndex::open(&dir)
            .with_context(|| format!("cannot open the search index in {}", dir.display()))?;
        app.search(Arc::new(index)).context("cannot start the search index")?;
    }
    app.tokens = tokens;
    app.read_timeout = args.request_timeout;
    let app = Arc::new(app);
    let every = (idempotency_ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let expiry = tokio::spawn(strata::idempotency::expire_keys(
        app.events().clone(),
        idempotency_ttl,
        every,
    ));
    let address = listener.local_addr().context("cannot read the bound address")?;
    println!("strata: listening on http://{address} (node {}, {codec} payloads)", app.node_id);
    let shutdown = app.shutdown.clone();
    let first = signalled(signals.clone(), 1);
    let max_connections = connection_cap(args.max_connections as usize);
    let limits = Limits {
        max_connections,
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
    };
    let router = crate::http::router(app.clone());
    let server = strata_http::server::serve(
        listener,
        router,
        limits,
        app.http_metrics.connections.clone(),
        async move {
            first.await;
            println!("strata: shutting down");
            // Waiting queries answer 503 now, so only commands in flight are waited for.
            shutdown.begin();
        },
    );
    let give_up = async {
        app.shutdown.begun().await;
        tokio::select! {
            () = tokio::time::sleep(SHUTDOWN_GRACE) => {
                println!("strata: requests still running after {SHUTDOWN_GRACE:?}; stopping anyway");
            }
            () = signalled(signals, 2) => println!("strata: second signal; stopping at once"),
        }
    };
    tokio::select! {
        () = server => {}
        () = give_up => {}
    }
    expiry.abort();
    app.stop();
    println!("strata: stopped");
    Ok(())
}

/// How long a stopping service waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Counts SIGINT (Ctrl-C) and SIGTERM from the moment `strata serve` starts, so that a signal
/// sent while the store opens stops the service cleanly instead of killing it, and a quick
/// second one is not lost between two listeners.
fn count_signals() -> watch::Receiver<u32> {
    let (count, counted) = watch::channel(0);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = interrupt.recv() => {}
                            _ = terminate.recv() => {}
                        }
                        count.send_modify(|n| *n += 1);
                    }
                });
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(%error, "cannot listen for signals; stop the service with SIGKILL");
            }
        }
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            count.send_modify(|n| *n += 1);
        }
    });
    counted
}

/// Resolves when `signals` has counted `n` signals.
async fn signalled(mut signals: watch::Receiver<u32>, n: u32) {
    // The sender lives as long as the process listens; if it is gone, no signal can come.
    if signals.wait_for(|count| *count >= n).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// File handles kept for the stores, logs and listener beyond the connections.
/// Each SQLite connection holds three (database, WAL, shared memory), and each file has up
/// to 64 readers and 32 kept idle.
const RESERVED_HANDLES: usize = 512;

/// `asked`, or fewer when the process's file-handle limit would not leave the stores enough
/// beside that many connections (they would fail to open files under a flood).
fn connection_cap(asked: usize) -> usize {
    let limit = std::fs::read_to_string("/proc/self/limits").ok().and_then(|limits| {
        let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse::<usize>().ok()
    });
    match limit {
        Some(limit) if asked + RESERVED_HANDLES > limit => {
            let cap = limit.saturating_sub(RESERVED_HANDLES).max(1);
            println!(
                "strata: at most {cap} connections at once, not {asked}: the file-handle limit is \
                 {limit} (ulimit -n) and the stores keep {RESERVED_HANDLES}"
            );
            cap
        }
        _ => asked,
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_whole_number_and_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("3650d"), Ok(Duration::from_secs(3650 * 86_400)));
        for bad in [
            "",
            "h",
            "0h",
            "0ms",
            "1.5h",
            "-1h",
            "10",
            "10x",
            "1é",
            "5 s",
            "3651d",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
