//! The embedded broker: topics provisioned at start, durable storage that
//! survives a SIGKILL, a clear error for a topic layout that differs or an
//! address in use, and components that stop even when it is gone.

use std::time::Duration;

use wfm_protocol::{Envelope, Topic, Topics};
use wfm_runtime::{KafkaConfig, Outgoing, Producer};

use crate::harness::{free_port, read_topic, TestBroker, WfmProcess, WFM};

fn kafka_at(addr: &str) -> KafkaConfig {
    let mut kafka = KafkaConfig {
        brokers: addr.into(),
        ..KafkaConfig::default()
    };
    kafka.tune_for_embedded_broker();
    kafka
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
enum Note {
    Note { text: String },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_broker_keeps_topics_and_records_across_a_kill() {
    let data_dir = std::env::temp_dir().join(format!("wfm-broker-test-{}", rand::random::<u64>()));
    let addr = format!("127.0.0.1:{}", free_port());
    let data = data_dir.to_str().unwrap();
    let args = ["broker", "--broker-addr", addr.as_str(), "--data-dir", data];
    let kafka = kafka_at(&addr);
    let topic = Topics::default().name(Topic::History);

    let broker = WfmProcess::spawn(&args, None).await;
    let metadata = wfm_runtime::admin::metadata(&kafka, Duration::from_secs(10))
        .await
        .unwrap();
    for t in Topic::ALL {
        let name = Topics::default().name(t);
        let found = metadata.topics().iter().find(|m| m.name() == name);
        assert_eq!(
            found.map(|m| m.partitions().len() as i32),
            Some(kafka.partitions_of(t)),
            "{name} provisioned"
        );
    }
    let envelope = Envelope::new(
        &Note::Note {
            text: "kept".into(),
        },
        "test",
        "c",
    )
    .unwrap();
    Producer::new(&kafka)
        .unwrap()
        .send(&Outgoing::envelope(&topic, "flow-1", &envelope))
        .await
        .unwrap();
    broker.kill().await;

    // Same data directory: provisioning finds every topic as it left it.
    let _broker = WfmProcess::spawn(&args, None).await;
    let records = read_topic(&kafka, &topic, Duration::from_secs(20), |r| !r.is_empty()).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key.as_deref(), Some("flow-1"));
    assert_eq!(records[0].offset, 0);
    assert!(records[0].partition >= 0);
    assert_eq!(records[0].envelope().unwrap(), envelope);
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_count_mismatch_is_reported_clearly() {
    let broker = TestBroker::start().await;
    let mut kafka = broker.kafka.clone();
    kafka.partitions = 3;
    let error = wfm_runtime::admin::ensure_topics(&kafka).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("wfm.hub has 4 partitions, configured 3"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_in_use_is_refused_not_shared() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = tokio::process::Command::new(WFM)
        .args(["broker", "--ephemeral", "--broker-addr", &addr])
        .env("WFM_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

/// Leaving a consumer group blocks while the broker is unreachable; an
/// operator's stop must still end the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_stops_when_the_broker_is_gone() {
    let broker = TestBroker::start().await;
    let http = format!("127.0.0.1:{}", free_port());
    let simulator = format!("127.0.0.1:{}", free_port());
    let mut system = WfmProcess::spawn_with_env(
        &["up", "--http-addr", &http],
        Some(&broker.kafka),
        &[("WFM_SIMULATOR_ADDR", &simulator)],
    )
    .await;
    drop(broker);
    tokio::time::sleep(Duration::from_secs(1)).await;
    system.terminate();
    let exit = tokio::time::timeout(Duration::from_secs(60), system.child.wait()).await;
    assert!(matches!(exit, Ok(Ok(_))), "wfm exits: {exit:?}");
}
