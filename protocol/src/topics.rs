//! The topic layout of the design: one inbox per component, compacted topics
//! for current state and changelogs, and the history and dead-letter logs.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topic {
    Hub,
    Resources,
    SpeakerWorker,
    Coordinator,
    Switch,
    Northbound,
    Flows,
    HubState,
    ResourcesState,
    CoordinatorState,
    SpeakerState,
    Topology,
    History,
    Dlq,
}

impl Topic {
    pub const ALL: [Topic; 14] = [
        Topic::Hub,
        Topic::Resources,
        Topic::SpeakerWorker,
        Topic::Coordinator,
        Topic::Switch,
        Topic::Northbound,
        Topic::Flows,
        Topic::HubState,
        Topic::ResourcesState,
        Topic::CoordinatorState,
        Topic::SpeakerState,
        Topic::Topology,
        Topic::History,
        Topic::Dlq,
    ];

    /// The name after the prefix.
    pub fn suffix(self) -> &'static str {
        match self {
            Topic::Hub => "hub",
            Topic::Resources => "resources",
            Topic::SpeakerWorker => "speaker-worker",
            Topic::Coordinator => "coordinator",
            Topic::Switch => "switch",
            Topic::Northbound => "northbound",
            Topic::Flows => "flows",
            Topic::HubState => "hub.state",
            Topic::ResourcesState => "resources.state",
            Topic::CoordinatorState => "coordinator.state",
            Topic::SpeakerState => "speaker-worker.state",
            Topic::Topology => "topology",
            Topic::History => "history",
            Topic::Dlq => "dlq",
        }
    }

    /// Compacted topics keep only the latest record per key: current state and changelogs.
    pub fn compacted(self) -> bool {
        matches!(
            self,
            Topic::Flows
                | Topic::HubState
                | Topic::ResourcesState
                | Topic::CoordinatorState
                | Topic::SpeakerState
                | Topic::Topology
        )
    }

    /// How long the broker keeps records regardless of readers
    /// (`retention.ms`); `None` keeps them as the broker's default does.
    /// Replies are read within a request's timeout, never later.
    pub fn retention_ms(self) -> Option<i64> {
        match self {
            Topic::Northbound => Some(10 * 60 * 1000),
            _ => None,
        }
    }

    /// The changelog that a component owning this inbox writes its state to.
    /// A changelog has the inbox's partition count, and the state of inbox
    /// partition `p` lives in changelog partition `p`, so whoever owns `p`
    /// restores exactly its own state.
    pub fn changelog(self) -> Option<Topic> {
        match self {
            Topic::Hub => Some(Topic::HubState),
            Topic::Resources => Some(Topic::ResourcesState),
            Topic::Coordinator => Some(Topic::CoordinatorState),
            Topic::SpeakerWorker => Some(Topic::SpeakerState),
            _ => None,
        }
    }
}

/// Topic names under one prefix (default `wfm.`), so that several
/// deployments or tests can share a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self::new("wfm.")
    }
}

impl Topics {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn name(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.suffix())
    }

    /// The topic a full name stands for, if it is one of ours.
    pub fn parse(&self, name: &str) -> Option<Topic> {
        let suffix = name.strip_prefix(&self.prefix)?;
        Topic::ALL.into_iter().find(|t| t.suffix() == suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_under_a_prefix() {
        let topics = Topics::new("t1.");
        for topic in Topic::ALL {
            assert_eq!(topics.parse(&topics.name(topic)), Some(topic));
        }
        assert_eq!(topics.name(Topic::HubState), "t1.hub.state");
        assert_eq!(topics.parse("other.hub"), None);
    }

    #[test]
    fn every_changelog_is_compacted() {
        for topic in Topic::ALL {
            if let Some(changelog) = topic.changelog() {
                assert!(changelog.compacted());
            }
        }
    }
}
