//! The dead-letter record: what could not be processed, why, and where it came
//! from, with the original bytes so that it can be replayed after a fix.

use base64::{engine::general_purpose::STANDARD, Engine};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum DlqMessage {
    DeadLetter(DeadLetter),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub reason: String,
    /// The class of failure, e.g. `invalid_envelope`, `unknown_kind`, `retries_exhausted`.
    pub category: String,
    pub origin_topic: String,
    pub origin_partition: i32,
    pub origin_offset: i64,
    /// The consumer group that gave up on the record.
    pub consumer_group: String,
    /// Original key and value, base64, since neither need be valid UTF-8.
    pub key_b64: Option<String>,
    pub value_b64: Option<String>,
    pub dead_lettered_at: i64,
}

impl DeadLetter {
    pub fn encode_bytes(bytes: Option<&[u8]>) -> Option<String> {
        bytes.map(|b| STANDARD.encode(b))
    }

    pub fn key(&self) -> Option<Vec<u8>> {
        self.key_b64
            .as_deref()
            .and_then(|k| STANDARD.decode(k).ok())
    }

    pub fn value(&self) -> Option<Vec<u8>> {
        self.value_b64
            .as_deref()
            .and_then(|v| STANDARD.decode(v).ok())
    }
}
