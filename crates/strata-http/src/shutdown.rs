//! Stopping without keeping clients waiting: when the service begins to shut down, queries
//! waiting for a view (`min_position`, up to 30 s) are answered at once with 503 and
//! `Retry-After`, so that the server's wait for requests in flight is bounded by its
//! commands, not by the longest poll.

use std::sync::Arc;

use tokio::sync::watch;

/// The service's shutdown, shared by the server and the requests it is answering.
#[derive(Debug, Clone)]
pub struct Shutdown {
    begun: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self { begun: Arc::new(watch::channel(false).0) }
    }
}

impl Shutdown {
    /// A service that is not shutting down.
    pub fn new() -> Self {
        Self::default()
    }

    /// Begins the shutdown: every waiting query answers now.
    pub fn begin(&self) {
        self.begun.send_replace(true);
    }

    /// Resolves once the shutdown has begun.
    pub async fn begun(&self) {
        let mut receiver = self.begun.subscribe();
        // An error means the sender is gone, which only happens when nothing can begin it.
        let _ = receiver.wait_for(|begun| *begun).await;
    }
}
