//! What operators see of the hub: every request in flight with its state,
//! age and correlation id.

use std::sync::Arc;

use dashmap::DashMap;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct RequestSummary {
    pub flow_id: String,
    pub request_id: String,
    pub correlation_id: String,
    pub kind: &'static str,
    pub state: String,
    pub partition: i32,
    pub started_at: i64,
}

#[derive(Debug, Clone, Default)]
pub struct HubInspector {
    in_flight: Arc<DashMap<String, RequestSummary>>,
}

impl HubInspector {
    pub fn upsert(&self, summary: RequestSummary) {
        self.in_flight.insert(summary.flow_id.clone(), summary);
    }

    pub fn remove(&self, flow_id: &str) {
        self.in_flight.remove(flow_id);
    }

    pub fn forget_partition(&self, partition: i32) {
        self.in_flight.retain(|_, s| s.partition != partition);
    }

    pub fn in_flight(&self) -> Vec<RequestSummary> {
        let mut all: Vec<_> = self.in_flight.iter().map(|e| e.value().clone()).collect();
        all.sort_by_key(|s| s.started_at);
        all
    }

    pub fn count(&self) -> usize {
        self.in_flight.len()
    }
}
