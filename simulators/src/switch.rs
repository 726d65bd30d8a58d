//! A switch's tables and what each command does to them, free of Kafka and
//! faults: a flow table by cookie and a meter table by meter id.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use wfm_protocol::switch::{
    Cookie, Meter, Rule, SwitchCommand, SwitchError, SwitchErrorCode, SwitchResult, VlanAction,
};
use wfm_protocol::topology::SwitchInfo;

#[derive(Debug, Clone)]
pub struct Switch {
    id: String,
    ports: BTreeSet<u32>,
    rules: BTreeMap<Cookie, Rule>,
    /// Meter id → the meter and the cookie of the rule that owns it.
    meters: BTreeMap<u32, (Meter, Cookie)>,
}

/// A switch as the control API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwitchView {
    pub switch_id: String,
    pub connected: bool,
    /// Commands still to be failed by a `fail-next` fault.
    pub fail_next: u32,
    pub ports: Vec<u32>,
    pub rules: Vec<Rule>,
    pub meters: Vec<Meter>,
}

impl Switch {
    pub fn new(info: &SwitchInfo) -> Self {
        Self {
            id: info.switch_id.clone(),
            ports: info.ports.iter().copied().collect(),
            rules: BTreeMap::new(),
            meters: BTreeMap::new(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Carries out `command` and says how it went.
    pub fn apply(&mut self, command: &SwitchCommand) -> SwitchResult {
        let outcome = match command {
            SwitchCommand::InstallRule { rule, .. } => self.install(rule).map(|()| None),
            SwitchCommand::RemoveRule { cookie, .. } => {
                self.remove(*cookie);
                Ok(None)
            }
            SwitchCommand::VerifyRule { expected, .. } => self.verify(expected).map(|()| None),
            SwitchCommand::DumpRules { .. } => Ok(Some(self.rules.values().cloned().collect())),
        };
        match outcome {
            Ok(rules) => SwitchResult::Ok { rules },
            Err(error) => SwitchResult::Error(error),
        }
    }

    fn install(&mut self, rule: &Rule) -> Result<(), SwitchError> {
        if let Some(existing) = self.rules.get(&rule.cookie) {
            return if existing == rule {
                Ok(())
            } else {
                Err(SwitchError::new(
                    SwitchErrorCode::BadCommand,
                    format!(
                        "cookie {:#x} is taken by a different rule (flow `{}`): {}",
                        rule.cookie,
                        existing.flow_id,
                        differences(rule, existing).join(", ")
                    ),
                ))
            };
        }
        self.check(rule)?;
        if let Some(meter) = rule.meter {
            self.meters.insert(meter.meter_id, (meter, rule.cookie));
        }
        self.rules.insert(rule.cookie, rule.clone());
        Ok(())
    }

    /// Everything that makes a new rule impossible on this switch.
    fn check(&self, rule: &Rule) -> Result<(), SwitchError> {
        let bad = |code, message: String| Err(SwitchError::new(code, message));
        if !self.ports.contains(&rule.actions.out_port) {
            return bad(
                SwitchErrorCode::BadOutPort,
                format!("switch {} has no port {}", self.id, rule.actions.out_port),
            );
        }
        if !self.ports.contains(&rule.matches.in_port) {
            return bad(
                SwitchErrorCode::BadCommand,
                format!("switch {} has no in port {}", self.id, rule.matches.in_port),
            );
        }
        let action_vlans = rule.actions.vlan.iter().filter_map(|a| match a {
            VlanAction::Push { vlan_id } | VlanAction::Set { vlan_id } => Some(*vlan_id),
            VlanAction::Pop => None,
        });
        let match_vlans = [rule.matches.vlan_id, rule.matches.inner_vlan_id];
        if let Some(vlan) = match_vlans
            .into_iter()
            .flatten()
            .chain(action_vlans)
            .find(|v| !(1..=4094).contains(v))
        {
            return bad(
                SwitchErrorCode::BadCommand,
                format!("VLAN {vlan} is outside 1..=4094"),
            );
        }
        if let Some(meter) = rule.meter {
            if let Some((_, owner)) = self.meters.get(&meter.meter_id) {
                return bad(
                    SwitchErrorCode::BadCommand,
                    format!("meter {} is in use by cookie {owner:#x}", meter.meter_id),
                );
            }
        }
        Ok(())
    }

    fn remove(&mut self, cookie: Cookie) {
        if let Some(meter) = self.rules.remove(&cookie).and_then(|rule| rule.meter) {
            self.meters.remove(&meter.meter_id);
        }
    }

    fn verify(&self, expected: &Rule) -> Result<(), SwitchError> {
        let missing = |message: String, actual: Option<&Rule>| SwitchError {
            code: SwitchErrorCode::MissingOfFlows,
            message,
            actual: actual.cloned().map(Box::new),
        };
        let Some(actual) = self.rules.get(&expected.cookie) else {
            return Err(missing(
                format!("no rule with cookie {:#x}", expected.cookie),
                None,
            ));
        };
        let mut diffs = differences(expected, actual);
        if let Some(meter) = expected.meter {
            if self.meters.get(&meter.meter_id).map(|(m, _)| m) != Some(&meter) {
                diffs.push("meter table");
            }
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(missing(
                format!(
                    "rule {:#x} differs in {}",
                    expected.cookie,
                    diffs.join(", ")
                ),
                Some(actual),
            ))
        }
    }

    pub fn view(&self, connected: bool, fail_next: u32) -> SwitchView {
        SwitchView {
            switch_id: self.id.clone(),
            connected,
            fail_next,
            ports: self.ports.iter().copied().collect(),
            rules: self.rules.values().cloned().collect(),
            meters: self.meters.values().map(|(m, _)| *m).collect(),
        }
    }
}

/// The fields in which two rules differ, named as on the wire.
fn differences(a: &Rule, b: &Rule) -> Vec<&'static str> {
    [
        ("kind", a.kind != b.kind),
        ("flow_id", a.flow_id != b.flow_id),
        ("match", a.matches != b.matches),
        ("actions", a.actions != b.actions),
        ("meter", a.meter != b.meter),
    ]
    .into_iter()
    .filter_map(|(name, differs)| differs.then_some(name))
    .collect()
}

/// Every switch of the topology, by id.
#[derive(Debug, Clone, Default)]
pub struct Network {
    switches: HashMap<String, Switch>,
}

impl Network {
    pub fn new<'a>(switches: impl IntoIterator<Item = &'a SwitchInfo>) -> Self {
        Self {
            switches: switches
                .into_iter()
                .map(|info| (info.switch_id.clone(), Switch::new(info)))
                .collect(),
        }
    }

    pub fn get(&self, switch_id: &str) -> Option<&Switch> {
        self.switches.get(switch_id)
    }

    pub fn get_mut(&mut self, switch_id: &str) -> Option<&mut Switch> {
        self.switches.get_mut(switch_id)
    }

    /// Switches sorted by id, for stable listings.
    pub fn sorted(&self) -> Vec<&Switch> {
        let mut switches: Vec<_> = self.switches.values().collect();
        switches.sort_by(|a, b| a.id.cmp(&b.id));
        switches
    }

    pub fn rule_count(&self) -> usize {
        self.switches.values().map(Switch::rule_count).sum()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use wfm_protocol::switch::{CommandHeader, RuleActions, RuleKind, RuleMatch};

    pub fn header(switch_id: &str) -> CommandHeader {
        CommandHeader {
            command_id: "c".into(),
            attempt: 1,
            switch_id: switch_id.into(),
            reply_topic: "replies".into(),
            reply_key: "k".into(),
        }
    }

    pub fn ingress(cookie: Cookie, meter_id: u32) -> Rule {
        Rule {
            cookie,
            kind: RuleKind::Ingress,
            flow_id: format!("flow-{cookie}"),
            matches: RuleMatch {
                in_port: 1,
                vlan_id: Some(100),
                inner_vlan_id: None,
            },
            actions: RuleActions {
                vlan: vec![VlanAction::Push { vlan_id: 2000 }],
                out_port: 9,
            },
            meter: Some(Meter {
                meter_id,
                rate_kbps: 10_000,
            }),
        }
    }

    fn switch() -> Switch {
        Switch::new(&SwitchInfo {
            switch_id: "s1".into(),
            ports: (1..=11).collect(),
        })
    }

    fn install(switch: &mut Switch, rule: &Rule) -> SwitchResult {
        switch.apply(&SwitchCommand::InstallRule {
            header: header("s1"),
            rule: rule.clone(),
        })
    }

    fn verify(switch: &mut Switch, rule: &Rule) -> SwitchResult {
        switch.apply(&SwitchCommand::VerifyRule {
            header: header("s1"),
            expected: rule.clone(),
        })
    }

    fn remove(switch: &mut Switch, cookie: Cookie) -> SwitchResult {
        switch.apply(&SwitchCommand::RemoveRule {
            header: header("s1"),
            cookie,
        })
    }

    fn code(result: SwitchResult) -> Option<SwitchErrorCode> {
        match result {
            SwitchResult::Ok { .. } => None,
            SwitchResult::Error(error) => Some(error.code),
        }
    }

    const OK: SwitchResult = SwitchResult::Ok { rules: None };

    #[test]
    fn install_is_idempotent_and_verify_matches() {
        let mut s = switch();
        let rule = ingress(1, 32);
        assert_eq!(install(&mut s, &rule), OK);
        assert_eq!(install(&mut s, &rule), OK);
        assert_eq!(s.rule_count(), 1);
        assert_eq!(s.view(true, 0).meters, vec![rule.meter.unwrap()]);
        assert_eq!(verify(&mut s, &rule), OK);
    }

    #[test]
    fn conflicting_rule_on_a_cookie_is_a_bad_command_and_changes_nothing() {
        let mut s = switch();
        let rule = ingress(1, 32);
        install(&mut s, &rule);
        let mut other = rule.clone();
        other.actions.out_port = 10;
        match install(&mut s, &other) {
            SwitchResult::Error(e) => {
                assert_eq!(e.code, SwitchErrorCode::BadCommand);
                assert!(e.message.contains("actions"), "{}", e.message);
            }
            ok => panic!("{ok:?}"),
        }
        assert_eq!(verify(&mut s, &rule), OK);
    }

    #[test]
    fn meter_ids_are_exclusive_and_removed_with_their_rule() {
        let mut s = switch();
        install(&mut s, &ingress(1, 32));
        assert_eq!(
            code(install(&mut s, &ingress(2, 32))),
            Some(SwitchErrorCode::BadCommand)
        );
        assert_eq!(remove(&mut s, 1), OK);
        assert!(s.view(true, 0).meters.is_empty());
        assert_eq!(install(&mut s, &ingress(2, 32)), OK);
    }

    #[test]
    fn removing_an_absent_rule_succeeds() {
        let mut s = switch();
        assert_eq!(remove(&mut s, 77), OK);
        install(&mut s, &ingress(1, 32));
        assert_eq!(remove(&mut s, 1), OK);
        assert_eq!(remove(&mut s, 1), OK);
        assert_eq!(s.rule_count(), 0);
    }

    #[test]
    fn invalid_rules_are_refused_with_their_codes() {
        let mut s = switch();
        let mut rule = ingress(1, 32);
        rule.actions.out_port = 99;
        assert_eq!(
            code(install(&mut s, &rule)),
            Some(SwitchErrorCode::BadOutPort)
        );
        let mut rule = ingress(1, 32);
        rule.matches.in_port = 99;
        assert_eq!(
            code(install(&mut s, &rule)),
            Some(SwitchErrorCode::BadCommand)
        );
        let mut rule = ingress(1, 32);
        rule.actions.vlan = vec![VlanAction::Set { vlan_id: 4095 }];
        assert_eq!(
            code(install(&mut s, &rule)),
            Some(SwitchErrorCode::BadCommand)
        );
        assert_eq!(s.rule_count(), 0);
        assert!(s.view(true, 0).meters.is_empty());
    }

    #[test]
    fn verify_reports_absence_and_mismatch() {
        let mut s = switch();
        let rule = ingress(1, 32);
        assert_eq!(
            code(verify(&mut s, &rule)),
            Some(SwitchErrorCode::MissingOfFlows)
        );
        install(&mut s, &rule);
        let mut expected = rule.clone();
        expected.matches.vlan_id = Some(101);
        expected.flow_id = "other".into();
        match verify(&mut s, &expected) {
            SwitchResult::Error(e) => {
                assert_eq!(e.code, SwitchErrorCode::MissingOfFlows);
                assert!(e.message.contains("flow_id, match"), "{}", e.message);
                assert_eq!(e.actual, Some(Box::new(rule)));
            }
            ok => panic!("{ok:?}"),
        }
    }

    #[test]
    fn dump_lists_rules_by_cookie() {
        let mut s = switch();
        install(&mut s, &ingress(5, 1));
        install(&mut s, &ingress(3, 2));
        let dumped = s.apply(&SwitchCommand::DumpRules {
            header: header("s1"),
        });
        let SwitchResult::Ok { rules: Some(rules) } = dumped else {
            panic!("{dumped:?}")
        };
        assert_eq!(
            rules.iter().map(|r| r.cookie).collect::<Vec<_>>(),
            vec![3, 5]
        );
    }
}
