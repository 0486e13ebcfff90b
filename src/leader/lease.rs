//! Leader election on a `coordination.k8s.io` Lease, with kube-lease-manager's
//! `changed`/`release` (not its convenience watch, which retries API errors out of
//! sight).
//!
//! The leader renews often (every `renew`, 2 s by default, on a 15 s lease), so that an
//! unreachable API server is noticed within a renew period. The moment leadership is
//! lost or in doubt — a renew that fails, the lease seen held by another — the write
//! fence closes (no LXD write, no status write leaves this process after that) and the
//! caller exits non-zero, to come back as a standby. A standby keeps its caches warm and
//! writes nothing.

use std::time::Duration;

use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tracing::{info, warn};

use std::sync::Arc;

use super::{LeadershipGauge, WriteFence};

/// How this replica takes part.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub namespace: String,
    pub identity: String,
    /// How long a lease stays valid after its last renewal.
    pub duration: Duration,
    /// How often the leader renews.
    pub renew: Duration,
}

/// This replica's part in the election.
pub struct Leader {
    manager: LeaseManager,
    client: kube::Client,
    config: LeaderConfig,
    fence: WriteFence,
    metric: Arc<dyn LeadershipGauge>,
    name: String,
}

/// Why leading stopped.
#[derive(Debug, thiserror::Error)]
pub enum LeadershipLost {
    #[error("the lease {0:?} is held by another replica now")]
    Taken(String),
    #[error("cannot renew the lease {0:?}: {1}")]
    Renew(String, kube_lease_manager::LeaseManagerError),
}

impl Leader {
    /// Joins the election on `config.lease_name` (creating the Lease if it is missing).
    /// `client` should have short timeouts: a renew that hangs is a renew that failed.
    pub async fn join(
        client: kube::Client,
        config: &LeaderConfig,
        fence: WriteFence,
        metric: Arc<dyn LeadershipGauge>,
    ) -> Result<Leader, kube_lease_manager::LeaseManagerError> {
        let manager = manager(client.clone(), config).await?;
        metric.set(&config.lease_name, false);
        Ok(Leader {
            manager,
            client,
            config: config.clone(),
            fence,
            metric,
            name: config.lease_name.clone(),
        })
    }

    /// Waits until this replica leads, then lifts the fence. API errors while standing by
    /// are logged and retried: a standby writes nothing, so it can afford to wait.
    ///
    /// The manager trusts its last reading of the lease until the expiry it read, and
    /// sleeps until then. A standby instead reads the lease afresh every renew period
    /// (one GET), so that it leads within one of a release, and within about a second of
    /// the lease expiring when the leader died.
    pub async fn acquire(&mut self) {
        let mut delay = Duration::from_millis(500);
        loop {
            let changed = tokio::time::timeout(self.config.renew, self.manager.changed()).await;
            let error = match changed {
                Ok(Ok(true)) => {
                    info!(lease = %self.name, "leading");
                    self.metric.set(&self.name, true);
                    self.fence.lift();
                    return;
                }
                Ok(Ok(false)) => continue,
                // Held by another and not expired: read it again.
                Err(_) => match manager(self.client.clone(), &self.config).await {
                    Ok(fresh) => {
                        self.manager = fresh;
                        delay = Duration::from_millis(500);
                        continue;
                    }
                    Err(e) => e,
                },
                Ok(Err(e)) => e,
            };
            warn!(lease = %self.name, error = %error, "standing by: cannot read the lease; again in {delay:?}");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    /// While leading: renews, and returns when leadership is lost or in doubt, with the
    /// fence already closed.
    pub async fn hold(&self) -> LeadershipLost {
        loop {
            let lost = match self.manager.changed().await {
                Ok(true) => continue,
                Ok(false) => LeadershipLost::Taken(self.name.clone()),
                Err(e) => LeadershipLost::Renew(self.name.clone(), e),
            };
            self.fence.close();
            self.metric.set(&self.name, false);
            return lost;
        }
    }

    /// Gives the lease up (on shutdown, after draining), so that a standby leads at once
    /// rather than after the lease expires.
    pub async fn release(&self) {
        self.fence.close();
        self.metric.set(&self.name, false);
        match self.manager.release().await {
            Ok(()) => info!(lease = %self.name, "lease released"),
            Err(e) => warn!(lease = %self.name, error = %e, "cannot release the lease"),
        }
    }
}

/// A lease manager with a fresh reading of the lease.
async fn manager(
    client: kube::Client,
    config: &LeaderConfig,
) -> Result<LeaseManager, kube_lease_manager::LeaseManagerError> {
    let duration = config.duration.as_secs().max(2);
    // The manager renews `grace` seconds before expiry.
    let grace = duration
        .saturating_sub(config.renew.as_secs().max(1))
        .clamp(1, duration - 1);
    LeaseManagerBuilder::new(client, &config.lease_name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(duration)
        .with_grace(grace)
        .with_field_manager(format!("lxd-mutater-{}", config.identity))
        .build()
        .await
}

/// This replica's name in the election: `$POD_NAME`, else the host name and process id.
pub fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "lxd-mutater".into());
    format!("{host}-{}", std::process::id())
}

/// Where the Lease lives by default: `$POD_NAMESPACE`, else the pod's own namespace (the
/// service account's), else `default`.
pub fn default_lease_namespace() -> String {
    if let Ok(ns) = std::env::var("POD_NAMESPACE")
        && !ns.is_empty()
    {
        return ns;
    }
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .map(|n| n.trim().to_string())
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into())
}
