//! What operators see of the hub: every request in flight with its state,
//! age and correlation id, events handled per state, and outcomes.

use std::fmt::Write as _;
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
    /// Events handled, by the state the request was in.
    events: Arc<DashMap<String, u64>>,
    /// Finished requests, by kind and terminal state.
    outcomes: Arc<DashMap<(&'static str, String), u64>>,
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

    pub fn count_event(&self, state: &str) {
        *self.events.entry(state.to_owned()).or_default() += 1;
    }

    pub fn count_outcome(&self, kind: &'static str, state: String) {
        *self.outcomes.entry((kind, state)).or_default() += 1;
    }

    /// Prometheus text: requests in flight per state, events per state, outcomes.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::from("# TYPE wfm_hub_requests_in_flight gauge\n");
        let mut per_state: std::collections::BTreeMap<String, u64> = Default::default();
        for request in self.in_flight.iter() {
            *per_state.entry(request.state.clone()).or_default() += 1;
        }
        for (state, count) in per_state {
            let _ = writeln!(
                out,
                "wfm_hub_requests_in_flight{{state=\"{state}\"}} {count}"
            );
        }
        out.push_str("# TYPE wfm_hub_events_total counter\n");
        for entry in self.events.iter() {
            let _ = writeln!(
                out,
                "wfm_hub_events_total{{state=\"{}\"}} {}",
                entry.key(),
                entry.value()
            );
        }
        out.push_str("# TYPE wfm_hub_requests_finished_total counter\n");
        for entry in self.outcomes.iter() {
            let (kind, state) = entry.key();
            let _ = writeln!(
                out,
                "wfm_hub_requests_finished_total{{kind=\"{kind}\",state=\"{state}\"}} {}",
                entry.value()
            );
        }
        out
    }
}
