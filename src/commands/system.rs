//! Bringing the system up: the embedded broker when no external cluster is
//! configured, the topics, then the components, until Ctrl-C or SIGTERM.

use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use wfm_broker::{EmbeddedBroker, Storage};
use wfm_hub::HubInspector;
use wfm_runtime::{Registry, Service};

use crate::cli::BrokerArgs;
use crate::config::Config;

/// A connection to the cluster: the embedded broker, if any, lives as long as this.
pub struct Cluster {
    pub config: Config,
    _embedded: Option<EmbeddedBroker>,
}

impl Cluster {
    /// Starts the embedded broker unless an external one is configured, then provisions topics.
    pub async fn start(mut config: Config, args: &BrokerArgs) -> anyhow::Result<Self> {
        if let Some(addr) = args.broker_addr {
            config.broker.addr = addr;
        }
        if let Some(dir) = &args.data_dir {
            config.broker.data_dir = dir.clone();
        }
        config.broker.ephemeral |= args.ephemeral;
        let embedded = if config.wants_embedded_broker() {
            let storage = if config.broker.ephemeral {
                Storage::Memory
            } else {
                Storage::Sqlite(wfm_broker::broker_dir(&config.broker.data_dir))
            };
            let broker = EmbeddedBroker::start(config.broker.addr, storage).await?;
            config.use_embedded_broker();
            Some(broker)
        } else {
            info!(brokers = %config.kafka.brokers, "using external Kafka cluster");
            None
        };
        Self::provision(config, embedded).await
    }

    /// For a single component: joins a running cluster (by default the one
    /// `wfm up` or `wfm broker` runs on this machine) and never starts a broker.
    pub async fn join(mut config: Config) -> anyhow::Result<Self> {
        if config.wants_embedded_broker() {
            config.use_embedded_broker();
        }
        Self::provision(config, None).await
    }

    async fn provision(config: Config, embedded: Option<EmbeddedBroker>) -> anyhow::Result<Self> {
        let topics = wfm_runtime::admin::ensure_topics(&config.kafka)
            .await
            .context("provisioning topics")?;
        let created = topics.iter().filter(|t| t.created).count();
        info!(topics = topics.len(), created, "topics ready");
        Ok(Self {
            config,
            _embedded: embedded,
        })
    }

    pub fn service(
        &self,
        registry: &Registry,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Service> {
        Ok(Service::new(
            self.config.kafka.clone(),
            registry.clone(),
            shutdown.clone(),
        )?)
    }

    /// One line on stdout that scripts and tests wait for.
    pub fn announce_ready(&self) {
        println!("wfm ready brokers={}", self.config.kafka.brokers);
    }
}

/// Cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        info!("shutting down");
        trigger.cancel();
    });
    token
}

/// How long components get to settle, commit and leave their groups once
/// shutdown begins. Leaving blocks while the broker is unreachable, and an
/// operator's stop must not wait for the broker to come back.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Runs component tasks until shutdown; the first one to fail stops the rest.
pub async fn supervise(
    mut components: Components,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tokio::spawn(exit_after_grace(shutdown.clone()));
    let mut outcome = Ok(());
    while let Some(joined) = components.join_next().await {
        let (name, result) = joined.context("component task panicked")?;
        if let Err(e) = result {
            error!(component = name, error = %e, "component failed");
            if outcome.is_ok() {
                outcome = Err(e.context(format!("component {name}")));
            }
            shutdown.cancel();
        }
    }
    outcome
}

/// Once shutdown begins, ends the process after [`SHUTDOWN_GRACE`] whatever the
/// components are doing. The clock runs on a thread of its own: a close blocked
/// inside librdkafka cannot be cancelled, and may hold the runtime's workers.
async fn exit_after_grace(shutdown: CancellationToken) {
    shutdown.cancelled().await;
    std::thread::spawn(|| {
        std::thread::sleep(SHUTDOWN_GRACE);
        error!(
            grace = ?SHUTDOWN_GRACE,
            "components did not stop in time (is the broker reachable?); exiting without them"
        );
        std::process::exit(2);
    });
}

pub type Components = JoinSet<(&'static str, anyhow::Result<()>)>;

/// Runs the components `spawn` adds, in a process of their own that joins a
/// running cluster, until shutdown.
pub async fn run_alone(
    config: Config,
    spawn: impl FnOnce(&mut Components, &Config, &Service),
) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let cluster = Cluster::join(config).await?;
    let service = cluster.service(&Registry::default(), &shutdown)?;
    let mut components = JoinSet::new();
    spawn(&mut components, &cluster.config, &service);
    cluster.announce_ready();
    supervise(components, shutdown).await
}

pub async fn broker_only(config: Config, args: &BrokerArgs) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let cluster = Cluster::start(config, args).await?;
    cluster.announce_ready();
    shutdown.cancelled().await;
    Ok(())
}

pub async fn up(config: Config, args: &BrokerArgs) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let cluster = Cluster::start(config, args).await?;
    let registry = Registry::default();
    let service = cluster.service(&registry, &shutdown)?;
    let mut components = JoinSet::new();
    // Each component is added here as `components.spawn(async move { ("name", run(..).await) })`.
    let coordinator = wfm_coordinator::Coordinator::new(cluster.config.coordinator.clone());
    let inspector = HubInspector::default();
    let speaker = super::worker::spawn(
        &mut components,
        &cluster.config,
        &service,
        super::worker::Role::All,
    );
    // In one process the northbound inspects the hub, coordinator and speaker live, not from changelogs.
    let sources = wfm_northbound::InspectSources {
        hub: Some(inspector.clone()),
        coordinator: Some(coordinator.stats()),
        speaker,
    };
    let coordinator_service = service.clone();
    components.spawn(async move { ("coordinator", coordinator.run(coordinator_service).await) });
    super::hub::spawn(&mut components, &cluster.config, &service, inspector);
    // The topology is published before the northbound starts, so that its
    // view of the switches is complete once it has read to the end.
    let simulator = super::simulator::from_env(&cluster.config)?;
    let simulator = wfm_simulators::Simulator::start(service.clone(), simulator).await?;
    components.spawn(async move { ("simulator", simulator.serve().await) });
    super::northbound::spawn(&mut components, &cluster.config, &service, sources);
    // `wfm ready` promises that a request can be served: a create sent the
    // moment it is printed must not meet an API whose views are still empty.
    let api = cluster.config.northbound.http_addr;
    if !api_ready(api, Duration::from_secs(60)).await {
        warn!(%api, "the REST API is not ready after 60 s; see GET /ready");
    }
    cluster.announce_ready();
    supervise(components, shutdown).await
}

/// Polls `GET /ready` of the REST API at `addr` until it answers 200.
async fn api_ready(addr: std::net::SocketAddr, patience: Duration) -> bool {
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/ready");
    let deadline = tokio::time::Instant::now() + patience;
    while tokio::time::Instant::now() < deadline {
        if let Ok(response) = http.get(&url).send().await {
            if response.status().is_success() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
