//! Who may write: the write fence every writer checks right before it sends, and leader
//! election on a `coordination.k8s.io` Lease that opens and closes it.
//!
//! At the bottom of the house: it knows nothing of LXD resources, plans or statuses. The
//! leadership gauge is reported through `LeadershipGauge`, which the metrics implement.

mod fence;
mod lease;

pub use fence::WriteFence;
pub use lease::{Leader, LeaderConfig, LeadershipLost, default_identity, default_lease_namespace};

/// Where this replica's leadership is reported (`leader_election_master_status`).
pub trait LeadershipGauge: Send + Sync {
    fn set(&self, lease: &str, leading: bool);
}
