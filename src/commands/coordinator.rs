//! `wfm coordinator`: one coordinator instance in a process of its own, for
//! deployments (and tests) that scale or kill components separately.

use super::system::run_alone;
use crate::config::Config;

pub async fn run(config: Config) -> anyhow::Result<()> {
    run_alone(config, |components, config, service| {
        let (service, coordinator) = (service.clone(), config.coordinator.clone());
        components.spawn(async move {
            (
                "coordinator",
                wfm_coordinator::run(service, coordinator).await,
            )
        });
    })
    .await
}
