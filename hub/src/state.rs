//! What the hub holds for one inbox partition, and how it is written to and
//! restored from its changelog (`wfm.hub.state`) and `wfm.flows`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use wfm_protocol::flow::{FlowRecord, FlowsMessage};
use wfm_protocol::history::HistoryEvent;
use wfm_protocol::Envelope;

use crate::fsm::{Effect, Request, RequestCore};

/// A request in flight, as persisted after every event it handles.
#[derive(Serialize, Deserialize)]
pub struct InFlight {
    pub request: Request,
    /// The flow's history chain head: (seq, hash) of its latest event. Kept in
    /// the same record as the request, so the two can never disagree.
    pub history_head: Option<(u64, String)>,
    /// The history events of the latest event, resent exactly on resume.
    pub last_history: Vec<HistoryEvent>,
}

/// The request that finished last on a flow, with what its final event sent.
///
/// The outputs of one inbox record go to several partitions, and a crash can
/// leave some of them durable and others not: this record in the changelog,
/// say, but not the reply or the last history event. The inbox record is then
/// not committed, so its replay reaches whoever owns the partition next, and
/// seeing a record of a finished request, the hub resends these.
#[derive(Clone, Serialize, Deserialize)]
pub struct Finished {
    pub core: RequestCore,
    pub effects: Vec<Effect>,
    pub history: Vec<HistoryEvent>,
}

/// Records of the hub's changelog, keyed `request/<flow id>` or `history/<flow id>`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum HubStateRecord {
    RequestSnapshot(Box<InFlight>),
    /// The chain head of a flow with no request in flight, and the request
    /// that finished last on it (so that a redelivered command is known).
    HistoryHead {
        seq: u64,
        hash: String,
        #[serde(default)]
        last_request_id: String,
        /// Absent in records written before it existed.
        #[serde(default)]
        finished: Option<Box<Finished>>,
    },
}

pub fn request_key(flow_id: &str) -> String {
    format!("request/{flow_id}")
}

pub fn history_key(flow_id: &str) -> String {
    format!("history/{flow_id}")
}

#[derive(Default)]
pub struct PartitionState {
    pub flows: HashMap<String, FlowRecord>,
    pub requests: HashMap<String, InFlight>,
    pub history_heads: HashMap<String, (u64, String)>,
    /// Per flow, the request that finished last: its id, and what it sent at
    /// the end when the changelog has that.
    pub finished: HashMap<String, (String, Option<Box<Finished>>)>,
}

#[derive(Debug, thiserror::Error)]
#[error("changelog record `{key}` is unreadable: {reason}")]
pub struct CorruptRecord {
    pub key: String,
    pub reason: String,
}

impl PartitionState {
    /// Applies one `wfm.flows` record (latest per key wins; a tombstone deletes).
    pub fn apply_flow(&mut self, key: String, value: Option<&[u8]>) -> Result<(), CorruptRecord> {
        let Some(value) = value else {
            self.flows.remove(&key);
            return Ok(());
        };
        let FlowsMessage::FlowRecord(flow) = open(&key, value)?;
        self.flows.insert(key, flow);
        Ok(())
    }

    /// Applies one `wfm.hub.state` record.
    pub fn apply_state(&mut self, key: String, value: Option<&[u8]>) -> Result<(), CorruptRecord> {
        let (flow_id, is_request) =
            match (key.strip_prefix("request/"), key.strip_prefix("history/")) {
                (Some(flow_id), _) => (flow_id.to_owned(), true),
                (_, Some(flow_id)) => (flow_id.to_owned(), false),
                _ => {
                    return Err(CorruptRecord {
                        key,
                        reason: "unknown key prefix".into(),
                    })
                }
            };
        match (value, is_request) {
            (None, true) => {
                self.requests.remove(&flow_id);
            }
            (None, false) => {
                self.history_heads.remove(&flow_id);
                self.finished.remove(&flow_id);
            }
            (Some(value), _) => match open(&key, value)? {
                HubStateRecord::RequestSnapshot(in_flight) => {
                    self.requests.insert(flow_id, *in_flight);
                }
                HubStateRecord::HistoryHead {
                    seq,
                    hash,
                    last_request_id,
                    finished,
                } => {
                    self.finished
                        .insert(flow_id.clone(), (last_request_id, finished));
                    self.history_heads.insert(flow_id, (seq, hash));
                }
            },
        }
        Ok(())
    }
}

fn open<M: wfm_protocol::Message>(key: &str, value: &[u8]) -> Result<M, CorruptRecord> {
    Envelope::decode(value, usize::MAX)
        .and_then(|envelope| envelope.open())
        .map_err(|e| CorruptRecord {
            key: key.to_owned(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(record: &HubStateRecord) -> Vec<u8> {
        Envelope::new(record, "hub", "c").unwrap().encode()
    }

    #[test]
    fn a_history_head_remembers_the_last_finished_request_until_tombstoned() {
        let mut state = PartitionState::default();
        let head = HubStateRecord::HistoryHead {
            seq: 7,
            hash: "h".into(),
            last_request_id: "r9".into(),
            finished: None,
        };
        state
            .apply_state(history_key("f1"), Some(&encoded(&head)))
            .unwrap();
        assert_eq!(state.finished["f1"].0, "r9");
        assert_eq!(state.history_heads["f1"], (7, "h".to_owned()));
        state.apply_state(history_key("f1"), None).unwrap();
        assert!(state.finished.is_empty() && state.history_heads.is_empty());
    }

    #[test]
    fn unknown_keys_and_garbage_are_reported_not_applied() {
        let mut state = PartitionState::default();
        assert!(state.apply_state("weird/f1".into(), Some(b"{}")).is_err());
        assert!(state
            .apply_state(request_key("f1"), Some(b"not json"))
            .is_err());
        assert!(state.apply_flow("f1".into(), Some(b"nope")).is_err());
        assert!(state.requests.is_empty() && state.flows.is_empty());
    }
}
