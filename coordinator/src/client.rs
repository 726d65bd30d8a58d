//! The client the hub and workers use to arm and cancel callbacks: it builds
//! the records for the coordinator's inbox, keyed so that a callback's
//! register, re-register and cancel share a partition and stay in order.

use std::fmt::Display;
use std::time::Duration;

use serde::Serialize;
use wfm_protocol::coordinator::{Cancel, CoordinatorCommand, Register};
use wfm_protocol::{Envelope, ProtocolError, Topic, Topics};
use wfm_runtime::Outgoing;

/// A typed callback key, e.g. a hub's `(flow id, step)`; its `Display` is the
/// wire key, which must be stable and distinct per callback.
pub trait CallbackKey: Display {}

impl CallbackKey for str {}
impl CallbackKey for String {}

/// When a callback fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fire {
    /// Milliseconds since the Unix epoch.
    At(i64),
    /// After this long, counted from when the register is created.
    After(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("callback context does not serialise to JSON: {0}")]
    Context(#[from] serde_json::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

#[derive(Debug, Clone)]
pub struct CoordinatorClient {
    topics: Topics,
    source: String,
}

impl CoordinatorClient {
    /// `source` names the registering component in the envelopes, e.g. `hub`.
    pub fn new(topics: Topics, source: impl Into<String>) -> Self {
        Self {
            topics,
            source: source.into(),
        }
    }

    /// The record that arms `key`, or re-arms it with a new deadline. Its
    /// timeout goes to `reply_to` under `reply_key`, carrying `context`.
    pub fn register<K: CallbackKey + ?Sized>(
        &self,
        key: &K,
        fire: Fire,
        reply_to: Topic,
        reply_key: &str,
        context: &impl Serialize,
        correlation_id: &str,
    ) -> Result<Outgoing, ClientError> {
        let key = key.to_string();
        let (deadline, timeout_ms) = match fire {
            Fire::At(deadline) => (Some(deadline), None),
            Fire::After(after) => (
                None,
                Some(u64::try_from(after.as_millis()).unwrap_or(u64::MAX)),
            ),
        };
        let register = CoordinatorCommand::Register(Register {
            key: key.clone(),
            deadline,
            timeout_ms,
            reply_topic: self.topics.name(reply_to),
            reply_key: reply_key.to_owned(),
            context: serde_json::to_value(context)?,
        });
        self.record(key, &register, correlation_id)
    }

    /// The record that disarms `key`; harmless if it already fired.
    pub fn cancel<K: CallbackKey + ?Sized>(
        &self,
        key: &K,
        correlation_id: &str,
    ) -> Result<Outgoing, ClientError> {
        let key = key.to_string();
        let cancel = CoordinatorCommand::Cancel(Cancel { key: key.clone() });
        self.record(key, &cancel, correlation_id)
    }

    fn record(
        &self,
        key: String,
        command: &CoordinatorCommand,
        correlation_id: &str,
    ) -> Result<Outgoing, ClientError> {
        let envelope = Envelope::new(command, &self.source, correlation_id)?;
        Ok(Outgoing::envelope(
            self.topics.name(Topic::Coordinator),
            key,
            &envelope,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct StepKey<'a> {
        flow: &'a str,
        step: u32,
    }

    impl Display for StepKey<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}:{}", self.flow, self.step)
        }
    }

    impl CallbackKey for StepKey<'_> {}

    fn open(out: &Outgoing) -> CoordinatorCommand {
        Envelope::decode(out.value.as_deref().unwrap(), usize::MAX)
            .unwrap()
            .open()
            .unwrap()
    }

    #[test]
    fn register_and_cancel_are_keyed_by_the_callback_key() {
        let client = CoordinatorClient::new(Topics::new("t."), "hub");
        let key = StepKey {
            flow: "f1",
            step: 2,
        };
        let out = client
            .register(
                &key,
                Fire::After(Duration::from_millis(1500)),
                Topic::Hub,
                "f1",
                &("ctx", 1),
                "c",
            )
            .unwrap();
        assert_eq!(
            (out.topic.as_str(), out.key.as_str()),
            ("t.coordinator", "f1:2")
        );
        let CoordinatorCommand::Register(register) = open(&out) else {
            panic!("a register");
        };
        assert_eq!(register.timeout_ms, Some(1500));
        assert_eq!(register.reply_topic, "t.hub");
        assert_eq!(register.context, serde_json::json!(["ctx", 1]));

        let out = client.cancel(&key, "c").unwrap();
        assert_eq!(out.key, "f1:2");
        assert_eq!(
            open(&out),
            CoordinatorCommand::Cancel(Cancel { key: "f1:2".into() })
        );
    }
}
