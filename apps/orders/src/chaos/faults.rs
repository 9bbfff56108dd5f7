//! The faults themselves: each is done to a running node and undone, with what was seen
//! meanwhile. They act from outside the service, as the world does.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::client::Client;

/// How fast `/health` must answer, whatever else is going on.
pub const HEALTH_BOUND: Duration = Duration::from_secs(1);

/// What `/health` said while a fault lasted.
#[derive(Debug, Default, Clone)]
pub struct HealthSeen {
    /// Probes sent.
    pub probes: u64,
    /// Probes answered later than [`HEALTH_BOUND`], or not at all.
    pub slow: u64,
    /// The longest a probe waited.
    pub slowest: Duration,
    /// Probes answered 503 (a dependency down).
    pub unavailable: u64,
    /// Probes whose store check said the writes were failing.
    pub writes_failing: u64,
    /// What the first probe that failed saw.
    pub first_failure: Option<String>,
    /// What the fault should have made `/health` say and it did not.
    pub missed: Option<String>,
}

impl HealthSeen {
    /// Adds another fault's probes.
    pub fn merge(&mut self, other: HealthSeen) {
        self.probes += other.probes;
        self.slow += other.slow;
        self.slowest = self.slowest.max(other.slowest);
        self.unavailable += other.unavailable;
        self.writes_failing += other.writes_failing;
        self.first_failure = self.first_failure.take().or(other.first_failure);
        self.missed = self.missed.take().or(other.missed);
    }
}

/// Asks `/health` every `every` for `lasting`, each on a new connection.
pub async fn watch_health(base: &str, lasting: Duration, every: Duration) -> HealthSeen {
    let url = format!("{base}/health");
    let mut seen = HealthSeen::default();
    let started = Instant::now();
    while started.elapsed() < lasting {
        let client = Client::new(0);
        let sent = Instant::now();
        let answer =
            tokio::time::timeout(HEALTH_BOUND * 5, client.send("GET", &url, &[], None)).await;
        let waited = sent.elapsed();
        seen.probes += 1;
        seen.slowest = seen.slowest.max(waited);
        let failure = match answer {
            Ok(Ok((status, body))) if waited <= HEALTH_BOUND => {
                seen.unavailable += u64::from(status == 503);
                let store = body["checks"]["store"].as_str().unwrap_or_default();
                seen.writes_failing += u64::from(store.starts_with("writes failing"));
                None
            }
            Ok(Ok((status, _))) => Some(format!("{status} after {} ms", waited.as_millis())),
            Ok(Err(error)) => Some(format!("{error:#}")),
            Err(_) => Some(format!("no answer in {} ms", waited.as_millis())),
        };
        if let Some(failure) = failure {
            seen.slow += 1;
            seen.first_failure.get_or_insert(failure);
        }
        tokio::time::sleep(every.saturating_sub(waited)).await;
    }
    seen
}

/// A small tmpfs mounted over a directory, so that "disk full" fills it and nothing else;
/// unmounted when dropped.
pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts `megabytes` of tmpfs at `dir` (needs root, as `mount` does).
    pub fn mount(dir: &Path, megabytes: u32) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir)
            .output()
            .context("cannot run mount")?;
        if !output.status.success() {
            bail!(
                "cannot mount a {megabytes} MiB tmpfs at {}: {}",
                dir.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(SmallDisk { dir: dir.to_owned() })
    }

    /// Writes a file until the disk is full; its path, to remove it again.
    pub fn fill(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path)?;
        let chunk = vec![0_u8; 64 * 1024];
        loop {
            match file.write_all(&chunk) {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::StorageFull => return Ok(path),
                Err(error) => return Err(error).context("cannot fill the disk"),
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily, in case something still holds a file there; the mount goes either way.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Folds the write-ahead log of `views.sqlite` in `dir` into the file, then overwrites
/// pages of it, as a bad disk or a torn copy would, so that SQLite finds it corrupt. The
/// service must not be running.
pub fn damage_views(dir: &Path) -> anyhow::Result<()> {
    let views = dir.join("views.sqlite");
    let connection = rusqlite::Connection::open(&views)
        .with_context(|| format!("cannot open {}", views.display()))?;
    connection
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .context("cannot fold the write-ahead log into views.sqlite")?;
    drop(connection);
    let page = 4096;
    let mut bytes =
        std::fs::read(&views).with_context(|| format!("cannot read {}", views.display()))?;
    if bytes.len() < 2 * page {
        bail!("{} has only {} bytes; nothing to damage", views.display(), bytes.len());
    }
    let end = bytes.len().min(6 * page);
    bytes[page..end].fill(0xAB);
    std::fs::write(&views, bytes)?;
    Ok(())
}

/// How many damaged `views.sqlite` files the service has set aside in `dir`.
pub fn damaged_files_set_aside(dir: &Path) -> anyhow::Result<usize> {
    let mut count = 0;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("views.sqlite.damaged-")
            && !name.ends_with("-wal")
            && !name.ends_with("-shm")
        {
            count += 1;
        }
    }
    Ok(count)
}

/// Opens `count` connections to `port` and holds them: idle ones send nothing, slow ones
/// send half a request head, as slowloris does. Connections the service closes are not
/// opened again.
pub async fn hostile_connections(port: u16, count: usize, half_heads: bool) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(("127.0.0.1", port)))
                .await
        else {
            continue;
        };
        if half_heads {
            let _ = stream.write_all(b"GET /health HTTP/1.1\r\nHost: chaos\r\n").await;
        }
        held.push(stream);
    }
    held
}
