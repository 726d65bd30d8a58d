//! Reading every partition of a topic without a consumer group: the views
//! and the reply listener each see all records, whichever instance they run
//! in, and no group membership can take partitions away from them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::warn;
use wfm_protocol::Topic;
use wfm_runtime::producer::reader_config;
use wfm_runtime::status::{ConsumerStatus, Counters};
use wfm_runtime::{ConsumerState, KafkaConfig, Registry, WfmError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Replay the whole topic: a materialized view.
    Beginning,
    /// Only what is produced from now on: replies to requests sent after start.
    End,
}

/// A topic being tailed, with a flag set once it has read up to the end the
/// topic had when the tail started.
pub struct Tail {
    pub topic: Topic,
    pub start: StartAt,
    pub caught_up: Arc<AtomicBool>,
}

impl Tail {
    /// Calls `apply(key, value)` for every record until shutdown, reconnecting with backoff.
    pub async fn run(
        self,
        kafka: KafkaConfig,
        registry: &Registry,
        shutdown: CancellationToken,
        mut apply: impl FnMut(&str, Option<&[u8]>) + Send,
    ) {
        let name = kafka.topics().name(self.topic);
        let status = registry.register(ConsumerStatus::new(
            &format!("northbound-{}", self.topic.suffix()),
            "none (all partitions)",
            std::slice::from_ref(&name),
        ));
        let mut delays = kafka.retry.forever();
        while !shutdown.is_cancelled() {
            let result = tokio::select! {
                result = self.read(&kafka, &name, &status, &mut apply) => result,
                _ = shutdown.cancelled() => break,
            };
            if let Err(error) = result {
                warn!(topic = %name, %error, "tail failed; retrying");
                status.record_error(&error);
                status.set_state(ConsumerState::BackingOff);
                let delay = delays.next().unwrap_or(Duration::from_secs(1));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        status.set_state(ConsumerState::Stopped);
    }

    async fn read(
        &self,
        kafka: &KafkaConfig,
        name: &str,
        status: &ConsumerStatus,
        apply: &mut (impl FnMut(&str, Option<&[u8]>) + Send),
    ) -> Result<(), WfmError> {
        let mut config = reader_config(kafka, "wfm-northbound");
        config.set("auto.offset.reset", "earliest");
        let consumer: Arc<StreamConsumer> = Arc::new(config.create()?);
        // Explicit offsets, resolved now: a reply produced after this point is
        // never missed, as it could be while `Offset::End` is still being resolved.
        let mut remaining = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for partition in 0..kafka.partitions_of(self.topic) {
            let (low, high) = {
                let (consumer, topic) = (consumer.clone(), name.to_owned());
                tokio::task::spawn_blocking(move || {
                    consumer.fetch_watermarks(&topic, partition, Duration::from_secs(5))
                })
                .await
                .map_err(|e| WfmError::Transient(e.to_string()))??
            };
            let start = match self.start {
                StartAt::Beginning => low,
                StartAt::End => high,
            };
            if high > start {
                remaining.insert(partition, high);
            }
            assignment.add_partition_offset(name, partition, Offset::Offset(start))?;
        }
        consumer.assign(&assignment)?;
        status.set_assigned(
            (0..kafka.partitions_of(self.topic))
                .map(|p| (name.to_owned(), p))
                .collect(),
        );
        status.set_state(ConsumerState::Running);
        if remaining.is_empty() {
            self.caught_up.store(true, Ordering::Release);
        }
        loop {
            let message = match consumer.recv().await {
                Ok(message) => message,
                // librdkafka reconnects by itself and keeps the positions; starting
                // over would replay a view or lose replies for nothing.
                Err(error) => {
                    status.record_error(&error);
                    status.set_state(ConsumerState::BackingOff);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            status.set_state(ConsumerState::Running);
            Counters::bump(&status.counters.received);
            let key = message
                .key()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            apply(&key, message.payload());
            Counters::bump(&status.counters.handled);
            if let Some(&end) = remaining.get(&message.partition()) {
                if message.offset() >= end - 1 {
                    remaining.remove(&message.partition());
                    if remaining.is_empty() {
                        self.caught_up.store(true, Ordering::Release);
                    }
                }
            }
        }
    }
}
