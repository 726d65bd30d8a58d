//! Chaos: a steady stream of creates and deletes while components are
//! SIGKILLed and restarted, switches fail, fall silent or disconnect, and
//! instances leave their consumer groups. Afterwards every request must have
//! had its answer and the invariant checker must find nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use wfm_check::{Options, Report, Sources, Violation};
use wfm_protocol::flow::FlowSpec;
use wfm_protocol::northbound::NorthboundReply;

use crate::system::{endpoint, flow, HubClient, System};

/// Longer than any request can take under the test timeouts (`TEST_CONFIG`):
/// 20 s forward, two rollback steps of 2 × 6 s.
const ANSWER: Duration = Duration::from_secs(60);
/// Concurrent create/delete cycles; each has flow endpoints of its own, so
/// that cycles never conflict with each other.
const CYCLES: u64 = 8;
/// Pause between a cycle's answer and its next request.
const PACE: Duration = Duration::from_millis(100);
/// Cycles that go through the northbound's REST API instead, on flows of
/// their own ([`spec`] numbers them after the Kafka cycles').
const REST_CYCLES: u64 = 2;

/// The requests of one load run.
#[derive(Debug, Default)]
struct Ledger {
    answered: usize,
    succeeded: usize,
    /// Requests without a terminal answer within [`ANSWER`].
    unanswered: Vec<String>,
}

/// Creates and deletes flows on [`CYCLES`] independent cycles until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    cycles: JoinSet<Ledger>,
}

impl Load {
    async fn start(system: &System) -> Self {
        let client = Arc::new(HubClient::start(&system.broker.kafka).await);
        let stop = Arc::new(AtomicBool::new(false));
        let mut cycles = JoinSet::new();
        for n in 0..CYCLES {
            cycles.spawn(cycle(client.clone(), spec(n), stop.clone()));
        }
        Self { stop, cycles }
    }

    /// Adds [`REST_CYCLES`] cycles through the northbound at `url`.
    fn through_the_api(&mut self, url: &str) {
        let api = Arc::new(RestClient {
            url: url.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
        });
        for n in CYCLES..CYCLES + REST_CYCLES {
            self.cycles
                .spawn(rest_cycle(api.clone(), spec(n), self.stop.clone()));
        }
    }

    /// Stops sending and waits for every request sent to be answered.
    async fn finish(mut self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Ledger::default();
        while let Some(ledger) = self.cycles.join_next().await {
            let ledger = ledger.expect("cycle does not panic");
            total.answered += ledger.answered;
            total.succeeded += ledger.succeeded;
            total.unanswered.extend(ledger.unanswered);
        }
        total
    }
}

/// Cycle `n`'s flow: between switches `n` and `n + 2` of the six-switch ring,
/// every third one a one-switch flow; VLANs unique to the cycle.
fn spec(n: u64) -> FlowSpec {
    let vlan = 100 + n as u16;
    let (a, b) = (1 + n % 6, 1 + (n + 2) % 6);
    let destination = if n.is_multiple_of(3) {
        endpoint(a, 2, vlan)
    } else {
        endpoint(b, 1, vlan)
    };
    flow(
        &format!("chaos-{n}"),
        endpoint(a, 1, vlan),
        destination,
        1_000,
    )
}

/// Create, await the answer, delete, await the answer, until `stop`; a cycle
/// always ends with a delete.
async fn cycle(client: Arc<HubClient>, spec: FlowSpec, stop: Arc<AtomicBool>) -> Ledger {
    let mut ledger = Ledger::default();
    while !stop.load(Ordering::Relaxed) {
        let create = client.create(&spec).await;
        ledger.record(&client, create).await;
        tokio::time::sleep(PACE).await;
        let delete = client.delete(&spec.flow_id).await;
        ledger.record(&client, delete).await;
        tokio::time::sleep(PACE).await;
    }
    ledger
}

impl Ledger {
    fn count(&mut self, answered: bool, succeeded: bool, request: String) {
        if answered {
            self.answered += 1;
            self.succeeded += usize::from(succeeded);
        } else {
            self.unanswered.push(request);
        }
    }

    async fn record(&mut self, client: &HubClient, request_id: String) {
        match client.outcome(&request_id, ANSWER).await {
            Some(reply) => {
                self.answered += 1;
                if matches!(
                    reply,
                    NorthboundReply::RequestFinished {
                        succeeded: true,
                        ..
                    }
                ) {
                    self.succeeded += 1;
                }
            }
            None => self.unanswered.push(request_id),
        }
    }
}

/// An operator's client of the REST API. The northbound may be down at any
/// moment, so a call that gets no HTTP answer is sent again; an answer that
/// leaves the outcome open (408: the hub did not answer in time) is settled
/// by reading the flow until it is in a final state.
struct RestClient {
    url: String,
    http: reqwest::Client,
}

/// What a flow read through the API shows.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Absent,
    Status(String),
}

impl RestClient {
    /// Sends until an HTTP answer comes back or `deadline` passes.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&FlowSpec>,
        deadline: Instant,
    ) -> Option<u16> {
        while Instant::now() < deadline {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.url));
            if let Some(spec) = body {
                request = request.json(spec);
            }
            match request.send().await {
                Ok(response) if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {}
                Ok(response) => return Some(response.status().as_u16()),
                Err(_) => {}
            }
            tokio::time::sleep(PACE).await;
        }
        None
    }

    async fn seen(&self, flow_id: &str) -> Option<Seen> {
        let response = self
            .http
            .get(format!("{}/v2/flows/{flow_id}", self.url))
            .send()
            .await
            .ok()?;
        match response.status().as_u16() {
            404 => Some(Seen::Absent),
            200 => {
                let body: serde_json::Value = response.json().await.ok()?;
                Some(Seen::Status(body["status"].as_str()?.to_owned()))
            }
            _ => None,
        }
    }

    /// Reads the flow until `done` holds for what the API shows, or `deadline` passes.
    async fn until(&self, flow_id: &str, deadline: Instant, done: impl Fn(&Seen) -> bool) -> bool {
        while Instant::now() < deadline {
            if self.seen(flow_id).await.is_some_and(|seen| done(&seen)) {
                return true;
            }
            tokio::time::sleep(PACE).await;
        }
        false
    }
}

fn is_final(seen: &Seen) -> bool {
    match seen {
        Seen::Absent => true,
        Seen::Status(status) => status != "IN_PROGRESS",
    }
}

/// [`cycle`] through the REST API. A request counts as answered once the
/// API shows its flow in a final state: `UP`, `DOWN` or `FAILED` (or gone)
/// after a create, gone or `FAILED` after a delete.
async fn rest_cycle(api: Arc<RestClient>, spec: FlowSpec, stop: Arc<AtomicBool>) -> Ledger {
    let mut ledger = Ledger::default();
    let flow_id = spec.flow_id.clone();
    let path = format!("/v2/flows/{flow_id}");
    while !stop.load(Ordering::Relaxed) {
        let deadline = Instant::now() + ANSWER;
        let created = api
            .call(reqwest::Method::POST, "/v2/flows", Some(&spec), deadline)
            .await;
        // 409: a create the client never heard back from went through after all.
        let settled = created.is_some() && api.until(&flow_id, deadline, is_final).await;
        ledger.count(
            settled,
            created == Some(200),
            format!("create {flow_id} ({created:?})"),
        );
        tokio::time::sleep(PACE).await;
        let deadline = Instant::now() + ANSWER;
        let deleted = loop {
            let status = api
                .call(reqwest::Method::DELETE, &path, None, deadline)
                .await;
            // 409: the flow is still busy with an earlier request.
            if status != Some(409) || Instant::now() >= deadline {
                break status;
            }
            tokio::time::sleep(PACE).await;
        };
        let settled = deleted.is_some()
            && api
                .until(&flow_id, deadline, |seen| match seen {
                    Seen::Absent => true,
                    Seen::Status(status) => status == "FAILED",
                })
                .await;
        ledger.count(
            settled,
            deleted == Some(200),
            format!("delete {flow_id} ({deleted:?})"),
        );
        tokio::time::sleep(PACE).await;
    }
    ledger
}

/// Runs the checker until it finds nothing (the last answers' effects may
/// still be on their way) or `patience` runs out; the last report either way.
async fn settled_check(system: &System, patience: Duration) -> Report {
    let sources = Sources {
        kafka: &system.broker.kafka,
        simulator_url: &system.simulator_url,
    };
    // Every request has been answered: nothing may still be IN_PROGRESS.
    let options = Options { stuck_after_ms: 0 };
    let deadline = Instant::now() + patience;
    loop {
        let snapshot = wfm_check::collect(&sources).await.expect("system readable");
        let report = wfm_check::check(&snapshot, &options);
        if report.is_clean() || Instant::now() >= deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn assert_nothing_lost(system: &System, load: Load) {
    let ledger = load.finish().await;
    assert!(
        ledger.unanswered.is_empty(),
        "unanswered: {:?}",
        ledger.unanswered
    );
    assert!(
        ledger.succeeded > 0,
        "the load got something done: {ledger:?}"
    );
    let report = settled_check(system, Duration::from_secs(15)).await;
    if !report.is_clean() {
        for violation in &report.violations {
            if let Violation::StuckInProgress { flow_id, .. }
            | Violation::OrphanRule { flow_id, .. }
            | Violation::BrokenHistory { flow_id, .. } = violation
            {
                let events = system.history(flow_id).await;
                let steps: Vec<String> = events
                    .iter()
                    .map(|e| {
                        format!(
                            "#{} at {} {:.8}->{:.8} {} {} {:?}->{:?} {}",
                            e.seq,
                            e.at,
                            e.prev_hash,
                            e.hash,
                            e.request_id,
                            e.action,
                            e.from_state,
                            e.to_state,
                            e.details
                        )
                    })
                    .collect();
                eprintln!("history of {flow_id}:\n{}", steps.join("\n"));
            }
        }
        panic!("{:#?}", report.violations);
    }
    eprintln!(
        "{} requests answered ({} succeeded); checked {} flows, {} rules, {} history events",
        ledger.answered, ledger.succeeded, report.flows, report.rules, report.history_events
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_each_component_under_load_loses_no_request() {
    let mut system = System::start().await;
    system.start_component("northbound").await;
    let mut load = Load::start(&system).await;
    load.through_the_api(&system.northbound_url);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for component in [
        "hub",
        "speaker",
        "resources",
        "coordinator",
        "northbound",
        "simulator",
    ] {
        system.kill(component).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        system.start_component(component).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert_nothing_lost(&system, load).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_errors_silence_and_disconnects_under_load_leave_nothing_behind() {
    let system = System::start().await;
    let load = Load::start(&system).await;
    let calm = serde_json::json!({ "error_rate": 0.0, "silence_rate": 0.0 });
    tokio::time::sleep(Duration::from_secs(2)).await;
    for burst in [
        serde_json::json!({ "error_rate": 0.5 }),
        serde_json::json!({ "silence_rate": 0.3 }),
    ] {
        system.put_faults(burst).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        system.put_faults(calm.clone()).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let switch = wfm_protocol::topology::switch_id(3);
    switch_control(&system, &switch, "disconnect").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    switch_control(&system, &switch, "connect").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_nothing_lost(&system, load).await;
}

/// Two instances of every scaled component share their inboxes through
/// their consumer groups; one of each is SIGKILLed in turn under load, and
/// the other must take over its partitions and its in-flight requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_takes_over_the_partitions_of_a_killed_one() {
    const SCALED: [(&str, &str); 4] = [
        ("hub-2", "hub"),
        ("resources-2", "resources"),
        ("speaker-2", "speaker"),
        ("coordinator-2", "coordinator"),
    ];
    let mut system = System::start().await;
    for (name, component) in SCALED {
        system.start_instance(name, component).await;
    }
    let load = Load::start(&system).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (_, component) in SCALED {
        system.kill(component).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert_nothing_lost(&system, load).await;
}

async fn switch_control(system: &System, switch_id: &str, action: &str) {
    let response = reqwest::Client::new()
        .post(format!(
            "{}/switches/{switch_id}/{action}",
            system.simulator_url
        ))
        .send()
        .await
        .expect("simulator reachable");
    assert!(response.status().is_success(), "{action} {switch_id}");
}
