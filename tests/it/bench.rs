//! `wfm bench` against a running system: its report accounts for every flow
//! it drove through the REST API, and it leaves nothing behind.

use std::time::Duration;

use serde_json::Value;
use wfm_check::{Options, Sources};

use crate::harness::wfm_command;
use crate::system::System;

const FLOWS: u64 = 6;

/// Runs `wfm bench` with `args` against `system` and returns its JSON report.
async fn bench(system: &System, args: &[&str]) -> Value {
    let mut bench = wfm_command(Some(&system.broker.kafka));
    bench
        .args(["bench", "--url", &system.northbound_url])
        .args(args)
        .args(["--pings", "20", "--timeout", "60s", "--json"])
        .env("WFM_LOG", "warn");
    let output = tokio::time::timeout(Duration::from_secs(240), bench.output())
        .await
        .expect("bench ends")
        .expect("bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).expect("a JSON report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_every_flow_it_created_and_deleted() {
    let mut system = System::start().await;
    system.start_component("northbound").await;
    let kafka = &system.broker.kafka;
    let flows = FLOWS.to_string();
    let report = bench(&system, &["--flows", &flows, "--concurrency", "3"]).await;

    for phase in ["create", "delete"] {
        let phase = &report[phase];
        assert_eq!(phase["requested"], FLOWS, "{report:#}");
        assert_eq!(phase["succeeded"], FLOWS, "{report:#}");
        assert_eq!(
            (phase["failed"].as_u64(), phase["stuck"].as_u64()),
            (Some(0), Some(0))
        );
        assert!(phase["per_second"].as_f64().unwrap() > 0.0);
    }
    let floor = report["hop_floor"]["p50_ms"].as_f64().expect("a hop floor");
    let create = &report["create"]["latency"];
    let (p50, p99) = (
        create["p50_ms"].as_f64().unwrap(),
        create["p99_ms"].as_f64().unwrap(),
    );
    assert!(floor > 0.0 && p50 >= floor && p99 >= p50, "{report:#}");
    // A create is a chain of hops: it cannot beat their floor.
    let hops = report["hops_per_create"].as_f64().unwrap();
    let ratio = report["create_p50_ratio"].as_f64().expect("a ratio");
    assert!((ratio - p50 / (hops * floor)).abs() < 1e-6, "{report:#}");
    let states = report["create_state_p50_ms"]
        .as_object()
        .expect("per-state latency from history");
    for state in ["InstallingIngress", "ValidatingIngress"] {
        assert!(states.contains_key(state), "{report:#}");
    }

    assert!(
        !system
            .flows()
            .await
            .keys()
            .any(|id| id.starts_with("bench-")),
        "the bench deleted its flows"
    );
    let sources = Sources {
        kafka,
        simulator_url: &system.simulator_url,
    };
    let snapshot = wfm_check::collect(&sources).await.expect("system readable");
    let found = wfm_check::check(&snapshot, &Options { stuck_after_ms: 0 });
    assert!(found.is_clean(), "{:#?}", found.violations);
}

/// The latency the bench reports is that of a request alone in the system:
/// with `--concurrency 1` a create starts only once the previous flow is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_with_concurrency_one_runs_one_request_at_a_time() {
    let mut system = System::start().await;
    system.start_component("northbound").await;
    let report = bench(&system, &["--flows", "3", "--concurrency", "1", "--keep"]).await;
    assert_eq!(report["create"]["succeeded"], 3, "{report:#}");

    let mut ids: Vec<String> = system.flows().await.into_keys().collect();
    ids.sort_by_key(|id| id.rsplit('-').next().unwrap().parse::<u32>().unwrap());
    let mut lifetimes = Vec::new();
    for id in &ids {
        let history = system.history(id).await;
        let (first, last) = (history.first().unwrap(), history.last().unwrap());
        lifetimes.push((first.at, last.at));
    }
    for pair in lifetimes.windows(2) {
        let ((_, up), (next_start, _)) = (pair[0], pair[1]);
        assert!(
            next_start >= up,
            "a create started at {next_start} before the previous flow was up at {up}: {lifetimes:?}"
        );
    }
}
