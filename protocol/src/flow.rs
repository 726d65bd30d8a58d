//! Flows: the operator's request (OpenKilda v2 shape, snake_case) and the
//! record kept in the compacted `wfm.flows` topic, the source of truth.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowEndpoint {
    pub switch_id: String,
    pub port_number: u32,
    /// 0 means untagged.
    #[serde(default)]
    pub vlan_id: u16,
    /// 0 means no inner VLAN (no QinQ).
    #[serde(default)]
    pub inner_vlan_id: u16,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encapsulation {
    #[default]
    TransitVlan,
}

/// What the operator asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    pub flow_id: String,
    pub source: FlowEndpoint,
    pub destination: FlowEndpoint,
    /// Kilobits per second.
    #[serde(default)]
    pub maximum_bandwidth: u64,
    #[serde(default)]
    pub ignore_bandwidth: bool,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default)]
    pub encapsulation_type: Encapsulation,
}

impl FlowSpec {
    pub fn is_one_switch(&self) -> bool {
        self.source.switch_id == self.destination.switch_id
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlowStatus {
    InProgress,
    Up,
    Down,
    Failed,
}

impl FlowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowStatus::InProgress => "IN_PROGRESS",
            FlowStatus::Up => "UP",
            FlowStatus::Down => "DOWN",
            FlowStatus::Failed => "FAILED",
        }
    }
}

/// One hop of a path: out of `src_switch:src_port`, into `dst_switch:dst_port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PathSegment {
    pub src_switch: String,
    pub src_port: u32,
    pub dst_switch: String,
    pub dst_port: u32,
}

/// Both directions; empty for a one-switch flow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowPath {
    pub forward: Vec<PathSegment>,
    pub reverse: Vec<PathSegment>,
}

impl FlowPath {
    /// Every link id the path uses, forward then reverse.
    pub fn segments(&self) -> impl Iterator<Item = &PathSegment> {
        self.forward.iter().chain(self.reverse.iter())
    }
}

/// What the resource manager set aside for a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowResources {
    pub forward_cookie: u64,
    pub reverse_cookie: u64,
    /// Meter on the ingress switch of each direction; none when bandwidth is 0 or ignored.
    pub forward_meter_id: Option<u32>,
    pub reverse_meter_id: Option<u32>,
    pub forward_transit_vlan: u16,
    pub reverse_transit_vlan: u16,
}

/// The current state of a flow, as kept in `wfm.flows` (keyed by flow id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    #[serde(flatten)]
    pub spec: FlowSpec,
    pub status: FlowStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_info: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<FlowPath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<FlowResources>,
    /// The request now running on the flow, or the last one that ran.
    pub last_request_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum FlowsMessage {
    FlowRecord(FlowRecord),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_rejects_unknown_fields_and_defaults_optional_ones() {
        let spec: FlowSpec = serde_json::from_value(serde_json::json!({
            "flow_id": "f1",
            "source": { "switch_id": "00:00:00:00:00:00:00:01", "port_number": 10 },
            "destination": { "switch_id": "00:00:00:00:00:00:00:02", "port_number": 11, "vlan_id": 100 }
        }))
        .unwrap();
        assert_eq!(spec.maximum_bandwidth, 0);
        assert_eq!(spec.destination.vlan_id, 100);
        assert!(!spec.is_one_switch());
        let bad = serde_json::from_value::<FlowSpec>(serde_json::json!({
            "flow_id": "f1", "bogus": 1,
            "source": { "switch_id": "a", "port_number": 1 },
            "destination": { "switch_id": "b", "port_number": 1 }
        }));
        assert!(bad.is_err());
    }

    #[test]
    fn status_is_screaming_snake_case() {
        assert_eq!(
            serde_json::to_value(FlowStatus::InProgress).unwrap(),
            "IN_PROGRESS"
        );
        assert_eq!(FlowStatus::Up.as_str(), "UP");
    }
}
