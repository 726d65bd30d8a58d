//! Reading a changelog partition back from the beginning, to restore the
//! state of an inbox partition a member has just been assigned.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::error::WfmError;
use crate::producer::client_config;

/// The latest value of every key in the given partitions of `topic`, as of
/// their high watermarks when the call began; tombstoned keys are absent.
pub async fn latest_by_key(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<String, Vec<u8>>, WfmError> {
    let mut state = HashMap::new();
    read(kafka, topic, partitions, |key, value| match value {
        Some(value) => {
            state.insert(key, value.to_vec());
        }
        None => {
            state.remove(&key);
        }
    })
    .await?;
    Ok(state)
}

/// Calls `apply(key, value)` for every record of the partitions, in offset
/// order per partition, up to their high watermarks when the call began.
pub async fn read(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: &[i32],
    mut apply: impl FnMut(String, Option<&[u8]>),
) -> Result<u64, WfmError> {
    let mut config = client_config(kafka, &kafka.consumer);
    config
        .set("group.id", format!("wfm-restore-{}", uuid_like()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: Arc<StreamConsumer> = Arc::new(config.create()?);

    let mut ends = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &partition in partitions {
        let (low, high) = {
            let consumer = consumer.clone();
            let topic = topic.to_owned();
            tokio::task::spawn_blocking(move || {
                consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))
            })
            .await
            .expect("watermark task does not panic")?
        };
        if high > low {
            ends.insert(partition, high);
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
        }
    }
    if ends.is_empty() {
        return Ok(0);
    }
    consumer.assign(&assignment)?;
    let mut count = 0;
    while !ends.is_empty() {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .map_err(|_| WfmError::Transient(format!("restore of {topic} stalled")))??;
        let partition = message.partition();
        let Some(&end) = ends.get(&partition) else {
            continue;
        };
        if message.offset() < end {
            let key = message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            apply(key, message.payload());
            count += 1;
        }
        if message.offset() >= end - 1 {
            ends.remove(&partition);
        }
    }
    Ok(count)
}

fn uuid_like() -> String {
    format!("{:x}", rand::random::<u64>())
}
