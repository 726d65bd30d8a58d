//! The API's own request and response bodies. They are what the OpenAPI
//! document describes, so they are also exactly what is parsed and served:
//! the document cannot drift from the wire format. Protocol types convert
//! into them at the edge.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wfm_protocol::flow::{
    Encapsulation, FlowEndpoint, FlowPath, FlowRecord, FlowStatus, PathSegment,
};
use wfm_protocol::history::HistoryEvent;
use wfm_protocol::topology::{LinkInfo, SwitchInfo};

/// `POST /v2/flows` body.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowRequest {
    /// 1–100 characters of `A-Z a-z 0-9 _ . : -`.
    #[schema(
        pattern = r"^[A-Za-z0-9_.:-]{1,100}$",
        min_length = 1,
        max_length = 100
    )]
    pub flow_id: String,
    pub source: EndpointBody,
    pub destination: EndpointBody,
    /// Kilobits per second; 0 means unlimited.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub maximum_bandwidth: u64,
    #[serde(default)]
    pub ignore_bandwidth: bool,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default)]
    pub encapsulation_type: EncapsulationBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointBody {
    /// Datapath id: eight hex octets separated by colons.
    #[schema(
        pattern = r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){7}$",
        example = "00:00:00:00:00:00:00:01"
    )]
    pub switch_id: String,
    #[schema(minimum = 1)]
    pub port_number: u32,
    /// 0 means untagged.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 4095)]
    pub vlan_id: u16,
    /// 0 means no inner VLAN; needs an outer `vlan_id`.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 4095)]
    pub inner_vlan_id: u16,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EncapsulationBody {
    #[default]
    TransitVlan,
}

impl From<Encapsulation> for EncapsulationBody {
    fn from(value: Encapsulation) -> Self {
        match value {
            Encapsulation::TransitVlan => EncapsulationBody::TransitVlan,
        }
    }
}

impl From<EncapsulationBody> for Encapsulation {
    fn from(value: EncapsulationBody) -> Self {
        match value {
            EncapsulationBody::TransitVlan => Encapsulation::TransitVlan,
        }
    }
}

impl From<&FlowEndpoint> for EndpointBody {
    fn from(e: &FlowEndpoint) -> Self {
        Self {
            switch_id: e.switch_id.clone(),
            port_number: e.port_number,
            vlan_id: e.vlan_id,
            inner_vlan_id: e.inner_vlan_id,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StatusBody {
    InProgress,
    Up,
    Down,
    Failed,
}

impl From<FlowStatus> for StatusBody {
    fn from(value: FlowStatus) -> Self {
        match value {
            FlowStatus::InProgress => StatusBody::InProgress,
            FlowStatus::Up => StatusBody::Up,
            FlowStatus::Down => StatusBody::Down,
            FlowStatus::Failed => StatusBody::Failed,
        }
    }
}

/// A flow as the API shows it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct FlowResponse {
    pub flow_id: String,
    pub source: EndpointBody,
    pub destination: EndpointBody,
    pub maximum_bandwidth: u64,
    pub ignore_bandwidth: bool,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    pub encapsulation_type: EncapsulationBody,
    pub status: StatusBody,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_info: Option<String>,
    /// The request now running on the flow, or the last one that ran.
    pub last_request_id: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Milliseconds since the Unix epoch.
    pub updated_at: i64,
}

impl From<&FlowRecord> for FlowResponse {
    fn from(r: &FlowRecord) -> Self {
        Self {
            flow_id: r.spec.flow_id.clone(),
            source: (&r.spec.source).into(),
            destination: (&r.spec.destination).into(),
            maximum_bandwidth: r.spec.maximum_bandwidth,
            ignore_bandwidth: r.spec.ignore_bandwidth,
            description: r.spec.description.clone(),
            priority: r.spec.priority,
            encapsulation_type: r.spec.encapsulation_type.into(),
            status: r.status.into(),
            status_info: r.status_info.clone(),
            last_request_id: r.last_request_id.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct SegmentBody {
    pub src_switch: String,
    pub src_port: u32,
    pub dst_switch: String,
    pub dst_port: u32,
}

impl From<&PathSegment> for SegmentBody {
    fn from(s: &PathSegment) -> Self {
        Self {
            src_switch: s.src_switch.clone(),
            src_port: s.src_port,
            dst_switch: s.dst_switch.clone(),
            dst_port: s.dst_port,
        }
    }
}

/// Both directions of a flow's path; empty for a one-switch flow or before allocation.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct FlowPathResponse {
    pub flow_id: String,
    pub forward_path: Vec<SegmentBody>,
    pub reverse_path: Vec<SegmentBody>,
}

impl FlowPathResponse {
    pub fn new(flow_id: &str, path: Option<&FlowPath>) -> Self {
        let convert = |segments: &[PathSegment]| segments.iter().map(SegmentBody::from).collect();
        Self {
            flow_id: flow_id.to_owned(),
            forward_path: path.map(|p| convert(&p.forward)).unwrap_or_default(),
            reverse_path: path.map(|p| convert(&p.reverse)).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct HistoryEventBody {
    pub seq: u64,
    pub request_id: String,
    pub correlation_id: String,
    pub actor: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_state: Option<String>,
    pub details: String,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    /// SHA-256 of the event, chained to `prev_hash`.
    pub hash: String,
    pub prev_hash: String,
}

impl From<&HistoryEvent> for HistoryEventBody {
    fn from(e: &HistoryEvent) -> Self {
        Self {
            seq: e.seq,
            request_id: e.request_id.clone(),
            correlation_id: e.correlation_id.clone(),
            actor: e.actor.clone(),
            action: e.action.clone(),
            from_state: e.from_state.clone(),
            to_state: e.to_state.clone(),
            details: e.details.clone(),
            at: e.at,
            hash: e.hash.clone(),
            prev_hash: e.prev_hash.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct FlowHistoryResponse {
    pub flow_id: String,
    /// Oldest first.
    pub events: Vec<HistoryEventBody>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct SwitchResponse {
    pub switch_id: String,
    pub ports: Vec<u32>,
}

impl From<&SwitchInfo> for SwitchResponse {
    fn from(s: &SwitchInfo) -> Self {
        Self {
            switch_id: s.switch_id.clone(),
            ports: s.ports.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct LinkEndBody {
    pub switch_id: String,
    pub port: u32,
}

/// One direction of an inter-switch link.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct LinkResponse {
    pub id: String,
    pub src: LinkEndBody,
    pub dst: LinkEndBody,
    pub bandwidth_kbps: u64,
    pub latency_ms: u64,
}

impl From<&LinkInfo> for LinkResponse {
    fn from(l: &LinkInfo) -> Self {
        let end = |e: &wfm_protocol::topology::LinkEnd| LinkEndBody {
            switch_id: e.switch_id.clone(),
            port: e.port,
        };
        Self {
            id: l.id(),
            src: end(&l.src),
            dst: end(&l.dst),
            bandwidth_kbps: l.bandwidth_kbps,
            latency_ms: l.latency_ms,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only flows with this status.
    pub status: Option<StatusBody>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Events at or after this time (milliseconds since the Unix epoch).
    pub time_from: Option<i64>,
    /// Events at or before this time (milliseconds since the Unix epoch).
    pub time_to: Option<i64>,
    /// The latest this many events of the window (1–10000, default 100).
    #[param(minimum = 1, maximum = 10000)]
    pub max_count: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct HealthResponse {
    pub status: String,
}

/// Why the service is or is not ready.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ReadyResponse {
    pub ready: bool,
    pub broker_reachable: bool,
    pub flows_caught_up: bool,
    pub topology_caught_up: bool,
    pub history_caught_up: bool,
    pub replies_listening: bool,
}

/// What runs right now, for operators.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InspectResponse {
    /// Hub requests in flight: `source` says where they were read from
    /// (`in_process`, `changelog`), `requests` lists them with state and age.
    #[schema(value_type = Object)]
    pub hub: serde_json::Value,
    /// Coordinator callback counts, or why they are unavailable.
    #[schema(value_type = Object)]
    pub coordinator: serde_json::Value,
    /// Speaker worker counters (commands sent, retried, timed out, stale
    /// replies ignored, job latency), or why they are unavailable.
    #[schema(value_type = Object)]
    pub speaker: serde_json::Value,
    /// Every consumer loop of this process with its state and counters.
    #[schema(value_type = Vec<Object>)]
    pub consumers: serde_json::Value,
    pub northbound: NorthboundInspect,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NorthboundInspect {
    /// Mutations waiting for the hub's first answer.
    pub pending: usize,
    /// HTTP requests being served.
    pub in_flight: usize,
    pub flows: usize,
    pub switches: usize,
    pub links: usize,
}
