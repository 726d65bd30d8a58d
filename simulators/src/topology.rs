//! The simulated network: switches with ports and the links between them,
//! loaded from a JSON or TOML file or generated, and checked for consistency
//! before anything is published.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use wfm_protocol::topology::{switch_id, LinkEnd, LinkInfo, SwitchInfo, TopologyRecord};

/// Ports `1..=CUSTOMER_PORTS` of a generated switch face customers; links use the ones above.
pub const CUSTOMER_PORTS: u32 = 8;
const LINK_BANDWIDTH_KBPS: u64 = 10_000_000;

/// A topology as written in a file: each link once, standing for both directions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub switches: Vec<SwitchInfo>,
    #[serde(default)]
    pub links: Vec<LinkInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("reading topology file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing topology file {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("topology has no switches")]
    Empty,
    #[error("switch `{0}` is listed twice")]
    DuplicateSwitch(String),
    #[error("switch `{0}` has no ports")]
    NoPorts(String),
    #[error("link {link} refers to unknown switch `{switch_id}`")]
    UnknownSwitch { link: String, switch_id: String },
    #[error("link {link} uses port {port} that switch `{switch_id}` does not have")]
    UnknownPort {
        link: String,
        switch_id: String,
        port: u32,
    },
    #[error("port {port} of switch `{switch_id}` is used by more than one link")]
    PortReused { switch_id: String, port: u32 },
    #[error("link {0} loops back to its own switch")]
    SelfLoop(String),
}

impl Default for Topology {
    /// Six switches in a ring with two chords: every pair of switches has at
    /// least two disjoint paths, and some pairs have paths of different lengths.
    fn default() -> Self {
        Self::ring(6)
    }
}

impl Topology {
    /// `count` switches numbered from 1 in a ring, each also linked to the
    /// switch opposite it when it is odd-numbered, so that paths are redundant
    /// whatever the size. Ports: customers `1..=8`, ring 9 (next) and 10
    /// (previous), chord 11.
    pub fn ring(count: u64) -> Self {
        let switches = (1..=count)
            .map(|n| SwitchInfo {
                switch_id: switch_id(n),
                ports: (1..=CUSTOMER_PORTS + 3).collect(),
            })
            .collect();
        let end = |n: u64, port: u32| LinkEnd {
            switch_id: switch_id(n),
            port,
        };
        let link = |src, dst, latency_ms| LinkInfo {
            src,
            dst,
            bandwidth_kbps: LINK_BANDWIDTH_KBPS,
            latency_ms,
        };
        let mut links = Vec::new();
        if count >= 2 {
            // A two-switch "ring" would link the same pair twice; one link suffices.
            let ring_links = if count == 2 { 1 } else { count };
            for n in 1..=ring_links {
                let next = n % count + 1;
                links.push(link(
                    end(n, CUSTOMER_PORTS + 1),
                    end(next, CUSTOMER_PORTS + 2),
                    1,
                ));
            }
        }
        if count >= 5 {
            let half = count / 2;
            for n in (1..=half).step_by(2) {
                links.push(link(
                    end(n, CUSTOMER_PORTS + 3),
                    end(n + half, CUSTOMER_PORTS + 3),
                    5,
                ));
            }
        }
        Self { switches, links }
    }

    /// Loads a topology from `path`, TOML if it ends in `.toml`, JSON otherwise.
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: shown.clone(),
            source,
        })?;
        let parsed = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).map_err(|e| e.to_string())
        } else {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        };
        let topology: Self = parsed.map_err(|reason| TopologyError::Parse {
            path: shown,
            reason,
        })?;
        topology.validate()?;
        Ok(topology)
    }

    pub fn validate(&self) -> Result<(), TopologyError> {
        if self.switches.is_empty() {
            return Err(TopologyError::Empty);
        }
        let mut ports: HashMap<&str, HashSet<u32>> = HashMap::new();
        for switch in &self.switches {
            if switch.ports.is_empty() {
                return Err(TopologyError::NoPorts(switch.switch_id.clone()));
            }
            let set = switch.ports.iter().copied().collect();
            if ports.insert(&switch.switch_id, set).is_some() {
                return Err(TopologyError::DuplicateSwitch(switch.switch_id.clone()));
            }
        }
        let mut used = HashSet::new();
        for link in &self.links {
            if link.src.switch_id == link.dst.switch_id {
                return Err(TopologyError::SelfLoop(link.id()));
            }
            for end in [&link.src, &link.dst] {
                let Some(switch_ports) = ports.get(end.switch_id.as_str()) else {
                    return Err(TopologyError::UnknownSwitch {
                        link: link.id(),
                        switch_id: end.switch_id.clone(),
                    });
                };
                if !switch_ports.contains(&end.port) {
                    return Err(TopologyError::UnknownPort {
                        link: link.id(),
                        switch_id: end.switch_id.clone(),
                        port: end.port,
                    });
                }
                if !used.insert(end) {
                    return Err(TopologyError::PortReused {
                        switch_id: end.switch_id.clone(),
                        port: end.port,
                    });
                }
            }
        }
        Ok(())
    }

    /// What is published on `wfm.topology`: every switch, then both directions of every link.
    pub fn records(&self) -> Vec<TopologyRecord> {
        let switches = self.switches.iter().map(|s| {
            let mut switch = s.clone();
            switch.ports = s
                .ports
                .iter()
                .copied()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            TopologyRecord::Switch(switch)
        });
        let links = self.links.iter().flat_map(|l| {
            [
                TopologyRecord::Link(l.clone()),
                TopologyRecord::Link(l.reversed()),
            ]
        });
        switches.chain(links).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Switches still connected to the first one once `cut` links are removed.
    fn reachable(topology: &Topology, cut: &[usize]) -> usize {
        let mut seen = HashSet::from([topology.switches[0].switch_id.as_str()]);
        let mut frontier = vec![topology.switches[0].switch_id.as_str()];
        while let Some(at) = frontier.pop() {
            for (i, link) in topology.links.iter().enumerate() {
                if cut.contains(&i) {
                    continue;
                }
                for (a, b) in [(&link.src, &link.dst), (&link.dst, &link.src)] {
                    if a.switch_id == at && seen.insert(b.switch_id.as_str()) {
                        frontier.push(b.switch_id.as_str());
                    }
                }
            }
        }
        seen.len()
    }

    #[test]
    fn default_is_valid_and_survives_any_single_link_failure() {
        let topology = Topology::default();
        topology.validate().unwrap();
        assert!(topology.switches.len() >= 6);
        for cut in 0..topology.links.len() {
            assert_eq!(
                reachable(&topology, &[cut]),
                topology.switches.len(),
                "cut {cut}"
            );
        }
        let records = topology.records();
        assert_eq!(
            records.len(),
            topology.switches.len() + 2 * topology.links.len()
        );
        let keys: HashSet<_> = records.iter().map(TopologyRecord::key).collect();
        assert_eq!(keys.len(), records.len(), "every record has its own key");
    }

    #[test]
    fn generated_topologies_of_any_size_are_valid() {
        for count in [1, 2, 3, 5, 7, 2000] {
            Topology::ring(count).validate().unwrap();
        }
    }

    #[test]
    fn loads_toml_and_json() {
        let dir = std::env::temp_dir().join(format!("wfm-topology-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml_path = dir.join("net.toml");
        std::fs::write(
            &toml_path,
            r#"
            [[switches]]
            switch_id = "00:00:00:00:00:00:00:0a"
            ports = [1, 2]
            [[switches]]
            switch_id = "00:00:00:00:00:00:00:0b"
            ports = [1, 2]
            [[links]]
            src = { switch_id = "00:00:00:00:00:00:00:0a", port = 2 }
            dst = { switch_id = "00:00:00:00:00:00:00:0b", port = 2 }
            bandwidth_kbps = 1000
            latency_ms = 3
            "#,
        )
        .unwrap();
        let from_toml = Topology::load(&toml_path).unwrap();
        assert_eq!(from_toml.links[0].latency_ms, 3);
        let json_path = dir.join("net.json");
        std::fs::write(&json_path, serde_json::to_string(&from_toml).unwrap()).unwrap();
        assert_eq!(Topology::load(&json_path).unwrap(), from_toml);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn inconsistent_topologies_are_rejected() {
        let mut topology = Topology::ring(3);
        topology.links[0].dst.port = 99;
        assert!(matches!(
            topology.validate(),
            Err(TopologyError::UnknownPort { port: 99, .. })
        ));
        let mut topology = Topology::ring(3);
        topology.links[1].src = topology.links[0].src.clone();
        assert!(matches!(
            topology.validate(),
            Err(TopologyError::PortReused { .. })
        ));
        let mut topology = Topology::ring(3);
        topology.links[0].dst.switch_id = "nope".into();
        assert!(matches!(
            topology.validate(),
            Err(TopologyError::UnknownSwitch { .. })
        ));
        let mut topology = Topology::ring(3);
        topology.switches.push(topology.switches[0].clone());
        assert!(matches!(
            topology.validate(),
            Err(TopologyError::DuplicateSwitch(_))
        ));
        assert!(matches!(
            Topology {
                switches: vec![],
                links: vec![]
            }
            .validate(),
            Err(TopologyError::Empty)
        ));
    }
}
