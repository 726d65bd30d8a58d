//! `wfm northbound`: the REST API in a process of its own; any number of
//! instances can serve side by side, each with its own views.

use std::net::SocketAddr;

use clap::Args;
use tokio::task::JoinSet;
use wfm_northbound::InspectSources;
use wfm_runtime::{Registry, Service};

use super::system::{shutdown_signal, supervise, Cluster};
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
    components: &mut JoinSet<(&'static str, anyhow::Result<()>)>,
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
    let shutdown = shutdown_signal();
    let cluster = Cluster::join(config).await?;
    let service = cluster.service(&Registry::default(), &shutdown)?;
    let mut components = JoinSet::new();
    spawn(
        &mut components,
        &cluster.config,
        &service,
        InspectSources::default(),
    );
    cluster.announce_ready();
    supervise(components, shutdown).await
}
