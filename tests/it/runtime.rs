//! The consumer runtime against a real broker: delivery, dead letters,
//! retries, crash takeover and partition sharing with per-key order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wfm_protocol::dlq::DlqMessage;
use wfm_protocol::{Envelope, Topic};
use wfm_runtime::status::ConsumerStatus;
use wfm_runtime::{
    ConsumerSpec, ConsumerState, Context, Delivery, Handler, KafkaConfig, Outgoing, Producer,
    Registry, WfmError,
};

use crate::harness::{eventually, read_topic, TestBroker};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
enum TestMessage {
    Ping { seq: u32 },
}

#[derive(Debug, Clone, PartialEq)]
struct Seen {
    key: String,
    seq: u32,
}

/// Records what it handled; fails some sequence numbers transiently a given
/// number of times; echoes every handled record to the northbound topic.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    attempts: Arc<Mutex<HashMap<u32, usize>>>,
    fail_times: HashMap<u32, usize>,
    /// Time each record takes, to keep a member busy mid-stream.
    work: Duration,
}

#[async_trait]
impl Handler for Recorder {
    type Message = TestMessage;

    async fn handle(
        &mut self,
        ctx: &Context,
        delivery: &Delivery<TestMessage>,
    ) -> Result<Vec<Outgoing>, WfmError> {
        let TestMessage::Ping { seq } = delivery.message;
        tokio::time::sleep(self.work).await;
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let n = attempts.entry(seq).or_default();
            *n += 1;
            *n
        };
        if attempt <= self.fail_times.get(&seq).copied().unwrap_or(0) {
            return Err(WfmError::Transient(format!("seq {seq} attempt {attempt}")));
        }
        let key = delivery.key.clone().unwrap_or_default();
        self.seen.lock().unwrap().push(Seen {
            key: key.clone(),
            seq,
        });
        let echo = Envelope::new(
            &TestMessage::Ping { seq },
            "test",
            &delivery.envelope.correlation_id,
        )
        .unwrap()
        .with_message_id(format!("echo-{seq}"));
        Ok(vec![Outgoing::envelope(
            ctx.topics.name(Topic::Northbound),
            key,
            &echo,
        )])
    }
}

impl Recorder {
    fn seqs(&self) -> Vec<u32> {
        self.seen.lock().unwrap().iter().map(|s| s.seq).collect()
    }
}

struct Member {
    status: Arc<ConsumerStatus>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

fn start_member(kafka: &KafkaConfig, name: &str, group: &str, handler: Recorder) -> Member {
    let registry = Registry::default();
    let spec = ConsumerSpec {
        name: name.into(),
        group: group.into(),
        topics: vec![kafka.topics().name(Topic::Hub)],
    };
    let producer = Producer::new(kafka).unwrap();
    let shutdown = CancellationToken::new();
    let task = {
        let (kafka, registry, shutdown) = (kafka.clone(), registry.clone(), shutdown.clone());
        tokio::spawn(async move {
            wfm_runtime::run(spec, kafka, producer, &registry, handler, shutdown).await
        })
    };
    // The status is registered synchronously at the start of `run`.
    let status = loop {
        if let Some(status) = registry_status(&registry, name) {
            break status;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    Member {
        status,
        shutdown,
        task,
    }
}

fn registry_status(registry: &Registry, name: &str) -> Option<Arc<ConsumerStatus>> {
    registry.get(name)
}

/// Sends to the inbox under test; one producer per test, as a long-lived
/// component would have (creating an idempotent producer costs a round trip).
struct Sender {
    producer: Producer,
    topic: String,
}

impl Sender {
    fn new(kafka: &KafkaConfig) -> Self {
        Self {
            producer: Producer::new(kafka).unwrap(),
            topic: kafka.topics().name(Topic::Hub),
        }
    }

    async fn ping(&self, key: &str, seq: u32) {
        let envelope =
            Envelope::new(&TestMessage::Ping { seq }, "test", &format!("c-{seq}")).unwrap();
        self.raw(key, envelope.encode()).await;
    }

    async fn raw(&self, key: &str, value: Vec<u8>) {
        let out = Outgoing {
            topic: self.topic.clone(),
            key: key.into(),
            partition: None,
            value: Some(value),
        };
        self.producer.send(&out).await.unwrap();
    }
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_messages_round_trip_and_outputs_are_produced() {
    let broker = TestBroker::start().await;
    let sender = Sender::new(&broker.kafka);
    let recorder = Recorder::default();
    let member = start_member(&broker.kafka, "rt", "rt-group", recorder.clone());
    for seq in 0..20 {
        sender.ping(&format!("flow-{}", seq % 3), seq).await;
    }

    assert!(
        eventually(WAIT, || recorder.seqs().len() >= 20).await,
        "handled: {:?}",
        recorder.seqs()
    );
    let mut seqs = recorder.seqs();
    seqs.sort();
    assert_eq!(seqs, (0..20).collect::<Vec<_>>());
    let echoes = read_topic(&broker.kafka, &broker.topic(Topic::Northbound), WAIT, |r| {
        r.len() >= 20
    })
    .await;
    assert_eq!(echoes.len(), 20);
    assert!(eventually(WAIT, || member.status.snapshot().counters.committed > 0).await);
    member.shutdown.cancel();
    member.task.await.unwrap();
    assert_eq!(member.status.state(), ConsumerState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_processing_continues() {
    let broker = TestBroker::start().await;
    let sender = Sender::new(&broker.kafka);
    let mut kafka = broker.kafka.clone();
    kafka.max_record_bytes = 2_000;
    let recorder = Recorder::default();
    let member = start_member(&kafka, "poison", "poison-group", recorder.clone());
    // All on one key, so they share a partition and the good one comes last.
    sender.raw("k", b"{not json".to_vec()).await;
    let mut unknown = Envelope::new(&TestMessage::Ping { seq: 0 }, "test", "c-unknown").unwrap();
    unknown.kind = "self_destruct".into();
    sender.raw("k", unknown.encode()).await;
    sender.raw("k", vec![b' '; 3_000]).await;
    let mut bad_payload = Envelope::new(&TestMessage::Ping { seq: 0 }, "test", "c-bad").unwrap();
    bad_payload.set_payload(&serde_json::json!({ "seq": "seven" }));
    sender.raw("k", bad_payload.encode()).await;
    sender.ping("k", 42).await;

    assert!(
        eventually(WAIT, || recorder.seqs() == vec![42]).await,
        "handled {:?}",
        recorder.seqs()
    );
    let letters = read_topic(&kafka, &broker.topic(Topic::Dlq), WAIT, |r| r.len() >= 4).await;
    let letters: Vec<_> = letters
        .iter()
        .map(
            |r| match r.envelope().unwrap().open::<DlqMessage>().unwrap() {
                DlqMessage::DeadLetter(letter) => letter,
            },
        )
        .collect();
    let categories: Vec<_> = letters.iter().map(|l| l.category.as_str()).collect();
    assert_eq!(
        categories,
        [
            "invalid_envelope",
            "unknown_kind",
            "too_large",
            "invalid_payload"
        ]
    );
    for (letter, offset) in letters.iter().zip(0..) {
        assert_eq!(letter.origin_topic, broker.topic(Topic::Hub));
        assert_eq!(letter.origin_offset, offset);
        assert_eq!(letter.consumer_group, "poison-group");
        assert_eq!(letter.key(), Some(b"k".to_vec()));
        assert!(!letter.reason.is_empty());
    }
    assert_eq!(letters[0].value(), Some(b"{not json".to_vec()));
    assert!(letters[1].reason.contains("self_destruct"));
    assert_eq!(member.status.snapshot().counters.dead_lettered, 4);
    member.shutdown.cancel();
    member.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_then_succeed_once() {
    let broker = TestBroker::start().await;
    let sender = Sender::new(&broker.kafka);
    let recorder = Recorder {
        fail_times: HashMap::from([(1, 2)]),
        ..Recorder::default()
    };
    let member = start_member(&broker.kafka, "retry", "retry-group", recorder.clone());
    for seq in 0..3 {
        sender.ping("same-key", seq).await;
    }
    assert!(eventually(WAIT, || recorder.seqs().len() >= 3).await);
    // Order on the key is kept across the retries, and each is handled once.
    assert_eq!(recorder.seqs(), vec![0, 1, 2]);
    assert_eq!(recorder.attempts.lock().unwrap()[&1], 3);
    let echoes = read_topic(
        &broker.kafka,
        &broker.topic(Topic::Northbound),
        Duration::from_secs(3),
        |r| r.len() > 3,
    )
    .await;
    assert_eq!(
        echoes.len(),
        3,
        "one output per record, however many attempts"
    );
    assert_eq!(member.status.snapshot().counters.retried, 2);
    member.shutdown.cancel();
    member.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_go_to_the_dead_letter_topic() {
    let broker = TestBroker::start().await;
    let sender = Sender::new(&broker.kafka);
    let recorder = Recorder {
        fail_times: HashMap::from([(5, usize::MAX)]),
        ..Recorder::default()
    };
    let member = start_member(&broker.kafka, "exhaust", "exhaust-group", recorder.clone());
    sender.ping("k", 5).await;
    sender.ping("k", 6).await;
    assert!(eventually(WAIT, || recorder.seqs() == vec![6]).await);
    let letters = read_topic(&broker.kafka, &broker.topic(Topic::Dlq), WAIT, |r| {
        !r.is_empty()
    })
    .await;
    let DlqMessage::DeadLetter(letter) = letters[0].envelope().unwrap().open().unwrap();
    assert_eq!(letter.category, "retries_exhausted");
    assert_eq!(
        recorder.attempts.lock().unwrap()[&5],
        broker.kafka.retry.max_attempts
    );
    member.shutdown.cancel();
    member.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_records_are_counted_not_executed() {
    let broker = TestBroker::start().await;
    let sender = Sender::new(&broker.kafka);
    let recorder = Recorder::default();
    let member = start_member(&broker.kafka, "expiry", "expiry-group", recorder.clone());
    let expired = Envelope::new(&TestMessage::Ping { seq: 1 }, "test", "c")
        .unwrap()
        .with_deadline(Some(wfm_protocol::now_ms() - 1_000));
    sender.raw("k", expired.encode()).await;
    sender.ping("k", 2).await;
    assert!(eventually(WAIT, || recorder.seqs() == vec![2]).await);
    assert_eq!(member.status.snapshot().counters.expired, 1);
    member.shutdown.cancel();
    member.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_is_taken_over_from_the_last_committed_offset() {
    let broker = TestBroker::start().await;
    let sender = Sender::new(&broker.kafka);
    const TOTAL: u32 = 300;
    for seq in 0..TOTAL {
        sender.ping(&format!("flow-{}", seq % 7), seq).await;
    }
    // Slow enough that the member is still mid-stream after several auto-commits.
    let first = Recorder {
        work: Duration::from_millis(10),
        ..Recorder::default()
    };
    let member = start_member(&broker.kafka, "first", "takeover", first.clone());
    assert!(eventually(WAIT, || first.seqs().len() >= 50).await);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(first.seqs().len() < TOTAL as usize, "still mid-stream");
    // Gone without a goodbye: no final commit, no group leave.
    member.task.abort();
    let _ = member.task.await;
    let handled_by_first = first.seqs();

    let second = Recorder::default();
    let member = start_member(&broker.kafka, "second", "takeover", second.clone());
    let all_handled = || {
        let mut all: Vec<u32> = handled_by_first
            .iter()
            .chain(second.seqs().iter())
            .copied()
            .collect();
        all.sort();
        all.dedup();
        all.len() == TOTAL as usize
    };
    assert!(
        eventually(Duration::from_secs(60), all_handled).await,
        "every record is handled at least once"
    );
    // Resumed from a committed offset, not from the beginning.
    assert!(
        second.seqs().len() < TOTAL as usize,
        "second member re-read everything: committed offsets were lost"
    );
    member.shutdown.cancel();
    member.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_split_partitions_and_keep_per_key_order() {
    let broker = TestBroker::start().await;
    let sender = Sender::new(&broker.kafka);
    let a = Recorder::default();
    let b = Recorder::default();
    let member_a = start_member(&broker.kafka, "a", "split", a.clone());
    let member_b = start_member(&broker.kafka, "b", "split", b.clone());
    let both_assigned = || {
        let (sa, sb) = (member_a.status.snapshot(), member_b.status.snapshot());
        !sa.assigned.is_empty()
            && !sb.assigned.is_empty()
            && sa.assigned.len() + sb.assigned.len() == 4
    };
    assert!(
        eventually(WAIT, both_assigned).await,
        "both members get partitions"
    );
    const TOTAL: u32 = 400;
    for seq in 0..TOTAL {
        sender.ping(&format!("flow-{}", seq % 16), seq).await;
    }
    let done = || a.seqs().len() + b.seqs().len() >= TOTAL as usize;
    assert!(eventually(Duration::from_secs(60), done).await);
    assert!(
        !a.seqs().is_empty() && !b.seqs().is_empty(),
        "both members did work"
    );
    for recorder in [&a, &b] {
        let mut last: HashMap<String, u32> = HashMap::new();
        for seen in recorder.seen.lock().unwrap().iter() {
            if let Some(previous) = last.insert(seen.key.clone(), seen.seq) {
                assert!(
                    previous < seen.seq,
                    "order broken on {}: {previous} then {}",
                    seen.key,
                    seen.seq
                );
            }
        }
    }
    let keys_a: std::collections::HashSet<_> = a
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.key.clone())
        .collect();
    let keys_b: std::collections::HashSet<_> = b
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.key.clone())
        .collect();
    assert!(
        keys_a.is_disjoint(&keys_b),
        "a key is handled by one member only"
    );
    for member in [member_a, member_b] {
        member.shutdown.cancel();
        member.task.await.unwrap();
    }
}
