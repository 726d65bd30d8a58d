//! The envelope: the JSON frame around every message on every wfm topic.
//!
//! A typed message is an adjacently tagged serde enum (`kind` + `payload`), so
//! the envelope carries the kind as a plain string and the payload as JSON; a
//! receiver opens it into its own inbox enum, and a kind it does not know is an
//! error value ([`ProtocolError::UnknownKind`]) that the runtime dead-letters.
//!
//! The payload is kept as raw JSON text, never as a `serde_json::Value` tree:
//! every record of the system passes through here twice (built and sent,
//! received and opened), and building, walking and freeing a tree per record
//! was about a fifth of the whole system's CPU under load.

use serde::de::value::{BorrowedStrDeserializer, MapAccessDeserializer};
use serde::de::{DeserializeOwned, DeserializeSeed, MapAccess};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

mod split;

/// Version of the envelope layout itself. A record with another version is
/// dead-lettered rather than guessed at.
pub const ENVELOPE_VERSION: u16 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// The message's content as JSON text, opened by [`Envelope::open`].
    #[serde(default = "null_payload")]
    pub payload: Box<RawValue>,
}

impl PartialEq for Envelope {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
            && self.message_id == other.message_id
            && self.correlation_id == other.correlation_id
            && self.kind == other.kind
            && self.created_at == other.created_at
            && self.deadline == other.deadline
            && self.source == other.source
            && self.payload.get() == other.payload.get()
    }
}

fn null_payload() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is JSON")
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
        let (kind, payload) = split::split(message).map_err(|e| unencodable(e.to_string()))?;
        Ok(Self {
            version: ENVELOPE_VERSION,
            message_id: uuid::Uuid::now_v7().to_string(),
            correlation_id: correlation_id.to_owned(),
            kind,
            created_at: crate::now_ms(),
            deadline: None,
            source: source.to_owned(),
            payload: payload.unwrap_or_else(null_payload),
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
        // An envelope is plain data (strings, numbers, JSON text): it always serialises.
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
        // Read in place as the `{kind, payload}` map the enum expects: the
        // payload is parsed once, straight into the message.
        let tagged = TaggedAccess {
            kind: &self.kind,
            payload: &self.payload,
            next: 0,
        };
        M::deserialize(MapAccessDeserializer::new(tagged)).map_err(|e| {
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

    /// The payload as a JSON tree, for tools and tests that look inside a
    /// message without knowing its type.
    pub fn payload_value(&self) -> serde_json::Value {
        serde_json::from_str(self.payload.get()).expect("a payload is valid JSON")
    }

    /// Replaces the payload, e.g. by one that a receiver must refuse.
    pub fn set_payload(&mut self, value: &serde_json::Value) {
        self.payload = serde_json::value::to_raw_value(value).expect("a JSON value serialises");
    }

    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.deadline.is_some_and(|deadline| deadline < now_ms)
    }
}

/// The two entries `kind` and `payload` of an envelope, as a serde map.
struct TaggedAccess<'a> {
    kind: &'a str,
    payload: &'a RawValue,
    /// 0: `kind` comes next, 1: `payload`, 2: done.
    next: u8,
}

impl<'de> MapAccess<'de> for TaggedAccess<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let key = match self.next {
            0 => "kind",
            1 => "payload",
            _ => return Ok(None),
        };
        seed.deserialize(BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        self.next += 1;
        match self.next {
            1 => seed.deserialize(BorrowedStrDeserializer::new(self.kind)),
            _ => seed.deserialize(self.payload),
        }
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
    fn a_message_without_payload_opens_as_its_unit_variant() {
        let bytes = br#"{"version":1,"message_id":"m","correlation_id":"c","kind":"stop","created_at":1,"source":"t"}"#;
        let decoded = Envelope::decode(bytes, 1 << 20).unwrap();
        assert_eq!(decoded.payload.get(), "null");
        assert_eq!(decoded.open::<Inbox>().unwrap(), Inbox::Stop);
    }

    #[test]
    fn the_payload_is_carried_as_the_message_wrote_it() {
        let envelope = Envelope::new(&Inbox::Ping { n: 7 }, "test", "c").unwrap();
        assert_eq!(envelope.payload.get(), r#"{"n":7}"#);
        assert_eq!(envelope.payload_value(), serde_json::json!({ "n": 7 }));
        let text = String::from_utf8(envelope.encode()).unwrap();
        assert!(text.contains(r#""payload":{"n":7}"#), "{text}");
    }

    #[test]
    fn only_kind_payload_enums_can_be_wrapped() {
        #[derive(Serialize, Deserialize)]
        enum Untagged {
            Ping { n: u32 },
        }
        for error in [
            Envelope::new(&7u32, "t", "c").unwrap_err(),
            Envelope::new(&Untagged::Ping { n: 1 }, "t", "c").unwrap_err(),
            Envelope::new(&serde_json::json!({ "kind": "x" }), "t", "c").unwrap_err(),
        ] {
            assert!(matches!(error, ProtocolError::Unencodable(..)), "{error:?}");
        }
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
        envelope.set_payload(&serde_json::json!({ "n": "not a number" }));
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
