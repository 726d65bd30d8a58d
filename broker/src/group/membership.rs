//! One consumer group under the classic rebalance protocol, as pure state.
//!
//! Every method takes `now` and answers at once; waiting for the other
//! members (a parked JoinGroup or SyncGroup) is the caller's business, so
//! the protocol is testable without a network. The rules are Kafka's:
//!
//! ```text
//!   Empty ──join──▶ PreparingRebalance ──every live member rejoined──▶ CompletingRebalance
//!                        ▲    ▲                                            │ leader's SyncGroup
//!   join, leave, expiry ─┘    └──────── join, leave, expiry ───────── Stable ◀┘
//! ```
//!
//! A member that stops heartbeating for its session timeout is removed and a
//! rebalance begins; the survivors learn it from their next heartbeat
//! (REBALANCE_IN_PROGRESS), rejoin, and the leader hands out every partition
//! again. A member with a request parked here is alive by definition.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tansu_sans_io::join_group_response::JoinGroupResponseMember;
use tansu_storage::{GroupDetail, GroupMember, GroupState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

/// Why a request is refused; each maps to the Kafka error code of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnknownMemberId,
    IllegalGeneration,
    RebalanceInProgress,
    InconsistentGroupProtocol,
    /// A session that would expire before the member could heartbeat once.
    InvalidSessionTimeout,
}

/// What a JoinGroup asks for, beyond the member id.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub protocol_type: String,
    /// (protocol name, member metadata), in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
}

/// The answer to a JoinGroup once the rebalance round has completed.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinResponse {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol_name: String,
    pub leader: String,
    pub member_id: String,
    /// Every member's id and metadata for the chosen protocol, for the leader only.
    pub members: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SyncOutcome {
    Assigned(Bytes),
    /// A follower waits for the leader's assignment.
    AwaitLeader,
}

#[derive(Debug)]
struct Member {
    request: JoinRequest,
    last_seen: Instant,
    /// Requests of this member parked in the coordinator right now.
    parked: u32,
    /// Has rejoined in the current rebalance round.
    rejoined: bool,
    /// Sent a JoinGroup that has not been answered yet. Such a member is
    /// part of any round that starts meanwhile: its JoinGroup is answered
    /// by that round instead of the one it was made in.
    awaiting_join: bool,
    /// Identifies the member's latest JoinGroup: a client that resends one
    /// (after a request timeout, on a new connection) supersedes the old.
    join_ticket: u64,
}

impl Member {
    fn expired(&self, now: Instant) -> bool {
        self.parked == 0
            && now.saturating_duration_since(self.last_seen) > self.request.session_timeout
    }

    fn metadata(&self, protocol: &str) -> Option<&Bytes> {
        self.request
            .protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata)
    }
}

#[derive(Debug)]
pub struct Group {
    phase: Phase,
    generation: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    assignments: BTreeMap<String, Bytes>,
    rebalance_deadline: Option<Instant>,
    /// When the leader's SyncGroup is due once a round has completed.
    sync_deadline: Option<Instant>,
    join_tickets: u64,
    join_responses: BTreeMap<String, JoinResponse>,
    /// Bumped on every change a parked request could be waiting for.
    version: u64,
    inception: std::time::SystemTime,
}

impl Default for Group {
    fn default() -> Self {
        Self {
            phase: Phase::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            assignments: BTreeMap::new(),
            rebalance_deadline: None,
            sync_deadline: None,
            join_tickets: 0,
            join_responses: BTreeMap::new(),
            version: 0,
            inception: std::time::SystemTime::now(),
        }
    }
}

impl Group {
    #[cfg(test)]
    fn phase(&self) -> Phase {
        self.phase
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    #[cfg(test)]
    fn is_member(&self, member_id: &str) -> bool {
        self.members.contains_key(member_id)
    }

    /// The group as tansu's storage keeps it, which is what its
    /// ListGroups and DescribeGroups answer from.
    pub fn detail(&self) -> GroupDetail {
        let protocol_type = self.protocol_type.clone().unwrap_or_default();
        let protocol_name = self.protocol_name.clone().unwrap_or_default();
        let members = self
            .members
            .iter()
            .map(|(id, member)| {
                let join_response = JoinGroupResponseMember::default()
                    .member_id(id.clone())
                    .group_instance_id(None)
                    .metadata(member.metadata(&protocol_name).cloned().unwrap_or_default());
                let member = GroupMember {
                    join_response,
                    last_contact: None,
                };
                (id.clone(), member)
            })
            .collect();
        let state = match self.phase {
            Phase::CompletingRebalance | Phase::Stable => GroupState::Formed {
                protocol_type,
                protocol_name,
                leader: self.leader.clone().unwrap_or_default(),
                assignments: self.assignments.clone(),
            },
            Phase::Empty | Phase::PreparingRebalance => GroupState::Forming {
                protocol_type: self.protocol_type.clone(),
                protocol_name: self.protocol_name.clone(),
                leader: None,
            },
        };
        let longest = |timeout: fn(&JoinRequest) -> Duration| {
            self.members
                .values()
                .map(|member| timeout(&member.request))
                .max()
                .unwrap_or_default()
        };
        let millis = |duration: Duration| i32::try_from(duration.as_millis()).unwrap_or(i32::MAX);
        GroupDetail {
            session_timeout_ms: millis(longest(|r| r.session_timeout)),
            rebalance_timeout_ms: Some(millis(longest(|r| r.rebalance_timeout))),
            members,
            generation_id: self.generation,
            skip_assignment: Some(false),
            inception: self.inception,
            state,
        }
    }

    /// Admits (or re-admits) a member and starts a rebalance round if none is
    /// under way. The answer comes from [`Group::take_join_response`], with
    /// the ticket returned here, once every live member has rejoined.
    pub fn join(
        &mut self,
        now: Instant,
        member_id: &str,
        request: JoinRequest,
    ) -> Result<u64, Refusal> {
        if request.session_timeout.is_zero() {
            return Err(Refusal::InvalidSessionTimeout);
        }
        // Departed members must not hold the group to their protocols.
        self.settle(now);
        self.check_protocols(member_id, &request)?;
        if self.protocol_type.is_none() {
            self.protocol_type = Some(request.protocol_type.clone());
        }
        let parked = self.members.get(member_id).map_or(0, |m| m.parked);
        self.join_tickets += 1;
        let ticket = self.join_tickets;
        self.members.insert(
            member_id.to_owned(),
            Member {
                request,
                last_seen: now,
                parked,
                rejoined: false,
                awaiting_join: true,
                join_ticket: ticket,
            },
        );
        self.join_responses.remove(member_id);
        if self.phase != Phase::PreparingRebalance {
            self.begin_rebalance(now);
        }
        if let Some(member) = self.members.get_mut(member_id) {
            member.rejoined = true;
        }
        self.version += 1;
        self.settle(now);
        Ok(ticket)
    }

    /// The answer to the JoinGroup holding `ticket`, once there is one: the
    /// round's, or a refusal when the member is gone or has joined again
    /// since (the newer request gets the round's answer).
    pub fn take_join_response(
        &mut self,
        member_id: &str,
        ticket: u64,
    ) -> Option<Result<JoinResponse, Refusal>> {
        let Some(member) = self.members.get_mut(member_id) else {
            return Some(Err(Refusal::UnknownMemberId));
        };
        if member.join_ticket != ticket {
            return Some(Err(Refusal::RebalanceInProgress));
        }
        let response = self.join_responses.remove(member_id)?;
        member.awaiting_join = false;
        Some(Ok(response))
    }

    /// The leader's SyncGroup carries everyone's assignment and makes the
    /// group stable; a follower's gets its share once the leader's has come.
    pub fn sync(
        &mut self,
        now: Instant,
        member_id: &str,
        generation: i32,
        assignments: &[(String, Bytes)],
    ) -> Result<SyncOutcome, Refusal> {
        self.touch(now, member_id)?;
        if generation != self.generation {
            return Err(Refusal::IllegalGeneration);
        }
        match self.phase {
            Phase::Empty | Phase::PreparingRebalance => Err(Refusal::RebalanceInProgress),
            Phase::CompletingRebalance if self.leader.as_deref() == Some(member_id) => {
                self.assignments = assignments
                    .iter()
                    .filter(|(member, _)| self.members.contains_key(member))
                    .cloned()
                    .collect();
                self.phase = Phase::Stable;
                self.sync_deadline = None;
                self.version += 1;
                Ok(SyncOutcome::Assigned(self.assignment_of(member_id)))
            }
            Phase::CompletingRebalance => Ok(SyncOutcome::AwaitLeader),
            Phase::Stable => Ok(SyncOutcome::Assigned(self.assignment_of(member_id))),
        }
    }

    pub fn heartbeat(
        &mut self,
        now: Instant,
        member_id: &str,
        generation: i32,
    ) -> Result<(), Refusal> {
        self.settle(now);
        self.touch(now, member_id)?;
        match self.phase {
            Phase::PreparingRebalance | Phase::Empty => Err(Refusal::RebalanceInProgress),
            _ if generation != self.generation => Err(Refusal::IllegalGeneration),
            _ => Ok(()),
        }
    }

    pub fn leave(&mut self, now: Instant, member_id: &str) -> Result<(), Refusal> {
        if self.members.remove(member_id).is_none() {
            return Err(Refusal::UnknownMemberId);
        }
        self.after_departure(now);
        Ok(())
    }

    /// Offsets are committed only by a current member for the current
    /// generation, so a member that lost its partitions cannot move their
    /// offsets behind the back of the new owner. A commit from outside the
    /// group (no member id: an admin tool) is taken only while it is empty.
    pub fn may_commit(&self, member_id: &str, generation: i32) -> Result<(), Refusal> {
        if member_id.is_empty() && self.members.is_empty() {
            Ok(())
        } else if !self.members.contains_key(member_id) {
            Err(Refusal::UnknownMemberId)
        } else if generation != self.generation {
            Err(Refusal::IllegalGeneration)
        } else {
            Ok(())
        }
    }

    pub fn park(&mut self, member_id: &str) {
        if let Some(member) = self.members.get_mut(member_id) {
            member.parked += 1;
        }
    }

    /// A parked request ended (answered or its connection dropped): the
    /// member's session runs from now.
    pub fn unpark(&mut self, now: Instant, member_id: &str) {
        if let Some(member) = self.members.get_mut(member_id) {
            member.parked = member.parked.saturating_sub(1);
            member.last_seen = now;
        }
    }

    /// Removes members whose session or rebalance time ran out and completes
    /// the rebalance round when every remaining member has rejoined.
    pub fn settle(&mut self, now: Instant) {
        let rebalance_overdue = self.phase == Phase::PreparingRebalance
            && self
                .rebalance_deadline
                .is_some_and(|deadline| now >= deadline);
        // A leader that never hands out the assignment would leave its
        // followers waiting in SyncGroup for good.
        let late_leader = match (self.phase, self.sync_deadline) {
            (Phase::CompletingRebalance, Some(deadline)) if now >= deadline => self.leader.clone(),
            _ => None,
        };
        let before = self.members.len();
        self.members.retain(|id, member| {
            !(member.expired(now)
                || (rebalance_overdue && !member.rejoined && member.parked == 0)
                || late_leader.as_ref() == Some(id))
        });
        if self.members.len() < before {
            self.after_departure(now);
        }
        if self.phase == Phase::PreparingRebalance
            && !self.members.is_empty()
            && self.members.values().all(|member| member.rejoined)
        {
            self.complete_rebalance(now);
        }
    }

    fn touch(&mut self, now: Instant, member_id: &str) -> Result<(), Refusal> {
        let member = self
            .members
            .get_mut(member_id)
            .ok_or(Refusal::UnknownMemberId)?;
        member.last_seen = now;
        Ok(())
    }

    fn check_protocols(&self, member_id: &str, request: &JoinRequest) -> Result<(), Refusal> {
        let others = || {
            self.members
                .iter()
                .filter(|(id, _)| id.as_str() != member_id)
        };
        if others().next().is_none() {
            return if request.protocols.is_empty() {
                Err(Refusal::InconsistentGroupProtocol)
            } else {
                Ok(())
            };
        }
        let same_type = self.protocol_type.as_deref() == Some(request.protocol_type.as_str());
        let shared = request
            .protocols
            .iter()
            .any(|(name, _)| others().all(|(_, member)| member.metadata(name).is_some()));
        if same_type && shared {
            Ok(())
        } else {
            Err(Refusal::InconsistentGroupProtocol)
        }
    }

    fn after_departure(&mut self, now: Instant) {
        self.join_responses
            .retain(|member, _| self.members.contains_key(member));
        if self.members.is_empty() {
            self.phase = Phase::Empty;
            self.leader = None;
            self.protocol_type = None;
            self.protocol_name = None;
            self.assignments.clear();
            self.rebalance_deadline = None;
        } else if self.phase != Phase::PreparingRebalance {
            self.begin_rebalance(now);
        }
        self.version += 1;
    }

    fn begin_rebalance(&mut self, now: Instant) {
        self.phase = Phase::PreparingRebalance;
        let longest = self
            .members
            .values()
            .map(|member| member.request.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.rebalance_deadline = Some(now + longest);
        for member in self.members.values_mut() {
            member.rejoined = member.awaiting_join;
        }
        self.join_responses.clear();
    }

    fn complete_rebalance(&mut self, now: Instant) {
        let leader = match &self.leader {
            Some(leader) if self.members.contains_key(leader) => leader.clone(),
            _ => self.members.keys().next().cloned().unwrap_or_default(),
        };
        let protocol = self.members[&leader]
            .request
            .protocols
            .iter()
            .map(|(name, _)| name)
            .find(|name| {
                self.members
                    .values()
                    .all(|member| member.metadata(name).is_some())
            })
            .cloned()
            .unwrap_or_default();
        self.generation += 1;
        self.phase = Phase::CompletingRebalance;
        self.rebalance_deadline = None;
        self.sync_deadline = Some(now + self.members[&leader].request.rebalance_timeout);
        self.assignments.clear();
        self.leader = Some(leader.clone());
        self.protocol_name = Some(protocol.clone());
        let everyone: Vec<(String, Bytes)> = self
            .members
            .iter()
            .map(|(id, member)| {
                (
                    id.clone(),
                    member.metadata(&protocol).cloned().unwrap_or_default(),
                )
            })
            .collect();
        let protocol_type = self.protocol_type.clone().unwrap_or_default();
        self.join_responses = self
            .members
            .keys()
            .map(|id| {
                let response = JoinResponse {
                    generation: self.generation,
                    protocol_type: protocol_type.clone(),
                    protocol_name: protocol.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader {
                        everyone.clone()
                    } else {
                        Vec::new()
                    },
                };
                (id.clone(), response)
            })
            .collect();
        self.version += 1;
    }

    fn assignment_of(&self, member_id: &str) -> Bytes {
        self.assignments.get(member_id).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: Duration = Duration::from_secs(3);

    fn request() -> JoinRequest {
        JoinRequest {
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
            session_timeout: SESSION,
            rebalance_timeout: Duration::from_secs(30),
        }
    }

    /// The answer to the member's latest JoinGroup, if the round has completed.
    fn answer(group: &mut Group, member: &str) -> Option<JoinResponse> {
        let ticket = group.members.get(member)?.join_ticket;
        group
            .take_join_response(member, ticket)
            .map(|answer| answer.expect("answered, not refused"))
    }

    /// Joins every member, completes the round and lets the leader assign
    /// `assignment(member)` to everyone; returns the generation.
    fn form(group: &mut Group, now: Instant, members: &[&str]) -> i32 {
        for member in members {
            group.join(now, member, request()).unwrap();
        }
        // Each join after the first starts a round the earlier members must rejoin.
        for member in members {
            if group.phase() == Phase::PreparingRebalance {
                group.join(now, member, request()).unwrap();
            }
        }
        let responses: Vec<JoinResponse> = members
            .iter()
            .map(|member| answer(group, member).expect("round complete"))
            .collect();
        let leader = &responses[0].leader;
        let plan: Vec<(String, Bytes)> = members
            .iter()
            .map(|m| (m.to_string(), Bytes::from(format!("parts-of-{m}"))))
            .collect();
        let generation = responses[0].generation;
        assert_eq!(
            group.sync(now, leader, generation, &plan).unwrap(),
            SyncOutcome::Assigned(Bytes::from(format!("parts-of-{leader}")))
        );
        generation
    }

    #[test]
    fn a_lone_member_forms_the_group_at_once_and_leads_it() {
        let now = Instant::now();
        let mut group = Group::default();
        group.join(now, "a", request()).unwrap();
        let response = answer(&mut group, "a").unwrap();
        assert_eq!(response.leader, "a");
        assert_eq!(response.generation, 1);
        assert_eq!(response.protocol_name, "range");
        assert_eq!(
            response.members,
            vec![("a".to_string(), Bytes::from_static(b"meta"))]
        );
        assert_eq!(group.phase(), Phase::CompletingRebalance);
        group
            .sync(now, "a", 1, &[("a".into(), Bytes::from_static(b"all"))])
            .unwrap();
        assert_eq!(group.phase(), Phase::Stable);
        assert_eq!(group.heartbeat(now, "a", 1), Ok(()));
    }

    #[test]
    fn a_new_member_makes_the_others_rejoin_and_the_round_waits_for_them() {
        let now = Instant::now();
        let mut group = Group::default();
        let first = form(&mut group, now, &["a"]);
        group.join(now, "b", request()).unwrap();
        assert_eq!(answer(&mut group, "b"), None, "waits for a to rejoin");
        assert_eq!(
            group.heartbeat(now, "a", first),
            Err(Refusal::RebalanceInProgress)
        );
        group.join(now, "a", request()).unwrap();
        let a = answer(&mut group, "a").unwrap();
        let b = answer(&mut group, "b").unwrap();
        assert_eq!(a.generation, first + 1);
        assert_eq!(a.leader, "a", "the leader keeps its role");
        assert_eq!(a.members.len(), 2);
        assert!(b.members.is_empty(), "only the leader sees the members");
        assert_eq!(
            group.sync(now, "b", b.generation, &[]),
            Ok(SyncOutcome::AwaitLeader)
        );
        let plan = [
            ("a".into(), Bytes::from_static(b"0")),
            ("b".into(), Bytes::from_static(b"1")),
        ];
        group.sync(now, "a", a.generation, &plan).unwrap();
        assert_eq!(
            group.sync(now, "b", b.generation, &[]),
            Ok(SyncOutcome::Assigned(Bytes::from_static(b"1")))
        );
    }

    #[test]
    fn a_join_still_unanswered_when_a_new_round_starts_is_answered_by_that_round() {
        let now = Instant::now();
        let mut group = Group::default();
        let first = form(&mut group, now, &["a", "b"]);
        group.join(now, "a", request()).unwrap();
        group.join(now, "b", request()).unwrap();
        // The round completed, but b's parked JoinGroup has not picked up its answer...
        assert!(answer(&mut group, "a").is_some());
        // ...when c arrives and starts the next round.
        group.join(now, "c", request()).unwrap();
        assert_eq!(answer(&mut group, "b"), None);
        group.join(now, "a", request()).unwrap();
        let b = answer(&mut group, "b").expect("b is answered without rejoining");
        assert_eq!(b.generation, first + 2);
        assert!(answer(&mut group, "c").is_some());
    }

    #[test]
    fn a_resent_join_supersedes_the_parked_one() {
        let now = Instant::now();
        let mut group = Group::default();
        form(&mut group, now, &["a", "b"]);
        let lost = group.join(now, "a", request()).unwrap();
        let resent = group.join(now, "a", request()).unwrap();
        group.join(now, "b", request()).unwrap();
        assert_eq!(
            group.take_join_response("a", lost),
            Some(Err(Refusal::RebalanceInProgress))
        );
        assert!(matches!(group.take_join_response("a", resent), Some(Ok(_))));
    }

    #[test]
    fn a_leader_that_never_syncs_is_replaced() {
        let start = Instant::now();
        let mut group = Group::default();
        form(&mut group, start, &["a", "b"]);
        group.join(start, "a", request()).unwrap();
        group.join(start, "b", request()).unwrap();
        let leader = answer(&mut group, "a").unwrap().leader;
        let follower = if leader == "a" { "b" } else { "a" };
        let generation = answer(&mut group, follower).unwrap().generation;
        assert_eq!(
            group.sync(start, follower, generation, &[]),
            Ok(SyncOutcome::AwaitLeader)
        );
        // The leader heartbeats but never syncs; the follower waits in SyncGroup.
        group.park(follower);
        let deadline = start + Duration::from_secs(30);
        for second in 1..30 {
            let now = start + Duration::from_secs(second);
            assert_eq!(group.heartbeat(now, &leader, generation), Ok(()));
        }
        group.settle(deadline);
        assert!(!group.is_member(&leader));
        assert_eq!(
            group.sync(deadline, follower, generation, &[]),
            Err(Refusal::RebalanceInProgress)
        );
    }

    #[test]
    fn departed_members_do_not_hold_the_group_to_their_protocol() {
        let start = Instant::now();
        let mut group = Group::default();
        form(&mut group, start, &["a"]);
        let mut other = request();
        other.protocols = vec![("roundrobin".into(), Bytes::new())];
        let later = start + SESSION * 2;
        group.join(later, "b", other).unwrap();
        assert!(!group.is_member("a"));
        assert_eq!(answer(&mut group, "b").unwrap().protocol_name, "roundrobin");
    }

    #[test]
    fn a_silent_member_is_expired_and_the_survivor_takes_everything() {
        let start = Instant::now();
        let mut group = Group::default();
        let generation = form(&mut group, start, &["a", "b"]);
        // b keeps heartbeating; a (the leader) goes silent.
        assert_eq!(
            group.heartbeat(start + SESSION / 2, "b", generation),
            Ok(())
        );
        let later = start + SESSION + Duration::from_millis(1);
        assert_eq!(
            group.heartbeat(later, "b", generation),
            Err(Refusal::RebalanceInProgress)
        );
        assert!(!group.is_member("a"));
        group.join(later, "b", request()).unwrap();
        let b = answer(&mut group, "b").unwrap();
        assert_eq!(b.leader, "b", "leadership passes to a survivor");
        assert_eq!(
            b.members,
            vec![("b".to_string(), Bytes::from_static(b"meta"))]
        );
        assert_eq!(b.generation, generation + 1);
        group
            .sync(
                later,
                "b",
                b.generation,
                &[("b".into(), Bytes::from_static(b"all"))],
            )
            .unwrap();
        assert_eq!(group.heartbeat(later, "b", b.generation), Ok(()));
        assert_eq!(
            group.may_commit("a", generation),
            Err(Refusal::UnknownMemberId)
        );
    }

    #[test]
    fn a_member_waiting_in_a_parked_request_is_not_expired() {
        let start = Instant::now();
        let mut group = Group::default();
        let generation = form(&mut group, start, &["a", "b"]);
        group.join(start, "b", request()).unwrap();
        group.park("b");
        let later = start + SESSION * 2;
        group.settle(later);
        assert!(group.is_member("b"), "parked: alive");
        assert!(!group.is_member("a"), "silent: gone");
        let b = answer(&mut group, "b").expect("the round completes without a");
        assert_eq!(b.generation, generation + 1);
        group.unpark(later, "b");
        group.settle(later + SESSION - Duration::from_millis(1));
        assert!(group.is_member("b"), "the session runs from the unpark");
    }

    #[test]
    fn a_member_that_never_rejoins_is_dropped_at_the_rebalance_deadline() {
        let start = Instant::now();
        let mut group = Group::default();
        let generation = form(&mut group, start, &["a", "b"]);
        group.join(start, "b", request()).unwrap();
        group.park("b");
        // a heartbeats (so its session stays alive) but never rejoins.
        for second in 1..30 {
            let now = start + Duration::from_secs(second);
            assert_eq!(
                group.heartbeat(now, "a", generation),
                Err(Refusal::RebalanceInProgress)
            );
        }
        let deadline = start + Duration::from_secs(30);
        assert_eq!(
            group.heartbeat(deadline, "a", generation),
            Err(Refusal::UnknownMemberId)
        );
        assert_eq!(answer(&mut group, "b").unwrap().members.len(), 1);
    }

    #[test]
    fn leaving_starts_a_rebalance_and_the_last_one_out_empties_the_group() {
        let now = Instant::now();
        let mut group = Group::default();
        let generation = form(&mut group, now, &["a", "b"]);
        group.leave(now, "a").unwrap();
        assert_eq!(
            group.heartbeat(now, "b", generation),
            Err(Refusal::RebalanceInProgress)
        );
        group.leave(now, "b").unwrap();
        assert_eq!(group.phase(), Phase::Empty);
        assert_eq!(group.leave(now, "b"), Err(Refusal::UnknownMemberId));
    }

    #[test]
    fn stale_generations_are_refused_for_sync_heartbeat_and_commit() {
        let now = Instant::now();
        let mut group = Group::default();
        let generation = form(&mut group, now, &["a"]);
        assert_eq!(
            group.heartbeat(now, "a", generation - 1),
            Err(Refusal::IllegalGeneration)
        );
        assert_eq!(
            group.sync(now, "a", generation - 1, &[]),
            Err(Refusal::IllegalGeneration)
        );
        assert_eq!(
            group.may_commit("a", generation - 1),
            Err(Refusal::IllegalGeneration)
        );
        assert_eq!(group.may_commit("a", generation), Ok(()));
        assert_eq!(group.may_commit("", -1), Err(Refusal::UnknownMemberId));
        assert_eq!(Group::default().may_commit("", -1), Ok(()));
        assert_eq!(
            group.heartbeat(now, "x", generation),
            Err(Refusal::UnknownMemberId)
        );
    }

    #[test]
    fn a_member_without_a_protocol_in_common_is_refused() {
        let now = Instant::now();
        let mut group = Group::default();
        form(&mut group, now, &["a"]);
        let mut other = request();
        other.protocols = vec![("roundrobin".into(), Bytes::new())];
        assert_eq!(
            group.join(now, "b", other),
            Err(Refusal::InconsistentGroupProtocol)
        );
        let mut other_type = request();
        other_type.protocol_type = "connect".into();
        assert_eq!(
            group.join(now, "b", other_type),
            Err(Refusal::InconsistentGroupProtocol)
        );
        let mut no_session = request();
        no_session.session_timeout = Duration::ZERO;
        assert_eq!(
            group.join(now, "b", no_session),
            Err(Refusal::InvalidSessionTimeout)
        );
        assert_eq!(
            group.phase(),
            Phase::Stable,
            "a refused join changes nothing"
        );
    }
}
