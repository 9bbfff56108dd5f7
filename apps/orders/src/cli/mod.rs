//! The `strata` command line. Arguments are parsed in two stages: what the user typed
//! ([`Cli`]) and the validated settings a command runs with ([`store::StoreLocation`]).

pub mod auth;
pub mod config;
pub mod events;
pub mod exit;
mod progress;
pub mod projections;
mod serve;
pub mod store;

use clap::{Parser, Subcommand};

pub use serve::ServeArgs;

/// Strata: an event-sourced orders service. With no command, runs `serve`.
#[derive(Debug, Parser)]
#[command(name = "strata", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
    /// How log lines on standard error look: text (coloured only on a terminal) or json
    /// (one object per line). Which lines: RUST_LOG (default info).
    #[arg(
        long,
        global = true,
        env = "STRATA_LOG_FORMAT",
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
    /// `serve`'s settings with where each came from, for `strata config`.
    #[arg(skip)]
    pub settings: Vec<config::Setting>,
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colours only when standard error is a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the HTTP service (the default).
    Serve(ServeArgs),
    /// Runs the standard workload W1 and reports throughput, latency and correctness.
    Bench(crate::bench::BenchArgs),
    /// Exports or imports the event log as JSON lines (e.g. to move a store to PostgreSQL).
    Events(events::EventsArgs),
    /// Lists the projections (position, lag, status, parked instances) or rebuilds one.
    Projections(projections::ProjectionsArgs),
    /// Repeats faults (kill -9, PostgreSQL frozen or stopped, connections terminated, disk
    /// full, a damaged view file, hostile clients) against `strata serve` under load and
    /// prints what was lost, duplicated or answered wrongly.
    Chaos(crate::chaos::ChaosArgs),
    /// Manages the bearer tokens of the auth file that `serve --auth-file` reads.
    Auth(auth::AuthArgs),
    /// Prints the settings `serve` would run with (same flags), each with its source:
    /// flag, environment, the --config file or default. Passwords are masked.
    Config(ServeArgs),
}

impl Cli {
    /// Runs the chosen command to completion.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Some(Command::Serve(args)) => serve::run(args).await,
            Some(Command::Bench(args)) => crate::bench::run(args).await,
            Some(Command::Events(args)) => events::run(args).await,
            Some(Command::Projections(args)) => projections::run(args).await,
            Some(Command::Chaos(args)) => crate::chaos::run(args).await,
            Some(Command::Auth(args)) => auth::run(args),
            Some(Command::Config(args)) => {
                args.store.location()?;
                config::print(&self.settings);
                Ok(())
            }
            None => serve::run(self.serve).await,
        }
    }
}
