//! The ephemeral broker's record log: batches by partition in memory, with
//! offsets assigned, idempotent producers' sequences checked, and the
//! records nobody needs any more dropped, so that a long run under load does
//! not grow without bound.
//!
//! A record is *dead* when
//! - on a topic with `cleanup.policy=delete`, every consumer group that
//!   commits offsets on its partition has read past it, or it is older than
//!   the topic's `retention.ms`. A partition no group commits on and without
//!   `retention.ms` (the history, dead letters) keeps everything: nothing is
//!   dropped that a reader may still need;
//! - on a compacted topic, a later record has its key, or it is a tombstone
//!   older than [`TOMBSTONE_RETENTION_MS`] and nothing older of its key is
//!   left, as Kafka's log cleaner has it.
//!
//! Dead records stay until a partition holds [`KEEP_DEAD_BYTES`] of them, so
//! that the operator's tools (`wfm trace`, `wfm topics tail`) still find
//! recent traffic; past that, the oldest go, a batch at a time, or, in a
//! batch that still holds live records, by rewriting it without them.
//! Offsets never change: a reader asking for a dropped offset gets the next
//! one stored, as from a compacted topic.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;
use tansu_sans_io::record::deflated;
use tansu_sans_io::ErrorCode;
use tansu_storage::{Error, MetadataResponse, OffsetStage, Result, TopicId, Topition};

use crate::records::{self, RecordKey};

/// Bytes of dead records a partition keeps for the operator's tools.
pub const KEEP_DEAD_BYTES: u64 = 16 << 20;
/// How long a compacted topic keeps a tombstone, so that a reader that was
/// behind still sees the key deleted (Kafka's `delete.retention.ms`).
pub const TOMBSTONE_RETENTION_MS: i64 = 10 * 60 * 1000;

/// Record batches by partition, each with its offset assigned.
#[derive(Debug, Default)]
pub struct MemoryLog {
    partitions: Mutex<HashMap<Topition, Partition>>,
    /// tansu answers metadata from its object store; it only changes when a
    /// topic is created or deleted or a broker registers, which go through here.
    pub metadata: Mutex<HashMap<Option<Vec<TopicId>>, MetadataResponse>>,
}

impl MemoryLog {
    pub fn with<T>(&self, topition: &Topition, f: impl FnOnce(&mut Partition) -> T) -> Result<T> {
        let mut partitions = self.lock();
        let partition = partitions
            .get_mut(topition)
            .ok_or(Error::Api(ErrorCode::UnknownTopicOrPartition))?;
        Ok(f(partition))
    }

    pub fn create(&self, topitions: impl IntoIterator<Item = Topition>, policy: TopicPolicy) {
        let mut partitions = self.lock();
        for topition in topitions {
            partitions
                .entry(topition)
                .or_insert_with(|| Partition::new(policy, KEEP_DEAD_BYTES));
        }
    }

    pub fn delete(&self, topitions: &[Topition]) {
        let mut partitions = self.lock();
        for topition in topitions {
            partitions.remove(topition);
        }
    }

    /// `group` has read `topition` up to `offset` (the next offset it reads).
    pub fn committed(&self, group: &str, topition: &Topition, offset: i64) {
        if let Some(partition) = self.lock().get_mut(topition) {
            partition.committed(group, offset, now_ms());
        }
    }

    /// Groups that no longer exist hold no records back.
    pub fn groups_deleted(&self, groups: &[String]) {
        for partition in self.lock().values_mut() {
            partition.forget_groups(groups, now_ms());
        }
    }

    pub fn topics_changed(&self) {
        self.metadata
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Topition, Partition>> {
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a topic's configuration says about dropping its records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicPolicy {
    /// `cleanup.policy` includes `compact`.
    pub compacted: bool,
    /// `retention.ms`, when set (delete policy only).
    pub retention_ms: Option<i64>,
}

#[derive(Debug)]
pub struct Partition {
    /// In offset order; after records were dropped, with gaps.
    batches: VecDeque<Stored>,
    pub high_watermark: i64,
    /// Idempotent producers: producer id → (epoch, next expected sequence).
    sequences: HashMap<i64, (i16, i32)>,
    cleanup: Cleanup,
    dead_bytes: u64,
    /// Dead records are dropped once there are more bytes of them than this.
    keep_dead_bytes: u64,
}

#[derive(Debug)]
struct Stored {
    batch: deflated::Batch,
    /// Offset deltas of the records that died one by one (compaction).
    dead: Vec<i32>,
    /// Every record is dead (read by every group).
    all_dead: bool,
    /// The bytes one record of this batch counts for in `dead_bytes`.
    record_bytes: u64,
    /// The keyed records, on a compacted topic.
    keys: Vec<RecordKey>,
}

impl Stored {
    fn last_offset(&self) -> i64 {
        self.batch.base_offset + i64::from(self.batch.last_offset_delta)
    }

    fn records(&self) -> u64 {
        u64::from(self.batch.record_count.max(1))
    }

    fn dead_records(&self) -> u64 {
        if self.all_dead {
            self.records()
        } else {
            self.dead.len() as u64
        }
    }

    fn is_dead(&self) -> bool {
        self.dead_records() >= self.records()
    }

    /// Marks the record at `delta` dead; the bytes that adds to the dead.
    fn kill(&mut self, delta: i32) -> u64 {
        if self.all_dead || self.dead.contains(&delta) {
            return 0;
        }
        self.dead.push(delta);
        self.record_bytes
    }

    /// Marks every record dead; the bytes that adds to the dead.
    fn kill_all(&mut self) -> u64 {
        let added = self.record_bytes * (self.records() - self.dead_records());
        self.all_dead = true;
        added
    }
}

#[derive(Debug)]
enum Cleanup {
    /// `cleanup.policy=delete`: a batch dies once every group committing on
    /// the partition has read past it.
    Delete {
        commits: HashMap<String, i64>,
        /// Every offset below this is dead.
        read_upto: i64,
        retention_ms: Option<i64>,
        /// Every offset below this is older than `retention_ms`.
        expired_upto: i64,
    },
    /// `cleanup.policy=compact`: a record dies once a later one has its key.
    Compact(Keys),
}

#[derive(Debug, Default)]
struct Keys {
    /// Per key: the offset of its latest record, and whether that is a tombstone.
    latest: HashMap<Bytes, (i64, bool)>,
    /// Per key: how many of its records are stored, dead or not.
    stored: HashMap<Bytes, u32>,
    /// Tombstones in the order they were written: (written at, offset, key).
    tombstones: VecDeque<(i64, i64, Bytes)>,
}

impl Partition {
    pub fn new(policy: TopicPolicy, keep_dead_bytes: u64) -> Self {
        Self {
            batches: VecDeque::new(),
            high_watermark: 0,
            sequences: HashMap::new(),
            cleanup: if policy.compacted {
                Cleanup::Compact(Keys::default())
            } else {
                Cleanup::Delete {
                    commits: HashMap::new(),
                    read_upto: 0,
                    retention_ms: policy.retention_ms,
                    expired_upto: 0,
                }
            },
            dead_bytes: 0,
            keep_dead_bytes,
        }
    }

    pub fn append(&mut self, batch: deflated::Batch) -> Result<i64> {
        self.append_at(batch, now_ms())
    }

    fn append_at(&mut self, mut batch: deflated::Batch, now: i64) -> Result<i64> {
        if batch.is_idempotent() {
            self.check_sequence(&batch)?;
        }
        let base_offset = self.high_watermark;
        batch.base_offset = base_offset;
        self.high_watermark += i64::from(batch.last_offset_delta) + 1;
        let records = u64::from(batch.record_count.max(1));
        let size = 12 + u64::try_from(batch.batch_length).unwrap_or(0);
        let keys = match self.cleanup {
            // Records that cannot be read here stay: nothing supersedes them.
            Cleanup::Compact(_) => records::keys(&batch).unwrap_or_default(),
            Cleanup::Delete { .. } => Vec::new(),
        };
        let mut superseded = Vec::new();
        if let Cleanup::Compact(index) = &mut self.cleanup {
            for record in &keys {
                let offset = base_offset + i64::from(record.delta);
                let latest = (offset, record.tombstone);
                if let Some((old, _)) = index.latest.insert(record.key.clone(), latest) {
                    superseded.push(old);
                }
                *index.stored.entry(record.key.clone()).or_default() += 1;
                if record.tombstone {
                    index
                        .tombstones
                        .push_back((now, offset, record.key.clone()));
                }
            }
        }
        self.batches.push_back(Stored {
            batch,
            dead: Vec::new(),
            all_dead: false,
            record_bytes: size.div_ceil(records),
            keys,
        });
        for offset in superseded {
            self.kill(offset);
        }
        self.age(now);
        self.trim();
        Ok(base_offset)
    }

    /// Kafka's rules for an idempotent producer: a resent batch is a
    /// duplicate (which the client takes as success), a gap is an error, and
    /// an older epoch has been fenced.
    fn check_sequence(&mut self, batch: &deflated::Batch) -> Result<()> {
        let next = batch.base_sequence + batch.last_offset_delta + 1;
        match self.sequences.get(&batch.producer_id).copied() {
            Some((epoch, _)) if batch.producer_epoch < epoch => {
                Err(Error::Api(ErrorCode::ProducerFenced))
            }
            Some((epoch, expected)) if batch.producer_epoch == epoch => {
                match batch.base_sequence.cmp(&expected) {
                    std::cmp::Ordering::Less => Err(Error::Api(ErrorCode::DuplicateSequenceNumber)),
                    std::cmp::Ordering::Greater => {
                        Err(Error::Api(ErrorCode::OutOfOrderSequenceNumber))
                    }
                    std::cmp::Ordering::Equal => {
                        self.sequences
                            .insert(batch.producer_id, (batch.producer_epoch, next));
                        Ok(())
                    }
                }
            }
            _ => {
                self.sequences
                    .insert(batch.producer_id, (batch.producer_epoch, next));
                Ok(())
            }
        }
    }

    /// The batch holding `offset` and those after it, until `max_bytes` is
    /// reached (the batch that reaches it included, so a first batch larger
    /// than `max_bytes` is still returned).
    ///
    /// tansu's fetch service calls again from `offset` + the records returned
    /// until it gets nothing or `max_bytes` is used up. When `offset` is inside
    /// the first batch that sum overshoots the next batch's start, so a reply
    /// cut short by `max_bytes` must use all of it: then the service stops.
    pub fn read(&self, offset: i64, max_bytes: u32) -> Vec<deflated::Batch> {
        if offset < 0 || offset >= self.high_watermark {
            return Vec::new();
        }
        let first = self.index_of(offset);
        let mut bytes = 0u64;
        let mut batches = Vec::new();
        for stored in self.batches.range(first..) {
            batches.push(stored.batch.clone());
            // The batch as sent: base offset and length, then `batch_length` bytes.
            bytes += 12 + u64::try_from(stored.batch.batch_length).unwrap_or(0);
            if bytes >= u64::from(max_bytes) {
                break;
            }
        }
        batches
    }

    /// The offset of the first batch written at or after `at`, else the high watermark.
    pub fn offset_at(&self, at: SystemTime) -> i64 {
        let at_ms = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self.batches
            .iter()
            .find(|s| s.batch.max_timestamp >= at_ms)
            .map_or(self.high_watermark, |s| s.batch.base_offset)
    }

    /// The first offset still stored, else the high watermark.
    pub fn log_start(&self) -> i64 {
        self.batches
            .front()
            .map_or(self.high_watermark, |s| s.batch.base_offset)
    }

    pub fn stage(&self) -> OffsetStage {
        offset_stage(self.log_start(), self.high_watermark)
    }

    fn committed(&mut self, group: &str, offset: i64, now: i64) {
        if let Cleanup::Delete { commits, .. } = &mut self.cleanup {
            commits.insert(group.to_owned(), offset);
            self.read_by_every_group();
            self.age(now);
            self.trim();
        }
    }

    fn forget_groups(&mut self, groups: &[String], now: i64) {
        if let Cleanup::Delete { commits, .. } = &mut self.cleanup {
            commits.retain(|group, _| !groups.contains(group));
            self.read_by_every_group();
            self.age(now);
            self.trim();
        }
    }

    /// Marks dead what every committing group has read.
    fn read_by_every_group(&mut self) {
        let Cleanup::Delete {
            commits, read_upto, ..
        } = &mut self.cleanup
        else {
            return;
        };
        let Some(upto) = commits.values().min().copied() else {
            return;
        };
        if upto <= *read_upto {
            return;
        }
        let from = *read_upto;
        *read_upto = upto;
        let first = self.index_of(from);
        for stored in self.batches.range_mut(first..) {
            if stored.last_offset() >= upto {
                break;
            }
            self.dead_bytes += stored.kill_all();
        }
    }

    /// What dies of age: records older than the topic's retention, and
    /// tombstones old enough and alone with their key (the key is gone).
    fn age(&mut self, now: i64) {
        let keys = match &mut self.cleanup {
            Cleanup::Compact(keys) => keys,
            Cleanup::Delete {
                retention_ms: Some(retention_ms),
                expired_upto,
                ..
            } => {
                let before = now - *retention_ms;
                let first = self
                    .batches
                    .partition_point(|s| s.last_offset() < *expired_upto);
                for stored in self.batches.range_mut(first..) {
                    if stored.batch.max_timestamp >= before {
                        break;
                    }
                    *expired_upto = stored.last_offset() + 1;
                    self.dead_bytes += stored.kill_all();
                }
                return;
            }
            Cleanup::Delete { .. } => return,
        };
        let mut expired = Vec::new();
        while let Some((at, _, _)) = keys.tombstones.front() {
            if now - at < TOMBSTONE_RETENTION_MS {
                break;
            }
            let (_, offset, key) = keys.tombstones.pop_front().expect("a front");
            if keys.latest.get(&key) != Some(&(offset, true)) {
                // Superseded by a later record of the key: it died then.
                continue;
            }
            if keys.stored.get(&key) == Some(&1) {
                keys.latest.remove(&key);
                expired.push(offset);
            } else {
                // Older records of the key are still stored, dead: a reader
                // must see them deleted. Look again once they may be gone.
                keys.tombstones.push_back((now, offset, key));
            }
        }
        for offset in expired {
            self.kill(offset);
        }
    }

    fn kill(&mut self, offset: i64) {
        let index = self.index_of(offset);
        if let Some(stored) = self.batches.get_mut(index) {
            if stored.batch.base_offset <= offset && offset <= stored.last_offset() {
                let delta = i32::try_from(offset - stored.batch.base_offset).unwrap_or(i32::MAX);
                self.dead_bytes += stored.kill(delta);
            }
        }
    }

    /// Drops the oldest dead records once there are more than the tools
    /// need, down to half of that, so that rewriting is rare.
    fn trim(&mut self) {
        if self.dead_bytes <= self.keep_dead_bytes {
            return;
        }
        let target = self.keep_dead_bytes / 2;
        let mut dead_bytes = self.dead_bytes;
        let mut dropped_keys = Vec::new();
        self.batches.retain_mut(|stored| {
            if dead_bytes <= target || stored.dead_records() == 0 {
                return true;
            }
            let freed = stored.record_bytes * stored.dead_records();
            if stored.is_dead() {
                dead_bytes = dead_bytes.saturating_sub(freed);
                dropped_keys.extend(stored.keys.drain(..).map(|record| record.key));
                return false;
            }
            if let Some(batch) = records::without(&stored.batch, &stored.dead) {
                dead_bytes = dead_bytes.saturating_sub(freed);
                let (lost, kept) = std::mem::take(&mut stored.keys)
                    .into_iter()
                    .partition::<Vec<_>, _>(|record| stored.dead.contains(&record.delta));
                dropped_keys.extend(lost.into_iter().map(|record| record.key));
                stored.keys = kept;
                stored.batch = batch;
                stored.dead.clear();
            }
            true
        });
        self.dead_bytes = dead_bytes;
        if let Cleanup::Compact(keys) = &mut self.cleanup {
            for key in dropped_keys {
                if let Some(count) = keys.stored.get_mut(&key) {
                    *count -= 1;
                    if *count == 0 {
                        keys.stored.remove(&key);
                    }
                }
            }
        }
    }

    /// The index of the batch holding `offset`, or of the first after it.
    fn index_of(&self, offset: i64) -> usize {
        self.batches.partition_point(|s| s.last_offset() < offset)
    }
}

/// tansu keeps `OffsetStage`'s fields private; it can only be deserialized.
fn offset_stage(log_start: i64, high_watermark: i64) -> OffsetStage {
    serde_json::from_value(serde_json::json!({
        "last_stable": high_watermark,
        "high_watermark": high_watermark,
        "log_start": log_start,
    }))
    .expect("an OffsetStage deserializes from its three fields")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tansu_sans_io::record::{inflated, Record};

    const NO_DROPS: u64 = u64::MAX;
    const COMPACTED: TopicPolicy = TopicPolicy {
        compacted: true,
        retention_ms: None,
    };

    /// A batch of `records` records, `bytes` long on the wire.
    fn batch(records: i32, bytes: i32) -> deflated::Batch {
        deflated::Batch {
            last_offset_delta: records - 1,
            record_count: u32::try_from(records).unwrap(),
            batch_length: bytes - 12,
            producer_id: -1,
            base_sequence: -1,
            ..Default::default()
        }
    }

    fn idempotent(producer_id: i64, epoch: i16, sequence: i32, records: i32) -> deflated::Batch {
        deflated::Batch {
            producer_id,
            producer_epoch: epoch,
            base_sequence: sequence,
            ..batch(records, 100)
        }
    }

    /// A real batch of keyed records; a `None` value is a tombstone.
    fn keyed(records: &[(&str, Option<&str>)]) -> deflated::Batch {
        let mut builder = inflated::Batch::builder()
            .last_offset_delta(i32::try_from(records.len()).unwrap() - 1)
            .producer_id(-1)
            .base_sequence(-1);
        for (delta, (key, value)) in records.iter().enumerate() {
            builder = builder.record(
                Record::builder()
                    .offset_delta(i32::try_from(delta).unwrap())
                    .key(Some(Bytes::copy_from_slice(key.as_bytes())))
                    .value(value.map(|v| Bytes::copy_from_slice(v.as_bytes()))),
            );
        }
        deflated::Batch::try_from(builder.build().unwrap()).unwrap()
    }

    fn bases(batches: &[deflated::Batch]) -> Vec<i64> {
        batches.iter().map(|b| b.base_offset).collect()
    }

    /// Every stored record from the start: (offset, key, value).
    fn contents(partition: &Partition) -> Vec<(i64, String, Option<String>)> {
        let text = |b: Option<Bytes>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
        partition
            .read(0, u32::MAX)
            .iter()
            .flat_map(|batch| {
                let inflated = inflated::Batch::try_from(batch).unwrap();
                let base = inflated.base_offset;
                inflated.records.into_iter().map(move |r| {
                    (
                        base + i64::from(r.offset_delta),
                        text(r.key()).unwrap(),
                        text(r.value()),
                    )
                })
            })
            .collect()
    }

    #[test]
    fn batches_get_consecutive_offsets() {
        let mut partition = Partition::new(TopicPolicy::default(), NO_DROPS);
        assert_eq!(partition.append(batch(3, 100)).unwrap(), 0);
        assert_eq!(partition.append(batch(1, 100)).unwrap(), 3);
        assert_eq!(partition.append(batch(2, 100)).unwrap(), 4);
        assert_eq!(partition.high_watermark, 6);
        assert_eq!(partition.stage().high_watermark(), 6);
        assert_eq!(partition.stage().last_stable(), 6);
        assert_eq!(partition.stage().log_start(), 0);
    }

    #[test]
    fn a_read_inside_a_batch_starts_with_that_batch() {
        let mut partition = Partition::new(TopicPolicy::default(), NO_DROPS);
        for records in [3, 1, 2] {
            partition.append(batch(records, 100)).unwrap();
        }
        assert_eq!(bases(&partition.read(0, u32::MAX)), [0, 3, 4]);
        assert_eq!(bases(&partition.read(2, u32::MAX)), [0, 3, 4]);
        assert_eq!(bases(&partition.read(3, u32::MAX)), [3, 4]);
        assert_eq!(bases(&partition.read(5, u32::MAX)), [4]);
        assert!(partition.read(6, u32::MAX).is_empty());
        assert!(partition.read(-1, u32::MAX).is_empty());
    }

    #[test]
    fn a_read_stops_at_the_batch_that_fills_max_bytes() {
        let mut partition = Partition::new(TopicPolicy::default(), NO_DROPS);
        for _ in 0..5 {
            partition.append(batch(1, 100)).unwrap();
        }
        assert_eq!(bases(&partition.read(0, 250)), [0, 1, 2]);
        assert_eq!(bases(&partition.read(0, 200)), [0, 1]);
        // A first batch larger than the limit is still returned.
        assert_eq!(bases(&partition.read(4, 10)), [4]);
    }

    #[test]
    fn idempotent_producers_follow_kafkas_sequence_rules() {
        let mut partition = Partition::new(TopicPolicy::default(), NO_DROPS);
        partition.append(idempotent(7, 0, 0, 2)).unwrap();
        partition.append(idempotent(7, 0, 2, 1)).unwrap();
        let code = |result: Result<i64>| match result {
            Err(Error::Api(code)) => code,
            other => panic!("expected an API error, got {other:?}"),
        };
        assert_eq!(
            code(partition.append(idempotent(7, 0, 2, 1))),
            ErrorCode::DuplicateSequenceNumber
        );
        assert_eq!(
            code(partition.append(idempotent(7, 0, 5, 1))),
            ErrorCode::OutOfOrderSequenceNumber
        );
        // A new epoch starts over; the old one is fenced from then on.
        partition.append(idempotent(7, 1, 0, 1)).unwrap();
        assert_eq!(
            code(partition.append(idempotent(7, 0, 3, 1))),
            ErrorCode::ProducerFenced
        );
        // Another producer has its own sequence.
        partition.append(idempotent(8, 0, 0, 1)).unwrap();
        assert_eq!(partition.high_watermark, 5);
    }

    #[test]
    fn offsets_by_time_find_the_first_batch_written_then() {
        let mut partition = Partition::new(TopicPolicy::default(), NO_DROPS);
        for at in [1_000, 2_000, 3_000] {
            partition
                .append(deflated::Batch {
                    max_timestamp: at,
                    ..batch(2, 100)
                })
                .unwrap();
        }
        let at = |ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(partition.offset_at(at(0)), 0);
        assert_eq!(partition.offset_at(at(1_500)), 2);
        assert_eq!(partition.offset_at(at(3_000)), 4);
        assert_eq!(partition.offset_at(at(9_000)), 6);
    }

    #[test]
    fn nothing_is_dropped_that_no_group_has_committed() {
        let mut partition = Partition::new(TopicPolicy::default(), 250);
        for _ in 0..10 {
            partition.append(batch(1, 100)).unwrap();
        }
        assert_eq!(partition.log_start(), 0);
        assert_eq!(partition.read(0, u32::MAX).len(), 10);
    }

    #[test]
    fn what_every_group_has_read_is_dropped_past_the_tools_allowance() {
        let mut partition = Partition::new(TopicPolicy::default(), 250);
        for _ in 0..10 {
            partition.append(batch(1, 100)).unwrap();
        }
        // The slowest group holds everything after its offset.
        partition.committed("slow", 2, 0);
        partition.committed("fast", 8, 0);
        assert_eq!(
            partition.log_start(),
            0,
            "200 dead bytes are within the allowance"
        );
        partition.committed("slow", 6, 0);
        // 600 dead bytes: the oldest go until half the allowance is left.
        assert_eq!(partition.log_start(), 5);
        assert_eq!(bases(&partition.read(0, u32::MAX)), [5, 6, 7, 8, 9]);
        assert_eq!(bases(&partition.read(3, u32::MAX)), [5, 6, 7, 8, 9]);
        assert_eq!(partition.high_watermark, 10);
        // A deleted group holds nothing back.
        partition.forget_groups(&["slow".to_owned()], 0);
        assert_eq!(partition.log_start(), 7);
    }

    #[test]
    fn records_older_than_the_retention_die_read_or_not() {
        let policy = TopicPolicy {
            compacted: false,
            retention_ms: Some(1_000),
        };
        let mut partition = Partition::new(policy, 150);
        for at in [1_000, 2_000, 3_000, 4_000] {
            let batch = deflated::Batch {
                max_timestamp: at,
                ..batch(1, 100)
            };
            partition.append_at(batch, at + 500).unwrap();
        }
        // The batches written at 1,000 and 2,000 went once 200 bytes were
        // past the retention (over the allowance of 150); the one written
        // at 3,000 is past it too, but within the allowance.
        assert_eq!(bases(&partition.read(0, u32::MAX)), [2, 3]);
    }

    #[test]
    fn compaction_keeps_the_latest_record_of_every_key() {
        let mut partition = Partition::new(COMPACTED, 1);
        partition
            .append(keyed(&[("a", Some("a1")), ("b", Some("b1"))]))
            .unwrap();
        partition.append(keyed(&[("a", Some("a2"))])).unwrap();
        partition
            .append(keyed(&[("c", Some("c1")), ("a", Some("a3"))]))
            .unwrap();
        assert_eq!(
            contents(&partition),
            [
                (1, "b".into(), Some("b1".into())),
                (3, "c".into(), Some("c1".into())),
                (4, "a".into(), Some("a3".into())),
            ]
        );
        // The rewritten batch keeps its offsets, so reads go on where they were.
        assert_eq!(partition.log_start(), 0);
        assert_eq!(partition.high_watermark, 5);
        assert_eq!(bases(&partition.read(2, u32::MAX)), [3]);
    }

    #[test]
    fn compaction_waits_for_the_tools_allowance() {
        let mut partition = Partition::new(COMPACTED, NO_DROPS);
        partition.append(keyed(&[("a", Some("a1"))])).unwrap();
        partition.append(keyed(&[("a", Some("a2"))])).unwrap();
        assert_eq!(contents(&partition).len(), 2);
    }

    #[test]
    fn a_tombstone_outlives_every_older_record_of_its_key_and_then_goes() {
        let mut partition = Partition::new(COMPACTED, 1);
        let t0 = 1_000_000;
        partition
            .append_at(keyed(&[("a", Some("a1")), ("b", Some("b1"))]), t0)
            .unwrap();
        partition.append_at(keyed(&[("a", None)]), t0).unwrap();
        assert_eq!(
            contents(&partition),
            [(1, "b".into(), Some("b1".into())), (2, "a".into(), None)],
            "the tombstone stays: a reader that was behind must see `a` deleted"
        );
        let later = t0 + TOMBSTONE_RETENTION_MS;
        partition
            .append_at(keyed(&[("c", Some("c1"))]), later)
            .unwrap();
        assert_eq!(
            contents(&partition),
            [
                (1, "b".into(), Some("b1".into())),
                (3, "c".into(), Some("c1".into()))
            ]
        );
        // The key can come back.
        partition
            .append_at(keyed(&[("a", Some("a2"))]), later)
            .unwrap();
        assert_eq!(
            contents(&partition).last(),
            Some(&(4, "a".into(), Some("a2".into())))
        );
    }

    #[test]
    fn a_tombstone_stays_while_an_older_record_of_its_key_is_stored() {
        let mut partition = Partition::new(COMPACTED, NO_DROPS);
        let t0 = 1_000_000;
        partition
            .append_at(keyed(&[("a", Some("a1"))]), t0)
            .unwrap();
        partition.append_at(keyed(&[("a", None)]), t0).unwrap();
        partition
            .append_at(keyed(&[("b", Some("b1"))]), t0 + TOMBSTONE_RETENTION_MS)
            .unwrap();
        assert_eq!(
            contents(&partition),
            [
                (0, "a".into(), Some("a1".into())),
                (1, "a".into(), None),
                (2, "b".into(), Some("b1".into())),
            ]
        );
    }
}
