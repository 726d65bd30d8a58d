//! Messages of the coordinator: durable callbacks that fire a timeout to
//! whoever registered them unless they are cancelled first.
//!
//! The coordinator's inbox (`wfm.coordinator`) is keyed by callback key, so
//! that a register and the cancel or re-register that follows it land on the
//! same partition, in order.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What the coordinator's inbox carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum CoordinatorCommand {
    Register(Register),
    Cancel(Cancel),
}

/// Arms (or re-arms, replacing the previous deadline) the callback `key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Register {
    pub key: String,
    /// Absolute deadline, milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<i64>,
    /// Relative deadline, counted from the envelope's `created_at` so that a
    /// redelivered register arms the same deadline as the first delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Full topic name the timeout is produced to, e.g. `wfm.hub`.
    pub reply_topic: String,
    pub reply_key: String,
    /// Returned verbatim in the timeout, so the receiver needs no lookup.
    #[serde(default)]
    pub context: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancel {
    pub key: String,
}

/// What the coordinator sends to a reply topic. Receivers include a
/// `CallbackTimeout(CallbackTimeout)` variant in their own inbox enums.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum CoordinatorReply {
    CallbackTimeout(CallbackTimeout),
}

/// A callback's deadline passed without a cancel. Delivered at least once:
/// a duplicate carries the same envelope message id, derived from key and deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackTimeout {
    pub key: String,
    pub context: Value,
    pub deadline: i64,
    pub fired_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;

    #[test]
    fn register_round_trips_and_timeout_has_its_kind() {
        let register = CoordinatorCommand::Register(Register {
            key: "flow-1:install".into(),
            deadline: None,
            timeout_ms: Some(500),
            reply_topic: "wfm.hub".into(),
            reply_key: "flow-1".into(),
            context: serde_json::json!({ "attempt": 2 }),
        });
        let envelope = Envelope::new(&register, "hub", "c").unwrap();
        assert_eq!(envelope.kind, "register");
        assert_eq!(envelope.open::<CoordinatorCommand>().unwrap(), register);

        let timeout = CoordinatorReply::CallbackTimeout(CallbackTimeout {
            key: "k".into(),
            context: Value::Null,
            deadline: 1,
            fired_at: 2,
        });
        assert_eq!(
            Envelope::new(&timeout, "coordinator", "c").unwrap().kind,
            "callback_timeout"
        );
    }
}
