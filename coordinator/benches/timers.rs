//! 1,000,000 outstanding callbacks in one timer store: memory per callback,
//! arm and re-arm throughput, and firing lateness (how long after its
//! deadline each callback is popped by a loop that sleeps until the next
//! deadline, as the coordinator's wakeup does).
//!
//! `cargo bench -p wfm-coordinator --bench timers` (set `CALLBACKS` for another count).
//! Kafka is not involved: production latency of the timeout comes on top.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wfm_coordinator::timers::{Callback, TimerStore};
use wfm_protocol::Topic;

/// Live heap bytes, so that the store's footprint is measured, not estimated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// Sizes like the hub's: a flow id plus step as key, the flow id as reply key.
fn callback(i: usize, deadline: i64) -> Callback {
    Callback {
        key: format!("flow-{i:08}-0000-7000-8000-000000000000:install:1"),
        deadline,
        reply_topic: Topic::Hub,
        reply_key: format!("flow-{i:08}-0000-7000-8000-000000000000"),
        correlation_id: format!("{i:032x}"),
        context: format!(
            r#"{{"step":"install","attempt":1,"switch":"sw-{}"}}"#,
            i % 1000
        ),
        in_changelog: true,
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let n: usize = std::env::var("CALLBACKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // Deadlines spread over this window, starting after arming is done.
    let spread_ms = 10_000i64;
    // Long enough for arming and re-arming to finish before the first deadline.
    let lead_ms: i64 = std::env::var("LEAD_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15_000);

    let callbacks: Vec<Callback> = (0..n).map(|i| callback(i, 0)).collect();
    let payload: usize = callbacks
        .iter()
        .map(|c| c.key.len() + c.reply_key.len() + c.correlation_id.len() + c.context.len())
        .sum();

    let before = LIVE.load(Ordering::Relaxed);
    let start_ms = now_us() / 1000 + lead_ms;
    let started = Instant::now();
    let mut store = TimerStore::default();
    for (i, c) in callbacks.iter().enumerate() {
        let deadline = start_ms + (i as i64 * 7919) % spread_ms;
        store.arm(&Callback {
            deadline,
            ..c.clone()
        });
    }
    let arm_time = started.elapsed();
    let bytes = LIVE.load(Ordering::Relaxed) - before;

    // Re-arm a tenth with a later deadline: replacement must not grow the store.
    let started = Instant::now();
    for (i, c) in callbacks.iter().enumerate().step_by(10) {
        let deadline = start_ms + (i as i64 * 7919) % spread_ms + 100;
        store.arm(&Callback {
            deadline,
            ..c.clone()
        });
    }
    let rearm_time = started.elapsed();
    drop(callbacks);

    println!("callbacks: {n}");
    println!(
        "memory: {:.1} bytes per callback ({:.1} of them the callback's own strings)",
        bytes as f64 / n as f64,
        payload as f64 / n as f64
    );
    println!(
        "arm: {:.0} ns per callback; re-arm: {:.0} ns per callback",
        arm_time.as_nanos() as f64 / n as f64,
        rearm_time.as_nanos() as f64 / (n / 10) as f64
    );

    let mut lateness_us = Vec::with_capacity(n);
    while let Some(next) = store.next_deadline() {
        let wait_us = next * 1000 - now_us();
        if wait_us > 0 {
            std::thread::sleep(Duration::from_micros(wait_us as u64));
        }
        let now = now_us();
        while let Some(c) = store.pop_due(now / 1000) {
            lateness_us.push(now - c.deadline * 1000);
        }
    }
    lateness_us.sort_unstable();
    println!(
        "firing lateness: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} fired, {} per second)",
        percentile(&lateness_us, 0.50) as f64 / 1000.0,
        percentile(&lateness_us, 0.99) as f64 / 1000.0,
        *lateness_us.last().unwrap_or(&0) as f64 / 1000.0,
        lateness_us.len(),
        n as i64 * 1000 / spread_ms
    );
}
