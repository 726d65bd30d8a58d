//! The simulated switch controller: it publishes a topology, keeps a flow
//! table and a meter table per switch, answers switch commands from
//! `wfm.switch` on the reply topic each names, injects faults, and serves a
//! control API to inspect the tables and change the faults.

pub mod control;
pub mod faults;
pub mod handler;
pub mod switch;
pub mod topology;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::Context as _;
use serde::Deserialize;
use tracing::info;
use wfm_protocol::{Envelope, Topic};
use wfm_runtime::{Outgoing, Service};

use crate::faults::{FaultSettings, Faults};
use crate::handler::{SwitchHandler, SOURCE};
use crate::switch::{Network, Switch, SwitchView};
use crate::topology::Topology;

/// The `[simulator]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Listen address of the control API.
    pub addr: SocketAddr,
    /// JSON or TOML topology file; without it, [`Topology::default`].
    pub topology: Option<PathBuf>,
    /// Faults from the start.
    pub faults: FaultSettings,
    /// Seed of the fault RNG, for reproducible runs.
    pub seed: Option<u64>,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            topology: None,
            faults: FaultSettings::default(),
            seed: None,
        }
    }
}

/// What the consumer and the control API share.
pub struct Simulation {
    pub network: Network,
    pub faults: Faults,
}

pub type SharedSimulation = Arc<Mutex<Simulation>>;

impl Simulation {
    pub fn view(&self, switch: &Switch) -> SwitchView {
        switch.view(
            self.faults.is_connected(switch.id()),
            self.faults.pending_failures(switch.id()),
        )
    }
}

/// Every use of the state is a short, synchronous step that leaves it
/// consistent, so a panic elsewhere while it was held does not spoil it.
pub(crate) fn lock(simulation: &SharedSimulation) -> MutexGuard<'_, Simulation> {
    simulation.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A simulator that has published its topology and bound its control API,
/// ready to serve.
pub struct Simulator {
    service: Service,
    simulation: SharedSimulation,
    listener: tokio::net::TcpListener,
}

impl Simulator {
    pub async fn start(service: Service, config: SimulatorConfig) -> anyhow::Result<Self> {
        let topology = match &config.topology {
            Some(path) => Topology::load(path)?,
            None => Topology::default(),
        };
        let faults = Faults::new(config.faults, config.seed)?;
        publish(&service, &topology).await?;
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding the simulator control API to {}", config.addr))?;
        info!(
            switches = topology.switches.len(),
            links = topology.links.len(),
            addr = %listener.local_addr()?,
            "simulator started"
        );
        let simulation = Simulation {
            network: Network::new(&topology.switches),
            faults,
        };
        Ok(Self {
            service,
            simulation: Arc::new(Mutex::new(simulation)),
            listener,
        })
    }

    pub fn control_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers switch commands and control requests until shutdown.
    pub async fn serve(self) -> anyhow::Result<()> {
        let shutdown = self.service.shutdown.clone();
        let handler = SwitchHandler::new(self.simulation.clone());
        let consumer = tokio::spawn(
            self.service
                .serve("simulator", None, Topic::Switch, handler),
        );
        let http = axum::serve(self.listener, control::router(self.simulation))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await;
        // Without its control API the simulator is not what tests and operators expect: stop it all.
        shutdown.cancel();
        consumer.await.context("simulator consumer panicked")?;
        http.context("simulator control API")
    }
}

/// Publishes every switch and link to the compacted topology topic.
async fn publish(service: &Service, topology: &Topology) -> anyhow::Result<()> {
    let topic = service.kafka.topics().name(Topic::Topology);
    let records = topology
        .records()
        .iter()
        .map(|record| {
            let envelope = Envelope::new(record, SOURCE, "topology")?;
            Ok(Outgoing::envelope(&topic, record.key(), &envelope))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    service
        .producer
        .send_all(&records)
        .await
        .context("publishing the topology")?;
    info!(records = records.len(), %topic, "topology published");
    Ok(())
}
