//! `strata auth add-token`, and the auth file `strata serve --auth-file` reads.
//!
//! The file keeps, per token, its subject, its role and its SHA-256, never the token: a new
//! token is printed once, alone on the last line of standard output, and cannot be shown
//! again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use strata_http::auth::{AuthFile, TokenEntry, token_hash};
use strata_http::{Role, Tokens};

/// Options of `strata auth`.
#[derive(Debug, Args)]
pub struct AuthArgs {
    #[command(subcommand)]
    command: AuthCommand,
}

#[derive(Debug, Subcommand)]
enum AuthCommand {
    /// Adds a new random token to the auth file (created if missing) and prints it once.
    AddToken(AddTokenArgs),
}

#[derive(Debug, Args)]
struct AddTokenArgs {
    /// Who will use the token; recorded as `user` on the events its requests cause.
    #[arg(long, value_name = "SUBJECT")]
    subject: String,
    /// What it may do: read (queries), write (commands and queries) or admin (everything).
    #[arg(long, value_name = "ROLE")]
    role: Role,
    /// The auth file that `strata serve --auth-file` reads.
    #[arg(long, value_name = "FILE")]
    auth_file: PathBuf,
}

/// A mistake in the command line or its auth file; exits with the usage code.
#[derive(Debug, thiserror::Error)]
pub enum AuthUsageError {
    /// The file cannot be read or written.
    #[error("auth file {path}: {error}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        error: String,
    },
    /// A subject that is empty, not printable, or a saga's.
    #[error("--subject must be 1 to 128 visible characters, not starting with \"saga:\"")]
    Subject,
    /// Listening beyond this machine with nobody checked.
    #[error(
        "{0} is reachable from other machines and no --auth-file is given: anyone could write \
         and read every customer's details. Give --auth-file FILE (see `strata auth add-token`), \
         or --insecure-no-auth if something in front of the service checks who calls"
    )]
    InsecureBind(String),
}

/// Runs `strata auth …`.
pub fn run(args: AuthArgs) -> anyhow::Result<()> {
    match args.command {
        AuthCommand::AddToken(args) => add_token(args),
    }
}

/// The tokens in the auth file at `path`.
pub fn load(path: &Path) -> Result<Arc<Tokens>, AuthUsageError> {
    let file = read(path)?.ok_or_else(|| AuthUsageError::File {
        path: path.display().to_string(),
        error: "no such file".to_owned(),
    })?;
    Ok(Arc::new(Tokens::new(&file)))
}

fn read(path: &Path) -> Result<Option<AuthFile>, AuthUsageError> {
    let failed = |error: String| AuthUsageError::File { path: path.display().to_string(), error };
    match std::fs::read_to_string(path) {
        Ok(text) => AuthFile::parse(&text).map(Some).map_err(|error| failed(error.to_string())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(failed(error.to_string())),
    }
}

fn add_token(args: AddTokenArgs) -> anyhow::Result<()> {
    let subject = args.subject.trim();
    if subject.is_empty()
        || subject.len() > 128
        || subject.chars().any(char::is_control)
        || subject.starts_with(strata_http::auth::SAGA_PREFIX)
    {
        return Err(AuthUsageError::Subject.into());
    }
    let mut file = read(&args.auth_file)?.unwrap_or_default();
    // 244 random bits from the operating system's generator (two version 4 UUIDs).
    let token = format!("st_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    file.tokens.push(TokenEntry {
        subject: subject.to_owned(),
        role: args.role,
        sha256: token_hash(&token),
    });
    let text = file.to_toml().map_err(|error| AuthUsageError::File {
        path: args.auth_file.display().to_string(),
        error: error.to_string(),
    })?;
    write(&args.auth_file, &text)?;
    let role = match args.role {
        Role::Read => "read",
        Role::Write => "write",
        Role::Admin => "admin",
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "strata: added a {role} token for {subject} to {}; it is shown this once:",
        args.auth_file.display()
    )?;
    writeln!(out, "{token}")?;
    Ok(())
}

/// Writes `text` to `path` through a new file beside it (created exclusively, readable by
/// its owner only) and a rename, so that a crash leaves the old file or the new one. Two
/// `add-token` runs at once on one file may lose one token: run them one at a time.
fn write(path: &Path, text: &str) -> Result<(), AuthUsageError> {
    let failed = |error: String| AuthUsageError::File { path: path.display().to_string(), error };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut partial =
        tempfile::NamedTempFile::new_in(&dir).map_err(|error| failed(error.to_string()))?;
    partial.write_all(text.as_bytes()).map_err(|error| failed(error.to_string()))?;
    partial.as_file().sync_all().map_err(|error| failed(error.to_string()))?;
    partial.persist(path).map_err(|error| failed(error.error.to_string()))?;
    // The rename is durable once the directory is.
    if let Ok(directory) = std::fs::File::open(&dir) {
        let _ = directory.sync_all();
    }
    Ok(())
}
