//! One module per `wfm` subcommand.

pub mod bench;
pub mod check;
mod coordinator;
pub mod dlq;
pub mod flow;
mod hub;
pub mod northbound;
mod scan;
pub mod simulator;
mod system;
pub mod topics;
pub mod trace;
pub mod worker;

use crate::cli::{Cli, Command};
use crate::config::Config;

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.global.config.as_deref())?;
    apply_global_overrides(&mut config, &cli.global);
    match cli.command {
        Command::Up { broker, northbound } => {
            northbound.apply(&mut config);
            system::up(config, &broker).await
        }
        Command::Broker { broker } => system::broker_only(config, &broker).await,
        Command::Coordinator => coordinator::run(config).await,
        Command::Hub => hub::run(config).await,
        Command::Northbound(args) => {
            args.apply(&mut config);
            northbound::run(config).await
        }
        Command::Flow { client, command } => flow::run(client, command).await,
        Command::Bench(args) => bench::run(config, args).await,
        Command::Simulator(args) => simulator::run(config, args).await,
        Command::Worker(args) => worker::run(config, args).await,
        Command::Topics { command } => topics::run(config, command).await,
        Command::Trace(args) => trace::run(config, args).await,
        Command::Dlq { command } => dlq::run(config, command).await,
        Command::Check(args) => check::run(config, args).await,
    }
}

fn apply_global_overrides(config: &mut Config, global: &crate::cli::GlobalArgs) {
    if let Some(brokers) = &global.brokers {
        config.kafka.brokers = brokers.clone();
    }
    if let Some(prefix) = &global.topic_prefix {
        config.kafka.topic_prefix = prefix.clone();
    }
    for (key, value) in &global.kafka_properties {
        config.kafka.client.insert(key.clone(), value.clone());
    }
    for (key, value) in &global.consumer_properties {
        config.kafka.consumer.insert(key.clone(), value.clone());
    }
}
