//! `wfm simulator`: the simulated switch controller as a process of its own.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use wfm_protocol::switch::{CommandType, SwitchErrorCode};
use wfm_runtime::Registry;
use wfm_simulators::faults::{DisconnectMode, FaultUpdate, Latency};
use wfm_simulators::{Simulator, SimulatorConfig};

use crate::commands::system::{shutdown_signal, Cluster};
use crate::config::Config;

/// Where the control API listens unless a flag or the config says otherwise.
const ADDR_ENV: &str = "WFM_SIMULATOR_ADDR";

#[derive(Debug, Args)]
pub struct SimulatorArgs {
    /// Listen address of the control API.
    #[arg(long, env = ADDR_ENV)]
    pub simulator_addr: Option<SocketAddr>,
    /// Topology file, JSON or TOML (`.toml`); default: six switches in a ring with chords.
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// Reply latency in ms: `5`, `uniform:MIN:MAX` or `normal:MEAN:STD_DEV`.
    #[arg(long)]
    pub latency: Option<Latency>,
    /// Share of commands (0.0–1.0) that fail with `--error-code`.
    #[arg(long)]
    pub error_rate: Option<f64>,
    /// Error rate of one command type, e.g. `install_rule=0.5` (repeatable).
    #[arg(long, value_name = "COMMAND=RATE", value_parser = parse_command_rate)]
    pub error_rate_for: Vec<(CommandType, f64)>,
    /// Code of injected errors, e.g. `SWITCH_UNAVAILABLE`.
    #[arg(long)]
    pub error_code: Option<SwitchErrorCode>,
    /// Share of commands (0.0–1.0) dropped without a reply.
    #[arg(long)]
    pub silence_rate: Option<f64>,
    /// How a disconnected switch answers: `reply` (SWITCH_UNAVAILABLE) or `silence`.
    #[arg(long, value_parser = parse_snake_case::<DisconnectMode>)]
    pub disconnect_mode: Option<DisconnectMode>,
    /// Seed of the fault RNG, for reproducible fault sequences.
    #[arg(long)]
    pub seed: Option<u64>,
}

pub async fn run(config: Config, args: SimulatorArgs) -> anyhow::Result<()> {
    let simulator = configure(config.simulator.clone(), args)?;
    let shutdown = shutdown_signal();
    let cluster = Cluster::join(config).await?;
    let service = cluster.service(&Registry::default(), &shutdown)?;
    let simulator = Simulator::start(service, simulator).await?;
    tracing::info!(addr = %simulator.control_addr()?, "simulator control API listening");
    cluster.announce_ready();
    simulator.serve().await
}

/// The simulator's settings for `wfm up`, which has no simulator flags but honours the environment.
pub fn from_env(config: &Config) -> anyhow::Result<SimulatorConfig> {
    let mut simulator = config.simulator.clone();
    if let Ok(addr) = std::env::var(ADDR_ENV) {
        simulator.addr = addr
            .parse()
            .with_context(|| format!("{ADDR_ENV}=`{addr}` is not an address"))?;
    }
    Ok(simulator)
}

/// Flags on top of the `[simulator]` section of the config.
fn configure(mut config: SimulatorConfig, args: SimulatorArgs) -> anyhow::Result<SimulatorConfig> {
    config.addr = args.simulator_addr.unwrap_or(config.addr);
    config.topology = args.topology.or(config.topology);
    config.seed = args.seed.or(config.seed);
    let mut by_command = config.faults.error_rate_by_command.clone();
    by_command.extend(args.error_rate_for);
    let update = FaultUpdate {
        latency_ms: args.latency,
        error_rate: args.error_rate,
        error_rate_by_command: Some(by_command),
        error_code: args.error_code,
        silence_rate: args.silence_rate,
        disconnect_mode: args.disconnect_mode,
    };
    config.faults = config.faults.updated(update)?;
    Ok(config)
}

fn parse_snake_case<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|e| e.to_string())
}

fn parse_command_rate(text: &str) -> Result<(CommandType, f64), String> {
    let (command, rate) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not COMMAND=RATE"))?;
    let rate = rate
        .trim()
        .parse()
        .map_err(|_| format!("`{rate}` is not a rate"))?;
    Ok((parse_snake_case(command.trim())?, rate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::collections::BTreeMap;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: SimulatorArgs,
    }

    #[test]
    fn flags_override_the_config_and_are_validated() {
        let parse = |flags: &[&str]| {
            let wrapper =
                Wrapper::try_parse_from(std::iter::once("sim").chain(flags.iter().copied()))
                    .map_err(|e| e.to_string())?;
            configure(SimulatorConfig::default(), wrapper.args).map_err(|e| e.to_string())
        };
        let config = parse(&[
            "--latency",
            "uniform:1:5",
            "--error-rate",
            "0.25",
            "--error-rate-for",
            "remove_rule=1",
            "--error-code",
            "BAD_COMMAND",
            "--disconnect-mode",
            "silence",
            "--seed",
            "3",
        ])
        .unwrap();
        assert_eq!(config.faults.error_rate, 0.25);
        assert_eq!(
            config.faults.error_rate_by_command,
            BTreeMap::from([(CommandType::RemoveRule, 1.0)])
        );
        assert_eq!(config.faults.error_code, SwitchErrorCode::BadCommand);
        assert_eq!(config.faults.disconnect_mode, DisconnectMode::Silence);
        assert_eq!(config.seed, Some(3));
        assert!(parse(&["--silence-rate", "2"])
            .unwrap_err()
            .contains("silence_rate"));
        assert!(parse(&["--error-rate-for", "reboot=1"]).is_err());
        assert!(parse(&["--latency", "uniform:5:1"]).is_err());
    }
}
