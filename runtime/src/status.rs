//! What every consumer loop is doing right now, for operators and metrics: its
//! own small state machine and its counters.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerState {
    Starting,
    /// Rebuilding in-memory state from a changelog after a partition assignment.
    Restoring,
    Running,
    /// Waiting before retrying a transient failure or reconnecting.
    BackingOff,
    /// Too many outputs unacknowledged by the broker: not reading until they drain.
    Paused,
    Stopped,
}

impl ConsumerState {
    const ALL: [ConsumerState; 6] = [
        ConsumerState::Starting,
        ConsumerState::Restoring,
        ConsumerState::Running,
        ConsumerState::BackingOff,
        ConsumerState::Paused,
        ConsumerState::Stopped,
    ];

    fn label(self) -> &'static str {
        match self {
            ConsumerState::Starting => "starting",
            ConsumerState::Restoring => "restoring",
            ConsumerState::Running => "running",
            ConsumerState::BackingOff => "backing_off",
            ConsumerState::Paused => "paused",
            ConsumerState::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub handled: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub expired: AtomicU64,
    pub retried: AtomicU64,
    pub resets: AtomicU64,
    pub committed: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CounterSnapshot {
    pub received: u64,
    pub handled: u64,
    pub dead_lettered: u64,
    pub expired: u64,
    pub retried: u64,
    pub resets: u64,
    pub committed: u64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> CounterSnapshot {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            received: read(&self.received),
            handled: read(&self.handled),
            dead_lettered: read(&self.dead_lettered),
            expired: read(&self.expired),
            retried: read(&self.retried),
            resets: read(&self.resets),
            committed: read(&self.committed),
        }
    }
}

#[derive(Debug)]
pub struct ConsumerStatus {
    pub name: String,
    pub group: String,
    pub topics: Vec<String>,
    state: Mutex<(ConsumerState, i64)>,
    assigned: Mutex<Vec<(String, i32)>>,
    last_error: Mutex<Option<String>>,
    pub counters: Counters,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConsumerSnapshot {
    pub name: String,
    pub group: String,
    pub topics: Vec<String>,
    pub state: ConsumerState,
    /// Milliseconds since the Unix epoch when the current state was entered.
    pub state_since: i64,
    pub assigned: Vec<(String, i32)>,
    pub last_error: Option<String>,
    pub counters: CounterSnapshot,
}

impl ConsumerStatus {
    pub fn new(name: &str, group: &str, topics: &[String]) -> Self {
        Self {
            name: name.into(),
            group: group.into(),
            topics: topics.to_vec(),
            state: Mutex::new((ConsumerState::Starting, wfm_protocol::now_ms())),
            assigned: Mutex::new(Vec::new()),
            last_error: Mutex::new(None),
            counters: Counters::default(),
        }
    }

    pub fn state(&self) -> ConsumerState {
        lock(&self.state).0
    }

    pub fn set_state(&self, state: ConsumerState) {
        let mut current = lock(&self.state);
        if current.0 != state {
            tracing::debug!(consumer = %self.name, from = ?current.0, to = ?state, "consumer state");
            *current = (state, wfm_protocol::now_ms());
        }
    }

    pub fn set_assigned(&self, assigned: Vec<(String, i32)>) {
        *lock(&self.assigned) = assigned;
    }

    pub fn record_error(&self, error: impl ToString) {
        *lock(&self.last_error) = Some(error.to_string());
    }

    pub fn snapshot(&self) -> ConsumerSnapshot {
        let (state, state_since) = *lock(&self.state);
        ConsumerSnapshot {
            name: self.name.clone(),
            group: self.group.clone(),
            topics: self.topics.clone(),
            state,
            state_since,
            assigned: lock(&self.assigned).clone(),
            last_error: lock(&self.last_error).clone(),
            counters: self.counters.snapshot(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not take inspection down with it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every consumer of this process, by name.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    consumers: Arc<DashMap<String, Arc<ConsumerStatus>>>,
}

impl Registry {
    pub fn register(&self, status: ConsumerStatus) -> Arc<ConsumerStatus> {
        let status = Arc::new(status);
        self.consumers.insert(status.name.clone(), status.clone());
        status
    }

    pub fn get(&self, name: &str) -> Option<Arc<ConsumerStatus>> {
        self.consumers.get(name).map(|c| c.clone())
    }

    pub fn snapshots(&self) -> Vec<ConsumerSnapshot> {
        let mut all: Vec<_> = self.consumers.iter().map(|c| c.snapshot()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Prometheus text for every consumer: one-hot state gauge and counters.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let snapshots = self.snapshots();
        out.push_str("# TYPE wfm_consumer_state gauge\n");
        for s in &snapshots {
            for state in ConsumerState::ALL {
                let _ = writeln!(
                    out,
                    "wfm_consumer_state{{consumer=\"{}\",state=\"{}\"}} {}",
                    s.name,
                    state.label(),
                    u8::from(s.state == state)
                );
            }
        }
        out.push_str("# TYPE wfm_consumer_records_total counter\n");
        for s in &snapshots {
            let c = &s.counters;
            for (outcome, value) in [
                ("received", c.received),
                ("handled", c.handled),
                ("dead_lettered", c.dead_lettered),
                ("expired", c.expired),
                ("retried", c.retried),
                ("committed", c.committed),
            ] {
                let _ = writeln!(
                    out,
                    "wfm_consumer_records_total{{consumer=\"{}\",outcome=\"{outcome}\"}} {value}",
                    s.name
                );
            }
            let _ = writeln!(
                out,
                "wfm_consumer_resets_total{{consumer=\"{}\"}} {}",
                s.name, c.resets
            );
        }
        out
    }
}
