use wfm_protocol::flow::{FlowEndpoint, FlowPath, FlowResources, FlowSpec, PathSegment};
use wfm_protocol::history::HistoryDraft;
use wfm_protocol::topology::LinkEnd;

use super::*;

const NOW: i64 = 1_000_000;
const OPTIONS: Options = Options {
    stuck_after_ms: 60_000,
};

fn endpoint(switch: &str, port: u32, vlan: u16) -> FlowEndpoint {
    FlowEndpoint {
        switch_id: switch.into(),
        port_number: port,
        vlan_id: vlan,
        inner_vlan_id: 0,
    }
}

fn segment(a: &str, ap: u32, b: &str, bp: u32) -> PathSegment {
    PathSegment {
        src_switch: a.into(),
        src_port: ap,
        dst_switch: b.into(),
        dst_port: bp,
    }
}

fn link(segment: &PathSegment, bandwidth_kbps: u64) -> LinkInfo {
    LinkInfo {
        src: LinkEnd {
            switch_id: segment.src_switch.clone(),
            port: segment.src_port,
        },
        dst: LinkEnd {
            switch_id: segment.dst_switch.clone(),
            port: segment.dst_port,
        },
        bandwidth_kbps,
        latency_ms: 1,
    }
}

/// Flow `n` from A to B over the one link, holding cookie `n`, meters
/// `32 + n` and transit VLAN `100 + n`.
fn allocation(n: u64) -> Allocation {
    let flow = FlowSpec {
        flow_id: format!("f{n}"),
        source: endpoint("A", 10 + n as u32, 0),
        destination: endpoint("B", 10 + n as u32, 7),
        maximum_bandwidth: 1_000,
        ignore_bandwidth: false,
        description: String::new(),
        priority: None,
        encapsulation_type: Default::default(),
    };
    Allocation {
        flow,
        path: FlowPath {
            forward: vec![segment("A", 1, "B", 1)],
            reverse: vec![segment("B", 1, "A", 1)],
        },
        resources: FlowResources {
            forward_cookie: 0x4000_0000_0000_0000 | n,
            reverse_cookie: 0x2000_0000_0000_0000 | n,
            forward_meter_id: Some(32 + n as u32),
            reverse_meter_id: Some(32 + n as u32),
            forward_transit_vlan: 100 + n as u16,
            reverse_transit_vlan: 100 + n as u16,
        },
    }
}

fn record(allocation: &Allocation, status: FlowStatus) -> FlowRecord {
    FlowRecord {
        spec: allocation.flow.clone(),
        status,
        status_info: None,
        path: Some(allocation.path.clone()),
        resources: Some(allocation.resources.clone()),
        last_request_id: format!("r-{}", allocation.flow.flow_id),
        created_at: NOW - 5_000,
        updated_at: NOW - 1_000,
    }
}

fn history(flow_id: &str, events: usize) -> Vec<HistoryEvent> {
    let mut chain: Vec<HistoryEvent> = Vec::new();
    for i in 0..events {
        let previous = chain.last().map(|e| (e.seq, e.hash.as_str()));
        let draft = HistoryDraft {
            request_id: "r".into(),
            correlation_id: "c".into(),
            actor: "hub".into(),
            action: format!("step-{i}"),
            from_state: None,
            to_state: None,
            details: String::new(),
            at: i as i64,
        };
        chain.push(draft.chain(flow_id, previous));
    }
    chain
}

/// A consistent system: two UP flows with their rules, allocations and history.
fn healthy() -> Snapshot {
    let mut snapshot = Snapshot {
        taken_at: NOW,
        ..Snapshot::default()
    };
    let mut tables: BTreeMap<String, SwitchTable> = ["A", "B"]
        .into_iter()
        .map(|id| {
            let table = SwitchTable {
                switch_id: id.into(),
                rules: Vec::new(),
                meters: Vec::new(),
            };
            (id.to_owned(), table)
        })
        .collect();
    for n in 1..=2 {
        let allocation = allocation(n);
        let flow = record(&allocation, FlowStatus::Up);
        for placed in expected_rules(&flow).unwrap().all() {
            let table = tables.get_mut(&placed.switch_id).unwrap();
            table.meters.extend(placed.rule.meter);
            table.rules.push(placed.rule.clone());
        }
        let flow_id = flow.spec.flow_id.clone();
        for segment in allocation.path.segments() {
            snapshot
                .links
                .insert(segment_link_id(segment), link(segment, 10_000));
        }
        snapshot
            .histories
            .insert(flow_id.clone(), history(&flow_id, 4));
        snapshot.allocations.insert(flow_id.clone(), allocation);
        snapshot.flows.insert(flow_id, flow);
    }
    snapshot.switches = tables.into_values().collect();
    snapshot
}

fn violations(snapshot: &Snapshot) -> Vec<Violation> {
    check(snapshot, &OPTIONS).violations
}

fn remove_rules_of(snapshot: &mut Snapshot, flow_id: &str) {
    for table in &mut snapshot.switches {
        table.rules.retain(|r| r.flow_id != flow_id);
        let used: Vec<u32> = table
            .rules
            .iter()
            .filter_map(|r| r.meter.map(|m| m.meter_id))
            .collect();
        table.meters.retain(|m| used.contains(&m.meter_id));
    }
}

#[test]
fn a_consistent_system_has_no_violation() {
    let report = check(&healthy(), &OPTIONS);
    assert_eq!(report.violations, vec![]);
    assert!(report.is_clean());
    assert_eq!(report.flows, 2);
    assert_eq!(report.rules, 8);
    assert_eq!(report.history_events, 8);
    assert_eq!(report.flows_by_status["UP"], 2);
}

#[test]
fn a_flow_in_progress_past_the_deadline_is_stuck() {
    let mut snapshot = healthy();
    let flow = snapshot.flows.get_mut("f1").unwrap();
    flow.status = FlowStatus::InProgress;
    flow.updated_at = NOW - 60_001;
    assert_eq!(
        violations(&snapshot),
        vec![Violation::StuckInProgress {
            flow_id: "f1".into(),
            request_id: "r-f1".into(),
            age_ms: 60_001,
        }]
    );
    // Within its deadline it is just busy, whatever it holds at the moment.
    snapshot.flows.get_mut("f1").unwrap().updated_at = NOW - 59_000;
    remove_rules_of(&mut snapshot, "f1");
    assert_eq!(violations(&snapshot), vec![]);
}

#[test]
fn missing_wrong_and_extra_rules_of_an_up_flow_are_reported() {
    let mut snapshot = healthy();
    let a = &mut snapshot.switches[0];
    let missing = a.rules.remove(0);
    let wrong = &mut a.rules[0];
    wrong.actions.out_port += 1;
    let wrong = wrong.clone();
    let mut extra = wrong.clone();
    extra.cookie = 0x99;
    extra.meter = None;
    a.rules.push(extra);

    let found = violations(&snapshot);
    assert!(found.contains(&Violation::MissingRule {
        flow_id: missing.flow_id.clone(),
        switch_id: "A".into(),
        cookie: missing.cookie,
    }));
    assert!(found.iter().any(|v| matches!(v,
        Violation::WrongRule { cookie, actual, .. } if *cookie == wrong.cookie && **actual == wrong)));
    assert!(found.contains(&Violation::ExtraRule {
        flow_id: wrong.flow_id.clone(),
        status: FlowStatus::Up,
        switch_id: "A".into(),
        cookie: 0x99,
    }));
    assert_eq!(found.len(), 3, "{found:#?}");
}

#[test]
fn rules_of_deleted_and_down_flows_are_reported_but_failed_flows_keep_theirs() {
    let mut snapshot = healthy();
    snapshot.flows.remove("f1");
    snapshot.allocations.remove("f1");
    snapshot.flows.get_mut("f2").unwrap().status = FlowStatus::Down;
    snapshot.allocations.remove("f2");
    let found = violations(&snapshot);
    let orphans = found
        .iter()
        .filter(|v| matches!(v, Violation::OrphanRule { flow_id, .. } if flow_id == "f1"))
        .count();
    let extras = found
        .iter()
        .filter(|v| matches!(v, Violation::ExtraRule { flow_id, status: FlowStatus::Down, .. } if flow_id == "f2"))
        .count();
    assert_eq!((orphans, extras, found.len()), (4, 4, 8), "{found:#?}");

    snapshot.flows.get_mut("f2").unwrap().status = FlowStatus::Failed;
    remove_rules_of(&mut snapshot, "f1");
    assert_eq!(violations(&snapshot), vec![]);
}

#[test]
fn a_flow_that_changed_during_the_snapshot_is_not_judged() {
    let mut snapshot = healthy();
    snapshot.flows.remove("f1");
    snapshot.unsettled.insert("f1".into());
    assert_eq!(violations(&snapshot), vec![]);
}

#[test]
fn a_meter_without_its_rule_is_reported() {
    let mut snapshot = healthy();
    snapshot.switches[1].meters.push(Meter {
        meter_id: 2_000,
        rate_kbps: 5,
    });
    assert_eq!(
        violations(&snapshot),
        vec![Violation::OrphanMeter {
            switch_id: "B".into(),
            meter_id: 2_000,
        }]
    );
}

#[test]
fn leaked_and_missing_allocations_are_reported() {
    let mut snapshot = healthy();
    // Deleted, rules gone, resources still held.
    snapshot.flows.remove("f1");
    remove_rules_of(&mut snapshot, "f1");
    // Rolled back to DOWN, rules gone, resources still held.
    let extra = allocation(3);
    snapshot
        .flows
        .insert("f3".into(), record(&extra, FlowStatus::Down));
    snapshot.allocations.insert("f3".into(), extra);
    // UP with its rules but without its allocation.
    snapshot.allocations.remove("f2");
    assert_eq!(
        violations(&snapshot),
        vec![
            Violation::LeakedAllocation {
                flow_id: "f1".into(),
                status: None,
            },
            Violation::LeakedAllocation {
                flow_id: "f3".into(),
                status: Some(FlowStatus::Down),
            },
            Violation::MissingAllocation {
                flow_id: "f2".into()
            },
        ]
    );
    assert_eq!(
        violations(&snapshot)[0].to_string(),
        "resources of flow f1 are still allocated (the flow does not exist)"
    );
}

#[test]
fn a_record_that_disagrees_with_its_allocation_is_reported() {
    let mut snapshot = healthy();
    let allocation = snapshot.allocations.get_mut("f1").unwrap();
    allocation.resources.forward_transit_vlan = 999;
    allocation.flow.maximum_bandwidth = 1;
    assert_eq!(
        violations(&snapshot),
        vec![
            Violation::AllocationMismatch {
                flow_id: "f1".into(),
                field: "spec",
            },
            Violation::AllocationMismatch {
                flow_id: "f1".into(),
                field: "resources",
            },
        ]
    );
}

#[test]
fn an_up_flow_without_path_is_incomplete() {
    let mut snapshot = healthy();
    snapshot.flows.get_mut("f1").unwrap().path = None;
    let found = violations(&snapshot);
    assert!(found.contains(&Violation::IncompleteRecord {
        flow_id: "f1".into(),
        missing: "path",
    }));
}

#[test]
fn double_bookings_and_overbooked_or_unknown_links_are_reported() {
    let mut snapshot = healthy();
    let f2 = snapshot.allocations.get_mut("f2").unwrap();
    f2.resources.forward_cookie = 0x4000_0000_0000_0001;
    f2.resources.forward_transit_vlan = 101;
    f2.flow.maximum_bandwidth = 9_500;
    snapshot.flows.get_mut("f2").unwrap().spec.maximum_bandwidth = 9_500;
    let found = check(
        &snapshot,
        &Options {
            stuck_after_ms: i64::MAX,
        },
    )
    .violations;
    let link = "A/1-B/1";
    for expected in [
        Violation::DoubleBooked {
            resource: "cookie 0x4000000000000001".into(),
            holders: vec!["f1".into(), "f2".into()],
        },
        Violation::DoubleBooked {
            resource: format!("transit vlan 101 on link {link}"),
            holders: vec!["f1".into(), "f2".into()],
        },
        Violation::LinkOverbooked {
            link_id: link.into(),
            booked_kbps: 10_500,
            capacity_kbps: 10_000,
        },
    ] {
        assert!(found.contains(&expected), "{expected:?} in {found:#?}");
    }

    let mut snapshot = healthy();
    snapshot.links.remove(link);
    assert_eq!(
        violations(&snapshot),
        vec![
            Violation::UnknownLink {
                flow_id: "f1".into(),
                link_id: link.into(),
            },
            Violation::UnknownLink {
                flow_id: "f2".into(),
                link_id: link.into(),
            },
        ]
    );
}

#[test]
fn replayed_duplicates_pass_but_a_broken_chain_does_not() {
    let mut snapshot = healthy();
    let events = snapshot.histories.get_mut("f1").unwrap();
    let replayed = events[1..3].to_vec();
    events.extend(replayed);
    assert_eq!(violations(&snapshot), vec![]);

    snapshot.histories.get_mut("f2").unwrap().remove(1);
    assert_eq!(
        violations(&snapshot),
        vec![Violation::BrokenHistory {
            flow_id: "f2".into(),
            error: "event 2 of flow f2: does not follow the previous event".into(),
        }]
    );
}

#[test]
fn violations_serialize_with_their_kind() {
    let json = serde_json::to_value(Violation::OrphanMeter {
        switch_id: "A".into(),
        meter_id: 40,
    })
    .unwrap();
    assert_eq!(
        json,
        serde_json::json!({ "violation": "orphan_meter", "switch_id": "A", "meter_id": 40 })
    );
}
