//! The coordinator's consumer: arms, re-arms and cancels callbacks from its
//! inbox, fires them when due, and keeps every partition's callbacks durable
//! so that a crash or a rebalance loses none.
//!
//! Durability rests on two logs. Most callbacks are cancelled within
//! milliseconds of their register, so a fresh register lives in memory only
//! and its inbox record is its durable copy: the inbox offset is not
//! committed past the oldest such register ([`Handler::replay_from`]), and a
//! successor handles it again. A callback still armed `save_after_ms` after
//! its register is written to the `coordinator.state` changelog (partition
//! equal to its inbox partition), which releases its inbox record. So a
//! short-lived callback costs its register and its cancel, nothing more,
//! and a successor replays at most `save_after_ms` of inbox.
//!
//! In order of events:
//! - a changelog record is acknowledged before the callback counts as saved;
//! - cancelling a saved callback writes a tombstone, acknowledged before the
//!   cancel's offset is committed; so does a cancel of a key not armed, in
//!   case an earlier attempt at it did not get its tombstone out;
//! - a firing produces the timeout and waits for its acknowledgement before
//!   forgetting the callback (and, if saved, writing its tombstone), so a
//!   crash in between fires it again (a duplicate, which receivers ignore by
//!   message id) but never loses it;
//! - a newly assigned partition is rebuilt from its changelog partition,
//!   then from the inbox records after its committed offset; whatever is
//!   overdue fires at the first wakeup.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use tracing::{debug, info, info_span, warn};
use wfm_protocol::coordinator::{
    CallbackTimeout, Cancel, CoordinatorCommand, CoordinatorReply, Register,
};
use wfm_protocol::{ids, now_ms, Envelope, Topic, Topics};
use wfm_runtime::{Context, Delivery, Handler, KafkaConfig, Outgoing, TopicPartition, WfmError};

use crate::stats::{Event, PartitionStats, Stats};
use crate::timers::{Armed, Callback, Disarmed, TimerStore};
use crate::CoordinatorConfig;

pub(crate) const SOURCE: &str = "coordinator";

/// Why a register or cancel can never be acted on; it is dead-lettered with this reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidCommand {
    #[error("callback key is empty")]
    EmptyKey,
    #[error("record key {record:?} differs from callback key {key:?}; callback records must be keyed by callback key")]
    KeyMismatch { record: Option<String>, key: String },
    #[error("register of {0:?} has neither `deadline` nor `timeout_ms`")]
    NoDeadline(String),
    #[error("register of {0:?} has both `deadline` and `timeout_ms`")]
    TwoDeadlines(String),
    #[error("reply topic {topic:?} of {key:?} is not an inbox that accepts callback timeouts")]
    UnknownReplyTopic { key: String, topic: String },
}

impl From<InvalidCommand> for WfmError {
    fn from(invalid: InvalidCommand) -> Self {
        WfmError::Rejected(invalid.to_string())
    }
}

/// Inboxes whose owners handle a `callback_timeout`.
fn accepts_timeouts(topic: Topic) -> bool {
    matches!(
        topic,
        Topic::Hub | Topic::Resources | Topic::SpeakerWorker | Topic::Switch | Topic::Northbound
    )
}

fn check_key(delivery_key: Option<&str>, key: &str) -> Result<(), InvalidCommand> {
    if key.is_empty() {
        return Err(InvalidCommand::EmptyKey);
    }
    if delivery_key != Some(key) {
        return Err(InvalidCommand::KeyMismatch {
            record: delivery_key.map(str::to_owned),
            key: key.to_owned(),
        });
    }
    Ok(())
}

/// The callback a register arms. A relative timeout counts from the
/// envelope's creation, so every redelivery arms the same deadline.
pub(crate) fn resolve(
    topics: &Topics,
    envelope: &Envelope,
    register: &Register,
) -> Result<Callback, InvalidCommand> {
    let deadline = match (register.deadline, register.timeout_ms) {
        (Some(deadline), None) => deadline,
        (None, Some(timeout)) => envelope
            .created_at
            .saturating_add(i64::try_from(timeout).unwrap_or(i64::MAX)),
        (None, None) => return Err(InvalidCommand::NoDeadline(register.key.clone())),
        (Some(_), Some(_)) => return Err(InvalidCommand::TwoDeadlines(register.key.clone())),
    };
    let reply_topic = topics
        .parse(&register.reply_topic)
        .filter(|&t| accepts_timeouts(t))
        .ok_or_else(|| InvalidCommand::UnknownReplyTopic {
            key: register.key.clone(),
            topic: register.reply_topic.clone(),
        })?;
    Ok(Callback {
        key: register.key.clone(),
        deadline,
        reply_topic,
        reply_key: register.reply_key.clone(),
        correlation_id: envelope.correlation_id.clone(),
        // A `Value` always serialises.
        context: register.context.to_string(),
        in_changelog: false,
    })
}

/// The changelog record of an armed callback: the register with its
/// deadline made absolute, under the correlation id it came with.
fn changelog_record(topics: &Topics, callback: &Callback, partition: i32) -> Outgoing {
    let register = CoordinatorCommand::Register(Register {
        key: callback.key.clone(),
        deadline: Some(callback.deadline),
        timeout_ms: None,
        reply_topic: topics.name(callback.reply_topic),
        reply_key: callback.reply_key.clone(),
        context: parse_context(callback),
    });
    let envelope =
        Envelope::new(&register, SOURCE, &callback.correlation_id).expect("a register encodes");
    Outgoing::envelope(
        topics.name(Topic::CoordinatorState),
        &callback.key,
        &envelope,
    )
    .to_partition(partition)
}

fn tombstone(topics: &Topics, key: &str, partition: i32) -> Outgoing {
    Outgoing::tombstone(topics.name(Topic::CoordinatorState), key).to_partition(partition)
}

fn parse_context(callback: &Callback) -> serde_json::Value {
    serde_json::from_str(&callback.context).expect("the context was serialised from a JSON value")
}

/// The timeout of `callback`, with a message id that is the same for every
/// firing of the same registration, so receivers can drop duplicates.
fn timeout_record(topics: &Topics, callback: &Callback, fired_at: i64) -> Outgoing {
    let timeout = CoordinatorReply::CallbackTimeout(CallbackTimeout {
        key: callback.key.clone(),
        context: parse_context(callback),
        deadline: callback.deadline,
        fired_at,
    });
    let message_id = ids::derive(&[
        "callback_timeout",
        &callback.key,
        &callback.deadline.to_string(),
    ]);
    let envelope = Envelope::new(&timeout, SOURCE, &callback.correlation_id)
        .expect("a timeout encodes")
        .with_message_id(message_id);
    Outgoing::envelope(
        topics.name(callback.reply_topic),
        &callback.reply_key,
        &envelope,
    )
}

/// Reads a changelog partition into a fresh store.
async fn restore(kafka: &KafkaConfig, partition: i32) -> Result<TimerStore, WfmError> {
    let topics = kafka.topics();
    let changelog = topics.name(Topic::CoordinatorState);
    let mut store = TimerStore::default();
    let records = wfm_runtime::changelog::read(kafka, &changelog, &[partition], |key, value| {
        let Some(value) = value else {
            store.cancel(&key);
            return;
        };
        let restored = Envelope::decode(value, usize::MAX)
            .map_err(|e| e.to_string())
            .and_then(|envelope| match envelope.open::<CoordinatorCommand>() {
                Ok(CoordinatorCommand::Register(register)) => {
                    resolve(&topics, &envelope, &register).map_err(|e| e.to_string())
                }
                Ok(other) => Err(format!("unexpected changelog record {other:?}")),
                Err(e) => Err(e.to_string()),
            });
        match restored {
            Ok(callback) => {
                store.arm(&Callback {
                    in_changelog: true,
                    ..callback
                });
            }
            // Only the coordinator writes its changelog; an unreadable record
            // is a bug to report, not a reason to stop restoring the others.
            Err(error) => {
                warn!(callback = %key, %error, partition, "unreadable changelog record skipped")
            }
        }
    })
    .await?;
    info!(partition, records, armed = store.len(), next_deadline = ?store.next_deadline(), "partition restored");
    Ok(store)
}

/// One owned inbox partition: its armed callbacks, and which of their
/// registers exist only as inbox records so far.
#[derive(Default)]
struct Partition {
    timers: TimerStore,
    unsaved: Unsaved,
}

/// Registers not yet in the changelog, by the inbox offset they came from.
#[derive(Default)]
struct Unsaved {
    by_offset: BTreeMap<i64, String>,
    offset_of: HashMap<String, i64>,
    /// `(save at ms, offset)` in register order; entries whose offset has
    /// left `by_offset` meanwhile are skipped.
    queue: VecDeque<(i64, i64)>,
}

impl Unsaved {
    fn insert(&mut self, key: &str, offset: i64, save_at: i64) {
        self.remove(key);
        self.by_offset.insert(offset, key.to_owned());
        self.offset_of.insert(key.to_owned(), offset);
        self.queue.push_back((save_at, offset));
    }

    fn remove(&mut self, key: &str) {
        if let Some(offset) = self.offset_of.remove(key) {
            self.by_offset.remove(&offset);
        }
    }

    fn oldest(&self) -> Option<i64> {
        self.by_offset.first_key_value().map(|(offset, _)| *offset)
    }

    fn next_save(&self) -> Option<i64> {
        self.queue.front().map(|(at, _)| *at)
    }

    /// Keys whose save time has come and that are still unsaved.
    fn due(&mut self, now: i64) -> Vec<String> {
        let mut due = Vec::new();
        while let Some(&(at, offset)) = self.queue.front() {
            if at > now {
                break;
            }
            self.queue.pop_front();
            if let Some(key) = self.by_offset.get(&offset) {
                due.push(key.clone());
            }
        }
        due
    }
}

pub struct CoordinatorHandler {
    config: CoordinatorConfig,
    stats: Stats,
    /// One per owned inbox partition.
    partitions: HashMap<i32, Partition>,
}

impl CoordinatorHandler {
    pub fn new(config: CoordinatorConfig, stats: Stats) -> Self {
        Self {
            config,
            stats,
            partitions: HashMap::new(),
        }
    }

    fn publish(&self, partition: i32) {
        if let Some(p) = self.partitions.get(&partition) {
            self.stats.set_partition(
                partition,
                PartitionStats {
                    armed: p.timers.len(),
                    next_deadline: p.timers.next_deadline(),
                },
            );
        }
    }

    fn register(
        &mut self,
        topics: &Topics,
        delivery: &Delivery<CoordinatorCommand>,
        register: &Register,
    ) -> Result<Vec<Outgoing>, WfmError> {
        check_key(delivery.key.as_deref(), &register.key)?;
        let callback = resolve(topics, &delivery.envelope, register)?;
        let save_at =
            now_ms().saturating_add(i64::try_from(self.config.save_after_ms).unwrap_or(i64::MAX));
        let partition = self.partitions.entry(delivery.partition).or_default();
        match partition.timers.arm(&callback) {
            Armed::New => debug!(deadline = callback.deadline, "callback armed"),
            Armed::Replaced { previous_deadline } => {
                debug!(
                    deadline = callback.deadline,
                    previous_deadline, "callback re-armed"
                )
            }
        }
        partition
            .unsaved
            .insert(&callback.key, delivery.offset, save_at);
        self.stats.count(Event::Registered, 1);
        self.publish(delivery.partition);
        Ok(Vec::new())
    }

    fn cancel(
        &mut self,
        topics: &Topics,
        delivery: &Delivery<CoordinatorCommand>,
        cancel: &Cancel,
    ) -> Result<Vec<Outgoing>, WfmError> {
        check_key(delivery.key.as_deref(), &cancel.key)?;
        let partition = self.partitions.entry(delivery.partition).or_default();
        partition.unsaved.remove(&cancel.key);
        let disarmed = partition.timers.cancel(&cancel.key);
        match disarmed {
            Some(_) => {
                debug!("callback cancelled");
                self.stats.count(Event::Cancelled, 1);
                self.publish(delivery.partition);
            }
            None => debug!("cancel of a callback not armed (already fired or cancelled)"),
        }
        Ok(match disarmed {
            Some(Disarmed::InMemoryOnly) => Vec::new(),
            Some(Disarmed::InChangelog) | None => {
                vec![tombstone(topics, &cancel.key, delivery.partition)]
            }
        })
    }

    /// Every callback due at `now`, up to the configured batch, by partition.
    fn take_due(&mut self, now: i64) -> Vec<(i32, Callback)> {
        let mut due = Vec::new();
        for (&number, partition) in &mut self.partitions {
            while due.len() < self.config.max_fire_batch {
                match partition.timers.pop_due(now) {
                    Some(callback) => due.push((number, callback)),
                    None => break,
                }
            }
        }
        due
    }

    /// Writes to the changelog the callbacks armed for `save_after_ms`, and
    /// once it has them, lets the inbox commit past their registers.
    async fn save_due(&mut self, ctx: &Context, now: i64) -> Result<(), WfmError> {
        let mut saving = Vec::new();
        for (&number, partition) in &mut self.partitions {
            for key in partition.unsaved.due(now) {
                if let Some(callback) = partition.timers.get(&key) {
                    saving.push((number, callback));
                }
            }
        }
        if saving.is_empty() {
            return Ok(());
        }
        let records: Vec<Outgoing> = saving
            .iter()
            .map(|(number, callback)| changelog_record(&ctx.topics, callback, *number))
            .collect();
        if let Err(error) = ctx.producer.send_all(&records).await {
            // Still unsaved: try again shortly.
            let retry_at = now + 100;
            for (number, callback) in &saving {
                if let Some(partition) = self.partitions.get_mut(number) {
                    if let Some(&offset) = partition.unsaved.offset_of.get(&callback.key) {
                        partition.unsaved.queue.push_back((retry_at, offset));
                    }
                }
            }
            return Err(error);
        }
        for (number, callback) in &saving {
            if let Some(partition) = self.partitions.get_mut(number) {
                partition.unsaved.remove(&callback.key);
                partition.timers.set_in_changelog(&callback.key);
            }
        }
        debug!(saved = saving.len(), "callbacks saved to the changelog");
        Ok(())
    }
}

#[async_trait]
impl Handler for CoordinatorHandler {
    type Message = CoordinatorCommand;

    async fn on_assigned(
        &mut self,
        ctx: &Context,
        partitions: &[TopicPartition],
    ) -> Result<Vec<Outgoing>, WfmError> {
        let inbox = ctx.topics.name(Topic::Coordinator);
        for (_, partition) in partitions.iter().filter(|(topic, _)| *topic == inbox) {
            let timers = restore(&ctx.kafka, *partition).await?;
            self.stats.count(Event::Restored, timers.len() as u64);
            self.partitions.insert(
                *partition,
                Partition {
                    timers,
                    unsaved: Unsaved::default(),
                },
            );
            self.publish(*partition);
        }
        Ok(Vec::new())
    }

    async fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        for (_, partition) in partitions {
            if let Some(p) = self.partitions.remove(partition) {
                info!(
                    partition,
                    armed = p.timers.len(),
                    "partition revoked; its callbacks are its next owner's"
                );
            }
            self.stats.forget_partition(*partition);
        }
    }

    async fn handle(
        &mut self,
        ctx: &Context,
        delivery: &Delivery<CoordinatorCommand>,
    ) -> Result<Vec<Outgoing>, WfmError> {
        let key = match &delivery.message {
            CoordinatorCommand::Register(r) => &r.key,
            CoordinatorCommand::Cancel(c) => &c.key,
        };
        let _span =
            info_span!("callback", callback = %key, partition = delivery.partition).entered();
        match &delivery.message {
            CoordinatorCommand::Register(register) => {
                self.register(&ctx.topics, delivery, register)
            }
            CoordinatorCommand::Cancel(cancel) => self.cancel(&ctx.topics, delivery, cancel),
        }
    }

    fn next_wakeup(&self) -> Option<tokio::time::Instant> {
        let deadline = self
            .partitions
            .values()
            .flat_map(|p| [p.timers.next_deadline(), p.unsaved.next_save()])
            .flatten()
            .min()?;
        let wait = Duration::from_millis(deadline.saturating_sub(now_ms()).max(0) as u64);
        let now = tokio::time::Instant::now();
        // A deadline centuries away still needs a representable instant.
        Some(
            now.checked_add(wait)
                .unwrap_or(now + Duration::from_secs(86_400)),
        )
    }

    fn replay_from(&self, (_, partition): &TopicPartition) -> Option<i64> {
        self.partitions.get(partition)?.unsaved.oldest()
    }

    async fn on_wakeup(&mut self, ctx: &Context) -> Result<Vec<Outgoing>, WfmError> {
        let now = now_ms();
        self.save_due(ctx, now).await?;
        let due = self.take_due(now);
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let timeouts: Vec<Outgoing> = due
            .iter()
            .map(|(_, callback)| timeout_record(&ctx.topics, callback, now))
            .collect();
        if let Err(error) = ctx.producer.send_all(&timeouts).await {
            // Not known to be delivered: arm them again, to fire at the next wakeup.
            for (partition, callback) in &due {
                self.partitions
                    .entry(*partition)
                    .or_default()
                    .timers
                    .arm(callback);
            }
            return Err(error);
        }
        let late_after = i64::try_from(self.config.late_after_ms).unwrap_or(i64::MAX);
        let mut tombstones = Vec::with_capacity(due.len());
        for (partition, callback) in &due {
            let lateness = now - callback.deadline;
            if lateness > late_after {
                self.stats.count(Event::Late, 1);
                info!(callback = %callback.key, lateness_ms = lateness, "callback fired late");
            } else {
                debug!(callback = %callback.key, lateness_ms = lateness, "callback fired");
            }
            if let Some(p) = self.partitions.get_mut(partition) {
                p.unsaved.remove(&callback.key);
            }
            if callback.in_changelog {
                tombstones.push(tombstone(&ctx.topics, &callback.key, *partition));
            }
        }
        self.stats.count(Event::Fired, due.len() as u64);
        let partitions: std::collections::BTreeSet<i32> = due.iter().map(|(p, _)| *p).collect();
        for partition in partitions {
            self.publish(partition);
        }
        Ok(tombstones)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inbox_is_held_at_the_oldest_unsaved_register() {
        let mut unsaved = Unsaved::default();
        unsaved.insert("a", 10, 100);
        unsaved.insert("b", 11, 101);
        unsaved.insert("c", 12, 102);
        assert_eq!(unsaved.oldest(), Some(10));
        // A cancel releases its register.
        unsaved.remove("a");
        assert_eq!(unsaved.oldest(), Some(11));
        // A re-register moves the key to its newer record.
        unsaved.insert("b", 13, 103);
        assert_eq!(unsaved.oldest(), Some(12));
        assert_eq!(unsaved.next_save(), Some(100));
        // Due in register order; entries that left meanwhile are skipped.
        assert_eq!(unsaved.due(102), ["c"]);
        assert_eq!(unsaved.due(103), ["b"]);
        assert_eq!(unsaved.due(i64::MAX), Vec::<String>::new());
        // Being due does not release a register: only saving it does.
        assert_eq!(unsaved.oldest(), Some(12));
        unsaved.remove("c");
        unsaved.remove("b");
        assert_eq!(unsaved.oldest(), None);
    }
    use serde_json::json;

    fn register(deadline: Option<i64>, timeout_ms: Option<u64>, reply_topic: &str) -> Register {
        Register {
            key: "k".into(),
            deadline,
            timeout_ms,
            reply_topic: reply_topic.into(),
            reply_key: "flow".into(),
            context: json!({ "attempt": 1 }),
        }
    }

    fn envelope(register: &Register) -> Envelope {
        Envelope::new(&CoordinatorCommand::Register(register.clone()), "t", "corr").unwrap()
    }

    #[test]
    fn relative_timeouts_count_from_creation() {
        let topics = Topics::default();
        let r = register(None, Some(250), "wfm.hub");
        let env = envelope(&r);
        let callback = resolve(&topics, &env, &r).unwrap();
        assert_eq!(callback.deadline, env.created_at + 250);
        assert_eq!(callback.reply_topic, Topic::Hub);
        assert_eq!(callback.correlation_id, "corr");
        assert_eq!(parse_context(&callback), json!({ "attempt": 1 }));
        let huge = register(None, Some(u64::MAX), "wfm.hub");
        assert_eq!(resolve(&topics, &env, &huge).unwrap().deadline, i64::MAX);
    }

    #[test]
    fn invalid_registers_say_why() {
        let topics = Topics::default();
        let cases = [
            (register(None, None, "wfm.hub"), "neither"),
            (register(Some(1), Some(1), "wfm.hub"), "both"),
            (register(Some(1), None, "wfm.nope"), "not an inbox"),
            (register(Some(1), None, "wfm.flows"), "not an inbox"),
            (register(Some(1), None, "other.hub"), "not an inbox"),
        ];
        for (r, reason) in cases {
            let error = resolve(&topics, &envelope(&r), &r).unwrap_err();
            assert!(error.to_string().contains(reason), "{error}");
        }
        assert_eq!(check_key(Some(""), ""), Err(InvalidCommand::EmptyKey));
        assert!(matches!(
            check_key(Some("a"), "b"),
            Err(InvalidCommand::KeyMismatch { .. })
        ));
        assert!(check_key(None, "b").is_err());
        assert!(check_key(Some("b"), "b").is_ok());
    }

    #[test]
    fn changelog_record_restores_the_same_callback() {
        let topics = Topics::new("x.");
        let r = register(None, Some(1_000), "x.speaker-worker");
        let callback = resolve(&topics, &envelope(&r), &r).unwrap();
        let out = changelog_record(&topics, &callback, 3);
        assert_eq!(
            (out.topic.as_str(), out.partition),
            ("x.coordinator.state", Some(3))
        );
        let stored = Envelope::decode(out.value.as_deref().unwrap(), usize::MAX).unwrap();
        let CoordinatorCommand::Register(again) = stored.open().unwrap() else {
            panic!("a register");
        };
        assert_eq!(resolve(&topics, &stored, &again).unwrap(), callback);
    }

    #[test]
    fn a_timeout_has_a_stable_id_per_registration() {
        let topics = Topics::default();
        let r = register(Some(42), None, "wfm.hub");
        let callback = resolve(&topics, &envelope(&r), &r).unwrap();
        let decode =
            |out: Outgoing| Envelope::decode(out.value.as_deref().unwrap(), usize::MAX).unwrap();
        let first = decode(timeout_record(&topics, &callback, 50));
        let again = decode(timeout_record(&topics, &callback, 90));
        assert_eq!(first.message_id, again.message_id);
        assert_eq!(first.kind, "callback_timeout");
        let CoordinatorReply::CallbackTimeout(timeout) = first.open().unwrap();
        assert_eq!((timeout.deadline, timeout.fired_at), (42, 50));
        let later = Callback {
            deadline: 43,
            ..callback
        };
        assert_ne!(
            decode(timeout_record(&topics, &later, 50)).message_id,
            first.message_id
        );
    }
}
