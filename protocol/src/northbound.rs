//! What the hub answers on `wfm.northbound` (keyed by correlation id): the
//! first answer to a request (accepted, or rejected with a typed error) and
//! its final outcome.

use serde::{Deserialize, Serialize};

use crate::flow::FlowRecord;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum NorthboundReply {
    /// The request passed validation (and, for a create, allocation): the flow as it now is.
    RequestAccepted {
        request_id: String,
        flow: FlowRecord,
    },
    RequestRejected {
        request_id: String,
        flow_id: String,
        error: RequestError,
    },
    /// The request reached a terminal state; `flow` is `None` once a flow is deleted.
    RequestFinished {
        request_id: String,
        flow_id: String,
        succeeded: bool,
        flow: Option<FlowRecord>,
        message: String,
    },
}

impl NorthboundReply {
    pub fn request_id(&self) -> &str {
        match self {
            NorthboundReply::RequestAccepted { request_id, .. }
            | NorthboundReply::RequestRejected { request_id, .. }
            | NorthboundReply::RequestFinished { request_id, .. } => request_id,
        }
    }
}

/// Error classes that map onto HTTP statuses upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestErrorKind {
    /// 400
    InvalidRequest,
    /// 404: unknown flow, unknown switch or port, no path.
    NotFound,
    /// 409: the flow exists, or another operation runs on it.
    Conflict,
    /// 503
    Overloaded,
    /// 500: the request failed inside the hub.
    Internal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestError {
    pub kind: RequestErrorKind,
    pub message: String,
}
