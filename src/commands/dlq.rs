//! `wfm dlq list|replay`: the dead letters, and re-injecting them after a fix.
//!
//! Replay is idempotent through the origin topic itself: a replayed record
//! carries the dead letter's message id in a [`REPLAY_HEADER`] header, and a
//! dead letter is replayed only if no record after its origin offset in its
//! origin partition carries that header. Checking the log the record is
//! written to (instead of a marker kept elsewhere) leaves no window between
//! "re-injected" and "remembered as re-injected": a replay that crashed, or
//! whose acknowledgement was lost, is found there on the next run. The
//! original key and value are re-injected byte for byte, so the receiver sees
//! exactly the record that failed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::ControlFlow;
use std::time::Duration;

use clap::{ArgGroup, Subcommand};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use wfm_protocol::dlq::{DeadLetter, DlqMessage};
use wfm_protocol::{Envelope, Topic};
use wfm_runtime::producer::client_config;
use wfm_runtime::KafkaConfig;

use super::scan::{age, print_json, table, Inspector, Range};
use super::system::Cluster;
use crate::config::Config;

/// Header of a replayed record: the message id of the dead letter it replays.
pub const REPLAY_HEADER: &str = "wfm-replay-of";

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Dead letters with their reason, category, origin, age and whether they were replayed.
    List {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-inject dead letters' original key and value into their origin partition, once each.
    #[command(group(ArgGroup::new("which").required(true).args(["id", "all"])))]
    Replay {
        /// A dead letter, as `<dlq partition>:<dlq offset>` or its message id (repeatable).
        #[arg(long)]
        id: Vec<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("no dead letter {0} (give `<partition>:<offset>` on the DLQ topic or the message id)")]
    NotFound(String),
    #[error("replaying {id} to {topic}[{partition}] failed: {reason}")]
    Produce {
        id: String,
        topic: String,
        partition: i32,
        reason: String,
    },
}

/// A dead letter and where it sits on the DLQ topic.
#[derive(Debug, Clone, Serialize)]
struct Letter {
    /// `<partition>:<offset>` on the DLQ topic.
    id: String,
    message_id: String,
    correlation_id: String,
    #[serde(flatten)]
    letter: DeadLetter,
}

#[derive(Debug, Serialize)]
struct Listed {
    #[serde(flatten)]
    letter: Letter,
    /// Where the replay landed, `<partition>@<offset>` of the origin topic.
    replayed_at: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Replayed,
    AlreadyReplayed,
}

#[derive(Debug, Serialize)]
struct Replay {
    id: String,
    message_id: String,
    topic: String,
    partition: i32,
    offset: i64,
    outcome: Outcome,
}

pub async fn run(config: Config, command: DlqCommand) -> anyhow::Result<()> {
    let cluster = Cluster::join(config).await?;
    let kafka = &cluster.config.kafka;
    match command {
        DlqCommand::List { json } => {
            let listed = tokio::task::block_in_place(|| {
                let inspector = Inspector::new(kafka)?;
                let letters = read_letters(kafka, &inspector)?;
                let replays = replays(&inspector, &letters)?;
                Ok::<_, anyhow::Error>(
                    letters
                        .into_iter()
                        .map(|letter| Listed {
                            replayed_at: replays
                                .get(&letter.message_id)
                                .map(|(p, o)| format!("{p}@{o}")),
                            letter,
                        })
                        .collect::<Vec<_>>(),
                )
            })?;
            if json {
                return print_json(&listed);
            }
            let mut out = table([
                "ID", "AGE", "CATEGORY", "ORIGIN", "GROUP", "REPLAYED", "REASON",
            ]);
            for l in &listed {
                let d = &l.letter.letter;
                out.add_row([
                    l.letter.id.clone(),
                    age(d.dead_lettered_at),
                    d.category.clone(),
                    format!(
                        "{}[{}]@{}",
                        d.origin_topic, d.origin_partition, d.origin_offset
                    ),
                    d.consumer_group.clone(),
                    l.replayed_at.clone().unwrap_or_else(|| "-".into()),
                    d.reason.clone(),
                ]);
            }
            println!("{out}");
            Ok(())
        }
        DlqCommand::Replay { id, all, json } => {
            let replayed = replay(kafka, &id, all).await?;
            if json {
                return print_json(&replayed);
            }
            let mut out = table(["ID", "MESSAGE ID", "ORIGIN", "OUTCOME"]);
            for r in &replayed {
                let outcome = match r.outcome {
                    Outcome::Replayed => "replayed",
                    Outcome::AlreadyReplayed => "already replayed",
                };
                out.add_row([
                    r.id.clone(),
                    r.message_id.clone(),
                    format!("{}[{}]@{}", r.topic, r.partition, r.offset),
                    outcome.to_owned(),
                ]);
            }
            println!("{out}");
            Ok(())
        }
    }
}

/// Every dead letter on the DLQ topic, in DLQ order. Records that are not dead
/// letters (garbage, unknown kinds) are skipped: there is nothing to replay.
fn read_letters(kafka: &KafkaConfig, inspector: &Inspector) -> anyhow::Result<Vec<Letter>> {
    let dlq = kafka.topics().name(Topic::Dlq);
    let topic = inspector
        .topics()?
        .into_iter()
        .find(|t| t.name == dlq)
        .ok_or_else(|| super::scan::ScanError::UnknownTopic(dlq.clone()))?;
    let mut letters = Vec::new();
    let mut skipped = 0u64;
    inspector.scan(&inspector.whole(&[topic])?, true, |message| {
        let decoded = message
            .payload()
            .and_then(|value| Envelope::decode(value, usize::MAX).ok())
            .and_then(|envelope| {
                let DlqMessage::DeadLetter(letter) = envelope.open::<DlqMessage>().ok()?;
                Some((envelope, letter))
            });
        match decoded {
            Some((envelope, letter)) => letters.push(Letter {
                id: format!("{}:{}", message.partition(), message.offset()),
                message_id: envelope.message_id,
                correlation_id: envelope.correlation_id,
                letter,
            }),
            None => skipped += 1,
        }
        ControlFlow::Continue(())
    })?;
    letters.sort_by_key(|l| (l.letter.dead_lettered_at, l.id.clone()));
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "records on {dlq} that are not dead letters were skipped"
        );
    }
    Ok(letters)
}

/// For the dead letters whose replay is on their origin partition: their
/// message id and the partition and offset of the replayed record. Reads each
/// origin partition once, from just after its earliest origin offset.
fn replays(
    inspector: &Inspector,
    letters: &[Letter],
) -> anyhow::Result<HashMap<String, (i32, i64)>> {
    let mut starts: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for l in letters {
        let start = starts
            .entry((&l.letter.origin_topic, l.letter.origin_partition))
            .or_insert(i64::MAX);
        *start = (*start).min(l.letter.origin_offset + 1);
    }
    let marks = inspector.watermarks(starts.keys().copied())?;
    let ranges: Vec<Range> = starts
        .into_iter()
        .map(|((topic, partition), start)| {
            let (low, high) = marks[&(topic.to_owned(), partition)];
            Range {
                topic: topic.to_owned(),
                partition,
                start: start.max(low),
                end: Some(high),
            }
        })
        .collect();
    let wanted: HashSet<&str> = letters.iter().map(|l| l.message_id.as_str()).collect();
    let mut found = HashMap::new();
    inspector.scan(&ranges, true, |message| {
        let replay_of = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == REPLAY_HEADER)
                .and_then(|h| std::str::from_utf8(h.value?).ok())
        });
        if let Some(id) = replay_of.filter(|id| wanted.contains(id)) {
            found
                .entry(id.to_owned())
                .or_insert((message.partition(), message.offset()));
        }
        ControlFlow::Continue(())
    })?;
    Ok(found)
}

async fn replay(kafka: &KafkaConfig, ids: &[String], all: bool) -> anyhow::Result<Vec<Replay>> {
    let (selected, already) = tokio::task::block_in_place(|| {
        let inspector = Inspector::new(kafka)?;
        let letters = read_letters(kafka, &inspector)?;
        let selected = if all {
            letters
        } else {
            ids.iter()
                .map(|id| {
                    letters
                        .iter()
                        .find(|l| l.id == *id || l.message_id == *id)
                        .cloned()
                        .ok_or_else(|| DlqError::NotFound(id.clone()))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let already = replays(&inspector, &selected)?;
        Ok::<_, anyhow::Error>((selected, already))
    })?;

    let mut config = client_config(kafka, &kafka.producer);
    config.set("enable.idempotence", "true").set(
        "message.max.bytes",
        (kafka.max_record_bytes + 64 * 1024).to_string(),
    );
    let producer: FutureProducer = config.create()?;
    let mut outcomes = Vec::with_capacity(selected.len());
    // A dead letter written twice (a consumer crash before its commit) has one
    // message id: it is replayed once.
    let mut seen = HashSet::new();
    for letter in selected {
        if !seen.insert(letter.message_id.clone()) {
            continue;
        }
        let origin = &letter.letter;
        let (partition, offset, outcome) = match already.get(&letter.message_id) {
            Some(&(partition, offset)) => (partition, offset, Outcome::AlreadyReplayed),
            None => {
                let key = origin.key();
                let value = origin.value();
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&origin.origin_topic)
                        .partition(origin.origin_partition)
                        .headers(OwnedHeaders::new().insert(Header {
                            key: REPLAY_HEADER,
                            value: Some(letter.message_id.as_str()),
                        }));
                if let Some(key) = &key {
                    record = record.key(key.as_slice());
                }
                if let Some(value) = &value {
                    record = record.payload(value.as_slice());
                }
                let delivery = producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map_err(|(error, _)| DlqError::Produce {
                        id: letter.id.clone(),
                        topic: origin.origin_topic.clone(),
                        partition: origin.origin_partition,
                        reason: error.to_string(),
                    })?;
                (delivery.partition, delivery.offset, Outcome::Replayed)
            }
        };
        outcomes.push(Replay {
            id: letter.id,
            message_id: letter.message_id,
            topic: origin.origin_topic.clone(),
            partition,
            offset,
            outcome,
        });
    }
    Ok(outcomes)
}
