//! Reading a changelog partition back from the beginning, to restore the
//! state of an inbox partition a member has just been assigned.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::error::WfmError;
use crate::producer::reader_config;

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
    let mut config = reader_config(kafka, "wfm-restore");
    config.set("enable.partition.eof", "false");
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
    let mut corrected = HashSet::new();
    while !ends.is_empty() {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .map_err(|_| WfmError::Transient(format!("restore of {topic} stalled")))??;
        let partition = message.partition();
        let Some(end) = ends.get_mut(&partition) else {
            continue;
        };
        // tansu 0.6 (memory storage) answers ListOffsets with the base offset
        // of the newest batch + 1, short of that batch's later records. The
        // first fetch response carries the true high watermark (librdkafka
        // caches it); taking only the first keeps the end from moving on.
        if corrected.insert(partition) {
            if let Some(fetched_high) = fetched_high_watermark(&consumer, topic, partition) {
                *end = (*end).max(fetched_high);
            }
        }
        let end = *end;
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

/// The high watermark of the partition's last fetch response, as librdkafka
/// cached it (rdkafka 0.38 has no safe wrapper for this call).
fn fetched_high_watermark(consumer: &StreamConsumer, topic: &str, partition: i32) -> Option<i64> {
    use rdkafka::bindings::{rd_kafka_get_watermark_offsets, rd_kafka_resp_err_t};
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: the client handle lives as long as `consumer`, the topic string
    // outlives the call, and the out-pointers are to locals.
    let error = unsafe {
        rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (error == rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}
