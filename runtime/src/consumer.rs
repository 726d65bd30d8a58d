//! The consumer runtime every component runs its inbox on.
//!
//! One loop per consumer-group member: it decodes each record into the
//! handler's message type, runs the handler, hands the handler's outputs to
//! the producer in order, and stores the record's offset for commit only once
//! the broker has acknowledged every output of it and of every record before
//! it on the same partition. Failures are dealt with as [`WfmError::disposition`]
//! says: retried with backoff, dead-lettered, or answered by a reset that
//! rewinds to the committed offsets and restores state from scratch.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message as _;
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};
use wfm_protocol::dlq::{DeadLetter, DlqMessage};
use wfm_protocol::{Envelope, Message, Topic, Topics};

use crate::config::KafkaConfig;
use crate::error::{Disposition, WfmError};
use crate::producer::{acknowledged, client_config, Outgoing, Producer};
use crate::status::{ConsumerState, ConsumerStatus, Counters, Registry};

pub type TopicPartition = (String, i32);

/// A decoded record as the handler sees it.
#[derive(Debug, Clone)]
pub struct Delivery<M> {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub envelope: Envelope,
    pub message: M,
}

/// What a handler may use besides its own state.
pub struct Context {
    pub producer: Producer,
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub status: Arc<ConsumerStatus>,
}

#[async_trait]
pub trait Handler: Send + 'static {
    /// The inbox's message type (a `kind`/`payload` tagged enum).
    type Message: Message + Send + Sync;

    /// Partitions this member now owns: restore their state before any of their records arrive.
    async fn on_assigned(
        &mut self,
        _ctx: &Context,
        _partitions: &[TopicPartition],
    ) -> Result<Vec<Outgoing>, WfmError> {
        Ok(Vec::new())
    }

    /// Partitions this member no longer owns: forget their state.
    async fn on_revoked(&mut self, _partitions: &[TopicPartition]) {}

    /// Handles one record; the returned records are produced before its offset is committed.
    /// Called again with the same delivery if it fails with a retryable error.
    async fn handle(
        &mut self,
        ctx: &Context,
        delivery: &Delivery<Self::Message>,
    ) -> Result<Vec<Outgoing>, WfmError>;

    /// When the handler next wants [`Handler::on_wakeup`], e.g. its earliest timer.
    fn next_wakeup(&self) -> Option<tokio::time::Instant> {
        None
    }

    async fn on_wakeup(&mut self, _ctx: &Context) -> Result<Vec<Outgoing>, WfmError> {
        Ok(Vec::new())
    }

    /// The oldest offset of `partition` whose effect lives only in this
    /// handler's memory. The committed offset never passes it, so whoever
    /// owns the partition after a crash handles that record again.
    fn replay_from(&self, _partition: &TopicPartition) -> Option<i64> {
        None
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Unique within the process, e.g. `coordinator`.
    pub name: String,
    pub group: String,
    pub topics: Vec<String>,
}

/// Runs a consumer until `shutdown`, resetting and reconnecting with backoff
/// after any failure that the error table says needs it.
pub async fn run<H: Handler>(
    spec: ConsumerSpec,
    kafka: KafkaConfig,
    producer: Producer,
    registry: &Registry,
    mut handler: H,
    shutdown: CancellationToken,
) {
    let status = registry.register(ConsumerStatus::new(&spec.name, &spec.group, &spec.topics));
    let ctx = Context {
        producer,
        topics: kafka.topics(),
        kafka,
        status: status.clone(),
    };
    let mut reconnect = ctx.kafka.retry.forever();
    let span = tracing::info_span!("consumer", consumer = %spec.name, group = %spec.group);
    async {
        while !shutdown.is_cancelled() {
            status.set_state(ConsumerState::Starting);
            let mut session = Session::new(&spec, &ctx, &shutdown);
            let outcome = session.run(&mut handler).await;
            session.close(&mut handler, outcome.is_ok()).await;
            match outcome {
                Ok(()) => break,
                Err(error) => {
                    warn!(%error, "consumer reset");
                    status.record_error(&error);
                    Counters::bump(&status.counters.resets);
                    status.set_state(ConsumerState::BackingOff);
                    let delay = reconnect.next().unwrap_or(Duration::from_secs(1));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        }
        status.set_state(ConsumerState::Stopped);
        info!("consumer stopped");
    }
    .instrument(span)
    .await
}

enum RebalanceEvent {
    Assigned(Vec<TopicPartition>),
    Revoked(Vec<TopicPartition>),
}

/// How long a member giving up partitions waits for its outputs to be
/// acknowledged before it lets the rebalance go on.
const REVOKE_FLUSH: Duration = Duration::from_secs(2);

/// Forwards librdkafka's rebalance callbacks to the consumer loop, which
/// applies them before it handles any record of the new assignment.
struct Rebalances {
    events: mpsc::UnboundedSender<RebalanceEvent>,
    /// Flushed before partitions are given up. The member rejoins the group
    /// as soon as this callback returns, and the partitions' next owner
    /// restores their changelog at once: an output still on its way then
    /// could land after the successor's own newer record for the same key.
    producer: Producer,
}

impl ClientContext for Rebalances {}

impl ConsumerContext for Rebalances {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            // Blocks this thread only: librdkafka's own threads deliver.
            if let Err(error) = self.producer.flush(REVOKE_FLUSH) {
                warn!(%error, "outputs not all acknowledged before giving up partitions");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let event = match rebalance {
            Rebalance::Assign(list) => RebalanceEvent::Assigned(partitions_of(list)),
            Rebalance::Revoke(list) => RebalanceEvent::Revoked(partitions_of(list)),
            Rebalance::Error(error) => {
                warn!(%error, "rebalance error");
                return;
            }
        };
        let _ = self.events.send(event);
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(error) = result {
            warn!(%error, "offset commit failed");
        }
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// Per partition: offsets handed out whose outputs are not yet acknowledged.
/// The committable offset is the last one before the oldest still in flight.
#[derive(Default)]
struct OffsetTracker {
    partitions: HashMap<TopicPartition, PartitionOffsets>,
}

#[derive(Default)]
struct PartitionOffsets {
    in_flight: BTreeSet<i64>,
    highest_seen: i64,
}

impl OffsetTracker {
    fn begin(&mut self, tp: &TopicPartition, offset: i64) {
        let p = self.partitions.entry(tp.clone()).or_default();
        p.in_flight.insert(offset);
        p.highest_seen = p.highest_seen.max(offset);
    }

    /// Marks `offset` done; returns the last offset now fully processed, if it moved.
    fn complete(&mut self, tp: &TopicPartition, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(tp)?;
        let was_oldest = p.in_flight.first() == Some(&offset);
        p.in_flight.remove(&offset);
        if !was_oldest {
            return None;
        }
        Some(match p.in_flight.first() {
            Some(oldest) => oldest - 1,
            None => p.highest_seen,
        })
    }

    fn forget(&mut self, partitions: &[TopicPartition]) {
        for tp in partitions {
            self.partitions.remove(tp);
        }
    }
}

type Completion = (Option<(TopicPartition, i64)>, Result<(), WfmError>);

struct Session<'a> {
    spec: &'a ConsumerSpec,
    ctx: &'a Context,
    shutdown: &'a CancellationToken,
    owned: Vec<TopicPartition>,
    offsets: OffsetTracker,
    pending: FuturesUnordered<BoxFuture<'static, Completion>>,
    consumer: Option<StreamConsumer<Rebalances>>,
    events: Option<mpsc::UnboundedReceiver<RebalanceEvent>>,
}

impl<'a> Session<'a> {
    fn new(spec: &'a ConsumerSpec, ctx: &'a Context, shutdown: &'a CancellationToken) -> Self {
        Self {
            spec,
            ctx,
            shutdown,
            owned: Vec::new(),
            offsets: OffsetTracker::default(),
            pending: FuturesUnordered::new(),
            consumer: None,
            events: None,
        }
    }

    fn connect(&mut self) -> Result<(), WfmError> {
        let mut config = client_config(&self.ctx.kafka, &Default::default());
        config
            .set("group.id", &self.spec.group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "200")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500");
        for (key, value) in &self.ctx.kafka.consumer {
            config.set(key, value);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let consumer: StreamConsumer<Rebalances> = config.create_with_context(Rebalances {
            events: tx,
            producer: self.ctx.producer.clone(),
        })?;
        let topics: Vec<&str> = self.spec.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        self.consumer = Some(consumer);
        self.events = Some(rx);
        Ok(())
    }

    async fn run<H: Handler>(&mut self, handler: &mut H) -> Result<(), WfmError> {
        self.connect()?;
        let status = &self.ctx.status;
        status.set_state(ConsumerState::Running);
        loop {
            if self.pending.len() >= self.ctx.kafka.max_in_flight {
                status.set_state(ConsumerState::Paused);
                if let Some(done) = self.pending.next().await {
                    self.complete(handler, done)?;
                }
                continue;
            }
            if status.state() == ConsumerState::Paused {
                status.set_state(ConsumerState::Running);
            }
            let wakeup = handler.next_wakeup();
            let consumer = self.consumer.as_ref().expect("connected");
            let events = self.events.as_mut().expect("connected");
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ok(()),
                Some(event) = events.recv() => self.rebalance(handler, event).await?,
                Some(done) = self.pending.next(), if !self.pending.is_empty() => self.complete(handler, done)?,
                _ = sleep_until(wakeup), if wakeup.is_some() => {
                    let outputs = match handler.on_wakeup(self.ctx).await {
                        Ok(outputs) => outputs,
                        Err(error) if error.disposition() == Disposition::Reset => return Err(error),
                        Err(error) => {
                            warn!(%error, "wakeup failed; it runs again at the next wakeup");
                            Vec::new()
                        }
                    };
                    self.send(None, outputs).await?;
                }
                received = consumer.recv() => match received {
                    Ok(message) => {
                        let message = message.detach();
                        self.apply_pending_rebalances(handler).await?;
                        self.process(handler, message).await?;
                    }
                    Err(error) => {
                        let error = WfmError::from(error);
                        status.record_error(&error);
                        match error.disposition() {
                            // librdkafka has already reset the offset per `auto.offset.reset`.
                            Disposition::Reset => warn!(%error, "offset reset by policy"),
                            _ => {
                                warn!(%error, "consume error");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                },
            }
        }
    }

    async fn apply_pending_rebalances<H: Handler>(
        &mut self,
        handler: &mut H,
    ) -> Result<(), WfmError> {
        while let Some(event) = self.events.as_mut().and_then(|e| e.try_recv().ok()) {
            self.rebalance(handler, event).await?;
        }
        Ok(())
    }

    async fn rebalance<H: Handler>(
        &mut self,
        handler: &mut H,
        event: RebalanceEvent,
    ) -> Result<(), WfmError> {
        // Whatever was in flight must be settled before state is dropped or
        // rebuilt, so that a restore sees every acknowledged output.
        self.drain(&*handler).await?;
        match event {
            RebalanceEvent::Revoked(partitions) => {
                info!(?partitions, "partitions revoked");
                self.offsets.forget(&partitions);
                self.owned.retain(|tp| !partitions.contains(tp));
                handler.on_revoked(&partitions).await;
            }
            RebalanceEvent::Assigned(partitions) => {
                info!(?partitions, "partitions assigned");
                self.ctx.status.set_state(ConsumerState::Restoring);
                let mut delays = self.ctx.kafka.retry.delays();
                let outputs = loop {
                    match handler.on_assigned(self.ctx, &partitions).await {
                        Ok(outputs) => break outputs,
                        Err(error) => match delays.next() {
                            Some(delay) if error.disposition() == Disposition::Retry => {
                                warn!(%error, "restore failed; retrying");
                                tokio::time::sleep(delay).await;
                            }
                            _ => return Err(error),
                        },
                    }
                };
                self.owned.extend(partitions);
                self.send(None, outputs).await?;
                self.ctx.status.set_state(ConsumerState::Running);
            }
        }
        self.ctx.status.set_assigned(self.owned.clone());
        Ok(())
    }

    async fn process<H: Handler>(
        &mut self,
        handler: &mut H,
        message: rdkafka::message::OwnedMessage,
    ) -> Result<(), WfmError> {
        let tp: TopicPartition = (message.topic().to_owned(), message.partition());
        if !self.owned.contains(&tp) {
            debug!(?tp, "record of a partition no longer owned: skipped");
            return Ok(());
        }
        let counters = &self.ctx.status.counters;
        Counters::bump(&counters.received);
        let offset = message.offset();
        self.offsets.begin(&tp, offset);
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        let value = message.payload().unwrap_or_default();

        let decoded = Envelope::decode(value, self.ctx.kafka.max_record_bytes)
            .map_err(WfmError::from)
            .and_then(|envelope| {
                let message = envelope.open::<H::Message>()?;
                Ok((envelope, message))
            });
        let outputs = match decoded {
            Err(error) => vec![self.dead_letter(&message, &error, error.category(), "")],
            Ok((envelope, _)) if envelope.is_expired(wfm_protocol::now_ms()) => {
                Counters::bump(&counters.expired);
                info!(kind = %envelope.kind, correlation_id = %envelope.correlation_id, deadline = ?envelope.deadline, "expired record not executed");
                Vec::new()
            }
            Ok((envelope, decoded)) => {
                let delivery = Delivery {
                    topic: tp.0.clone(),
                    partition: tp.1,
                    offset,
                    key,
                    envelope,
                    message: decoded,
                };
                let span = tracing::info_span!(
                    "record",
                    kind = %delivery.envelope.kind,
                    correlation_id = %delivery.envelope.correlation_id,
                    key = delivery.key.as_deref().unwrap_or(""),
                );
                self.handle_with_retry(handler, &message, &delivery)
                    .instrument(span)
                    .await?
            }
        };
        self.send(Some((tp, offset)), outputs).await
    }

    async fn handle_with_retry<H: Handler>(
        &mut self,
        handler: &mut H,
        message: &rdkafka::message::OwnedMessage,
        delivery: &Delivery<H::Message>,
    ) -> Result<Vec<Outgoing>, WfmError> {
        let counters = &self.ctx.status.counters;
        let mut delays = self.ctx.kafka.retry.delays();
        loop {
            let error = match handler.handle(self.ctx, delivery).await {
                Ok(outputs) => {
                    Counters::bump(&counters.handled);
                    return Ok(outputs);
                }
                Err(error) => error,
            };
            self.ctx.status.record_error(&error);
            match error.disposition() {
                Disposition::Retry => match delays.next() {
                    Some(delay) => {
                        Counters::bump(&counters.retried);
                        warn!(%error, ?delay, "transient failure; retrying");
                        self.ctx.status.set_state(ConsumerState::BackingOff);
                        tokio::time::sleep(delay).await;
                        self.ctx.status.set_state(ConsumerState::Running);
                    }
                    None => {
                        let correlation = &delivery.envelope.correlation_id;
                        return Ok(vec![self.dead_letter(
                            message,
                            &error,
                            "retries_exhausted",
                            correlation,
                        )]);
                    }
                },
                Disposition::DeadLetter | Disposition::FailRequest => {
                    let correlation = &delivery.envelope.correlation_id;
                    return Ok(vec![self.dead_letter(
                        message,
                        &error,
                        error.category(),
                        correlation,
                    )]);
                }
                Disposition::Reset => return Err(error),
            }
        }
    }

    fn dead_letter(
        &self,
        message: &rdkafka::message::OwnedMessage,
        error: &WfmError,
        category: &str,
        correlation_id: &str,
    ) -> Outgoing {
        Counters::bump(&self.ctx.status.counters.dead_lettered);
        warn!(%error, topic = message.topic(), partition = message.partition(), offset = message.offset(), "dead-lettered");
        let letter = DlqMessage::DeadLetter(DeadLetter {
            reason: error.to_string(),
            category: category.to_owned(),
            origin_topic: message.topic().to_owned(),
            origin_partition: message.partition(),
            origin_offset: message.offset(),
            consumer_group: self.spec.group.clone(),
            key_b64: DeadLetter::encode_bytes(message.key()),
            value_b64: DeadLetter::encode_bytes(message.payload()),
            dead_lettered_at: wfm_protocol::now_ms(),
        });
        let origin = format!(
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        );
        let envelope = Envelope::new(&letter, &self.spec.name, correlation_id)
            .expect("a dead letter always encodes")
            .with_message_id(wfm_protocol::ids::derive(&[
                "dlq",
                &self.spec.group,
                &origin,
            ]));
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        Outgoing::envelope(self.ctx.topics.name(Topic::Dlq), key, &envelope)
    }

    /// Hands `outputs` to the producer now, in order, and tracks their acknowledgement.
    async fn send(
        &mut self,
        origin: Option<(TopicPartition, i64)>,
        outputs: Vec<Outgoing>,
    ) -> Result<(), WfmError> {
        let mut deliveries = Vec::with_capacity(outputs.len());
        for out in &outputs {
            deliveries.push(self.ctx.producer.enqueue(out).await?);
        }
        self.pending.push(
            async move {
                for delivery in deliveries {
                    if let Err(error) = acknowledged(delivery).await {
                        return (origin, Err(error));
                    }
                }
                (origin, Ok(()))
            }
            .boxed(),
        );
        Ok(())
    }

    fn complete<H: Handler>(
        &mut self,
        handler: &H,
        (origin, result): Completion,
    ) -> Result<(), WfmError> {
        result?;
        let Some((tp, offset)) = origin else {
            return Ok(());
        };
        let done = self.offsets.complete(&tp, offset).map(|done| {
            handler
                .replay_from(&tp)
                .map_or(done, |replay| done.min(replay - 1))
        });
        if let Some(done) = done.filter(|done| *done >= 0) {
            Counters::bump(&self.ctx.status.counters.committed);
            let consumer = self.consumer.as_ref().expect("connected");
            if let Err(error) = consumer.store_offset(&tp.0, tp.1, done) {
                // The partition was revoked meanwhile; its new owner re-reads the record.
                debug!(%error, ?tp, "offset not stored");
            }
        }
        Ok(())
    }

    async fn drain<H: Handler>(&mut self, handler: &H) -> Result<(), WfmError> {
        while let Some(done) = self.pending.next().await {
            self.complete(handler, done)?;
        }
        Ok(())
    }

    /// Ends the session: on a clean stop, settles and commits what was done;
    /// after a failure, commits nothing more. Either way the handler forgets
    /// every partition, to be restored by whoever owns it next.
    async fn close<H: Handler>(&mut self, handler: &mut H, clean: bool) {
        let mut settled = false;
        if clean {
            let settle = tokio::time::timeout(Duration::from_secs(10), self.drain(handler)).await;
            settled = matches!(settle, Ok(Ok(())));
            if !settled {
                warn!(
                    "outputs not all acknowledged at shutdown; their records will be redelivered"
                );
            }
        }
        self.pending = FuturesUnordered::new();
        let owned = std::mem::take(&mut self.owned);
        handler.on_revoked(&owned).await;
        self.ctx.status.set_assigned(Vec::new());
        if let Some(consumer) = self.consumer.take() {
            // The final commit and leaving the group block on the broker: keep them
            // off the async workers, which may be serving that very broker.
            let _ = tokio::task::spawn_blocking(move || {
                if settled {
                    if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                        debug!(%error, "final commit");
                    }
                }
                drop(consumer)
            })
            .await;
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_point_waits_for_the_oldest_in_flight() {
        let mut tracker = OffsetTracker::default();
        let tp = ("t".to_string(), 0);
        for offset in 10..15 {
            tracker.begin(&tp, offset);
        }
        assert_eq!(tracker.complete(&tp, 12), None);
        assert_eq!(tracker.complete(&tp, 11), None);
        assert_eq!(tracker.complete(&tp, 10), Some(12));
        assert_eq!(tracker.complete(&tp, 14), None);
        assert_eq!(tracker.complete(&tp, 13), Some(14));
    }

    #[test]
    fn forgotten_partitions_commit_nothing() {
        let mut tracker = OffsetTracker::default();
        let tp = ("t".to_string(), 3);
        tracker.begin(&tp, 0);
        tracker.forget(std::slice::from_ref(&tp));
        assert_eq!(tracker.complete(&tp, 0), None);
    }
}
