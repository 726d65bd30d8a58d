//! Counters of the speaker worker, shared between its consumer and whoever
//! inspects it, and a serializable snapshot of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[derive(Debug, Default)]
struct Counters {
    jobs_started: AtomicU64,
    jobs_completed: AtomicU64,
    jobs_failed: AtomicU64,
    duplicate_jobs: AtomicU64,
    commands_sent: AtomicU64,
    commands_retried: AtomicU64,
    commands_timed_out: AtomicU64,
    operations_failed: AtomicU64,
    stale_replies_ignored: AtomicU64,
    stale_timeouts_ignored: AtomicU64,
    job_latency_ms_sum: AtomicU64,
    job_latency_ms_max: AtomicU64,
}

/// Live counters; clones share them.
#[derive(Debug, Clone, Default)]
pub struct SpeakerStats(Arc<Counters>);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeakerStatsSnapshot {
    pub jobs_started: u64,
    pub jobs_completed: u64,
    /// Completed jobs with at least one failed operation.
    pub jobs_failed: u64,
    /// Deliveries of a job already known, answered without resending anything.
    pub duplicate_jobs: u64,
    /// Every command produced, retries and resends included.
    pub commands_sent: u64,
    pub commands_retried: u64,
    pub commands_timed_out: u64,
    /// Operations reported failed to the hub.
    pub operations_failed: u64,
    /// Replies that named no attempt in flight: late, duplicated or for a finished job.
    pub stale_replies_ignored: u64,
    pub stale_timeouts_ignored: u64,
    /// From the worker taking a job to its completion, over completed jobs.
    pub job_latency_ms_sum: u64,
    pub job_latency_ms_max: u64,
}

impl SpeakerStatsSnapshot {
    pub fn job_latency_ms_mean(&self) -> Option<f64> {
        (self.jobs_completed > 0)
            .then(|| self.job_latency_ms_sum as f64 / self.jobs_completed as f64)
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl SpeakerStats {
    pub fn job_started(&self) {
        bump(&self.0.jobs_started);
    }

    pub fn duplicate_job(&self) {
        bump(&self.0.duplicate_jobs);
    }

    pub fn command_sent(&self, attempt: u32) {
        bump(&self.0.commands_sent);
        if attempt > 1 {
            bump(&self.0.commands_retried);
        }
    }

    pub fn command_timed_out(&self) {
        bump(&self.0.commands_timed_out);
    }

    pub fn stale_reply(&self) {
        bump(&self.0.stale_replies_ignored);
    }

    pub fn stale_timeout(&self) {
        bump(&self.0.stale_timeouts_ignored);
    }

    pub fn job_completed(&self, failed_operations: u64, latency_ms: u64) {
        bump(&self.0.jobs_completed);
        if failed_operations > 0 {
            bump(&self.0.jobs_failed);
        }
        self.0
            .operations_failed
            .fetch_add(failed_operations, Ordering::Relaxed);
        self.0
            .job_latency_ms_sum
            .fetch_add(latency_ms, Ordering::Relaxed);
        self.0
            .job_latency_ms_max
            .fetch_max(latency_ms, Ordering::Relaxed);
    }

    /// Prometheus text: one `wfm_speaker_<counter>` line per counter.
    pub fn render_prometheus(&self) -> String {
        let snapshot = serde_json::to_value(self.snapshot()).unwrap_or_default();
        let mut out = String::new();
        for (name, value) in snapshot.as_object().into_iter().flatten() {
            if let Some(value) = value.as_u64() {
                out.push_str(&format!(
                    "# TYPE wfm_speaker_{name} counter\nwfm_speaker_{name} {value}\n"
                ));
            }
        }
        out
    }

    pub fn snapshot(&self) -> SpeakerStatsSnapshot {
        let c = &self.0;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SpeakerStatsSnapshot {
            jobs_started: get(&c.jobs_started),
            jobs_completed: get(&c.jobs_completed),
            jobs_failed: get(&c.jobs_failed),
            duplicate_jobs: get(&c.duplicate_jobs),
            commands_sent: get(&c.commands_sent),
            commands_retried: get(&c.commands_retried),
            commands_timed_out: get(&c.commands_timed_out),
            operations_failed: get(&c.operations_failed),
            stale_replies_ignored: get(&c.stale_replies_ignored),
            stale_timeouts_ignored: get(&c.stale_timeouts_ignored),
            job_latency_ms_sum: get(&c.job_latency_ms_sum),
            job_latency_ms_max: get(&c.job_latency_ms_max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_counts_and_serializes() {
        let stats = SpeakerStats::default();
        stats.command_sent(1);
        stats.command_sent(2);
        stats.job_completed(1, 40);
        stats.job_completed(0, 20);
        let snapshot = stats.clone().snapshot();
        assert_eq!((snapshot.commands_sent, snapshot.commands_retried), (2, 1));
        assert_eq!((snapshot.jobs_completed, snapshot.jobs_failed), (2, 1));
        assert_eq!(snapshot.job_latency_ms_max, 40);
        assert_eq!(snapshot.job_latency_ms_mean(), Some(30.0));
        let json = serde_json::to_value(&snapshot).unwrap();
        assert_eq!(json["operations_failed"], 1);
    }
}
