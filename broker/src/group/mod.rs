//! The embedded broker's consumer-group coordinator.
//!
//! tansu 0.6's own coordinator never hands a dead member's partitions to the
//! survivors (its formed group drops the member but keeps the old generation
//! and assignment), so a standby instance would never take over. This one
//! keeps membership in memory with Kafka's classic rebalance rules
//! ([`membership`]), commits offsets to tansu's storage, and publishes each
//! group's state there too, which is what ListGroups and DescribeGroups read.
//! After a broker restart the members simply rejoin, as they would with Kafka.

mod membership;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tansu_broker::coordinator::group::administrator::Controller;
use tansu_broker::coordinator::group::{Coordinator, OffsetCommit};
use tansu_broker::Result;
use tansu_sans_io::heartbeat_response::HeartbeatResponse;
use tansu_sans_io::join_group_request::JoinGroupRequestProtocol;
use tansu_sans_io::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use tansu_sans_io::leave_group_request::MemberIdentity;
use tansu_sans_io::leave_group_response::{LeaveGroupResponse, MemberResponse};
use tansu_sans_io::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use tansu_sans_io::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use tansu_sans_io::offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopic};
use tansu_sans_io::sync_group_request::SyncGroupRequestAssignment;
use tansu_sans_io::sync_group_response::SyncGroupResponse;
use tansu_sans_io::{Body, ErrorCode};
use tansu_storage::{GroupDetail, OffsetCommitRequest, Storage, Topition, UpdateError, Version};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use membership::{Group, JoinRequest, JoinResponse, Refusal, SyncOutcome};

/// How often a parked request re-checks sessions and deadlines when nothing
/// else wakes it.
const RECHECK: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub struct GroupCoordinator<S> {
    storage: S,
    /// tansu's coordinator, for offset fetches only: they read storage and
    /// never touch its idea of the group.
    offset_fetcher: Controller<S>,
    groups: Arc<Mutex<BTreeMap<String, Group>>>,
    /// Wakes parked requests when a group changed.
    changed: Arc<Notify>,
    /// Groups changed since the publisher last wrote them.
    unpublished: Arc<Mutex<BTreeSet<String>>>,
    publish: Arc<Notify>,
}

impl<S> fmt::Debug for GroupCoordinator<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupCoordinator").finish_non_exhaustive()
    }
}

impl<S: Storage> GroupCoordinator<S> {
    pub fn new(storage: S) -> Result<Self> {
        Ok(Self {
            offset_fetcher: Controller::with_storage(storage.clone())?,
            storage,
            groups: Arc::default(),
            changed: Arc::default(),
            unpublished: Arc::default(),
            publish: Arc::default(),
        })
    }

    /// Writes every changed group's state to storage, coalesced to the
    /// latest; runs for as long as the broker does.
    pub fn publisher(&self) -> impl Future<Output = ()> + Send + 'static {
        let coordinator = self.clone();
        async move {
            let mut versions: HashMap<String, Version> = HashMap::new();
            loop {
                coordinator.publish.notified().await;
                let changed = std::mem::take(&mut *lock(&coordinator.unpublished));
                for group_id in changed {
                    let detail = lock(&coordinator.groups).get(&group_id).map(Group::detail);
                    if let Some(detail) = detail {
                        coordinator.write(&group_id, detail, &mut versions).await;
                    }
                }
            }
        }
    }

    async fn write(
        &self,
        group_id: &str,
        detail: GroupDetail,
        versions: &mut HashMap<String, Version>,
    ) {
        // A stale version (the group was written before this broker
        // started) costs one retry with the version storage reports.
        for _ in 0..2 {
            let version = versions.get(group_id).cloned();
            match self
                .storage
                .update_group(group_id, detail.clone(), version)
                .await
            {
                Ok(version) => {
                    versions.insert(group_id.to_owned(), version);
                    return;
                }
                Err(UpdateError::Outdated { version, .. }) => {
                    versions.insert(group_id.to_owned(), version);
                }
                Err(error) => {
                    warn!(group_id, ?error, "group state not published");
                    return;
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<S> GroupCoordinator<S> {
    /// Runs `f` on the group (created on first use) and wakes the parked
    /// requests if the group changed.
    fn with_group<T>(&self, group_id: &str, f: impl FnOnce(&mut Group, Instant) -> T) -> T {
        let mut groups = lock(&self.groups);
        let group = groups.entry(group_id.to_owned()).or_default();
        let before = group.version();
        let result = f(group, Instant::now());
        if group.version() != before {
            self.changed.notify_waiters();
            lock(&self.unpublished).insert(group_id.to_owned());
            self.publish.notify_one();
        }
        result
    }

    /// Re-evaluates `poll` on the group until it yields, with the member's
    /// request counted as parked meanwhile (so its session cannot expire).
    async fn park_until<T>(
        &self,
        group_id: &str,
        member_id: &str,
        mut poll: impl FnMut(&mut Group, Instant) -> Option<T>,
    ) -> T {
        let _parked = Parked::new(self, group_id, member_id);
        loop {
            let changed = self.changed.notified();
            if let Some(answer) = self.with_group(group_id, |group, now| {
                group.settle(now);
                poll(group, now)
            }) {
                return answer;
            }
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep(RECHECK) => {}
            }
        }
    }
}

/// Counts a request as parked for as long as it waits. (tansu serves a
/// connection one request at a time and does not read it meanwhile, so a
/// client that died mid-wait is noticed only when its request is answered;
/// a client that resends its JoinGroup supersedes the parked one.)
struct Parked<'a, S> {
    coordinator: &'a GroupCoordinator<S>,
    group_id: &'a str,
    member_id: &'a str,
}

impl<'a, S> Parked<'a, S> {
    fn new(coordinator: &'a GroupCoordinator<S>, group_id: &'a str, member_id: &'a str) -> Self {
        coordinator.with_group(group_id, |group, _| group.park(member_id));
        Self {
            coordinator,
            group_id,
            member_id,
        }
    }
}

impl<S> Drop for Parked<'_, S> {
    fn drop(&mut self) {
        self.coordinator.with_group(self.group_id, |group, now| {
            group.unpark(now, self.member_id)
        });
    }
}

impl From<Refusal> for ErrorCode {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::UnknownMemberId => ErrorCode::UnknownMemberId,
            Refusal::IllegalGeneration => ErrorCode::IllegalGeneration,
            Refusal::RebalanceInProgress => ErrorCode::RebalanceInProgress,
            Refusal::InconsistentGroupProtocol => ErrorCode::InconsistentGroupProtocol,
            Refusal::InvalidSessionTimeout => ErrorCode::InvalidSessionTimeout,
        }
    }
}

fn join_response(answer: std::result::Result<JoinResponse, (ErrorCode, String)>) -> Body {
    let base = JoinGroupResponse::default()
        .throttle_time_ms(Some(0))
        .skip_assignment(Some(false));
    match answer {
        Ok(joined) => base
            .error_code(ErrorCode::None.into())
            .generation_id(joined.generation)
            .protocol_type(Some(joined.protocol_type))
            .protocol_name(Some(joined.protocol_name))
            .leader(joined.leader)
            .member_id(joined.member_id)
            .members(Some(
                joined
                    .members
                    .into_iter()
                    .map(|(member_id, metadata)| {
                        JoinGroupResponseMember::default()
                            .member_id(member_id)
                            .group_instance_id(None)
                            .metadata(metadata)
                    })
                    .collect(),
            ))
            .into(),
        Err((code, member_id)) => base
            .error_code(code.into())
            .generation_id(-1)
            .protocol_type(None)
            .protocol_name(Some(String::new()))
            .leader(String::new())
            .member_id(member_id)
            .members(Some(Vec::new()))
            .into(),
    }
}

fn sync_response(answer: std::result::Result<Bytes, Refusal>) -> Body {
    let (code, assignment) = match answer {
        Ok(assignment) => (ErrorCode::None, assignment),
        Err(refusal) => (refusal.into(), Bytes::new()),
    };
    SyncGroupResponse::default()
        .throttle_time_ms(Some(0))
        .error_code(code.into())
        .protocol_type(None)
        .protocol_name(None)
        .assignment(assignment)
        .into()
}

#[async_trait]
impl<S: Storage> Coordinator for GroupCoordinator<S> {
    async fn join(
        &mut self,
        client_id: Option<&str>,
        group_id: &str,
        session_timeout_ms: i32,
        rebalance_timeout_ms: Option<i32>,
        member_id: &str,
        _group_instance_id: Option<&str>,
        protocol_type: &str,
        protocols: Option<&[JoinGroupRequestProtocol]>,
        _reason: Option<&str>,
    ) -> Result<Body> {
        let client_id = client_id.unwrap_or("consumer");
        // A newcomer gets its id in the same answer: no MEMBER_ID_REQUIRED round trip.
        let member_id = if member_id.is_empty() {
            format!("{client_id}-{}", uuid::Uuid::new_v4())
        } else {
            member_id.to_owned()
        };
        let millis = |ms: i32| Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        let request = JoinRequest {
            protocol_type: protocol_type.to_owned(),
            protocols: protocols
                .unwrap_or_default()
                .iter()
                .map(|protocol| (protocol.name.clone(), protocol.metadata.clone()))
                .collect(),
            session_timeout: millis(session_timeout_ms),
            rebalance_timeout: millis(rebalance_timeout_ms.unwrap_or(session_timeout_ms)),
        };
        debug!(group_id, member_id, "join");
        let ticket =
            match self.with_group(group_id, |group, now| group.join(now, &member_id, request)) {
                Ok(ticket) => ticket,
                Err(refusal) => return Ok(join_response(Err((refusal.into(), member_id)))),
            };
        let answer = self
            .park_until(group_id, &member_id, |group, _| {
                group.take_join_response(&member_id, ticket)
            })
            .await;
        if let Ok(joined) = &answer {
            info!(
                group_id,
                member_id,
                generation = joined.generation,
                leader = joined.leader == member_id,
                "member joined"
            );
        }
        Ok(join_response(
            answer.map_err(|refusal| (refusal.into(), member_id)),
        ))
    }

    async fn sync(
        &mut self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        _group_instance_id: Option<&str>,
        _protocol_type: Option<&str>,
        _protocol_name: Option<&str>,
        assignments: Option<&[SyncGroupRequestAssignment]>,
    ) -> Result<Body> {
        let plan: Vec<(String, Bytes)> = assignments
            .unwrap_or_default()
            .iter()
            .map(|a| (a.member_id.clone(), a.assignment.clone()))
            .collect();
        let first = self.with_group(group_id, |group, now| {
            group.sync(now, member_id, generation_id, &plan)
        });
        let answer = match first {
            Ok(SyncOutcome::Assigned(assignment)) => Ok(assignment),
            Err(refusal) => Err(refusal),
            Ok(SyncOutcome::AwaitLeader) => {
                self.park_until(group_id, member_id, |group, now| {
                    match group.sync(now, member_id, generation_id, &[]) {
                        Ok(SyncOutcome::AwaitLeader) => None,
                        Ok(SyncOutcome::Assigned(assignment)) => Some(Ok(assignment)),
                        Err(refusal) => Some(Err(refusal)),
                    }
                })
                .await
            }
        };
        Ok(sync_response(answer))
    }

    async fn heartbeat(
        &mut self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        _group_instance_id: Option<&str>,
    ) -> Result<Body> {
        let answer = self.with_group(group_id, |group, now| {
            group.heartbeat(now, member_id, generation_id)
        });
        let code = answer.map_or_else(ErrorCode::from, |()| ErrorCode::None);
        Ok(HeartbeatResponse::default()
            .throttle_time_ms(Some(0))
            .error_code(code.into())
            .into())
    }

    async fn leave(
        &mut self,
        group_id: &str,
        member_id: Option<&str>,
        members: Option<&[MemberIdentity]>,
    ) -> Result<Body> {
        let leaving: Vec<(String, Option<String>)> = match (member_id, members) {
            (Some(member_id), _) => vec![(member_id.to_owned(), None)],
            (None, members) => members
                .unwrap_or_default()
                .iter()
                .map(|m| (m.member_id.clone(), m.group_instance_id.clone()))
                .collect(),
        };
        let responses = self.with_group(group_id, |group, now| {
            leaving
                .into_iter()
                .map(|(member_id, group_instance_id)| {
                    let code = group
                        .leave(now, &member_id)
                        .map_or_else(ErrorCode::from, |()| ErrorCode::None);
                    info!(group_id, member_id, ?code, "member left");
                    MemberResponse::default()
                        .member_id(member_id)
                        .group_instance_id(group_instance_id)
                        .error_code(code.into())
                })
                .collect::<Vec<_>>()
        });
        // v3+ reports per member; before that the one member's code is the answer.
        let code = match (member_id, responses.first()) {
            (Some(_), Some(only)) => only.error_code,
            _ => ErrorCode::None.into(),
        };
        Ok(LeaveGroupResponse::default()
            .throttle_time_ms(Some(0))
            .error_code(code)
            .members(Some(responses))
            .into())
    }

    async fn offset_commit(&mut self, detail: OffsetCommit<'_>) -> Result<Body> {
        let member_id = detail.member_id.unwrap_or_default();
        let generation = detail.generation_id_or_member_epoch.unwrap_or(-1);
        let fenced = self
            .with_group(detail.group_id, |group, _| {
                group.may_commit(member_id, generation)
            })
            .err();
        let topics = detail.topics.unwrap_or_default();
        let codes: HashMap<Topition, ErrorCode> = if let Some(refusal) = fenced {
            debug!(
                group_id = detail.group_id,
                ?refusal,
                "offset commit refused"
            );
            let code = ErrorCode::from(refusal);
            partitions_of(topics)
                .map(|(topition, _)| (topition, code))
                .collect()
        } else {
            let mut offsets = Vec::new();
            for (topition, partition) in partitions_of(topics) {
                offsets.push((topition, OffsetCommitRequest::try_from(partition)?));
            }
            let retention = detail
                .retention_time_ms
                .and_then(|ms| u64::try_from(ms).ok())
                .map(Duration::from_millis);
            self.storage
                .offset_commit(detail.group_id, retention, &offsets)
                .await?
                .into_iter()
                .collect()
        };
        let topics = topics
            .iter()
            .map(|topic| {
                let partitions = topic
                    .partitions
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .map(|p| {
                        let topition = Topition::new(topic.name.clone(), p.partition_index);
                        let code = codes
                            .get(&topition)
                            .copied()
                            .unwrap_or(ErrorCode::UnknownServerError);
                        OffsetCommitResponsePartition::default()
                            .partition_index(p.partition_index)
                            .error_code(code.into())
                    })
                    .collect();
                OffsetCommitResponseTopic::default()
                    .name(topic.name.clone())
                    .partitions(Some(partitions))
            })
            .collect();
        Ok(OffsetCommitResponse::default()
            .throttle_time_ms(Some(0))
            .topics(Some(topics))
            .into())
    }

    async fn offset_fetch(
        &mut self,
        group_id: Option<&str>,
        topics: Option<&[OffsetFetchRequestTopic]>,
        groups: Option<&[OffsetFetchRequestGroup]>,
        require_stable: Option<bool>,
    ) -> Result<Body> {
        self.offset_fetcher
            .offset_fetch(group_id, topics, groups, require_stable)
            .await
    }
}

fn partitions_of(
    topics: &[OffsetCommitRequestTopic],
) -> impl Iterator<Item = (Topition, &OffsetCommitRequestPartition)> {
    topics.iter().flat_map(|topic| {
        topic
            .partitions
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|p| (Topition::new(topic.name.clone(), p.partition_index), p))
    })
}
