//! Where `serve`'s settings come from: flags, then `STRATA_*` environment variables, then
//! the TOML file of `--config FILE`, then defaults. clap knows the first two and the last;
//! the file's values are given to clap as flags for every setting neither a flag nor the
//! environment set, so each value is checked by the same parser whatever its source.
//! `strata config` prints the outcome with each value's source.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use super::Cli;

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A flag on the command line.
    Flag,
    /// An environment variable.
    Env(String),
    /// The `--config` file.
    File(PathBuf),
    /// The built-in default.
    Default,
    /// Nothing: the setting is off or derived at start-up.
    Unset,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag => write!(f, "flag"),
            Source::Env(name) => write!(f, "env {name}"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Default => write!(f, "default"),
            Source::Unset => write!(f, "unset"),
        }
    }
}

/// One setting of `serve` as it will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The flag's name, as in the file (`order-ttl`).
    pub name: String,
    /// The value, with any password masked.
    pub value: String,
    /// Where it came from.
    pub source: Source,
}

/// A configuration that cannot be used: exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML, or not a table of settings.
    #[error("the configuration file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A key that is no setting of `serve`.
    #[error("the configuration file {path} sets {key:?}, which is not a setting; known: {known}")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The settings there are.
        known: String,
    },
    /// A value of the wrong kind, or one the setting refuses.
    #[error("the configuration file {path} holds a value that cannot be used: {message}")]
    Value {
        /// The file.
        path: PathBuf,
        /// Why, naming the setting.
        message: String,
    },
}

/// Settings that only make sense on the command line.
const NOT_IN_FILE: &[&str] = &["config", "help", "version"];

/// Settings that say one thing together: where the store is. A flag or variable setting
/// either one overrides both in the file.
const TOGETHER: &[&[&str]] = &[&["store", "data_dir"]];

/// Whether a flag or variable set `id`, or another setting that goes with it.
fn set_outside_the_file(matches: &ArgMatches, id: &str) -> bool {
    let group = TOGETHER.iter().find(|group| group.contains(&id)).copied().unwrap_or(&[]);
    std::iter::once(id).chain(group.iter().copied()).any(|id| {
        matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    })
}

/// Parses the command line of the running process, with the `--config` file's values.
pub fn parse() -> Result<Cli, ConfigError> {
    parse_from(std::env::args_os().collect())
}

/// Parses `args` (the program name first) with the `--config` file's values.
pub fn parse_from(args: Vec<OsString>) -> Result<Cli, ConfigError> {
    let mut command = Cli::command();
    command.build();
    let matches = command.clone().try_get_matches_from(&args).unwrap_or_else(|error| error.exit());
    let Some((name, serve_matches)) = serve_matches(&matches) else {
        return Ok(from_matches(&matches));
    };
    let serve_command =
        if name.is_empty() { command.clone() } else { subcommand(&command, name).clone() };
    let mut from_file = BTreeMap::new();
    let mut args = args;
    if let Some(path) = serve_matches.get_one::<PathBuf>("config") {
        for (key, value) in read(path)? {
            let arg = serve_command
                .get_arguments()
                .find(|arg| arg.get_long() == Some(key.as_str()))
                .filter(|arg| !NOT_IN_FILE.contains(&arg.get_id().as_str()))
                .ok_or_else(|| ConfigError::UnknownKey {
                    path: path.clone(),
                    key: key.clone(),
                    known: known_keys(&serve_command),
                })?;
            let id = arg.get_id().as_str();
            if set_outside_the_file(serve_matches, id) {
                continue;
            }
            let flag = match value {
                FileValue::Switch(true) => format!("--{key}"),
                FileValue::Switch(false) => continue,
                FileValue::Text(text) => format!("--{key}={text}"),
            };
            args.push(flag.into());
            from_file.insert(id.to_owned(), path.clone());
        }
    }
    // The command line parsed without the file's values, so any refusal now is of one of
    // them; clap's message names the flag, which is the file's key.
    let matches = command.try_get_matches_from(&args).map_err(|error| {
        let detail = error.to_string();
        ConfigError::Value {
            path: serve_matches.get_one::<PathBuf>("config").cloned().unwrap_or_default(),
            message: detail
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_owned(),
        }
    })?;
    let mut cli = from_matches(&matches);
    let (_, serve_matches) = serve_matches_of(&matches, name);
    cli.settings = settings(&serve_command, serve_matches, &from_file);
    Ok(cli)
}

fn from_matches(matches: &ArgMatches) -> Cli {
    Cli::from_arg_matches(matches).unwrap_or_else(|error| error.exit())
}

/// The matches holding `serve`'s settings: the top level (no subcommand), or those of
/// `serve` or `config`. `None` for other commands, which take no `--config`.
fn serve_matches(matches: &ArgMatches) -> Option<(&'static str, &ArgMatches)> {
    match matches.subcommand() {
        None => Some(("", matches)),
        Some(("serve", sub)) => Some(("serve", sub)),
        Some(("config", sub)) => Some(("config", sub)),
        Some(_) => None,
    }
}

fn serve_matches_of<'a>(matches: &'a ArgMatches, name: &str) -> (&'a str, &'a ArgMatches) {
    match matches.subcommand() {
        Some((sub, found)) if sub == name => (sub, found),
        _ => ("", matches),
    }
}

fn subcommand<'a>(command: &'a clap::Command, name: &str) -> &'a clap::Command {
    command.find_subcommand(name).unwrap_or(command)
}

fn known_keys(command: &clap::Command) -> String {
    let keys: Vec<&str> = command
        .get_arguments()
        .filter(|arg| !NOT_IN_FILE.contains(&arg.get_id().as_str()))
        .filter_map(clap::Arg::get_long)
        .collect();
    keys.join(", ")
}

enum FileValue {
    Switch(bool),
    Text(String),
}

/// The file's settings: a flat TOML table of flag names (`order-ttl`, or `order_ttl`) to
/// strings, numbers or booleans.
fn read(path: &Path) -> Result<Vec<(String, FileValue)>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Unreadable { path: path.to_owned(), source })?;
    let table: toml::Table = text.parse().map_err(|error: toml::de::Error| {
        ConfigError::Syntax { path: path.to_owned(), message: error.message().to_owned() }
    })?;
    let mut settings = Vec::new();
    for (key, value) in table {
        let key = key.replace('_', "-");
        let value = match value {
            toml::Value::String(text) => FileValue::Text(text),
            toml::Value::Integer(number) => FileValue::Text(number.to_string()),
            toml::Value::Boolean(on) => FileValue::Switch(on),
            other => {
                return Err(ConfigError::Value {
                    path: path.to_owned(),
                    message: format!("{key}: expected a string, number or boolean, not {other}"),
                });
            }
        };
        settings.push((key, value));
    }
    Ok(settings)
}

/// Every setting of `command` as parsed, with its source.
fn settings(
    command: &clap::Command,
    matches: &ArgMatches,
    from_file: &BTreeMap<String, PathBuf>,
) -> Vec<Setting> {
    let mut settings = Vec::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if NOT_IN_FILE.contains(&id) {
            continue;
        }
        let value = matches
            .get_raw(id)
            .map(|values| {
                values
                    .map(|value| value.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let source = match (from_file.get(id), matches.value_source(id)) {
            (Some(path), _) => Source::File(path.clone()),
            (None, Some(ValueSource::CommandLine)) => Source::Flag,
            (None, Some(ValueSource::EnvVariable)) => Source::Env(
                arg.get_env().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default(),
            ),
            (None, Some(ValueSource::DefaultValue)) => Source::Default,
            _ => Source::Unset,
        };
        settings.push(Setting { name: long.to_owned(), value: masked(&value), source });
    }
    settings
}

/// `value` with the password of a URL in it replaced by `****`.
pub fn masked(value: &str) -> String {
    let Some((scheme, rest)) = value.split_once("://") else { return value.to_owned() };
    let (authority, tail) = rest.split_once('/').map_or((rest, None), |(a, t)| (a, Some(t)));
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:****@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = tail.map(|tail| {
        let Some((path, query)) = tail.split_once('?') else { return tail.to_owned() };
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=****"),
                _ => pair.to_owned(),
            })
            .collect();
        format!("{path}?{}", query.join("&"))
    });
    match tail {
        Some(tail) => format!("{scheme}://{authority}/{tail}"),
        None => format!("{scheme}://{authority}"),
    }
}

/// `strata config`: the effective settings as a table.
pub fn print(settings: &[Setting]) {
    let width = settings.iter().map(|s| s.name.len()).max().unwrap_or(7).max(7);
    let value_width = settings.iter().map(|s| s.value.len()).max().unwrap_or(5).max(5);
    println!("{:<width$}  {:<value_width$}  source", "setting", "value");
    for setting in settings {
        let value = if setting.value.is_empty() { "-" } else { &setting.value };
        println!("{:<width$}  {:<value_width$}  {}", setting.name, value, setting.source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_store_urls_are_masked() {
        assert_eq!(
            masked("postgres://app:s3cret@db:5432/orders"),
            "postgres://app:****@db:5432/orders"
        );
        assert_eq!(
            masked("postgres://app@db/orders?password=s3cret&sslmode=require"),
            "postgres://app@db/orders?password=****&sslmode=require"
        );
        assert_eq!(masked("sqlite:./data"), "sqlite:./data");
        assert_eq!(masked("postgres://app@db/orders"), "postgres://app@db/orders");
    }
}
