//! The comparison itself, free of I/O: a [`Snapshot`] in, every
//! [`Violation`] out.
//!
//! Which flows are judged on what:
//! - `IN_PROGRESS` flows, and flows whose record changed while the snapshot
//!   was taken, are mid-operation: only "stuck past the deadline" applies.
//! - `UP` flows must have exactly the rules the hub installs for them
//!   ([`FlowRules::of`]) and an allocation equal to their record's.
//! - `DOWN` flows and deleted flows must hold no rule and no allocation.
//! - `FAILED` flows wait for an operator's repair, so whatever they still
//!   hold is theirs, visible, and not a leak.
//!
//! Independently of flows: resources are never booked twice, no link carries
//! more bandwidth than it has, meters belong to rules, history chains verify.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use wfm_hub::rules::FlowRules;
use wfm_protocol::flow::{FlowRecord, FlowStatus};
use wfm_protocol::history::{verify_chain, HistoryEvent};
use wfm_protocol::resources::Allocated;
use wfm_protocol::switch::{Cookie, Meter, Rule};
use wfm_protocol::topology::LinkInfo;
use wfm_workers::allocator::Allocation;
use wfm_workers::path::segment_link_id;

/// One switch's tables, as the switch controller's control API shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwitchTable {
    pub switch_id: String,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub meters: Vec<Meter>,
}

/// Everything the checker compares.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// `wfm.flows` by flow id.
    pub flows: BTreeMap<String, FlowRecord>,
    /// Flows whose record changed while the other sources were read: their
    /// rules and allocations may legitimately be caught half-way.
    pub unsettled: BTreeSet<String>,
    /// The resource manager's allocations by flow id.
    pub allocations: BTreeMap<String, Allocation>,
    pub switches: Vec<SwitchTable>,
    /// Directed inter-switch links by [`LinkInfo::id`].
    pub links: BTreeMap<String, LinkInfo>,
    /// Each flow's history in log order, as read: replays after a crash may
    /// have written exact duplicates, which are not violations.
    pub histories: BTreeMap<String, Vec<HistoryEvent>>,
    /// When the snapshot was taken, in ms since the epoch.
    pub taken_at: i64,
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// An `IN_PROGRESS` flow not updated for longer than this is stuck.
    pub stuck_after_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "violation", rename_all = "snake_case")]
pub enum Violation {
    #[error("flow {flow_id} stuck IN_PROGRESS for {age_ms} ms (request {request_id})")]
    StuckInProgress {
        flow_id: String,
        request_id: String,
        age_ms: i64,
    },
    #[error("rule {cookie:#x} on {switch_id} names flow {flow_id}, which does not exist")]
    OrphanRule {
        switch_id: String,
        cookie: Cookie,
        flow_id: String,
    },
    #[error("{status:?} flow {flow_id} has a rule it should not: {cookie:#x} on {switch_id}")]
    ExtraRule {
        flow_id: String,
        status: FlowStatus,
        switch_id: String,
        cookie: Cookie,
    },
    #[error("UP flow {flow_id} misses its rule {cookie:#x} on {switch_id}")]
    MissingRule {
        flow_id: String,
        switch_id: String,
        cookie: Cookie,
    },
    #[error(
        "UP flow {flow_id}: rule {cookie:#x} on {switch_id} differs from what the hub installs"
    )]
    WrongRule {
        flow_id: String,
        switch_id: String,
        cookie: Cookie,
        expected: Box<Rule>,
        actual: Box<Rule>,
    },
    #[error("UP flow {flow_id} has no {missing} in its record")]
    IncompleteRecord {
        flow_id: String,
        missing: &'static str,
    },
    #[error("meter {meter_id} on {switch_id} belongs to no rule")]
    OrphanMeter { switch_id: String, meter_id: u32 },
    #[error("resources of flow {flow_id} are still allocated ({})", Holder(.status))]
    LeakedAllocation {
        flow_id: String,
        status: Option<FlowStatus>,
    },
    #[error("UP flow {flow_id} holds no allocation")]
    MissingAllocation { flow_id: String },
    #[error("UP flow {flow_id}: its record and its allocation differ in {field}")]
    AllocationMismatch {
        flow_id: String,
        field: &'static str,
    },
    #[error("{resource} is booked by several flows: {}", holders.join(", "))]
    DoubleBooked {
        resource: String,
        holders: Vec<String>,
    },
    #[error("flow {flow_id} is routed over link {link_id}, which is not in the topology")]
    UnknownLink { flow_id: String, link_id: String },
    #[error("link {link_id} has {booked_kbps} kbps booked of {capacity_kbps}")]
    LinkOverbooked {
        link_id: String,
        booked_kbps: u64,
        capacity_kbps: u64,
    },
    #[error("history of flow {flow_id}: {error}")]
    BrokenHistory { flow_id: String, error: String },
}

/// How a leaked allocation's flow stands, for the message.
struct Holder<'a>(&'a Option<FlowStatus>);

impl fmt::Display for Holder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(status) => write!(f, "the flow is {}", status.as_str()),
            None => f.write_str("the flow does not exist"),
        }
    }
}

/// What was compared, and what was found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub flows: usize,
    pub flows_by_status: BTreeMap<&'static str, usize>,
    pub unsettled_flows: usize,
    pub allocations: usize,
    pub switches: usize,
    pub rules: usize,
    pub history_events: usize,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

pub fn check(snapshot: &Snapshot, options: &Options) -> Report {
    let mut violations = Vec::new();
    stuck_flows(snapshot, options, &mut violations);
    switch_rules(snapshot, &mut violations);
    switch_meters(snapshot, &mut violations);
    allocations(snapshot, &mut violations);
    bookings(snapshot, &mut violations);
    histories(snapshot, &mut violations);
    let mut flows_by_status = BTreeMap::new();
    for flow in snapshot.flows.values() {
        *flows_by_status.entry(flow.status.as_str()).or_default() += 1;
    }
    Report {
        flows: snapshot.flows.len(),
        flows_by_status,
        unsettled_flows: snapshot.unsettled.len(),
        allocations: snapshot.allocations.len(),
        switches: snapshot.switches.len(),
        rules: snapshot.switches.iter().map(|s| s.rules.len()).sum(),
        history_events: snapshot.histories.values().map(Vec::len).sum(),
        violations,
    }
}

/// A flow's status for judging what it holds; `None` when it is mid-operation.
fn settled_status(snapshot: &Snapshot, flow: &FlowRecord) -> Option<FlowStatus> {
    let settled =
        flow.status != FlowStatus::InProgress && !snapshot.unsettled.contains(&flow.spec.flow_id);
    settled.then_some(flow.status)
}

fn stuck_flows(snapshot: &Snapshot, options: &Options, out: &mut Vec<Violation>) {
    for flow in snapshot.flows.values() {
        let age_ms = snapshot.taken_at - flow.updated_at;
        if flow.status == FlowStatus::InProgress && age_ms > options.stuck_after_ms {
            out.push(Violation::StuckInProgress {
                flow_id: flow.spec.flow_id.clone(),
                request_id: flow.last_request_id.clone(),
                age_ms,
            });
        }
    }
}

/// The rules the hub installs for a flow, from the path and resources in its record.
fn expected_rules(flow: &FlowRecord) -> Result<FlowRules, &'static str> {
    let path = flow.path.clone().ok_or("path")?;
    let resources = flow.resources.clone().ok_or("resources")?;
    let allocated = Allocated {
        request_id: flow.last_request_id.clone(),
        flow_id: flow.spec.flow_id.clone(),
        path,
        resources,
    };
    Ok(FlowRules::of(&flow.spec, &allocated))
}

fn switch_rules(snapshot: &Snapshot, out: &mut Vec<Violation>) {
    let installed: HashMap<(&str, Cookie), &Rule> = snapshot
        .switches
        .iter()
        .flat_map(|s| {
            s.rules
                .iter()
                .map(|r| ((s.switch_id.as_str(), r.cookie), r))
        })
        .collect();
    // Where every settled UP flow's rules should be.
    let mut expected: BTreeSet<(String, Cookie)> = BTreeSet::new();
    for flow in snapshot.flows.values() {
        if settled_status(snapshot, flow) != Some(FlowStatus::Up) {
            continue;
        }
        let flow_id = &flow.spec.flow_id;
        let rules = match expected_rules(flow) {
            Ok(rules) => rules,
            Err(missing) => {
                out.push(Violation::IncompleteRecord {
                    flow_id: flow_id.clone(),
                    missing,
                });
                continue;
            }
        };
        for placed in rules.all() {
            let (switch_id, cookie) = (placed.switch_id.clone(), placed.rule.cookie);
            match installed.get(&(switch_id.as_str(), cookie)) {
                None => out.push(Violation::MissingRule {
                    flow_id: flow_id.clone(),
                    switch_id: switch_id.clone(),
                    cookie,
                }),
                Some(actual) if **actual != placed.rule => out.push(Violation::WrongRule {
                    flow_id: flow_id.clone(),
                    switch_id: switch_id.clone(),
                    cookie,
                    expected: Box::new(placed.rule.clone()),
                    actual: Box::new((*actual).clone()),
                }),
                Some(_) => {}
            }
            expected.insert((switch_id, cookie));
        }
    }
    for switch in &snapshot.switches {
        for rule in &switch.rules {
            let flow_id = &rule.flow_id;
            let Some(flow) = snapshot.flows.get(flow_id) else {
                if !snapshot.unsettled.contains(flow_id) {
                    out.push(Violation::OrphanRule {
                        switch_id: switch.switch_id.clone(),
                        cookie: rule.cookie,
                        flow_id: flow_id.clone(),
                    });
                }
                continue;
            };
            let unexpected = match settled_status(snapshot, flow) {
                Some(FlowStatus::Up) => {
                    !expected.contains(&(switch.switch_id.clone(), rule.cookie))
                }
                Some(FlowStatus::Down) => true,
                Some(FlowStatus::Failed | FlowStatus::InProgress) | None => false,
            };
            if unexpected {
                out.push(Violation::ExtraRule {
                    flow_id: flow_id.clone(),
                    status: flow.status,
                    switch_id: switch.switch_id.clone(),
                    cookie: rule.cookie,
                });
            }
        }
    }
}

fn switch_meters(snapshot: &Snapshot, out: &mut Vec<Violation>) {
    for switch in &snapshot.switches {
        let used: BTreeSet<u32> = switch
            .rules
            .iter()
            .filter_map(|r| r.meter.map(|m| m.meter_id))
            .collect();
        for meter in &switch.meters {
            if !used.contains(&meter.meter_id) {
                out.push(Violation::OrphanMeter {
                    switch_id: switch.switch_id.clone(),
                    meter_id: meter.meter_id,
                });
            }
        }
    }
}

fn allocations(snapshot: &Snapshot, out: &mut Vec<Violation>) {
    for (flow_id, allocation) in &snapshot.allocations {
        if snapshot.unsettled.contains(flow_id) {
            continue;
        }
        let Some(flow) = snapshot.flows.get(flow_id) else {
            out.push(Violation::LeakedAllocation {
                flow_id: flow_id.clone(),
                status: None,
            });
            continue;
        };
        match settled_status(snapshot, flow) {
            Some(FlowStatus::Down) => out.push(Violation::LeakedAllocation {
                flow_id: flow_id.clone(),
                status: Some(FlowStatus::Down),
            }),
            Some(FlowStatus::Up) => {
                let differing = [
                    ("spec", allocation.flow != flow.spec),
                    ("path", flow.path.as_ref() != Some(&allocation.path)),
                    (
                        "resources",
                        flow.resources.as_ref() != Some(&allocation.resources),
                    ),
                ];
                for (field, _) in differing.into_iter().filter(|(_, differs)| *differs) {
                    out.push(Violation::AllocationMismatch {
                        flow_id: flow_id.clone(),
                        field,
                    });
                }
            }
            _ => {}
        }
    }
    for flow in snapshot.flows.values() {
        let flow_id = &flow.spec.flow_id;
        if settled_status(snapshot, flow) == Some(FlowStatus::Up)
            && !snapshot.allocations.contains_key(flow_id)
        {
            out.push(Violation::MissingAllocation {
                flow_id: flow_id.clone(),
            });
        }
    }
}

/// Cookies, meters and transit VLANs held by more than one flow, and links
/// booked beyond their capacity: the resource manager's own accounting,
/// recomputed from the allocations alone.
fn bookings(snapshot: &Snapshot, out: &mut Vec<Violation>) {
    let mut holders: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let mut booked: BTreeMap<String, (u64, BTreeSet<&str>)> = BTreeMap::new();
    for (flow_id, allocation) in &snapshot.allocations {
        let r = &allocation.resources;
        let mut hold = |resource: String| {
            holders.entry(resource).or_default().insert(flow_id);
        };
        for cookie in [r.forward_cookie, r.reverse_cookie] {
            hold(format!("cookie {cookie:#x}"));
        }
        let meters = [
            (&allocation.flow.source.switch_id, r.forward_meter_id),
            (&allocation.flow.destination.switch_id, r.reverse_meter_id),
        ];
        for (switch_id, meter_id) in meters {
            if let Some(meter_id) = meter_id {
                hold(format!("meter {meter_id} on {switch_id}"));
            }
        }
        let directions = [
            (&allocation.path.forward, r.forward_transit_vlan),
            (&allocation.path.reverse, r.reverse_transit_vlan),
        ];
        for (segments, vlan) in directions {
            for segment in segments {
                hold(format!(
                    "transit vlan {vlan} on link {}",
                    segment_link_id(segment)
                ));
            }
        }
        for segment in allocation.path.segments() {
            let (kbps, flows) = booked.entry(segment_link_id(segment)).or_default();
            *kbps += allocation.booked_bandwidth();
            flows.insert(flow_id);
        }
    }
    for (resource, flows) in holders {
        if flows.len() > 1 {
            out.push(Violation::DoubleBooked {
                resource,
                holders: flows.into_iter().map(str::to_owned).collect(),
            });
        }
    }
    for (link_id, (booked_kbps, flows)) in booked {
        match snapshot.links.get(&link_id) {
            None => out.extend(flows.into_iter().map(|flow_id| Violation::UnknownLink {
                flow_id: flow_id.to_owned(),
                link_id: link_id.clone(),
            })),
            Some(link) if booked_kbps > link.bandwidth_kbps => {
                out.push(Violation::LinkOverbooked {
                    link_id,
                    booked_kbps,
                    capacity_kbps: link.bandwidth_kbps,
                })
            }
            Some(_) => {}
        }
    }
}

fn histories(snapshot: &Snapshot, out: &mut Vec<Violation>) {
    for (flow_id, events) in &snapshot.histories {
        let mut distinct: Vec<HistoryEvent> = Vec::with_capacity(events.len());
        for event in events {
            if !distinct.contains(event) {
                distinct.push(event.clone());
            }
        }
        if let Err(error) = verify_chain(&distinct) {
            out.push(Violation::BrokenHistory {
                flow_id: flow_id.clone(),
                error: error.to_string(),
            });
        }
    }
}

#[cfg(test)]
mod tests;
