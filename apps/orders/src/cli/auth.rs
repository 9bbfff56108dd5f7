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
    /// A subject that is empty or not printable.
    #[error("--subject must be 1 to 128 visible characters")]
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
    if subject.is_empty() || subject.len() > 128 || subject.chars().any(char::is_control) {
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
    write(&args.auth_file, &file.to_toml())?;
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

/// Writes `text` to `path` through a file beside it and a rename, so that a crash leaves
/// the old file or the new one, readable by its owner only.
fn write(path: &Path, text: &str) -> Result<(), AuthUsageError> {
    let failed = |error: std::io::Error| AuthUsageError::File {
        path: path.display().to_string(),
        error: error.to_string(),
    };
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(&partial).map_err(failed)?;
    out.write_all(text.as_bytes()).and_then(|()| out.sync_all()).map_err(failed)?;
    std::fs::rename(&partial, path).map_err(failed)
}
