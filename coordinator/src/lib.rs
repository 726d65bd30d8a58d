//! The coordinator: durable callbacks. A component registers a callback
//! with a deadline; unless it is cancelled first, the coordinator sends a
//! `callback_timeout` to the component's inbox when the deadline passes.
//! This is what guarantees that no request in wfm waits forever for a
//! silent worker or switch.

pub mod client;
pub mod handler;
pub mod stats;
pub mod timers;

use serde::{Deserialize, Serialize};
use wfm_protocol::Topic;
use wfm_runtime::Service;

pub use client::{CallbackKey, CoordinatorClient, Fire};
pub use handler::CoordinatorHandler;
pub use stats::{Stats, StatsSnapshot};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Consumer group of the coordinator instances; `<topic prefix>coordinator` when unset,
    /// so that deployments sharing a cluster do not share partitions.
    pub group: Option<String>,
    /// A callback fired more than this after its deadline counts as late.
    pub late_after_ms: u64,
    /// At most this many timeouts are produced per wakeup, so that a burst of
    /// overdue callbacks does not hold up registers and cancels.
    pub max_fire_batch: usize,
    /// A callback still armed this long after its register is written to the
    /// changelog; until then its inbox record is its only durable copy, and
    /// the inbox offset is not committed past it. Most callbacks are
    /// cancelled sooner and never cost a changelog record.
    pub save_after_ms: u64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            group: None,
            late_after_ms: 500,
            max_fire_batch: 1_000,
            save_after_ms: 2_000,
        }
    }
}

/// A coordinator instance, with a handle on its statistics for inspection.
pub struct Coordinator {
    config: CoordinatorConfig,
    stats: Stats,
}

impl Coordinator {
    pub fn new(config: CoordinatorConfig) -> Self {
        Self {
            config,
            stats: Stats::default(),
        }
    }

    /// Live statistics of this instance; stays valid after [`Coordinator::run`] starts.
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// Serves the coordinator inbox until the service's shutdown.
    pub async fn run(self, service: Service) -> anyhow::Result<()> {
        let group = self.config.group.clone();
        let handler = CoordinatorHandler::new(self.config, self.stats);
        service
            .serve(handler::SOURCE, group, Topic::Coordinator, handler)
            .await;
        Ok(())
    }
}

/// Runs a coordinator with `config` until the service's shutdown.
pub async fn run(service: Service, config: CoordinatorConfig) -> anyhow::Result<()> {
    Coordinator::new(config).run(service).await
}
