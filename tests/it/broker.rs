//! The embedded broker: topics provisioned at start, durable storage that
//! survives a SIGKILL, an in-memory log that drops only what no reader
//! needs, a clear error for a topic layout that differs or an address in
//! use, and components that stop even when it is gone.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use wfm_protocol::{Envelope, Topic, Topics};
use wfm_runtime::{KafkaConfig, Outgoing, Producer};

use crate::harness::{free_port, get_json, read_topic, TestBroker, WfmProcess, WFM};

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

/// (low, high) watermarks of partition 0 of `topic`.
async fn watermarks(kafka: &KafkaConfig, topic: &str) -> (i64, i64) {
    let consumer: BaseConsumer = wfm_runtime::producer::reader_config(kafka, "test-watermarks")
        .create()
        .unwrap();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        consumer
            .fetch_watermarks(&topic, 0, Duration::from_secs(10))
            .unwrap()
    })
    .await
    .unwrap()
}

/// `count` records of about 8 KB on partition 0 of `topic`, keyed in turn by `keys`.
async fn fill(kafka: &KafkaConfig, topic: &str, keys: &[&str], count: usize) {
    let producer = Producer::new(kafka).unwrap();
    let padding = "x".repeat(8_000);
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let records: Vec<Outgoing> = chunk
            .iter()
            .map(|n| {
                let note = Note::Note {
                    text: format!("{n} {padding}"),
                };
                let envelope = Envelope::new(&note, "test", "c").unwrap();
                Outgoing::envelope(topic, keys[n % keys.len()], &envelope).to_partition(0)
            })
            .collect();
        producer.send_all(&records).await.unwrap();
    }
}

fn note_number(record: &crate::harness::Record) -> usize {
    let Note::Note { text } = record.envelope().unwrap().open().unwrap();
    text.split(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ephemeral_log_drops_only_what_no_reader_needs() {
    let broker = TestBroker::start().await;
    let kafka = &broker.kafka;
    // 6,000 records of 8 KB each: three times what a partition keeps of dead records.
    let count = 6_000;

    // Compacted: superseded records go, the latest of every key stays.
    let changelog = broker.topic(Topic::HubState);
    let keys = ["a", "b", "c"];
    fill(kafka, &changelog, &keys, count).await;
    let (low, high) = watermarks(kafka, &changelog).await;
    assert_eq!(high, count as i64);
    let kept = read_topic(kafka, &changelog, Duration::from_secs(20), |r| {
        r.last().is_some_and(|last| last.offset == high - 1)
    })
    .await;
    assert!(
        kept.len() < count / 2,
        "{} of {count} superseded records kept",
        kept.len()
    );
    let latest: HashMap<String, usize> = kept
        .iter()
        .map(|r| (r.key.clone().unwrap(), note_number(r)))
        .collect();
    // The last record written with each key.
    let expected: HashMap<String, usize> = (0..count)
        .map(|n| (keys[n % keys.len()].to_owned(), n))
        .collect();
    assert_eq!(latest, expected);
    assert!(low > 0, "the log start moved past the dropped records");

    // Nobody commits on the history: every record stays.
    let history = broker.topic(Topic::History);
    fill(kafka, &history, &["flow"], count).await;
    assert_eq!(watermarks(kafka, &history).await, (0, count as i64));

    // A delete-policy topic keeps what a committing group has not read.
    let inbox = broker.topic(Topic::Coordinator);
    fill(kafka, &inbox, &["k"], count).await;
    let mut config = wfm_runtime::producer::client_config(kafka, &Default::default());
    config
        .set("group.id", "test-retention")
        .set("enable.auto.commit", "false");
    let group: BaseConsumer = config.create().unwrap();
    let commit = |offset: i64| {
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&inbox, 0, Offset::Offset(offset))
            .unwrap();
        group.commit(&offsets, CommitMode::Sync).unwrap();
    };
    commit(100);
    assert_eq!(
        watermarks(kafka, &inbox).await.0,
        0,
        "100 read records are within what the tools keep"
    );
    commit(count as i64);
    let (low, high) = watermarks(kafka, &inbox).await;
    assert_eq!(high, count as i64);
    assert!(
        low >= (count / 2) as i64,
        "read records dropped down to the tools' share: low {low}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_system_runs_on_the_durable_broker() {
    let data_dir = std::env::temp_dir().join(format!("wfm-durable-{}", rand::random::<u64>()));
    let broker = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let simulator = format!("127.0.0.1:{}", free_port());
    let data = data_dir.to_str().unwrap();
    let _system = WfmProcess::spawn_with_env(
        &[
            "up",
            "--broker-addr",
            &broker,
            "--data-dir",
            data,
            "--http-addr",
            &http,
        ],
        None,
        &[("WFM_SIMULATOR_ADDR", &simulator)],
    )
    .await;
    let client = reqwest::Client::new();
    let flow = serde_json::json!({
        "flow_id": "durable-1",
        "source": { "switch_id": wfm_protocol::topology::switch_id(1), "port_number": 1, "vlan_id": 10 },
        "destination": { "switch_id": wfm_protocol::topology::switch_id(3), "port_number": 1, "vlan_id": 10 },
        "maximum_bandwidth": 1000,
    });
    let created = client
        .post(format!("http://{http}/v2/flows"))
        .json(&flow)
        .send()
        .await
        .unwrap();
    assert_eq!(
        created.status(),
        reqwest::StatusCode::OK,
        "{}",
        created.text().await.unwrap()
    );
    let mut status = String::new();
    for _ in 0..600 {
        let flow = get_json(&client, &format!("http://{http}/v2/flows/durable-1")).await;
        status = flow["status"].as_str().unwrap_or_default().to_owned();
        if status == "UP" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "UP");
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
