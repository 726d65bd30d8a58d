//! `wfm trace <correlation_id>`: every message of one request, across every
//! wfm topic, as one timeline with the latency of each hop.

use std::borrow::Cow;
use std::ops::ControlFlow;
use std::time::Instant;

use clap::Args;
use rdkafka::message::Message as _;
use serde::{Deserialize, Serialize};
use wfm_protocol::Topic;

use super::scan::{print_json, table, timestamp, Inspector, RecordView};
use super::system::Cluster;
use crate::config::Config;

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The request's correlation id (as returned by the northbound API).
    correlation_id: String,
    /// One JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

/// Just the field a trace selects on, borrowed where the JSON allows: most
/// records of a large scan are not part of the request, and this keeps
/// rejecting them cheap.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow)]
    correlation_id: Cow<'a, str>,
}

#[derive(Debug, Serialize)]
struct Trace {
    correlation_id: String,
    hops: Vec<Hop>,
    /// Records read to find the hops.
    scanned: u64,
    elapsed_ms: u128,
}

#[derive(Debug, Serialize)]
struct Hop {
    created_at: i64,
    /// Milliseconds since the previous message of the request.
    hop_ms: i64,
    /// Milliseconds since the first message of the request.
    since_start_ms: i64,
    /// An entry of `wfm.history` (an FSM transition) rather than a message between components.
    history: bool,
    #[serde(flatten)]
    record: RecordView,
}

pub async fn run(config: Config, args: TraceArgs) -> anyhow::Result<()> {
    let cluster = Cluster::join(config).await?;
    let trace = tokio::task::block_in_place(|| collect(&cluster.config, &args.correlation_id))?;
    if args.json {
        return print_json(&trace);
    }
    let mut out = table([
        "#", "CREATED", "+HOP ms", "TOTAL ms", "TOPIC", "SOURCE", "KIND", "KEY", "PAYLOAD",
    ]);
    for (n, hop) in trace.hops.iter().enumerate() {
        let envelope = hop
            .record
            .envelope()
            .expect("every hop is a decoded envelope");
        let topic = if hop.history {
            format!("{} (history)", hop.record.topic)
        } else {
            hop.record.topic.clone()
        };
        out.add_row([
            (n + 1).to_string(),
            timestamp(hop.created_at),
            hop.hop_ms.to_string(),
            hop.since_start_ms.to_string(),
            topic,
            envelope.source.clone(),
            envelope.kind.clone(),
            hop.record.key.clone().unwrap_or_default(),
            truncate(&envelope.payload.to_string(), 80),
        ]);
    }
    if trace.hops.is_empty() {
        println!("no message with correlation id {}", trace.correlation_id);
    } else {
        println!("{out}");
    }
    eprintln!(
        "{} messages; scanned {} records in {} ms",
        trace.hops.len(),
        trace.scanned,
        trace.elapsed_ms
    );
    Ok(())
}

fn collect(config: &Config, correlation_id: &str) -> anyhow::Result<Trace> {
    let started = Instant::now();
    let kafka = &config.kafka;
    let names = kafka.topics();
    let inspector = Inspector::new(kafka)?;
    let mut topics = inspector.topics()?;
    topics.retain(|topic| names.parse(&topic.name).is_some());
    let ranges = inspector.whole(&topics)?;
    let history = names.name(Topic::History);
    let mut records = Vec::new();
    let scanned = inspector.scan(&ranges, true, |message| {
        let matches = message
            .payload()
            .and_then(|value| serde_json::from_slice::<Probe<'_>>(value).ok())
            .is_some_and(|probe| probe.correlation_id == correlation_id);
        if matches {
            let record = RecordView::new(message);
            // The probe accepts any JSON with the field; only envelopes are hops.
            if record.envelope().is_some() {
                records.push(record);
            }
        }
        ControlFlow::Continue(())
    })?;
    // Ties (same millisecond) keep the order of the log they were read from.
    records.sort_by(|a, b| {
        let at = |r: &RecordView| r.envelope().map_or(0, |e| e.created_at);
        (at(a), &a.topic, a.partition, a.offset).cmp(&(at(b), &b.topic, b.partition, b.offset))
    });
    let first = records
        .first()
        .and_then(RecordView::envelope)
        .map_or(0, |e| e.created_at);
    let mut previous = first;
    let hops = records
        .into_iter()
        .map(|record| {
            let created_at = record.envelope().map_or(0, |e| e.created_at);
            let hop = Hop {
                created_at,
                hop_ms: created_at - previous,
                since_start_ms: created_at - first,
                history: record.topic == history,
                record,
            };
            previous = created_at;
            hop
        })
        .collect();
    Ok(Trace {
        correlation_id: correlation_id.to_owned(),
        hops,
        scanned,
        elapsed_ms: started.elapsed().as_millis(),
    })
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}
