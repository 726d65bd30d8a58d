//! `wfm hub`: one hub instance in a process of its own; several share the
//! flows' partitions through the consumer group.

use wfm_hub::HubInspector;
use wfm_runtime::Service;

use super::system::{run_alone, Components};
use crate::config::Config;

pub fn spawn(
    components: &mut Components,
    config: &Config,
    service: &Service,
    inspector: HubInspector,
) {
    let (service, hub) = (service.clone(), config.hub.clone());
    components.spawn(async move { ("hub", wfm_hub::run(service, hub, inspector).await) });
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    run_alone(config, |components, config, service| {
        spawn(components, config, service, HubInspector::default())
    })
    .await
}
