//! Integration tests: every one runs against a real Kafka-protocol broker.

mod bench;
mod broker;
mod chaos;
mod check;
mod coordinator;
mod harness;
mod hub;
mod northbound;
mod runtime;
mod simulator;
mod system;
mod topics;
mod workers;
