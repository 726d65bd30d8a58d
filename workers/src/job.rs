//! One speaker job as a pure state machine: each operation is sent, answered
//! or timed out, retried with backoff, and settled; the job completes once
//! every operation is settled or its deadline passes. Methods take the time
//! and return [`Effect`]s for the caller to perform, so the whole life of a
//! job is testable without Kafka.
//!
//! Every timer of a job (an attempt's reply timeout, a retry's backoff, the
//! job's deadline) is part of its state and surfaces through
//! [`JobState::next_tick`]. The state is plain data: a worker that takes the
//! job over from its changelog re-sends the attempts in flight and re-arms
//! their timeouts, so it resumes where the last one stopped.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wfm_protocol::ids;
use wfm_protocol::speaker::{
    JobCompleted, OperationOutcome, OperationResult, SpeakerJob, SwitchOperation,
};
use wfm_protocol::switch::{SwitchErrorCode, SwitchResult};

/// How operations are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per operation, the first included.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// An attempt unanswered for this long has timed out.
    pub command_timeout: Duration,
}

impl RetryPolicy {
    /// Delay before attempt `attempt + 1`: doubling from the initial backoff, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    fn timeout_at(&self, sent_at: i64) -> i64 {
        sent_at.saturating_add(millis(self.command_timeout))
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The command id of one attempt of one operation: fresh per attempt (so a
/// reply names the attempt it answers) yet deterministic (so a resumed job
/// re-sends an attempt under the id the switch may already have seen).
pub fn command_id(job_id: &str, operation: usize, attempt: u32) -> String {
    ids::derive(&[
        "speaker-command",
        job_id,
        &operation.to_string(),
        &attempt.to_string(),
    ])
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Attempt `attempt` is out; its reply is awaited until `timeout_at` (ms since the epoch).
    InFlight {
        command_id: String,
        /// Re-armed whenever the attempt is re-sent, as after a takeover.
        #[serde(default)]
        timeout_at: i64,
    },
    /// The last attempt failed retryably; the next is sent at `retry_at` (ms since the epoch).
    Waiting {
        retry_at: i64,
    },
    Done,
    Failed {
        code: Option<SwitchErrorCode>,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationState {
    pub attempt: u32,
    pub phase: Phase,
    /// Error of the latest failed attempt (none for a timeout), reported if the operation fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_code: Option<SwitchErrorCode>,
}

impl OperationState {
    pub fn is_settled(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Failed { .. })
    }
}

/// What the caller must do for the job.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send attempt `attempt` of operation `operation` under `command_id`.
    Send {
        operation: usize,
        attempt: u32,
        command_id: String,
    },
    /// Attempt `attempt` of operation `operation` went unanswered: count it.
    TimedOut { operation: usize, attempt: u32 },
    /// Every operation is settled: answer the hub with [`JobState::completed`].
    Complete,
}

/// How a switch reply for a job was taken.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// It belongs to the attempt in flight and moved the job on.
    Applied(Vec<Effect>),
    /// It names an attempt that is no longer in flight: an old attempt, a
    /// duplicate, or an operation already settled.
    Stale,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub job: SpeakerJob,
    pub correlation_id: String,
    /// When the worker first took the job, ms since the epoch.
    pub started_at: i64,
    pub operations: Vec<OperationState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<JobCompleted>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<i64>,
}

impl JobState {
    /// Takes a new job: sends the first attempt of every operation, or completes
    /// at once if there is nothing to do or the deadline has already passed.
    pub fn start(
        job: SpeakerJob,
        correlation_id: &str,
        policy: &RetryPolicy,
        now: i64,
    ) -> (Self, Vec<Effect>) {
        let operations = (0..job.operations.len())
            .map(|operation| OperationState {
                attempt: 1,
                phase: Phase::InFlight {
                    command_id: command_id(&job.job_id, operation, 1),
                    timeout_at: 0,
                },
                last_code: None,
            })
            .collect();
        let mut state = Self {
            job,
            correlation_id: correlation_id.to_owned(),
            started_at: now,
            operations,
            completed: None,
            completed_at: None,
        };
        if now >= state.job.deadline {
            let effects = state.expire(now);
            return (state, effects);
        }
        let effects = state.resend_in_flight(policy, now);
        let effects = state.finish(effects, now);
        (state, effects)
    }

    /// Sends again every attempt in flight and re-arms its timeout, e.g.
    /// after a takeover when it is unknown whether they left before the
    /// crash. Commands are idempotent and keep their ids, so a duplicate is
    /// harmless.
    pub fn resend_in_flight(&mut self, policy: &RetryPolicy, now: i64) -> Vec<Effect> {
        let mut effects = Vec::new();
        for (operation, state) in self.operations.iter_mut().enumerate() {
            if let Phase::InFlight {
                command_id,
                timeout_at,
            } = &mut state.phase
            {
                *timeout_at = policy.timeout_at(now);
                effects.push(Effect::Send {
                    operation,
                    attempt: state.attempt,
                    command_id: command_id.clone(),
                });
            }
        }
        effects
    }

    pub fn operation(&self, index: usize) -> &SwitchOperation {
        &self.job.operations[index]
    }

    pub fn is_completed(&self) -> bool {
        self.completed.is_some()
    }

    /// A switch reply: settles or retries the operation whose attempt is in flight under `command_id`.
    pub fn on_reply(
        &mut self,
        command_id: &str,
        result: &SwitchResult,
        policy: &RetryPolicy,
        now: i64,
    ) -> Answer {
        let Some(index) = self.in_flight(command_id) else {
            return Answer::Stale;
        };
        let op = &mut self.operations[index];
        match result {
            SwitchResult::Ok { .. } => op.phase = Phase::Done,
            SwitchResult::Error(error) => {
                op.last_code = Some(error.code);
                op.phase = if !error.code.is_retryable() {
                    Phase::Failed {
                        code: Some(error.code),
                        message: error.message.clone(),
                    }
                } else {
                    retry_or_fail(op, policy, now, || error.message.clone())
                };
            }
        }
        Answer::Applied(self.finish(Vec::new(), now))
    }

    /// Enforces the job deadline, times out the attempts unanswered past
    /// their timeout, and sends the retries that are due.
    pub fn on_tick(&mut self, policy: &RetryPolicy, now: i64) -> Vec<Effect> {
        if self.is_completed() {
            return Vec::new();
        }
        if now >= self.job.deadline {
            return self.expire(now);
        }
        let mut effects = Vec::new();
        for (operation, op) in self.operations.iter_mut().enumerate() {
            if matches!(op.phase, Phase::InFlight { timeout_at, .. } if timeout_at <= now) {
                let attempt = op.attempt;
                op.last_code = None;
                op.phase = retry_or_fail(op, policy, now, || {
                    format!("no reply after {attempt} attempt(s)")
                });
                effects.push(Effect::TimedOut { operation, attempt });
            }
            if matches!(op.phase, Phase::Waiting { retry_at } if retry_at <= now) {
                op.attempt += 1;
                let command_id = command_id(&self.job.job_id, operation, op.attempt);
                op.phase = Phase::InFlight {
                    command_id: command_id.clone(),
                    timeout_at: policy.timeout_at(now),
                };
                effects.push(Effect::Send {
                    operation,
                    attempt: op.attempt,
                    command_id,
                });
            }
        }
        self.finish(effects, now)
    }

    /// When [`JobState::on_tick`] next has something to do (ms since the epoch).
    pub fn next_tick(&self) -> Option<i64> {
        if self.is_completed() {
            return None;
        }
        self.operations
            .iter()
            .filter_map(|op| match op.phase {
                Phase::Waiting { retry_at } => Some(retry_at),
                Phase::InFlight { timeout_at, .. } => Some(timeout_at),
                _ => None,
            })
            .chain([self.job.deadline])
            .min()
    }

    /// Fails whatever is unsettled because the job's deadline passed.
    fn expire(&mut self, now: i64) -> Vec<Effect> {
        for op in self.operations.iter_mut().filter(|op| !op.is_settled()) {
            op.phase = Phase::Failed {
                code: op.last_code,
                message: format!("job deadline passed after {} attempt(s)", op.attempt),
            };
        }
        self.finish(Vec::new(), now)
    }

    fn finish(&mut self, mut effects: Vec<Effect>, now: i64) -> Vec<Effect> {
        if !self.is_completed() && self.operations.iter().all(OperationState::is_settled) {
            self.completed = Some(self.result());
            self.completed_at = Some(now);
            effects.push(Effect::Complete);
        }
        effects
    }

    fn in_flight(&self, command_id: &str) -> Option<usize> {
        self.operations.iter().position(
            |op| matches!(&op.phase, Phase::InFlight { command_id: id, .. } if id == command_id),
        )
    }

    fn result(&self) -> JobCompleted {
        let results = self
            .job
            .operations
            .iter()
            .zip(&self.operations)
            .map(|(operation, state)| OperationResult {
                switch_id: operation.switch_id.clone(),
                cookie: operation.cookie(),
                outcome: match &state.phase {
                    Phase::Failed { code, message } => OperationOutcome::Failed {
                        code: *code,
                        message: message.clone(),
                    },
                    _ => OperationOutcome::Done,
                },
                attempts: state.attempt,
            })
            .collect();
        JobCompleted {
            job_id: self.job.job_id.clone(),
            flow_id: self.job.flow_id.clone(),
            request_id: self.job.request_id.clone(),
            results,
        }
    }
}

fn retry_or_fail(
    op: &OperationState,
    policy: &RetryPolicy,
    now: i64,
    message: impl FnOnce() -> String,
) -> Phase {
    if op.attempt >= policy.max_attempts {
        return Phase::Failed {
            code: op.last_code,
            message: message(),
        };
    }
    let backoff = i64::try_from(policy.backoff(op.attempt).as_millis()).unwrap_or(i64::MAX);
    Phase::Waiting {
        retry_at: now.saturating_add(backoff),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wfm_protocol::resources::ReplyTo;
    use wfm_protocol::speaker::SwitchAction;
    use wfm_protocol::switch::SwitchError;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(300),
        command_timeout: Duration::from_millis(500),
    };

    fn job(operations: usize, deadline: i64) -> SpeakerJob {
        SpeakerJob {
            job_id: "job-1".into(),
            flow_id: "flow-1".into(),
            request_id: "req-1".into(),
            operations: (0..operations)
                .map(|n| SwitchOperation {
                    switch_id: format!("sw{n}"),
                    action: SwitchAction::Remove { cookie: n as u64 },
                })
                .collect(),
            reply_to: ReplyTo {
                topic: "wfm.hub".into(),
                key: "flow-1".into(),
            },
            deadline,
        }
    }

    fn ok() -> SwitchResult {
        SwitchResult::Ok { rules: None }
    }

    fn error(code: SwitchErrorCode) -> SwitchResult {
        SwitchResult::Error(SwitchError::new(code, "injected"))
    }

    fn cmd(op: usize, attempt: u32) -> String {
        command_id("job-1", op, attempt)
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let delays: Vec<u128> = (1..=4).map(|a| POLICY.backoff(a).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 300, 300]);
        assert_ne!(cmd(0, 1), cmd(0, 2));
        assert_ne!(cmd(0, 1), cmd(1, 1));
    }

    #[test]
    fn every_operation_answered_completes_the_job() {
        let (mut state, effects) = JobState::start(job(2, 10_000), "c", &POLICY, 0);
        assert_eq!(effects.len(), 2);
        assert_eq!(
            state.on_reply(&cmd(0, 1), &ok(), &POLICY, 1),
            Answer::Applied(Vec::new())
        );
        let Answer::Applied(effects) = state.on_reply(&cmd(1, 1), &ok(), &POLICY, 2) else {
            panic!("applied");
        };
        assert_eq!(effects.last(), Some(&Effect::Complete));
        assert!(state.completed.as_ref().unwrap().all_done());
        // The same reply again is a duplicate.
        assert_eq!(state.on_reply(&cmd(1, 1), &ok(), &POLICY, 3), Answer::Stale);
    }

    #[test]
    fn empty_job_completes_at_once() {
        let (state, effects) = JobState::start(job(0, 10_000), "c", &POLICY, 0);
        assert_eq!(effects, vec![Effect::Complete]);
        assert!(state.completed.unwrap().results.is_empty());
    }

    #[test]
    fn retryable_error_is_retried_with_a_fresh_command_id_and_old_replies_are_stale() {
        let (mut state, _) = JobState::start(job(1, 10_000), "c", &POLICY, 0);
        let applied = state.on_reply(
            &cmd(0, 1),
            &error(SwitchErrorCode::SwitchUnavailable),
            &POLICY,
            10,
        );
        assert_eq!(applied, Answer::Applied(Vec::new()));
        assert_eq!(state.next_tick(), Some(110));
        assert!(state.on_tick(&POLICY, 109).is_empty());
        assert_eq!(
            state.on_tick(&POLICY, 110),
            vec![Effect::Send {
                operation: 0,
                attempt: 2,
                command_id: cmd(0, 2)
            }]
        );
        // A late success of attempt 1 does not count for attempt 2.
        assert_eq!(
            state.on_reply(&cmd(0, 1), &ok(), &POLICY, 120),
            Answer::Stale
        );
        assert!(matches!(
            state.on_reply(&cmd(0, 2), &ok(), &POLICY, 130),
            Answer::Applied(_)
        ));
        let result = state.completed.unwrap();
        assert!(result.all_done());
        assert_eq!(result.results[0].attempts, 2);
    }

    #[test]
    fn non_retryable_error_fails_at_once() {
        let (mut state, _) = JobState::start(job(1, 10_000), "c", &POLICY, 0);
        state.on_reply(&cmd(0, 1), &error(SwitchErrorCode::BadOutPort), &POLICY, 1);
        let result = state.completed.unwrap();
        assert_eq!(
            result.results[0].outcome,
            OperationOutcome::Failed {
                code: Some(SwitchErrorCode::BadOutPort),
                message: "injected".into()
            }
        );
        assert_eq!(result.results[0].attempts, 1);
    }

    #[test]
    fn unanswered_attempts_time_out_and_retry_until_attempts_run_out() {
        let (mut state, _) = JobState::start(job(1, 100_000), "c", &POLICY, 0);
        assert_eq!(state.next_tick(), Some(500));
        assert!(
            state.on_tick(&POLICY, 499).is_empty(),
            "not before its timeout"
        );
        for attempt in 1..POLICY.max_attempts {
            let now = state.next_tick().unwrap();
            assert_eq!(
                state.on_tick(&POLICY, now),
                vec![Effect::TimedOut {
                    operation: 0,
                    attempt
                }]
            );
            let now = state.next_tick().unwrap();
            assert_eq!(
                state.on_tick(&POLICY, now),
                vec![Effect::Send {
                    operation: 0,
                    attempt: attempt + 1,
                    command_id: cmd(0, attempt + 1)
                }]
            );
        }
        let now = state.next_tick().unwrap();
        assert_eq!(
            state.on_tick(&POLICY, now),
            vec![
                Effect::TimedOut {
                    operation: 0,
                    attempt: POLICY.max_attempts
                },
                Effect::Complete
            ]
        );
        let result = state.completed.unwrap();
        assert!(matches!(
            &result.results[0].outcome,
            OperationOutcome::Failed { code: None, .. }
        ));
        assert_eq!(result.results[0].attempts, POLICY.max_attempts);
    }

    #[test]
    fn a_reply_in_time_disarms_the_timeout() {
        let (mut state, _) = JobState::start(job(1, 100_000), "c", &POLICY, 0);
        state.on_reply(&cmd(0, 1), &ok(), &POLICY, 10);
        assert_eq!(state.next_tick(), None);
        assert!(state.on_tick(&POLICY, 600).is_empty());
        assert!(state.completed.unwrap().all_done());
    }

    #[test]
    fn deadline_fails_what_is_unsettled() {
        let (mut state, _) = JobState::start(job(2, 400), "c", &POLICY, 0);
        state.on_reply(&cmd(0, 1), &ok(), &POLICY, 5);
        assert_eq!(state.next_tick(), Some(400));
        assert_eq!(state.on_tick(&POLICY, 400), vec![Effect::Complete]);
        let result = state.completed.as_ref().unwrap();
        assert_eq!(result.results[0].outcome, OperationOutcome::Done);
        assert!(matches!(
            result.results[1].outcome,
            OperationOutcome::Failed { .. }
        ));
        assert!(state.on_tick(&POLICY, 2_000).is_empty());
        assert_eq!(state.next_tick(), None);
    }

    #[test]
    fn state_survives_serialization() {
        let (mut state, _) = JobState::start(job(2, 10_000), "c", &POLICY, 0);
        state.on_reply(&cmd(0, 1), &error(SwitchErrorCode::Unknown), &POLICY, 1);
        let mut restored: JobState =
            serde_json::from_value(serde_json::to_value(&state).unwrap()).unwrap();
        assert_eq!(restored, state);
        assert_eq!(
            restored.resend_in_flight(&POLICY, 50),
            vec![Effect::Send {
                operation: 1,
                attempt: 1,
                command_id: cmd(1, 1)
            }]
        );
        // The re-sent attempt gets a full timeout from the takeover on.
        assert_eq!(
            restored.operations[1].phase,
            Phase::InFlight {
                command_id: cmd(1, 1),
                timeout_at: 550
            }
        );
    }
}
