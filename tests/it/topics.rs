//! `wfm topics`, `wfm trace` and `wfm dlq` as an operator runs them: the
//! binary against a real broker holding records of known content.

use std::process::Output;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use wfm_protocol::dlq::{DeadLetter, DlqMessage};
use wfm_protocol::{Envelope, Topic, ENVELOPE_VERSION};
use wfm_runtime::{KafkaConfig, Outgoing, Producer};

use crate::harness::{read_topic, TestBroker, WFM};

const WAIT: Duration = Duration::from_secs(30);

async fn wfm(kafka: &KafkaConfig, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(WFM);
    command
        .env("WFM_KAFKA_BROKERS", &kafka.brokers)
        .env("WFM_TOPIC_PREFIX", &kafka.topic_prefix)
        .env("WFM_LOG", "warn");
    for (key, value) in &kafka.client {
        command.arg("-X").arg(format!("{key}={value}"));
    }
    let output = command.args(args).output().await.expect("wfm runs");
    assert!(
        output.status.success(),
        "wfm {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

async fn wfm_json(kafka: &KafkaConfig, args: &[&str]) -> Value {
    let output = wfm(kafka, args).await;
    serde_json::from_slice(&output.stdout).expect("one JSON document")
}

/// `wfm <args>` printing one JSON object per line.
async fn wfm_lines(kafka: &KafkaConfig, args: &[&str]) -> Vec<Value> {
    let output = wfm(kafka, args).await;
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

fn envelope(kind: &str, correlation_id: &str, source: &str, created_at: i64) -> Envelope {
    Envelope {
        version: ENVELOPE_VERSION,
        message_id: format!("{source}-{kind}-{created_at}"),
        correlation_id: correlation_id.into(),
        kind: kind.into(),
        created_at,
        deadline: None,
        source: source.into(),
        payload: serde_json::value::to_raw_value(&json!({ "at": created_at })).unwrap(),
    }
}

fn to(topic: String, partition: i32, key: &str, value: Option<Vec<u8>>) -> Outgoing {
    Outgoing {
        topic,
        key: key.into(),
        partition: Some(partition),
        value,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_describe_report_exact_watermarks_and_policies() {
    let broker = TestBroker::start().await;
    let producer = Producer::new(&broker.kafka).unwrap();
    let hub = broker.topic(Topic::Hub);
    let flows = broker.topic(Topic::Flows);
    let mut records = Vec::new();
    for n in 0..5 {
        let value = envelope("ping", "c", "test", n).encode();
        records.push(to(hub.clone(), 0, "a", Some(value)));
    }
    for _ in 0..3 {
        records.push(to(hub.clone(), 2, "b", Some(b"raw".to_vec())));
    }
    records.push(to(flows.clone(), 1, "f", Some(b"{}".to_vec())));
    producer.send_all(&records).await.unwrap();

    let list = wfm_json(&broker.kafka, &["topics", "list", "--json"]).await;
    let topic = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|t| t["topic"] == name)
            .unwrap_or_else(|| panic!("{name} listed"))
            .clone()
    };
    let listed_hub = topic(&hub);
    assert_eq!(listed_hub["partitions"], 4);
    assert_eq!(listed_hub["records"], 8);
    assert_eq!(listed_hub["cleanup_policy"], "delete");
    let highs: Vec<i64> = listed_hub["watermarks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["high"].as_i64().unwrap())
        .collect();
    assert_eq!(highs, [5, 0, 3, 0]);
    assert_eq!(topic(&flows)["records"], 1);
    assert_eq!(topic(&flows)["cleanup_policy"], "compact");
    assert_eq!(topic(&broker.topic(Topic::Resources))["partitions"], 1);
    for name in list.as_array().unwrap().iter().map(|t| &t["topic"]) {
        assert!(!name.as_str().unwrap().starts_with("__"));
    }

    // The name without the prefix is accepted too.
    let detail = wfm_json(&broker.kafka, &["topics", "describe", "hub", "--json"]).await;
    assert_eq!(detail["topic"], hub.as_str());
    let partitions = detail["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 4);
    assert_eq!(partitions[0]["partition"], 0);
    assert_eq!(partitions[0]["low"], 0);
    assert_eq!(partitions[0]["high"], 5);
    assert_eq!(partitions[2]["records"], 3);
    assert_eq!(partitions[1]["records"], 0);

    let table = wfm(&broker.kafka, &["topics", "list"]).await;
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.lines().any(|l| l.contains(&hub) && l.contains(" 8 ")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_decodes_filters_limits_and_survives_garbage() {
    let broker = TestBroker::start().await;
    let producer = Producer::new(&broker.kafka).unwrap();
    let switch = broker.topic(Topic::Switch);
    let mut records = Vec::new();
    // Partition 0: six envelopes, alternating kinds and requests.
    for n in 0..6 {
        let kind = if n % 2 == 0 { "install" } else { "remove" };
        let value = envelope(kind, &format!("req-{}", n % 3), "hub", 1_000 + n).encode();
        records.push(to(switch.clone(), 0, &format!("sw-{}", n % 2), Some(value)));
    }
    // Partition 1: garbage, a newer envelope version, a tombstone.
    records.push(to(
        switch.clone(),
        1,
        "junk",
        Some(vec![0xff, 0x00, b'h', b'i']),
    ));
    let mut future = envelope("install", "req-0", "hub", 2_000);
    future.version = ENVELOPE_VERSION + 1;
    records.push(to(switch.clone(), 1, "v2", Some(future.encode())));
    records.push(to(switch.clone(), 1, "gone", None));
    producer.send_all(&records).await.unwrap();

    let tail = |extra: &[&str]| {
        let mut args = vec!["topics", "tail", "switch", "--json"];
        args.extend_from_slice(extra);
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let kafka = broker.kafka.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            wfm_lines(&kafka, &args).await
        }
    };

    let all = tail(&["--from-beginning"]).await;
    assert_eq!(all.len(), 9);
    let on_0: Vec<&Value> = all.iter().filter(|r| r["partition"] == 0).collect();
    assert_eq!(
        on_0.iter()
            .map(|r| r["offset"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5]
    );
    assert_eq!(on_0[1]["envelope"]["kind"], "remove");
    assert_eq!(on_0[1]["envelope"]["correlation_id"], "req-1");
    assert_eq!(on_0[1]["envelope"]["payload"]["at"], 1_001);
    assert_eq!(on_0[1]["key"], "sw-1");
    let on_1: Vec<&Value> = all.iter().filter(|r| r["partition"] == 1).collect();
    assert_eq!(on_1[0]["undecodable"]["hex_preview"], "ff006869");
    assert_eq!(on_1[0]["undecodable"]["size"], 4);
    assert!(on_1[1]["undecodable"]["error"]
        .as_str()
        .unwrap()
        .contains("version"));
    assert!(on_1[2].get("tombstone").is_some());

    let kinds = tail(&["--from-beginning", "--kind", "remove"]).await;
    assert_eq!(kinds.len(), 3);
    assert!(kinds.iter().all(|r| r["envelope"]["kind"] == "remove"));
    let by_request = tail(&["--from-beginning", "--correlation-id", "req-0"]).await;
    assert_eq!(
        by_request
            .iter()
            .map(|r| r["offset"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [0, 3]
    );
    let by_key = tail(&["--from-beginning", "--key", "sw-0"]).await;
    assert_eq!(by_key.len(), 3);
    let from_offset = tail(&["--partition", "0", "--offset", "4"]).await;
    assert_eq!(
        from_offset
            .iter()
            .map(|r| r["offset"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [4, 5]
    );
    let limited = tail(&["--from-beginning", "--partition", "0", "--limit", "2"]).await;
    assert_eq!(limited.len(), 2);
    let latest = tail(&["--last", "1"]).await;
    assert_eq!(
        latest.len(),
        2,
        "the last record of each non-empty partition"
    );

    // The pretty form (plain, since stdout is a pipe) shows garbage as such.
    let pretty = wfm(
        &broker.kafka,
        &["topics", "tail", "switch", "--from-beginning"],
    )
    .await;
    let text = String::from_utf8(pretty.stdout).unwrap();
    assert!(text.contains("undecodable"), "{text}");
    assert!(text.contains("hex:  ff006869"), "{text}");
    assert!(text.contains("tombstone"), "{text}");
    assert!(!text.contains('\u{1b}'), "no colour on a pipe: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follow_prints_records_written_after_it_started() {
    let broker = TestBroker::start().await;
    let producer = Producer::new(&broker.kafka).unwrap();
    let northbound = broker.topic(Topic::Northbound);
    let kafka = broker.kafka.clone();
    let follower = tokio::spawn(async move {
        wfm_lines(
            &kafka,
            &[
                "topics",
                "tail",
                "northbound",
                "--follow",
                "--limit",
                "3",
                "--json",
            ],
        )
        .await
    });
    // Records keep coming until the follower has had three and exited.
    let mut n = 0;
    while !follower.is_finished() && n < 200 {
        let value = envelope("reply", "r", "hub", n).encode();
        producer
            .send(&to(northbound.clone(), 0, "k", Some(value)))
            .await
            .unwrap();
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = follower.await.unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|r| r["envelope"]["kind"] == "reply"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_describe_show_owners_committed_offsets_and_lag() {
    let broker = TestBroker::start().await;
    let producer = Producer::new(&broker.kafka).unwrap();
    let coordinator = broker.topic(Topic::Coordinator);
    let records: Vec<Outgoing> = (0..5)
        .map(|n| {
            to(
                coordinator.clone(),
                0,
                "k",
                Some(envelope("register", "c", "t", n).encode()),
            )
        })
        .collect();
    producer.send_all(&records).await.unwrap();

    let mut config = wfm_runtime::producer::client_config(&broker.kafka, &Default::default());
    config
        .set("group.id", "inspected")
        .set("client.id", "member-a")
        .set("enable.auto.commit", "false");
    let member: BaseConsumer = config.create().unwrap();
    member.subscribe(&[&coordinator]).unwrap();
    let started = Instant::now();
    while member.assignment().unwrap().count() < 4 {
        assert!(started.elapsed() < WAIT, "member never got its partitions");
        member.poll(Duration::from_millis(100));
    }
    let mut commit = TopicPartitionList::new();
    commit
        .add_partition_offset(&coordinator, 0, Offset::Offset(2))
        .unwrap();
    member.commit(&commit, CommitMode::Sync).unwrap();
    // Keep the member alive (heartbeating) while the CLI looks at the group.
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let polling = std::thread::spawn(move || {
        while stopped.try_recv().is_err() {
            member.poll(Duration::from_millis(100));
        }
    });

    let groups = wfm_json(&broker.kafka, &["topics", "groups", "inspected", "--json"]).await;
    let group = &groups[0];
    assert_eq!(group["group"], "inspected");
    let members = group["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{group}");
    // Kafka reports each member's assignment; tansu (the embedded broker)
    // reports none, and then no partition has an owner.
    let assigned = !members[0]["assignment"].is_null();
    if assigned {
        assert_eq!(
            members[0]["assignment"][coordinator.as_str()],
            json!([0, 1, 2, 3])
        );
    }
    let p0 = group["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["topic"] == coordinator.as_str() && p["partition"] == 0)
        .expect("partition 0 reported")
        .clone();
    assert_eq!(p0["committed"], 2);
    assert_eq!(p0["high"], 5);
    assert_eq!(p0["lag"], 3);
    let owner = if assigned {
        members[0]["member_id"].clone()
    } else {
        Value::Null
    };
    assert_eq!(p0["owner"], owner);

    let detail = wfm_json(
        &broker.kafka,
        &["topics", "describe", &coordinator, "--json"],
    )
    .await;
    let d0 = &detail["partitions"][0];
    if assigned {
        assert_eq!(d0["owners"][0]["group"], "inspected");
        assert_eq!(d0["owners"][0]["member_id"], owner);
    }
    assert_eq!(
        d0["committed"][0],
        json!({"group": "inspected", "offset": 2, "lag": 3})
    );

    stop.send(()).unwrap();
    polling.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_merges_one_request_across_topics_in_created_order() {
    let broker = TestBroker::start().await;
    let producer = Producer::new(&broker.kafka).unwrap();
    let t = |topic| broker.topic(topic);
    let base = 1_700_000_000_000;
    // The request's hops, written out of time order and over several topics.
    let hops = [
        (Topic::Northbound, "northbound", "flow_created", 250),
        (Topic::Hub, "northbound", "create_flow", 0),
        (Topic::SpeakerWorker, "hub", "install_rules", 40),
        (Topic::History, "hub", "transition", 41),
        (Topic::Switch, "speaker-worker", "install", 55),
        (Topic::SpeakerWorker, "switch", "installed", 130),
        (Topic::Hub, "speaker-worker", "rules_installed", 180),
    ];
    let mut records = Vec::new();
    for (n, (topic, source, kind, at)) in hops.iter().enumerate() {
        let value = envelope(kind, "req-42", source, base + at).encode();
        records.push(to(t(*topic), (n % 4) as i32, "flow-1", Some(value)));
    }
    // Noise: other requests, garbage, a JSON record that is not an envelope.
    for n in 0..50 {
        let value = envelope("create_flow", &format!("other-{n}"), "northbound", base + n).encode();
        records.push(to(t(Topic::Hub), (n % 4) as i32, "other", Some(value)));
    }
    records.push(to(
        t(Topic::Hub),
        1,
        "junk",
        Some(b"\x00\x01garbage".to_vec()),
    ));
    records.push(to(
        t(Topic::Flows),
        0,
        "x",
        Some(br#"{"correlation_id":"req-42"}"#.to_vec()),
    ));
    producer.send_all(&records).await.unwrap();

    let trace = wfm_json(&broker.kafka, &["trace", "req-42", "--json"]).await;
    assert_eq!(trace["correlation_id"], "req-42");
    assert_eq!(trace["scanned"], 59);
    let got: Vec<(String, String, i64, i64, bool)> = trace["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["topic"].as_str().unwrap().to_owned(),
                h["envelope"]["kind"].as_str().unwrap().to_owned(),
                h["hop_ms"].as_i64().unwrap(),
                h["since_start_ms"].as_i64().unwrap(),
                h["history"].as_bool().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, String, i64, i64, bool)> = [
        (Topic::Hub, "create_flow", 0, 0),
        (Topic::SpeakerWorker, "install_rules", 40, 40),
        (Topic::History, "transition", 1, 41),
        (Topic::Switch, "install", 14, 55),
        (Topic::SpeakerWorker, "installed", 75, 130),
        (Topic::Hub, "rules_installed", 50, 180),
        (Topic::Northbound, "flow_created", 70, 250),
    ]
    .into_iter()
    .map(|(topic, kind, hop, total)| {
        (
            t(topic),
            kind.to_owned(),
            hop,
            total,
            topic == Topic::History,
        )
    })
    .collect();
    assert_eq!(got, expected);
    assert_eq!(trace["hops"][3]["envelope"]["source"], "speaker-worker");

    let table = wfm(&broker.kafka, &["trace", "req-42"]).await;
    let text = String::from_utf8(table.stdout).unwrap();
    assert_eq!(text.lines().count(), 8, "{text}");
    assert!(text.contains("(history)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_delivers_each_dead_letter_to_its_origin_once() {
    let broker = TestBroker::start().await;
    let producer = Producer::new(&broker.kafka).unwrap();
    let origin = broker.topic(Topic::Coordinator);
    let dlq = broker.topic(Topic::Dlq);
    let bad: &[u8] = b"\xffnot an envelope";
    let (partition, offset) = producer
        .send(&to(origin.clone(), 3, "cb-7", Some(bad.to_vec())))
        .await
        .unwrap();
    let letter = |origin_offset: i64, message_id: &str| {
        let letter = DlqMessage::DeadLetter(DeadLetter {
            reason: "record is not a valid envelope".into(),
            category: "invalid_envelope".into(),
            origin_topic: origin.clone(),
            origin_partition: partition,
            origin_offset,
            consumer_group: "coordinator".into(),
            key_b64: DeadLetter::encode_bytes(Some(b"cb-7")),
            value_b64: DeadLetter::encode_bytes(Some(bad)),
            dead_lettered_at: wfm_protocol::now_ms() - 90_000,
        });
        Envelope::new(&letter, "coordinator", "")
            .unwrap()
            .with_message_id(message_id)
            .encode()
    };
    // The same dead letter twice (as after a crash before commit), and garbage.
    producer
        .send_all(&[
            to(dlq.clone(), 0, "cb-7", Some(letter(offset, "dl-1"))),
            to(dlq.clone(), 2, "cb-7", Some(letter(offset, "dl-1"))),
            to(dlq.clone(), 1, "x", Some(b"garbage".to_vec())),
        ])
        .await
        .unwrap();

    let listed = wfm_json(&broker.kafka, &["dlq", "list", "--json"]).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["category"], "invalid_envelope");
    assert_eq!(listed[0]["origin_offset"], offset);
    assert_eq!(listed[0]["message_id"], "dl-1");
    assert_eq!(listed[0]["replayed_at"], Value::Null);

    let first = wfm_json(&broker.kafka, &["dlq", "replay", "--all", "--json"]).await;
    assert_eq!(first.as_array().unwrap().len(), 1, "{first}");
    assert_eq!(first[0]["outcome"], "replayed");
    assert_eq!(first[0]["partition"], partition);
    let replayed_at = first[0]["offset"].as_i64().unwrap();
    assert_eq!(replayed_at, offset + 1);

    let again = wfm_json(&broker.kafka, &["dlq", "replay", "--all", "--json"]).await;
    assert_eq!(again[0]["outcome"], "already_replayed");
    assert_eq!(again[0]["offset"], replayed_at);
    let by_id = wfm_json(&broker.kafka, &["dlq", "replay", "--id", "2:0", "--json"]).await;
    assert_eq!(by_id[0]["outcome"], "already_replayed");

    let on_origin = read_topic(&broker.kafka, &origin, Duration::from_secs(5), |_| false).await;
    let copies: Vec<_> = on_origin
        .iter()
        .filter(|r| r.value.as_deref() == Some(bad))
        .collect();
    assert_eq!(copies.len(), 2, "the original and exactly one replay");
    assert_eq!(copies[1].key.as_deref(), Some("cb-7"));
    assert_eq!(copies[1].partition, partition);

    let tail = wfm_lines(
        &broker.kafka,
        &[
            "topics",
            "tail",
            &origin,
            "--partition",
            &partition.to_string(),
            "--json",
        ],
    )
    .await;
    assert_eq!(tail[1]["headers"]["wfm-replay-of"], "dl-1");
    let listed = wfm_json(&broker.kafka, &["dlq", "list", "--json"]).await;
    assert_eq!(
        listed[0]["replayed_at"],
        format!("{partition}@{replayed_at}")
    );

    let missing = tokio::process::Command::new(WFM)
        .env("WFM_KAFKA_BROKERS", &broker.kafka.brokers)
        .env("WFM_LOG", "warn")
        .args(["dlq", "replay", "--id", "nope"])
        .output()
        .await
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no dead letter nope"));
}

/// The scan speed figure: `cargo test --test it -- --ignored --nocapture trace_over_a_million`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, minutes long"]
async fn trace_over_a_million_records() {
    const RECORDS: usize = 1_000_000;
    let broker = TestBroker::start().await;
    let producer = Producer::new(&broker.kafka).unwrap();
    let topics = [
        Topic::Hub,
        Topic::SpeakerWorker,
        Topic::Switch,
        Topic::Northbound,
        Topic::History,
    ];
    let started = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    for n in 0..RECORDS {
        let topic = topics[n % topics.len()];
        let correlation = if n % 100_000 == 0 {
            "needle".to_owned()
        } else {
            format!("req-{n}")
        };
        let value = envelope("step", &correlation, "bench", n as i64).encode();
        batch.push(to(
            broker.topic(topic),
            (n % 4) as i32,
            &format!("flow-{}", n % 1000),
            Some(value),
        ));
        if batch.len() == batch.capacity() {
            producer.send_all(&batch).await.unwrap();
            batch.clear();
        }
    }
    producer.send_all(&batch).await.unwrap();
    eprintln!("produced {RECORDS} records in {:?}", started.elapsed());

    let started = Instant::now();
    let trace = wfm_json(&broker.kafka, &["trace", "needle", "--json"]).await;
    let elapsed = started.elapsed();
    assert_eq!(trace["scanned"], RECORDS);
    assert_eq!(trace["hops"].as_array().unwrap().len(), RECORDS / 100_000);
    eprintln!(
        "trace over {RECORDS} records: {elapsed:?} wall ({} ms scanning)",
        trace["elapsed_ms"]
    );
}
