//! The worker spokes the hub hands its I/O to: the resource manager (path
//! computation and allocation, a single writer on `wfm.resources`) and the
//! speaker worker (switch commands with per-command callbacks, retries and
//! stale-reply filtering, on `wfm.speaker-worker`).

pub mod allocator;
pub mod id_set;
pub mod job;
pub mod network;
pub mod path;
pub mod resources;
pub mod speaker;
pub mod stats;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wfm_protocol::Topic;
use wfm_runtime::Service;

pub use stats::{SpeakerStats, SpeakerStatsSnapshot};

/// `wfm.` → `wfm-<role>`: one consumer group per deployment and role.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourcesConfig {
    /// Consumer group; `<topic prefix>resources` when unset.
    pub group: Option<String>,
    /// How long a newly assigned instance waits for the topology before it retries.
    pub topology_wait_ms: u64,
}

impl Default for ResourcesConfig {
    fn default() -> Self {
        Self {
            group: None,
            topology_wait_ms: 10_000,
        }
    }
}

/// Serves the resource manager's inbox until the service's shutdown.
pub async fn run_resources(service: Service, config: ResourcesConfig) -> anyhow::Result<()> {
    let network = network::spawn_reader(&service.kafka, service.shutdown.clone()).await?;
    let handler =
        resources::ResourcesHandler::new(network, Duration::from_millis(config.topology_wait_ms));
    service
        .serve(resources::SOURCE, config.group, Topic::Resources, handler)
        .await;
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpeakerConfig {
    /// Consumer group; `<topic prefix>speaker` when unset.
    pub group: Option<String>,
    /// Attempts per switch operation, the first included.
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// A command unanswered for this long is retried (or failed).
    pub command_timeout_ms: u64,
    /// How long past its deadline a completed job's result is kept for
    /// duplicate deliveries (later ones fail at once, running nothing).
    pub completed_retention_ms: u64,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        Self {
            group: None,
            max_attempts: 3,
            initial_backoff_ms: 100,
            max_backoff_ms: 2_000,
            command_timeout_ms: 3_000,
            completed_retention_ms: 10_000,
        }
    }
}

impl SpeakerConfig {
    fn settings(&self) -> speaker::SpeakerSettings {
        speaker::SpeakerSettings {
            policy: job::RetryPolicy {
                max_attempts: self.max_attempts.max(1),
                initial_backoff: Duration::from_millis(self.initial_backoff_ms),
                max_backoff: Duration::from_millis(self.max_backoff_ms),
                command_timeout: Duration::from_millis(self.command_timeout_ms),
            },
            completed_retention: Duration::from_millis(self.completed_retention_ms),
        }
    }
}

/// A speaker worker, with a handle on its counters for inspection.
pub struct Speaker {
    config: SpeakerConfig,
    stats: SpeakerStats,
}

impl Speaker {
    pub fn new(config: SpeakerConfig) -> Self {
        Self {
            config,
            stats: SpeakerStats::default(),
        }
    }

    /// Live counters of this instance; stays valid after [`Speaker::run`] starts.
    pub fn stats(&self) -> SpeakerStats {
        self.stats.clone()
    }

    /// Serves the speaker worker's inbox until the service's shutdown.
    pub async fn run(self, service: Service) -> anyhow::Result<()> {
        let group = self.config.group.clone();
        let handler = speaker::SpeakerHandler::new(
            service.kafka.topics(),
            self.config.settings(),
            self.stats,
        );
        service
            .serve(speaker::SOURCE, group, Topic::SpeakerWorker, handler)
            .await;
        Ok(())
    }
}

/// Runs a speaker worker with `config` until the service's shutdown.
pub async fn run_speaker(service: Service, config: SpeakerConfig) -> anyhow::Result<()> {
    Speaker::new(config).run(service).await
}
