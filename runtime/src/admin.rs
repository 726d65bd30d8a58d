//! Topic provisioning: every topic of the design exists with the configured
//! partition count and cleanup policy, created if missing, idempotently.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::metadata::Metadata;
use tracing::{info, warn};
use wfm_protocol::Topic;

use crate::config::KafkaConfig;
use crate::error::WfmError;
use crate::producer::client_config;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("broker {brokers} not reachable after {waited:?}: {last_error}")]
    Unreachable {
        brokers: String,
        waited: Duration,
        last_error: String,
    },
    #[error("topics exist with settings that differ from the configuration: {0}")]
    Mismatch(String),
    #[error("creating topic {topic} failed: {reason}")]
    CreateFailed { topic: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStatus {
    pub name: String,
    pub partitions: i32,
    pub compacted: bool,
    pub created: bool,
}

/// Fetches cluster metadata, retrying with backoff until `patience` runs out.
pub async fn metadata(kafka: &KafkaConfig, patience: Duration) -> Result<Metadata, ProvisionError> {
    let started = Instant::now();
    let mut delays = kafka.retry.forever();
    let config = client_config(kafka, &Default::default());
    loop {
        let attempt = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || {
                let consumer: BaseConsumer = config.create()?;
                consumer.fetch_metadata(None, Duration::from_secs(5))
            })
            .await
            .expect("metadata task does not panic")
        };
        match attempt {
            Ok(metadata) if !metadata.brokers().is_empty() => return Ok(metadata),
            Ok(_) => warn!("broker answered with no brokers; retrying"),
            Err(error) if started.elapsed() >= patience => {
                return Err(ProvisionError::Unreachable {
                    brokers: kafka.brokers.clone(),
                    waited: started.elapsed(),
                    last_error: error.to_string(),
                })
            }
            Err(error) => warn!(%error, "broker not reachable yet; retrying"),
        }
        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
    }
}

/// Creates every missing topic of the design and reports each one. A topic
/// that exists with another partition count is reported as a mismatch rather
/// than altered: repartitioning moves keys, so it is an operator's decision.
pub async fn ensure_topics(kafka: &KafkaConfig) -> Result<Vec<TopicStatus>, ProvisionError> {
    let topics = kafka.topics();
    let existing = metadata(kafka, Duration::from_secs(60)).await?;
    let mut report = Vec::new();
    let mut missing = Vec::new();
    let mut mismatches = Vec::new();
    for topic in Topic::ALL {
        let name = topics.name(topic);
        let wanted = kafka.partitions_of(topic);
        match existing
            .topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none())
        {
            Some(found) => {
                let partitions = found.partitions().len() as i32;
                if partitions != wanted {
                    mismatches.push(format!(
                        "{name} has {partitions} partitions, configured {wanted}"
                    ));
                }
                report.push(TopicStatus {
                    name,
                    partitions,
                    compacted: topic.compacted(),
                    created: false,
                });
            }
            None => missing.push((topic, name, wanted)),
        }
    }
    if !mismatches.is_empty() {
        return Err(ProvisionError::Mismatch(mismatches.join("; ")));
    }
    if !missing.is_empty() {
        let admin: AdminClient<DefaultClientContext> = client_config(kafka, &Default::default())
            .create()
            .map_err(|e| ProvisionError::CreateFailed {
                topic: "*".into(),
                reason: e.to_string(),
            })?;
        let retention: Vec<Option<String>> = missing
            .iter()
            .map(|(topic, _, _)| topic.retention_ms().map(|ms| ms.to_string()))
            .collect();
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .zip(&retention)
            .map(|((topic, name, partitions), retention_ms)| {
                let new_topic = NewTopic::new(
                    name,
                    *partitions,
                    TopicReplication::Fixed(kafka.replication_factor),
                )
                .set(
                    "cleanup.policy",
                    if topic.compacted() {
                        "compact"
                    } else {
                        "delete"
                    },
                );
                match retention_ms {
                    Some(ms) => new_topic.set("retention.ms", ms),
                    None => new_topic,
                }
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics(new_topics.iter(), &options)
            .await
            .map_err(|e| ProvisionError::CreateFailed {
                topic: "*".into(),
                reason: e.to_string(),
            })?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(ProvisionError::CreateFailed {
                        topic,
                        reason: code.to_string(),
                    })
                }
            }
        }
        for (topic, name, partitions) in missing {
            info!(topic = %name, partitions, compacted = topic.compacted(), "topic created");
            report.push(TopicStatus {
                name,
                partitions,
                compacted: topic.compacted(),
                created: true,
            });
        }
    }
    Ok(report)
}

impl From<ProvisionError> for WfmError {
    fn from(error: ProvisionError) -> Self {
        WfmError::Transient(error.to_string())
    }
}
