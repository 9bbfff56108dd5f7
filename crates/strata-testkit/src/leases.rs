//! Leases a test hands out and takes back, as a database does when a node dies: one
//! [`SharedLeases`] stands for the database, and each node gets a [`NodeLeases`] on it.

use std::sync::{Arc, Mutex, MutexGuard};

use strata::{Lease, LeaseError, Leases};
use tokio::sync::watch;

/// Who holds which lease, for every node of a test.
#[derive(Default)]
pub struct SharedLeases {
    holders: Mutex<Vec<(String, String, watch::Sender<bool>)>>,
}

impl SharedLeases {
    /// No lease held.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn holders(&self) -> MutexGuard<'_, Vec<(String, String, watch::Sender<bool>)>> {
        self.holders.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The node holding lease `name`.
    pub fn holder(&self, name: &str) -> Option<String> {
        self.holders().iter().find(|(lease, _, _)| lease == name).map(|(_, node, _)| node.clone())
    }

    /// The holder of lease `name` dies: the lease is lost and free for others. Returns the
    /// node that held it.
    pub fn kill_holder(&self, name: &str) -> Option<String> {
        let mut holders = self.holders();
        let index = holders.iter().position(|(lease, _, _)| lease == name)?;
        let (_, node, lost) = holders.remove(index);
        lost.send_replace(true);
        Some(node)
    }

    /// Node `node`'s view of these leases.
    pub fn node(self: &Arc<Self>, node: &str) -> Arc<NodeLeases> {
        Arc::new(NodeLeases { shared: self.clone(), node: node.to_owned() })
    }
}

/// One node's leases.
pub struct NodeLeases {
    shared: Arc<SharedLeases>,
    node: String,
}

/// A lease held until its holder is killed.
pub struct TestLease(watch::Receiver<bool>);

impl Lease for TestLease {
    async fn lost(&self) {
        let mut lost = self.0.clone();
        let _ = lost.wait_for(|lost| *lost).await;
    }
}

impl Leases for NodeLeases {
    type Lease = TestLease;

    async fn try_acquire(&self, name: &str) -> Result<Option<TestLease>, LeaseError> {
        let mut holders = self.shared.holders();
        if holders.iter().any(|(lease, _, _)| lease == name) {
            return Ok(None);
        }
        let (lost_tx, lost_rx) = watch::channel(false);
        holders.push((name.to_owned(), self.node.clone(), lost_tx));
        Ok(Some(TestLease(lost_rx)))
    }

    async fn owner(&self, name: &str) -> Result<Option<String>, LeaseError> {
        Ok(self.shared.holder(name))
    }
}
