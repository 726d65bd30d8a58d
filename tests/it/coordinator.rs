//! The coordinator against a real broker, as `wfm coordinator` processes:
//! timeouts fire with their context and never early, cancel and re-register
//! hold, and callbacks survive SIGKILL and move with their partitions.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use wfm_coordinator::{CoordinatorClient, Fire};
use wfm_protocol::coordinator::{CallbackTimeout, CoordinatorReply};
use wfm_protocol::dlq::{DeadLetter, DlqMessage};
use wfm_protocol::{now_ms, Envelope, Topic};
use wfm_runtime::{KafkaConfig, Outgoing, Producer};

use crate::harness::{read_topic, Record, TestBroker, WfmProcess};

const WAIT: Duration = Duration::from_secs(60);

async fn coordinator(broker: &TestBroker) -> WfmProcess {
    WfmProcess::spawn(&["coordinator"], Some(&broker.kafka)).await
}

/// SIGTERM, and waits for the process to leave its group and exit.
async fn stop(mut process: WfmProcess) {
    process.terminate();
    let exit = tokio::time::timeout(WAIT, process.child.wait()).await;
    assert!(matches!(exit, Ok(Ok(s)) if s.success()), "{exit:?}");
}

/// Registers and cancels callbacks whose timeouts go to the hub's inbox,
/// with the reply key `reply-<key>`.
struct Callbacks {
    kafka: KafkaConfig,
    producer: Producer,
    client: CoordinatorClient,
}

impl Callbacks {
    fn new(kafka: &KafkaConfig) -> Self {
        Self {
            kafka: kafka.clone(),
            producer: Producer::new(kafka).unwrap(),
            client: CoordinatorClient::new(kafka.topics(), "test"),
        }
    }

    async fn register(&self, key: &str, deadline: i64) {
        let context = json!({ "key": key, "deadline": deadline });
        let out = self
            .client
            .register(
                key,
                Fire::At(deadline),
                Topic::Hub,
                &format!("reply-{key}"),
                &context,
                &format!("corr-{key}"),
            )
            .unwrap();
        self.producer.send(&out).await.unwrap();
    }

    async fn cancel(&self, key: &str) {
        let out = self.client.cancel(key, &format!("corr-{key}")).unwrap();
        self.producer.send(&out).await.unwrap();
    }

    /// Any bytes under any key, straight onto the coordinator's inbox.
    async fn raw(&self, key: &str, value: Vec<u8>) {
        let out = Outgoing {
            topic: self.kafka.topics().name(Topic::Coordinator),
            key: key.into(),
            partition: None,
            value: Some(value),
        };
        self.producer.send(&out).await.unwrap();
    }
}

#[derive(Debug)]
struct Fired {
    reply_key: Option<String>,
    envelope: Envelope,
    timeout: CallbackTimeout,
    received_at: i64,
}

fn decode_timeouts(records: &[Record]) -> Vec<Fired> {
    records
        .iter()
        .filter_map(|r| {
            let envelope = r.envelope()?;
            let CoordinatorReply::CallbackTimeout(timeout) = envelope.open().ok()?;
            Some(Fired {
                reply_key: r.key.clone(),
                envelope,
                timeout,
                received_at: now_ms(),
            })
        })
        .collect()
}

/// Timeouts on the hub's inbox, read until every key of `until` has fired.
async fn timeouts_until(kafka: &KafkaConfig, until: &[&str]) -> Vec<Fired> {
    let hub = kafka.topics().name(Topic::Hub);
    let records = read_topic(kafka, &hub, WAIT, |records| {
        let fired = decode_timeouts(records);
        until
            .iter()
            .all(|key| fired.iter().any(|f| f.timeout.key == *key))
    })
    .await;
    let fired = decode_timeouts(&records);
    for key in until {
        assert!(
            fired.iter().any(|f| f.timeout.key == *key),
            "{key} never fired; fired: {:?}",
            fired.iter().map(|f| &f.timeout.key).collect::<Vec<_>>()
        );
    }
    fired
}

fn count_by_key(fired: &[Fired]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for f in fired {
        *counts.entry(f.timeout.key.as_str()).or_default() += 1;
    }
    counts
}

/// Waits until the changelog holds at least `n` records: the coordinator has
/// saved the callbacks armed for longer than its `save_after_ms`.
async fn await_changelog(kafka: &KafkaConfig, n: usize) {
    let changelog = kafka.topics().name(Topic::CoordinatorState);
    let records = read_topic(kafka, &changelog, WAIT, |r| r.len() >= n).await;
    assert!(
        records.len() >= n,
        "changelog has {} of {n} records",
        records.len()
    );
}

/// Registers a callback due now and waits for it: a coordinator owns the
/// partitions and is firing.
async fn await_live(callbacks: &Callbacks, key: &str) {
    callbacks.register(key, now_ms()).await;
    timeouts_until(&callbacks.kafka, &[key]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_arrives_with_context_and_not_before_deadline() {
    let broker = TestBroker::start().await;
    let _coordinator = coordinator(&broker).await;
    let callbacks = Callbacks::new(&broker.kafka);
    let deadline = now_ms() + 1_500;
    callbacks.register("flow-1:install", deadline).await;

    let fired = timeouts_until(&broker.kafka, &["flow-1:install"]).await;
    assert_eq!(fired.len(), 1);
    let f = &fired[0];
    assert_eq!(f.reply_key.as_deref(), Some("reply-flow-1:install"));
    assert_eq!(f.envelope.kind, "callback_timeout");
    assert_eq!(f.envelope.correlation_id, "corr-flow-1:install");
    assert_eq!(f.envelope.source, "coordinator");
    assert_eq!(
        f.timeout.context,
        json!({ "key": "flow-1:install", "deadline": deadline })
    );
    assert_eq!(f.timeout.deadline, deadline);
    assert!(f.timeout.fired_at >= deadline, "{f:?}");
    assert!(f.received_at >= deadline, "{f:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_callback_never_fires() {
    let broker = TestBroker::start().await;
    let _coordinator = coordinator(&broker).await;
    let callbacks = Callbacks::new(&broker.kafka);
    let now = now_ms();
    callbacks.register("cancelled", now + 1_500).await;
    callbacks.cancel("cancelled").await;
    // Cancelling what is not armed is harmless.
    callbacks.cancel("never-registered").await;
    // Due well after the cancelled one would have fired.
    callbacks.register("sentinel", now + 4_000).await;

    let fired = timeouts_until(&broker.kafka, &["sentinel"]).await;
    assert_eq!(count_by_key(&fired), HashMap::from([("sentinel", 1)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_register_fires_once_at_the_later_deadline() {
    let broker = TestBroker::start().await;
    let _coordinator = coordinator(&broker).await;
    let callbacks = Callbacks::new(&broker.kafka);
    let now = now_ms();
    callbacks.register("moved", now + 1_500).await;
    let later = now + 4_000;
    callbacks.register("moved", later).await;
    callbacks.register("sentinel", now + 5_500).await;

    let fired = timeouts_until(&broker.kafka, &["sentinel"]).await;
    assert_eq!(
        count_by_key(&fired),
        HashMap::from([("moved", 1), ("sentinel", 1)])
    );
    let moved = fired.iter().find(|f| f.timeout.key == "moved").unwrap();
    assert_eq!(moved.timeout.deadline, later);
    assert!(moved.timeout.fired_at >= later, "{moved:?}");
    assert_eq!(moved.timeout.context["deadline"], json!(later));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_survive_sigkill_and_overdue_ones_fire_on_restart() {
    let broker = TestBroker::start().await;
    let first = coordinator(&broker).await;
    let callbacks = Callbacks::new(&broker.kafka);
    await_live(&callbacks, "warm-up").await;

    // `saved`: armed long enough (save_after_ms, 2 s) to be in the changelog.
    let now = now_ms();
    let saved: Vec<String> = (0..6).map(|i| format!("saved-{i}")).collect();
    for key in &saved {
        callbacks.register(key, now + 20_000).await;
    }
    callbacks.cancel("saved-1").await;
    await_changelog(&broker.kafka, 5).await;
    // `fresh`: killed before they could be saved, so their inbox records are
    // their only copy; they fall due while no coordinator runs.
    let now = now_ms();
    let fresh: Vec<String> = (0..6).map(|i| format!("fresh-{i}")).collect();
    for key in &fresh {
        callbacks.register(key, now + 2_500).await;
    }
    callbacks.cancel("fresh-1").await;
    first.kill().await;
    // The wait also outlasts the dead member's session, so the next member
    // is assigned its partitions.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let _second = coordinator(&broker).await;

    let expected: Vec<&str> = fresh
        .iter()
        .chain(&saved)
        .map(String::as_str)
        .filter(|k| !k.ends_with("-1"))
        .collect();
    let fired = timeouts_until(&broker.kafka, &expected).await;
    let counts = count_by_key(&fired);
    assert!(!counts.contains_key("saved-1"), "{counts:?}");
    assert!(!counts.contains_key("fresh-1"), "{counts:?}");
    for f in fired.iter().filter(|f| f.timeout.key != "warm-up") {
        assert!(f.timeout.fired_at >= f.timeout.deadline, "{f:?}");
        assert_eq!(f.timeout.context["key"], json!(f.timeout.key));
    }
    // A duplicate, if any, is recognisable by its message id.
    let mut ids: HashMap<&str, &str> = HashMap::new();
    for f in &fired {
        let id = ids.entry(&f.timeout.key).or_insert(&f.envelope.message_id);
        assert_eq!(*id, f.envelope.message_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instances_partitions_are_taken_over_and_fire() {
    let broker = TestBroker::start().await;
    let first = coordinator(&broker).await;
    let _second = coordinator(&broker).await;
    let callbacks = Callbacks::new(&broker.kafka);
    let keys: Vec<String> = (0..12).map(|i| format!("shared-{i}")).collect();
    let deadline = now_ms() + 4_000;
    for key in &keys {
        callbacks.register(key, deadline).await;
    }
    await_changelog(&broker.kafka, keys.len()).await;
    stop(first).await;

    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let fired = timeouts_until(&broker.kafka, &keys).await;
    assert!(fired.iter().all(|f| f.timeout.fired_at >= deadline));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dead_lettered_and_a_past_deadline_fires_at_once() {
    let broker = TestBroker::start().await;
    let _coordinator = coordinator(&broker).await;
    let callbacks = Callbacks::new(&broker.kafka);
    let register = |key: &str, reply_topic: &str| {
        let mut out = callbacks
            .client
            .register(key, Fire::At(now_ms()), Topic::Hub, "r", &Value::Null, "c")
            .unwrap();
        let mut envelope = Envelope::decode(out.value.as_deref().unwrap(), usize::MAX).unwrap();
        let mut payload = envelope.payload_value();
        payload["reply_topic"] = json!(reply_topic);
        envelope.set_payload(&payload);
        out.value = Some(envelope.encode());
        out.value.unwrap()
    };
    let hub = broker.topic(Topic::Hub);
    callbacks.raw("garbage", b"\x00not json".to_vec()).await;
    callbacks.raw("", register("", &hub)).await;
    callbacks.raw("k", register("k", "wfm.nowhere")).await;
    callbacks.raw("other", register("k", &hub)).await;
    let mut no_key = Envelope::decode(&register("k", &hub), usize::MAX).unwrap();
    let mut payload = no_key.payload_value();
    payload.as_object_mut().unwrap().remove("key");
    no_key.set_payload(&payload);
    callbacks.raw("k", no_key.encode()).await;
    // Ancient deadlines are not an error: they fire at once.
    callbacks.register("past", 1).await;

    let fired = timeouts_until(&broker.kafka, &["past"]).await;
    assert_eq!(count_by_key(&fired), HashMap::from([("past", 1)]));
    let dlq = broker.topic(Topic::Dlq);
    let letters: Vec<DeadLetter> = read_topic(&broker.kafka, &dlq, WAIT, |r| r.len() >= 5)
        .await
        .iter()
        .map(
            |r| match r.envelope().unwrap().open::<DlqMessage>().unwrap() {
                DlqMessage::DeadLetter(letter) => letter,
            },
        )
        .collect();
    let mut reasons: Vec<(String, String)> = letters
        .iter()
        .map(|l| (l.category.clone(), l.reason.clone()))
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    let expect = [
        ("invalid_envelope", ""),
        ("invalid_payload", "missing field `key`"),
        ("rejected", "callback key is empty"),
        ("rejected", "differs from callback key"),
        ("rejected", "not an inbox that accepts callback timeouts"),
    ];
    for ((category, reason), (want_category, want_reason)) in reasons.iter().zip(expect) {
        assert_eq!(category, want_category, "{reasons:?}");
        assert!(reason.contains(want_reason), "{reason} lacks {want_reason}");
    }
}
