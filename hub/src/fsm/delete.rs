//! Flow delete, after OpenKilda's FlowDeleteFsm:
//!
//! ```text
//! Initialized ─▶ RemovingRules ─▶ DeallocatingResources ─▶ Finished (flow removed)
//!      │          (every rule; a    (RemovingFlow is the tombstone written
//!      ▼           failed one does   on the way to Finished)
//!   Rejected       not stop the others
//!                  and is retried)
//!                      │ failures or timeouts,        │ timeout, retries used up
//!                      │ retries used up              │
//!                      ▼                              ▼
//!               FinishedWithError (RevertingFlowStatus: the flow is FAILED, with what it
//!                                  was before and what went wrong, for repair)
//! ```

use serde::{Deserialize, Serialize};
use statig::prelude::*;
use wfm_protocol::flow::FlowStatus;
use wfm_protocol::northbound::RequestErrorKind;
use wfm_protocol::resources::Allocated;
use wfm_protocol::speaker::JobCompleted;

use super::{state_name, Ctx, Effect, Event, Removal, RequestCore};
use crate::rules::{self, FlowRules};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteFlow {
    pub core: RequestCore,
    /// Status to restore if the delete fails.
    pub previous_status: Option<FlowStatus>,
}

#[state_machine(
    initial = "State::initialized()",
    state(derive(Debug, Clone, PartialEq, Serialize, Deserialize)),
    after_transition = "Self::after_transition"
)]
impl DeleteFlow {
    #[state]
    fn initialized(&mut self, context: &mut Ctx, event: &Event) -> Outcome<State> {
        match event {
            Event::Start { existing: None } => {
                let message = format!("flow {} not found", self.core.flow_id);
                self.core
                    .reject(context, RequestErrorKind::NotFound, message);
                Transition(State::rejected())
            }
            Event::Start {
                existing: Some(flow),
            } => {
                self.previous_status = Some(flow.status);
                let mut flow = flow.clone();
                flow.status = FlowStatus::InProgress;
                flow.last_request_id = self.core.request_id.clone();
                flow.updated_at = context.now;
                self.core.save_flow(context, flow);
                self.core.accept(context);
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
                context.effects.push(Effect::RemoveFlow);
                self.core.history(context, "flow_removed", "");
                self.core
                    .reply_finished(context, true, None, "flow deleted");
                Transition(State::finished())
            }
            Event::Timeout { step } if self.core.is_current_timeout(*step) => {
                if self.core.may_retry(context) {
                    self.core.await_deallocation(context);
                    Handled
                } else {
                    self.revert(context, "resource deallocation timed out");
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

    #[state]
    fn rejected(event: &Event) -> Outcome<State> {
        let _ = event;
        Handled
    }
}

impl DeleteFlow {
    pub fn new(core: RequestCore) -> Self {
        Self {
            core,
            previous_status: None,
        }
    }

    fn after_transition(&mut self, source: &State, target: &State, context: &mut Ctx) {
        self.core
            .transition_history(context, state_name(source), state_name(target));
    }

    fn rules(&self) -> FlowRules {
        let Some(flow) = &self.core.flow else {
            return FlowRules::default();
        };
        match (&flow.path, &flow.resources) {
            (Some(path), Some(resources)) => FlowRules::of(
                &flow.spec,
                &Allocated {
                    request_id: self.core.request_id.clone(),
                    flow_id: flow.spec.flow_id.clone(),
                    path: path.clone(),
                    resources: resources.clone(),
                },
            ),
            _ => FlowRules::default(),
        }
    }

    fn remove_rules(&mut self, context: &mut Ctx) {
        let rules = self.rules();
        self.core
            .await_job(context, "remove-rules", rules::remove(rules.all()), true);
    }

    /// The worker retried each command and the other removals went on past
    /// a failed one; here what still failed is retried, and if it keeps
    /// failing the delete stops short of freeing resources those rules use.
    fn after_removal(&mut self, context: &mut Ctx, job: Option<&JobCompleted>) -> Outcome<State> {
        let all = rules::remove(self.rules().all());
        match self.core.settle_removal(context, job, all) {
            Removal::Done => {
                self.core.await_deallocation(context);
                Transition(State::deallocating_resources())
            }
            Removal::Retrying => Handled,
            Removal::GaveUp(reason) => {
                self.revert(context, &reason);
                Transition(State::finished_with_error())
            }
        }
    }

    /// RevertingFlowStatus. Once its rules have been touched, the flow's
    /// previous status is no longer true of the network, so it becomes
    /// FAILED, with what went wrong and what it was before, for an operator
    /// to repair (deleting it again retries).
    fn revert(&mut self, context: &mut Ctx, reason: &str) {
        self.core.finish(context);
        let was = self
            .previous_status
            .map(FlowStatus::as_str)
            .unwrap_or("unknown");
        let info = format!("delete failed (flow was {was}): {reason}");
        self.core
            .set_status(context, FlowStatus::Failed, Some(info.clone()));
        self.core
            .reply_finished(context, false, self.core.flow.clone(), info);
    }
}

pub fn is_terminal(state: &State) -> bool {
    matches!(
        state,
        State::Finished {} | State::FinishedWithError {} | State::Rejected {}
    )
}
