//! A `strata serve` child process that a chaos run starts, kills with SIGKILL and starts
//! again on the same port, so clients find it where it was.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::client::Client;

/// How long a node may take to answer `/health` after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One service process and how to start it again.
pub struct Node {
    args: Vec<String>,
    port: u16,
    log: PathBuf,
    fd_limit: Option<u32>,
    child: Option<Child>,
}

impl Node {
    /// A node that will run `strata serve` with `args` on a free loopback port, its log
    /// appended to `log`.
    pub fn new(args: Vec<String>, log: &Path) -> anyhow::Result<Self> {
        // The port is chosen once and reused by every restart.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("cannot find a free port")?
            .port();
        Ok(Node { args, port, log: log.to_owned(), fd_limit: None, child: None })
    }

    /// Starts the process with at most `limit` open files, as `ulimit -n` would.
    pub fn with_fd_limit(mut self, limit: u32) -> Self {
        self.fd_limit = Some(limit);
        self
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process and waits until `/health` answers 200.
    pub async fn start(&mut self, client: &Client) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find the strata binary")?;
        let mut command = match self.fd_limit {
            // A shell sets the limit, then becomes the service: no unsafe code here.
            Some(limit) => {
                let mut shell = Command::new("sh");
                shell.arg("-c").arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\"")).arg(exe);
                shell
            }
            None => Command::new(exe),
        };
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        command
            .args(["serve", "--bind", &format!("127.0.0.1:{}", self.port)])
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(command.spawn().context("cannot start strata serve")?);
        let started = Instant::now();
        let health = format!("{}/health", self.base());
        loop {
            if let Ok((200, _)) = client.send("GET", &health, &[], None).await {
                return Ok(());
            }
            if let Some(status) =
                self.child.as_mut().and_then(|child| child.try_wait().ok()).flatten()
            {
                bail!("strata serve ended with {status} at start; see {}", self.log.display());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "strata serve did not answer /health within {START_TIMEOUT:?}; see {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process with SIGKILL, giving it no chance to finish anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already gone is fine: the point is that it is not running.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}
