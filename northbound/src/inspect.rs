//! What `/v2/inspect` reports beyond this process's own consumers: the hub's
//! requests in flight and the coordinator's callback counts. In `wfm up` the
//! live in-process handles are used; a standalone northbound reads the hub's
//! changelog instead and says that coordinator counts are unavailable.

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use wfm_coordinator::Stats;
use wfm_hub::state::HubStateRecord;
use wfm_hub::HubInspector;
use wfm_protocol::{Envelope, Topic};
use wfm_runtime::KafkaConfig;

#[derive(Debug, Clone, Default)]
pub struct InspectSources {
    pub hub: Option<HubInspector>,
    pub coordinator: Option<Stats>,
    pub speaker: Option<wfm_workers::SpeakerStats>,
}

#[derive(Debug, Clone, Serialize)]
struct HubRequest {
    flow_id: String,
    request_id: String,
    correlation_id: String,
    kind: &'static str,
    state: String,
    started_at: i64,
    age_ms: i64,
}

const CHANGELOG_PATIENCE: Duration = Duration::from_secs(5);

impl InspectSources {
    pub async fn hub(&self, kafka: &KafkaConfig) -> Value {
        let now = wfm_protocol::now_ms();
        if let Some(inspector) = &self.hub {
            let requests: Vec<_> = inspector
                .in_flight()
                .into_iter()
                .map(|s| HubRequest {
                    age_ms: now - s.started_at,
                    flow_id: s.flow_id,
                    request_id: s.request_id,
                    correlation_id: s.correlation_id,
                    kind: s.kind,
                    state: s.state,
                    started_at: s.started_at,
                })
                .collect();
            return json!({ "source": "in_process", "requests": requests });
        }
        let topic = kafka.topics().name(Topic::HubState);
        let partitions: Vec<i32> = (0..kafka.partitions_of(Topic::HubState)).collect();
        let read = tokio::time::timeout(
            CHANGELOG_PATIENCE,
            wfm_runtime::changelog::latest_by_key(kafka, &topic, &partitions),
        )
        .await;
        let state = match read {
            Ok(Ok(state)) => state,
            Ok(Err(error)) => return json!({ "source": "unavailable", "error": error.to_string() }),
            Err(_) => {
                return json!({ "source": "unavailable", "error": format!("{topic} not read within {CHANGELOG_PATIENCE:?}") })
            }
        };
        let mut requests: Vec<_> = state
            .iter()
            .filter(|(key, _)| key.starts_with("request/"))
            .filter_map(|(_, value)| {
                let envelope = Envelope::decode(value, usize::MAX).ok()?;
                let HubStateRecord::RequestSnapshot(in_flight) = envelope.open().ok()? else {
                    return None;
                };
                let core = in_flight.request.core();
                Some(HubRequest {
                    flow_id: core.flow_id.clone(),
                    request_id: core.request_id.clone(),
                    correlation_id: core.correlation_id.clone(),
                    kind: in_flight.request.kind(),
                    state: in_flight.request.state(),
                    started_at: core.started_at,
                    age_ms: now - core.started_at,
                })
            })
            .collect();
        requests.sort_by_key(|r| r.started_at);
        json!({ "source": "changelog", "requests": requests })
    }

    pub fn speaker(&self) -> Value {
        match &self.speaker {
            Some(stats) => json!({ "source": "in_process", "stats": stats.snapshot() }),
            None => json!({
                "source": "unavailable",
                "error": "the speaker worker runs in another process"
            }),
        }
    }

    pub fn coordinator(&self) -> Value {
        match &self.coordinator {
            Some(stats) => json!({ "source": "in_process", "stats": stats.snapshot() }),
            None => json!({
                "source": "unavailable",
                "error": "the coordinator runs in another process; see its metrics"
            }),
        }
    }
}
