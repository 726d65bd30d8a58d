//! The envelope: the JSON frame around every message on every wfm topic.
//!
//! A typed message is an adjacently tagged serde enum (`kind` + `payload`), so
//! the envelope carries the kind as a plain string and the payload as JSON; a
//! receiver opens it into its own inbox enum, and a kind it does not know is an
//! error value ([`ProtocolError::UnknownKind`]) that the runtime dead-letters.

use serde::de::{value::MapDeserializer, DeserializeOwned};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Version of the envelope layout itself. A record with another version is
/// dead-lettered rather than guessed at.
pub const ENVELOPE_VERSION: u16 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    /// Unique per message; deterministic where a retry must be recognised as the same message.
    pub message_id: String,
    /// The request this message belongs to, from the northbound call onwards.
    pub correlation_id: String,
    pub kind: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Milliseconds since the Unix epoch after which the message must not be acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<i64>,
    /// The component that produced the message, e.g. `hub` or `coordinator`.
    pub source: String,
    #[serde(default)]
    pub payload: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("record has no value")]
    Empty,
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("record is not a valid envelope: {0}")]
    InvalidEnvelope(String),
    #[error("unsupported envelope version {0} (this build speaks {ENVELOPE_VERSION})")]
    UnsupportedVersion(u16),
    #[error("unknown message kind `{0}`")]
    UnknownKind(String),
    #[error("invalid payload for kind `{kind}`: {reason}")]
    InvalidPayload { kind: String, reason: String },
    #[error("message kind `{0}` cannot be encoded: {1}")]
    Unencodable(String, String),
}

/// A message that can travel inside an envelope: an adjacently tagged enum
/// (`#[serde(tag = "kind", content = "payload")]`) or any type with that shape.
pub trait Message: Serialize + DeserializeOwned {}
impl<T: Serialize + DeserializeOwned> Message for T {}

impl Envelope {
    /// Wraps `message` in a fresh envelope with a random message id.
    pub fn new<M: Message>(
        message: &M,
        source: &str,
        correlation_id: &str,
    ) -> Result<Self, ProtocolError> {
        let unencodable =
            |reason: String| ProtocolError::Unencodable(std::any::type_name::<M>().into(), reason);
        let value = serde_json::to_value(message).map_err(|e| unencodable(e.to_string()))?;
        // Taken apart by moving, not re-deserialized: the payload is not copied.
        let Value::Object(mut tagged) = value else {
            return Err(unencodable("not a kind/payload enum".into()));
        };
        let Some(Value::String(kind)) = tagged.remove("kind") else {
            return Err(unencodable("not a kind/payload enum: no kind".into()));
        };
        let payload = tagged.remove("payload").unwrap_or_default();
        Ok(Self {
            version: ENVELOPE_VERSION,
            message_id: uuid::Uuid::now_v7().to_string(),
            correlation_id: correlation_id.to_owned(),
            kind,
            created_at: crate::now_ms(),
            deadline: None,
            source: source.to_owned(),
            payload,
        })
    }

    /// Replaces the random message id by a deterministic one, so that a
    /// re-sent message is recognised as a duplicate by its receiver.
    pub fn with_message_id(mut self, message_id: impl Into<String>) -> Self {
        self.message_id = message_id.into();
        self
    }

    pub fn with_deadline(mut self, deadline_ms: Option<i64>) -> Self {
        self.deadline = deadline_ms;
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        // An envelope is plain data (strings, numbers, JSON values): it always serialises.
        serde_json::to_vec(self).expect("an envelope always serialises")
    }

    /// Parses a record value into an envelope, checking size and version.
    pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<Self, ProtocolError> {
        if bytes.is_empty() {
            return Err(ProtocolError::Empty);
        }
        if bytes.len() > max_bytes {
            return Err(ProtocolError::TooLarge {
                size: bytes.len(),
                limit: max_bytes,
            });
        }
        let envelope: Envelope = serde_json::from_slice(bytes)
            .map_err(|e| ProtocolError::InvalidEnvelope(e.to_string()))?;
        if envelope.version != ENVELOPE_VERSION {
            return Err(ProtocolError::UnsupportedVersion(envelope.version));
        }
        Ok(envelope)
    }

    /// Opens the payload as the receiver's message type.
    pub fn open<M: Message>(&self) -> Result<M, ProtocolError> {
        // Read in place as the `{kind, payload}` map the enum expects, without
        // copying the payload into a new JSON value first.
        let kind = Value::String(self.kind.clone());
        let tagged = MapDeserializer::<_, serde_json::Error>::new(
            [("kind", &kind), ("payload", &self.payload)].into_iter(),
        );
        M::deserialize(tagged).map_err(|e| {
            let reason = e.to_string();
            if reason.starts_with("unknown variant") {
                ProtocolError::UnknownKind(self.kind.clone())
            } else {
                ProtocolError::InvalidPayload {
                    kind: self.kind.clone(),
                    reason,
                }
            }
        })
    }

    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.deadline.is_some_and(|deadline| deadline < now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
    enum Inbox {
        Ping { n: u32 },
        Stop,
    }

    #[test]
    fn typed_message_round_trips_through_bytes() {
        let envelope = Envelope::new(&Inbox::Ping { n: 7 }, "test", "corr-1").unwrap();
        assert_eq!(envelope.kind, "ping");
        let bytes = envelope.encode();
        let decoded = Envelope::decode(&bytes, 1 << 20).unwrap();
        assert_eq!(decoded, envelope);
        assert_eq!(decoded.open::<Inbox>().unwrap(), Inbox::Ping { n: 7 });
    }

    #[test]
    fn unit_variant_round_trips() {
        let envelope = Envelope::new(&Inbox::Stop, "test", "c").unwrap();
        let decoded = Envelope::decode(&envelope.encode(), 1 << 20).unwrap();
        assert_eq!(decoded.open::<Inbox>().unwrap(), Inbox::Stop);
    }

    #[test]
    fn unknown_kind_is_an_error_value() {
        let mut envelope = Envelope::new(&Inbox::Stop, "test", "c").unwrap();
        envelope.kind = "explode".into();
        assert_eq!(
            envelope.open::<Inbox>(),
            Err(ProtocolError::UnknownKind("explode".into()))
        );
    }

    #[test]
    fn invalid_payload_names_the_kind() {
        let mut envelope = Envelope::new(&Inbox::Ping { n: 1 }, "test", "c").unwrap();
        envelope.payload = serde_json::json!({ "n": "not a number" });
        assert!(matches!(
            envelope.open::<Inbox>(),
            Err(ProtocolError::InvalidPayload { kind, .. }) if kind == "ping"
        ));
    }

    #[test]
    fn garbage_version_and_size_are_rejected() {
        assert!(matches!(
            Envelope::decode(b"{not json", 100),
            Err(ProtocolError::InvalidEnvelope(_))
        ));
        assert_eq!(Envelope::decode(b"", 100), Err(ProtocolError::Empty));
        assert!(matches!(
            Envelope::decode(&[b'x'; 200], 100),
            Err(ProtocolError::TooLarge {
                size: 200,
                limit: 100
            })
        ));
        let mut envelope = Envelope::new(&Inbox::Stop, "test", "c").unwrap();
        envelope.version = 99;
        assert_eq!(
            Envelope::decode(&envelope.encode(), 1 << 20),
            Err(ProtocolError::UnsupportedVersion(99))
        );
    }

    #[test]
    fn deadline_expiry() {
        let envelope = Envelope::new(&Inbox::Stop, "t", "c")
            .unwrap()
            .with_deadline(Some(100));
        assert!(envelope.is_expired(101));
        assert!(!envelope.is_expired(100));
        assert!(!Envelope::new(&Inbox::Stop, "t", "c")
            .unwrap()
            .is_expired(i64::MAX));
    }
}
