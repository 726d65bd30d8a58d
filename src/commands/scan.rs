//! Reading topics for operators: cluster metadata, bounded scans up to the
//! high watermarks read at start (or endless ones in follow mode), and the
//! decoded view of a record that `topics tail`, `trace` and `dlq` print.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::time::{Duration, Instant, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::groups::GroupList;
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use wfm_protocol::Envelope;
use wfm_runtime::producer::client_config;
use wfm_runtime::KafkaConfig;

const TIMEOUT: Duration = Duration::from_secs(10);
/// A bounded scan that receives nothing for this long has lost the broker.
const STALL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("topic {0} does not exist")]
    UnknownTopic(String),
    #[error("topic {topic} has no partition {partition}")]
    UnknownPartition { topic: String, partition: i32 },
    #[error(
        "no record arrived for {STALL:?} while {pending} partitions were still short of their end"
    )]
    Stalled { pending: usize },
}

/// A topic as the cluster metadata describes it.
#[derive(Debug, Clone)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: Vec<PartitionInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionInfo {
    pub partition: i32,
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

/// Low and high watermark by topic and partition.
pub type Watermarks = HashMap<(String, i32), (i64, i64)>;

/// Offsets `[start, end)` of one partition to read; `end: None` reads on forever.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub end: Option<i64>,
}

/// A consumer that reads by assignment only: it never joins a group and never
/// commits, so inspecting a topic leaves no trace on the cluster.
pub struct Inspector {
    config: ClientConfig,
    /// For metadata and offset queries; every read gets a consumer of its
    /// own, since one reused across assignments can drop records it fetched
    /// for the previous assignment.
    consumer: ScanConsumer,
}

type ScanConsumer = BaseConsumer<QuietEof>;

/// A scan asks for partition-EOF events to know where it ends; librdkafka
/// also reports each one as a client error, which the default context would
/// log as an ERROR line per partition.
struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::error!(%error, reason, "librdkafka error");
        }
    }
}

impl ConsumerContext for QuietEof {}

impl Inspector {
    /// The group id the inspector's consumers carry (and never join).
    pub const GROUP: &'static str = "wfm-inspect";

    pub fn new(kafka: &KafkaConfig) -> Result<Self, ScanError> {
        let mut config = client_config(kafka, &kafka.consumer);
        config
            .set("group.id", Self::GROUP)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            // A scan knows it reached the end from one empty fetch per
            // partition, which the broker answers only after this wait.
            .set("fetch.wait.max.ms", "10")
            // Large fetches: a scan is throughput-bound, never latency-bound.
            .set("max.partition.fetch.bytes", (16 << 20).to_string())
            .set("fetch.max.bytes", (64 << 20).to_string())
            .set("queued.max.messages.kbytes", (256 << 10).to_string())
            .set("queued.min.messages", "500000")
            .set(
                "receive.message.max.bytes",
                ((64 << 20) + (1 << 20)).to_string(),
            );
        Ok(Self {
            consumer: config.create_with_context(QuietEof)?,
            config,
        })
    }

    /// Every topic of the cluster but the broker's internal ones, by name.
    pub fn topics(&self) -> Result<Vec<TopicInfo>, ScanError> {
        let metadata = self.consumer.fetch_metadata(None, TIMEOUT)?;
        let mut topics: Vec<TopicInfo> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.name().starts_with("__"))
            .map(|t| {
                let mut partitions: Vec<PartitionInfo> = t
                    .partitions()
                    .iter()
                    .map(|p| PartitionInfo {
                        partition: p.id(),
                        leader: p.leader(),
                        replicas: p.replicas().to_vec(),
                        isr: p.isr().to_vec(),
                    })
                    .collect();
                partitions.sort_by_key(|p| p.partition);
                TopicInfo {
                    name: t.name().to_owned(),
                    partitions,
                }
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    /// Consumer groups with their members, as the group coordinators describe them.
    pub fn group_list(&self, only: Option<&str>) -> Result<GroupList, ScanError> {
        Ok(self.consumer.fetch_group_list(only, TIMEOUT)?)
    }

    /// Low and high watermark of each partition, by topic and partition.
    pub fn watermarks<'a>(
        &self,
        partitions: impl IntoIterator<Item = (&'a str, i32)>,
    ) -> Result<Watermarks, ScanError> {
        let mut marks = Watermarks::new();
        for (topic, partition) in partitions {
            let range = self.consumer.fetch_watermarks(topic, partition, TIMEOUT)?;
            marks.insert((topic.to_owned(), partition), range);
        }
        self.correct_highs(&mut marks)?;
        Ok(marks)
    }

    /// Some brokers (tansu, the embedded one) answer a latest-offset query
    /// with one past the *first* offset of the last record batch. Reading that
    /// batch finds the real end; against a broker that answers right, this
    /// reads one record per partition. Ends of partitions written to during
    /// the correction may stay short of the newest records, never beyond them.
    fn correct_highs(&self, marks: &mut Watermarks) -> Result<(), ScanError> {
        let mut assignment = TopicPartitionList::new();
        // End-of-partition events name only the partition number.
        let mut eofs_due: HashMap<i32, usize> = HashMap::new();
        for ((topic, partition), &(low, high)) in marks.iter() {
            if high > low {
                assignment.add_partition_offset(topic, *partition, Offset::Offset(high - 1))?;
                *eofs_due.entry(*partition).or_default() += 1;
            }
        }
        let mut pending = assignment.count();
        if pending == 0 {
            return Ok(());
        }
        let consumer: ScanConsumer = self.config.create_with_context(QuietEof)?;
        consumer.assign(&assignment)?;
        let started = Instant::now();
        while pending > 0 {
            match consumer.poll(Duration::from_millis(100)) {
                None if started.elapsed() > STALL => return Err(ScanError::Stalled { pending }),
                None => {}
                Some(Ok(message)) => {
                    let key = (message.topic().to_owned(), message.partition());
                    if let Some((_, high)) = marks.get_mut(&key) {
                        *high = (*high).max(message.offset() + 1);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    if let Some(due) = eofs_due.get_mut(&partition).filter(|due| **due > 0) {
                        *due -= 1;
                        pending -= 1;
                    }
                }
                Some(Err(error)) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// Ranges from each partition's low watermark to its current high watermark.
    pub fn whole(&self, topics: &[TopicInfo]) -> Result<Vec<Range>, ScanError> {
        let marks = self.watermarks(partitions_of(topics))?;
        let mut ranges: Vec<Range> = marks
            .into_iter()
            .map(|((topic, partition), (low, high))| Range {
                topic,
                partition,
                start: low,
                end: Some(high),
            })
            .collect();
        ranges.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(ranges)
    }

    /// Calls `visit` for every record of the ranges, in offset order per
    /// partition, until every bounded range is read or `visit` breaks; returns
    /// how many records were visited. With `progress`, a bar on stderr (shown
    /// only when stderr is a terminal) counts the records of bounded ranges.
    pub fn scan(
        &self,
        ranges: &[Range],
        progress: bool,
        mut visit: impl FnMut(&BorrowedMessage<'_>) -> ControlFlow<()>,
    ) -> Result<u64, ScanError> {
        let mut assignment = TopicPartitionList::new();
        // Bounded ranges still being read, by topic then partition, to their end.
        let mut open: HashMap<String, HashMap<i32, i64>> = HashMap::new();
        let mut pending = 0usize;
        let mut follow = false;
        let mut total = 0u64;
        for range in ranges {
            match range.end {
                Some(end) if end <= range.start => continue,
                Some(end) => {
                    open.entry(range.topic.clone())
                        .or_default()
                        .insert(range.partition, end);
                    pending += 1;
                    total += (end - range.start) as u64;
                }
                None => follow = true,
            }
            assignment.add_partition_offset(
                &range.topic,
                range.partition,
                Offset::Offset(range.start),
            )?;
        }
        if assignment.count() == 0 {
            return Ok(0);
        }
        let consumer: ScanConsumer = self.config.create_with_context(QuietEof)?;
        consumer.assign(&assignment)?;
        let bar = progress_bar(progress, total);
        let mut visited = 0u64;
        let mut last_record = Instant::now();
        while follow || pending > 0 {
            let message = match consumer.poll(Duration::from_millis(100)) {
                None => {
                    if !follow && last_record.elapsed() > STALL {
                        return Err(ScanError::Stalled { pending });
                    }
                    continue;
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    pending -= close_drained(&consumer, partition, &mut open)?;
                    continue;
                }
                Some(Err(error)) => return Err(error.into()),
                Some(Ok(message)) => message,
            };
            last_record = Instant::now();
            let end = open
                .get(message.topic())
                .and_then(|partitions| partitions.get(&message.partition()))
                .copied();
            if let Some(end) = end {
                if message.offset() >= end {
                    // Written after the scan began: not part of this bounded read.
                    remove(&mut open, message.topic(), message.partition());
                    pending -= 1;
                    continue;
                }
                if message.offset() >= end - 1 {
                    remove(&mut open, message.topic(), message.partition());
                    pending -= 1;
                }
                bar.inc(1);
            }
            visited += 1;
            if visit(&message).is_break() {
                break;
            }
        }
        bar.finish_and_clear();
        Ok(visited)
    }
}

/// End-of-partition reached for `partition` of some topic (librdkafka does
/// not say which): closes every open range of that partition number whose
/// position has reached its end, which happens when the last offsets are
/// not records (compacted away or transaction markers).
fn close_drained(
    consumer: &ScanConsumer,
    partition: i32,
    open: &mut HashMap<String, HashMap<i32, i64>>,
) -> Result<usize, ScanError> {
    let positions = consumer.position()?;
    let mut closed = 0;
    for element in positions.elements() {
        if element.partition() != partition {
            continue;
        }
        let Offset::Offset(position) = element.offset() else {
            continue;
        };
        let drained = open
            .get(element.topic())
            .and_then(|partitions| partitions.get(&partition))
            .is_some_and(|&end| position >= end);
        if drained {
            remove(open, element.topic(), partition);
            closed += 1;
        }
    }
    Ok(closed)
}

/// Every partition of the topics, as (topic, partition).
pub fn partitions_of(topics: &[TopicInfo]) -> impl Iterator<Item = (&str, i32)> {
    topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.as_str(), p.partition)))
}

fn remove(open: &mut HashMap<String, HashMap<i32, i64>>, topic: &str, partition: i32) {
    if let Some(partitions) = open.get_mut(topic) {
        partitions.remove(&partition);
        if partitions.is_empty() {
            open.remove(topic);
        }
    }
}

fn progress_bar(wanted: bool, total: u64) -> ProgressBar {
    if !wanted {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {human_pos}/{human_len} records {wide_bar} {per_sec} eta {eta}",
        )
        .expect("the template is valid"),
    );
    bar
}

/// A record as an operator sees it: where it is, and its envelope, or why it
/// has none.
#[derive(Debug, Clone, Serialize)]
pub struct RecordView {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's Kafka timestamp, milliseconds since the Unix epoch.
    pub timestamp: Option<i64>,
    pub key: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    Envelope(Envelope),
    Undecodable(Undecodable),
    /// No value: a deletion on a compacted topic.
    Tombstone {},
}

/// What a record that is not an envelope looks like, so that garbage can be
/// told apart from a newer envelope version at a glance.
#[derive(Debug, Clone, Serialize)]
pub struct Undecodable {
    pub error: String,
    pub size: usize,
    pub utf8_preview: String,
    pub hex_preview: String,
}

const PREVIEW_BYTES: usize = 64;

impl RecordView {
    pub fn new(message: &BorrowedMessage<'_>) -> Self {
        let body = match message.payload() {
            None => Body::Tombstone {},
            // Inspection shows records of any size: the limit is the consumers' concern.
            Some(value) => match Envelope::decode(value, usize::MAX) {
                Ok(envelope) => Body::Envelope(envelope),
                Err(error) => Body::Undecodable(Undecodable::new(value, error.to_string())),
            },
        };
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                        (h.key.to_owned(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            body,
        }
    }

    pub fn envelope(&self) -> Option<&Envelope> {
        match &self.body {
            Body::Envelope(envelope) => Some(envelope),
            _ => None,
        }
    }

    /// One header line and one payload line, coloured when stdout is a terminal.
    pub fn render(&self) -> String {
        let position = console::style(format!(
            "{}[{}]@{}",
            self.topic, self.partition, self.offset
        ))
        .bold();
        let key = self.key.as_deref().unwrap_or("-");
        let mut header = format!("{position} key={}", console::style(key).cyan());
        for (name, value) in &self.headers {
            header.push_str(&format!(" {name}={value}"));
        }
        match &self.body {
            Body::Envelope(envelope) => format!(
                "{header} {} {} corr={} from={} id={}\n  {}",
                timestamp(envelope.created_at),
                console::style(&envelope.kind).green().bold(),
                console::style(&envelope.correlation_id).yellow(),
                console::style(&envelope.source).magenta(),
                envelope.message_id,
                envelope.payload
            ),
            Body::Undecodable(bad) => format!(
                "{header} {}: {} ({} bytes)\n  utf8: {:?}\n  hex:  {}",
                console::style("undecodable").red().bold(),
                bad.error,
                bad.size,
                bad.utf8_preview,
                bad.hex_preview
            ),
            Body::Tombstone {} => format!("{header} {}", console::style("tombstone").dim()),
        }
    }
}

impl Undecodable {
    fn new(value: &[u8], error: String) -> Self {
        let head = &value[..value.len().min(PREVIEW_BYTES)];
        Self {
            error,
            size: value.len(),
            utf8_preview: String::from_utf8_lossy(head).into_owned(),
            hex_preview: head.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn timestamp(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// How long ago `ms` was, to the second.
pub fn age(ms: i64) -> String {
    let seconds = ((wfm_protocol::now_ms() - ms).max(0) / 1000) as u64;
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

/// A table in the house style: no borders, aligned columns.
pub fn table<const N: usize>(header: [&str; N]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(header);
    table
}

/// Writes `value` as one line of JSON on stdout.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
