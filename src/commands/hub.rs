//! `wfm hub`: one hub instance in a process of its own; several share the
//! flows' partitions through the consumer group.

use tokio::task::JoinSet;
use wfm_hub::HubInspector;
use wfm_runtime::{Registry, Service};

use super::system::{shutdown_signal, supervise, Cluster};
use crate::config::Config;

pub fn spawn(
    components: &mut JoinSet<(&'static str, anyhow::Result<()>)>,
    config: &Config,
    service: &Service,
    inspector: HubInspector,
) {
    let (service, hub) = (service.clone(), config.hub.clone());
    components.spawn(async move { ("hub", wfm_hub::run(service, hub, inspector).await) });
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let cluster = Cluster::join(config).await?;
    let service = cluster.service(&Registry::default(), &shutdown)?;
    let mut components = JoinSet::new();
    spawn(
        &mut components,
        &cluster.config,
        &service,
        HubInspector::default(),
    );
    cluster.announce_ready();
    supervise(components, shutdown).await
}
