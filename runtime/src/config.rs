//! Kafka client settings shared by every component.

use std::collections::BTreeMap;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::{Deserialize, Serialize};
use wfm_protocol::{Topic, Topics};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers. Filled in from the embedded broker when empty.
    pub brokers: String,
    pub topic_prefix: String,
    /// Partition count of every partitioned topic (all but `resources`, which has one
    /// so that the resource manager is a single writer).
    pub partitions: i32,
    pub replication_factor: i32,
    /// librdkafka properties for every client, e.g. `broker.address.family`.
    pub client: BTreeMap<String, String>,
    /// librdkafka properties for producers only.
    pub producer: BTreeMap<String, String>,
    /// librdkafka properties for consumers only.
    pub consumer: BTreeMap<String, String>,
    /// Records larger than this are dead-lettered unread.
    pub max_record_bytes: usize,
    /// Records handled but not yet acknowledged by the broker, per consumer; past
    /// it the consumer pauses until the broker catches up.
    pub max_in_flight: usize,
    pub retry: RetryConfig,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topic_prefix: "wfm.".into(),
            partitions: 4,
            replication_factor: 1,
            client: BTreeMap::new(),
            producer: BTreeMap::new(),
            consumer: BTreeMap::new(),
            max_record_bytes: 1024 * 1024,
            max_in_flight: 10_000,
            retry: RetryConfig::default(),
        }
    }
}

impl KafkaConfig {
    pub fn topics(&self) -> Topics {
        Topics::new(self.topic_prefix.clone())
    }

    pub fn partitions_of(&self, topic: Topic) -> i32 {
        match topic {
            Topic::Resources | Topic::ResourcesState => 1,
            _ => self.partitions,
        }
    }

    /// Settings for the embedded broker. (Its fetches answer as soon as
    /// records arrive, so librdkafka's default `fetch.wait.max.ms` only
    /// bounds how often an idle consumer asks again.)
    pub fn tune_for_embedded_broker(&mut self) {
        // A member that died is only replaced once its session expires:
        // 6 s is the lowest a stock Kafka broker accepts, tansu takes less.
        self.consumer
            .entry("session.timeout.ms".into())
            .or_insert_with(|| "3000".into());
        self.client
            .entry("broker.address.family".into())
            .or_insert_with(|| "v4".into());
    }
}

/// Exponential backoff with jitter, for transient failures.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub initial_ms: u64,
    pub max_ms: u64,
    /// Attempts before a record is dead-lettered as `retries_exhausted`.
    pub max_attempts: usize,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_ms: 50,
            max_ms: 5_000,
            max_attempts: 8,
        }
    }
}

impl RetryConfig {
    /// The delays between attempts: at most `max_attempts - 1` of them.
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.initial_ms))
            .with_max_delay(Duration::from_millis(self.max_ms))
            .with_max_times(self.max_attempts.saturating_sub(1))
            .with_jitter()
            .build()
    }

    /// Delays without end, capped at `max_ms`: for reconnecting to a broker.
    pub fn forever(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.initial_ms))
            .with_max_delay(Duration::from_millis(self.max_ms))
            .without_max_times()
            .with_jitter()
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_are_bounded_in_count_and_size() {
        let retry = RetryConfig {
            initial_ms: 10,
            max_ms: 100,
            max_attempts: 5,
        };
        let delays: Vec<_> = retry.delays().collect();
        assert_eq!(delays.len(), 4);
        // Jitter adds up to one more delay's worth.
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(200)));
        assert!(retry.forever().take(100).count() == 100);
    }

    #[test]
    fn resources_is_single_partition() {
        let config = KafkaConfig::default();
        assert_eq!(config.partitions_of(Topic::Resources), 1);
        assert_eq!(config.partitions_of(Topic::Hub), 4);
    }
}
