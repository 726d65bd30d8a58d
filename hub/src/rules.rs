//! The switch rules a flow needs, from its endpoints, path and resources.
//!
//! Each direction has one cookie, shared by its rules on different switches:
//! an ingress rule on the first switch (customer VLAN → transit VLAN, metered),
//! transit rules on intermediate switches, and an egress rule on the last
//! (transit VLAN → customer VLAN). A one-switch flow has one ingress rule per
//! direction that goes straight from customer port to customer port.

use wfm_protocol::flow::{FlowEndpoint, FlowSpec, PathSegment};
use wfm_protocol::resources::Allocated;
use wfm_protocol::speaker::{SwitchAction, SwitchOperation};
use wfm_protocol::switch::{Meter, Rule, RuleActions, RuleKind, RuleMatch, VlanAction};

#[derive(Debug, Clone, PartialEq)]
pub struct PlacedRule {
    pub switch_id: String,
    pub rule: Rule,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct FlowRules {
    pub ingress: Vec<PlacedRule>,
    /// Transit and egress rules: installed first, so that traffic entering at
    /// the ingress never meets a path that is not there yet.
    pub non_ingress: Vec<PlacedRule>,
}

struct Direction<'a> {
    cookie: u64,
    meter_id: Option<u32>,
    transit_vlan: u16,
    from: &'a FlowEndpoint,
    to: &'a FlowEndpoint,
    path: &'a [PathSegment],
}

impl FlowRules {
    pub fn of(spec: &FlowSpec, allocation: &Allocated) -> Self {
        let r = &allocation.resources;
        let directions = [
            Direction {
                cookie: r.forward_cookie,
                meter_id: r.forward_meter_id,
                transit_vlan: r.forward_transit_vlan,
                from: &spec.source,
                to: &spec.destination,
                path: &allocation.path.forward,
            },
            Direction {
                cookie: r.reverse_cookie,
                meter_id: r.reverse_meter_id,
                transit_vlan: r.reverse_transit_vlan,
                from: &spec.destination,
                to: &spec.source,
                path: &allocation.path.reverse,
            },
        ];
        let mut rules = FlowRules::default();
        for direction in &directions {
            rules.add_direction(spec, direction);
        }
        rules
    }

    fn add_direction(&mut self, spec: &FlowSpec, d: &Direction<'_>) {
        let meter = d.meter_id.map(|meter_id| Meter {
            meter_id,
            rate_kbps: spec.maximum_bandwidth,
        });
        let rule = |kind, matches, vlan, out_port, meter| Rule {
            cookie: d.cookie,
            kind,
            flow_id: spec.flow_id.clone(),
            matches,
            actions: RuleActions { vlan, out_port },
            meter,
        };
        let customer_match = RuleMatch {
            in_port: d.from.port_number,
            vlan_id: tag(d.from.vlan_id),
            inner_vlan_id: tag(d.from.inner_vlan_id),
        };
        let (Some(first), Some(last)) = (d.path.first(), d.path.last()) else {
            // One switch: customer port to customer port, VLAN rewritten in place.
            self.ingress.push(PlacedRule {
                switch_id: d.from.switch_id.clone(),
                rule: rule(
                    RuleKind::Ingress,
                    customer_match,
                    retag(d.from.vlan_id, d.to.vlan_id),
                    d.to.port_number,
                    meter,
                ),
            });
            return;
        };
        self.ingress.push(PlacedRule {
            switch_id: d.from.switch_id.clone(),
            rule: rule(
                RuleKind::Ingress,
                customer_match,
                retag(d.from.vlan_id, d.transit_vlan),
                first.src_port,
                meter,
            ),
        });
        for pair in d.path.windows(2) {
            let (arrive, leave) = (&pair[0], &pair[1]);
            self.non_ingress.push(PlacedRule {
                switch_id: arrive.dst_switch.clone(),
                rule: rule(
                    RuleKind::Transit,
                    transit_match(arrive.dst_port, d.transit_vlan),
                    Vec::new(),
                    leave.src_port,
                    None,
                ),
            });
        }
        self.non_ingress.push(PlacedRule {
            switch_id: last.dst_switch.clone(),
            rule: rule(
                RuleKind::Egress,
                transit_match(last.dst_port, d.transit_vlan),
                retag(d.transit_vlan, d.to.vlan_id),
                d.to.port_number,
                None,
            ),
        });
    }

    pub fn all(&self) -> impl Iterator<Item = &PlacedRule> {
        self.non_ingress.iter().chain(self.ingress.iter())
    }
}

fn tag(vlan: u16) -> Option<u16> {
    (vlan != 0).then_some(vlan)
}

fn transit_match(in_port: u32, transit_vlan: u16) -> RuleMatch {
    RuleMatch {
        in_port,
        vlan_id: Some(transit_vlan),
        inner_vlan_id: None,
    }
}

/// VLAN actions that turn outer tag `from` into `to` (0 = untagged).
fn retag(from: u16, to: u16) -> Vec<VlanAction> {
    match (from, to) {
        (a, b) if a == b => Vec::new(),
        (0, to) => vec![VlanAction::Push { vlan_id: to }],
        (_, 0) => vec![VlanAction::Pop],
        (_, to) => vec![VlanAction::Set { vlan_id: to }],
    }
}

pub fn install(rules: &[PlacedRule]) -> Vec<SwitchOperation> {
    operations(rules, |rule| SwitchAction::Install { rule })
}

pub fn verify(rules: &[PlacedRule]) -> Vec<SwitchOperation> {
    operations(rules, |rule| SwitchAction::Verify { rule })
}

pub fn remove<'a>(rules: impl Iterator<Item = &'a PlacedRule>) -> Vec<SwitchOperation> {
    rules
        .map(|placed| SwitchOperation {
            switch_id: placed.switch_id.clone(),
            action: SwitchAction::Remove {
                cookie: placed.rule.cookie,
            },
        })
        .collect()
}

fn operations(rules: &[PlacedRule], action: impl Fn(Rule) -> SwitchAction) -> Vec<SwitchOperation> {
    rules
        .iter()
        .map(|placed| SwitchOperation {
            switch_id: placed.switch_id.clone(),
            action: action(placed.rule.clone()),
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use wfm_protocol::flow::{FlowPath, FlowResources};

    pub fn endpoint(switch: &str, port: u32, vlan: u16) -> FlowEndpoint {
        FlowEndpoint {
            switch_id: switch.into(),
            port_number: port,
            vlan_id: vlan,
            inner_vlan_id: 0,
        }
    }

    pub fn spec(from: FlowEndpoint, to: FlowEndpoint) -> FlowSpec {
        FlowSpec {
            flow_id: "f1".into(),
            source: from,
            destination: to,
            maximum_bandwidth: 1000,
            ignore_bandwidth: false,
            description: String::new(),
            priority: None,
            encapsulation_type: Default::default(),
        }
    }

    fn seg(a: &str, ap: u32, b: &str, bp: u32) -> PathSegment {
        PathSegment {
            src_switch: a.into(),
            src_port: ap,
            dst_switch: b.into(),
            dst_port: bp,
        }
    }

    pub fn allocation(path: FlowPath) -> Allocated {
        Allocated {
            request_id: "r1".into(),
            flow_id: "f1".into(),
            path,
            resources: FlowResources {
                forward_cookie: 0x10,
                reverse_cookie: 0x11,
                forward_meter_id: Some(32),
                reverse_meter_id: Some(33),
                forward_transit_vlan: 2001,
                reverse_transit_vlan: 2002,
            },
        }
    }

    pub fn three_switch_path() -> FlowPath {
        FlowPath {
            forward: vec![seg("A", 1, "B", 2), seg("B", 3, "C", 4)],
            reverse: vec![seg("C", 4, "B", 3), seg("B", 2, "A", 1)],
        }
    }

    #[test]
    fn three_switch_flow_has_ingress_transit_and_egress_per_direction() {
        let spec = spec(endpoint("A", 10, 100), endpoint("C", 20, 0));
        let rules = FlowRules::of(&spec, &allocation(three_switch_path()));
        assert_eq!(rules.ingress.len(), 2);
        assert_eq!(rules.non_ingress.len(), 4);

        let fwd_ingress = &rules.ingress[0];
        assert_eq!(fwd_ingress.switch_id, "A");
        assert_eq!(fwd_ingress.rule.matches.in_port, 10);
        assert_eq!(fwd_ingress.rule.matches.vlan_id, Some(100));
        assert_eq!(
            fwd_ingress.rule.actions.vlan,
            vec![VlanAction::Set { vlan_id: 2001 }]
        );
        assert_eq!(fwd_ingress.rule.actions.out_port, 1);
        assert_eq!(fwd_ingress.rule.meter.unwrap().meter_id, 32);

        let transit = &rules.non_ingress[0];
        assert_eq!(
            (transit.switch_id.as_str(), transit.rule.kind),
            ("B", RuleKind::Transit)
        );
        assert_eq!(transit.rule.matches.in_port, 2);
        assert_eq!(transit.rule.actions.out_port, 3);

        let egress = &rules.non_ingress[1];
        assert_eq!(
            (egress.switch_id.as_str(), egress.rule.kind),
            ("C", RuleKind::Egress)
        );
        assert_eq!(egress.rule.actions.vlan, vec![VlanAction::Pop]);
        assert_eq!(egress.rule.actions.out_port, 20);

        // Reverse: untagged customer at C gets the transit tag pushed.
        let rev_ingress = &rules.ingress[1];
        assert_eq!(rev_ingress.switch_id, "C");
        assert_eq!(rev_ingress.rule.cookie, 0x11);
        assert_eq!(rev_ingress.rule.matches.vlan_id, None);
        assert_eq!(
            rev_ingress.rule.actions.vlan,
            vec![VlanAction::Push { vlan_id: 2002 }]
        );
        let rev_egress = &rules.non_ingress[3];
        assert_eq!(rev_egress.switch_id, "A");
        assert_eq!(
            rev_egress.rule.actions.vlan,
            vec![VlanAction::Set { vlan_id: 100 }]
        );
        assert_eq!(rev_egress.rule.actions.out_port, 10);
    }

    #[test]
    fn one_switch_flow_has_only_ingress_rules() {
        let spec = spec(endpoint("A", 10, 100), endpoint("A", 11, 100));
        let rules = FlowRules::of(&spec, &allocation(FlowPath::default()));
        assert!(rules.non_ingress.is_empty());
        assert_eq!(rules.ingress.len(), 2);
        assert_eq!(rules.ingress[0].rule.actions.out_port, 11);
        assert!(rules.ingress[0].rule.actions.vlan.is_empty());
        assert_eq!(rules.ingress[1].rule.actions.out_port, 10);
    }

    #[test]
    fn removal_covers_every_rule_once() {
        let spec = spec(endpoint("A", 10, 0), endpoint("C", 20, 0));
        let rules = FlowRules::of(&spec, &allocation(three_switch_path()));
        let removals = remove(rules.all());
        assert_eq!(removals.len(), 6);
        let mut placed: Vec<_> = removals
            .iter()
            .map(|o| (o.switch_id.clone(), o.cookie()))
            .collect();
        placed.sort();
        placed.dedup();
        assert_eq!(placed.len(), 6);
    }
}
