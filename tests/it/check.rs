//! The invariant checker against a real system: it reads every source it
//! judges (flows, allocations, switch tables, history), and what is broken
//! behind the system's back it reports, `wfm check` with a non-zero exit.

use std::time::Duration;

use serde_json::Value;
use wfm_check::{Options, Report, Sources, Violation};
use wfm_protocol::flow::FlowStatus;
use wfm_protocol::history::HistoryMessage;
use wfm_protocol::northbound::NorthboundReply;
use wfm_protocol::{Envelope, Topic};
use wfm_runtime::producer::{Outgoing, Producer};

use crate::harness::{read_topic, wfm_command, Record};
use crate::system::{endpoint, flow, System};

const OUTCOME: Duration = Duration::from_secs(60);

async fn create_up(system: &System, flow_id: &str, vlan: u16) {
    let spec = flow(flow_id, endpoint(1, 1, vlan), endpoint(3, 2, vlan), 1_000);
    let request = system.client.create(&spec).await;
    let outcome = system
        .client
        .outcome(&request, OUTCOME)
        .await
        .expect("create finished");
    let NorthboundReply::RequestFinished {
        flow: Some(flow), ..
    } = &outcome
    else {
        panic!("{flow_id} finished with its flow: {outcome:?}");
    };
    assert_eq!(flow.status, FlowStatus::Up, "{outcome:?}");
}

/// Nothing is in flight in this test: any flow IN_PROGRESS would be stuck.
async fn check_library(system: &System) -> Report {
    let sources = Sources {
        kafka: &system.broker.kafka,
        simulator_url: &system.simulator_url,
    };
    let snapshot = wfm_check::collect(&sources).await.expect("system readable");
    wfm_check::check(&snapshot, &Options { stuck_after_ms: 0 })
}

/// `wfm check --json`: whether it exited successfully, and its report.
async fn check_command(system: &System) -> (bool, Value) {
    let mut check = wfm_command(Some(&system.broker.kafka));
    check
        .args(["check", "--json", "--stuck-after-ms", "0"])
        .args(["--simulator-url", &system.simulator_url])
        .env("WFM_LOG", "warn");
    let output = tokio::time::timeout(Duration::from_secs(120), check.output())
        .await
        .expect("check ends")
        .expect("check runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "a JSON report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.success(), report)
}

/// The latest record of `key` on `topic`.
async fn latest(system: &System, topic: Topic, key: &str) -> Record {
    let records = read_topic(
        &system.broker.kafka,
        &system.broker.topic(topic),
        Duration::from_secs(3),
        |_| false,
    )
    .await;
    records
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(key))
        .max_by_key(|r| r.offset)
        .unwrap_or_else(|| panic!("a record of {key} on {topic:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reads_every_source_and_reports_what_was_broken_behind_the_systems_back() {
    let system = System::start().await;
    create_up(&system, "kept", 100).await;
    create_up(&system, "dropped", 101).await;
    let rules = system.installed_rules().await;
    let rules_of_dropped = rules
        .iter()
        .filter(|(_, flow_id, _)| flow_id == "dropped")
        .count();
    assert!(rules_of_dropped >= 4, "a multi-switch flow has rules");

    let report = check_library(&system).await;
    assert!(report.is_clean(), "{:#?}", report.violations);
    assert_eq!(report.flows, 2, "both flows read");
    assert_eq!(report.flows_by_status.get("UP"), Some(&2));
    assert_eq!(report.allocations, 2, "both allocations read");
    assert_eq!(report.rules, rules.len(), "every rule read");
    assert!(report.history_events >= 2 * 5, "both histories read");
    let (succeeded, json) = check_command(&system).await;
    assert!(succeeded, "a clean system passes: {json}");
    assert_eq!(json["violations"], Value::Array(Vec::new()));

    // What a bug could do: a flow record lost while its rules and resources
    // stay, and a history event that does not follow its predecessor.
    let kafka = &system.broker.kafka;
    let producer = Producer::new(kafka).expect("producer");
    let dropped = latest(&system, Topic::Flows, "dropped").await;
    producer
        .send(
            &Outgoing::tombstone(system.broker.topic(Topic::Flows), "dropped")
                .to_partition(dropped.partition),
        )
        .await
        .expect("tombstone written");
    let last = latest(&system, Topic::History, "kept").await;
    let envelope = last.envelope().expect("an envelope");
    let HistoryMessage::HistoryEvent(mut forged) = envelope.open().expect("a history event");
    forged.seq += 1;
    forged.prev_hash = "0".repeat(64);
    forged.action = "forged".into();
    let forged = Envelope::new(
        &HistoryMessage::HistoryEvent(forged),
        "test",
        &envelope.correlation_id,
    )
    .expect("encodable");
    producer
        .send(
            &Outgoing::envelope(system.broker.topic(Topic::History), "kept", &forged)
                .to_partition(last.partition),
        )
        .await
        .expect("forged event written");

    let report = check_library(&system).await;
    let orphans = report
        .violations
        .iter()
        .filter(|v| matches!(v, Violation::OrphanRule { flow_id, .. } if flow_id == "dropped"))
        .count();
    assert_eq!(orphans, rules_of_dropped, "{:#?}", report.violations);
    assert!(
        report.violations.contains(&Violation::LeakedAllocation {
            flow_id: "dropped".into(),
            status: None
        }),
        "{:#?}",
        report.violations
    );
    let broken: Vec<&Violation> = report
        .violations
        .iter()
        .filter(|v| matches!(v, Violation::BrokenHistory { .. }))
        .collect();
    assert!(
        matches!(broken[..], [Violation::BrokenHistory { flow_id, .. }] if flow_id == "kept"),
        "{:#?}",
        report.violations
    );
    assert_eq!(
        report.violations.len(),
        rules_of_dropped + 2,
        "nothing else is wrong: {:#?}",
        report.violations
    );

    let (succeeded, json) = check_command(&system).await;
    assert!(!succeeded, "violations make `wfm check` fail: {json}");
    let kinds: Vec<&str> = json["violations"]
        .as_array()
        .expect("a list of violations")
        .iter()
        .filter_map(|v| v["violation"].as_str())
        .collect();
    assert_eq!(kinds.len(), rules_of_dropped + 2, "{json}");
    for kind in ["orphan_rule", "leaked_allocation", "broken_history"] {
        assert!(kinds.contains(&kind), "{kind} reported: {json}");
    }
}
