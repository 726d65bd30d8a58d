//! Per-flow history on `wfm.history`: every event chained to the previous
//! event of the same flow by a SHA-256 hash, so that a flow's history can be
//! verified and a changed, dropped or reordered event is detected.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The hash a flow's first event chains to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum HistoryMessage {
    HistoryEvent(HistoryEvent),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub flow_id: String,
    /// 0 for the flow's first event, then +1 per event: a gap is detectable.
    pub seq: u64,
    pub request_id: String,
    pub correlation_id: String,
    /// Who acted: `northbound`, `hub`, an operator name.
    pub actor: String,
    /// What happened, e.g. `transition`, `command_failed`, `flow_up`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_state: Option<String>,
    #[serde(default)]
    pub details: String,
    pub at: i64,
    pub prev_hash: String,
    pub hash: String,
}

/// A history event before it is chained.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryDraft {
    pub request_id: String,
    pub correlation_id: String,
    pub actor: String,
    pub action: String,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    pub details: String,
    pub at: i64,
}

impl HistoryDraft {
    /// Links the draft after the flow's previous event (`None` for the first).
    pub fn chain(self, flow_id: &str, previous: Option<(u64, &str)>) -> HistoryEvent {
        let (seq, prev_hash) = match previous {
            Some((seq, hash)) => (seq + 1, hash.to_owned()),
            None => (0, GENESIS.to_owned()),
        };
        let mut event = HistoryEvent {
            flow_id: flow_id.to_owned(),
            seq,
            request_id: self.request_id,
            correlation_id: self.correlation_id,
            actor: self.actor,
            action: self.action,
            from_state: self.from_state,
            to_state: self.to_state,
            details: self.details,
            at: self.at,
            prev_hash,
            hash: String::new(),
        };
        event.hash = event.compute_hash();
        event
    }
}

impl HistoryEvent {
    /// SHA-256 over every field but `hash`, length-prefixed so fields cannot bleed into each other.
    pub fn compute_hash(&self) -> String {
        let mut hasher = Sha256::new();
        let optional = |s: &Option<String>| s.clone().unwrap_or_else(|| "\u{0}".into());
        for field in [
            self.flow_id.clone(),
            self.seq.to_string(),
            self.request_id.clone(),
            self.correlation_id.clone(),
            self.actor.clone(),
            self.action.clone(),
            optional(&self.from_state),
            optional(&self.to_state),
            self.details.clone(),
            self.at.to_string(),
            self.prev_hash.clone(),
        ] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field.as_bytes());
        }
        hex::encode(hasher.finalize())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("event {seq} of flow {flow_id}: hash does not match its content")]
    Tampered { flow_id: String, seq: u64 },
    #[error("event {seq} of flow {flow_id}: does not follow the previous event")]
    Broken { flow_id: String, seq: u64 },
}

/// Verifies one flow's events in log order.
pub fn verify_chain(events: &[HistoryEvent]) -> Result<(), ChainError> {
    let mut previous: Option<&HistoryEvent> = None;
    for event in events {
        if event.compute_hash() != event.hash {
            return Err(ChainError::Tampered {
                flow_id: event.flow_id.clone(),
                seq: event.seq,
            });
        }
        let (expected_seq, expected_prev) = match previous {
            Some(p) => (p.seq + 1, p.hash.as_str()),
            None => (0, GENESIS),
        };
        if event.seq != expected_seq || event.prev_hash != expected_prev {
            return Err(ChainError::Broken {
                flow_id: event.flow_id.clone(),
                seq: event.seq,
            });
        }
        previous = Some(event);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(action: &str) -> HistoryDraft {
        HistoryDraft {
            request_id: "r1".into(),
            correlation_id: "c1".into(),
            actor: "hub".into(),
            action: action.into(),
            from_state: None,
            to_state: Some("x".into()),
            details: String::new(),
            at: 1,
        }
    }

    fn chain_of(n: usize) -> Vec<HistoryEvent> {
        let mut events: Vec<HistoryEvent> = Vec::new();
        for i in 0..n {
            let previous = events.last().map(|e| (e.seq, e.hash.as_str()));
            let event = draft(&format!("a{i}")).chain("f1", previous);
            events.push(event);
        }
        events
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify_chain(&chain_of(5)), Ok(()));
    }

    #[test]
    fn a_changed_event_is_detected() {
        let mut events = chain_of(3);
        events[1].details = "rewritten".into();
        assert!(matches!(
            verify_chain(&events),
            Err(ChainError::Tampered { seq: 1, .. })
        ));
    }

    #[test]
    fn a_dropped_or_reordered_event_is_detected() {
        let mut events = chain_of(4);
        events.remove(1);
        assert!(matches!(
            verify_chain(&events),
            Err(ChainError::Broken { seq: 2, .. })
        ));
        let mut events = chain_of(3);
        events.swap(1, 2);
        assert!(verify_chain(&events).is_err());
    }
}
