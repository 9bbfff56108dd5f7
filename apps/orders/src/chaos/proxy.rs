//! A TCP proxy between the service and PostgreSQL that can make the server seem frozen
//! (connections stay open, nothing moves: what a stopped or overloaded server looks like
//! from outside) or gone (every connection closed, new ones closed at once), without
//! touching the real server, which other work on the machine may share.

use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Relays both ways.
    Pass,
    /// Relays nothing; connections stay open.
    Frozen,
    /// Closes every connection and each new one at once.
    Gone,
}

/// A running proxy; dropping it closes the listener.
pub struct Proxy {
    port: u16,
    mode: Arc<watch::Sender<Mode>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and relays to `server` (`HOST:PORT`).
    pub async fn start(server: String) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("cannot start the proxy")?;
        let port = listener.local_addr()?.port();
        let mode = Arc::new(watch::Sender::new(Mode::Pass));
        let shared = mode.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *shared.borrow() == Mode::Gone {
                    continue;
                }
                let (server, mode) = (server.clone(), shared.subscribe());
                tokio::spawn(async move {
                    // A server that cannot be reached is a closed connection to the client.
                    if let Ok(upstream) = TcpStream::connect(&server).await {
                        relay(client, upstream, mode).await;
                    }
                });
            }
        });
        Ok(Proxy { port, mode, accept })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Switches what happens to traffic, for open connections too.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to`, holding each chunk while frozen; ends when either side closes or
/// the proxy is told the server is gone.
async fn pipe<R, W>(mut from: R, mut to: W, mut mode: watch::Receiver<Mode>)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buffer = vec![0_u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = mode.wait_for(|mode| *mode == Mode::Gone) => {
                let _ = changed;
                return;
            }
        };
        // Frozen holds the chunk until the proxy passes traffic again or the server is gone.
        match mode.wait_for(|mode| *mode != Mode::Frozen).await.map(|mode| *mode) {
            Ok(Mode::Pass) => {}
            _ => return,
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

async fn relay(client: TcpStream, upstream: TcpStream, mode: watch::Receiver<Mode>) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = upstream.into_split();
    // Either direction ending ends both, closing both sockets as a dying server would.
    tokio::select! {
        () = pipe(client_read, server_write, mode.clone()) => {}
        () = pipe(server_read, client_write, mode) => {}
    }
}
