//! What every component is handed when it starts: the Kafka settings, a
//! shared producer, the registry its consumers report to, and the shutdown
//! signal.

use tokio_util::sync::CancellationToken;

use crate::{KafkaConfig, Producer, Registry, WfmError};

#[derive(Clone)]
pub struct Service {
    pub kafka: KafkaConfig,
    pub producer: Producer,
    pub registry: Registry,
    pub shutdown: CancellationToken,
}

impl Service {
    pub fn new(
        kafka: KafkaConfig,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> Result<Self, WfmError> {
        Ok(Self {
            producer: Producer::new(&kafka)?,
            kafka,
            registry,
            shutdown,
        })
    }
}
