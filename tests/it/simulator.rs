//! The simulated switch controller as a process against a real broker:
//! rule round trips, idempotency, conflicts, every fault knob, the topology it
//! publishes, and dead letters.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use wfm_protocol::dlq::DlqMessage;
use wfm_protocol::switch::{
    CommandHeader, Meter, Rule, RuleActions, RuleKind, RuleMatch, SwitchCommand, SwitchErrorCode,
    SwitchReply, SwitchResponse, SwitchResult, VlanAction,
};
use wfm_protocol::topology::{switch_id, TopologyRecord};
use wfm_protocol::{Envelope, Topic};
use wfm_runtime::{Outgoing, Producer};

use crate::harness::{free_port, read_topic, TestBroker, WfmProcess};

/// A broker, a simulator process on it, and a client for both.
struct Sim {
    broker: TestBroker,
    process: WfmProcess,
    http: reqwest::Client,
    base: String,
    producer: Producer,
    replies: StreamConsumer,
    received: HashMap<String, SwitchReply>,
    reply_created_at: HashMap<String, i64>,
    next_command: u64,
}

impl Sim {
    async fn start(extra: &[&str]) -> Self {
        let broker = TestBroker::start().await;
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["simulator", "--simulator-addr", &addr, "--seed", "1"];
        args.extend_from_slice(extra);
        let process = WfmProcess::spawn(&args, Some(&broker.kafka)).await;
        let producer = Producer::new(&broker.kafka).unwrap();
        let replies = reader(&broker, Topic::SpeakerWorker);
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            broker,
            process,
            producer,
            replies,
            received: HashMap::new(),
            reply_created_at: HashMap::new(),
            next_command: 0,
        }
    }

    fn header(&mut self, switch: &str) -> CommandHeader {
        self.next_command += 1;
        CommandHeader {
            command_id: format!("cmd-{}", self.next_command),
            attempt: 1,
            switch_id: switch.into(),
            reply_topic: self.broker.topic(Topic::SpeakerWorker),
            // Replies of one switch share a partition, so they arrive in command order.
            reply_key: switch.into(),
        }
    }

    async fn send(&self, command: &SwitchCommand) {
        let envelope = Envelope::new(command, "test", "corr").unwrap();
        let out = Outgoing::envelope(
            self.broker.topic(Topic::Switch),
            &command.header().switch_id,
            &envelope,
        );
        self.producer.send(&out).await.unwrap();
    }

    async fn install(&mut self, switch: &str, rule: &Rule) -> SwitchResult {
        let header = self.header(switch);
        self.call(SwitchCommand::InstallRule {
            header,
            rule: rule.clone(),
        })
        .await
    }

    async fn remove(&mut self, switch: &str, cookie: u64) -> SwitchResult {
        let header = self.header(switch);
        self.call(SwitchCommand::RemoveRule { header, cookie })
            .await
    }

    async fn verify(&mut self, switch: &str, expected: &Rule) -> SwitchResult {
        let header = self.header(switch);
        self.call(SwitchCommand::VerifyRule {
            header,
            expected: expected.clone(),
        })
        .await
    }

    async fn dump(&mut self, switch: &str) -> SwitchResult {
        let header = self.header(switch);
        self.call(SwitchCommand::DumpRules { header }).await
    }

    /// Sends a command and waits for its reply.
    async fn call(&mut self, command: SwitchCommand) -> SwitchResult {
        let command_id = command.header().command_id.clone();
        self.send(&command).await;
        self.reply(&command_id).await.result
    }

    async fn reply(&mut self, command_id: &str) -> SwitchReply {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(reply) = self.received.get(command_id) {
                return reply.clone();
            }
            let message = tokio::time::timeout_at(deadline, self.replies.recv())
                .await
                .unwrap_or_else(|_| panic!("no reply to {command_id}"))
                .unwrap();
            let envelope = Envelope::decode(message.payload().unwrap(), usize::MAX).unwrap();
            let SwitchResponse::SwitchReply(reply) = envelope.open().unwrap();
            assert_eq!(message.key(), Some(reply.switch_id.as_bytes()));
            self.reply_created_at
                .insert(reply.command_id.clone(), envelope.created_at);
            self.received.insert(reply.command_id.clone(), reply);
        }
    }

    async fn http(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn put_faults(&self, body: Value) {
        let (status, answer) = self.http(reqwest::Method::PUT, "/faults", Some(body)).await;
        assert_eq!(status, 200, "{answer}");
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.http(reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(status, 200, "{answer}");
        answer
    }

    async fn switch_view(&self, switch: &str) -> Value {
        let (status, view) = self
            .http(reqwest::Method::GET, &format!("/switches/{switch}"), None)
            .await;
        assert_eq!(status, 200, "{view}");
        view
    }
}

/// A consumer of every partition of `topic` from the beginning.
fn reader(broker: &TestBroker, topic: Topic) -> StreamConsumer {
    let kafka = &broker.kafka;
    let consumer: StreamConsumer = wfm_runtime::producer::reader_config(kafka, "test-reader")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..kafka.partitions_of(topic) {
        assignment
            .add_partition_offset(&broker.topic(topic), partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    consumer
}

fn rule(kind: RuleKind, cookie: u64) -> Rule {
    let (vlan, meter, out_port) = match kind {
        RuleKind::Ingress => (
            vec![VlanAction::Push { vlan_id: 1000 }],
            Some(Meter {
                meter_id: 32,
                rate_kbps: 10_000,
            }),
            9,
        ),
        RuleKind::Transit => (vec![], None, 9),
        RuleKind::Egress => (
            vec![VlanAction::Pop, VlanAction::Set { vlan_id: 300 }],
            None,
            2,
        ),
    };
    Rule {
        cookie,
        kind,
        flow_id: format!("flow-{cookie}"),
        matches: RuleMatch {
            in_port: if kind == RuleKind::Ingress { 1 } else { 10 },
            vlan_id: Some(if kind == RuleKind::Ingress { 100 } else { 1000 }),
            inner_vlan_id: None,
        },
        actions: RuleActions { vlan, out_port },
        meter,
    }
}

const OK: SwitchResult = SwitchResult::Ok { rules: None };

fn code(result: &SwitchResult) -> Option<SwitchErrorCode> {
    match result {
        SwitchResult::Ok { .. } => None,
        SwitchResult::Error(error) => Some(error.code),
    }
}

#[tokio::test]
async fn simulator_rules_round_trip_for_every_kind() {
    let mut sim = Sim::start(&[]).await;
    let kinds = [RuleKind::Ingress, RuleKind::Transit, RuleKind::Egress];
    for (n, kind) in kinds.into_iter().enumerate() {
        let switch = switch_id(n as u64 + 1);
        let rule = rule(kind, 0x4000_0000_0000_0001 + n as u64);
        assert_eq!(sim.install(&switch, &rule).await, OK, "{kind:?}");
        assert_eq!(sim.install(&switch, &rule).await, OK, "repeat of {kind:?}");
        assert_eq!(sim.verify(&switch, &rule).await, OK);
        assert_eq!(
            sim.dump(&switch).await,
            SwitchResult::Ok {
                rules: Some(vec![rule.clone()])
            }
        );
        let view = sim.switch_view(&switch).await;
        assert_eq!(view["rules"], json!([rule]));
        let meters = if kind == RuleKind::Ingress {
            json!([rule.meter])
        } else {
            json!([])
        };
        assert_eq!(view["meters"], meters);

        let mut conflicting = rule.clone();
        conflicting.matches.vlan_id = Some(101);
        assert_eq!(
            code(&sim.install(&switch, &conflicting).await),
            Some(SwitchErrorCode::BadCommand)
        );
        match sim.verify(&switch, &conflicting).await {
            SwitchResult::Error(error) => {
                assert_eq!(error.code, SwitchErrorCode::MissingOfFlows);
                assert_eq!(error.actual.as_deref(), Some(&rule));
            }
            ok => panic!("mismatch not reported: {ok:?}"),
        }

        assert_eq!(sim.remove(&switch, rule.cookie).await, OK);
        assert_eq!(
            sim.remove(&switch, rule.cookie).await,
            OK,
            "remove is idempotent"
        );
        assert_eq!(
            code(&sim.verify(&switch, &rule).await),
            Some(SwitchErrorCode::MissingOfFlows)
        );
        let view = sim.switch_view(&switch).await;
        assert_eq!(
            (view["rules"].clone(), view["meters"].clone()),
            (json!([]), json!([]))
        );
    }

    let mut bad_port = rule(RuleKind::Transit, 7);
    bad_port.actions.out_port = 4242;
    assert_eq!(
        code(&sim.install(&switch_id(1), &bad_port).await),
        Some(SwitchErrorCode::BadOutPort)
    );
    assert_eq!(
        code(&sim.install("00:00:00:00:00:00:99:99", &bad_port).await),
        Some(SwitchErrorCode::SwitchUnavailable)
    );
    let (status, _) = sim
        .http(
            reqwest::Method::GET,
            "/switches/00:00:00:00:00:00:99:99",
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (_, all) = sim.http(reqwest::Method::GET, "/switches", None).await;
    assert_eq!(all.as_array().unwrap().len(), 6);
}

#[tokio::test]
async fn simulator_fault_knobs_do_what_they_say() {
    let mut sim = Sim::start(&[]).await;
    let s1 = switch_id(1);
    let transit = rule(RuleKind::Transit, 1);

    // Error rate, with its code; then per command type.
    sim.put_faults(json!({"error_rate": 1.0, "error_code": "BAD_COMMAND"}))
        .await;
    assert_eq!(
        code(&sim.install(&s1, &transit).await),
        Some(SwitchErrorCode::BadCommand)
    );
    assert_eq!(
        sim.switch_view(&s1).await["rules"],
        json!([]),
        "a failed command has no effect"
    );
    sim.put_faults(json!({"error_rate": 0.0, "error_rate_by_command": {"remove_rule": 1.0}}))
        .await;
    assert_eq!(sim.install(&s1, &transit).await, OK);
    assert_eq!(
        code(&sim.remove(&s1, 1).await),
        Some(SwitchErrorCode::BadCommand)
    );
    sim.put_faults(json!({"error_rate_by_command": {}})).await;

    // Silence: no reply at all. The probe after it, to the same switch, is
    // answered on the same partition, so a reply to the first would be there by then.
    sim.put_faults(json!({"silence_rate": 1.0})).await;
    let header = sim.header(&s1);
    let silenced = header.command_id.clone();
    sim.send(&SwitchCommand::DumpRules { header }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.put_faults(json!({"silence_rate": 0.0})).await;
    assert!(matches!(
        sim.dump(&s1).await,
        SwitchResult::Ok { rules: Some(_) }
    ));
    assert!(
        !sim.received.contains_key(&silenced),
        "silenced command was answered"
    );

    // Disconnect: SWITCH_UNAVAILABLE, or nothing in silence mode; connect restores service.
    let view = sim
        .post(&format!("/switches/{s1}/disconnect"), json!({}))
        .await;
    assert_eq!(view["connected"], false);
    assert_eq!(
        code(&sim.dump(&s1).await),
        Some(SwitchErrorCode::SwitchUnavailable)
    );
    assert_eq!(
        code(&sim.dump(&switch_id(2)).await),
        None,
        "other switches stay connected"
    );
    sim.put_faults(json!({"disconnect_mode": "silence"})).await;
    let header = sim.header(&s1);
    let unanswered = header.command_id.clone();
    sim.send(&SwitchCommand::DumpRules { header }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.post(&format!("/switches/{s1}/connect"), json!({}))
        .await;
    assert_eq!(sim.verify(&s1, &transit).await, OK);
    assert!(
        !sim.received.contains_key(&unanswered),
        "disconnected switch answered"
    );

    // Fail the next N commands on one switch only.
    let view = sim
        .post(
            &format!("/switches/{s1}/fail-next"),
            json!({"count": 2, "code": "BAD_OUT_PORT"}),
        )
        .await;
    assert_eq!(view["fail_next"], 2);
    assert_eq!(
        code(&sim.dump(&switch_id(2)).await),
        None,
        "other switches unaffected"
    );
    for _ in 0..2 {
        assert_eq!(
            code(&sim.verify(&s1, &transit).await),
            Some(SwitchErrorCode::BadOutPort)
        );
    }
    assert_eq!(sim.verify(&s1, &transit).await, OK);

    // Latency delays the reply, not the switch.
    sim.put_faults(json!({"latency_ms": 400})).await;
    let header = sim.header(&s1);
    let delayed = header.command_id.clone();
    let sent_at = wfm_protocol::now_ms();
    sim.send(&SwitchCommand::RemoveRule { header, cookie: 1 })
        .await;
    sim.reply(&delayed).await;
    let waited = sim.reply_created_at[&delayed] - sent_at;
    assert!(waited >= 400, "reply came after {waited} ms");
    sim.put_faults(json!({"latency_ms": {"distribution": "uniform", "min_ms": 0, "max_ms": 5}}))
        .await;

    // Invalid settings are refused with a reason and change nothing.
    let (status, answer) = sim
        .http(
            reqwest::Method::PUT,
            "/faults",
            Some(json!({"silence_rate": 1.5})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("silence_rate"),
        "{answer}"
    );
    let (status, answer) = sim
        .http(
            reqwest::Method::PUT,
            "/faults",
            Some(json!({"error_rate": "high"})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    let (_, faults) = sim.http(reqwest::Method::GET, "/faults", None).await;
    assert_eq!(faults["silence_rate"], 0.0);
    assert_eq!(faults["latency_ms"]["max_ms"], 5);
    assert_eq!(faults["disconnect_mode"], "silence");
}

#[tokio::test]
async fn simulator_publishes_its_topology_and_takes_faults_from_flags() {
    let dir = std::env::temp_dir().join(format!("wfm-sim-topology-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("net.toml");
    std::fs::write(
        &path,
        r#"
        [[switches]]
        switch_id = "00:00:00:00:00:00:00:0a"
        ports = [1, 2, 3]
        [[switches]]
        switch_id = "00:00:00:00:00:00:00:0b"
        ports = [3, 1, 2]
        [[switches]]
        switch_id = "00:00:00:00:00:00:00:0c"
        ports = [1, 2, 3]
        [[links]]
        src = { switch_id = "00:00:00:00:00:00:00:0a", port = 2 }
        dst = { switch_id = "00:00:00:00:00:00:00:0b", port = 2 }
        bandwidth_kbps = 1000000
        latency_ms = 2
        [[links]]
        src = { switch_id = "00:00:00:00:00:00:00:0b", port = 3 }
        dst = { switch_id = "00:00:00:00:00:00:00:0c", port = 3 }
        bandwidth_kbps = 1000000
        latency_ms = 4
        "#,
    )
    .unwrap();
    let mut sim = Sim::start(&[
        "--topology",
        path.to_str().unwrap(),
        "--error-rate-for",
        "dump_rules=1",
        "--error-code",
        "SWITCH_UNAVAILABLE",
    ])
    .await;

    let topic = sim.broker.topic(Topic::Topology);
    let records = read_topic(&sim.broker.kafka, &topic, Duration::from_secs(20), |r| {
        r.len() >= 7
    })
    .await;
    let mut by_key = HashMap::new();
    for record in &records {
        let decoded: TopologyRecord = record.envelope().unwrap().open().unwrap();
        assert_eq!(record.key.as_deref(), Some(decoded.key().as_str()));
        by_key.insert(decoded.key(), decoded);
    }
    assert_eq!(by_key.len(), 7, "3 switches and 2 links in both directions");
    let TopologyRecord::Switch(b) = &by_key["00:00:00:00:00:00:00:0b"] else {
        panic!("switch record expected")
    };
    assert_eq!(b.ports, vec![1, 2, 3]);
    let TopologyRecord::Link(link) = &by_key["00:00:00:00:00:00:00:0c/3-00:00:00:00:00:00:00:0b/3"]
    else {
        panic!("reverse link expected")
    };
    assert_eq!((link.bandwidth_kbps, link.latency_ms), (1_000_000, 4));

    let (_, faults) = sim.http(reqwest::Method::GET, "/faults", None).await;
    assert_eq!(faults["error_rate_by_command"], json!({"dump_rules": 1.0}));
    assert_eq!(
        code(&sim.dump("00:00:00:00:00:00:00:0c").await),
        Some(SwitchErrorCode::SwitchUnavailable)
    );
    assert_eq!(sim.remove("00:00:00:00:00:00:00:0c", 1).await, OK);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn simulator_dead_letters_malformed_commands_and_keeps_serving() {
    let mut sim = Sim::start(&[]).await;
    let s1 = switch_id(1);
    let switch_topic = sim.broker.topic(Topic::Switch);
    let garbage = Outgoing {
        topic: switch_topic.clone(),
        key: s1.clone(),
        partition: None,
        value: Some(b"{not a command".to_vec()),
    };
    sim.producer.send(&garbage).await.unwrap();
    // Well-formed, but keyed by another switch than it names: it could be reordered.
    let header = sim.header(&s1);
    let misrouted = Envelope::new(
        &SwitchCommand::DumpRules { header },
        "test",
        "corr-misrouted",
    )
    .unwrap();
    sim.producer
        .send(&Outgoing::envelope(&switch_topic, switch_id(2), &misrouted))
        .await
        .unwrap();
    assert_eq!(sim.install(&s1, &rule(RuleKind::Transit, 5)).await, OK);

    let dlq = read_topic(
        &sim.broker.kafka,
        &sim.broker.topic(Topic::Dlq),
        Duration::from_secs(20),
        |r| r.len() >= 2,
    )
    .await;
    let mut categories: Vec<String> = dlq
        .iter()
        .map(|r| {
            let DlqMessage::DeadLetter(letter) = r.envelope().unwrap().open().unwrap();
            assert_eq!(letter.origin_topic, switch_topic);
            letter.category
        })
        .collect();
    categories.sort();
    assert_eq!(categories, vec!["invalid_envelope", "rejected"]);
    drop(sim.process);
}

/// Replies per second with zero latency while the simulator holds 100,000+
/// rules on 2,000 switches. Run with
/// `cargo test --release --test it simulator_reply_throughput -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "measurement, not a test"]
async fn simulator_reply_throughput() {
    const SWITCHES: u64 = 2_000;
    const RULES: u64 = 100_000;
    const PROBES: u64 = 20_000;
    let dir = std::env::temp_dir().join(format!("wfm-sim-bench-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("net.json");
    let topology = wfm_simulators::topology::Topology::ring(SWITCHES);
    std::fs::write(&path, serde_json::to_vec(&topology).unwrap()).unwrap();
    let mut sim = Sim::start(&["--topology", path.to_str().unwrap()]).await;

    let round = |sim: &mut Sim, count: u64, offset: u64| {
        (0..count)
            .map(|n| {
                let switch = switch_id(n % SWITCHES + 1);
                let mut header = sim.header(&switch);
                header.command_id = format!("bench-{}", n + offset);
                let mut rule = rule(RuleKind::Transit, n + offset + 1);
                rule.flow_id = format!("flow-{n}");
                SwitchCommand::InstallRule { header, rule }
            })
            .collect::<Vec<_>>()
    };
    for (phase, count, offset) in [("load", RULES, 0), ("measure", PROBES, RULES)] {
        let commands = round(&mut sim, count, offset);
        let started = Instant::now();
        let outs: Vec<Outgoing> = commands
            .iter()
            .map(|c| {
                let envelope = Envelope::new(c, "bench", "bench").unwrap();
                Outgoing::envelope(
                    sim.broker.topic(Topic::Switch),
                    &c.header().switch_id,
                    &envelope,
                )
            })
            .collect();
        sim.producer.send_all(&outs).await.unwrap();
        let produced = started.elapsed();
        for command in &commands {
            let reply = sim.reply(&command.header().command_id).await;
            assert_eq!(reply.result, OK);
        }
        let elapsed = started.elapsed();
        println!(
            "{phase}: {count} install commands produced in {produced:?}, all {count} replies in {elapsed:?}: {:.0} replies/s",
            count as f64 / elapsed.as_secs_f64()
        );
    }
    let (_, all) = sim.http(reqwest::Method::GET, "/switches", None).await;
    let rules: usize = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rules"].as_array().unwrap().len())
        .sum();
    println!("rules held: {rules} on {SWITCHES} switches");
    assert_eq!(rules as u64, RULES + PROBES);
    std::fs::remove_dir_all(&dir).unwrap();
}
