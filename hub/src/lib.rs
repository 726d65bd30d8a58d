//! The hub: one state machine per flow request, driven by its inbox
//! (`wfm.hub`), persisted after every event, resumed by whichever instance
//! owns the flow's partition.

pub mod fsm;
pub mod handler;
pub mod inspect;
pub mod rules;
pub mod state;

use serde::{Deserialize, Serialize};
use wfm_protocol::Topic;
use wfm_runtime::Service;

pub use inspect::HubInspector;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    pub timeouts: fsm::Timeouts,
    /// Requests in flight on one instance before new ones are turned away (503 upstream).
    pub max_in_flight: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            timeouts: fsm::Timeouts::default(),
            max_in_flight: 20_000,
        }
    }
}

pub async fn run(
    service: Service,
    config: HubConfig,
    inspector: HubInspector,
) -> anyhow::Result<()> {
    let handler = handler::HubHandler::new(config, service.kafka.topics(), inspector);
    service.serve("hub", None, Topic::Hub, handler).await;
    Ok(())
}
