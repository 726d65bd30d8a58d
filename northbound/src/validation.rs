//! Everything checked before a request leaves the process: pure functions,
//! so that a rejected request provably never reaches Kafka.

use wfm_protocol::flow::{FlowEndpoint, FlowSpec};

use crate::model::{EndpointBody, FlowRequest};

pub const MAX_FLOW_ID_LEN: usize = 100;
pub const MAX_DESCRIPTION_LEN: usize = 1024;
pub const MAX_VLAN: u16 = 4095;
pub const MAX_HISTORY_COUNT: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("request body is not a valid flow: {0}")]
    Body(String),
    #[error("invalid query: {0}")]
    Query(String),
    #[error("flow_id must be 1 to {MAX_FLOW_ID_LEN} characters, got {0}")]
    FlowIdLength(usize),
    #[error("flow_id `{0}` may only contain letters, digits and `_ . : -`")]
    FlowIdSyntax(String),
    #[error("{side}.switch_id `{value}` is not a datapath id like 00:00:00:00:00:00:00:01")]
    SwitchId { side: &'static str, value: String },
    #[error("{side}.port_number must be at least 1")]
    Port { side: &'static str },
    #[error("{side}.{field} {value} is out of range 0-{MAX_VLAN}")]
    Vlan {
        side: &'static str,
        field: &'static str,
        value: u16,
    },
    #[error("{side}.inner_vlan_id needs an outer vlan_id")]
    InnerVlanWithoutOuter { side: &'static str },
    #[error("source and destination are the same endpoint")]
    SameEndpoint,
    #[error("description is longer than {MAX_DESCRIPTION_LEN} characters")]
    DescriptionLength,
    #[error("max_count must be 1 to {MAX_HISTORY_COUNT}, got {0}")]
    MaxCount(usize),
    #[error("time_from {from} is after time_to {to}")]
    TimeWindow { from: i64, to: i64 },
    /// The hub found the request invalid (e.g. an endpoint on a link port).
    #[error("{0}")]
    Rejected(String),
}

/// Parses and checks a `POST /v2/flows` body; switch ids come back lower-case,
/// as the topology spells them.
pub fn parse_flow(body: &[u8]) -> Result<FlowSpec, ValidationError> {
    let request: FlowRequest =
        serde_json::from_slice(body).map_err(|e| ValidationError::Body(e.to_string()))?;
    validate_flow_id(&request.flow_id)?;
    if request.description.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(ValidationError::DescriptionLength);
    }
    let source = endpoint("source", &request.source)?;
    let destination = endpoint("destination", &request.destination)?;
    if source == destination {
        return Err(ValidationError::SameEndpoint);
    }
    Ok(FlowSpec {
        flow_id: request.flow_id,
        source,
        destination,
        maximum_bandwidth: request.maximum_bandwidth,
        ignore_bandwidth: request.ignore_bandwidth,
        description: request.description,
        priority: request.priority,
        encapsulation_type: request.encapsulation_type.into(),
    })
}

pub fn validate_flow_id(flow_id: &str) -> Result<(), ValidationError> {
    let len = flow_id.chars().count();
    if len == 0 || len > MAX_FLOW_ID_LEN {
        return Err(ValidationError::FlowIdLength(len));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-');
    if !flow_id.chars().all(allowed) {
        return Err(ValidationError::FlowIdSyntax(flow_id.to_owned()));
    }
    Ok(())
}

/// A datapath id: eight two-digit hex octets separated by colons.
pub fn normalize_switch_id(value: &str) -> Option<String> {
    let octets: Vec<&str> = value.split(':').collect();
    let well_formed = octets.len() == 8
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()));
    well_formed.then(|| value.to_ascii_lowercase())
}

fn endpoint(side: &'static str, body: &EndpointBody) -> Result<FlowEndpoint, ValidationError> {
    let switch_id =
        normalize_switch_id(&body.switch_id).ok_or_else(|| ValidationError::SwitchId {
            side,
            value: body.switch_id.clone(),
        })?;
    if body.port_number == 0 {
        return Err(ValidationError::Port { side });
    }
    for (field, value) in [
        ("vlan_id", body.vlan_id),
        ("inner_vlan_id", body.inner_vlan_id),
    ] {
        if value > MAX_VLAN {
            return Err(ValidationError::Vlan { side, field, value });
        }
    }
    if body.inner_vlan_id != 0 && body.vlan_id == 0 {
        return Err(ValidationError::InnerVlanWithoutOuter { side });
    }
    Ok(FlowEndpoint {
        switch_id,
        port_number: body.port_number,
        vlan_id: body.vlan_id,
        inner_vlan_id: body.inner_vlan_id,
    })
}

/// The history window: `(from, to, max_count)` with defaults filled in.
pub fn history_window(
    time_from: Option<i64>,
    time_to: Option<i64>,
    max_count: Option<usize>,
) -> Result<(i64, i64, usize), ValidationError> {
    let from = time_from.unwrap_or(i64::MIN);
    let to = time_to.unwrap_or(i64::MAX);
    if from > to {
        return Err(ValidationError::TimeWindow { from, to });
    }
    let count = max_count.unwrap_or(100);
    if count == 0 || count > MAX_HISTORY_COUNT {
        return Err(ValidationError::MaxCount(count));
    }
    Ok((from, to, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn valid() -> Value {
        json!({
            "flow_id": "f-1.a:b_c",
            "source": { "switch_id": "00:00:00:00:00:00:00:0A", "port_number": 1, "vlan_id": 100 },
            "destination": { "switch_id": "00:00:00:00:00:00:00:02", "port_number": 2 },
            "maximum_bandwidth": 1000
        })
    }

    fn parse(value: Value) -> Result<FlowSpec, ValidationError> {
        parse_flow(&serde_json::to_vec(&value).unwrap())
    }

    fn with(path: &[&str], value: Value) -> Value {
        let mut body = valid();
        let (last, parents) = path.split_last().unwrap();
        let mut target = &mut body;
        for p in parents {
            target = &mut target[*p];
        }
        target[*last] = value;
        body
    }

    #[test]
    fn a_valid_flow_parses_with_defaults_and_lower_case_switch_ids() {
        let spec = parse(valid()).unwrap();
        assert_eq!(spec.source.switch_id, "00:00:00:00:00:00:00:0a");
        assert_eq!(spec.destination.vlan_id, 0);
        assert_eq!(spec.maximum_bandwidth, 1000);
        assert!(!spec.ignore_bandwidth);
    }

    #[test]
    fn malformed_and_incomplete_bodies_are_rejected() {
        assert!(matches!(
            parse_flow(b"{nope"),
            Err(ValidationError::Body(_))
        ));
        let mut missing = valid();
        missing.as_object_mut().unwrap().remove("destination");
        let error = parse(missing).unwrap_err();
        assert!(
            error.to_string().contains("missing field `destination`"),
            "{error}"
        );
        let error = parse(with(&["bogus"], json!(1))).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `bogus`"),
            "{error}"
        );
        let error = parse(with(&["source", "extra"], json!(1))).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `extra`"),
            "{error}"
        );
        let error = parse(with(&["maximum_bandwidth"], json!(-1))).unwrap_err();
        assert!(error.to_string().contains("-1"), "{error}");
    }

    #[test]
    fn flow_id_syntax_and_length() {
        assert_eq!(
            parse(with(&["flow_id"], json!(""))),
            Err(ValidationError::FlowIdLength(0))
        );
        assert_eq!(
            parse(with(&["flow_id"], json!("x".repeat(101)))),
            Err(ValidationError::FlowIdLength(101))
        );
        assert!(parse(with(&["flow_id"], json!("x".repeat(100)))).is_ok());
        assert!(matches!(
            parse(with(&["flow_id"], json!("a/b"))),
            Err(ValidationError::FlowIdSyntax(_))
        ));
    }

    #[test]
    fn switch_ids_ports_and_vlans() {
        for bad in [
            "",
            "1",
            "00:00:00:00:00:00:00",
            "00:00:00:00:00:00:00:0g",
            "000:00:00:00:00:00:00:01",
        ] {
            assert!(
                matches!(
                    parse(with(&["source", "switch_id"], json!(bad))),
                    Err(ValidationError::SwitchId { side: "source", .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            parse(with(&["destination", "port_number"], json!(0))),
            Err(ValidationError::Port {
                side: "destination"
            })
        );
        assert_eq!(
            parse(with(&["source", "vlan_id"], json!(4096))),
            Err(ValidationError::Vlan {
                side: "source",
                field: "vlan_id",
                value: 4096
            })
        );
        assert!(parse(with(&["source", "vlan_id"], json!(4095))).is_ok());
        assert!(matches!(
            parse(with(&["source", "vlan_id"], json!(70000))),
            Err(ValidationError::Body(_))
        ));
        assert_eq!(
            parse(with(&["destination", "inner_vlan_id"], json!(5))),
            Err(ValidationError::InnerVlanWithoutOuter {
                side: "destination"
            })
        );
    }

    #[test]
    fn same_endpoint_and_long_description() {
        let mut same = valid();
        same["destination"] = same["source"].clone();
        assert_eq!(parse(same), Err(ValidationError::SameEndpoint));
        assert_eq!(
            parse(with(&["description"], json!("d".repeat(1025)))),
            Err(ValidationError::DescriptionLength)
        );
    }

    #[test]
    fn history_window_defaults_and_bounds() {
        assert_eq!(
            history_window(None, None, None),
            Ok((i64::MIN, i64::MAX, 100))
        );
        assert_eq!(
            history_window(Some(5), Some(4), None),
            Err(ValidationError::TimeWindow { from: 5, to: 4 })
        );
        assert_eq!(
            history_window(None, None, Some(0)),
            Err(ValidationError::MaxCount(0))
        );
        assert_eq!(
            history_window(None, None, Some(10_001)),
            Err(ValidationError::MaxCount(10_001))
        );
    }
}
