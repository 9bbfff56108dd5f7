//! `--store URL` and `--data-dir DIR`, shared by every command that touches a store.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

/// Where the store lives, as typed.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The store: `sqlite:DIR` (SQLite files in DIR), `postgres://USER@HOST:PORT/DB`
    /// (several nodes may share it), or `memory` (nothing kept) [default: sqlite:./data].
    #[arg(long, env = "STRATA_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// The data directory; alone it means `--store sqlite:DIR`.
    #[arg(long, env = "STRATA_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// `--redis URL` and `--redis-prefix PREFIX`: the views kept in Redis.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Keep the products and customers views in Redis (redis://HOST:PORT[/DB]); every node
    /// of a PostgreSQL deployment shares them [default: with the other views].
    #[arg(long, env = "STRATA_REDIS", value_name = "URL")]
    pub redis: Option<String>,
    /// What every Redis key of this deployment starts with, so that several deployments can
    /// share one server.
    #[arg(long, env = "STRATA_REDIS_PREFIX",
          default_value = strata_redis::DEFAULT_PREFIX, value_name = "PREFIX",
          value_parser = parse_redis_prefix)]
    pub redis_prefix: String,
}

fn parse_redis_prefix(text: &str) -> Result<String, String> {
    strata_redis::check_prefix(text).map(|()| text.to_owned()).map_err(|error| error.to_string())
}

impl RedisArgs {
    /// Connects when `--redis` is given, and says so.
    pub async fn connect(&self) -> anyhow::Result<Option<strata_redis::RedisViewManager>> {
        let Some(url) = &self.redis else { return Ok(None) };
        let redis = strata_redis::RedisViewManager::connect(url, &self.redis_prefix)
            .await
            .context("cannot open the Redis view store")?;
        println!(
            "strata: {} views in Redis ({}, keys {}*)",
            crate::backends::REDIS_PROJECTIONS.join(" and "),
            super::config::masked(url),
            self.redis_prefix
        );
        Ok(Some(redis))
    }
}

/// `--nats URL`, `--nats-stream NAME` and `--nats-subject-prefix PREFIX`: where committed
/// events are published for other services.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// Publish every committed event to NATS JetStream (nats://HOST:PORT), in order, at
    /// least once, with the event id as message id; one node of a deployment publishes.
    #[arg(long, env = "STRATA_NATS", value_name = "URL")]
    pub nats: Option<String>,
    /// The JetStream stream, created when missing.
    #[arg(long, env = "STRATA_NATS_STREAM",
          default_value = strata_nats::DEFAULT_STREAM, value_name = "NAME",
          value_parser = parse_stream_name)]
    pub nats_stream: String,
    /// What every subject starts with (then .AGGREGATE_TYPE.AGGREGATE_ID), so that two
    /// deployments can share one server.
    #[arg(long, env = "STRATA_NATS_SUBJECT_PREFIX",
          default_value = strata_nats::DEFAULT_SUBJECT_PREFIX, value_name = "PREFIX",
          value_parser = parse_subject_prefix)]
    pub nats_subject_prefix: String,
}

fn parse_stream_name(text: &str) -> Result<String, String> {
    strata_nats::check_stream_name(text)
        .map(|()| text.to_owned())
        .map_err(|error| error.to_string())
}

fn parse_subject_prefix(text: &str) -> Result<String, String> {
    strata_nats::check_subject_prefix(text)
        .map(|()| text.to_owned())
        .map_err(|error| error.to_string())
}

/// The name the publisher runs under, beside the projections.
pub const NATS_PUBLISHER: &str = "nats_publisher";
/// The name a replica's follower runs under, beside the projections.
pub const NATS_SOURCE: &str = "nats_source";

impl NatsArgs {
    fn settings(&self, url: &str) -> strata_nats::NatsSettings {
        strata_nats::NatsSettings {
            url: url.to_owned(),
            stream: self.nats_stream.clone(),
            subject_prefix: self.nats_subject_prefix.clone(),
        }
    }

    /// Connects when `--nats` is given (creating the stream), and says so.
    pub async fn connect(&self) -> anyhow::Result<Option<strata_nats::JetStreamOutlet>> {
        let Some(url) = &self.nats else { return Ok(None) };
        let settings = self.settings(url);
        let outlet =
            strata_nats::JetStreamOutlet::connect(&settings, crate::cli::events::export_object)
                .await
                .context("cannot open the NATS publisher")?;
        println!(
            "strata: publishing events to JetStream stream {} at {} (subjects {}.>)",
            self.nats_stream,
            super::config::masked(url),
            self.nats_subject_prefix
        );
        Ok(Some(outlet))
    }

    /// Connects to `url` to read the stream back, as a replica does, and says so.
    pub async fn follow(&self, url: &str) -> anyhow::Result<strata_nats::JetStreamSource> {
        let source = strata_nats::JetStreamSource::connect(
            &self.settings(url),
            crate::cli::events::import_object,
        )
        .await
        .context("cannot reach the replica's source")?;
        println!(
            "strata: read-only replica of JetStream stream {} at {} (subjects {}.>); command \
             routes answer 405",
            self.nats_stream,
            super::config::masked(url),
            self.nats_subject_prefix
        );
        Ok(source)
    }
}

/// Where the store lives, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// SQLite files in this directory.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by connection URL.
    Postgres(String),
    /// In memory.
    Memory,
}

/// A store URL or flag combination that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreUrlError {
    /// Both flags given, pointing at different places.
    #[error("--store {store} and --data-dir {data_dir} disagree; give one of them")]
    Conflicting {
        /// The `--store` value.
        store: String,
        /// The `--data-dir` value.
        data_dir: String,
    },
    /// Nothing this build knows.
    #[error("unknown store {0:?}; expected sqlite:DIR, postgres://… or memory")]
    Unknown(String),
    /// A read-only replica given a store other than a data directory.
    #[error(
        "a read-only replica keeps its copy of the log in SQLite: give --data-dir DIR, not {0}"
    )]
    ReplicaNeedsSqlite(String),
}

/// The data directory used when neither flag is given.
pub const DEFAULT_DATA_DIR: &str = "./data";

impl StoreArgs {
    /// Validates the flags into a location.
    pub fn location(&self) -> Result<StoreLocation, StoreUrlError> {
        let Some(url) = &self.store else {
            let dir = self.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
            return Ok(StoreLocation::Sqlite(dir));
        };
        let location = if let Some(dir) = url.strip_prefix("sqlite:").filter(|d| !d.is_empty()) {
            StoreLocation::Sqlite(PathBuf::from(dir))
        } else if url == "memory" || url == "memory:" {
            StoreLocation::Memory
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            if self.data_dir.is_some() {
                return Err(StoreUrlError::Conflicting {
                    store: url.clone(),
                    data_dir: self
                        .data_dir
                        .as_ref()
                        .map(|d| d.display().to_string())
                        .unwrap_or_default(),
                });
            }
            StoreLocation::Postgres(url.clone())
        } else {
            return Err(StoreUrlError::Unknown(url.clone()));
        };
        match (&location, &self.data_dir) {
            (StoreLocation::Sqlite(dir), Some(data_dir)) if dir != data_dir => {
                Err(StoreUrlError::Conflicting {
                    store: url.clone(),
                    data_dir: data_dir.display().to_string(),
                })
            }
            _ => Ok(location),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(store: Option<&str>, data_dir: Option<&str>) -> StoreArgs {
        StoreArgs { store: store.map(str::to_owned), data_dir: data_dir.map(PathBuf::from) }
    }

    #[test]
    fn data_dir_alone_means_sqlite_there_and_nothing_means_data() {
        assert_eq!(args(None, Some("x")).location(), Ok(StoreLocation::Sqlite("x".into())));
        assert_eq!(args(None, None).location(), Ok(StoreLocation::Sqlite("./data".into())));
    }

    #[test]
    fn store_urls_are_parsed_or_refused_clearly() {
        assert_eq!(
            args(Some("sqlite:/tmp/s"), None).location(),
            Ok(StoreLocation::Sqlite("/tmp/s".into()))
        );
        assert_eq!(args(Some("memory"), None).location(), Ok(StoreLocation::Memory));
        assert_eq!(
            args(Some("postgres://x/y"), None).location(),
            Ok(StoreLocation::Postgres("postgres://x/y".into()))
        );
        assert!(matches!(
            args(Some("postgres://x/y"), Some("d")).location(),
            Err(StoreUrlError::Conflicting { .. })
        ));
        assert!(matches!(args(Some("sqlite:"), None).location(), Err(StoreUrlError::Unknown(_))));
        assert!(matches!(
            args(Some("sqlite:a"), Some("b")).location(),
            Err(StoreUrlError::Conflicting { .. })
        ));
        assert_eq!(
            args(Some("sqlite:a"), Some("a")).location(),
            Ok(StoreLocation::Sqlite("a".into()))
        );
    }
}
