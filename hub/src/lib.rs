//! The hub: one state machine per flow request, driven by its inbox.

pub mod fsm;
pub mod rules;
