//! Allocation state of the resource manager, without I/O: which flow holds
//! which path, cookies, meters, transit VLANs and link bandwidth.
//!
//! Everything a flow holds is derived from its [`Allocation`] alone, so the
//! state restored from the changelog (one allocation per live flow) books
//! exactly what the live flows hold: bandwidth used on a link is always the
//! sum over the allocations whose path crosses it.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use wfm_protocol::flow::{FlowEndpoint, FlowPath, FlowResources, FlowSpec, PathSegment};
use wfm_protocol::resources::AllocationErrorCode;

use crate::id_set::{lowest_free, IdSet};
use crate::network::Network;
use crate::path::{flow_path, segment_link_id, PathError};

/// Marks a cookie as the forward (`0x4…`) or reverse (`0x2…`) rule of a flow, as OpenKilda does.
pub const FORWARD_COOKIE_FLAG: u64 = 0x4000_0000_0000_0000;
pub const REVERSE_COOKIE_FLAG: u64 = 0x2000_0000_0000_0000;
/// Lower meter ids are reserved for switch-wide (default) rules.
pub const MIN_METER_ID: u32 = 32;
pub const MAX_METER_ID: u32 = 2_500;
pub const MIN_TRANSIT_VLAN: u16 = 2;
pub const MAX_TRANSIT_VLAN: u16 = 4_094;

/// What one flow holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    pub flow: FlowSpec,
    pub path: FlowPath,
    pub resources: FlowResources,
}

impl Allocation {
    /// Bandwidth taken on every link of the path; none for a flow that ignores bandwidth.
    pub fn booked_bandwidth(&self) -> u64 {
        if self.flow.ignore_bandwidth {
            0
        } else {
            self.flow.maximum_bandwidth
        }
    }

    fn meters(&self) -> [(&str, Option<u32>); 2] {
        [
            (&self.flow.source.switch_id, self.resources.forward_meter_id),
            (
                &self.flow.destination.switch_id,
                self.resources.reverse_meter_id,
            ),
        ]
    }

    fn transit_vlans(&self) -> [(&[PathSegment], u16); 2] {
        [
            (&self.path.forward, self.resources.forward_transit_vlan),
            (&self.path.reverse, self.resources.reverse_transit_vlan),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    #[error("switch {0} is not in the topology")]
    UnknownSwitch(String),
    #[error("switch {switch_id} has no port {port}")]
    UnknownPort { switch_id: String, port: u32 },
    #[error("port {port} of switch {switch_id} carries an inter-switch link")]
    IslPort { switch_id: String, port: u32 },
    #[error(
        "endpoint {switch_id} port {port} vlan {vlan_id}/{inner_vlan_id} is taken by flow {holder}"
    )]
    EndpointConflict {
        switch_id: String,
        port: u32,
        vlan_id: u16,
        inner_vlan_id: u16,
        holder: String,
    },
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("no free {0} left")]
    Exhausted(String),
}

impl AllocationError {
    pub fn code(&self) -> AllocationErrorCode {
        match self {
            AllocationError::UnknownSwitch(_) => AllocationErrorCode::UnknownSwitch,
            AllocationError::UnknownPort { .. } => AllocationErrorCode::UnknownPort,
            AllocationError::IslPort { .. } => AllocationErrorCode::IslPort,
            AllocationError::EndpointConflict { .. } => AllocationErrorCode::EndpointConflict,
            AllocationError::Path(PathError::NoPath { .. }) => AllocationErrorCode::NoPath,
            AllocationError::Path(PathError::NotEnoughBandwidth { .. }) => {
                AllocationErrorCode::NotEnoughBandwidth
            }
            AllocationError::Exhausted(_) => AllocationErrorCode::ResourcesExhausted,
        }
    }
}

type EndpointKey = (String, u32, u16, u16);

fn endpoint_key(endpoint: &FlowEndpoint) -> EndpointKey {
    (
        endpoint.switch_id.clone(),
        endpoint.port_number,
        endpoint.vlan_id,
        endpoint.inner_vlan_id,
    )
}

/// Whether an allocate booked something new or found the flow already allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Booking {
    New,
    Existing,
}

#[derive(Debug, Default)]
pub struct Allocator {
    allocations: HashMap<String, Allocation>,
    used_bandwidth: HashMap<String, u64>,
    /// Cookie numbers (without direction flags) in use.
    cookies: BTreeSet<u64>,
    /// Never handed out again in this incarnation, so that a rule left behind
    /// by a removed flow is not mistaken for one of a new flow.
    next_cookie: u64,
    meters: HashMap<String, IdSet>,
    /// Transit VLANs in use per link: a transit rule matches its in-port and
    /// VLAN, so a VLAN only has to be unique on each link it crosses.
    transit_vlans: HashMap<String, IdSet>,
    endpoints: HashMap<EndpointKey, String>,
}

impl Allocator {
    /// State holding exactly `allocations`, e.g. as restored from the changelog.
    pub fn restore(allocations: impl IntoIterator<Item = Allocation>) -> Self {
        let mut allocator = Self::default();
        for allocation in allocations {
            allocator.book(allocation);
        }
        allocator
    }

    pub fn get(&self, flow_id: &str) -> Option<&Allocation> {
        self.allocations.get(flow_id)
    }

    pub fn len(&self) -> usize {
        self.allocations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.allocations.is_empty()
    }

    pub fn used_bandwidth(&self, link_id: &str) -> u64 {
        self.used_bandwidth.get(link_id).copied().unwrap_or(0)
    }

    /// Allocates `flow`, or returns what it already holds: a retried request
    /// never books twice. Nothing is booked when an error is returned.
    pub fn allocate(
        &mut self,
        network: &Network,
        flow: &FlowSpec,
    ) -> Result<(&Allocation, Booking), AllocationError> {
        if self.allocations.contains_key(&flow.flow_id) {
            return Ok((&self.allocations[&flow.flow_id], Booking::Existing));
        }
        let allocation = self.plan(network, flow)?;
        let flow_id = allocation.flow.flow_id.clone();
        self.book(allocation);
        Ok((&self.allocations[&flow_id], Booking::New))
    }

    /// Frees everything `flow_id` holds; `None` if it held nothing.
    pub fn deallocate(&mut self, flow_id: &str) -> Option<Allocation> {
        let allocation = self.allocations.remove(flow_id)?;
        let bandwidth = allocation.booked_bandwidth();
        for segment in allocation.path.segments() {
            let link = segment_link_id(segment);
            if let Some(used) = self.used_bandwidth.get_mut(&link) {
                *used = used.saturating_sub(bandwidth);
                if *used == 0 {
                    self.used_bandwidth.remove(&link);
                }
            }
        }
        self.cookies.remove(&cookie_number(&allocation.resources));
        for (switch, meter) in allocation.meters() {
            if let (Some(meters), Some(meter)) = (self.meters.get_mut(switch), meter) {
                meters.remove(meter);
            }
        }
        for (segments, vlan) in allocation.transit_vlans() {
            for segment in segments {
                if let Some(vlans) = self.transit_vlans.get_mut(&segment_link_id(segment)) {
                    vlans.remove(u32::from(vlan));
                }
            }
        }
        for endpoint in [&allocation.flow.source, &allocation.flow.destination] {
            self.endpoints.remove(&endpoint_key(endpoint));
        }
        Some(allocation)
    }

    fn plan(&self, network: &Network, flow: &FlowSpec) -> Result<Allocation, AllocationError> {
        for endpoint in [&flow.source, &flow.destination] {
            self.validate_endpoint(network, endpoint)?;
        }
        if endpoint_key(&flow.source) == endpoint_key(&flow.destination) {
            return Err(conflict(&flow.destination, &flow.flow_id));
        }
        let bandwidth = (!flow.ignore_bandwidth).then_some(flow.maximum_bandwidth);
        let path = flow_path(
            network,
            &flow.source.switch_id,
            &flow.destination.switch_id,
            bandwidth,
            |id, link| link.bandwidth_kbps.saturating_sub(self.used_bandwidth(id)),
        )?;
        let cookie = self.free_cookie()?;
        let metered = !flow.ignore_bandwidth && flow.maximum_bandwidth > 0;
        let (forward_meter_id, reverse_meter_id) = if metered {
            let forward = self.free_meter(&flow.source.switch_id, None)?;
            let reverse = self.free_meter(&flow.destination.switch_id, Some(forward))?;
            (Some(forward), Some(reverse))
        } else {
            (None, None)
        };
        let resources = FlowResources {
            forward_cookie: FORWARD_COOKIE_FLAG | cookie,
            reverse_cookie: REVERSE_COOKIE_FLAG | cookie,
            forward_meter_id,
            reverse_meter_id,
            forward_transit_vlan: self.free_transit_vlan(&path.forward)?,
            reverse_transit_vlan: self.free_transit_vlan(&path.reverse)?,
        };
        Ok(Allocation {
            flow: flow.clone(),
            path,
            resources,
        })
    }

    fn validate_endpoint(
        &self,
        network: &Network,
        endpoint: &FlowEndpoint,
    ) -> Result<(), AllocationError> {
        let switch_id = &endpoint.switch_id;
        let port = endpoint.port_number;
        let ports = network
            .ports(switch_id)
            .ok_or_else(|| AllocationError::UnknownSwitch(switch_id.clone()))?;
        if !ports.contains(&port) {
            return Err(AllocationError::UnknownPort {
                switch_id: switch_id.clone(),
                port,
            });
        }
        if network.is_isl_port(switch_id, port) {
            return Err(AllocationError::IslPort {
                switch_id: switch_id.clone(),
                port,
            });
        }
        match self.endpoints.get(&endpoint_key(endpoint)) {
            Some(holder) => Err(conflict(endpoint, holder)),
            None => Ok(()),
        }
    }

    fn free_cookie(&self) -> Result<u64, AllocationError> {
        let limit = REVERSE_COOKIE_FLAG - 1;
        (self.next_cookie.max(1)..=limit)
            .find(|n| !self.cookies.contains(n))
            .ok_or_else(|| AllocationError::Exhausted("cookie".into()))
    }

    /// The lowest meter id free on `switch_id`, other than `taken` (the
    /// forward meter, when a one-switch flow puts both on one switch).
    fn free_meter(&self, switch_id: &str, taken: Option<u32>) -> Result<u32, AllocationError> {
        let used = self.meters.get(switch_id);
        let free_from = |first: u32| lowest_free(used.into_iter(), first..=MAX_METER_ID);
        match free_from(MIN_METER_ID) {
            Some(id) if Some(id) == taken => free_from(id + 1),
            free => free,
        }
        .ok_or_else(|| AllocationError::Exhausted(format!("meter on {switch_id}")))
    }

    /// The lowest VLAN free on every link of `segments`; 0 (none) for an empty path.
    fn free_transit_vlan(&self, segments: &[PathSegment]) -> Result<u16, AllocationError> {
        if segments.is_empty() {
            return Ok(0);
        }
        let links: Vec<&IdSet> = segments
            .iter()
            .filter_map(|segment| self.transit_vlans.get(&segment_link_id(segment)))
            .collect();
        let range = u32::from(MIN_TRANSIT_VLAN)..=u32::from(MAX_TRANSIT_VLAN);
        lowest_free(links.into_iter(), range)
            .map(|vlan| u16::try_from(vlan).expect("a VLAN of the range"))
            .ok_or_else(|| AllocationError::Exhausted("transit vlan".into()))
    }

    fn book(&mut self, allocation: Allocation) {
        let bandwidth = allocation.booked_bandwidth();
        for segment in allocation.path.segments() {
            *self
                .used_bandwidth
                .entry(segment_link_id(segment))
                .or_default() += bandwidth;
        }
        let cookie = cookie_number(&allocation.resources);
        self.cookies.insert(cookie);
        self.next_cookie = self.next_cookie.max(cookie + 1);
        for (switch, meter) in allocation.meters() {
            if let Some(meter) = meter {
                self.meters
                    .entry(switch.to_owned())
                    .or_default()
                    .insert(meter);
            }
        }
        for (segments, vlan) in allocation.transit_vlans() {
            for segment in segments {
                self.transit_vlans
                    .entry(segment_link_id(segment))
                    .or_default()
                    .insert(u32::from(vlan));
            }
        }
        for endpoint in [&allocation.flow.source, &allocation.flow.destination] {
            self.endpoints
                .insert(endpoint_key(endpoint), allocation.flow.flow_id.clone());
        }
        self.allocations
            .insert(allocation.flow.flow_id.clone(), allocation);
    }
}

fn cookie_number(resources: &FlowResources) -> u64 {
    resources.forward_cookie & !FORWARD_COOKIE_FLAG
}

fn conflict(endpoint: &FlowEndpoint, holder: &str) -> AllocationError {
    AllocationError::EndpointConflict {
        switch_id: endpoint.switch_id.clone(),
        port: endpoint.port_number,
        vlan_id: endpoint.vlan_id,
        inner_vlan_id: endpoint.inner_vlan_id,
        holder: holder.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::tests::{link, switch};
    use wfm_protocol::topology::{switch_id, TopologyRecord};

    /// A line 1 — 2 — 3 with 1,000 kbps links.
    fn line() -> Network {
        let mut records: Vec<TopologyRecord> = (1..=3).map(switch).collect();
        records.extend(link(1, 2, 1_000, 1));
        records.extend(link(2, 3, 1_000, 1));
        Network::from_records(records)
    }

    pub fn flow(id: &str, src: (u64, u32, u16), dst: (u64, u32, u16), bandwidth: u64) -> FlowSpec {
        let endpoint = |(n, port, vlan): (u64, u32, u16)| FlowEndpoint {
            switch_id: switch_id(n),
            port_number: port,
            vlan_id: vlan,
            inner_vlan_id: 0,
        };
        FlowSpec {
            flow_id: id.into(),
            source: endpoint(src),
            destination: endpoint(dst),
            maximum_bandwidth: bandwidth,
            ignore_bandwidth: false,
            description: String::new(),
            priority: None,
            encapsulation_type: Default::default(),
        }
    }

    fn used_everywhere(allocator: &Allocator, network: &Network) -> Vec<u64> {
        let mut ids: Vec<String> = (1..=3)
            .flat_map(|n| {
                network
                    .links_from(&switch_id(n))
                    .map(|(id, _)| id.to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        ids.sort();
        ids.iter().map(|id| allocator.used_bandwidth(id)).collect()
    }

    #[test]
    fn allocates_unique_resources_and_books_bandwidth() {
        let network = line();
        let mut allocator = Allocator::default();
        let (a, booking) = allocator
            .allocate(&network, &flow("a", (1, 1, 10), (3, 1, 10), 300))
            .unwrap();
        assert_eq!(booking, Booking::New);
        let a = a.clone();
        assert_eq!(a.path.forward.len(), 2);
        assert_eq!(a.resources.forward_meter_id, Some(MIN_METER_ID));
        let b = allocator
            .allocate(&network, &flow("b", (1, 1, 20), (3, 1, 20), 200))
            .unwrap()
            .0
            .clone();
        assert_ne!(a.resources.forward_cookie, b.resources.forward_cookie);
        assert_ne!(a.resources.reverse_cookie, b.resources.reverse_cookie);
        assert_ne!(
            a.resources.forward_transit_vlan,
            b.resources.forward_transit_vlan
        );
        assert_ne!(a.resources.forward_meter_id, b.resources.forward_meter_id);
        assert_eq!(used_everywhere(&allocator, &network), vec![500; 4]);
    }

    #[test]
    fn repeated_allocate_and_deallocate_are_idempotent() {
        let network = line();
        let mut allocator = Allocator::default();
        let spec = flow("a", (1, 1, 0), (2, 1, 0), 100);
        let first = allocator.allocate(&network, &spec).unwrap().0.clone();
        let (again, booking) = allocator.allocate(&network, &spec).unwrap();
        assert_eq!((again, booking), (&first, Booking::Existing));
        assert_eq!(
            allocator.used_bandwidth(&segment_link_id(&first.path.forward[0])),
            100
        );
        assert!(allocator.deallocate("a").is_some());
        assert!(allocator.deallocate("a").is_none());
        assert!(allocator.is_empty());
        assert_eq!(used_everywhere(&allocator, &network), vec![0; 4]);
        // Everything freed can be taken again, but never the same cookie.
        let next = allocator.allocate(&network, &spec).unwrap().0;
        assert_eq!(
            next.resources.forward_meter_id,
            first.resources.forward_meter_id
        );
        assert_ne!(
            next.resources.forward_cookie,
            first.resources.forward_cookie
        );
    }

    #[test]
    fn endpoint_validation() {
        let network = line();
        let mut allocator = Allocator::default();
        let cases = [
            (
                flow("x", (9, 1, 0), (2, 1, 0), 0),
                AllocationErrorCode::UnknownSwitch,
            ),
            (
                flow("x", (1, 99, 0), (2, 1, 0), 0),
                AllocationErrorCode::UnknownPort,
            ),
            (
                flow("x", (1, 12, 0), (2, 1, 0), 0),
                AllocationErrorCode::IslPort,
            ),
            (
                flow("x", (1, 1, 5), (1, 1, 5), 0),
                AllocationErrorCode::EndpointConflict,
            ),
        ];
        for (spec, code) in cases {
            assert_eq!(
                allocator.allocate(&network, &spec).unwrap_err().code(),
                code
            );
        }
        allocator
            .allocate(&network, &flow("a", (1, 1, 5), (2, 1, 0), 0))
            .unwrap();
        let taken = flow("b", (2, 2, 0), (1, 1, 5), 0);
        assert_eq!(
            allocator.allocate(&network, &taken).unwrap_err().code(),
            AllocationErrorCode::EndpointConflict
        );
        // Another VLAN on the same port is another endpoint.
        allocator
            .allocate(&network, &flow("c", (1, 1, 6), (2, 1, 6), 0))
            .unwrap();
    }

    #[test]
    fn last_bandwidth_goes_to_one_flow_only() {
        let network = line();
        let mut allocator = Allocator::default();
        allocator
            .allocate(&network, &flow("a", (1, 1, 1), (3, 1, 1), 600))
            .unwrap();
        let failed = allocator
            .allocate(&network, &flow("b", (1, 1, 2), (3, 1, 2), 600))
            .unwrap_err();
        assert_eq!(failed.code(), AllocationErrorCode::NotEnoughBandwidth);
        assert_eq!(used_everywhere(&allocator, &network), vec![600; 4]);
        allocator
            .allocate(&network, &flow("c", (1, 1, 3), (3, 1, 3), 400))
            .unwrap();
        assert_eq!(used_everywhere(&allocator, &network), vec![1_000; 4]);
    }

    #[test]
    fn unmetered_and_one_switch_flows() {
        let network = line();
        let mut allocator = Allocator::default();
        let mut ignoring = flow("a", (1, 1, 0), (3, 1, 0), 5_000);
        ignoring.ignore_bandwidth = true;
        let a = allocator.allocate(&network, &ignoring).unwrap().0.clone();
        assert_eq!(a.resources.forward_meter_id, None);
        assert_eq!(used_everywhere(&allocator, &network), vec![0; 4]);

        let one = allocator
            .allocate(&network, &flow("b", (2, 1, 0), (2, 2, 0), 10))
            .unwrap()
            .0;
        assert!(one.path.forward.is_empty());
        assert_eq!(one.resources.forward_transit_vlan, 0);
        assert_ne!(
            one.resources.forward_meter_id,
            one.resources.reverse_meter_id
        );
    }

    #[test]
    fn restore_books_exactly_the_live_allocations() {
        let network = line();
        let mut allocator = Allocator::default();
        for (i, bandwidth) in [100, 250, 40].into_iter().enumerate() {
            let vlan = i as u16 + 1;
            allocator
                .allocate(
                    &network,
                    &flow(&format!("f{i}"), (1, 1, vlan), (3, 1, vlan), bandwidth),
                )
                .unwrap();
        }
        allocator.deallocate("f1");
        let live: Vec<Allocation> = ["f0", "f2"]
            .iter()
            .map(|id| allocator.get(id).unwrap().clone())
            .collect();
        let mut restored = Allocator::restore(live);
        assert_eq!(used_everywhere(&restored, &network), vec![140; 4]);
        assert_eq!(
            used_everywhere(&restored, &network),
            used_everywhere(&allocator, &network)
        );
        let next = restored
            .allocate(&network, &flow("f3", (1, 1, 1), (3, 1, 9), 0))
            .unwrap_err();
        assert_eq!(next.code(), AllocationErrorCode::EndpointConflict);
    }
}
