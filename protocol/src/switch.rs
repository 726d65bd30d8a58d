//! The switch controller's protocol: commands on `wfm.switch` (keyed by switch
//! id) and the replies it sends to whatever topic and key each command names.
//!
//! Semantics every sender can rely on:
//! - Commands are idempotent. Installing a rule that is already there, equal
//!   in every field, succeeds without change; removing an absent rule succeeds.
//! - A rule is identified by its cookie on its switch. Installing a *different*
//!   rule under a cookie already in use fails with [`SwitchErrorCode::BadCommand`].
//! - A rule's meter lives in the switch's meter table under `meter_id`; it is
//!   installed with the rule and removed with it.
//! - Every reply echoes `command_id` and `attempt`, so a sender that uses a
//!   fresh command id (or attempt) per try recognises a late reply to an old try.
//! - A reply's envelope `message_id` is derived from `(command_id, attempt)`,
//!   so a command redelivered after a controller crash yields the same reply id.
//! - Silence is a legitimate outcome (a switch can drop a command): senders
//!   must arm a timeout for every command.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A rule's identity on its switch (OpenFlow cookie).
pub type Cookie = u64;

/// The inbox of the switch controller, on `wfm.switch` keyed by switch id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum SwitchCommand {
    /// Installs `rule` (and its meter, if any).
    InstallRule {
        #[serde(flatten)]
        header: CommandHeader,
        rule: Rule,
    },
    /// Removes the rule with `cookie` and its meter; succeeds if there is none.
    RemoveRule {
        #[serde(flatten)]
        header: CommandHeader,
        cookie: Cookie,
    },
    /// Compares the installed rule with `expected.cookie` to `expected`:
    /// `Ok` if equal (meter included), [`SwitchErrorCode::MissingOfFlows`] if
    /// absent or different (then the error carries the actual rule, if any).
    VerifyRule {
        #[serde(flatten)]
        header: CommandHeader,
        expected: Rule,
    },
    /// Answers `Ok` with every rule on the switch, by ascending cookie.
    DumpRules {
        #[serde(flatten)]
        header: CommandHeader,
    },
}

/// The fields every command carries, whatever its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandHeader {
    /// Chosen by the sender, fresh per command; echoed in the reply.
    pub command_id: String,
    /// Which try of the sender's operation this is; echoed in the reply.
    pub attempt: u32,
    /// Must equal the record key, so that commands to one switch stay in order.
    pub switch_id: String,
    /// Full topic name the reply is produced to (e.g. `wfm.speaker-worker`).
    pub reply_topic: String,
    /// Key of the reply record, e.g. the sender's job key, so the reply lands
    /// on the partition that owns the job.
    pub reply_key: String,
}

/// Command kinds, for per-kind settings such as fault injection rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandType {
    InstallRule,
    RemoveRule,
    VerifyRule,
    DumpRules,
}

impl SwitchCommand {
    pub fn header(&self) -> &CommandHeader {
        match self {
            SwitchCommand::InstallRule { header, .. }
            | SwitchCommand::RemoveRule { header, .. }
            | SwitchCommand::VerifyRule { header, .. }
            | SwitchCommand::DumpRules { header } => header,
        }
    }

    pub fn command_type(&self) -> CommandType {
        match self {
            SwitchCommand::InstallRule { .. } => CommandType::InstallRule,
            SwitchCommand::RemoveRule { .. } => CommandType::RemoveRule,
            SwitchCommand::VerifyRule { .. } => CommandType::VerifyRule,
            SwitchCommand::DumpRules { .. } => CommandType::DumpRules,
        }
    }
}

/// Where a rule sits on a flow's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// First switch: matches customer traffic, usually metered.
    Ingress,
    /// Intermediate switch: matches the transit VLAN on an ISL port.
    Transit,
    /// Last switch: restores customer VLANs and outputs to the customer port.
    Egress,
}

/// One flow-table entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub cookie: Cookie,
    pub kind: RuleKind,
    pub flow_id: String,
    #[serde(rename = "match")]
    pub matches: RuleMatch,
    pub actions: RuleActions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<Meter>,
}

/// Which packets a rule takes. An absent VLAN matches untagged traffic at that level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleMatch {
    pub in_port: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_id: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_vlan_id: Option<u16>,
}

/// What a rule does to its packets: VLAN operations in order, then output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleActions {
    #[serde(default)]
    pub vlan: Vec<VlanAction>,
    pub out_port: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum VlanAction {
    Push { vlan_id: u16 },
    Pop,
    Set { vlan_id: u16 },
}

/// A rate limiter in the switch's meter table, referenced by one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meter {
    pub meter_id: u32,
    pub rate_kbps: u64,
}

/// The controller's outbox: what it produces on a command's reply topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum SwitchResponse {
    SwitchReply(SwitchReply),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwitchReply {
    pub command_id: String,
    pub attempt: u32,
    pub switch_id: String,
    pub result: SwitchResult,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SwitchResult {
    /// The command took effect (or already had). `rules` is set for `dump_rules` only.
    Ok {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rules: Option<Vec<Rule>>,
    },
    Error(SwitchError),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SwitchError {
    pub code: SwitchErrorCode,
    pub message: String,
    /// For a failed `verify_rule`: the rule actually installed under the cookie, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<Box<Rule>>,
}

impl SwitchError {
    pub fn new(code: SwitchErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            actual: None,
        }
    }
}

/// Error codes after OpenKilda's speaker (`ErrorCode`), spelled as it spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SwitchErrorCode {
    /// The switch is unknown or not connected to the controller.
    SwitchUnavailable,
    /// The command contradicts the switch's state (cookie or meter id taken by a
    /// different rule) or is invalid (unknown in port, VLAN out of 1..=4094).
    BadCommand,
    /// Verification found the rule absent or different from what was expected.
    MissingOfFlows,
    /// The rule outputs to a port the switch does not have.
    BadOutPort,
    /// Anything else.
    #[default]
    Unknown,
}

impl SwitchErrorCode {
    /// Whether the same command may succeed if sent again: the switch being
    /// unreachable or failing for unknown reasons can pass, while a command
    /// that is wrong, or a verification that found the rule wrong, will fail
    /// the same way until the sender changes what it sends.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            SwitchErrorCode::SwitchUnavailable | SwitchErrorCode::Unknown
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SwitchErrorCode::SwitchUnavailable => "SWITCH_UNAVAILABLE",
            SwitchErrorCode::BadCommand => "BAD_COMMAND",
            SwitchErrorCode::MissingOfFlows => "MISSING_OF_FLOWS",
            SwitchErrorCode::BadOutPort => "BAD_OUT_PORT",
            SwitchErrorCode::Unknown => "UNKNOWN",
        }
    }
}

impl fmt::Display for SwitchErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SwitchErrorCode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            SwitchErrorCode::SwitchUnavailable,
            SwitchErrorCode::BadCommand,
            SwitchErrorCode::MissingOfFlows,
            SwitchErrorCode::BadOutPort,
            SwitchErrorCode::Unknown,
        ]
        .into_iter()
        .find(|code| code.as_str().eq_ignore_ascii_case(text))
        .ok_or_else(|| format!("unknown switch error code `{text}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;

    fn header() -> CommandHeader {
        CommandHeader {
            command_id: "c1".into(),
            attempt: 2,
            switch_id: "00:00:00:00:00:00:00:01".into(),
            reply_topic: "wfm.speaker-worker".into(),
            reply_key: "job-1".into(),
        }
    }

    #[test]
    fn command_wire_shape_is_flat() {
        let command = SwitchCommand::RemoveRule {
            header: header(),
            cookie: 42,
        };
        let envelope = Envelope::new(&command, "t", "corr").unwrap();
        assert_eq!(envelope.kind, "remove_rule");
        assert_eq!(envelope.payload_value()["command_id"], "c1");
        assert_eq!(envelope.payload_value()["cookie"], 42);
        assert_eq!(envelope.open::<SwitchCommand>().unwrap(), command);
        assert_eq!(command.command_type(), CommandType::RemoveRule);
    }

    #[test]
    fn rule_and_reply_round_trip() {
        let rule = Rule {
            cookie: u64::MAX,
            kind: RuleKind::Ingress,
            flow_id: "f".into(),
            matches: RuleMatch {
                in_port: 1,
                vlan_id: Some(100),
                inner_vlan_id: None,
            },
            actions: RuleActions {
                vlan: vec![VlanAction::Push { vlan_id: 3000 }, VlanAction::Pop],
                out_port: 9,
            },
            meter: Some(Meter {
                meter_id: 32,
                rate_kbps: 1000,
            }),
        };
        let command = SwitchCommand::InstallRule {
            header: header(),
            rule: rule.clone(),
        };
        let envelope = Envelope::new(&command, "t", "corr").unwrap();
        assert_eq!(envelope.payload_value()["rule"]["match"]["vlan_id"], 100);
        assert_eq!(
            envelope.payload_value()["rule"]["actions"]["vlan"][0]["op"],
            "push"
        );
        assert_eq!(envelope.open::<SwitchCommand>().unwrap(), command);

        let reply = SwitchResponse::SwitchReply(SwitchReply {
            command_id: "c1".into(),
            attempt: 2,
            switch_id: "s".into(),
            result: SwitchResult::Error(SwitchError {
                code: SwitchErrorCode::MissingOfFlows,
                message: "differs".into(),
                actual: Some(Box::new(rule)),
            }),
        });
        let envelope = Envelope::new(&reply, "t", "corr").unwrap();
        assert_eq!(envelope.kind, "switch_reply");
        assert_eq!(envelope.payload_value()["result"]["status"], "error");
        assert_eq!(
            envelope.payload_value()["result"]["code"],
            "MISSING_OF_FLOWS"
        );
        assert_eq!(envelope.open::<SwitchResponse>().unwrap(), reply);
    }

    #[test]
    fn error_codes_parse_and_classify() {
        for text in [
            "SWITCH_UNAVAILABLE",
            "bad_command",
            "MISSING_OF_FLOWS",
            "BAD_OUT_PORT",
            "UNKNOWN",
        ] {
            let code: SwitchErrorCode = text.parse().unwrap();
            assert!(code.as_str().eq_ignore_ascii_case(text));
        }
        assert!("nope".parse::<SwitchErrorCode>().is_err());
        assert!(SwitchErrorCode::SwitchUnavailable.is_retryable());
        assert!(!SwitchErrorCode::BadOutPort.is_retryable());
    }
}
