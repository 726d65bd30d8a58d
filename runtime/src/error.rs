//! Every failure a service loop can meet, and what is done about it: the
//! design's error table, in one place.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use wfm_protocol::ProtocolError;

#[derive(Debug, thiserror::Error)]
pub enum WfmError {
    /// The record itself is unusable: undecodable, unknown kind, bad payload, too large.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A dependency is unavailable for now; the same record may well succeed later.
    #[error("transient: {0}")]
    Transient(String),
    /// The record decoded, but its content can never be processed (e.g. a missing key).
    #[error("rejected: {0}")]
    Rejected(String),
    /// Processing one request went wrong in a way that must not stop the service.
    #[error("request failed: {0}")]
    RequestFailed(String),
    /// An output was not acknowledged by the broker: what was handled may be
    /// lost, so the consumer must rewind to its last committed offset.
    #[error("output not acknowledged by the broker: {0}")]
    Delivery(String),
}

/// What a service loop does about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Try the same record again after a backoff, a bounded number of times.
    Retry,
    /// Send the record to the dead-letter topic with the reason, commit, carry on.
    DeadLetter,
    /// Drop in-memory state, rewind to the committed offsets, restore and resume.
    Reset,
    /// Move the request to a visible failed state; the service keeps serving others.
    FailRequest,
}

impl WfmError {
    pub fn disposition(&self) -> Disposition {
        match self {
            WfmError::Protocol(_) | WfmError::Rejected(_) => Disposition::DeadLetter,
            WfmError::Transient(_) => Disposition::Retry,
            WfmError::RequestFailed(_) => Disposition::FailRequest,
            WfmError::Delivery(_) => Disposition::Reset,
            WfmError::Kafka(error) => match error.rdkafka_error_code() {
                Some(RDKafkaErrorCode::MessageSizeTooLarge)
                | Some(RDKafkaErrorCode::InvalidMessage)
                | Some(RDKafkaErrorCode::InvalidRecord) => Disposition::DeadLetter,
                Some(RDKafkaErrorCode::OffsetOutOfRange)
                | Some(RDKafkaErrorCode::Fatal)
                | Some(RDKafkaErrorCode::OutOfOrderSequenceNumber) => Disposition::Reset,
                _ => Disposition::Retry,
            },
        }
    }

    /// A short machine-readable label, used in dead letters and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            WfmError::Protocol(ProtocolError::Empty) => "empty_record",
            WfmError::Protocol(ProtocolError::TooLarge { .. }) => "too_large",
            WfmError::Protocol(ProtocolError::InvalidEnvelope(_)) => "invalid_envelope",
            WfmError::Protocol(ProtocolError::UnsupportedVersion(_)) => "unsupported_version",
            WfmError::Protocol(ProtocolError::UnknownKind(_)) => "unknown_kind",
            WfmError::Protocol(ProtocolError::InvalidPayload { .. }) => "invalid_payload",
            WfmError::Protocol(ProtocolError::Unencodable(..)) => "unencodable",
            WfmError::Kafka(_) => "kafka",
            WfmError::Transient(_) => "transient",
            WfmError::Rejected(_) => "rejected",
            WfmError::RequestFailed(_) => "request_failed",
            WfmError::Delivery(_) => "delivery",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError;

    #[test]
    fn the_error_table() {
        let cases = [
            (
                WfmError::Protocol(ProtocolError::Empty),
                Disposition::DeadLetter,
            ),
            (
                WfmError::Protocol(ProtocolError::UnknownKind("x".into())),
                Disposition::DeadLetter,
            ),
            (WfmError::Rejected("no key".into()), Disposition::DeadLetter),
            (WfmError::Transient("down".into()), Disposition::Retry),
            (
                WfmError::RequestFailed("bug".into()),
                Disposition::FailRequest,
            ),
            (WfmError::Delivery("timed out".into()), Disposition::Reset),
            (
                WfmError::Kafka(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)),
                Disposition::Retry,
            ),
            (
                WfmError::Kafka(KafkaError::MessageProduction(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                )),
                Disposition::Retry,
            ),
            (
                WfmError::Kafka(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageSizeTooLarge,
                )),
                Disposition::DeadLetter,
            ),
            (
                WfmError::Kafka(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::OffsetOutOfRange,
                )),
                Disposition::Reset,
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error.disposition(), expected, "{error}");
        }
    }
}
