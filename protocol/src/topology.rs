//! The network as the switch controller publishes it on the compacted
//! `wfm.topology` topic: one record per switch (keyed by switch id) and one
//! per link direction (keyed by [`LinkInfo::id`]), so a reader that keeps the
//! latest record per key has the current topology.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum TopologyRecord {
    Switch(SwitchInfo),
    Link(LinkInfo),
}

impl TopologyRecord {
    /// The record key on `wfm.topology`.
    pub fn key(&self) -> String {
        match self {
            TopologyRecord::Switch(switch) => switch.switch_id.clone(),
            TopologyRecord::Link(link) => link.id(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchInfo {
    /// Datapath id, e.g. `00:00:00:00:00:00:00:01` (see [`switch_id`]).
    pub switch_id: String,
    /// Port numbers, ascending. Ports not used by a link face customers.
    pub ports: Vec<u32>,
}

/// One direction of an inter-switch link: traffic leaves `src` and enters `dst`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkInfo {
    pub src: LinkEnd,
    pub dst: LinkEnd,
    pub bandwidth_kbps: u64,
    pub latency_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkEnd {
    pub switch_id: String,
    pub port: u32,
}

impl LinkInfo {
    /// `src_switch/src_port-dst_switch/dst_port`: unique per direction and never a switch id.
    pub fn id(&self) -> String {
        format!(
            "{}/{}-{}/{}",
            self.src.switch_id, self.src.port, self.dst.switch_id, self.dst.port
        )
    }

    pub fn reversed(&self) -> Self {
        Self {
            src: self.dst.clone(),
            dst: self.src.clone(),
            ..self.clone()
        }
    }
}

/// The datapath id of switch number `n`, e.g. `1` → `00:00:00:00:00:00:00:01`.
pub fn switch_id(n: u64) -> String {
    let bytes = n.to_be_bytes();
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_keys() {
        assert_eq!(switch_id(1), "00:00:00:00:00:00:00:01");
        assert_eq!(switch_id(0x1_0203), "00:00:00:00:00:01:02:03");
        let link = LinkInfo {
            src: LinkEnd {
                switch_id: switch_id(1),
                port: 9,
            },
            dst: LinkEnd {
                switch_id: switch_id(2),
                port: 10,
            },
            bandwidth_kbps: 10,
            latency_ms: 1,
        };
        assert_eq!(
            TopologyRecord::Link(link.clone()).key(),
            "00:00:00:00:00:00:00:01/9-00:00:00:00:00:00:00:02/10"
        );
        assert_eq!(link.reversed().reversed(), link);
        assert_ne!(link.reversed().id(), link.id());
    }
}
