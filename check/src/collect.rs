//! Reading a [`Snapshot`]: the topics up to their high watermarks, and the
//! switch controller's tables over its control API.
//!
//! There is no global snapshot to take while requests run, so `wfm.flows` is
//! read both first and last: a flow whose record differs between the two
//! reads changed while its rules and resources were read, and is marked
//! unsettled rather than reported for what it was caught holding. Rules and
//! allocations are read in between, in the order the hub changes them, so a
//! settled flow is always seen consistently.

use std::collections::{BTreeMap, BTreeSet};

use wfm_protocol::flow::{FlowRecord, FlowsMessage};
use wfm_protocol::history::{HistoryEvent, HistoryMessage};
use wfm_protocol::topology::{LinkInfo, TopologyRecord};
use wfm_protocol::{Envelope, Message, ProtocolError, Topic};
use wfm_runtime::{KafkaConfig, WfmError};
use wfm_workers::allocator::Allocation;
use wfm_workers::resources::ResourcesState;

use crate::invariants::{Snapshot, SwitchTable};

pub struct Sources<'a> {
    pub kafka: &'a KafkaConfig,
    /// Base URL of the switch controller's control API, e.g. `http://127.0.0.1:8081`.
    pub simulator_url: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("reading {topic}: {source}")]
    Topic {
        topic: String,
        #[source]
        source: WfmError,
    },
    #[error("record {key:?} of {topic} is not what wfm writes there: {source}")]
    Undecodable {
        topic: String,
        key: String,
        #[source]
        source: ProtocolError,
    },
    #[error("reading the switch tables from {url}: {source}")]
    Simulator {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

pub async fn collect(sources: &Sources<'_>) -> Result<Snapshot, CollectError> {
    let taken_at = wfm_protocol::now_ms();
    let flows_before = flows(sources.kafka).await?;
    let allocations = allocations(sources.kafka).await?;
    let switches = switches(sources.simulator_url).await?;
    let flows = flows(sources.kafka).await?;
    let links = links(sources.kafka).await?;
    let histories = histories(sources.kafka).await?;
    let unsettled = changed_keys(&flows_before, &flows);
    Ok(Snapshot {
        flows,
        unsettled,
        allocations,
        switches,
        links,
        histories,
        taken_at,
    })
}

fn changed_keys<V: PartialEq>(
    before: &BTreeMap<String, V>,
    after: &BTreeMap<String, V>,
) -> BTreeSet<String> {
    before
        .keys()
        .chain(after.keys())
        .filter(|key| before.get(*key) != after.get(*key))
        .cloned()
        .collect()
}

fn all_partitions(kafka: &KafkaConfig, topic: Topic) -> Vec<i32> {
    (0..kafka.partitions_of(topic)).collect()
}

fn decode<M: Message>(topic: &str, key: &str, value: &[u8]) -> Result<M, CollectError> {
    Envelope::decode(value, usize::MAX)
        .and_then(|envelope| envelope.open::<M>())
        .map_err(|source| CollectError::Undecodable {
            topic: topic.to_owned(),
            key: key.to_owned(),
            source,
        })
}

/// The latest decoded value of every live key of a compacted topic.
async fn latest<M: Message>(
    kafka: &KafkaConfig,
    topic: Topic,
) -> Result<Vec<(String, M)>, CollectError> {
    let name = kafka.topics().name(topic);
    let records =
        wfm_runtime::changelog::latest_by_key(kafka, &name, &all_partitions(kafka, topic))
            .await
            .map_err(|source| CollectError::Topic {
                topic: name.clone(),
                source,
            })?;
    records
        .into_iter()
        .map(|(key, value)| Ok((key.clone(), decode(&name, &key, &value)?)))
        .collect()
}

async fn flows(kafka: &KafkaConfig) -> Result<BTreeMap<String, FlowRecord>, CollectError> {
    Ok(latest::<FlowsMessage>(kafka, Topic::Flows)
        .await?
        .into_iter()
        .map(|(key, FlowsMessage::FlowRecord(flow))| (key, flow))
        .collect())
}

async fn allocations(kafka: &KafkaConfig) -> Result<BTreeMap<String, Allocation>, CollectError> {
    Ok(latest::<ResourcesState>(kafka, Topic::ResourcesState)
        .await?
        .into_iter()
        .map(|(key, ResourcesState::Allocation(allocation))| (key, allocation))
        .collect())
}

async fn links(kafka: &KafkaConfig) -> Result<BTreeMap<String, LinkInfo>, CollectError> {
    Ok(latest::<TopologyRecord>(kafka, Topic::Topology)
        .await?
        .into_iter()
        .filter_map(|(key, record)| match record {
            TopologyRecord::Link(link) => Some((key, link)),
            TopologyRecord::Switch(_) => None,
        })
        .collect())
}

async fn histories(
    kafka: &KafkaConfig,
) -> Result<BTreeMap<String, Vec<HistoryEvent>>, CollectError> {
    let name = kafka.topics().name(Topic::History);
    let mut histories: BTreeMap<String, Vec<HistoryEvent>> = BTreeMap::new();
    let mut undecodable = None;
    wfm_runtime::changelog::read(
        kafka,
        &name,
        &all_partitions(kafka, Topic::History),
        |key, value| {
            let Some(value) = value else { return };
            match decode::<HistoryMessage>(&name, &key, value) {
                Ok(HistoryMessage::HistoryEvent(event)) => {
                    histories.entry(key).or_default().push(event)
                }
                Err(error) => {
                    undecodable.get_or_insert(error);
                }
            }
        },
    )
    .await
    .map_err(|source| CollectError::Topic {
        topic: name.clone(),
        source,
    })?;
    match undecodable {
        Some(error) => Err(error),
        None => Ok(histories),
    }
}

const SIMULATOR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

async fn switches(simulator_url: &str) -> Result<Vec<SwitchTable>, CollectError> {
    let url = format!("{}/switches", simulator_url.trim_end_matches('/'));
    let fail = |source| CollectError::Simulator {
        url: url.clone(),
        source,
    };
    // A switch controller that accepts the connection and never answers must
    // not hang the check.
    reqwest::Client::new()
        .get(&url)
        .timeout(SIMULATOR_TIMEOUT)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(fail)?
        .json()
        .await
        .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_added_removed_or_changed_between_reads_are_unsettled() {
        let before = BTreeMap::from([("a".to_owned(), 1), ("b".into(), 2), ("c".into(), 3)]);
        let after = BTreeMap::from([("a".to_owned(), 1), ("b".into(), 5), ("d".into(), 4)]);
        let changed: Vec<String> = changed_keys(&before, &after).into_iter().collect();
        assert_eq!(changed, ["b", "c", "d"]);
    }

    #[test]
    fn switch_tables_read_the_control_api_shape() {
        let table: SwitchTable = serde_json::from_value(serde_json::json!({
            "switch_id": "00:00:00:00:00:00:00:01",
            "connected": false,
            "fail_next": 0,
            "ports": [1, 2],
            "rules": [],
            "meters": [{ "meter_id": 32, "rate_kbps": 10 }]
        }))
        .unwrap();
        assert_eq!(table.meters[0].meter_id, 32);
    }
}
