//! `wfm northbound`: the REST API in a process of its own; any number of
//! instances can serve side by side, each with its own views.

use std::net::SocketAddr;

use clap::Args;
use wfm_northbound::InspectSources;
use wfm_runtime::Service;

use super::system::{run_alone, Components};
use crate::config::Config;

#[derive(Debug, Args)]
pub struct NorthboundArgs {
    /// Listen address of the REST API.
    #[arg(long, env = "WFM_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
}

impl NorthboundArgs {
    pub fn apply(&self, config: &mut Config) {
        if let Some(addr) = self.http_addr {
            config.northbound.http_addr = addr;
        }
    }
}

pub fn spawn(
    components: &mut Components,
    config: &Config,
    service: &Service,
    sources: InspectSources,
) {
    let (service, northbound) = (service.clone(), config.northbound.clone());
    components.spawn(async move {
        let result = wfm_northbound::run(service, northbound, sources).await;
        ("northbound", result)
    });
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    run_alone(config, |components, config, service| {
        spawn(components, config, service, InspectSources::default())
    })
    .await
}
