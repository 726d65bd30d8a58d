//! `wfm bench`: a load generator through the REST API, measured against the
//! hop floor of the same broker in the same run.
//!
//! The hop floor is a bare produce→consume hop through the broker with the
//! system's own client settings. A multi-switch flow create is a chain of
//! [`HOPS_PER_CREATE`] such hops (northbound→hub, hub↔resources, then four
//! jobs of hub→speaker→switch→speaker→hub, and the flow record to the
//! observer), so its latency is reported as a ratio to hops × floor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio::sync::oneshot;
use wfm_protocol::flow::{FlowEndpoint, FlowStatus, FlowsMessage};
use wfm_protocol::history::{HistoryEvent, HistoryMessage};
use wfm_protocol::{Envelope, Topic};
use wfm_runtime::producer::{acknowledged, client_config, reader_config};
use wfm_runtime::{KafkaConfig, Outgoing, Producer};

use super::system::Cluster;
use crate::config::Config;

/// Sequential broker hops from the REST call to the `UP` flow record being seen.
pub const HOPS_PER_CREATE: usize = 20;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Base URL of the northbound API.
    #[arg(long, env = "WFM_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Flows to create (then delete).
    #[arg(long, default_value_t = 1000)]
    pub flows: usize,
    /// Requests in flight at once, end to end: a request holds its slot until
    /// its flow reaches a terminal state (or its call fails), so that
    /// `--concurrency 1` measures one request alone in the system.
    #[arg(long, default_value_t = 64,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub concurrency: usize,
    /// Hop-floor samples.
    #[arg(long, default_value_t = 200)]
    pub pings: usize,
    /// Per-flow bandwidth in kbps.
    #[arg(long, default_value_t = 100)]
    pub bandwidth: u64,
    /// Give up on a flow that has not reached a terminal state after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Skip deleting the flows afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct Latencies {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latencies {
    fn of(samples: &mut [Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort();
        let at = |q: f64| {
            let index = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[index].as_secs_f64() * 1000.0
        };
        Some(Self {
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        })
    }
}

#[derive(Debug, Serialize)]
pub struct PhaseReport {
    pub requested: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// No terminal state within the timeout.
    pub stuck: usize,
    pub per_second: f64,
    pub latency: Option<Latencies>,
    /// Errors by HTTP status or failure reason, with counts.
    pub errors: HashMap<String, usize>,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub hop_floor: Latencies,
    pub hops_per_create: usize,
    pub create: PhaseReport,
    pub delete: Option<PhaseReport>,
    /// Median time spent in each create state, from the flows' history.
    pub create_state_p50_ms: HashMap<String, f64>,
    /// Create latency p50 / (hops × floor p50); the target is ≤ 1.5.
    pub create_p50_ratio: Option<f64>,
    /// Create latency p99 / (hops × floor p50); the target is ≤ 3.
    pub create_p99_ratio: Option<f64>,
}

pub async fn run(config: Config, args: BenchArgs) -> anyhow::Result<()> {
    let cluster = Cluster::join(config).await?;
    let kafka = cluster.config.kafka.clone();
    let floor = hop_floor(&kafka, args.pings).await?;
    let watcher = FlowWatcher::start(&kafka).await?;
    let http = reqwest::Client::new();
    let run_id = format!("{:x}", rand::random::<u32>());
    let ids: Vec<String> = (0..args.flows)
        .map(|i| format!("bench-{run_id}-{i}"))
        .collect();

    let create = phase("create", &ids, &args, &watcher, |i, flow_id| {
        let body = flow_body(i, flow_id, args.bandwidth);
        http.post(format!("{}/v2/flows", args.url)).json(&body)
    })
    .await;
    let histories = read_histories(&kafka, &ids).await?;
    let delete = if args.keep {
        None
    } else {
        let ups: Vec<String> = ids
            .iter()
            .filter(|id| watcher.status(id) == Some(FlowStatus::Up))
            .cloned()
            .collect();
        watcher.clear();
        Some(
            phase("delete", &ups, &args, &watcher, |_, flow_id| {
                http.delete(format!("{}/v2/flows/{flow_id}", args.url))
            })
            .await,
        )
    };

    let base = HOPS_PER_CREATE as f64 * floor.p50_ms;
    let report = BenchReport {
        create_p50_ratio: create.latency.as_ref().map(|l| l.p50_ms / base),
        create_p99_ratio: create.latency.as_ref().map(|l| l.p99_ms / base),
        hop_floor: floor,
        hops_per_create: HOPS_PER_CREATE,
        create,
        delete,
        create_state_p50_ms: state_medians(&histories),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// A flow of its own for request `i`: distinct endpoints on the simulator's
/// default ring (customer ports 1–4 at the source, 5–8 at the destination).
fn flow_body(i: usize, flow_id: &str, bandwidth: u64) -> serde_json::Value {
    let switch = |n: usize| wfm_protocol::topology::switch_id((n % 6 + 1) as u64);
    let port = (i / 6 % 4) as u32 + 1;
    let vlan = (i / 24 % 4000) as u16 + 1;
    let endpoint = |switch_id: String, port_number: u32| FlowEndpoint {
        switch_id,
        port_number,
        vlan_id: vlan,
        inner_vlan_id: 0,
    };
    serde_json::json!({
        "flow_id": flow_id,
        "source": endpoint(switch(i), port),
        "destination": endpoint(switch(i + 2), port + 4),
        "maximum_bandwidth": bandwidth,
        "description": "wfm bench",
    })
}

/// Sends every request, at most `args.concurrency` in flight, each until its
/// flow reaches its terminal state as seen on `wfm.flows`.
async fn phase(
    name: &str,
    ids: &[String],
    args: &BenchArgs,
    watcher: &FlowWatcher,
    request: impl Fn(usize, &str) -> reqwest::RequestBuilder,
) -> PhaseReport {
    let progress = progress_bar(name, ids.len());
    let started = Instant::now();
    let errors: Mutex<HashMap<String, usize>> = Mutex::default();
    let sent: Mutex<HashMap<String, Instant>> = Mutex::default();
    futures::stream::iter(ids.iter().enumerate())
        .for_each_concurrent(args.concurrency, |(i, flow_id)| {
            let (errors, sent, progress) = (&errors, &sent, &progress);
            let call = request(i, flow_id);
            async move {
                let at = Instant::now();
                let outcome = match call.send().await {
                    Ok(response) if response.status().is_success() => None,
                    Ok(response) => Some(format!("HTTP {}", response.status().as_u16())),
                    Err(error) => Some(format!("transport: {error}")),
                };
                match outcome {
                    None => {
                        sent.lock().unwrap().insert(flow_id.clone(), at);
                        watcher.sighting(flow_id, at + args.timeout).await;
                    }
                    Some(error) => *errors.lock().unwrap().entry(error).or_default() += 1,
                }
                progress.inc(1);
            }
        })
        .await;
    let sent = sent.into_inner().unwrap();
    let deleting = name == "delete";
    progress.finish_and_clear();
    let elapsed = started.elapsed();
    let mut errors = errors.into_inner().unwrap();
    let mut latencies = Vec::new();
    let (mut succeeded, mut stuck) = (0, 0);
    for (id, at) in &sent {
        match watcher.finished(id, deleting) {
            Some((status, seen)) if deleting || status == FlowStatus::Up => {
                succeeded += 1;
                latencies.push(seen.saturating_duration_since(*at));
            }
            Some((status, _)) => {
                *errors
                    .entry(format!("flow {}", status.as_str()))
                    .or_default() += 1;
            }
            None => stuck += 1,
        }
    }
    PhaseReport {
        requested: ids.len(),
        succeeded,
        // HTTP errors and flows that ended anywhere but where they should.
        failed: errors.values().sum(),
        stuck,
        per_second: succeeded as f64 / elapsed.as_secs_f64().max(1e-9),
        latency: Latencies::of(&mut latencies),
        errors,
    }
}

fn progress_bar(name: &str, total: usize) -> ProgressBar {
    let bar = if console::Term::stderr().is_term() {
        ProgressBar::new(total as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>7} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(name.to_owned());
    bar
}

/// Per flow: its first terminal status seen (`None`: deleted) and when; and
/// the request waiting for it, if any.
#[derive(Default)]
struct Sightings {
    seen: HashMap<String, (Option<FlowStatus>, Instant)>,
    awaited: HashMap<String, oneshot::Sender<()>>,
}

/// Watches `wfm.flows` from its end: when each flow was first seen terminal.
struct FlowWatcher {
    sightings: Arc<Mutex<Sightings>>,
    _task: tokio::task::JoinHandle<()>,
}

impl FlowWatcher {
    async fn start(kafka: &KafkaConfig) -> anyhow::Result<Self> {
        let consumer = assign_from_end(kafka, Topic::Flows).await?;
        let sightings: Arc<Mutex<Sightings>> = Arc::default();
        let sink = sightings.clone();
        let task = tokio::spawn(async move {
            while let Ok(message) = consumer.recv().await {
                let Some(key) = message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                else {
                    continue;
                };
                let status = match message.payload() {
                    None => None,
                    Some(bytes) => match Envelope::decode(bytes, usize::MAX).and_then(|e| e.open())
                    {
                        Ok(FlowsMessage::FlowRecord(flow)) => Some(flow.status),
                        Err(_) => continue,
                    },
                };
                if status == Some(FlowStatus::InProgress) {
                    continue;
                }
                let mut sink = sink.lock().unwrap();
                if let Some(waiting) = sink.awaited.remove(&key) {
                    let _ = waiting.send(());
                }
                sink.seen.entry(key).or_insert((status, Instant::now()));
            }
        });
        Ok(Self {
            sightings,
            _task: task,
        })
    }

    /// Returns once `flow_id` has been seen terminal, or at `deadline`.
    async fn sighting(&self, flow_id: &str, deadline: Instant) {
        let (waiting, sighted) = oneshot::channel();
        {
            let mut sightings = self.sightings.lock().unwrap();
            if sightings.seen.contains_key(flow_id) {
                return;
            }
            sightings.awaited.insert(flow_id.to_owned(), waiting);
        }
        if tokio::time::timeout_at(deadline.into(), sighted)
            .await
            .is_err()
        {
            self.sightings.lock().unwrap().awaited.remove(flow_id);
        }
    }

    /// The terminal status (None once deleted) and when it was seen.
    fn finished(&self, flow_id: &str, deleted: bool) -> Option<(FlowStatus, Instant)> {
        let sightings = self.sightings.lock().unwrap();
        match sightings.seen.get(flow_id)? {
            (None, at) if deleted => Some((FlowStatus::Down, *at)),
            (Some(status), at) => Some((*status, *at)),
            (None, _) => None,
        }
    }

    fn status(&self, flow_id: &str) -> Option<FlowStatus> {
        let sightings = self.sightings.lock().unwrap();
        sightings.seen.get(flow_id).and_then(|(s, _)| *s)
    }

    fn clear(&self) {
        *self.sightings.lock().unwrap() = Sightings::default();
    }
}

/// A consumer of every partition of `topic` from the high watermarks as
/// they are now. Explicit offsets rather than `Offset::End`, which is only
/// resolved at the first fetch and would miss what is written before it.
/// (tansu may report a watermark short of its last batch: that only means
/// reading a few older records, which the bench ignores.)
async fn assign_from_end(kafka: &KafkaConfig, topic: Topic) -> anyhow::Result<StreamConsumer> {
    let consumer = Arc::new(reader_config(kafka, "wfm-bench").create::<StreamConsumer>()?);
    let name = kafka.topics().name(topic);
    let mut assignment = TopicPartitionList::new();
    for partition in 0..kafka.partitions_of(topic) {
        let (watermarks, name_copy) = (consumer.clone(), name.clone());
        let (_, high) = tokio::task::spawn_blocking(move || {
            watermarks.fetch_watermarks(&name_copy, partition, Duration::from_secs(10))
        })
        .await??;
        assignment.add_partition_offset(&name, partition, Offset::Offset(high))?;
    }
    consumer.assign(&assignment)?;
    Arc::into_inner(consumer).context("watermark lookups finished")
}

/// One-way latency of a bare produce→consume hop, with the system's settings.
async fn hop_floor(kafka: &KafkaConfig, pings: usize) -> anyhow::Result<Latencies> {
    let topic = format!("{}bench.ping", kafka.topics().prefix());
    let admin: AdminClient<DefaultClientContext> =
        client_config(kafka, &Default::default()).create()?;
    let new_topic = NewTopic::new(&topic, 1, TopicReplication::Fixed(kafka.replication_factor));
    // An existing topic is fine: every run reads only what it writes.
    let _ = admin
        .create_topics([&new_topic], &AdminOptions::new())
        .await?;
    let consumer: StreamConsumer = reader_config(kafka, "wfm-bench").create()?;
    let mut assignment = TopicPartitionList::new();
    // From the beginning: pings of earlier runs are skipped by key below.
    assignment.add_partition_offset(&topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let producer = Producer::new(kafka)?;
    let mut samples = Vec::with_capacity(pings);
    let run = format!("{:x}", rand::random::<u64>());
    // The first pings also wait for the assignment to take effect: not counted.
    for i in 0..pings + 10 {
        let key = format!("{run}-{i}");
        let ping = Outgoing {
            topic: topic.clone(),
            key: key.clone(),
            partition: Some(0),
            value: Some(i.to_string().into_bytes()),
        };
        // Timed like a hop of the system, which hands its record over and
        // goes on: the acknowledgement is awaited only after the ping is back.
        let at = Instant::now();
        let delivery = producer.enqueue(&ping).await?;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
                .await
                .context("hop floor: ping not received within 10 s")??;
            if message.key() == Some(key.as_bytes()) {
                break;
            }
        }
        if i >= 10 {
            samples.push(at.elapsed());
        }
        acknowledged(delivery).await?;
    }
    Latencies::of(&mut samples).context("no ping samples")
}

async fn read_histories(
    kafka: &KafkaConfig,
    ids: &[String],
) -> anyhow::Result<Vec<Vec<HistoryEvent>>> {
    let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    let topic = kafka.topics().name(Topic::History);
    let partitions: Vec<i32> = (0..kafka.partitions_of(Topic::History)).collect();
    let mut by_flow: HashMap<String, Vec<HistoryEvent>> = HashMap::new();
    wfm_runtime::changelog::read(kafka, &topic, &partitions, |key, value| {
        if !wanted.contains(key.as_str()) {
            return;
        }
        if let Some(Ok(HistoryMessage::HistoryEvent(event))) =
            value.map(|v| Envelope::decode(v, usize::MAX).and_then(|e| e.open()))
        {
            by_flow.entry(key).or_default().push(event);
        }
    })
    .await?;
    Ok(by_flow.into_values().collect())
}

/// Median time between entering each state and leaving it.
fn state_medians(histories: &[Vec<HistoryEvent>]) -> HashMap<String, f64> {
    let mut durations: HashMap<String, Vec<Duration>> = HashMap::new();
    for events in histories {
        let transitions: Vec<&HistoryEvent> =
            events.iter().filter(|e| e.action == "transition").collect();
        for pair in transitions.windows(2) {
            if let Some(state) = &pair[0].to_state {
                let ms = (pair[1].at - pair[0].at).max(0) as u64;
                durations
                    .entry(state.clone())
                    .or_default()
                    .push(Duration::from_millis(ms));
            }
        }
    }
    durations
        .into_iter()
        .filter_map(|(state, mut samples)| Latencies::of(&mut samples).map(|l| (state, l.p50_ms)))
        .collect()
}

fn print_report(report: &BenchReport) {
    let floor = &report.hop_floor;
    println!(
        "hop floor (one produce→consume hop): p50 {:.2} ms, p99 {:.2} ms",
        floor.p50_ms, floor.p99_ms
    );
    for (name, phase) in [
        ("create", Some(&report.create)),
        ("delete", report.delete.as_ref()),
    ] {
        let Some(phase) = phase else { continue };
        println!(
            "{name}: {} requested, {} ok, {} failed, {} stuck, {:.1}/s",
            phase.requested, phase.succeeded, phase.failed, phase.stuck, phase.per_second
        );
        if let Some(l) = &phase.latency {
            println!(
                "  latency p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            );
        }
        for (error, count) in &phase.errors {
            println!("  {count} × {error}");
        }
    }
    if let (Some(p50), Some(p99)) = (report.create_p50_ratio, report.create_p99_ratio) {
        println!(
            "create latency / ({} hops × floor p50): p50 {:.2}× (target ≤ 1.5), p99 {:.2}× (target ≤ 3)",
            report.hops_per_create, p50, p99
        );
    }
    let mut states: Vec<_> = report.create_state_p50_ms.iter().collect();
    states.sort_by(|a, b| b.1.total_cmp(a.1));
    for (state, ms) in states {
        println!("  {state}: p50 {ms:.1} ms");
    }
}
