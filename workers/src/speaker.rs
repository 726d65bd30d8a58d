//! The speaker worker's consumer: runs [`JobState`] machines for the jobs of
//! its `wfm.speaker-worker` partitions and performs their effects as switch
//! commands and job results. A job's timers (reply timeouts, backoffs, its
//! deadline) are its own and fire from [`Handler::on_wakeup`].
//!
//! Crash safety: the inbox offset is not committed past the job record of
//! any job still running ([`Handler::replay_from`]), so whoever owns the
//! partition next takes such a job again from its record and runs it afresh;
//! its commands carry the same ids, and switch commands are idempotent, so a
//! command answered before the crash only brings its answer again. A job is
//! written to the compacted `wfm.speaker-worker.state` changelog (same
//! partition) only when it completes, before its result, and both are
//! acknowledged before the offset moves past it: the successor restores
//! completed jobs to answer a duplicate with the same result. Writing each
//! job as it was taken as well cost a large record per job for what the
//! inbox already holds.
//!
//! Why the job keeps its own timers rather than a coordinator callback per
//! command: the job is durable here already, and a callback per command cost
//! a register and a cancel record (and the coordinator's work on both) for
//! every switch command. The hub still holds a coordinator callback for each
//! job, so a silent worker is caught.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, info_span, warn};
use wfm_protocol::speaker::{OperationOutcome, SpeakerMessage, SpeakerReply, SwitchAction};
use wfm_protocol::switch::{CommandHeader, SwitchCommand};
use wfm_protocol::{ids, now_ms, Envelope, Topic, Topics};
use wfm_runtime::{Context, Delivery, Handler, Outgoing, TopicPartition, WfmError};

use crate::job::{Answer, Effect, JobState, RetryPolicy};
use crate::stats::SpeakerStats;

pub const SOURCE: &str = "speaker";

/// A record of the speaker's changelog, keyed by job id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum SpeakerState {
    Job(Box<JobState>),
}

/// Settings of the handler that are not Kafka's.
#[derive(Debug, Clone, Copy)]
pub struct SpeakerSettings {
    pub policy: RetryPolicy,
    /// How long past its deadline a completed job is kept to answer a
    /// duplicate delivery with its result. A duplicate that comes later is
    /// past the deadline, so it fails at once without sending a command:
    /// keeping the job longer would only cost memory (at 1,000 creates a
    /// second, ten minutes of jobs were gigabytes).
    pub completed_retention: Duration,
}

struct Tracked {
    state: JobState,
    partition: i32,
    /// The inbox offset of the job's record; `None` for a job restored from the changelog.
    taken_at: Option<i64>,
}

pub struct SpeakerHandler {
    settings: SpeakerSettings,
    stats: SpeakerStats,
    topics: Topics,
    jobs: HashMap<String, Tracked>,
    /// `(due ms, job id)` of every job's next tick or expiry.
    timers: BTreeSet<(i64, String)>,
    /// `(partition, inbox offset)` of every job still running: the inbox is
    /// replayed from the oldest of a partition.
    running: BTreeSet<(i32, i64)>,
}

impl SpeakerHandler {
    pub fn new(topics: Topics, settings: SpeakerSettings, stats: SpeakerStats) -> Self {
        Self {
            settings,
            stats,
            topics,
            jobs: HashMap::new(),
            timers: BTreeSet::new(),
            running: BTreeSet::new(),
        }
    }

    /// When the job next needs a tick: a retry, its deadline, or its expiry once completed.
    fn due(&self, state: &JobState) -> Option<i64> {
        match state.completed_at {
            Some(at) => Some(
                at.max(state.job.deadline)
                    .saturating_add(millis(self.settings.completed_retention)),
            ),
            None => state.next_tick(),
        }
    }

    /// Stores the job and produces the records of `effects`, preceded by the
    /// job's changelog record when it completes.
    fn commit(
        &mut self,
        state: JobState,
        partition: i32,
        taken_at: Option<i64>,
        effects: Vec<Effect>,
    ) -> Result<Vec<Outgoing>, WfmError> {
        let job_id = state.job.job_id.clone();
        let durable = effects.contains(&Effect::Complete);
        if let Some(offset) = taken_at {
            match state.is_completed() {
                false => self.running.insert((partition, offset)),
                true => self.running.remove(&(partition, offset)),
            };
        }
        if let Some(due) = self.jobs.get(&job_id).and_then(|t| self.due(&t.state)) {
            self.timers.remove(&(due, job_id.clone()));
        }
        if let Some(due) = self.due(&state) {
            self.timers.insert((due, job_id.clone()));
        }
        let mut outputs = Vec::new();
        let state = if durable {
            let record = SpeakerState::Job(Box::new(state));
            let envelope = Envelope::new(&record, SOURCE, "")?;
            outputs.push(
                Outgoing::envelope(self.topics.name(Topic::SpeakerState), &job_id, &envelope)
                    .to_partition(partition),
            );
            let SpeakerState::Job(state) = record;
            *state
        } else {
            state
        };
        outputs.extend(self.perform(&state, effects)?);
        self.jobs.insert(
            job_id,
            Tracked {
                state,
                partition,
                taken_at,
            },
        );
        Ok(outputs)
    }

    fn perform(&self, state: &JobState, effects: Vec<Effect>) -> Result<Vec<Outgoing>, WfmError> {
        let job = &state.job;
        let correlation_id = &state.correlation_id;
        let mut outputs = Vec::new();
        for effect in effects {
            match effect {
                Effect::Send {
                    operation,
                    attempt,
                    command_id,
                } => {
                    self.stats.command_sent(attempt);
                    let op = state.operation(operation);
                    debug!(%command_id, attempt, switch_id = %op.switch_id, "command sent");
                    let header = CommandHeader {
                        command_id: command_id.clone(),
                        attempt,
                        switch_id: op.switch_id.clone(),
                        reply_topic: self.topics.name(Topic::SpeakerWorker),
                        reply_key: job.job_id.clone(),
                    };
                    let command = match &op.action {
                        SwitchAction::Install { rule } => SwitchCommand::InstallRule {
                            header,
                            rule: rule.clone(),
                        },
                        SwitchAction::Remove { cookie } => SwitchCommand::RemoveRule {
                            header,
                            cookie: *cookie,
                        },
                        SwitchAction::Verify { rule } => SwitchCommand::VerifyRule {
                            header,
                            expected: rule.clone(),
                        },
                    };
                    let envelope = Envelope::new(&command, SOURCE, correlation_id)?
                        .with_message_id(ids::derive(&["switch-command", &command_id]));
                    outputs.push(Outgoing::envelope(
                        self.topics.name(Topic::Switch),
                        &op.switch_id,
                        &envelope,
                    ));
                }
                Effect::TimedOut { operation, attempt } => {
                    self.stats.command_timed_out();
                    let switch_id = &state.operation(operation).switch_id;
                    info!(operation, attempt, %switch_id, "command timed out");
                }
                Effect::Complete => {
                    let failed = state.completed.as_ref().map_or(0, |c| {
                        c.results
                            .iter()
                            .filter(|r| r.outcome != OperationOutcome::Done)
                            .count()
                    });
                    let latency = state.completed_at.unwrap_or(state.started_at) - state.started_at;
                    self.stats
                        .job_completed(failed as u64, u64::try_from(latency).unwrap_or(0));
                    debug!(failed, latency_ms = latency, "job completed");
                    outputs.push(self.result(state)?);
                }
            }
        }
        Ok(outputs)
    }

    /// The job's result for the hub; the same message id however often it is sent.
    fn result(&self, state: &JobState) -> Result<Outgoing, WfmError> {
        let completed = state
            .completed
            .clone()
            .ok_or_else(|| WfmError::RequestFailed("job result before completion".into()))?;
        let reply_to = &state.job.reply_to;
        let envelope = Envelope::new(
            &SpeakerReply::JobCompleted(completed),
            SOURCE,
            &state.correlation_id,
        )?
        .with_message_id(ids::derive(&["speaker-job-completed", &state.job.job_id]));
        Ok(Outgoing::envelope(
            &reply_to.topic,
            &reply_to.key,
            &envelope,
        ))
    }

    /// Applies an answer to the job `job_id`, if it is still tracked.
    fn answer(
        &mut self,
        job_id: &str,
        apply: impl FnOnce(&mut JobState) -> Answer,
    ) -> Result<Option<Vec<Outgoing>>, WfmError> {
        let Some(mut tracked) = self.jobs.remove(job_id) else {
            return Ok(None);
        };
        let previous_due = self.due(&tracked.state);
        match apply(&mut tracked.state) {
            Answer::Stale => {
                self.jobs.insert(job_id.to_owned(), tracked);
                Ok(None)
            }
            Answer::Applied(effects) => {
                if let Some(due) = previous_due {
                    self.timers.remove(&(due, job_id.to_owned()));
                }
                self.commit(tracked.state, tracked.partition, tracked.taken_at, effects)
                    .map(Some)
            }
        }
    }

    fn run_job(&mut self, delivery: &Delivery<SpeakerMessage>) -> Result<Vec<Outgoing>, WfmError> {
        let SpeakerMessage::RunJob(job) = &delivery.message else {
            unreachable!("called for jobs only");
        };
        if delivery.key.as_deref() != Some(job.job_id.as_str()) {
            // Replies are keyed by job id; a job elsewhere would never see them.
            return Err(WfmError::Rejected(format!(
                "record key {:?} is not the job id `{}`",
                delivery.key, job.job_id
            )));
        }
        if let Some(tracked) = self.jobs.get(&job.job_id) {
            self.stats.duplicate_job();
            info!(
                completed = tracked.state.is_completed(),
                "duplicate job delivery"
            );
            return match tracked.state.is_completed() {
                true => Ok(vec![self.result(&tracked.state)?]),
                false => Ok(Vec::new()),
            };
        }
        self.stats.job_started();
        let (state, effects) = JobState::start(
            job.clone(),
            &delivery.envelope.correlation_id,
            &self.settings.policy,
            now_ms(),
        );
        self.commit(state, delivery.partition, Some(delivery.offset), effects)
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl Handler for SpeakerHandler {
    type Message = SpeakerMessage;

    async fn on_assigned(
        &mut self,
        ctx: &Context,
        partitions: &[TopicPartition],
    ) -> Result<Vec<Outgoing>, WfmError> {
        let changelog = ctx.topics.name(Topic::SpeakerState);
        let mut outputs = Vec::new();
        for (_, partition) in partitions {
            let records =
                wfm_runtime::changelog::latest_by_key(&ctx.kafka, &changelog, &[*partition])
                    .await?;
            let mut resumed = 0;
            for (job_id, value) in records {
                let mut state = match Envelope::decode(&value, usize::MAX)
                    .and_then(|e| e.open::<SpeakerState>())
                {
                    Ok(SpeakerState::Job(state)) => *state,
                    Err(error) => {
                        warn!(%job_id, %error, "undecodable job in changelog skipped");
                        continue;
                    }
                };
                // Running jobs come back from the inbox; one here was written
                // by an earlier version, which saved jobs as it took them.
                let effects = state.resend_in_flight(&self.settings.policy, now_ms());
                resumed += usize::from(!state.is_completed());
                let _span = info_span!("job", %job_id, flow_id = %state.job.flow_id).entered();
                // Restored from the changelog: already durable as it is.
                outputs.extend(self.commit(state, *partition, None, effects)?);
            }
            info!(partition, resumed, "speaker jobs restored");
        }
        Ok(outputs)
    }

    async fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        let revoked: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
        self.jobs
            .retain(|_, tracked| !revoked.contains(&tracked.partition));
        let jobs = &self.jobs;
        self.timers.retain(|(_, job_id)| jobs.contains_key(job_id));
        self.running
            .retain(|(partition, _)| !revoked.contains(partition));
    }

    fn replay_from(&self, (_, partition): &TopicPartition) -> Option<i64> {
        self.running
            .range((*partition, i64::MIN)..=(*partition, i64::MAX))
            .next()
            .map(|(_, offset)| *offset)
    }

    async fn handle(
        &mut self,
        _ctx: &Context,
        delivery: &Delivery<SpeakerMessage>,
    ) -> Result<Vec<Outgoing>, WfmError> {
        let policy = self.settings.policy;
        match &delivery.message {
            SpeakerMessage::RunJob(job) => {
                let _span =
                    info_span!("job", job_id = %job.job_id, flow_id = %job.flow_id).entered();
                self.run_job(delivery)
            }
            SpeakerMessage::SwitchReply(reply) => {
                let job_id = delivery.key.clone().unwrap_or_default();
                let _span = info_span!("job", %job_id, command_id = %reply.command_id, attempt = reply.attempt).entered();
                if let Some(tracked) = self.jobs.get(&job_id) {
                    if tracked.state.is_completed() {
                        // Late, or replayed because a crash cut off the result
                        // after the completed job was in the changelog: the
                        // result again, which the hub takes at most once.
                        self.stats.stale_reply();
                        debug!("reply to a completed job: result sent again");
                        return Ok(vec![self.result(&tracked.state)?]);
                    }
                }
                let now = now_ms();
                let outputs = self.answer(&job_id, |state| {
                    state.on_reply(&reply.command_id, &reply.result, &policy, now)
                })?;
                Ok(outputs.unwrap_or_else(|| {
                    self.stats.stale_reply();
                    info!("stale switch reply ignored");
                    Vec::new()
                }))
            }
        }
    }

    fn next_wakeup(&self) -> Option<tokio::time::Instant> {
        let (due, _) = self.timers.first()?;
        let wait = u64::try_from(due - now_ms()).unwrap_or(0);
        Some(tokio::time::Instant::now() + Duration::from_millis(wait))
    }

    async fn on_wakeup(&mut self, _ctx: &Context) -> Result<Vec<Outgoing>, WfmError> {
        let now = now_ms();
        let mut outputs = Vec::new();
        while let Some((due, job_id)) = self.timers.first().cloned() {
            if due > now {
                break;
            }
            self.timers.remove(&(due, job_id.clone()));
            let Some(tracked) = self.jobs.remove(&job_id) else {
                continue;
            };
            let _span = info_span!("job", %job_id, flow_id = %tracked.state.job.flow_id).entered();
            if tracked.state.is_completed() {
                debug!("completed job forgotten");
                outputs.push(
                    Outgoing::tombstone(self.topics.name(Topic::SpeakerState), &job_id)
                        .to_partition(tracked.partition),
                );
                continue;
            }
            let mut state = tracked.state;
            let effects = state.on_tick(&self.settings.policy, now);
            outputs.extend(self.commit(state, tracked.partition, tracked.taken_at, effects)?);
        }
        Ok(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wfm_protocol::resources::ReplyTo;
    use wfm_protocol::speaker::SpeakerJob;

    fn handler(retention_ms: u64) -> SpeakerHandler {
        let settings = SpeakerSettings {
            policy: crate::SpeakerConfig::default().settings().policy,
            completed_retention: Duration::from_millis(retention_ms),
        };
        SpeakerHandler::new(Topics::default(), settings, SpeakerStats::default())
    }

    /// A job of no operations: it completes as soon as it is taken, at `now`.
    fn completed(deadline: i64, now: i64) -> JobState {
        let job = SpeakerJob {
            job_id: "job-1".into(),
            flow_id: "flow-1".into(),
            request_id: "req-1".into(),
            operations: Vec::new(),
            reply_to: ReplyTo {
                topic: "wfm.hub".into(),
                key: "flow-1".into(),
            },
            deadline,
        };
        let policy = crate::SpeakerConfig::default().settings().policy;
        let (state, _) = JobState::start(job, "c", &policy, now);
        assert_eq!(state.completed_at, Some(now));
        state
    }

    #[test]
    fn a_completed_job_is_kept_until_the_retention_past_its_deadline() {
        let handler = handler(10_000);
        // Completed early: a duplicate may still come, and would run, until the deadline.
        assert_eq!(handler.due(&completed(50_000, 1_000)), Some(60_000));
        // Completed late (its deadline had passed): kept from its completion.
        assert_eq!(handler.due(&completed(50_000, 70_000)), Some(80_000));
    }
}
