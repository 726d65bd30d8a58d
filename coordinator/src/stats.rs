//! What the coordinator holds and has done, for `/v2/inspect` and Prometheus.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Shared between the handler, which updates it, and whoever inspects it.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    partitions: Mutex<BTreeMap<i32, PartitionStats>>,
    registered: AtomicU64,
    fired: AtomicU64,
    cancelled: AtomicU64,
    late: AtomicU64,
    restored: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartitionStats {
    pub armed: usize,
    /// Milliseconds since the Unix epoch.
    pub next_deadline: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Only the partitions this instance owns.
    pub partitions: BTreeMap<i32, PartitionStats>,
    pub armed: usize,
    pub next_deadline: Option<i64>,
    pub registered: u64,
    pub fired: u64,
    pub cancelled: u64,
    /// Fired more than `late_after_ms` after their deadline (restored overdue ones included).
    pub late: u64,
    /// Callbacks rebuilt from the changelog on partition assignment.
    pub restored: u64,
}

/// A counter of [`Stats`].
#[derive(Debug, Clone, Copy)]
pub enum Event {
    Registered,
    Fired,
    Cancelled,
    Late,
    Restored,
}

impl Stats {
    pub fn count(&self, event: Event, n: u64) {
        let counter = match event {
            Event::Registered => &self.inner.registered,
            Event::Fired => &self.inner.fired,
            Event::Cancelled => &self.inner.cancelled,
            Event::Late => &self.inner.late,
            Event::Restored => &self.inner.restored,
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_partition(&self, partition: i32, stats: PartitionStats) {
        lock(&self.inner.partitions).insert(partition, stats);
    }

    pub fn forget_partition(&self, partition: i32) {
        lock(&self.inner.partitions).remove(&partition);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let partitions = lock(&self.inner.partitions).clone();
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            armed: partitions.values().map(|p| p.armed).sum(),
            next_deadline: partitions.values().filter_map(|p| p.next_deadline).min(),
            partitions,
            registered: read(&self.inner.registered),
            fired: read(&self.inner.fired),
            cancelled: read(&self.inner.cancelled),
            late: read(&self.inner.late),
            restored: read(&self.inner.restored),
        }
    }

    /// Prometheus text exposition of [`Stats::snapshot`].
    pub fn render_prometheus(&self) -> String {
        let s = self.snapshot();
        let mut out = String::from("# TYPE wfm_coordinator_armed_callbacks gauge\n");
        for (partition, p) in &s.partitions {
            let _ = writeln!(
                out,
                "wfm_coordinator_armed_callbacks{{partition=\"{partition}\"}} {}",
                p.armed
            );
        }
        out.push_str("# TYPE wfm_coordinator_next_deadline_ms gauge\n");
        for (partition, p) in &s.partitions {
            if let Some(deadline) = p.next_deadline {
                let _ = writeln!(
                    out,
                    "wfm_coordinator_next_deadline_ms{{partition=\"{partition}\"}} {deadline}"
                );
            }
        }
        out.push_str("# TYPE wfm_coordinator_callbacks_total counter\n");
        for (event, value) in [
            ("registered", s.registered),
            ("fired", s.fired),
            ("cancelled", s.cancelled),
            ("late", s.late),
            ("restored", s.restored),
        ] {
            let _ = writeln!(
                out,
                "wfm_coordinator_callbacks_total{{event=\"{event}\"}} {value}"
            );
        }
        out
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not take inspection down with it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sums_partitions_and_renders() {
        let stats = Stats::default();
        stats.set_partition(
            0,
            PartitionStats {
                armed: 2,
                next_deadline: Some(50),
            },
        );
        stats.set_partition(
            3,
            PartitionStats {
                armed: 1,
                next_deadline: Some(20),
            },
        );
        stats.count(Event::Fired, 4);
        stats.count(Event::Late, 1);
        let s = stats.snapshot();
        assert_eq!(
            (s.armed, s.next_deadline, s.fired, s.late),
            (3, Some(20), 4, 1)
        );
        let text = stats.render_prometheus();
        assert!(text.contains("wfm_coordinator_armed_callbacks{partition=\"3\"} 1"));
        assert!(text.contains("wfm_coordinator_callbacks_total{event=\"fired\"} 4"));
        stats.forget_partition(0);
        assert_eq!(stats.snapshot().armed, 1);
    }
}
