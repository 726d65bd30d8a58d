//! The one producer every component sends through: idempotent, keyed, and
//! order-preserving (records are handed to librdkafka synchronously, in the
//! order they are given, before anything is awaited).

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use wfm_protocol::Envelope;

use crate::config::KafkaConfig;
use crate::error::WfmError;

/// One record to produce. `value: None` is a tombstone on a compacted topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub topic: String,
    pub key: String,
    /// Set where the record must land on a given partition (changelogs follow
    /// their inbox partition); otherwise the key decides.
    pub partition: Option<i32>,
    pub value: Option<Vec<u8>>,
}

impl Outgoing {
    pub fn envelope(topic: impl Into<String>, key: impl Into<String>, envelope: &Envelope) -> Self {
        Self {
            topic: topic.into(),
            key: key.into(),
            partition: None,
            value: Some(envelope.encode()),
        }
    }

    pub fn tombstone(topic: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            key: key.into(),
            partition: None,
            value: None,
        }
    }

    pub fn to_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }
}

/// librdkafka settings from the config, for any kind of client.
pub fn client_config(
    kafka: &KafkaConfig,
    role: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in kafka.client.iter().chain(role) {
        config.set(key, value);
    }
    config
}

/// Settings for a consumer that only reads partitions it assigns itself.
///
/// librdkafka wants a group id even for `assign()`, so each reader gets a
/// fresh one named after `purpose`; nothing is ever committed to it. With
/// auto-commit on, closing such a consumer makes a final commit, and once the
/// broker is gone that close blocks for most of a minute.
pub fn reader_config(kafka: &KafkaConfig, purpose: &str) -> ClientConfig {
    let mut config = client_config(kafka, &kafka.consumer);
    config
        .set("group.id", format!("{purpose}-{:x}", rand::random::<u64>()))
        .set("enable.auto.commit", "false");
    config
}

#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
}

impl Producer {
    pub fn new(kafka: &KafkaConfig) -> Result<Self, WfmError> {
        let mut config = client_config(kafka, &Default::default());
        config
            .set("enable.idempotence", "true")
            // No linger: most records fan out to several partitions (a job's
            // commands go to one partition per switch), and with a linger the
            // partitions whose record came a few microseconds later missed the
            // produce request and waited a round trip for the next one. Under
            // load, records still batch while a request is in flight.
            .set("linger.ms", "0")
            // The Java client's partitioner, so keys land where any Kafka client puts them.
            .set("partitioner", "murmur2_random")
            .set(
                "message.max.bytes",
                (kafka.max_record_bytes + 64 * 1024).to_string(),
            );
        for (key, value) in &kafka.producer {
            config.set(key, value);
        }
        Ok(Self {
            inner: config.create()?,
        })
    }

    /// Hands the record to librdkafka now; the returned future resolves when the
    /// broker has acknowledged it. Waits while librdkafka's queue is full.
    pub async fn enqueue(&self, out: &Outgoing) -> Result<DeliveryFuture, WfmError> {
        loop {
            let mut record: FutureRecord<'_, str, [u8]> =
                FutureRecord::to(&out.topic).key(out.key.as_str());
            if let Some(value) = &out.value {
                record = record.payload(value.as_slice());
            }
            if let Some(partition) = out.partition {
                record = record.partition(partition);
            }
            match self.inner.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
    }

    /// Sends one record and waits for the broker's acknowledgement.
    pub async fn send(&self, out: &Outgoing) -> Result<(i32, i64), WfmError> {
        let delivery = self.enqueue(out).await?;
        acknowledged(delivery).await
    }

    /// Sends records in order and waits until the broker has acknowledged all of them.
    pub async fn send_all(&self, outs: &[Outgoing]) -> Result<(), WfmError> {
        let mut deliveries = Vec::with_capacity(outs.len());
        for out in outs {
            deliveries.push(self.enqueue(out).await?);
        }
        for delivery in deliveries {
            acknowledged(delivery).await?;
        }
        Ok(())
    }

    /// Waits until every record handed over so far is acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), WfmError> {
        self.inner.flush(timeout).map_err(WfmError::from)
    }
}

/// The partition and offset of an acknowledged record, or why it was not.
pub async fn acknowledged(delivery: DeliveryFuture) -> Result<(i32, i64), WfmError> {
    match delivery.await {
        Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
        Ok(Err((error, _))) => Err(WfmError::Delivery(error.to_string())),
        Err(_) => Err(WfmError::Delivery("producer dropped".into())),
    }
}
