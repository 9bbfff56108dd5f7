//! `--config FILE`, `STRATA_*` variables and flags, in that order of precedence, and
//! `strata config`, which shows the outcome.

use std::process::Command;

use crate::process::Server;

fn strata_config(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
    command.arg("config").args(args);
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("STRATA_")) {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

/// The value and source `strata config` printed for `setting`.
fn row(table: &str, setting: &str) -> (String, String) {
    let line = table
        .lines()
        .find(|line| line.split_whitespace().next() == Some(setting))
        .unwrap_or_else(|| panic!("no row {setting} in\n{table}"));
    let mut words = line.split_whitespace().skip(1);
    let value = words.next().unwrap().to_owned();
    (value, words.collect::<Vec<_>>().join(" "))
}

#[test]
fn flags_win_over_the_environment_which_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("strata.toml");
    std::fs::write(
        &file,
        "order-ttl = \"30m\"\nconfirm_timeout = \"2m\"\nidempotency-ttl = \"2h\"\n\
         store = \"postgres://app:s3cret@db.internal:5432/orders\"\n",
    )
    .unwrap();
    let path = file.display().to_string();
    let (code, table, stderr) = strata_config(
        &["--config", &path, "--confirm-timeout", "90s"],
        &[("STRATA_IDEMPOTENCY_TTL", "1h")],
    );
    assert_eq!(code, 0, "{stderr}");
    let from_file = format!("file {path}");
    assert_eq!(row(&table, "order-ttl"), ("30m".into(), from_file.clone()));
    assert_eq!(row(&table, "confirm-timeout"), ("90s".into(), "flag".into()));
    assert_eq!(row(&table, "idempotency-ttl"), ("1h".into(), "env STRATA_IDEMPOTENCY_TTL".into()));
    assert_eq!(row(&table, "bind"), ("127.0.0.1:8080".into(), "default".into()));
    assert_eq!(
        row(&table, "store"),
        ("postgres://app:****@db.internal:5432/orders".into(), from_file),
        "the password is masked"
    );
    assert!(!table.contains("s3cret"), "{table}");
}

#[test]
fn a_store_named_outside_the_file_overrides_the_files_store_and_data_dir_both() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("strata.toml");
    std::fs::write(&file, "data-dir = \"/srv/strata\"\n").unwrap();
    let path = file.display().to_string();
    let (code, table, stderr) =
        strata_config(&["--config", &path], &[("STRATA_STORE", "postgres://app@db/orders")]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        row(&table, "store"),
        ("postgres://app@db/orders".into(), "env STRATA_STORE".into())
    );
    assert_eq!(row(&table, "data-dir").1, "unset");
}

#[test]
fn an_unusable_configuration_exits_2_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("order-tll = \"30m\"\n", "not a setting"),
        ("order-ttl = \"soon\"\n", "--order-ttl"),
        ("order-ttl = [1]\n", "order-ttl"),
        ("order-ttl = \n", "not valid TOML"),
    ];
    for (i, (text, says)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&file, text).unwrap();
        for command in [&["config"][..], &["serve", "--bind", "127.0.0.1:0"][..]] {
            let output = Command::new(env!("CARGO_BIN_EXE_strata"))
                .args(command)
                .args(["--config", &file.display().to_string()])
                .env("STRATA_DATA_DIR", dir.path())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{text:?}: {stderr}");
            assert!(stderr.contains(says), "{text:?} says {says:?}: {stderr}");
        }
    }
    let (code, _, stderr) = strata_config(&["--config", "/no/such/strata.toml"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot read the configuration file"), "{stderr}");
}

#[tokio::test]
async fn serve_runs_with_the_files_settings() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("strata.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &file,
        format!("node-id = \"from-the-file\"\ndata-dir = \"{}\"\n", data.display()),
    )
    .unwrap();
    let server = Server::spawn(&["--config", &file.display().to_string()]);
    let (status, health) = server.send("GET", "/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(health["node_id"], "from-the-file");
    assert!(data.join("events.sqlite").exists(), "the store is where the file says");
}
