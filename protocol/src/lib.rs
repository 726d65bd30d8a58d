//! The wire protocol of wfm: the versioned envelope every Kafka record carries,
//! the topic layout, and the typed messages each component exchanges.

pub mod coordinator;
pub mod dlq;
pub mod envelope;
pub mod flow;
pub mod history;
pub mod hub;
pub mod ids;
pub mod northbound;
pub mod resources;
pub mod speaker;
pub mod switch;
pub mod topics;
pub mod topology;

pub use envelope::{Envelope, Message, ProtocolError, ENVELOPE_VERSION};
pub use topics::{Topic, Topics};

/// Milliseconds since the Unix epoch: the clock every deadline and timestamp uses.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
