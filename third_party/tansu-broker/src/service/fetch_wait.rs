// wfm patch: fetches answer as soon as records are there, and otherwise wait
// for a produce instead of sleeping.
//
// tansu-storage 0.6's `FetchService` sleeps out the whole `max_wait_ms` of
// every fetch, even when records are waiting, so each hop through the broker
// costs the full wait, and an idle consumer costs a round trip per wait. Here
// the stock service is asked with a zero wait (one pass over the
// partitions); when it finds fewer than `min_bytes`, the fetch waits for the
// next produce to one of its topics, or for its deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::select_all;
use rama::{Context, Service};
use tansu_sans_io::{FetchRequest, FetchResponse, ProduceRequest, ProduceResponse};
use tansu_storage::{Error, FetchService, ProduceService, Storage, TopicId};
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

/// The stock fetch service without its fixed sleep.
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
            let mut pass = req.clone();
            pass.max_wait_ms = 0;
            let response = FetchService.serve(ctx.clone(), pass).await?;
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
