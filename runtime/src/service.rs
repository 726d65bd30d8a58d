//! What every component is handed when it starts: the Kafka settings, a
//! shared producer, the registry its consumers report to, and the shutdown
//! signal.

use tokio_util::sync::CancellationToken;

use wfm_protocol::Topic;

use crate::{ConsumerSpec, Handler, KafkaConfig, Producer, Registry, WfmError};

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

    /// Serves `inbox` with `handler` until shutdown, as consumer `name` in
    /// group `group` or, by default, `<topic prefix><name>`, so that
    /// deployments sharing a cluster never share a group.
    pub async fn serve<H: Handler>(
        self,
        name: &str,
        group: Option<String>,
        inbox: Topic,
        handler: H,
    ) {
        let topics = self.kafka.topics();
        let spec = ConsumerSpec {
            name: name.into(),
            group: group.unwrap_or_else(|| format!("{}{name}", topics.prefix())),
            topics: vec![topics.name(inbox)],
        };
        crate::run(
            spec,
            self.kafka,
            self.producer,
            &self.registry,
            handler,
            self.shutdown,
        )
        .await
    }
}
