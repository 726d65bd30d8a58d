// wfm patch: fetches answer as soon as records are there, and otherwise wait
// for a produce instead of sleeping.
//
// tansu-storage 0.6's `FetchService` sleeps out the whole `max_wait_ms` of
// every fetch, even when records are waiting, so each hop through the broker
// costs the full wait, and an idle consumer costs a round trip per wait. Here
// one pass over the partitions is made at once; when it finds fewer than
// `min_bytes`, the fetch waits for the next produce to one of its topics, or
// for its deadline.
//
// The pass is ours too: the stock one moves on from a partition's batches by
// the number of records they hold, which is only their offset span when no
// record is missing. On a compacted partition (or one whose oldest records
// were dropped) that lands inside batches already read, and the stock pass
// served them again and again until the fetch's byte budget ran out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::select_all;
use rama::{Context, Service};
use tansu_sans_io::fetch_request::{FetchPartition, FetchTopic};
use tansu_sans_io::fetch_response::{FetchableTopicResponse, PartitionData};
use tansu_sans_io::record::deflated::Frame;
use tansu_sans_io::{
    ErrorCode, FetchRequest, FetchResponse, IsolationLevel, ProduceRequest, ProduceResponse,
};
use tansu_storage::{Error, ProduceService, Storage, TopicId, Topition};
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};
use uuid::Uuid;

/// Per topic, ticks once per produce the broker accepted for it. Per topic,
/// not per broker: a fetch woken by every produce anywhere would rescan its
/// partitions for nothing many thousand times a second under load.
#[derive(Clone, Debug, Default)]
pub struct Produced(Arc<Mutex<HashMap<String, watch::Sender<u64>>>>);

impl Produced {
    fn sender(&self, topic: &str) -> watch::Sender<u64> {
        let mut topics = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = topics.get(topic) {
            return sender.clone();
        }
        topics
            .entry(topic.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    fn tick(&self, topic: &str) {
        self.sender(topic)
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    fn subscribe(&self, topic: &str) -> watch::Receiver<u64> {
        self.sender(topic).subscribe()
    }
}

/// The stock produce service, ticking `Produced` for each topic produced to.
#[derive(Clone, Debug)]
pub struct SignallingProduce {
    pub produced: Produced,
}

impl<G> Service<G, ProduceRequest> for SignallingProduce
where
    G: Storage,
{
    type Response = ProduceResponse;
    type Error = Error;

    async fn serve(&self, ctx: Context<G>, req: ProduceRequest) -> Result<ProduceResponse, Error> {
        let topics: Vec<String> = req
            .topic_data
            .iter()
            .flatten()
            .map(|topic| topic.name.clone())
            .collect();
        let response = ProduceService.serve(ctx, req).await;
        for topic in &topics {
            self.produced.tick(topic);
        }
        response
    }
}

/// A fetch that answers once records are there, instead of after a fixed sleep.
#[derive(Clone, Debug)]
pub struct WaitingFetch {
    pub produced: Produced,
}

impl WaitingFetch {
    /// Receivers for the topics of `req`, subscribed before any pass over
    /// them, so that a produce during a pass is not missed.
    async fn subscribe<G: Storage>(
        &self,
        ctx: &Context<G>,
        req: &FetchRequest,
    ) -> Result<Vec<watch::Receiver<u64>>, Error> {
        let mut receivers = Vec::new();
        for topic in req.topics.iter().flatten() {
            let name = match (&topic.topic, &topic.topic_id) {
                (Some(name), _) => Some(name.clone()),
                (None, Some(id)) => ctx
                    .state()
                    .metadata(Some(&[TopicId::Id(Uuid::from_bytes(*id))]))
                    .await?
                    .topics()
                    .first()
                    .and_then(|topic| topic.name.clone()),
                (None, None) => None,
            };
            receivers.extend(name.map(|name| self.produced.subscribe(&name)));
        }
        Ok(receivers)
    }
}

impl<G> Service<G, FetchRequest> for WaitingFetch
where
    G: Storage,
{
    type Response = FetchResponse;
    type Error = Error;

    async fn serve(&self, ctx: Context<G>, req: FetchRequest) -> Result<FetchResponse, Error> {
        let wait = Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0));
        let deadline = Instant::now() + wait;
        let min_bytes = u64::try_from(req.min_bytes).unwrap_or(0).max(1);
        let mut receivers = self.subscribe(&ctx, &req).await?;
        loop {
            let response = fetch_pass(&ctx, &req).await?;
            if record_bytes(&response) >= min_bytes
                || receivers.is_empty()
                || Instant::now() >= deadline
            {
                return Ok(response);
            }
            let produced = select_all(receivers.iter_mut().map(|r| Box::pin(r.changed())));
            match timeout_at(deadline, produced).await {
                Ok((Ok(()), _, _)) => {}
                // The deadline passed, or the broker is going away.
                Ok((Err(_), _, _)) | Err(_) => return Ok(response),
            }
        }
    }
}

fn record_bytes(response: &FetchResponse) -> u64 {
    response
        .responses
        .iter()
        .flatten()
        .flat_map(|topic| topic.partitions.iter().flatten())
        .flat_map(|partition| partition.records.iter())
        .flat_map(|frame| frame.batches.iter())
        .map(|batch| batch.record_data.len() as u64)
        .sum()
}

/// tansu's cap on the bytes of one fetch response.
const MAX_FETCH_BYTES: u32 = 5 * 1024 * 1024;

/// One pass over the fetch's partitions: what each holds from its fetch
/// offset on, within the fetch's byte budget.
async fn fetch_pass<G: Storage>(ctx: &Context<G>, req: &FetchRequest) -> Result<FetchResponse, Error> {
    let isolation = req
        .isolation_level
        .map_or(Ok(IsolationLevel::ReadUncommitted), IsolationLevel::try_from)?;
    let min_bytes = u32::try_from(req.min_bytes).unwrap_or(0);
    let mut budget = req
        .max_bytes
        .map_or(MAX_FETCH_BYTES, |max| u32::try_from(max).unwrap_or(0).min(MAX_FETCH_BYTES));
    let mut responses = Vec::new();
    for topic in req.topics.iter().flatten() {
        responses.push(fetch_topic(ctx, topic, min_bytes, &mut budget, isolation).await?);
    }
    Ok(FetchResponse::default()
        .throttle_time_ms(Some(0))
        .error_code(Some(ErrorCode::None.into()))
        .session_id(Some(0))
        .node_endpoints(Some([].into()))
        .responses(Some(responses)))
}

async fn fetch_topic<G: Storage>(
    ctx: &Context<G>,
    topic: &FetchTopic,
    min_bytes: u32,
    budget: &mut u32,
    isolation: IsolationLevel,
) -> Result<FetchableTopicResponse, Error> {
    let metadata = ctx.state().metadata(Some(&[topic.into()])).await?;
    let found = metadata
        .topics()
        .first()
        .and_then(|found| Some((found.topic_id, found.name.clone()?)));
    let mut partitions = Vec::new();
    for partition in topic.partitions.iter().flatten() {
        partitions.push(match &found {
            Some((_, name)) => {
                let topition = Topition::new(name.clone(), partition.partition);
                fetch_partition(ctx, &topition, partition, min_bytes, budget, isolation).await?
            }
            None => PartitionData::default()
                .partition_index(partition.partition)
                .error_code(ErrorCode::UnknownTopicOrPartition.into())
                .log_start_offset(Some(-1))
                .preferred_read_replica(Some(-1)),
        });
    }
    Ok(FetchableTopicResponse::default()
        .topic(topic.topic.clone())
        .topic_id(found.and_then(|(id, _)| id))
        .partitions(Some(partitions)))
}

async fn fetch_partition<G: Storage>(
    ctx: &Context<G>,
    topition: &Topition,
    partition: &FetchPartition,
    min_bytes: u32,
    budget: &mut u32,
    isolation: IsolationLevel,
) -> Result<PartitionData, Error> {
    let mut batches = Vec::new();
    let mut offset = partition.fetch_offset;
    while *budget > 0 {
        let fetched: Vec<_> = ctx
            .state()
            .fetch(topition, offset, min_bytes, *budget, isolation)
            .await?
            .into_iter()
            // tansu's SQLite engine answers "nothing there" with an empty batch.
            .filter(|batch| batch.record_count > 0)
            .collect();
        let Some(last) = fetched.last() else {
            break;
        };
        // Past the last offset served, whatever records are missing before it.
        let next = last.base_offset + i64::from(last.last_offset_delta) + 1;
        let bytes: usize = fetched.iter().map(|batch| batch.record_data.len()).sum();
        *budget = budget.saturating_sub(u32::try_from(bytes).unwrap_or(u32::MAX));
        batches.extend(fetched);
        if next <= offset {
            break;
        }
        offset = next;
    }
    let stage = ctx.state().offset_stage(topition).await?;
    Ok(PartitionData::default()
        .partition_index(partition.partition)
        .error_code(ErrorCode::None.into())
        .high_watermark(stage.high_watermark())
        .last_stable_offset(Some(stage.last_stable()))
        .log_start_offset(Some(stage.log_start()))
        .aborted_transactions(Some([].into()))
        .preferred_read_replica(Some(-1))
        .records((!batches.is_empty()).then_some(Frame { batches })))
}
