//! `wfm topics list|describe|tail|groups`: what is on the topics and who reads it.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::ops::ControlFlow;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use wfm_runtime::producer::client_config;
use wfm_runtime::KafkaConfig;

use super::scan::{partitions_of, print_json, table, Inspector, Range, RecordView, TopicInfo};
use super::system::Cluster;
use crate::config::Config;

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Every topic with its partitions, watermarks, record counts and cleanup policy.
    List {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Per-partition detail of one topic and the group members that own each partition.
    Describe {
        /// Full name, or the name without the topic prefix (`hub` for `wfm.hub`).
        topic: String,
        #[arg(long)]
        json: bool,
    },
    /// Decoded records of a topic; stops at the end unless `--follow`.
    Tail(TailArgs),
    /// Consumer groups: members, assigned partitions, committed offsets and lag.
    Groups {
        /// Only this group.
        group: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Full name, or the name without the topic prefix (`hub` for `wfm.hub`).
    topic: String,
    /// Start at the first record still stored.
    #[arg(long, conflicts_with = "offset")]
    from_beginning: bool,
    /// Keep printing records as they arrive, until Ctrl-C or `--limit`.
    #[arg(long)]
    follow: bool,
    /// Only this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// Start at this offset in every partition read.
    #[arg(long)]
    offset: Option<i64>,
    /// Without `--from-beginning` or `--offset`: how many of the latest records
    /// of each partition to start with.
    #[arg(long, default_value_t = 10)]
    last: i64,
    /// Only records with this key.
    #[arg(long)]
    key: Option<String>,
    /// Only envelopes of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only envelopes of this request.
    #[arg(long)]
    correlation_id: Option<String>,
    /// Stop after this many records have been printed.
    #[arg(long)]
    limit: Option<usize>,
    /// One JSON object per record and line.
    #[arg(long)]
    json: bool,
}

pub async fn run(config: Config, command: TopicsCommand) -> anyhow::Result<()> {
    let cluster = Cluster::join(config).await?;
    let kafka = &cluster.config.kafka;
    match command {
        TopicsCommand::List { json } => list(kafka, json).await,
        TopicsCommand::Describe { topic, json } => describe(kafka, &topic, json).await,
        TopicsCommand::Tail(args) => tokio::task::block_in_place(|| tail(kafka, &args)),
        TopicsCommand::Groups { group, json } => {
            let inspector = Inspector::new(kafka)?;
            let groups =
                tokio::task::block_in_place(|| groups(kafka, &inspector, group.as_deref()))?;
            if json {
                return print_json(&groups);
            }
            let mut out = table([
                "GROUP",
                "STATE",
                "TOPIC",
                "PARTITION",
                "COMMITTED",
                "HIGH",
                "LAG",
                "MEMBER",
            ]);
            for group in &groups {
                if group.partitions.is_empty() {
                    out.add_row([&group.group, &group.state, "-", "-", "-", "-", "-", "-"]);
                }
                for p in &group.partitions {
                    out.add_row([
                        group.group.clone(),
                        group.state.clone(),
                        p.topic.clone(),
                        p.partition.to_string(),
                        optional(p.committed),
                        p.high.to_string(),
                        optional(p.lag),
                        group.owner_label(p.owner.as_deref()),
                    ]);
                }
            }
            println!("{out}");
            Ok(())
        }
    }
}

/// A topic name as typed: exact, or without the configured prefix.
fn resolve<'a>(
    topics: &'a [TopicInfo],
    kafka: &KafkaConfig,
    name: &str,
) -> anyhow::Result<&'a TopicInfo> {
    let prefixed = format!("{}{name}", kafka.topic_prefix);
    topics
        .iter()
        .find(|t| t.name == name)
        .or_else(|| topics.iter().find(|t| t.name == prefixed))
        .ok_or_else(|| super::scan::ScanError::UnknownTopic(name.to_owned()).into())
}

#[derive(Debug, Serialize)]
struct TopicSummary {
    topic: String,
    partitions: usize,
    /// Offsets between the watermarks: exact for a delete topic, an upper
    /// bound for a compacted one.
    records: i64,
    cleanup_policy: String,
    watermarks: Vec<PartitionMarks>,
}

#[derive(Debug, Serialize)]
struct PartitionMarks {
    partition: i32,
    low: i64,
    high: i64,
}

async fn list(kafka: &KafkaConfig, json: bool) -> anyhow::Result<()> {
    let inspector = Inspector::new(kafka)?;
    let topics = tokio::task::block_in_place(|| inspector.topics())?;
    let policies = cleanup_policies(kafka, &topics).await;
    let marks = tokio::task::block_in_place(|| inspector.watermarks(partitions_of(&topics)))?;
    let summaries: Vec<TopicSummary> = topics
        .iter()
        .map(|topic| {
            let watermarks: Vec<PartitionMarks> = topic
                .partitions
                .iter()
                .map(|p| {
                    let (low, high) = marks[&(topic.name.clone(), p.partition)];
                    PartitionMarks {
                        partition: p.partition,
                        low,
                        high,
                    }
                })
                .collect();
            TopicSummary {
                topic: topic.name.clone(),
                partitions: topic.partitions.len(),
                records: watermarks.iter().map(|w| w.high - w.low).sum(),
                cleanup_policy: policies[&topic.name].clone(),
                watermarks,
            }
        })
        .collect();
    if json {
        return print_json(&summaries);
    }
    let mut out = table(["TOPIC", "PARTITIONS", "RECORDS", "POLICY", "LOW..HIGH"]);
    for s in &summaries {
        let ranges: Vec<String> = s
            .watermarks
            .iter()
            .map(|w| format!("{}..{}", w.low, w.high))
            .collect();
        out.add_row([
            s.topic.clone(),
            s.partitions.to_string(),
            s.records.to_string(),
            s.cleanup_policy.clone(),
            ranges.join(" "),
        ]);
    }
    println!("{out}");
    Ok(())
}

/// `cleanup.policy` of every topic as the broker reports it; where it does
/// not, what the design prescribes for a wfm topic, else `unknown`.
async fn cleanup_policies(kafka: &KafkaConfig, topics: &[TopicInfo]) -> HashMap<String, String> {
    let from_broker = async {
        let admin: AdminClient<DefaultClientContext> =
            client_config(kafka, &Default::default()).create()?;
        let specifiers: Vec<ResourceSpecifier<'_>> = topics
            .iter()
            .map(|t| ResourceSpecifier::Topic(&t.name))
            .collect();
        let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
        let results = admin.describe_configs(specifiers.iter(), &options).await?;
        Ok::<_, rdkafka::error::KafkaError>(
            topics
                .iter()
                .zip(results)
                .filter_map(|(topic, result)| {
                    let policy = result.ok()?.get("cleanup.policy")?.value.clone()?;
                    Some((topic.name.clone(), policy))
                })
                .collect::<HashMap<_, _>>(),
        )
    };
    let mut policies = from_broker.await.unwrap_or_else(|error| {
        tracing::debug!(%error, "describe_configs failed; using the design's policies");
        HashMap::new()
    });
    let design = kafka.topics();
    for topic in topics {
        policies.entry(topic.name.clone()).or_insert_with(|| {
            match design.parse(&topic.name) {
                Some(t) if t.compacted() => "compact",
                Some(_) => "delete",
                None => "unknown",
            }
            .to_owned()
        });
    }
    policies
}

#[derive(Debug, Serialize)]
struct TopicDetail {
    topic: String,
    cleanup_policy: String,
    partitions: Vec<PartitionDetail>,
}

#[derive(Debug, Serialize)]
struct PartitionDetail {
    #[serde(flatten)]
    info: super::scan::PartitionInfo,
    low: i64,
    high: i64,
    records: i64,
    owners: Vec<Owner>,
    committed: Vec<Committed>,
}

#[derive(Debug, Serialize)]
struct Owner {
    group: String,
    member_id: String,
    client_id: String,
    host: String,
}

#[derive(Debug, Serialize)]
struct Committed {
    group: String,
    offset: i64,
    lag: i64,
}

async fn describe(kafka: &KafkaConfig, name: &str, json: bool) -> anyhow::Result<()> {
    let inspector = Inspector::new(kafka)?;
    let topics = tokio::task::block_in_place(|| inspector.topics())?;
    let topic = resolve(&topics, kafka, name)?;
    let policy = cleanup_policies(kafka, std::slice::from_ref(topic))
        .await
        .remove(&topic.name)
        .unwrap_or_default();
    let detail = tokio::task::block_in_place(|| {
        let groups = groups(kafka, &inspector, None)?;
        let marks = inspector.watermarks(partitions_of(std::slice::from_ref(topic)))?;
        let partitions = topic
            .partitions
            .iter()
            .map(|p| {
                let (low, high) = marks[&(topic.name.clone(), p.partition)];
                let mut owners = Vec::new();
                let mut committed = Vec::new();
                for group in &groups {
                    let Some(gp) = group
                        .partitions
                        .iter()
                        .find(|gp| gp.topic == topic.name && gp.partition == p.partition)
                    else {
                        continue;
                    };
                    if let Some(member) = gp
                        .owner
                        .as_deref()
                        .and_then(|id| group.members.iter().find(|m| m.member_id == id))
                    {
                        owners.push(Owner {
                            group: group.group.clone(),
                            member_id: member.member_id.clone(),
                            client_id: member.client_id.clone(),
                            host: member.host.clone(),
                        });
                    }
                    if let (Some(offset), Some(lag)) = (gp.committed, gp.lag) {
                        committed.push(Committed {
                            group: group.group.clone(),
                            offset,
                            lag,
                        });
                    }
                }
                PartitionDetail {
                    info: p.clone(),
                    low,
                    high,
                    records: high - low,
                    owners,
                    committed,
                }
            })
            .collect();
        Ok::<_, anyhow::Error>(TopicDetail {
            topic: topic.name.clone(),
            cleanup_policy: policy,
            partitions,
        })
    })?;
    if json {
        return print_json(&detail);
    }
    println!(
        "{} (cleanup.policy={})",
        detail.topic, detail.cleanup_policy
    );
    let mut out = table([
        "PARTITION",
        "LEADER",
        "REPLICAS",
        "ISR",
        "LOW",
        "HIGH",
        "RECORDS",
        "OWNERS",
        "COMMITTED (LAG)",
    ]);
    for p in &detail.partitions {
        let owners: Vec<String> = p
            .owners
            .iter()
            .map(|o| format!("{}/{} ({})", o.group, o.client_id, o.member_id))
            .collect();
        let committed: Vec<String> = p
            .committed
            .iter()
            .map(|c| format!("{}: {} ({})", c.group, c.offset, c.lag))
            .collect();
        out.add_row([
            p.info.partition.to_string(),
            p.info.leader.to_string(),
            format!("{:?}", p.info.replicas),
            format!("{:?}", p.info.isr),
            p.low.to_string(),
            p.high.to_string(),
            p.records.to_string(),
            owners.join("\n"),
            committed.join("\n"),
        ]);
    }
    println!("{out}");
    Ok(())
}

fn tail(kafka: &KafkaConfig, args: &TailArgs) -> anyhow::Result<()> {
    let inspector = Inspector::new(kafka)?;
    let topics = inspector.topics()?;
    let topic = resolve(&topics, kafka, &args.topic)?;
    let partitions: Vec<i32> = match args.partition {
        Some(partition) if topic.partitions.iter().any(|p| p.partition == partition) => {
            vec![partition]
        }
        Some(partition) => {
            return Err(super::scan::ScanError::UnknownPartition {
                topic: topic.name.clone(),
                partition,
            }
            .into())
        }
        None => topic.partitions.iter().map(|p| p.partition).collect(),
    };
    let marks = inspector.watermarks(partitions.iter().map(|&p| (topic.name.as_str(), p)))?;
    // The first offset to print per partition. Reads still start at the low
    // watermark: tansu serves a fetch only from the first offset of a record
    // batch, so a read starting inside a batch would miss the rest of it.
    let mut first = HashMap::new();
    let ranges: Vec<Range> = partitions
        .into_iter()
        .map(|partition| {
            let (low, high) = marks[&(topic.name.clone(), partition)];
            let start = match (args.from_beginning, args.offset) {
                (true, _) => low,
                (false, Some(offset)) => offset.clamp(low, high),
                (false, None) => (high - args.last.max(0)).max(low),
            };
            first.insert(partition, start);
            Range {
                topic: topic.name.clone(),
                partition,
                start: low,
                end: (!args.follow).then_some(high),
            }
        })
        .collect();
    let mut printed = 0usize;
    let mut stdout = std::io::stdout().lock();
    inspector.scan(&ranges, false, |message| {
        if args.limit.is_some_and(|limit| printed >= limit) {
            return ControlFlow::Break(());
        }
        if message.offset() < first[&message.partition()] {
            return ControlFlow::Continue(());
        }
        let record = RecordView::new(message);
        if !matches(args, &record) {
            return ControlFlow::Continue(());
        }
        let line = if args.json {
            serde_json::to_string(&record).expect("a record view always serialises")
        } else {
            record.render()
        };
        printed += 1;
        // A closed pipe (`| head`) ends the tail; nothing is left to say to it.
        if writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .is_err()
            || args.limit.is_some_and(|limit| printed >= limit)
        {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    Ok(())
}

fn matches(args: &TailArgs, record: &RecordView) -> bool {
    if args.key.is_some() && args.key != record.key {
        return false;
    }
    if args.kind.is_none() && args.correlation_id.is_none() {
        return true;
    }
    record.envelope().is_some_and(|envelope| {
        args.kind.as_ref().is_none_or(|kind| *kind == envelope.kind)
            && args
                .correlation_id
                .as_ref()
                .is_none_or(|id| *id == envelope.correlation_id)
    })
}

#[derive(Debug, Serialize)]
struct GroupView {
    group: String,
    state: String,
    protocol_type: String,
    protocol: String,
    members: Vec<MemberView>,
    /// Partitions the group owns or has committed offsets for.
    partitions: Vec<GroupPartition>,
}

#[derive(Debug, Serialize)]
struct MemberView {
    member_id: String,
    client_id: String,
    host: String,
    /// Topic to partitions; absent when the assignment is not in the
    /// consumer protocol's format.
    assignment: Option<BTreeMap<String, Vec<i32>>>,
}

#[derive(Debug, Serialize)]
struct GroupPartition {
    topic: String,
    partition: i32,
    /// Member id of the owner.
    owner: Option<String>,
    committed: Option<i64>,
    high: i64,
    lag: Option<i64>,
}

impl GroupView {
    fn owner_label(&self, member_id: Option<&str>) -> String {
        member_id
            .and_then(|id| self.members.iter().find(|m| m.member_id == id))
            .map(|m| format!("{} ({})", m.client_id, m.member_id))
            .unwrap_or_else(|| "-".into())
    }
}

/// Every consumer group (or one), with its members' assignments and its
/// committed offsets and lag on every partition of the cluster.
fn groups(
    kafka: &KafkaConfig,
    inspector: &Inspector,
    only: Option<&str>,
) -> anyhow::Result<Vec<GroupView>> {
    let topics = inspector.topics()?;
    let marks = inspector.watermarks(partitions_of(&topics))?;
    let mut all = TopicPartitionList::new();
    for (topic, partition) in marks.keys() {
        all.add_partition(topic, *partition);
    }
    let list = inspector.group_list(only).context(
        "listing consumer groups (on wfm's embedded broker with durable storage this \
         fails: tansu 0.6 cannot read back group records from SQLite; --ephemeral can)",
    )?;
    let mut views = Vec::new();
    for group in list.groups() {
        if group.name() == Inspector::GROUP {
            continue;
        }
        let members: Vec<MemberView> = group
            .members()
            .iter()
            .map(|m| MemberView {
                member_id: m.id().to_owned(),
                client_id: m.client_id().to_owned(),
                host: m.client_host().to_owned(),
                assignment: m.assignment().and_then(parse_assignment),
            })
            .collect();
        let mut owners: HashMap<(String, i32), String> = HashMap::new();
        for member in &members {
            for (topic, partitions) in member.assignment.iter().flatten() {
                for &partition in partitions {
                    owners.insert((topic.clone(), partition), member.member_id.clone());
                }
            }
        }
        let committed = committed_offsets(kafka, group.name(), &all)?;
        let mut partitions: Vec<GroupPartition> = marks
            .iter()
            .filter_map(|(tp, &(_, high))| {
                let committed = committed.get(tp).copied();
                let owner = owners.get(tp).cloned();
                (committed.is_some() || owner.is_some()).then(|| GroupPartition {
                    topic: tp.0.clone(),
                    partition: tp.1,
                    owner,
                    committed,
                    high,
                    lag: committed.map(|c| (high - c).max(0)),
                })
            })
            .collect();
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        views.push(GroupView {
            group: group.name().to_owned(),
            state: group.state().to_owned(),
            protocol_type: group.protocol_type().to_owned(),
            protocol: group.protocol().to_owned(),
            members,
            partitions,
        });
    }
    views.sort_by(|a, b| a.group.cmp(&b.group));
    Ok(views)
}

/// The offsets `group` has committed, asked as that group without joining it.
fn committed_offsets(
    kafka: &KafkaConfig,
    group: &str,
    partitions: &TopicPartitionList,
) -> anyhow::Result<HashMap<(String, i32), i64>> {
    let mut config = client_config(kafka, &kafka.consumer);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create()?;
    let committed = consumer
        .committed_offsets(partitions.clone(), TIMEOUT)
        .with_context(|| format!("committed offsets of group {group}"))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(offset) => Some(((e.topic().to_owned(), e.partition()), offset)),
            _ => None,
        })
        .collect())
}

/// A member's assignment in the consumer protocol's format (version, then
/// topics each with their partitions, then user data), which is what every
/// Kafka consumer, librdkafka's included, puts in the group.
fn parse_assignment(bytes: &[u8]) -> Option<BTreeMap<String, Vec<i32>>> {
    struct Reader<'a>(&'a [u8]);
    impl Reader<'_> {
        fn take(&mut self, n: usize) -> Option<&[u8]> {
            let (head, rest) = self.0.split_at_checked(n)?;
            self.0 = rest;
            Some(head)
        }
        fn i16(&mut self) -> Option<i16> {
            Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
        }
        fn i32(&mut self) -> Option<i32> {
            Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
        }
    }
    let mut assignment = BTreeMap::new();
    if bytes.is_empty() {
        return Some(assignment);
    }
    let mut reader = Reader(bytes);
    let _version = reader.i16()?;
    for _ in 0..reader.i32()?.max(0) {
        let length = usize::try_from(reader.i16()?).ok()?;
        let topic = String::from_utf8(reader.take(length)?.to_vec()).ok()?;
        let count = reader.i32()?.max(0);
        let partitions = (0..count)
            .map(|_| reader.i32())
            .collect::<Option<Vec<_>>>()?;
        assignment.insert(topic, partitions);
    }
    Some(assignment)
}

fn optional(value: Option<i64>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_in_the_consumer_protocol_format_parses() {
        let mut bytes = vec![0, 1]; // version
        bytes.extend(1i32.to_be_bytes()); // one topic
        bytes.extend(5i16.to_be_bytes());
        bytes.extend(b"wfm.a");
        bytes.extend(2i32.to_be_bytes());
        bytes.extend(0i32.to_be_bytes());
        bytes.extend(3i32.to_be_bytes());
        bytes.extend((-1i32).to_be_bytes()); // null user data
        let parsed = parse_assignment(&bytes).unwrap();
        assert_eq!(parsed, BTreeMap::from([("wfm.a".to_owned(), vec![0, 3])]));
        assert_eq!(parse_assignment(&[]), Some(BTreeMap::new()));
        assert_eq!(parse_assignment(&bytes[..9]), None);
    }
}
