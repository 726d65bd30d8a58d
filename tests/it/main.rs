//! Integration tests: every one runs against a real Kafka-protocol broker.

mod broker;
mod harness;
mod runtime;
