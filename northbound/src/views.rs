//! Materialized views of `wfm.flows`, `wfm.topology` and `wfm.history`: every
//! read of the API is served from here and never touches the hub.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tracing::warn;
use wfm_protocol::flow::{FlowRecord, FlowsMessage};
use wfm_protocol::history::{HistoryEvent, HistoryMessage};
use wfm_protocol::topology::{LinkInfo, SwitchInfo, TopologyRecord};
use wfm_protocol::{Envelope, Message};

#[derive(Debug, Default)]
struct Data {
    flows: BTreeMap<String, FlowRecord>,
    switches: BTreeMap<String, SwitchInfo>,
    links: BTreeMap<String, LinkInfo>,
    history: HashMap<String, VecDeque<HistoryEvent>>,
}

#[derive(Debug, Clone)]
pub struct Views {
    data: Arc<RwLock<Data>>,
    max_history_per_flow: usize,
    max_record_bytes: usize,
    pub flows_caught_up: Arc<AtomicBool>,
    pub topology_caught_up: Arc<AtomicBool>,
    pub history_caught_up: Arc<AtomicBool>,
}

/// Opens a record as `M`; a record that does not open is skipped (the
/// producer's consumer dead-letters it; a view just must not crash on it).
fn open<M: Message>(topic: &str, key: &str, value: &[u8], max_bytes: usize) -> Option<M> {
    match Envelope::decode(value, max_bytes).and_then(|e| e.open::<M>()) {
        Ok(message) => Some(message),
        Err(error) => {
            warn!(topic, key, %error, "unreadable record skipped by the view");
            None
        }
    }
}

impl Views {
    pub fn new(max_history_per_flow: usize, max_record_bytes: usize) -> Self {
        Self {
            data: Arc::default(),
            max_history_per_flow,
            max_record_bytes,
            flows_caught_up: Arc::default(),
            topology_caught_up: Arc::default(),
            history_caught_up: Arc::default(),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Data> {
        self.data.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Data> {
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn caught_up(&self) -> bool {
        [
            &self.flows_caught_up,
            &self.topology_caught_up,
            &self.history_caught_up,
        ]
        .iter()
        .all(|flag| flag.load(Ordering::Acquire))
    }

    /// A `wfm.flows` record: latest per key wins, a tombstone deletes.
    pub fn apply_flow(&self, key: &str, value: Option<&[u8]>) {
        let record =
            value.and_then(|v| open::<FlowsMessage>("flows", key, v, self.max_record_bytes));
        let mut data = self.write();
        match (value, record) {
            (None, _) => {
                data.flows.remove(key);
            }
            (Some(_), Some(FlowsMessage::FlowRecord(flow))) => {
                data.flows.insert(key.to_owned(), flow);
            }
            (Some(_), None) => {}
        }
    }

    /// A `wfm.topology` record: a switch or a link direction; a tombstone removes either.
    pub fn apply_topology(&self, key: &str, value: Option<&[u8]>) {
        let record =
            value.and_then(|v| open::<TopologyRecord>("topology", key, v, self.max_record_bytes));
        let mut data = self.write();
        match (value, record) {
            (None, _) => {
                data.switches.remove(key);
                data.links.remove(key);
            }
            (Some(_), Some(TopologyRecord::Switch(switch))) => {
                data.switches.insert(key.to_owned(), switch);
            }
            (Some(_), Some(TopologyRecord::Link(link))) => {
                data.links.insert(key.to_owned(), link);
            }
            (Some(_), None) => {}
        }
    }

    /// A `wfm.history` event; a replayed one (same flow and seq) is not kept twice.
    pub fn apply_history(&self, key: &str, value: Option<&[u8]>) {
        let Some(HistoryMessage::HistoryEvent(event)) =
            value.and_then(|v| open::<HistoryMessage>("history", key, v, self.max_record_bytes))
        else {
            return;
        };
        let mut data = self.write();
        let events = data.history.entry(event.flow_id.clone()).or_default();
        if events
            .iter()
            .rev()
            .any(|e| e.seq == event.seq && e.hash == event.hash)
        {
            return;
        }
        events.push_back(event);
        while events.len() > self.max_history_per_flow {
            events.pop_front();
        }
    }

    pub fn flow(&self, flow_id: &str) -> Option<FlowRecord> {
        self.read().flows.get(flow_id).cloned()
    }

    pub fn flows(&self, keep: impl Fn(&FlowRecord) -> bool) -> Vec<FlowRecord> {
        self.read()
            .flows
            .values()
            .filter(|f| keep(f))
            .cloned()
            .collect()
    }

    /// The latest `max_count` events of a flow within `[from, to]`, oldest first;
    /// `None` when the flow has no history at all.
    pub fn history(
        &self,
        flow_id: &str,
        from: i64,
        to: i64,
        max_count: usize,
    ) -> Option<Vec<HistoryEvent>> {
        let data = self.read();
        let events = data.history.get(flow_id)?;
        let mut window: Vec<_> = events
            .iter()
            .rev()
            .filter(|e| (from..=to).contains(&e.at))
            .take(max_count)
            .cloned()
            .collect();
        window.reverse();
        Some(window)
    }

    pub fn switch(&self, switch_id: &str) -> Option<SwitchInfo> {
        self.read().switches.get(switch_id).cloned()
    }

    pub fn switches(&self) -> Vec<SwitchInfo> {
        self.read().switches.values().cloned().collect()
    }

    pub fn links(&self) -> Vec<LinkInfo> {
        self.read().links.values().cloned().collect()
    }

    /// `(flows, switches, links)` held right now.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let data = self.read();
        (data.flows.len(), data.switches.len(), data.links.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wfm_protocol::history::HistoryDraft;

    fn event(flow_id: &str, previous: Option<&HistoryEvent>, at: i64) -> HistoryEvent {
        HistoryDraft {
            request_id: "r".into(),
            correlation_id: "c".into(),
            actor: "hub".into(),
            action: "transition".into(),
            from_state: None,
            to_state: None,
            details: String::new(),
            at,
        }
        .chain(flow_id, previous.map(|p| (p.seq, p.hash.as_str())))
    }

    fn bytes(event: &HistoryEvent) -> Vec<u8> {
        Envelope::new(&HistoryMessage::HistoryEvent(event.clone()), "t", "c")
            .unwrap()
            .encode()
    }

    #[test]
    fn history_dedupes_replays_caps_and_windows() {
        let views = Views::new(3, 1 << 20);
        let mut events: Vec<HistoryEvent> = Vec::new();
        for at in 1..=4 {
            let next = event("f", events.last(), at * 10);
            events.push(next);
        }
        for e in &events {
            views.apply_history("f", Some(&bytes(e)));
        }
        views.apply_history("f", Some(&bytes(&events[3])));
        views.apply_history("f", Some(b"garbage"));
        let all = views.history("f", i64::MIN, i64::MAX, 100).unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let window = views.history("f", 20, 30, 1).unwrap();
        assert_eq!(window.iter().map(|e| e.at).collect::<Vec<_>>(), [30]);
        assert!(views.history("other", i64::MIN, i64::MAX, 1).is_none());
    }

    #[test]
    fn topology_tombstones_remove_switches_and_links() {
        let views = Views::new(10, 1 << 20);
        let switch = TopologyRecord::Switch(SwitchInfo {
            switch_id: "s1".into(),
            ports: vec![1, 2],
        });
        let bytes = Envelope::new(&switch, "t", "c").unwrap().encode();
        views.apply_topology("s1", Some(&bytes));
        assert_eq!(views.switch("s1").unwrap().ports, [1, 2]);
        views.apply_topology("s1", None);
        assert!(views.switch("s1").is_none());
    }
}
