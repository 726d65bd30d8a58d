//! The hub's inbox handler: routes each message to its flow's request, feeds
//! the state machine, performs the effects as records to produce, and
//! persists the request after every event so that another instance can
//! resume it.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};
use wfm_coordinator::client::{CoordinatorClient, Fire};
use wfm_protocol::flow::{FlowStatus, FlowsMessage};
use wfm_protocol::history::{HistoryDraft, HistoryEvent, HistoryMessage};
use wfm_protocol::hub::HubMessage;
use wfm_protocol::northbound::{NorthboundReply, RequestError, RequestErrorKind};
use wfm_protocol::resources::{AllocateRequest, DeallocateRequest, ReplyTo, ResourcesCommand};
use wfm_protocol::speaker::{SpeakerJob, SpeakerMessage};
use wfm_protocol::{ids, Envelope, Message, Topic, Topics};
use wfm_runtime::{Context, Delivery, Handler, Outgoing, TopicPartition, WfmError};

use crate::fsm::{Ctx, Effect, Event, Request, RequestCore};
use crate::inspect::{HubInspector, RequestSummary};
use crate::state::{history_key, request_key, Finished, HubStateRecord, InFlight, PartitionState};
use crate::HubConfig;

const SOURCE: &str = "hub";

/// What a hub timer carries back, to find its request and step.
#[derive(Debug, Serialize, Deserialize)]
struct TimerContext {
    flow_id: String,
    request_id: String,
    step: u32,
}

pub struct HubHandler {
    config: HubConfig,
    topics: Topics,
    coordinator: CoordinatorClient,
    partitions: HashMap<i32, PartitionState>,
    inspector: HubInspector,
}

/// Records produced for one event, built while the effects are performed.
struct Outputs<'a> {
    topics: &'a Topics,
    partition: i32,
    correlation_id: String,
    records: Vec<Outgoing>,
}

impl Outputs<'_> {
    fn send<M: Message>(
        &mut self,
        topic: Topic,
        key: &str,
        message: &M,
        message_id: String,
    ) -> Result<(), WfmError> {
        let envelope =
            Envelope::new(message, SOURCE, &self.correlation_id)?.with_message_id(message_id);
        self.records
            .push(Outgoing::envelope(self.topics.name(topic), key, &envelope));
        Ok(())
    }

    /// State records follow the inbox partition, so its owner restores them.
    fn send_state<M: Message>(
        &mut self,
        topic: Topic,
        key: &str,
        message: &M,
        message_id: String,
    ) -> Result<(), WfmError> {
        self.send(topic, key, message, message_id)?;
        if let Some(last) = self.records.last_mut() {
            last.partition = Some(self.partition);
        }
        Ok(())
    }

    fn tombstone(&mut self, topic: Topic, key: &str) {
        self.records
            .push(Outgoing::tombstone(self.topics.name(topic), key).to_partition(self.partition));
    }
}

impl HubHandler {
    pub fn new(config: HubConfig, topics: Topics, inspector: HubInspector) -> Self {
        Self {
            coordinator: CoordinatorClient::new(topics.clone(), SOURCE),
            config,
            topics,
            partitions: HashMap::new(),
            inspector,
        }
    }

    fn in_flight_total(&self) -> usize {
        self.partitions.values().map(|p| p.requests.len()).sum()
    }

    /// Turns one message into the event for its flow's request; `None` when
    /// it belongs to no request in flight (late, duplicate or stray).
    fn route(
        &mut self,
        partition: i32,
        message: &HubMessage,
        correlation_id: &str,
        now: i64,
        out: &mut Outputs<'_>,
    ) -> Result<Option<(String, Event)>, WfmError> {
        let overloaded = self.in_flight_total() >= self.config.max_in_flight;
        let state = self.partitions.entry(partition).or_default();
        let (flow_id, request_id) = match message {
            HubMessage::CreateFlow(req) => (req.flow.flow_id.clone(), req.request_id.clone()),
            HubMessage::DeleteFlow(req) => (req.flow_id.clone(), req.request_id.clone()),
            HubMessage::Allocated(m) => (m.flow_id.clone(), m.request_id.clone()),
            HubMessage::AllocationFailed(m) => (m.flow_id.clone(), m.request_id.clone()),
            HubMessage::Deallocated(m) => (m.flow_id.clone(), m.request_id.clone()),
            HubMessage::JobCompleted(m) => (m.flow_id.clone(), m.request_id.clone()),
            HubMessage::CallbackTimeout(t) => {
                let context: TimerContext = serde_json::from_value(t.context.clone())
                    .map_err(|e| WfmError::Rejected(format!("timer context: {e}")))?;
                (context.flow_id, context.request_id)
            }
        };
        if flow_id.is_empty() {
            return Err(WfmError::Rejected("message names no flow".into()));
        }
        let (reply_to, new_request) = match message {
            HubMessage::CreateFlow(req) => (req.reply_to.clone(), Some(true)),
            HubMessage::DeleteFlow(req) => (req.reply_to.clone(), Some(false)),
            _ => (
                ReplyTo {
                    topic: String::new(),
                    key: String::new(),
                },
                None,
            ),
        };
        if let Some((finished_id, last)) = state.finished.get(&flow_id) {
            if *finished_id == request_id {
                // A record of a request that has finished: replayed after a
                // crash cut off part of what its last event sent, or late.
                if let Some(last) = last {
                    // A newer request in flight owns the flow record.
                    let flow_writes = !state.requests.contains_key(&flow_id);
                    resend(
                        &last.core,
                        &last.effects,
                        &last.history,
                        flow_writes,
                        &self.coordinator,
                        out,
                    )?;
                }
                return Ok(None);
            }
        }
        if let Some(is_create) = new_request {
            if let Some(current) = state.requests.get(&flow_id) {
                if current.request.core().request_id != request_id {
                    let message = format!(
                        "flow {flow_id} is busy with request {} ({}); try again when it is done",
                        current.request.core().request_id,
                        current.request.state()
                    );
                    reject(
                        out,
                        &reply_to,
                        &request_id,
                        &flow_id,
                        RequestErrorKind::Conflict,
                        message,
                    )?;
                }
                // Same request id: a redelivered command, already being handled.
                return Ok(None);
            }
            if overloaded {
                let message = format!(
                    "{} requests in flight; try again later",
                    self.config.max_in_flight
                );
                reject(
                    out,
                    &reply_to,
                    &request_id,
                    &flow_id,
                    RequestErrorKind::Overloaded,
                    message,
                )?;
                return Ok(None);
            }
            let core = RequestCore::new(
                &request_id,
                correlation_id,
                &flow_id,
                reply_to,
                now,
                &self.config.timeouts,
            );
            let request = match message {
                HubMessage::CreateFlow(req) if is_create => Request::create(core, req.flow.clone()),
                _ => Request::delete(core),
            };
            let history_head = state.history_heads.get(&flow_id).cloned();
            state.requests.insert(
                flow_id.clone(),
                InFlight {
                    request,
                    history_head,
                    last_history: Vec::new(),
                },
            );
            let existing = state.flows.get(&flow_id).cloned();
            return Ok(Some((flow_id, Event::Start { existing })));
        }
        let Some(current) = state.requests.get(&flow_id) else {
            return Ok(None);
        };
        if current.request.core().request_id != request_id {
            return Ok(None);
        }
        let event = match message {
            HubMessage::Allocated(m) => Event::Allocated(m.clone()),
            HubMessage::AllocationFailed(m) => Event::AllocationFailed(m.clone()),
            HubMessage::Deallocated(m) => Event::Deallocated {
                request_id: m.request_id.clone(),
            },
            HubMessage::JobCompleted(m) => Event::JobCompleted(m.clone()),
            HubMessage::CallbackTimeout(t) => {
                let context: TimerContext = serde_json::from_value(t.context.clone())
                    .map_err(|e| WfmError::Rejected(format!("timer context: {e}")))?;
                Event::Timeout { step: context.step }
            }
            HubMessage::CreateFlow(_) | HubMessage::DeleteFlow(_) => unreachable!("handled above"),
        };
        Ok(Some((flow_id, event)))
    }

    /// Feeds the event; a panic inside a machine fails that request only.
    fn feed(
        &mut self,
        partition: i32,
        flow_id: &str,
        event: Event,
        now: i64,
        out: &mut Outputs<'_>,
    ) -> Result<(), WfmError> {
        let timeouts = self.config.timeouts;
        let state = self
            .partitions
            .get_mut(&partition)
            .expect("routed to a partition");
        let in_flight = state
            .requests
            .get_mut(flow_id)
            .expect("routed to a request");
        let mut ctx = Ctx::new(now, timeouts);
        let before = in_flight.request.state();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            in_flight.request.handle(&event, &mut ctx)
        }));
        if outcome.is_err() {
            error!(flow_id, state = %before, "state machine panicked; request marked FAILED");
            ctx.effects = internal_failure(in_flight.request.core(), now, &before);
        }
        let effects = std::mem::take(&mut ctx.effects);
        let mut head = in_flight.history_head.clone();
        let mut history = Vec::new();
        let core = in_flight.request.core().clone();
        for effect in &effects {
            perform(
                effect,
                &core,
                state,
                &self.coordinator,
                &mut head,
                &mut history,
                now,
                out,
            )?;
        }
        let in_flight = state.requests.get_mut(flow_id).expect("still there");
        in_flight.history_head = head.clone();
        // Like the request's own effects, the history to resend on resume is
        // that of the latest event that did something: an event that changed
        // nothing (a duplicate reply, a stale timer) must not forget events
        // whose records may not be durable yet.
        if !effects.is_empty() {
            in_flight.last_history = history;
        }
        let terminal = outcome.is_err() || in_flight.request.is_terminal();
        self.inspector.count_event(&before);
        if terminal {
            let done = state.requests.remove(flow_id).expect("still there");
            info!(flow_id, request_id = %done.request.core().request_id, state = %done.request.state(), "request finished");
            self.inspector
                .count_outcome(done.request.kind(), done.request.state());
            let last_request_id = done.request.core().request_id.clone();
            let finished = Box::new(Finished {
                core: done.request.core().clone(),
                effects,
                history: done.last_history,
            });
            if let Some((seq, hash)) = head {
                state
                    .history_heads
                    .insert(flow_id.to_owned(), (seq, hash.clone()));
                let id = ids::derive(&["head", flow_id, &seq.to_string()]);
                let record = HubStateRecord::HistoryHead {
                    seq,
                    hash,
                    last_request_id: last_request_id.clone(),
                    finished: Some(finished.clone()),
                };
                out.send_state(Topic::HubState, &history_key(flow_id), &record, id)?;
            }
            state
                .finished
                .insert(flow_id.to_owned(), (last_request_id, Some(finished)));
            out.tombstone(Topic::HubState, &request_key(flow_id));
            self.inspector.remove(flow_id);
        } else {
            let in_flight = state.requests.remove(flow_id).expect("still there");
            let record = HubStateRecord::RequestSnapshot(Box::new(in_flight));
            let id = ids::derive(&["snapshot", &core.request_id, &now.to_string()]);
            out.send_state(Topic::HubState, &request_key(flow_id), &record, id)?;
            let HubStateRecord::RequestSnapshot(in_flight) = record else {
                unreachable!()
            };
            self.inspector
                .upsert(summary(&in_flight.request, partition));
            state.requests.insert(flow_id.to_owned(), *in_flight);
        }
        Ok(())
    }
}

fn reject(
    out: &mut Outputs<'_>,
    reply_to: &ReplyTo,
    request_id: &str,
    flow_id: &str,
    kind: RequestErrorKind,
    message: String,
) -> Result<(), WfmError> {
    info!(flow_id, request_id, %message, "request rejected");
    let reply = NorthboundReply::RequestRejected {
        request_id: request_id.to_owned(),
        flow_id: flow_id.to_owned(),
        error: RequestError { kind, message },
    };
    let id = ids::derive(&["rejected", request_id]);
    let envelope = Envelope::new(&reply, SOURCE, &out.correlation_id)?.with_message_id(id);
    out.records.push(Outgoing::envelope(
        reply_to.topic.clone(),
        reply_to.key.clone(),
        &envelope,
    ));
    Ok(())
}

/// The effects of a request that failed inside the hub: the flow is marked
/// FAILED for an operator to repair, and the caller is told.
fn internal_failure(core: &RequestCore, now: i64, state: &str) -> Vec<Effect> {
    let message = format!("internal error in state {state}; the flow needs repair");
    let mut effects = vec![Effect::CancelTimeout { step: core.step }];
    if let Some(mut flow) = core.flow.clone() {
        flow.status = FlowStatus::Failed;
        flow.status_info = Some(message.clone());
        flow.updated_at = now;
        effects.push(Effect::SaveFlow(flow));
    }
    effects.push(Effect::History {
        action: "internal_error".into(),
        from_state: Some(state.to_owned()),
        to_state: None,
        details: message.clone(),
    });
    effects.push(Effect::Reply(NorthboundReply::RequestFinished {
        request_id: core.request_id.clone(),
        flow_id: core.flow_id.clone(),
        succeeded: false,
        flow: None,
        message,
    }));
    effects
}

fn summary(request: &Request, partition: i32) -> RequestSummary {
    let core = request.core();
    RequestSummary {
        flow_id: core.flow_id.clone(),
        request_id: core.request_id.clone(),
        correlation_id: core.correlation_id.clone(),
        kind: request.kind(),
        state: request.state(),
        partition,
        started_at: core.started_at,
    }
}

/// Performs one effect as records to produce (and the in-memory state change it implies).
#[allow(clippy::too_many_arguments)]
fn perform(
    effect: &Effect,
    core: &RequestCore,
    state: &mut PartitionState,
    coordinator: &CoordinatorClient,
    head: &mut Option<(u64, String)>,
    history: &mut Vec<HistoryEvent>,
    now: i64,
    out: &mut Outputs<'_>,
) -> Result<(), WfmError> {
    let flow_id = core.flow_id.as_str();
    let request_id = core.request_id.as_str();
    let step = core.step.to_string();
    let hub_reply = || ReplyTo {
        topic: out.topics.name(Topic::Hub),
        key: flow_id.to_owned(),
    };
    match effect {
        Effect::Allocate { flow } => {
            let command = ResourcesCommand::Allocate(AllocateRequest {
                request_id: request_id.into(),
                flow: flow.clone(),
                reply_to: hub_reply(),
            });
            out.send(
                Topic::Resources,
                flow_id,
                &command,
                ids::derive(&[request_id, "allocate", &step]),
            )?;
        }
        Effect::Deallocate => {
            let command = ResourcesCommand::Deallocate(DeallocateRequest {
                request_id: request_id.into(),
                flow_id: flow_id.into(),
                reply_to: hub_reply(),
            });
            out.send(
                Topic::Resources,
                flow_id,
                &command,
                ids::derive(&[request_id, "deallocate", &step]),
            )?;
        }
        Effect::RunJob {
            job_id,
            operations,
            deadline,
        } => {
            let job = SpeakerMessage::RunJob(SpeakerJob {
                job_id: job_id.clone(),
                flow_id: flow_id.into(),
                request_id: request_id.into(),
                operations: operations.clone(),
                reply_to: hub_reply(),
                deadline: *deadline,
            });
            out.send(
                Topic::SpeakerWorker,
                job_id,
                &job,
                ids::derive(&["job", job_id]),
            )?;
        }
        Effect::ArmTimeout { step, deadline } => {
            let context = TimerContext {
                flow_id: flow_id.into(),
                request_id: request_id.into(),
                step: *step,
            };
            let record = coordinator
                .register(
                    &timer_key(request_id),
                    Fire::At(*deadline),
                    Topic::Hub,
                    flow_id,
                    &context,
                    &out.correlation_id,
                )
                .map_err(|e| WfmError::RequestFailed(e.to_string()))?;
            out.records.push(record);
        }
        Effect::CancelTimeout { .. } => {
            let record = coordinator
                .cancel(&timer_key(request_id), &out.correlation_id)
                .map_err(|e| WfmError::RequestFailed(e.to_string()))?;
            out.records.push(record);
        }
        Effect::SaveFlow(flow) => {
            state.flows.insert(flow_id.into(), flow.clone());
            let id = ids::derive(&[
                "flow",
                request_id,
                &flow.updated_at.to_string(),
                flow.status.as_str(),
            ]);
            out.send_state(
                Topic::Flows,
                flow_id,
                &FlowsMessage::FlowRecord(flow.clone()),
                id,
            )?;
        }
        Effect::RemoveFlow => {
            state.flows.remove(flow_id);
            out.tombstone(Topic::Flows, flow_id);
        }
        Effect::Reply(reply) => {
            let kind = match reply {
                NorthboundReply::RequestAccepted { .. } => "accepted",
                NorthboundReply::RequestRejected { .. } => "rejected",
                NorthboundReply::RequestFinished { .. } => "finished",
            };
            let envelope = Envelope::new(reply, SOURCE, &out.correlation_id)?
                .with_message_id(ids::derive(&[kind, request_id]));
            out.records.push(Outgoing::envelope(
                core.reply_to.topic.clone(),
                core.reply_to.key.clone(),
                &envelope,
            ));
        }
        Effect::History {
            action,
            from_state,
            to_state,
            details,
        } => {
            let draft = HistoryDraft {
                request_id: request_id.into(),
                correlation_id: core.correlation_id.clone(),
                actor: SOURCE.into(),
                action: action.clone(),
                from_state: from_state.clone(),
                to_state: to_state.clone(),
                details: details.clone(),
                at: now,
            };
            let event = draft.chain(
                flow_id,
                head.as_ref().map(|(seq, hash)| (*seq, hash.as_str())),
            );
            *head = Some((event.seq, event.hash.clone()));
            send_history(out, &event)?;
            history.push(event);
        }
    }
    Ok(())
}

/// Sends again what a request's latest event sent, its history events as they
/// were; receivers deduplicate, so this only fills in what a crash cut off.
/// Flow writes are left out unless `flow_writes`.
fn resend(
    core: &RequestCore,
    effects: &[Effect],
    history: &[HistoryEvent],
    flow_writes: bool,
    coordinator: &CoordinatorClient,
    out: &mut Outputs<'_>,
) -> Result<(), WfmError> {
    let mut scratch = PartitionState::default();
    for effect in effects {
        let skipped = match effect {
            Effect::History { .. } => true,
            Effect::SaveFlow(_) | Effect::RemoveFlow => !flow_writes,
            _ => false,
        };
        if !skipped {
            perform(
                effect,
                core,
                &mut scratch,
                coordinator,
                &mut None,
                &mut Vec::new(),
                core.started_at,
                out,
            )?;
        }
    }
    for event in history {
        send_history(out, event)?;
    }
    Ok(())
}

fn send_history(out: &mut Outputs<'_>, event: &HistoryEvent) -> Result<(), WfmError> {
    let id = ids::derive(&[
        "history",
        &event.flow_id,
        &event.seq.to_string(),
        &event.hash,
    ]);
    out.send_state(
        Topic::History,
        &event.flow_id.clone(),
        &HistoryMessage::HistoryEvent(event.clone()),
        id,
    )
}

fn timer_key(request_id: &str) -> String {
    format!("hub/{request_id}")
}

#[async_trait]
impl Handler for HubHandler {
    type Message = HubMessage;

    async fn on_assigned(
        &mut self,
        ctx: &Context,
        partitions: &[TopicPartition],
    ) -> Result<Vec<Outgoing>, WfmError> {
        let mut outputs = Vec::new();
        for (_, partition) in partitions {
            let mut state = PartitionState::default();
            let mut corrupt = Vec::new();
            wfm_runtime::changelog::read(
                &ctx.kafka,
                &self.topics.name(Topic::Flows),
                &[*partition],
                |key, value| {
                    if let Err(e) = state.apply_flow(key, value) {
                        corrupt.push(e);
                    }
                },
            )
            .await?;
            wfm_runtime::changelog::read(
                &ctx.kafka,
                &self.topics.name(Topic::HubState),
                &[*partition],
                |key, value| {
                    if let Err(e) = state.apply_state(key, value) {
                        corrupt.push(e);
                    }
                },
            )
            .await?;
            for e in corrupt {
                warn!(partition, error = %e, "skipped unreadable state record");
            }
            info!(
                partition,
                flows = state.flows.len(),
                in_flight = state.requests.len(),
                "hub partition restored"
            );
            // Resume: resend what each request last sent. Receivers deduplicate,
            // so this only fills in whatever the crash cut off.
            for in_flight in state.requests.values() {
                let core = in_flight.request.core();
                let mut out = Outputs {
                    topics: &self.topics,
                    partition: *partition,
                    correlation_id: core.correlation_id.clone(),
                    records: Vec::new(),
                };
                resend(
                    core,
                    &in_flight.request.last_effects,
                    &in_flight.last_history,
                    true,
                    &self.coordinator,
                    &mut out,
                )?;
                self.inspector
                    .upsert(summary(&in_flight.request, *partition));
                outputs.extend(out.records);
            }
            self.partitions.insert(*partition, state);
        }
        Ok(outputs)
    }

    async fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        for (_, partition) in partitions {
            self.partitions.remove(partition);
            self.inspector.forget_partition(*partition);
        }
    }

    async fn handle(
        &mut self,
        _ctx: &Context,
        delivery: &Delivery<HubMessage>,
    ) -> Result<Vec<Outgoing>, WfmError> {
        let now = delivery.envelope.created_at;
        let topics = self.topics.clone();
        let mut out = Outputs {
            topics: &topics,
            partition: delivery.partition,
            correlation_id: delivery.envelope.correlation_id.clone(),
            records: Vec::new(),
        };
        if let Some((flow_id, event)) = self.route(
            delivery.partition,
            &delivery.message,
            &delivery.envelope.correlation_id,
            now,
            &mut out,
        )? {
            let span = tracing::info_span!("request", flow_id = %flow_id);
            let _guard = span.enter();
            self.feed(delivery.partition, &flow_id, event, now, &mut out)?;
        }
        Ok(out.records)
    }
}

#[cfg(test)]
mod tests {
    use wfm_protocol::resources::ReplyTo;

    use super::*;
    use crate::rules::tests::{endpoint, spec};

    fn handler_with_request() -> HubHandler {
        let mut handler = HubHandler::new(
            HubConfig::default(),
            Topics::default(),
            HubInspector::default(),
        );
        let reply_to = ReplyTo {
            topic: "wfm.northbound".into(),
            key: "corr".into(),
        };
        let timeouts = handler.config.timeouts;
        let core = RequestCore::new("r1", "corr", "f1", reply_to, 0, &timeouts);
        let flow = spec(endpoint("s1", 1, 10), endpoint("s2", 1, 10));
        let state = handler.partitions.entry(0).or_default();
        state.requests.insert(
            "f1".into(),
            InFlight {
                request: Request::create(core, flow),
                history_head: None,
                last_history: Vec::new(),
            },
        );
        handler
    }

    fn feed(handler: &mut HubHandler, event: Event, now: i64) -> Vec<Outgoing> {
        let topics = handler.topics.clone();
        let mut out = Outputs {
            topics: &topics,
            partition: 0,
            correlation_id: "corr".into(),
            records: Vec::new(),
        };
        handler.feed(0, "f1", event, now, &mut out).unwrap();
        out.records
    }

    /// A crash can leave the snapshot of a later event durable and the
    /// history records of an earlier one not; the resume must still resend them.
    #[test]
    fn an_event_that_changes_nothing_keeps_the_history_to_resend() {
        let mut handler = handler_with_request();
        feed(&mut handler, Event::Start { existing: None }, 1);
        let sent = handler.partitions[&0].requests["f1"].last_history.clone();
        assert!(!sent.is_empty(), "the start records history");

        let stale_timer = Event::Timeout { step: 999 };
        let records = feed(&mut handler, stale_timer, 2);

        let in_flight = &handler.partitions[&0].requests["f1"];
        assert_eq!(
            in_flight
                .last_history
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            sent.iter().map(|e| e.seq).collect::<Vec<_>>()
        );
        let snapshot = records
            .iter()
            .find(|r| r.key == request_key("f1"))
            .expect("the request is persisted");
        let HubStateRecord::RequestSnapshot(persisted) =
            Envelope::decode(snapshot.value.as_deref().unwrap(), usize::MAX)
                .unwrap()
                .open()
                .unwrap()
        else {
            panic!("a snapshot");
        };
        assert_eq!(persisted.last_history.len(), sent.len());
    }
}
