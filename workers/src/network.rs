//! The network the resource manager allocates on: the latest record per key
//! of the compacted `wfm.topology` topic, kept current by a background reader.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wfm_protocol::topology::{LinkInfo, TopologyRecord};
use wfm_protocol::{Envelope, Topic};
use wfm_runtime::producer::reader_config;
use wfm_runtime::{KafkaConfig, WfmError};

/// Switches, their ports, and directed links, indexed for path computation.
#[derive(Debug, Clone, Default)]
pub struct Network {
    switches: HashMap<String, BTreeSet<u32>>,
    links: HashMap<String, LinkInfo>,
    /// Link ids leaving each switch, sorted so that equal-cost paths are chosen deterministically.
    outgoing: HashMap<String, BTreeSet<String>>,
    /// How many link directions use each `(switch, port)`.
    isl_ports: HashMap<(String, u32), usize>,
}

impl Network {
    pub fn from_records(records: impl IntoIterator<Item = TopologyRecord>) -> Self {
        let mut network = Self::default();
        for record in records {
            network.apply(&record.key(), Some(record));
        }
        network
    }

    /// Applies the latest record of `key`; `None` is a tombstone.
    pub fn apply(&mut self, key: &str, record: Option<TopologyRecord>) {
        self.remove(key);
        match record {
            Some(TopologyRecord::Switch(switch)) => {
                self.switches
                    .insert(switch.switch_id, switch.ports.into_iter().collect());
            }
            Some(TopologyRecord::Link(link)) => {
                for end in [&link.src, &link.dst] {
                    *self
                        .isl_ports
                        .entry((end.switch_id.clone(), end.port))
                        .or_default() += 1;
                }
                self.outgoing
                    .entry(link.src.switch_id.clone())
                    .or_default()
                    .insert(key.to_owned());
                self.links.insert(key.to_owned(), link);
            }
            None => {}
        }
    }

    fn remove(&mut self, key: &str) {
        self.switches.remove(key);
        let Some(link) = self.links.remove(key) else {
            return;
        };
        for end in [&link.src, &link.dst] {
            let port = (end.switch_id.clone(), end.port);
            if let Some(count) = self.isl_ports.get_mut(&port) {
                *count -= 1;
                if *count == 0 {
                    self.isl_ports.remove(&port);
                }
            }
        }
        if let Some(out) = self.outgoing.get_mut(&link.src.switch_id) {
            out.remove(key);
        }
    }

    pub fn ports(&self, switch_id: &str) -> Option<&BTreeSet<u32>> {
        self.switches.get(switch_id)
    }

    pub fn is_isl_port(&self, switch_id: &str, port: u32) -> bool {
        self.isl_ports.contains_key(&(switch_id.to_owned(), port))
    }

    pub fn link(&self, link_id: &str) -> Option<&LinkInfo> {
        self.links.get(link_id)
    }

    /// Links (with their ids) between switches that are both in the topology, leaving `switch_id`.
    pub fn links_from<'a>(
        &'a self,
        switch_id: &str,
    ) -> impl Iterator<Item = (&'a str, &'a LinkInfo)> + 'a {
        let present = self.switches.contains_key(switch_id);
        self.outgoing
            .get(switch_id)
            .filter(|_| present)
            .into_iter()
            .flatten()
            .filter_map(|id| Some((id.as_str(), self.links.get(id)?)))
            .filter(|(_, link)| self.switches.contains_key(&link.dst.switch_id))
    }

    pub fn switch_count(&self) -> usize {
        self.switches.len()
    }
}

/// A network kept current by [`spawn_reader`]; cheap to clone.
#[derive(Clone)]
pub struct SharedNetwork {
    network: Arc<RwLock<Network>>,
    caught_up: watch::Receiver<bool>,
}

impl SharedNetwork {
    pub fn read(&self) -> RwLockReadGuard<'_, Network> {
        self.network.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the reader has applied every record that was on the topic
    /// when it started, so that a restored allocator validates against the
    /// whole topology rather than a prefix of it.
    pub async fn caught_up(&self, patience: Duration) -> Result<(), WfmError> {
        let mut caught_up = self.caught_up.clone();
        tokio::time::timeout(patience, caught_up.wait_for(|done| *done))
            .await
            .map_err(|_| WfmError::Transient("topology not loaded yet".into()))?
            .map_err(|_| WfmError::Transient("topology reader stopped".into()))?;
        Ok(())
    }
}

/// Starts a task that reads `wfm.topology` from the beginning and follows it until `shutdown`.
pub async fn spawn_reader(
    kafka: &KafkaConfig,
    shutdown: CancellationToken,
) -> Result<SharedNetwork, WfmError> {
    let topic = kafka.topics().name(Topic::Topology);
    let mut config = reader_config(kafka, "wfm-topology");
    config.set("enable.partition.eof", "false");
    let consumer: Arc<StreamConsumer> = Arc::new(config.create()?);
    let mut ends = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..kafka.partitions_of(Topic::Topology) {
        let (low, high) = {
            let consumer = consumer.clone();
            let topic = topic.clone();
            tokio::task::spawn_blocking(move || {
                consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))
            })
            .await
            .expect("watermark task does not panic")?
        };
        if high > low {
            ends.insert(partition, high);
        }
        assignment.add_partition_offset(&topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let network = Arc::new(RwLock::new(Network::default()));
    let (caught_up_tx, caught_up) = watch::channel(ends.is_empty());
    let shared = SharedNetwork {
        network: network.clone(),
        caught_up,
    };
    tokio::spawn(async move {
        let mut ends: BTreeMap<i32, i64> = ends.into_iter().collect();
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break,
                message = consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    warn!(%error, "topology read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let key = message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            let record = match message.payload() {
                None => None,
                Some(bytes) => match Envelope::decode(bytes, usize::MAX)
                    .and_then(|e| e.open::<TopologyRecord>())
                {
                    Ok(record) => Some(record),
                    Err(error) => {
                        warn!(%error, %key, "undecodable topology record skipped");
                        continue;
                    }
                },
            };
            network
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .apply(&key, record);
            if ends
                .get(&message.partition())
                .is_some_and(|end| message.offset() >= end - 1)
            {
                ends.remove(&message.partition());
                if ends.is_empty() {
                    let switches = network.read().map(|n| n.switch_count()).unwrap_or(0);
                    info!(switches, "topology loaded");
                    let _ = caught_up_tx.send(true);
                }
            }
        }
    });
    Ok(shared)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use wfm_protocol::topology::{switch_id, LinkEnd, SwitchInfo};

    pub fn switch(n: u64) -> TopologyRecord {
        TopologyRecord::Switch(SwitchInfo {
            switch_id: switch_id(n),
            ports: (1..=20).collect(),
        })
    }

    /// Both directions of a link between switches `a` and `b`, on ports `10 + b` and `10 + a`.
    pub fn link(a: u64, b: u64, bandwidth_kbps: u64, latency_ms: u64) -> [TopologyRecord; 2] {
        let forward = LinkInfo {
            src: LinkEnd {
                switch_id: switch_id(a),
                port: 10 + b as u32,
            },
            dst: LinkEnd {
                switch_id: switch_id(b),
                port: 10 + a as u32,
            },
            bandwidth_kbps,
            latency_ms,
        };
        [
            TopologyRecord::Link(forward.reversed()),
            TopologyRecord::Link(forward),
        ]
    }

    #[test]
    fn latest_record_per_key_wins_and_tombstones_remove() {
        let [two_one, one_two] = link(1, 2, 100, 1);
        let mut network = Network::from_records([switch(1), switch(2), two_one.clone(), one_two]);
        assert!(network.is_isl_port(&switch_id(1), 12));
        assert!(!network.is_isl_port(&switch_id(1), 3));
        assert_eq!(network.links_from(&switch_id(1)).count(), 1);

        network.apply(&two_one.key(), None);
        // The reverse direction still uses both ports.
        assert!(network.is_isl_port(&switch_id(1), 12));
        assert_eq!(network.links_from(&switch_id(2)).count(), 0);

        network.apply(&switch_id(1), None);
        assert!(network.ports(&switch_id(1)).is_none());
        assert_eq!(network.links_from(&switch_id(1)).count(), 0);
    }
}
