//! The hub end to end: every component a separate process on a real broker,
//! the simulator standing in for the switches.

use std::time::Duration;

use wfm_protocol::flow::FlowStatus;
use wfm_protocol::history::{verify_chain, ChainError, HistoryMessage};
use wfm_protocol::northbound::{NorthboundReply, RequestErrorKind};
use wfm_protocol::Topic;
use wfm_runtime::producer::{Outgoing, Producer};

use crate::harness::{read_topic, Record};
use crate::system::{endpoint, flow, System};

const OUTCOME: Duration = Duration::from_secs(60);

fn finished_flow_status(reply: &NorthboundReply) -> Option<FlowStatus> {
    match reply {
        NorthboundReply::RequestFinished { flow, .. } => flow.as_ref().map(|f| f.status),
        _ => None,
    }
}

async fn rules_of(system: &System, flow_id: &str) -> Vec<(String, u64)> {
    let mut rules: Vec<_> = system
        .installed_rules()
        .await
        .into_iter()
        .filter(|(_, flow, _)| flow == flow_id)
        .map(|(switch, _, cookie)| (switch, cookie))
        .collect();
    rules.sort();
    rules
}

/// True when the resource manager's changelog holds nothing for the flow.
async fn resources_free(system: &System, flow_id: &str) -> bool {
    let kafka = &system.broker.kafka;
    let state = wfm_runtime::changelog::latest_by_key(
        kafka,
        &kafka.topics().name(Topic::ResourcesState),
        &[0],
    )
    .await
    .expect("resources changelog readable");
    !state.iter().any(|(key, value)| {
        key.contains(flow_id) || String::from_utf8_lossy(value).contains(&format!("\"{flow_id}\""))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_switch_flow_is_created_up_and_deleted_clean() {
    let system = System::start().await;
    let spec = flow("multi", endpoint(1, 1, 100), endpoint(3, 2, 0), 10_000);
    let request = system.client.create(&spec).await;

    let accepted = system
        .client
        .wait_for(&request, OUTCOME, |r| {
            matches!(r, NorthboundReply::RequestAccepted { .. })
        })
        .await
        .expect("accepted");
    let NorthboundReply::RequestAccepted {
        flow: accepted_flow,
        ..
    } = accepted
    else {
        unreachable!()
    };
    assert_eq!(accepted_flow.status, FlowStatus::InProgress);
    let path = accepted_flow.path.clone().expect("path allocated");
    assert!(
        path.forward.len() >= 2,
        "switch 1 to 3 needs a transit switch: {path:?}"
    );

    let outcome = system
        .client
        .outcome(&request, OUTCOME)
        .await
        .expect("create finished");
    assert_eq!(
        finished_flow_status(&outcome),
        Some(FlowStatus::Up),
        "{outcome:?}"
    );
    assert_eq!(system.flows().await["multi"].status, FlowStatus::Up);
    // Ingress and egress per direction, plus a transit rule per direction per intermediate switch.
    let expected = 2 * (path.forward.len() + 1);
    assert_eq!(rules_of(&system, "multi").await.len(), expected);
    assert!(!resources_free(&system, "multi").await);

    let events = system.history("multi").await;
    assert!(
        events.len() >= 6,
        "a transition per state: {}",
        events.len()
    );
    assert_eq!(verify_chain(&events), Ok(()));
    let mut tampered = events.clone();
    tampered[2].details = "nothing to see here".into();
    assert!(matches!(
        verify_chain(&tampered),
        Err(ChainError::Tampered { .. })
    ));

    let delete = system.client.delete("multi").await;
    let outcome = system
        .client
        .outcome(&delete, OUTCOME)
        .await
        .expect("delete finished");
    assert!(
        matches!(
            outcome,
            NorthboundReply::RequestFinished {
                succeeded: true,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(
        rules_of(&system, "multi").await.is_empty(),
        "no rule left behind"
    );
    assert!(!system.flows().await.contains_key("multi"));
    assert!(resources_free(&system, "multi").await);
    // The chain goes on across requests and still verifies.
    assert_eq!(verify_chain(&system.history("multi").await), Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_switch_flow_is_created_and_deleted() {
    let system = System::start().await;
    let spec = flow("single", endpoint(2, 1, 10), endpoint(2, 2, 20), 1_000);
    let request = system.client.create(&spec).await;
    let outcome = system
        .client
        .outcome(&request, OUTCOME)
        .await
        .expect("finished");
    assert_eq!(
        finished_flow_status(&outcome),
        Some(FlowStatus::Up),
        "{outcome:?}"
    );
    let rules = rules_of(&system, "single").await;
    assert_eq!(rules.len(), 2);
    assert!(rules
        .iter()
        .all(|(switch, _)| *switch == wfm_protocol::topology::switch_id(2)));

    let delete = system.client.delete("single").await;
    system
        .client
        .outcome(&delete, OUTCOME)
        .await
        .expect("deleted");
    assert!(rules_of(&system, "single").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_installs_roll_back_to_down_with_nothing_left() {
    let system = System::start().await;
    system
        .put_faults(serde_json::json!({
            "error_rate_by_command": { "install_rule": 1.0 },
            "error_code": "BAD_COMMAND"
        }))
        .await;
    let spec = flow("doomed", endpoint(1, 1, 0), endpoint(4, 1, 0), 1_000);
    let request = system.client.create(&spec).await;
    let outcome = system
        .client
        .outcome(&request, OUTCOME)
        .await
        .expect("finished");
    assert_eq!(
        finished_flow_status(&outcome),
        Some(FlowStatus::Down),
        "{outcome:?}"
    );
    let NorthboundReply::RequestFinished { message, .. } = &outcome else {
        unreachable!()
    };
    assert!(message.contains("BAD_COMMAND"), "{message}");
    assert_eq!(system.flows().await["doomed"].status, FlowStatus::Down);
    assert!(rules_of(&system, "doomed").await.is_empty());
    assert!(resources_free(&system, "doomed").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_switches_time_out_and_the_request_still_ends() {
    let system = System::start().await;
    system
        .put_faults(serde_json::json!({ "silence_rate": 1.0 }))
        .await;
    let spec = flow("unheard", endpoint(1, 1, 0), endpoint(3, 1, 0), 1_000);
    let request = system.client.create(&spec).await;
    let outcome = system
        .client
        .outcome(&request, Duration::from_secs(90))
        .await
        .expect("terminal state reached");
    assert!(
        matches!(
            outcome,
            NorthboundReply::RequestFinished {
                succeeded: false,
                ..
            }
        ),
        "{outcome:?}"
    );
    let status = system.flows().await["unheard"].status;
    assert!(
        matches!(status, FlowStatus::Down | FlowStatus::Failed),
        "{status:?}"
    );
    assert!(rules_of(&system, "unheard").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_operation_per_flow_and_no_duplicate_flows() {
    let system = System::start().await;
    let spec = flow("busy", endpoint(1, 1, 0), endpoint(2, 1, 0), 1_000);
    let first = system.client.create(&spec).await;
    let second = system.client.create(&spec).await;
    let rejected = system
        .client
        .outcome(&second, OUTCOME)
        .await
        .expect("second answered");
    assert!(
        matches!(&rejected, NorthboundReply::RequestRejected { error, .. } if error.kind == RequestErrorKind::Conflict),
        "{rejected:?}"
    );
    let outcome = system
        .client
        .outcome(&first, OUTCOME)
        .await
        .expect("first finished");
    assert_eq!(finished_flow_status(&outcome), Some(FlowStatus::Up));

    let again = system.client.create(&spec).await;
    let rejected = system
        .client
        .outcome(&again, OUTCOME)
        .await
        .expect("answered");
    assert!(
        matches!(&rejected, NorthboundReply::RequestRejected { error, .. } if error.kind == RequestErrorKind::Conflict && error.message.contains("exists")),
        "{rejected:?}"
    );
    let unknown = system.client.delete("never-created").await;
    let rejected = system
        .client
        .outcome(&unknown, OUTCOME)
        .await
        .expect("answered");
    assert!(
        matches!(&rejected, NorthboundReply::RequestRejected { error, .. } if error.kind == RequestErrorKind::NotFound)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hub_resumes_every_request_to_a_terminal_state() {
    let mut system = System::start().await;
    let specs: Vec<_> = (0..12)
        .map(|i| {
            flow(
                &format!("crash-{i}"),
                endpoint(1 + i % 6, 1 + (i / 6) as u32, 0),
                endpoint(1 + (i + 2) % 6, 3 + (i / 6) as u32, 0),
                1_000,
            )
        })
        .collect();
    let mut requests = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        requests.push(system.client.create(spec).await);
        // Kill the hub at different points of the requests' lives.
        if i == 5 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            system.kill("hub").await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            system.start_component("hub").await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    system.kill("hub").await;
    system.start_component("hub").await;

    for request in &requests {
        // A request can also be turned down (e.g. its allocation timed out
        // while the hub was away) before it finishes its rollback.
        let outcome = system
            .client
            .wait_for(request, Duration::from_secs(90), |r| {
                matches!(r, NorthboundReply::RequestFinished { .. })
            })
            .await;
        assert!(
            matches!(outcome, Some(NorthboundReply::RequestFinished { .. })),
            "{request}: {outcome:?}"
        );
    }
    let flows = system.flows().await;
    let rules = system.installed_rules().await;
    for spec in &specs {
        let count = rules
            .iter()
            .filter(|(_, flow, _)| *flow == spec.flow_id)
            .count();
        // No record: the request ended before anything was allocated.
        let Some(record) = flows.get(&spec.flow_id) else {
            assert_eq!(count, 0, "{} has rules but no record", spec.flow_id);
            continue;
        };
        match record.status {
            FlowStatus::Up => {
                let hops = record.path.as_ref().map(|p| p.forward.len()).unwrap_or(0);
                let expected = if hops == 0 { 2 } else { 2 * (hops + 1) };
                assert_eq!(count, expected, "{} is UP with its rules", spec.flow_id);
            }
            other => {
                assert_ne!(other, FlowStatus::InProgress, "{} stuck", spec.flow_id);
                assert_eq!(count, 0, "{} is {other:?} with rules left", spec.flow_id);
            }
        }
        assert_eq!(
            verify_chain(&system.history(&spec.flow_id).await),
            Ok(()),
            "{}",
            spec.flow_id
        );
    }
    assert!(
        rules.iter().all(|(_, flow, _)| flows.contains_key(flow)),
        "no rule without a flow"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_of_a_real_create_shows_its_hops_in_order() {
    let system = System::start().await;
    let spec = flow("traced", endpoint(1, 4, 0), endpoint(3, 4, 0), 1_000);
    let request = system.client.create(&spec).await;
    let outcome = system.client.outcome(&request, OUTCOME).await;
    assert!(matches!(
        outcome,
        Some(NorthboundReply::RequestFinished {
            succeeded: true,
            ..
        })
    ));

    let kafka = &system.broker.kafka;
    let output = tokio::process::Command::new(crate::harness::WFM)
        .args(["trace", &request, "--json"])
        .env("WFM_KAFKA_BROKERS", &kafka.brokers)
        .env("WFM_LOG", "warn")
        .output()
        .await
        .expect("wfm trace runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let trace: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON trace");
    let hops = trace["hops"].as_array().expect("hops");
    let messages: Vec<(String, String)> = hops
        .iter()
        .filter(|hop| hop["history"] == false)
        .map(|hop| {
            let envelope = &hop["envelope"];
            (
                envelope["source"].as_str().unwrap_or_default().to_owned(),
                envelope["kind"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    // The create's critical path, in order: every job goes hub → speaker →
    // switch → speaker → hub.
    let mut expected = vec![
        ("test", "create_flow"),
        ("hub", "allocate"),
        ("resources", "allocated"),
    ];
    for command in ["install_rule", "verify_rule", "install_rule", "verify_rule"] {
        expected.extend([
            ("hub", "run_job"),
            ("speaker", command),
            ("simulator", "switch_reply"),
            ("speaker", "job_completed"),
        ]);
    }
    expected.push(("hub", "request_finished"));
    let mut rest = messages.iter();
    for (source, kind) in &expected {
        assert!(
            rest.any(|(s, k)| s == source && k == kind),
            "{source}/{kind} missing or out of order in {messages:?}"
        );
    }
    let hop_ms: Vec<i64> = hops
        .iter()
        .map(|h| h["hop_ms"].as_i64().unwrap_or(-1))
        .collect();
    assert!(
        hop_ms.iter().all(|ms| *ms >= 0),
        "hop latencies: {hop_ms:?}"
    );
    assert!(
        hops.iter().any(|h| h["history"] == true),
        "FSM transitions are in the trace"
    );
}

/// A crash can leave part of one record's outputs durable and the rest not:
/// the hub's changelog says the request finished, but the reply or the last
/// history event never made it. The record is not committed then, so the next
/// owner of the partition gets it again; seeing a record of a finished
/// request, it must send the request's final outputs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_record_of_a_finished_request_resends_its_final_outputs() {
    let system = System::start().await;
    let spec = flow("redelivered", endpoint(2, 1, 30), endpoint(2, 2, 40), 1_000);
    let request = system.client.create(&spec).await;
    system
        .client
        .outcome(&request, OUTCOME)
        .await
        .expect("finished");
    let kafka = &system.broker.kafka;
    let inbox = system.broker.topic(Topic::Hub);
    let records = read_topic(kafka, &inbox, Duration::from_secs(3), |_| false).await;
    let finishing = records
        .iter()
        .rfind(|r| r.key.as_deref() == Some("redelivered"))
        .expect("the flow's records on the hub's inbox");
    let history = system.history("redelivered").await;
    let last_event = history.last().expect("history").clone();

    let replay = Outgoing {
        topic: inbox.clone(),
        key: "redelivered".into(),
        partition: Some(finishing.partition),
        value: finishing.value.clone(),
    };
    Producer::new(kafka)
        .expect("producer")
        .send(&replay)
        .await
        .expect("replayed");

    let final_replies = |records: &[Record]| {
        records
            .iter()
            .filter_map(|r| r.envelope()?.open::<NorthboundReply>().ok())
            .filter(|reply| {
                matches!(reply, NorthboundReply::RequestFinished { request_id, .. } if *request_id == request)
            })
            .count()
    };
    let replies = read_topic(
        kafka,
        &system.broker.topic(Topic::Northbound),
        Duration::from_secs(20),
        |records| final_replies(records) >= 2,
    )
    .await;
    assert_eq!(final_replies(&replies), 2, "the final reply is sent again");
    let resent = read_topic(
        kafka,
        &system.broker.topic(Topic::History),
        Duration::from_secs(5),
        |_| false,
    )
    .await
    .iter()
    .filter_map(|r| r.envelope()?.open::<HistoryMessage>().ok())
    .filter(|HistoryMessage::HistoryEvent(event)| *event == last_event)
    .count();
    assert_eq!(resent, 2, "the last history event is sent again, as it was");
    assert_eq!(system.history("redelivered").await, history);
    assert_eq!(
        system.flows().await["redelivered"].status,
        FlowStatus::Up,
        "the flow record is unchanged"
    );
}
