//! Request counts and latency histograms by route and status, rendered as
//! Prometheus text. Kept local (no global recorder) so that several servers
//! in one process, as in tests, never share or fight over counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BUCKETS_S: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Series {
    count: u64,
    sum_s: f64,
    /// Per bucket, not cumulative; summed when rendered.
    buckets: [u64; BUCKETS_S.len()],
}

/// (method, route template, status).
type SeriesKey = (String, String, u16);

#[derive(Debug, Clone, Default)]
pub struct HttpMetrics {
    series: Arc<Mutex<BTreeMap<SeriesKey, Series>>>,
}

impl HttpMetrics {
    pub fn observe(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let entry = series
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default();
        entry.count += 1;
        entry.sum_s += seconds;
        if let Some(bucket) = BUCKETS_S.iter().position(|&b| seconds <= b) {
            entry.buckets[bucket] += 1;
        }
    }

    pub fn render(&self, in_flight: usize, pending: usize) -> String {
        let series = self
            .series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out = String::new();
        out.push_str("# TYPE wfm_http_requests_total counter\n");
        for ((method, route, status), s) in &series {
            let _ = writeln!(
                out,
                "wfm_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {}",
                s.count
            );
        }
        out.push_str("# TYPE wfm_http_request_duration_seconds histogram\n");
        for ((method, route, status), s) in &series {
            let labels = format!("method=\"{method}\",route=\"{route}\",status=\"{status}\"");
            let mut cumulative = 0;
            for (bound, n) in BUCKETS_S.iter().zip(s.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "wfm_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "wfm_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "wfm_http_request_duration_seconds_sum{{{labels}}} {}",
                s.sum_s
            );
            let _ = writeln!(
                out,
                "wfm_http_request_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
        let _ = writeln!(
            out,
            "# TYPE wfm_http_requests_in_flight gauge\nwfm_http_requests_in_flight {in_flight}"
        );
        let _ = writeln!(
            out,
            "# TYPE wfm_northbound_pending gauge\nwfm_northbound_pending {pending}"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = HttpMetrics::default();
        metrics.observe("GET", "/v2/flows", 200, Duration::from_millis(3));
        metrics.observe("GET", "/v2/flows", 200, Duration::from_secs(20));
        let text = metrics.render(1, 0);
        assert!(text.contains(
            "wfm_http_requests_total{method=\"GET\",route=\"/v2/flows\",status=\"200\"} 2"
        ));
        assert!(text.contains("status=\"200\",le=\"0.005\"} 1"));
        assert!(text.contains("status=\"200\",le=\"10\"} 1"));
        assert!(text.contains("status=\"200\",le=\"+Inf\"} 2"));
        assert!(text.contains("wfm_http_requests_in_flight 1"));
    }
}
