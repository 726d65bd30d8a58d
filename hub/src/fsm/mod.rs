//! The hub's request state machines and what they share.
//!
//! A machine takes an [`Event`] and a [`Ctx`] and records its side effects as
//! [`Effect`]s in the context: commands to spokes, timers to arm or cancel,
//! flow record writes, replies and history. It never does I/O, so every
//! transition is testable without Kafka; the hub's handler performs the
//! effects. Every waiting state arms a timer, rollback states included, so a
//! request can only end in a terminal state.

pub mod create;
pub mod delete;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use wfm_protocol::flow::{FlowRecord, FlowSpec, FlowStatus};
use wfm_protocol::northbound::{NorthboundReply, RequestError, RequestErrorKind};
use wfm_protocol::resources::{Allocated, AllocationFailed, ReplyTo};
use wfm_protocol::speaker::{JobCompleted, OperationOutcome, SwitchAction, SwitchOperation};

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The request arrives; `existing` is the flow as the hub knows it.
    Start {
        existing: Option<FlowRecord>,
    },
    Allocated(Allocated),
    AllocationFailed(AllocationFailed),
    Deallocated {
        request_id: String,
    },
    JobCompleted(JobCompleted),
    /// The coordinator fired the timer armed for `step`.
    Timeout {
        step: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Effect {
    Allocate {
        flow: FlowSpec,
    },
    Deallocate,
    RunJob {
        job_id: String,
        operations: Vec<SwitchOperation>,
        deadline: i64,
    },
    /// Arms the request's timer, or moves it: one per request, carrying the step.
    ArmTimeout {
        step: u32,
        deadline: i64,
    },
    /// Disarms the request's timer once it finishes; `step` is its last wait.
    CancelTimeout {
        step: u32,
    },
    SaveFlow(FlowRecord),
    RemoveFlow,
    Reply(NorthboundReply),
    History {
        action: String,
        from_state: Option<String>,
        to_state: Option<String>,
        details: String,
    },
}

/// Deadlines of waiting states, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// The whole request, from its arrival to a terminal state of its forward path.
    pub request_ms: i64,
    /// One forward step (allocation, one install or validation job).
    pub step_ms: i64,
    /// One rollback step (removing rules, deallocating).
    pub rollback_ms: i64,
    /// Rollback steps are retried this many times before the request gives up on them.
    pub rollback_retries: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            request_ms: 30_000,
            step_ms: 10_000,
            rollback_ms: 10_000,
            rollback_retries: 2,
        }
    }
}

/// What a machine is handed with each event: the event's time (taken from
/// the record that carried it, so a replayed event produces identical
/// effects) and the list its effects go into.
pub struct Ctx {
    pub now: i64,
    pub timeouts: Timeouts,
    pub effects: Vec<Effect>,
}

impl Ctx {
    pub fn new(now: i64, timeouts: Timeouts) -> Self {
        Self {
            now,
            timeouts,
            effects: Vec::new(),
        }
    }

    fn push(&mut self, effect: Effect) {
        self.effects.push(effect);
    }
}

/// When the current step times out, and whether that takes a registration.
#[derive(Debug, Clone, Copy)]
enum Deadline {
    /// The timer is registered for it already.
    Armed(i64),
    /// The timer is to be registered (or moved) for it.
    New(i64),
}

impl Deadline {
    fn at(self) -> i64 {
        match self {
            Deadline::Armed(at) | Deadline::New(at) => at,
        }
    }
}

/// Where removing a flow's rules stands after a removal job or its timeout.
pub enum Removal {
    /// Every rule is gone.
    Done,
    /// What failed was sent again; still removing.
    Retrying,
    /// Retries are used up: rules may be left on the switches, for this reason.
    GaveUp(String),
}

/// What every request keeps, whatever its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestCore {
    pub request_id: String,
    pub correlation_id: String,
    pub flow_id: String,
    pub reply_to: ReplyTo,
    pub started_at: i64,
    pub deadline: i64,
    /// Bumped at every wait; timers and jobs carry it, so late ones are told from current ones.
    pub step: u32,
    /// The job the current step waits for, if it waits for one.
    pub awaited_job: Option<String>,
    /// Retries of the current rollback step.
    pub retries: u32,
    /// The flow as this request last wrote it.
    pub flow: Option<FlowRecord>,
    /// The request's timer as last registered with the coordinator; `None`
    /// once cancelled (and in snapshots written before it was kept).
    #[serde(default)]
    pub timer: Option<ArmedTimer>,
}

/// A registration of the request's timer: its timeouts carry `step`, the
/// step that armed it, which may be earlier than the step it now guards.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ArmedTimer {
    pub step: u32,
    pub deadline: i64,
}

impl RequestCore {
    pub fn new(
        request_id: &str,
        correlation_id: &str,
        flow_id: &str,
        reply_to: ReplyTo,
        now: i64,
        timeouts: &Timeouts,
    ) -> Self {
        Self {
            request_id: request_id.into(),
            correlation_id: correlation_id.into(),
            flow_id: flow_id.into(),
            reply_to,
            started_at: now,
            deadline: now + timeouts.request_ms,
            step: 0,
            awaited_job: None,
            retries: 0,
            flow: None,
            timer: None,
        }
    }

    /// Leaves the current wait and begins a new step. The request has one
    /// timer, which a later wait's [`Effect::ArmTimeout`] moves in place:
    /// cancelling it between steps would cost a record per step for nothing,
    /// and a timeout of an earlier registration carries the step that armed
    /// it, so it is recognised as stale.
    fn next_step(&mut self) -> u32 {
        self.step += 1;
        self.awaited_job = None;
        self.step
    }

    /// A forward step's deadline: its own, `step_ms` from now within the
    /// request's, or the armed timer's when that comes less than a tenth of
    /// the step's time earlier. So the forward steps of a request that runs
    /// in milliseconds share one registration with the coordinator, instead
    /// of one each, and every step still gets nine tenths of its time.
    fn forward_deadline(&self, ctx: &Ctx) -> Deadline {
        let own = (ctx.now + ctx.timeouts.step_ms).min(self.deadline);
        let slack = (own - ctx.now) / 10;
        match self.timer {
            Some(timer) if (own - slack..=own).contains(&timer.deadline) => {
                Deadline::Armed(timer.deadline)
            }
            _ => Deadline::New(own),
        }
    }

    /// A rollback step's deadline, always a registration of its own: the
    /// timer before it may be the one that fired.
    fn rollback_deadline(&self, ctx: &Ctx) -> Deadline {
        Deadline::New(ctx.now + ctx.timeouts.rollback_ms)
    }

    fn arm(&mut self, ctx: &mut Ctx, deadline: Deadline) {
        if let Deadline::New(deadline) = deadline {
            self.timer = Some(ArmedTimer {
                step: self.step,
                deadline,
            });
            ctx.push(Effect::ArmTimeout {
                step: self.step,
                deadline,
            });
        }
    }

    pub fn await_allocation(&mut self, ctx: &mut Ctx, flow: &FlowSpec) {
        self.next_step();
        ctx.push(Effect::Allocate { flow: flow.clone() });
        let deadline = self.forward_deadline(ctx);
        self.arm(ctx, deadline);
    }

    pub fn await_deallocation(&mut self, ctx: &mut Ctx) {
        self.next_step();
        ctx.push(Effect::Deallocate);
        let deadline = self.rollback_deadline(ctx);
        self.arm(ctx, deadline);
    }

    /// Sends a job and waits for it; `rollback` picks the rollback deadline.
    pub fn await_job(
        &mut self,
        ctx: &mut Ctx,
        name: &str,
        operations: Vec<SwitchOperation>,
        rollback: bool,
    ) {
        let step = self.next_step();
        let deadline = if rollback {
            self.rollback_deadline(ctx)
        } else {
            self.forward_deadline(ctx)
        };
        let job_id = wfm_protocol::ids::derive(&[&self.request_id, name, &step.to_string()]);
        // The worker answers a little before the hub's own timer, so that a
        // slow job is reported as failed rather than lost in a race.
        let at = deadline.at();
        let margin = ((at - ctx.now) / 10).clamp(0, 1_000);
        ctx.push(Effect::RunJob {
            job_id: job_id.clone(),
            operations,
            deadline: at - margin,
        });
        self.awaited_job = Some(job_id);
        self.arm(ctx, deadline);
    }

    /// Ends the current wait for good: the timer is cancelled and nothing
    /// more will be awaited.
    pub fn finish(&mut self, ctx: &mut Ctx) {
        if self.step > 0 {
            ctx.push(Effect::CancelTimeout { step: self.step });
        }
        self.timer = None;
        self.next_step();
    }

    /// Whether a timeout armed at `step` is the request's registered timer,
    /// not one it has since moved or cancelled.
    pub fn is_current_timeout(&self, step: u32) -> bool {
        match self.timer {
            Some(timer) => timer.step == step,
            // A snapshot from before timers were kept: each step armed its own.
            None => step == self.step,
        }
    }

    pub fn is_awaited(&self, job: &JobCompleted) -> bool {
        self.awaited_job.as_deref() == Some(job.job_id.as_str())
    }

    pub fn owns(&self, request_id: &str) -> bool {
        self.request_id == request_id
    }

    /// Counts a retry of the current rollback step; false once they are used up.
    pub fn may_retry(&mut self, ctx: &Ctx) -> bool {
        if self.retries >= ctx.timeouts.rollback_retries {
            return false;
        }
        self.retries += 1;
        true
    }

    /// Settles a removal step: `job` is its result, `None` its timeout, in
    /// which case `all` is sent again. Only what failed is retried, within
    /// the rollback retry budget.
    pub fn settle_removal(
        &mut self,
        ctx: &mut Ctx,
        job: Option<&JobCompleted>,
        all: Vec<SwitchOperation>,
    ) -> Removal {
        let (retry, reason) = match job {
            Some(job) if job.all_done() => {
                self.retries = 0;
                return Removal::Done;
            }
            Some(job) => {
                let failed = job
                    .results
                    .iter()
                    .filter(|r| r.outcome != OperationOutcome::Done)
                    .map(|r| SwitchOperation {
                        switch_id: r.switch_id.clone(),
                        action: SwitchAction::Remove { cookie: r.cookie },
                    })
                    .collect();
                (
                    failed,
                    format!("rules not removed: {}", job.failures().join("; ")),
                )
            }
            None => (all, "rule removal timed out".to_owned()),
        };
        if self.may_retry(ctx) {
            self.history(ctx, "retrying_removal", reason);
            self.await_job(ctx, "remove-rules", retry, true);
            Removal::Retrying
        } else {
            self.finish(ctx);
            Removal::GaveUp(reason)
        }
    }

    pub fn save_flow(&mut self, ctx: &mut Ctx, flow: FlowRecord) {
        self.flow = Some(flow.clone());
        ctx.push(Effect::SaveFlow(flow));
    }

    /// Updates status and info of the flow this request owns, and saves it.
    pub fn set_status(&mut self, ctx: &mut Ctx, status: FlowStatus, info: Option<String>) {
        if let Some(mut flow) = self.flow.clone() {
            flow.status = status;
            flow.status_info = info;
            flow.updated_at = ctx.now;
            self.save_flow(ctx, flow);
        }
    }

    pub fn accept(&self, ctx: &mut Ctx) {
        if let Some(flow) = &self.flow {
            ctx.push(Effect::Reply(NorthboundReply::RequestAccepted {
                request_id: self.request_id.clone(),
                flow: flow.clone(),
            }));
        }
    }

    pub fn reject(&self, ctx: &mut Ctx, kind: RequestErrorKind, message: impl Into<String>) {
        ctx.push(Effect::Reply(NorthboundReply::RequestRejected {
            request_id: self.request_id.clone(),
            flow_id: self.flow_id.clone(),
            error: RequestError {
                kind,
                message: message.into(),
            },
        }));
    }

    pub fn reply_finished(
        &self,
        ctx: &mut Ctx,
        succeeded: bool,
        flow: Option<FlowRecord>,
        message: impl Into<String>,
    ) {
        ctx.push(Effect::Reply(NorthboundReply::RequestFinished {
            request_id: self.request_id.clone(),
            flow_id: self.flow_id.clone(),
            succeeded,
            flow,
            message: message.into(),
        }));
    }

    pub fn history(&self, ctx: &mut Ctx, action: &str, details: impl Into<String>) {
        ctx.push(Effect::History {
            action: action.into(),
            from_state: None,
            to_state: None,
            details: details.into(),
        });
    }

    pub fn transition_history(&self, ctx: &mut Ctx, from: String, to: String) {
        ctx.push(Effect::History {
            action: "transition".into(),
            from_state: Some(from),
            to_state: Some(to),
            details: String::new(),
        });
    }
}

/// The name of a state as operators see it: its variant name.
pub fn state_name(state: &impl std::fmt::Debug) -> String {
    let debug = format!("{state:?}");
    debug
        .split([' ', '(', '{'])
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A running request of either kind, as the hub keeps and persists it.
#[derive(Serialize, Deserialize)]
pub struct Request {
    pub machine: Machine,
    /// The effects of the latest event, replayed when the request is resumed
    /// after a crash: their receivers deduplicate, so a replay is harmless and
    /// an effect lost in the crash is not lost for good.
    pub last_effects: Vec<Effect>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", content = "state_machine", rename_all = "snake_case")]
pub enum Machine {
    Create(Box<statig::blocking::StateMachine<create::CreateFlow>>),
    Delete(Box<statig::blocking::StateMachine<delete::DeleteFlow>>),
}

impl Request {
    pub fn create(core: RequestCore, spec: FlowSpec) -> Self {
        use statig::blocking::IntoStateMachineExt;
        Self::new(Machine::Create(Box::new(
            create::CreateFlow::new(core, spec).state_machine(),
        )))
    }

    pub fn delete(core: RequestCore) -> Self {
        use statig::blocking::IntoStateMachineExt;
        Self::new(Machine::Delete(Box::new(
            delete::DeleteFlow::new(core).state_machine(),
        )))
    }

    fn new(machine: Machine) -> Self {
        Self {
            machine,
            last_effects: Vec::new(),
        }
    }

    /// Feeds one event; the effects are left in `ctx`, and remembered for a
    /// replay on resume when the event changed anything.
    pub fn handle(&mut self, event: &Event, ctx: &mut Ctx) {
        match &mut self.machine {
            Machine::Create(machine) => machine.handle_with_context(event, ctx),
            Machine::Delete(machine) => machine.handle_with_context(event, ctx),
        }
        if !ctx.effects.is_empty() {
            self.last_effects = ctx.effects.clone();
        }
    }

    pub fn core(&self) -> &RequestCore {
        match &self.machine {
            Machine::Create(machine) => &machine.core,
            Machine::Delete(machine) => &machine.core,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.machine {
            Machine::Create(_) => "create",
            Machine::Delete(_) => "delete",
        }
    }

    pub fn state(&self) -> String {
        match &self.machine {
            Machine::Create(machine) => state_name(machine.state()),
            Machine::Delete(machine) => state_name(machine.state()),
        }
    }

    pub fn is_terminal(&self) -> bool {
        match &self.machine {
            Machine::Create(machine) => create::is_terminal(machine.state()),
            Machine::Delete(machine) => delete::is_terminal(machine.state()),
        }
    }
}
