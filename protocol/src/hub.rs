//! The hub's inbox (`wfm.hub`, keyed by flow id): northbound commands, spoke
//! results and coordinator timeouts. Result kinds are shared with the spokes'
//! reply enums, so a spoke's reply opens directly as a hub message.

use serde::{Deserialize, Serialize};

use crate::coordinator::CallbackTimeout;
use crate::flow::FlowSpec;
use crate::resources::{Allocated, AllocationFailed, Deallocated, ReplyTo};
use crate::speaker::JobCompleted;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum HubMessage {
    CreateFlow(CreateFlowRequest),
    DeleteFlow(DeleteFlowRequest),
    Allocated(Allocated),
    AllocationFailed(AllocationFailed),
    Deallocated(Deallocated),
    JobCompleted(JobCompleted),
    CallbackTimeout(CallbackTimeout),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateFlowRequest {
    pub request_id: String,
    pub flow: FlowSpec,
    pub reply_to: ReplyTo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteFlowRequest {
    pub request_id: String,
    pub flow_id: String,
    pub reply_to: ReplyTo,
}
