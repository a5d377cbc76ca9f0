//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager):
//! only the holder runs the controllers, so two replicas never both write.

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Election {
    /// `true` while this replica holds the Lease.
    pub leading: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

/// Starts competing for the Lease `name` in `namespace` (created if
/// missing). The holder renews it `grace` seconds before it lapses; a
/// standby takes it once it has lapsed.
pub async fn start(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
    duration_secs: u64,
) -> anyhow::Result<Election> {
    // Renew a third of the way before expiry, at least a second early.
    let grace = (duration_secs / 3).max(1);
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(duration_secs)
        .with_grace(grace)
        .with_field_manager(format!("{}-lease", crate::FIELD_MANAGER))
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("cannot use Lease {namespace}/{name}: {e}"))?;
    let (leading, task) = manager.watch().await;
    Ok(Election { leading, task })
}

impl Election {
    /// Stops competing and releases the Lease if held, so a standby takes
    /// over at once instead of after the Lease lapses.
    /// Callers drop their clones of `leading` first: the task releases once
    /// no receiver is left. Bounded, so a dead API server cannot hold up
    /// the exit.
    pub async fn release(self) {
        drop(self.leading);
        match tokio::time::timeout(std::time::Duration::from_secs(5), self.task).await {
            Err(_) => tracing::warn!("timed out releasing the leader Lease"),
            Ok(result) => Self::log_release(result),
        }
    }

    fn log_release(
        result: Result<kube_lease_manager::Result<LeaseManager>, tokio::task::JoinError>,
    ) {
        match result {
            Ok(Ok(_)) => tracing::info!("released the leader Lease"),
            Ok(Err(error)) => tracing::warn!(%error, "could not release the leader Lease"),
            Err(error) => tracing::warn!(%error, "leader election task failed"),
        }
    }
}

/// A default identity: host name, process id and a random suffix.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "operator".to_owned());
    let mut random = [0u8; 4];
    let suffix = match aws_lc_rs::rand::fill(&mut random) {
        Ok(()) => random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        Err(_) => "0".to_owned(),
    };
    format!("{host}-{}-{suffix}", std::process::id())
}
