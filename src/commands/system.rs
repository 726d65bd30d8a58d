//! Bringing the system up: the embedded broker when no external cluster is
//! configured, the topics, then the components, until Ctrl-C or SIGTERM.

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::info;
use wfm_broker::{EmbeddedBroker, Storage};

use crate::cli::BrokerArgs;
use crate::config::Config;

/// A running broker connection: the embedded broker, if any, lives as long as this.
pub struct Cluster {
    pub config: Config,
    _embedded: Option<EmbeddedBroker>,
}

impl Cluster {
    /// Starts the embedded broker unless an external one is configured, then provisions topics.
    pub async fn connect(mut config: Config, args: &BrokerArgs) -> anyhow::Result<Self> {
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

fn announce_ready(cluster: &Cluster) {
    // One line on stdout that scripts and tests wait for.
    println!("wfm ready brokers={}", cluster.config.kafka.brokers);
}

pub async fn broker_only(config: Config, args: &BrokerArgs) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let cluster = Cluster::connect(config, args).await?;
    announce_ready(&cluster);
    shutdown.cancelled().await;
    Ok(())
}

pub async fn up(config: Config, args: &BrokerArgs) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let cluster = Cluster::connect(config, args).await?;
    announce_ready(&cluster);
    shutdown.cancelled().await;
    Ok(())
}
