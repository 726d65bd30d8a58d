//! The resource manager's inbox (`wfm.resources`, one partition: a single
//! writer) and its replies to the hub. Both operations are idempotent by flow
//! id, so a retried or duplicated request never leaks or double-books.

use serde::{Deserialize, Serialize};

use crate::flow::{FlowPath, FlowResources, FlowSpec};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum ResourcesCommand {
    Allocate(AllocateRequest),
    Deallocate(DeallocateRequest),
}

/// Where an answer goes: a topic and the key that routes it to its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTo {
    pub topic: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocateRequest {
    pub request_id: String,
    pub flow: FlowSpec,
    pub reply_to: ReplyTo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeallocateRequest {
    pub request_id: String,
    pub flow_id: String,
    pub reply_to: ReplyTo,
}

/// Replies, with kinds that the hub's inbox shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum ResourcesReply {
    Allocated(Allocated),
    AllocationFailed(AllocationFailed),
    Deallocated(Deallocated),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocated {
    pub request_id: String,
    pub flow_id: String,
    pub path: FlowPath,
    pub resources: FlowResources,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationErrorCode {
    UnknownSwitch,
    UnknownPort,
    /// The endpoint port carries an inter-switch link.
    IslPort,
    EndpointConflict,
    NoPath,
    NotEnoughBandwidth,
    ResourcesExhausted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocationFailed {
    pub request_id: String,
    pub flow_id: String,
    pub code: AllocationErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deallocated {
    pub request_id: String,
    pub flow_id: String,
}
