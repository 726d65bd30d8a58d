//! `wfm coordinator`: one coordinator instance in a process of its own, for
//! deployments (and tests) that scale or kill components separately.

use super::system::{shutdown_signal, supervise, Cluster};
use crate::config::Config;
use tokio::task::JoinSet;
use wfm_runtime::Registry;

pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let cluster = Cluster::join(config).await?;
    let service = cluster.service(&Registry::default(), &shutdown)?;
    let mut components = JoinSet::new();
    let coordinator = cluster.config.coordinator.clone();
    components.spawn(async move {
        let result = wfm_coordinator::run(service, coordinator).await;
        ("coordinator", result)
    });
    cluster.announce_ready();
    supervise(components, shutdown).await
}
