//! The Kafka runtime every wfm component is built on: configuration, the
//! producer, the consumer loop with its error table, topic provisioning,
//! changelog restore and consumer status for operators.

pub mod admin;
pub mod changelog;
pub mod config;
pub mod consumer;
pub mod error;
pub mod producer;
pub mod service;
pub mod status;

pub use config::{KafkaConfig, RetryConfig};
pub use consumer::{run, ConsumerSpec, Context, Delivery, Handler, TopicPartition};
pub use error::{Disposition, WfmError};
pub use producer::{Outgoing, Producer};
pub use service::Service;
pub use status::{ConsumerSnapshot, ConsumerState, Registry};
