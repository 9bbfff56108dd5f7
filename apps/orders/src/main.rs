//! The `strata` binary: parses the command line and runs it. All behaviour lives in the
//! `orders` library; this file only maps failures to messages and exit codes.

use std::io::IsTerminal;
use std::process::ExitCode;

use orders::bench::BenchUsageError;
use orders::cli::auth::AuthUsageError;
use orders::cli::projections::UnknownProjection;
use orders::cli::store::StoreUrlError;
use orders::cli::{LogFormat, config, exit};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match config::parse() {
        Ok(cli) => cli,
        Err(error) => {
            eprintln!("strata: error: {error}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        // Colour codes only where a terminal shows them, not in files or collectors.
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("strata: error: cannot start the async runtime: {error}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => ExitCode::from(exit::SUCCESS),
        Err(error) => {
            eprintln!("strata: error: {}", exit::describe(&error));
            if error.downcast_ref::<StoreUrlError>().is_some()
                || error.downcast_ref::<BenchUsageError>().is_some()
                || error.downcast_ref::<UnknownProjection>().is_some()
                || error.downcast_ref::<AuthUsageError>().is_some()
            {
                ExitCode::from(exit::USAGE)
            } else {
                ExitCode::from(exit::FAILURE)
            }
        }
    }
}
