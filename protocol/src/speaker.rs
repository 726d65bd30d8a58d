//! The speaker worker's inbox (`wfm.speaker-worker`, keyed by job id): jobs
//! from the hub and switch replies, all for one job on one partition; and the
//! job result it sends back.
//!
//! A job is one FSM step of one flow: a batch of switch operations. The
//! worker sends each as a switch command with a fresh command id per attempt,
//! retries failed ones with backoff while the error is retryable, and answers
//! once every operation is settled. A job id is deterministic per request and
//! step, so a job delivered twice is recognised and not run twice.

use serde::{Deserialize, Serialize};

use crate::resources::ReplyTo;
use crate::switch::{Cookie, Rule, SwitchErrorCode, SwitchReply};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum SpeakerMessage {
    RunJob(SpeakerJob),
    SwitchReply(SwitchReply),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeakerJob {
    pub job_id: String,
    pub flow_id: String,
    pub request_id: String,
    pub operations: Vec<SwitchOperation>,
    pub reply_to: ReplyTo,
    /// Milliseconds since the epoch; past it the job reports whatever is unsettled as failed.
    pub deadline: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwitchOperation {
    pub switch_id: String,
    pub action: SwitchAction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum SwitchAction {
    Install { rule: Rule },
    Remove { cookie: Cookie },
    Verify { rule: Rule },
}

impl SwitchOperation {
    pub fn cookie(&self) -> Cookie {
        match &self.action {
            SwitchAction::Install { rule } | SwitchAction::Verify { rule } => rule.cookie,
            SwitchAction::Remove { cookie } => *cookie,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum SpeakerReply {
    JobCompleted(JobCompleted),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCompleted {
    pub job_id: String,
    pub flow_id: String,
    pub request_id: String,
    /// One per operation, in the job's order.
    pub results: Vec<OperationResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationResult {
    pub switch_id: String,
    pub cookie: Cookie,
    pub outcome: OperationOutcome,
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum OperationOutcome {
    Done,
    Failed {
        /// The switch's last error code, or none when the switch never answered.
        code: Option<SwitchErrorCode>,
        message: String,
    },
}

impl JobCompleted {
    pub fn all_done(&self) -> bool {
        self.results
            .iter()
            .all(|r| r.outcome == OperationOutcome::Done)
    }

    /// `switch/cookie: reason` for every failed operation.
    pub fn failures(&self) -> Vec<String> {
        self.results
            .iter()
            .filter_map(|r| match &r.outcome {
                OperationOutcome::Done => None,
                OperationOutcome::Failed { code, message } => Some(format!(
                    "{}/{:#x}: {} {}",
                    r.switch_id,
                    r.cookie,
                    code.map(|c| c.as_str()).unwrap_or("NO_REPLY"),
                    message
                )),
            })
            .collect()
    }
}
