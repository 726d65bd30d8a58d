//! The configuration of a wfm process: one TOML file (`--config`), with
//! `WFM_*` environment variables and command-line flags on top (flags win).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;
use wfm_runtime::KafkaConfig;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub broker: BrokerConfig,
    pub simulator: wfm_simulators::SimulatorConfig,
    pub coordinator: wfm_coordinator::CoordinatorConfig,
    pub resources: wfm_workers::ResourcesConfig,
    pub speaker: wfm_workers::SpeakerConfig,
    pub hub: wfm_hub::HubConfig,
    pub northbound: wfm_northbound::NorthboundConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Where the embedded broker listens (IPv4: the broker advertises this address).
    pub addr: SocketAddr,
    /// The embedded broker keeps its SQLite database under `data_dir/broker`.
    pub data_dir: PathBuf,
    /// In-memory storage: everything is lost when the process stops.
    pub ephemeral: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 9092)),
            data_dir: PathBuf::from("wfm-data"),
            ephemeral: false,
        }
    }
}

impl Config {
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }

    /// True when no external cluster is configured and wfm must bring its own broker.
    pub fn wants_embedded_broker(&self) -> bool {
        self.kafka.brokers.trim().is_empty()
    }

    /// Points every client at the embedded broker and tunes them for it.
    pub fn use_embedded_broker(&mut self) {
        self.kafka.brokers = self.broker.addr.to_string();
        self.kafka.tune_for_embedded_broker();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let config: Config = toml::from_str(
            r#"
            [kafka]
            topic_prefix = "x."
            partitions = 2
            [kafka.consumer]
            "fetch.wait.max.ms" = "1"
            [broker]
            ephemeral = true
            "#,
        )
        .unwrap();
        assert_eq!(config.kafka.topic_prefix, "x.");
        assert_eq!(config.kafka.partitions, 2);
        assert_eq!(config.kafka.consumer["fetch.wait.max.ms"], "1");
        assert!(config.broker.ephemeral);
        assert_eq!(config.broker.addr.port(), 9092);
        assert!(toml::from_str::<Config>("[kafka]\nbrokerz = \"x\"").is_err());
    }
}
