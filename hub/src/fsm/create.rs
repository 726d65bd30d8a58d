//! Flow create, after OpenKilda's FlowCreateFsm with its gaps closed:
//!
//! ```text
//! Initialized ─▶ Validated ─▶ InstallingNonIngress ─▶ ValidatingNonIngress ─▶ InstallingIngress ─▶ ValidatingIngress ─▶ Finished (UP)
//!      │          (allocating)   (one-switch flows go straight to InstallingIngress)
//!      ▼              │ error/timeout          │ error/timeout on any install or validation
//!   Rejected          ▼                        ▼
//!            DeallocatingResources ◀──── RemovingRules (every rule of the flow)
//!                     │
//!                     ▼
//!            FinishedWithError (flow DOWN; FAILED, keeping its resources, if rules
//!                               or resources could not be cleaned up after retries)
//! ```
//! Every state but the terminal ones has a timer; the forward states share
//! the request's overall deadline, rollback states have their own.

use serde::{Deserialize, Serialize};
use statig::prelude::*;
use wfm_protocol::flow::{FlowRecord, FlowSpec, FlowStatus};
use wfm_protocol::northbound::RequestErrorKind;
use wfm_protocol::resources::{Allocated, AllocationErrorCode};
use wfm_protocol::speaker::JobCompleted;

use super::{state_name, Ctx, Event, Removal, RequestCore};
use crate::rules::{self, FlowRules};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateFlow {
    pub core: RequestCore,
    pub spec: FlowSpec,
    pub allocation: Option<Allocated>,
    /// Why the request is rolling back, once it is.
    pub failure: Option<String>,
}

#[state_machine(
    initial = "State::initialized()",
    state(derive(Debug, Clone, PartialEq, Serialize, Deserialize)),
    after_transition = "Self::after_transition"
)]
impl CreateFlow {
    #[state]
    fn initialized(&mut self, context: &mut Ctx, event: &Event) -> Outcome<State> {
        match event {
            Event::Start { existing: Some(_) } => {
                let message = format!("flow {} already exists", self.spec.flow_id);
                self.core
                    .reject(context, RequestErrorKind::Conflict, message);
                Transition(State::rejected())
            }
            Event::Start { existing: None } => {
                self.core.await_allocation(context, &self.spec);
                Transition(State::validated())
            }
            _ => Handled,
        }
    }

    /// Validated and waiting for the resource manager's allocation.
    #[state(superstate = "forward")]
    fn validated(&mut self, context: &mut Ctx, event: &Event) -> Outcome<State> {
        match event {
            Event::Allocated(allocated) if self.core.owns(&allocated.request_id) => {
                self.allocation = Some(allocated.clone());
                let flow = FlowRecord {
                    spec: self.spec.clone(),
                    status: FlowStatus::InProgress,
                    status_info: None,
                    path: Some(allocated.path.clone()),
                    resources: Some(allocated.resources.clone()),
                    last_request_id: self.core.request_id.clone(),
                    created_at: context.now,
                    updated_at: context.now,
                };
                self.core.save_flow(context, flow);
                self.core.accept(context);
                self.core.history(
                    context,
                    "resources_allocated",
                    format!("{:?}", allocated.resources),
                );
                let rules = self.rules();
                if rules.non_ingress.is_empty() {
                    self.core.await_job(
                        context,
                        "install-ingress",
                        rules::install(&rules.ingress),
                        false,
                    );
                    Transition(State::installing_ingress())
                } else {
                    self.core.await_job(
                        context,
                        "install-non-ingress",
                        rules::install(&rules.non_ingress),
                        false,
                    );
                    Transition(State::installing_non_ingress())
                }
            }
            Event::AllocationFailed(failed) if self.core.owns(&failed.request_id) => {
                let kind = match failed.code {
                    AllocationErrorCode::UnknownSwitch
                    | AllocationErrorCode::UnknownPort
                    | AllocationErrorCode::NoPath
                    | AllocationErrorCode::NotEnoughBandwidth => RequestErrorKind::NotFound,
                    AllocationErrorCode::IslPort => RequestErrorKind::InvalidRequest,
                    AllocationErrorCode::EndpointConflict => RequestErrorKind::Conflict,
                    AllocationErrorCode::ResourcesExhausted => RequestErrorKind::Overloaded,
                };
                self.core.reject(context, kind, failed.message.clone());
                self.core
                    .history(context, "allocation_failed", failed.message.clone());
                // Nothing was allocated or written: the request simply ends.
                self.core.finish(context);
                Transition(State::rejected())
            }
            Event::Timeout { step } if self.core.is_current_timeout(*step) => {
                self.core.reject(
                    context,
                    RequestErrorKind::Internal,
                    "timed out waiting for resource allocation",
                );
                // The allocation may still happen after we gave up on it: free it to be sure.
                self.fail(context, "resource allocation timed out");
                self.core.await_deallocation(context);
                Transition(State::deallocating_resources())
            }
            _ => Handled,
        }
    }

    #[state(superstate = "forward")]
    fn installing_non_ingress(&mut self, context: &mut Ctx, event: &Event) -> Outcome<State> {
        match event {
            Event::JobCompleted(job) if self.core.is_awaited(job) && job.all_done() => {
                let rules = self.rules();
                self.core.await_job(
                    context,
                    "validate-non-ingress",
                    rules::verify(&rules.non_ingress),
                    false,
                );
                Transition(State::validating_non_ingress())
            }
            _ => Super,
        }
    }

    #[state(superstate = "forward")]
    fn validating_non_ingress(&mut self, context: &mut Ctx, event: &Event) -> Outcome<State> {
        match event {
            Event::JobCompleted(job) if self.core.is_awaited(job) && job.all_done() => {
                let rules = self.rules();
                self.core.await_job(
                    context,
                    "install-ingress",
                    rules::install(&rules.ingress),
                    false,
                );
                Transition(State::installing_ingress())
            }
            _ => Super,
        }
    }

    #[state(superstate = "forward")]
    fn installing_ingress(&mut self, context: &mut Ctx, event: &Event) -> Outcome<State> {
        match event {
            Event::JobCompleted(job) if self.core.is_awaited(job) && job.all_done() => {
                let rules = self.rules();
                self.core.await_job(
                    context,
                    "validate-ingress",
                    rules::verify(&rules.ingress),
                    false,
                );
                Transition(State::validating_ingress())
            }
            _ => Super,
        }
    }

    #[state(superstate = "forward")]
    fn validating_ingress(&mut self, context: &mut Ctx, event: &Event) -> Outcome<State> {
        match event {
            Event::JobCompleted(job) if self.core.is_awaited(job) && job.all_done() => {
                self.core.finish(context);
                self.core.set_status(context, FlowStatus::Up, None);
                self.core
                    .reply_finished(context, true, self.core.flow.clone(), "flow is UP");
                Transition(State::finished())
            }
            _ => Super,
        }
    }

    /// What every install and validation state does on failure or timeout:
    /// roll back by removing every rule of the flow (removal is idempotent,
    /// so rules that were never installed cost one no-op command).
    #[superstate]
    fn forward(&mut self, context: &mut Ctx, event: &Event) -> Outcome<State> {
        match event {
            Event::JobCompleted(job) if self.core.is_awaited(job) => {
                let failures = job.failures().join("; ");
                self.core.history(context, "job_failed", failures.clone());
                self.fail(context, format!("switch commands failed: {failures}"));
                self.remove_rules(context);
                Transition(State::removing_rules())
            }
            Event::Timeout { step } if self.core.is_current_timeout(*step) => {
                self.fail(context, "timed out waiting for the switches");
                self.remove_rules(context);
                Transition(State::removing_rules())
            }
            _ => Handled,
        }
    }

    #[state]
    fn removing_rules(&mut self, context: &mut Ctx, event: &Event) -> Outcome<State> {
        match event {
            Event::JobCompleted(job) if self.core.is_awaited(job) => {
                self.after_removal(context, Some(job))
            }
            Event::Timeout { step } if self.core.is_current_timeout(*step) => {
                self.after_removal(context, None)
            }
            _ => Handled,
        }
    }

    #[state]
    fn deallocating_resources(&mut self, context: &mut Ctx, event: &Event) -> Outcome<State> {
        match event {
            Event::Deallocated { request_id } if self.core.owns(request_id) => {
                self.core.finish(context);
                self.core
                    .set_status(context, FlowStatus::Down, self.failure.clone());
                self.finish_with_error(context);
                Transition(State::finished_with_error())
            }
            Event::Timeout { step } if self.core.is_current_timeout(*step) => {
                if self.core.may_retry(context) {
                    self.core.await_deallocation(context);
                    Handled
                } else {
                    self.core.finish(context);
                    // Operators see it and can repair it: nothing is silently leaked.
                    self.fail(context, "resources could not be freed");
                    self.core
                        .set_status(context, FlowStatus::Failed, self.failure.clone());
                    self.finish_with_error(context);
                    Transition(State::finished_with_error())
                }
            }
            _ => Handled,
        }
    }

    #[state]
    fn finished(event: &Event) -> Outcome<State> {
        let _ = event;
        Handled
    }

    #[state]
    fn finished_with_error(event: &Event) -> Outcome<State> {
        let _ = event;
        Handled
    }

    /// The request was turned down before anything was allocated or written.
    #[state]
    fn rejected(event: &Event) -> Outcome<State> {
        let _ = event;
        Handled
    }
}

impl CreateFlow {
    pub fn new(core: RequestCore, spec: FlowSpec) -> Self {
        Self {
            core,
            spec,
            allocation: None,
            failure: None,
        }
    }

    fn after_transition(&mut self, source: &State, target: &State, context: &mut Ctx) {
        self.core
            .transition_history(context, state_name(source), state_name(target));
    }

    fn rules(&self) -> FlowRules {
        self.allocation
            .as_ref()
            .map(|allocation| FlowRules::of(&self.spec, allocation))
            .unwrap_or_default()
    }

    /// Rules gone: free the resources. Rules left despite the retries: the
    /// flow is FAILED and keeps its resources, which those rules still use,
    /// until an operator repairs it (a delete retries the removal).
    fn after_removal(&mut self, context: &mut Ctx, job: Option<&JobCompleted>) -> Outcome<State> {
        let all = rules::remove(self.rules().all());
        match self.core.settle_removal(context, job, all) {
            Removal::Done => {
                self.core.await_deallocation(context);
                Transition(State::deallocating_resources())
            }
            Removal::Retrying => Handled,
            Removal::GaveUp(reason) => {
                self.fail(
                    context,
                    format!("{reason}; rules and resources kept for repair"),
                );
                self.core
                    .set_status(context, FlowStatus::Failed, self.failure.clone());
                self.finish_with_error(context);
                Transition(State::finished_with_error())
            }
        }
    }

    fn remove_rules(&mut self, context: &mut Ctx) {
        let rules = self.rules();
        self.core
            .await_job(context, "remove-rules", rules::remove(rules.all()), true);
    }

    fn fail(&mut self, context: &mut Ctx, reason: impl Into<String>) {
        let reason = reason.into();
        self.core.history(context, "failure", reason.clone());
        self.failure = Some(match self.failure.take() {
            Some(earlier) => format!("{earlier}; {reason}"),
            None => reason,
        });
    }

    fn finish_with_error(&mut self, context: &mut Ctx) {
        let message = self.failure.clone().unwrap_or_default();
        self.core
            .reply_finished(context, false, self.core.flow.clone(), message);
    }
}

pub fn is_terminal(state: &State) -> bool {
    matches!(
        state,
        State::Finished {} | State::FinishedWithError {} | State::Rejected {}
    )
}
