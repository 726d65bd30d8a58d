//! Path computation: the lowest-latency path (fewest hops among equals) over
//! links that can carry the flow's bandwidth, in each direction.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use wfm_protocol::flow::{FlowPath, PathSegment};
use wfm_protocol::topology::LinkInfo;

use crate::network::Network;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("no path from {src} to {dst}")]
    NoPath { src: String, dst: String },
    #[error("no path from {src} to {dst} with {bandwidth_kbps} kbps available")]
    NotEnoughBandwidth {
        src: String,
        dst: String,
        bandwidth_kbps: u64,
    },
}

/// Forward (`src` → `dst`) and reverse paths. With `bandwidth_kbps`, only
/// links whose `available(link)` covers it are used, counting the forward
/// path's own use when the reverse path is chosen. A one-switch flow has empty
/// paths. `available` gets each link with its id, so that callers can look
/// their bookings up by id without formatting it per link.
pub fn flow_path(
    network: &Network,
    src: &str,
    dst: &str,
    bandwidth_kbps: Option<u64>,
    available: impl Fn(&str, &LinkInfo) -> u64,
) -> Result<FlowPath, PathError> {
    if src == dst {
        return Ok(FlowPath::default());
    }
    let Some(bandwidth) = bandwidth_kbps else {
        let forward = shortest(network, src, dst, |_, _| true);
        let reverse = shortest(network, dst, src, |_, _| true);
        return match (forward, reverse) {
            (Some(forward), Some(reverse)) => Ok(FlowPath { forward, reverse }),
            _ => Err(no_path(src, dst)),
        };
    };
    let forward = shortest(network, src, dst, |id, l| available(id, l) >= bandwidth);
    let reverse = forward.as_ref().and_then(|forward| {
        let forward_ids: Vec<String> = forward.iter().map(segment_link_id).collect();
        shortest(network, dst, src, |id, l| {
            let taken = if forward_ids.iter().any(|f| f == id) {
                bandwidth
            } else {
                0
            };
            available(id, l).saturating_sub(taken) >= bandwidth
        })
    });
    match (forward, reverse) {
        (Some(forward), Some(reverse)) => Ok(FlowPath { forward, reverse }),
        // Tell an operator whether more capacity would help.
        _ => match flow_path(network, src, dst, None, available) {
            Ok(_) => Err(PathError::NotEnoughBandwidth {
                src: src.to_owned(),
                dst: dst.to_owned(),
                bandwidth_kbps: bandwidth,
            }),
            Err(error) => Err(error),
        },
    }
}

/// The link id a segment stands for (the same as [`LinkInfo::id`]).
pub fn segment_link_id(segment: &PathSegment) -> String {
    format!(
        "{}/{}-{}/{}",
        segment.src_switch, segment.src_port, segment.dst_switch, segment.dst_port
    )
}

fn no_path(src: &str, dst: &str) -> PathError {
    PathError::NoPath {
        src: src.to_owned(),
        dst: dst.to_owned(),
    }
}

/// Dijkstra over the links `admits`, by (total latency, hop count).
fn shortest(
    network: &Network,
    src: &str,
    dst: &str,
    admits: impl Fn(&str, &LinkInfo) -> bool,
) -> Option<Vec<PathSegment>> {
    network.ports(src)?;
    network.ports(dst)?;
    let mut best: HashMap<&str, (u64, u32)> = HashMap::from([(src, (0, 0))]);
    let mut via: HashMap<&str, &LinkInfo> = HashMap::new();
    let mut queue = BinaryHeap::from([Reverse((0u64, 0u32, src))]);
    while let Some(Reverse((latency, hops, switch))) = queue.pop() {
        if switch == dst {
            break;
        }
        if best.get(switch).is_some_and(|b| *b < (latency, hops)) {
            continue;
        }
        for (_, link) in network.links_from(switch).filter(|(id, l)| admits(id, l)) {
            let next = link.dst.switch_id.as_str();
            let cost = (latency.saturating_add(link.latency_ms), hops + 1);
            if best.get(next).is_none_or(|b| cost < *b) {
                best.insert(next, cost);
                via.insert(next, link);
                queue.push(Reverse((cost.0, cost.1, next)));
            }
        }
    }
    let mut segments = Vec::new();
    let mut at = dst;
    while at != src {
        let link = via.get(at)?;
        segments.push(PathSegment {
            src_switch: link.src.switch_id.clone(),
            src_port: link.src.port,
            dst_switch: link.dst.switch_id.clone(),
            dst_port: link.dst.port,
        });
        at = &link.src.switch_id;
    }
    segments.reverse();
    Some(segments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::tests::{link, switch};
    use wfm_protocol::topology::{switch_id, TopologyRecord};

    /// 1 — 2 — 3 direct (latency 2), and a detour 1 — 4 — 5 — 3 (latency 3).
    fn diamond(direct_bandwidth: u64) -> Network {
        let mut records: Vec<TopologyRecord> = (1..=5).map(switch).collect();
        records.extend(link(1, 2, direct_bandwidth, 1));
        records.extend(link(2, 3, direct_bandwidth, 1));
        records.extend(link(1, 4, 1_000, 1));
        records.extend(link(4, 5, 1_000, 1));
        records.extend(link(5, 3, 1_000, 1));
        Network::from_records(records)
    }

    fn switches(segments: &[PathSegment]) -> Vec<String> {
        let mut out: Vec<String> = segments.iter().map(|s| s.src_switch.clone()).collect();
        out.extend(segments.last().map(|s| s.dst_switch.clone()));
        out
    }

    fn full(_: &str, link: &LinkInfo) -> u64 {
        link.bandwidth_kbps
    }

    #[test]
    fn shortest_path_both_directions() {
        let network = diamond(1_000);
        let path = flow_path(&network, &switch_id(1), &switch_id(3), Some(10), full).unwrap();
        let ids = |ns: &[u64]| ns.iter().map(|n| switch_id(*n)).collect::<Vec<_>>();
        assert_eq!(switches(&path.forward), ids(&[1, 2, 3]));
        assert_eq!(switches(&path.reverse), ids(&[3, 2, 1]));
        assert_eq!(
            network
                .link(&segment_link_id(&path.forward[0]))
                .unwrap()
                .src
                .switch_id,
            switch_id(1)
        );
    }

    #[test]
    fn bandwidth_constrained_detour() {
        let network = diamond(50);
        let path = flow_path(&network, &switch_id(1), &switch_id(3), Some(100), full).unwrap();
        let ids = |ns: &[u64]| ns.iter().map(|n| switch_id(*n)).collect::<Vec<_>>();
        assert_eq!(switches(&path.forward), ids(&[1, 4, 5, 3]));
        assert_eq!(switches(&path.reverse), ids(&[3, 5, 4, 1]));
        // Without a bandwidth requirement the short way is fine.
        let path = flow_path(&network, &switch_id(1), &switch_id(3), None, full).unwrap();
        assert_eq!(path.forward.len(), 2);
    }

    #[test]
    fn not_enough_bandwidth_differs_from_no_path() {
        let network = diamond(50);
        assert!(matches!(
            flow_path(&network, &switch_id(1), &switch_id(3), Some(5_000), full),
            Err(PathError::NotEnoughBandwidth {
                bandwidth_kbps: 5_000,
                ..
            })
        ));
        let mut records: Vec<TopologyRecord> = (1..=3).map(switch).collect();
        records.extend(link(1, 2, 100, 1));
        let islands = Network::from_records(records);
        assert!(matches!(
            flow_path(&islands, &switch_id(1), &switch_id(3), Some(1), full),
            Err(PathError::NoPath { .. })
        ));
        assert!(matches!(
            flow_path(&islands, &switch_id(1), &switch_id(9), None, full),
            Err(PathError::NoPath { .. })
        ));
    }

    #[test]
    fn one_switch_flow_has_empty_paths() {
        let network = diamond(10);
        let path = flow_path(
            &network,
            &switch_id(2),
            &switch_id(2),
            Some(1_000_000),
            full,
        )
        .unwrap();
        assert_eq!(path, FlowPath::default());
    }
}
