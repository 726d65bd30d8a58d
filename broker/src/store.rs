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
//! batch's base offset + 1). The log also drops records no reader needs any
//! more (see `memory_log`), which tansu's memory engine never did.

use std::sync::{Arc, PoisonError};
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
    BrokerRegistrationRequest, GroupDetail, ListOffsetResponse, MetadataResponse, NamedGroupDetail,
    OffsetCommitRequest, OffsetStage, ProducerIdResponse, Result, ScramCredential, Storage,
    StorageContainer, TopicId, Topition, TxnAddPartitionsRequest, TxnAddPartitionsResponse,
    TxnOffsetCommitRequest, UpdateError, Version,
};
use url::Url;
use uuid::Uuid;

use crate::memory_log::{MemoryLog, TopicPolicy};

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
        let policy = policy_of(&topic);
        let id = self.tansu.create_topic(topic, validate_only).await?;
        if let (Some(memory), false) = (&self.memory, validate_only) {
            memory.topics_changed();
            memory.create(self.partitions_of(&name).await?, policy);
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
            memory.delete(&doomed);
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
                    ListOffset::Earliest => partition.log_start(),
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
        let outcome = self
            .tansu
            .offset_commit(group_id, retention_time_ms, offsets)
            .await?;
        if let Some(memory) = &self.memory {
            for ((topition, request), (_, code)) in offsets.iter().zip(&outcome) {
                if let (ErrorCode::None, Some(offset)) = (code, committed_offset(request)) {
                    memory.committed(group_id, topition, offset);
                }
            }
        }
        Ok(outcome)
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
        let outcome = self.tansu.delete_groups(group_ids).await?;
        if let Some(memory) = &self.memory {
            let deleted: Vec<String> = outcome
                .iter()
                .filter(|group| group.error_code == i16::from(ErrorCode::None))
                .map(|group| group.group_id.clone())
                .collect();
            memory.groups_deleted(&deleted);
        }
        Ok(outcome)
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

/// What a new topic's configuration says about dropping its records.
fn policy_of(topic: &CreatableTopic) -> TopicPolicy {
    let config = |name: &str| {
        topic
            .configs
            .iter()
            .flatten()
            .find(|config| config.name == name)
            .and_then(|config| config.value.as_deref())
    };
    TopicPolicy {
        compacted: config("cleanup.policy")
            .is_some_and(|policy| policy.split(',').any(|p| p.trim() == "compact")),
        retention_ms: config("retention.ms")
            .and_then(|ms| ms.parse().ok())
            .filter(|ms: &i64| *ms >= 0),
    }
}

/// tansu keeps `OffsetCommitRequest`'s fields private; it serializes them.
fn committed_offset(request: &OffsetCommitRequest) -> Option<i64> {
    serde_json::to_value(request).ok()?.get("offset")?.as_i64()
}
