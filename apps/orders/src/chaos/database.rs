//! A database of its own for each PostgreSQL fault, so that terminating "every connection
//! of the service" touches nothing else on the server; dropped afterwards.

use anyhow::{Context, bail};
use tokio_postgres::NoTls;

/// A fresh database on the server of `url`, and a connection to the server's own database
/// for the faults that act on the server.
pub struct ChaosDatabase {
    admin: tokio_postgres::Client,
    name: String,
    url: String,
}

/// `postgres://USER@HOST:PORT/DB?PARAMS` taken apart.
struct Url<'a> {
    scheme: &'a str,
    user: Option<&'a str>,
    address: String,
    query: Option<&'a str>,
}

fn parse(url: &str) -> anyhow::Result<Url<'_>> {
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("{url} is not a postgres:// URL");
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (user, host) = match authority.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, authority),
    };
    let address = if host.contains(':') { host.to_owned() } else { format!("{host}:5432") };
    let query = path.split_once('?').map(|(_, query)| query);
    Ok(Url { scheme, user, address, query })
}

impl ChaosDatabase {
    /// Creates `strata_chaos_{run}` on the server of `url`.
    pub async fn create(url: &str, run: &str) -> anyhow::Result<Self> {
        // The service is sent through the proxy by URL: one it cannot take apart is refused
        // before anything is created.
        parse(url)?;
        let (admin, connection) = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio_postgres::connect(url, NoTls),
        )
        .await
        .with_context(|| format!("{url} did not answer within 5 s"))?
        .with_context(|| format!("cannot connect to {url}"))?;
        tokio::spawn(connection);
        let name = format!("strata_chaos_{run}");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        Ok(ChaosDatabase { admin, name, url: url.to_owned() })
    }

    /// The service's URL for the new database, through `port` on loopback (the proxy).
    pub fn url_through(&self, port: u16) -> anyhow::Result<String> {
        let url = parse(&self.url)?;
        let user = url.user.map(|user| format!("{user}@")).unwrap_or_default();
        let query = url.query.map(|query| format!("?{query}")).unwrap_or_default();
        Ok(format!("{}://{user}127.0.0.1:{port}/{}{query}", url.scheme, self.name))
    }

    /// The server's `HOST:PORT`, for the proxy.
    pub fn server_address(&self) -> anyhow::Result<String> {
        Ok(parse(&self.url)?.address)
    }

    /// Terminates every backend connected to the database, as an operator or a failover
    /// would; how many there were.
    pub async fn terminate_backends(&self) -> anyhow::Result<u64> {
        let rows = self
            .admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&self.name],
            )
            .await
            .context("cannot terminate the service's connections")?;
        Ok(rows.len() as u64)
    }

    /// Drops the database, closing whatever is still connected to it.
    pub async fn drop_database(self) -> anyhow::Result<()> {
        self.admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .await
            .with_context(|| format!("cannot drop database {}", self.name))
    }
}
