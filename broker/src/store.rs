//! The embedded broker's storage: tansu's engine for everything, except that
//! an ephemeral broker keeps its record batches in an indexed in-memory log.
//!
//! Why: tansu's memory engine stores each batch as an object and lists every
//! object of a partition on every fetch, so each fetch costs time in
//! proportion to the partition's whole history. Under load that made the
//! broker the largest consumer of CPU in `wfm up`, and the longer it ran the
//! slower it got. Here a fetch is a binary search; produce, fetch, offset
//! stages and offset listings never touch tansu's object store. Topics,
//! groups, committed offsets and producer ids stay with tansu.
//!
//! Two of tansu's quirks are not reproduced: a fetch from an offset inside a
//! batch returns that batch (as Kafka does; tansu returned only later batches),
//! and the latest offset is the high watermark (tansu answered the last
//! batch's base offset + 1).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tansu_sans_io::{
    create_topics_request::CreatableTopic, delete_groups_response::DeletableGroupResult,
    delete_records_request::DeleteRecordsTopic, delete_records_response::DeleteRecordsTopicResult,
    describe_cluster_response::DescribeClusterBroker,
    describe_configs_response::DescribeConfigsResult,
    describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic,
    incremental_alter_configs_request::AlterConfigsResource,
    incremental_alter_configs_response::AlterConfigsResourceResponse,
    list_groups_response::ListedGroup, record::deflated,
    txn_offset_commit_response::TxnOffsetCommitResponseTopic, ConfigResource, ErrorCode,
    IsolationLevel, ListOffset, ScramMechanism,
};
use tansu_storage::{
    BrokerRegistrationRequest, Error, GroupDetail, ListOffsetResponse, MetadataResponse,
    NamedGroupDetail, OffsetCommitRequest, OffsetStage, ProducerIdResponse, Result,
    ScramCredential, Storage, StorageContainer, TopicId, Topition, TxnAddPartitionsRequest,
    TxnAddPartitionsResponse, TxnOffsetCommitRequest, UpdateError, Version,
};
use url::Url;
use uuid::Uuid;

/// tansu's storage, with the record log in memory when `memory` is set.
#[derive(Clone, Debug)]
pub struct Store {
    tansu: StorageContainer,
    memory: Option<Arc<MemoryLog>>,
}

impl Store {
    pub fn durable(tansu: StorageContainer) -> Self {
        Self {
            tansu,
            memory: None,
        }
    }

    pub fn ephemeral(tansu: StorageContainer) -> Self {
        Self {
            tansu,
            memory: Some(Arc::default()),
        }
    }

    /// The partitions `topic` has in tansu's metadata, once it exists.
    async fn partitions_of(&self, topic: &TopicId) -> Result<Vec<Topition>> {
        let metadata = self
            .tansu
            .metadata(Some(std::slice::from_ref(topic)))
            .await?;
        Ok(metadata
            .topics()
            .iter()
            .filter_map(|t| Some((t.name.clone()?, t.partitions.as_ref()?)))
            .flat_map(|(name, partitions)| {
                partitions
                    .iter()
                    .map(move |p| Topition::new(name.clone(), p.partition_index))
            })
            .collect())
    }
}

/// Record batches by partition, each with its offset assigned.
#[derive(Debug, Default)]
struct MemoryLog {
    partitions: Mutex<HashMap<Topition, Partition>>,
    /// tansu answers metadata from its object store; it only changes when a
    /// topic is created or deleted or a broker registers, which go through here.
    metadata: Mutex<HashMap<Option<Vec<TopicId>>, MetadataResponse>>,
}

#[derive(Debug, Default)]
struct Partition {
    /// In offset order, without gaps.
    batches: Vec<deflated::Batch>,
    high_watermark: i64,
    /// Idempotent producers: producer id → (epoch, next expected sequence).
    sequences: HashMap<i64, (i16, i32)>,
}

impl Partition {
    fn append(&mut self, mut batch: deflated::Batch) -> Result<i64> {
        if batch.is_idempotent() {
            self.check_sequence(&batch)?;
        }
        let base_offset = self.high_watermark;
        batch.base_offset = base_offset;
        self.high_watermark += i64::from(batch.last_offset_delta) + 1;
        self.batches.push(batch);
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
    fn read(&self, offset: i64, max_bytes: u32) -> Vec<deflated::Batch> {
        if offset < 0 || offset >= self.high_watermark {
            return Vec::new();
        }
        let first = self
            .batches
            .partition_point(|b| b.base_offset + i64::from(b.last_offset_delta) < offset);
        let mut bytes = 0u64;
        let mut batches = Vec::new();
        for batch in &self.batches[first..] {
            batches.push(batch.clone());
            // The batch as sent: base offset and length, then `batch_length` bytes.
            bytes += 12 + u64::try_from(batch.batch_length).unwrap_or(0);
            if bytes >= u64::from(max_bytes) {
                break;
            }
        }
        batches
    }

    /// The offset of the first batch written at or after `at`, else the high watermark.
    fn offset_at(&self, at: SystemTime) -> i64 {
        let at_ms = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self.batches
            .iter()
            .find(|b| b.max_timestamp >= at_ms)
            .map_or(self.high_watermark, |b| b.base_offset)
    }

    fn stage(&self) -> OffsetStage {
        offset_stage(self.high_watermark)
    }
}

/// tansu keeps `OffsetStage`'s fields private; it can only be deserialized.
fn offset_stage(high_watermark: i64) -> OffsetStage {
    serde_json::from_value(serde_json::json!({
        "last_stable": high_watermark,
        "high_watermark": high_watermark,
        "log_start": 0,
    }))
    .expect("an OffsetStage deserializes from its three fields")
}

impl MemoryLog {
    fn with<T>(&self, topition: &Topition, f: impl FnOnce(&mut Partition) -> T) -> Result<T> {
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let partition = partitions
            .get_mut(topition)
            .ok_or(Error::Api(ErrorCode::UnknownTopicOrPartition))?;
        Ok(f(partition))
    }

    fn topics_changed(&self) {
        self.metadata
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

#[async_trait]
impl Storage for Store {
    async fn register_broker(&self, broker_registration: BrokerRegistrationRequest) -> Result<()> {
        self.tansu.register_broker(broker_registration).await?;
        if let Some(memory) = &self.memory {
            // Metadata names the brokers too.
            memory.topics_changed();
        }
        Ok(())
    }

    async fn create_topic(&self, topic: CreatableTopic, validate_only: bool) -> Result<Uuid> {
        let name = TopicId::Name(topic.name.clone());
        let id = self.tansu.create_topic(topic, validate_only).await?;
        if let (Some(memory), false) = (&self.memory, validate_only) {
            memory.topics_changed();
            let created = self.partitions_of(&name).await?;
            let mut partitions = memory
                .partitions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for topition in created {
                partitions.entry(topition).or_default();
            }
        }
        Ok(id)
    }

    async fn incremental_alter_resource(
        &self,
        resource: AlterConfigsResource,
    ) -> Result<AlterConfigsResourceResponse> {
        self.tansu.incremental_alter_resource(resource).await
    }

    async fn delete_records(
        &self,
        topics: &[DeleteRecordsTopic],
    ) -> Result<Vec<DeleteRecordsTopicResult>> {
        self.tansu.delete_records(topics).await
    }

    async fn delete_topic(&self, topic: &TopicId) -> Result<ErrorCode> {
        let Some(memory) = &self.memory else {
            return self.tansu.delete_topic(topic).await;
        };
        let doomed = self.partitions_of(topic).await?;
        let outcome = self.tansu.delete_topic(topic).await?;
        memory.topics_changed();
        if outcome == ErrorCode::None {
            let mut partitions = memory
                .partitions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for topition in &doomed {
                partitions.remove(topition);
            }
        }
        Ok(outcome)
    }

    async fn brokers(&self) -> Result<Vec<DescribeClusterBroker>> {
        self.tansu.brokers().await
    }

    async fn produce(
        &self,
        transaction_id: Option<&str>,
        topition: &Topition,
        batch: deflated::Batch,
    ) -> Result<i64> {
        match &self.memory {
            // Transactions stay with tansu's engine, which wfm does not use.
            Some(memory) if transaction_id.is_none() => {
                memory.with(topition, |partition| partition.append(batch))?
            }
            _ => self.tansu.produce(transaction_id, topition, batch).await,
        }
    }

    async fn fetch(
        &self,
        topition: &'_ Topition,
        offset: i64,
        min_bytes: u32,
        max_bytes: u32,
        isolation: IsolationLevel,
    ) -> Result<Vec<deflated::Batch>> {
        match &self.memory {
            Some(memory) => memory.with(topition, |partition| partition.read(offset, max_bytes)),
            None => {
                self.tansu
                    .fetch(topition, offset, min_bytes, max_bytes, isolation)
                    .await
            }
        }
    }

    async fn offset_stage(&self, topition: &Topition) -> Result<OffsetStage> {
        match &self.memory {
            Some(memory) => memory.with(topition, |partition| partition.stage()),
            None => self.tansu.offset_stage(topition).await,
        }
    }

    async fn list_offsets(
        &self,
        isolation_level: IsolationLevel,
        offsets: &[(Topition, ListOffset)],
    ) -> Result<Vec<(Topition, ListOffsetResponse)>> {
        let Some(memory) = &self.memory else {
            return self.tansu.list_offsets(isolation_level, offsets).await;
        };
        offsets
            .iter()
            .map(|(topition, request)| {
                let offset = memory.with(topition, |partition| match request {
                    ListOffset::Earliest => 0,
                    ListOffset::Latest => partition.high_watermark,
                    ListOffset::Timestamp(at) => partition.offset_at(*at),
                })?;
                Ok((
                    topition.clone(),
                    ListOffsetResponse {
                        error_code: ErrorCode::None,
                        offset: Some(offset),
                        ..Default::default()
                    },
                ))
            })
            .collect()
    }

    async fn offset_commit(
        &self,
        group_id: &str,
        retention_time_ms: Option<Duration>,
        offsets: &[(Topition, OffsetCommitRequest)],
    ) -> Result<Vec<(Topition, ErrorCode)>> {
        self.tansu
            .offset_commit(group_id, retention_time_ms, offsets)
            .await
    }

    async fn offset_fetch(
        &self,
        group_id: Option<&str>,
        topics: &[Topition],
        require_stable: Option<bool>,
    ) -> Result<std::collections::BTreeMap<Topition, i64>> {
        self.tansu
            .offset_fetch(group_id, topics, require_stable)
            .await
    }

    async fn committed_offset_topitions(
        &self,
        group_id: &str,
    ) -> Result<std::collections::BTreeMap<Topition, i64>> {
        self.tansu.committed_offset_topitions(group_id).await
    }

    async fn metadata(&self, topics: Option<&[TopicId]>) -> Result<MetadataResponse> {
        let Some(memory) = &self.memory else {
            return self.tansu.metadata(topics).await;
        };
        let key = topics.map(<[TopicId]>::to_vec);
        if let Some(cached) = memory
            .metadata
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(cached.clone());
        }
        let response = self.tansu.metadata(topics).await?;
        memory
            .metadata
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, response.clone());
        Ok(response)
    }

    async fn upsert_user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
        credential: ScramCredential,
    ) -> Result<()> {
        self.tansu
            .upsert_user_scram_credential(user, mechanism, credential)
            .await
    }

    async fn delete_user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<()> {
        self.tansu
            .delete_user_scram_credential(user, mechanism)
            .await
    }

    async fn user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<Option<ScramCredential>> {
        self.tansu.user_scram_credential(user, mechanism).await
    }

    async fn describe_config(
        &self,
        name: &str,
        resource: ConfigResource,
        keys: Option<&[String]>,
    ) -> Result<DescribeConfigsResult> {
        self.tansu.describe_config(name, resource, keys).await
    }

    async fn list_groups(&self, states_filter: Option<&[String]>) -> Result<Vec<ListedGroup>> {
        self.tansu.list_groups(states_filter).await
    }

    async fn delete_groups(
        &self,
        group_ids: Option<&[String]>,
    ) -> Result<Vec<DeletableGroupResult>> {
        self.tansu.delete_groups(group_ids).await
    }

    async fn describe_groups(
        &self,
        group_ids: Option<&[String]>,
        include_authorized_operations: bool,
    ) -> Result<Vec<NamedGroupDetail>> {
        self.tansu
            .describe_groups(group_ids, include_authorized_operations)
            .await
    }

    async fn describe_topic_partitions(
        &self,
        topics: Option<&[TopicId]>,
        partition_limit: i32,
        cursor: Option<Topition>,
    ) -> Result<Vec<DescribeTopicPartitionsResponseTopic>> {
        self.tansu
            .describe_topic_partitions(topics, partition_limit, cursor)
            .await
    }

    async fn update_group(
        &self,
        group_id: &str,
        detail: GroupDetail,
        version: Option<Version>,
    ) -> Result<Version, UpdateError<GroupDetail>> {
        self.tansu.update_group(group_id, detail, version).await
    }

    async fn init_producer(
        &self,
        transaction_id: Option<&str>,
        transaction_timeout_ms: i32,
        producer_id: Option<i64>,
        producer_epoch: Option<i16>,
    ) -> Result<ProducerIdResponse> {
        self.tansu
            .init_producer(
                transaction_id,
                transaction_timeout_ms,
                producer_id,
                producer_epoch,
            )
            .await
    }

    async fn txn_add_offsets(
        &self,
        transaction_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        group_id: &str,
    ) -> Result<ErrorCode> {
        self.tansu
            .txn_add_offsets(transaction_id, producer_id, producer_epoch, group_id)
            .await
    }

    async fn txn_add_partitions(
        &self,
        partitions: TxnAddPartitionsRequest,
    ) -> Result<TxnAddPartitionsResponse> {
        self.tansu.txn_add_partitions(partitions).await
    }

    async fn txn_offset_commit(
        &self,
        offsets: TxnOffsetCommitRequest,
    ) -> Result<Vec<TxnOffsetCommitResponseTopic>> {
        self.tansu.txn_offset_commit(offsets).await
    }

    async fn txn_end(
        &self,
        transaction_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        committed: bool,
    ) -> Result<ErrorCode> {
        self.tansu
            .txn_end(transaction_id, producer_id, producer_epoch, committed)
            .await
    }

    async fn maintain(&self, now: SystemTime) -> Result<()> {
        self.tansu.maintain(now).await
    }

    async fn cluster_id(&self) -> Result<String> {
        self.tansu.cluster_id().await
    }

    async fn node(&self) -> Result<i32> {
        self.tansu.node().await
    }

    async fn advertised_listener(&self) -> Result<Url> {
        self.tansu.advertised_listener().await
    }

    async fn ping(&self) -> Result<()> {
        self.tansu.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn bases(batches: &[deflated::Batch]) -> Vec<i64> {
        batches.iter().map(|b| b.base_offset).collect()
    }

    #[test]
    fn batches_get_consecutive_offsets() {
        let mut partition = Partition::default();
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
        let mut partition = Partition::default();
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
        let mut partition = Partition::default();
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
        let mut partition = Partition::default();
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
        let mut partition = Partition::default();
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
}
