//! `strata serve`: opens the store, starts the projections and answers HTTP until Ctrl-C or
//! SIGTERM, then stops accepting, finishes requests in flight and closes the store.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use strata::BusConfig;
use tokio::net::TcpListener;

use super::store::{StoreArgs, StoreLocation};
use crate::app::{App, Backend, Stores};
use crate::backends;

/// Options of `strata serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "STRATA_BIND", default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub bind: String,
    /// This node's id, shown by /health and as projection owner [default: HOST:PORT].
    #[arg(long, env = "STRATA_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let location = args.store.location()?;
    let listener = TcpListener::bind(&args.bind)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let address = listener.local_addr().context("cannot read the bound address")?;
    let node_id = args.node_id.unwrap_or_else(|| format!("{}:{}", host_name(), address.port()));
    println!("strata: listening on http://{address} (node {node_id})");
    match location {
        StoreLocation::Sqlite(dir) => {
            let stores = backends::open_sqlite(&dir)
                .with_context(|| format!("cannot open the SQLite store in {}", dir.display()))?;
            println!("strata: data in {} (SQLite)", dir.display());
            serve(stores, listener, node_id).await
        }
        StoreLocation::Postgres(url) => {
            let stores = backends::open_postgres(&url, &node_id)
                .await
                .context("cannot open the PostgreSQL store")?;
            println!("strata: data in PostgreSQL ({})", redacted(&url));
            serve(stores, listener, node_id).await
        }
        StoreLocation::Memory => {
            println!("strata: data in memory (lost when the process ends)");
            serve(backends::memory(), listener, node_id).await
        }
    }
}

async fn serve<B: Backend>(
    stores: Stores<B>,
    listener: TcpListener,
    node_id: String,
) -> anyhow::Result<()> {
    let app = Arc::new(
        App::start(stores, node_id, BusConfig::default())
            .await
            .context("cannot prepare the projections' tables")?,
    );
    axum::serve(listener, crate::http::router(app.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the HTTP server failed")?;
    app.stop();
    println!("strata: stopped");
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    println!("strata: shutting down");
}

/// The URL without its password, for printing.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
