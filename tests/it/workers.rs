//! The worker spokes against a real broker, with the simulator and the
//! coordinator as processes and the spokes in-process (so that a test can
//! restart them and read their counters).

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wfm_protocol::flow::{FlowEndpoint, FlowSpec};
use wfm_protocol::resources::{
    AllocateRequest, Allocated, AllocationErrorCode, DeallocateRequest, ReplyTo, ResourcesCommand,
    ResourcesReply,
};
use wfm_protocol::speaker::{
    JobCompleted, OperationOutcome, SpeakerJob, SpeakerMessage, SpeakerReply, SwitchAction,
    SwitchOperation,
};
use wfm_protocol::switch::{
    Rule, RuleActions, RuleKind, RuleMatch, SwitchCommand, SwitchReply, SwitchResult,
};
use wfm_protocol::topology::switch_id;
use wfm_protocol::{ids, Envelope, Topic};
use wfm_runtime::{Outgoing, Producer, Registry, Service};
use wfm_workers::{ResourcesConfig, Speaker, SpeakerConfig, SpeakerStats};

use crate::harness::{eventually, free_port, read_topic, TestBroker, WfmProcess};

const WAIT: Duration = Duration::from_secs(30);

/// A spoke running in this process until [`InProcess::stop`].
struct InProcess {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    fn service(broker: &TestBroker) -> (Service, CancellationToken) {
        let shutdown = CancellationToken::new();
        let service =
            Service::new(broker.kafka.clone(), Registry::default(), shutdown.clone()).unwrap();
        (service, shutdown)
    }

    fn resources(broker: &TestBroker) -> Self {
        let (service, shutdown) = Self::service(broker);
        let task = tokio::spawn(wfm_workers::run_resources(
            service,
            ResourcesConfig::default(),
        ));
        Self { shutdown, task }
    }

    fn speaker(broker: &TestBroker, config: SpeakerConfig) -> (Self, SpeakerStats) {
        let (service, shutdown) = Self::service(broker);
        let speaker = Speaker::new(config);
        let stats = speaker.stats();
        let task = tokio::spawn(speaker.run(service));
        (Self { shutdown, task }, stats)
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        (&mut self.task).await.unwrap().unwrap();
    }
}

/// A failed assertion must not leave the spoke running against a broker about to go away.
impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A simulator process on its own control port, with `args` added.
async fn simulator(broker: &TestBroker, args: &[&str]) -> (WfmProcess, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut all = vec!["simulator", "--simulator-addr", &addr];
    all.extend_from_slice(args);
    let process = WfmProcess::spawn(&all, Some(&broker.kafka)).await;
    (process, format!("http://{addr}"))
}

/// Two switches joined by one link of `bandwidth_kbps` (ports 3 ↔ 3, so customers have 1 and 2), as a topology file.
fn two_switch_topology(bandwidth_kbps: u64) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("wfm-two-{}.json", rand::random::<u64>()));
    let topology = serde_json::json!({
        "switches": [
            { "switch_id": switch_id(1), "ports": [1, 2, 3] },
            { "switch_id": switch_id(2), "ports": [1, 2, 3] }
        ],
        "links": [{
            "src": { "switch_id": switch_id(1), "port": 3 },
            "dst": { "switch_id": switch_id(2), "port": 3 },
            "bandwidth_kbps": bandwidth_kbps,
            "latency_ms": 1
        }]
    });
    std::fs::write(&path, topology.to_string()).unwrap();
    path
}

async fn send<M: wfm_protocol::Message>(
    broker: &TestBroker,
    topic: Topic,
    key: &str,
    message: &M,
    message_id: &str,
) {
    let envelope = Envelope::new(message, "test", "corr")
        .unwrap()
        .with_message_id(message_id);
    Producer::new(&broker.kafka)
        .unwrap()
        .send(&Outgoing::envelope(broker.topic(topic), key, &envelope))
        .await
        .unwrap();
}

/// Every message on the hub topic with this message id, decoded; waits for `count` of them.
async fn replies<M: wfm_protocol::Message>(
    broker: &TestBroker,
    message_id: &str,
    count: usize,
) -> Vec<M> {
    let matching =
        |r: &crate::harness::Record| r.envelope().is_some_and(|e| e.message_id == message_id);
    let records = read_topic(&broker.kafka, &broker.topic(Topic::Hub), WAIT, |records| {
        records.iter().filter(|r| matching(r)).count() >= count
    })
    .await;
    let found: Vec<M> = records
        .iter()
        .filter(|r| matching(r))
        .map(|r| r.envelope().unwrap().open().unwrap())
        .collect();
    assert!(
        found.len() >= count,
        "{count} replies {message_id}, got {}",
        found.len()
    );
    found
}

fn flow(id: &str, src: (u64, u32, u16), dst: (u64, u32, u16), bandwidth: u64) -> FlowSpec {
    let endpoint = |(n, port, vlan): (u64, u32, u16)| FlowEndpoint {
        switch_id: switch_id(n),
        port_number: port,
        vlan_id: vlan,
        inner_vlan_id: 0,
    };
    FlowSpec {
        flow_id: id.into(),
        source: endpoint(src),
        destination: endpoint(dst),
        maximum_bandwidth: bandwidth,
        ignore_bandwidth: false,
        description: String::new(),
        priority: None,
        encapsulation_type: Default::default(),
    }
}

fn hub_reply_to(broker: &TestBroker, key: &str) -> ReplyTo {
    ReplyTo {
        topic: broker.topic(Topic::Hub),
        key: key.into(),
    }
}

async fn request_allocate(broker: &TestBroker, request_id: &str, spec: FlowSpec) {
    let command = ResourcesCommand::Allocate(AllocateRequest {
        request_id: request_id.into(),
        reply_to: hub_reply_to(broker, &spec.flow_id),
        flow: spec.clone(),
    });
    send(
        broker,
        Topic::Resources,
        &spec.flow_id,
        &command,
        request_id,
    )
    .await;
}

async fn allocate(broker: &TestBroker, request_id: &str, spec: FlowSpec) -> ResourcesReply {
    request_allocate(broker, request_id, spec).await;
    let reply_id = ids::derive(&["resources-reply", request_id]);
    replies(broker, &reply_id, 1).await.remove(0)
}

fn allocated(reply: ResourcesReply) -> Allocated {
    match reply {
        ResourcesReply::Allocated(allocated) => allocated,
        other => panic!("expected an allocation, got {other:?}"),
    }
}

fn failure_code(reply: &ResourcesReply) -> Option<AllocationErrorCode> {
    match reply {
        ResourcesReply::AllocationFailed(failed) => Some(failed.code),
        _ => None,
    }
}

async fn deallocate(broker: &TestBroker, request_id: &str, flow_id: &str) -> ResourcesReply {
    let command = ResourcesCommand::Deallocate(DeallocateRequest {
        request_id: request_id.into(),
        flow_id: flow_id.into(),
        reply_to: hub_reply_to(broker, flow_id),
    });
    send(broker, Topic::Resources, flow_id, &command, request_id).await;
    replies(broker, &ids::derive(&["resources-reply", request_id]), 1)
        .await
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_allocate_deallocate_round_trip_is_idempotent() {
    let broker = TestBroker::start().await;
    let (_simulator, _) = simulator(&broker, &[]).await;
    let resources = InProcess::resources(&broker);

    let spec = flow("f1", (1, 1, 100), (3, 2, 0), 1_000);
    let first = allocated(allocate(&broker, "r1", spec.clone()).await);
    assert_eq!(first.path.forward.first().unwrap().src_switch, switch_id(1));
    assert_eq!(first.path.forward.last().unwrap().dst_switch, switch_id(3));
    assert_eq!(first.path.reverse.first().unwrap().src_switch, switch_id(3));
    assert!(first.resources.forward_meter_id.is_some());
    assert_ne!(
        first.resources.forward_cookie,
        first.resources.reverse_cookie
    );

    // A retried request (new request id, same flow) gets the same allocation.
    let again = allocated(allocate(&broker, "r2", spec.clone()).await);
    assert_eq!((again.path, again.resources), (first.path, first.resources));
    // A second flow on the same endpoint conflicts.
    let conflict = allocate(&broker, "r3", flow("f2", (1, 1, 100), (2, 1, 0), 0)).await;
    assert_eq!(
        failure_code(&conflict),
        Some(AllocationErrorCode::EndpointConflict)
    );
    let unknown = allocate(&broker, "r4", flow("f3", (99, 1, 0), (2, 1, 0), 0)).await;
    assert_eq!(
        failure_code(&unknown),
        Some(AllocationErrorCode::UnknownSwitch)
    );

    assert!(matches!(
        deallocate(&broker, "r5", "f1").await,
        ResourcesReply::Deallocated(_)
    ));
    assert!(matches!(
        deallocate(&broker, "r6", "f1").await,
        ResourcesReply::Deallocated(_)
    ));
    // Freed: the endpoint is available again.
    allocated(allocate(&broker, "r7", flow("f2", (1, 1, 100), (2, 1, 0), 0)).await);
    resources.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_bandwidth_accounting_is_exact() {
    let broker = TestBroker::start().await;
    // Default ring: 1 — 2 directly (1 ms) or the long way round; links of 10 Gbps.
    let (_simulator, _) = simulator(&broker, &[]).await;
    let resources = InProcess::resources(&broker);
    let direct = |a: &Allocated| a.path.forward.len() == 1 && a.path.reverse.len() == 1;

    let a = allocated(allocate(&broker, "a", flow("a", (1, 1, 0), (2, 1, 0), 6_000_000)).await);
    assert!(direct(&a));
    let b = allocated(allocate(&broker, "b", flow("b", (1, 2, 0), (2, 2, 0), 4_000_000)).await);
    assert!(direct(&b), "the direct link has exactly 4 Gbps left");
    let c = allocated(allocate(&broker, "c", flow("c", (1, 3, 0), (2, 3, 0), 1)).await);
    assert!(!direct(&c), "the direct link is exactly full: {:?}", c.path);
    deallocate(&broker, "da", "a").await;
    let d = allocated(allocate(&broker, "d", flow("d", (1, 4, 0), (2, 4, 0), 6_000_000)).await);
    assert!(direct(&d), "a's bandwidth was returned");
    resources.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_two_flows_compete_for_the_last_bandwidth_and_one_wins() {
    let broker = TestBroker::start().await;
    let topology = two_switch_topology(1_000);
    let (_simulator, _) = simulator(&broker, &["--topology", topology.to_str().unwrap()]).await;
    let resources = InProcess::resources(&broker);

    request_allocate(&broker, "x", flow("x", (1, 1, 0), (2, 1, 0), 600)).await;
    request_allocate(&broker, "y", flow("y", (1, 2, 0), (2, 2, 0), 600)).await;
    let x: ResourcesReply = replies(&broker, &ids::derive(&["resources-reply", "x"]), 1)
        .await
        .remove(0);
    let y: ResourcesReply = replies(&broker, &ids::derive(&["resources-reply", "y"]), 1)
        .await
        .remove(0);
    let codes = [failure_code(&x), failure_code(&y)];
    assert_eq!(
        codes.iter().filter(|c| c.is_none()).count(),
        1,
        "{x:?} / {y:?}"
    );
    assert!(codes.contains(&Some(AllocationErrorCode::NotEnoughBandwidth)));
    resources.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_allocation_after_restart_sees_earlier_allocations() {
    let broker = TestBroker::start().await;
    let topology = two_switch_topology(1_000);
    let (_simulator, _) = simulator(&broker, &["--topology", topology.to_str().unwrap()]).await;
    let resources = InProcess::resources(&broker);
    let first = allocated(allocate(&broker, "p1", flow("p", (1, 1, 0), (2, 1, 0), 700)).await);
    allocated(allocate(&broker, "q1", flow("q", (1, 2, 0), (2, 2, 0), 100)).await);
    deallocate(&broker, "q2", "q").await;
    resources.stop().await;

    let resources = InProcess::resources(&broker);
    let late = allocate(&broker, "r1", flow("r", (1, 2, 5), (2, 2, 5), 400)).await;
    assert_eq!(
        failure_code(&late),
        Some(AllocationErrorCode::NotEnoughBandwidth)
    );
    let fits = allocated(allocate(&broker, "s1", flow("s", (1, 2, 6), (2, 2, 6), 300)).await);
    assert_ne!(
        fits.resources.forward_cookie,
        first.resources.forward_cookie
    );
    // The flow allocated before the restart is still held, with the same resources.
    let again = allocated(allocate(&broker, "p2", flow("p", (1, 1, 0), (2, 1, 0), 700)).await);
    assert_eq!(again.resources, first.resources);
    resources.stop().await;
}

/// `wfm.resources` has one partition, so a second resource manager is a
/// standby: it owns nothing until the active one is SIGKILLed (no goodbye to
/// the group), then it is handed the partition and restores every allocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_a_standby_resource_manager_takes_over_every_allocation() {
    let broker = TestBroker::start().await;
    let topology = two_switch_topology(1_000);
    let (_simulator, _) = simulator(&broker, &["--topology", topology.to_str().unwrap()]).await;
    let resources_process =
        || WfmProcess::spawn(&["worker", "--role", "resources"], Some(&broker.kafka));
    let active = resources_process().await;
    let first = allocated(allocate(&broker, "p1", flow("p", (1, 1, 0), (2, 1, 0), 700)).await);
    let _standby = resources_process().await;
    allocated(allocate(&broker, "q1", flow("q", (1, 2, 0), (2, 2, 0), 100)).await);
    active.kill().await;

    // 800 of 1000 are held: 300 no longer fits, 200 does, and p keeps its resources.
    let late = allocate(&broker, "r1", flow("r", (1, 2, 5), (2, 2, 5), 300)).await;
    assert_eq!(
        failure_code(&late),
        Some(AllocationErrorCode::NotEnoughBandwidth)
    );
    allocated(allocate(&broker, "s1", flow("s", (1, 2, 6), (2, 2, 6), 200)).await);
    let again = allocated(allocate(&broker, "p2", flow("p", (1, 1, 0), (2, 1, 0), 700)).await);
    assert_eq!(again.resources, first.resources);
}

fn install(switch: u64, cookie: u64) -> SwitchOperation {
    SwitchOperation {
        switch_id: switch_id(switch),
        action: SwitchAction::Install {
            rule: Rule {
                cookie,
                kind: RuleKind::Ingress,
                flow_id: "flow-1".into(),
                matches: RuleMatch {
                    in_port: 1,
                    vlan_id: Some(100),
                    inner_vlan_id: None,
                },
                actions: RuleActions {
                    vlan: Vec::new(),
                    out_port: 2,
                },
                meter: None,
            },
        },
    }
}

async fn run_job(broker: &TestBroker, job_id: &str, operations: Vec<SwitchOperation>) {
    let job = SpeakerJob {
        job_id: job_id.into(),
        flow_id: "flow-1".into(),
        request_id: "req-1".into(),
        operations,
        reply_to: hub_reply_to(broker, "flow-1"),
        deadline: wfm_protocol::now_ms() + 60_000,
    };
    let message = SpeakerMessage::RunJob(job);
    send(
        broker,
        Topic::SpeakerWorker,
        job_id,
        &message,
        &format!("run-{job_id}-{}", rand::random::<u32>()),
    )
    .await;
}

async fn job_result(broker: &TestBroker, job_id: &str, count: usize) -> JobCompleted {
    let id = ids::derive(&["speaker-job-completed", job_id]);
    let SpeakerReply::JobCompleted(result) = replies(broker, &id, count).await.remove(0);
    result
}

fn quick_speaker() -> SpeakerConfig {
    SpeakerConfig {
        max_attempts: 3,
        initial_backoff_ms: 50,
        max_backoff_ms: 200,
        command_timeout_ms: 1_500,
        ..SpeakerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_speaker_job_of_n_commands_completes_once() {
    let broker = TestBroker::start().await;
    let (_simulator, control) = simulator(&broker, &[]).await;
    let _coordinator = WfmProcess::spawn(&["coordinator"], Some(&broker.kafka)).await;
    let (speaker, stats) = InProcess::speaker(&broker, quick_speaker());

    let operations: Vec<SwitchOperation> = (1..=6).map(|n| install(n, 0x100 + n)).collect();
    run_job(&broker, "job-n", operations.clone()).await;
    let result = job_result(&broker, "job-n", 1).await;
    assert!(result.all_done(), "{:?}", result.failures());
    assert_eq!(result.results.len(), 6);
    assert!(result.results.iter().all(|r| r.attempts == 1));
    let installed: serde_json::Value = reqwest::get(format!("{control}/switches/{}", switch_id(4)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        installed.to_string().contains(&format!("{}", 0x104)),
        "{installed}"
    );

    // Delivered again: answered with the same result, nothing re-sent.
    run_job(&broker, "job-n", operations).await;
    let again = job_result(&broker, "job-n", 2).await;
    assert_eq!(again, result);
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.commands_sent, 6);
    assert_eq!(snapshot.duplicate_jobs, 1);
    assert_eq!(snapshot.jobs_completed, 1);
    speaker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_speaker_retries_a_failed_attempt_and_answers_its_late_reply_with_the_result() {
    let broker = TestBroker::start().await;
    let (_simulator, control) = simulator(&broker, &[]).await;
    let _coordinator = WfmProcess::spawn(&["coordinator"], Some(&broker.kafka)).await;
    let (speaker, stats) = InProcess::speaker(&broker, quick_speaker());
    let failing = switch_id(2);
    let status = reqwest::Client::new()
        .post(format!("{control}/switches/{failing}/fail-next"))
        .json(&serde_json::json!({ "count": 1, "code": "UNKNOWN" }))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");

    run_job(
        &broker,
        "job-r",
        (1..=3).map(|n| install(n, 0x200 + n)).collect(),
    )
    .await;
    let result = job_result(&broker, "job-r", 1).await;
    assert!(result.all_done(), "{:?}", result.failures());
    let attempts: Vec<u32> = result.results.iter().map(|r| r.attempts).collect();
    assert_eq!(attempts, vec![1, 2, 1]);
    assert_eq!(stats.snapshot().commands_retried, 1);

    // The first attempt's command, as the switch saw it, answered late with success.
    let commands = read_topic(
        &broker.kafka,
        &broker.topic(Topic::Switch),
        WAIT,
        |records| records.len() >= 4,
    )
    .await;
    let old = commands
        .iter()
        .filter_map(|r| r.envelope()?.open::<SwitchCommand>().ok())
        .map(|c| c.header().clone())
        .find(|h| h.switch_id == failing && h.attempt == 1)
        .expect("attempt 1 was sent");
    let late = SpeakerMessage::SwitchReply(SwitchReply {
        command_id: old.command_id.clone(),
        attempt: 1,
        switch_id: failing.clone(),
        result: SwitchResult::Ok { rules: None },
    });
    send(
        &broker,
        Topic::SpeakerWorker,
        &old.reply_key,
        &late,
        "late-reply",
    )
    .await;
    assert!(
        eventually(WAIT, || stats.snapshot().stale_replies_ignored >= 1).await,
        "{:?}",
        stats.snapshot()
    );
    // A reply to a completed job may be the replay of the one that completed
    // it, whose result a crash cut off: the result goes out again, unchanged.
    assert_eq!(job_result(&broker, "job-r", 2).await, result);
    let snapshot = stats.snapshot();
    assert_eq!((snapshot.jobs_completed, snapshot.commands_sent), (1, 4));
    speaker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_speaker_silent_switch_times_out_and_fails_the_job() {
    let broker = TestBroker::start().await;
    let (_simulator, control) = simulator(&broker, &["--disconnect-mode", "silence"]).await;
    let _coordinator = WfmProcess::spawn(&["coordinator"], Some(&broker.kafka)).await;
    let config = SpeakerConfig {
        command_timeout_ms: 300,
        ..quick_speaker()
    };
    let (speaker, stats) = InProcess::speaker(&broker, config);
    let silent = switch_id(3);
    let status = reqwest::Client::new()
        .post(format!("{control}/switches/{silent}/disconnect"))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");

    run_job(&broker, "job-s", vec![install(1, 0x301), install(3, 0x303)]).await;
    let result = job_result(&broker, "job-s", 1).await;
    assert_eq!(result.results[0].outcome, OperationOutcome::Done);
    assert_eq!(result.results[1].attempts, 3);
    assert!(
        matches!(
            &result.results[1].outcome,
            OperationOutcome::Failed { code: None, .. }
        ),
        "{:?}",
        result.results[1]
    );
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.commands_timed_out, 3);
    assert_eq!((snapshot.jobs_failed, snapshot.operations_failed), (1, 1));
    speaker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_speaker_runs_an_unfinished_job_again_after_restart() {
    let broker = TestBroker::start().await;
    // Replies take long enough for the worker to stop while the job is in flight.
    let (_simulator, _) = simulator(&broker, &["--latency", "1500"]).await;
    let _coordinator = WfmProcess::spawn(&["coordinator"], Some(&broker.kafka)).await;
    let config = SpeakerConfig {
        command_timeout_ms: 10_000,
        ..quick_speaker()
    };
    let (first, first_stats) = InProcess::speaker(&broker, config.clone());
    run_job(&broker, "job-c", vec![install(1, 0x401), install(2, 0x402)]).await;
    assert!(eventually(WAIT, || first_stats.snapshot().commands_sent == 2).await);
    first.stop().await;

    // The inbox was not committed past the unfinished job: the successor
    // takes it again and sends its commands under the same ids.
    let (second, second_stats) = InProcess::speaker(&broker, config);
    let result = job_result(&broker, "job-c", 1).await;
    assert!(result.all_done(), "{:?}", result.failures());
    let snapshot = second_stats.snapshot();
    assert_eq!(snapshot.jobs_started, 1, "the job was taken again");
    assert_eq!(snapshot.jobs_completed, 1);
    assert!(result.results.iter().all(|r| r.attempts == 1));
    let commands = read_topic(
        &broker.kafka,
        &broker.topic(Topic::Switch),
        WAIT,
        |records| records.len() >= 4,
    )
    .await;
    let mut ids: Vec<String> = commands
        .iter()
        .filter_map(|r| r.envelope()?.open::<SwitchCommand>().ok())
        .map(|c| c.header().command_id.clone())
        .collect();
    assert_eq!(ids.len(), 4, "each command sent once by each worker");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2, "under the same ids: {ids:?}");
    second.stop().await;
}
