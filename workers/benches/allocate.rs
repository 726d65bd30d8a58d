//! Allocation on a 100-switch topology (a 10 × 10 grid, links with varied
//! latencies) already holding 1,000 flows: one allocate (validation, path
//! computation in both directions, cookie, meters, transit VLANs, bandwidth)
//! followed by its deallocate, so the state stays the same between iterations.
//!
//! `cargo bench -p wfm-workers --bench allocate`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use wfm_protocol::flow::{FlowEndpoint, FlowSpec};
use wfm_protocol::topology::{switch_id, LinkEnd, LinkInfo, SwitchInfo, TopologyRecord};
use wfm_workers::allocator::Allocator;
use wfm_workers::network::Network;

const SIDE: u64 = 10;

fn grid() -> Network {
    let mut records = Vec::new();
    let n = |row: u64, col: u64| row * SIDE + col + 1;
    for row in 0..SIDE {
        for col in 0..SIDE {
            records.push(TopologyRecord::Switch(SwitchInfo {
                switch_id: switch_id(n(row, col)),
                ports: (1..=20).collect(),
            }));
            // Port 11 east, 12 west, 13 south, 14 north; customers on 1..=10.
            let mut link = |to: u64, out: u32, into: u32| {
                let forward = LinkInfo {
                    src: LinkEnd {
                        switch_id: switch_id(n(row, col)),
                        port: out,
                    },
                    dst: LinkEnd {
                        switch_id: switch_id(to),
                        port: into,
                    },
                    bandwidth_kbps: 10_000_000,
                    latency_ms: 1 + (row * 7 + col * 3) % 5,
                };
                records.push(TopologyRecord::Link(forward.reversed()));
                records.push(TopologyRecord::Link(forward));
            };
            if col + 1 < SIDE {
                link(n(row, col + 1), 11, 12);
            }
            if row + 1 < SIDE {
                link(n(row + 1, col), 13, 14);
            }
        }
    }
    Network::from_records(records)
}

fn flow(id: u64, src: u64, dst: u64, vlan: u16) -> FlowSpec {
    let endpoint = |n: u64| FlowEndpoint {
        switch_id: switch_id(n),
        port_number: 1 + (id % 10) as u32,
        vlan_id: vlan,
        inner_vlan_id: 0,
    };
    FlowSpec {
        flow_id: format!("flow-{id}"),
        source: endpoint(src),
        destination: endpoint(dst),
        maximum_bandwidth: 1_000,
        ignore_bandwidth: false,
        description: String::new(),
        priority: None,
        encapsulation_type: Default::default(),
    }
}

fn bench(c: &mut Criterion) {
    let network = grid();
    let mut allocator = Allocator::default();
    for id in 0..1_000u64 {
        let src = id % 100 + 1;
        let dst = (id * 37 + 11) % 100 + 1;
        allocator
            .allocate(&network, &flow(id, src, dst, (id / 10 + 1) as u16))
            .expect("room for 1,000 flows");
    }
    let corner_to_corner = flow(5_000, 1, 100, 4_000);
    c.bench_function(
        "allocate+deallocate, 100 switches, 1000 flows, corner to corner",
        |b| {
            b.iter(|| {
                allocator
                    .allocate(&network, black_box(&corner_to_corner))
                    .expect("allocates");
                allocator.deallocate("flow-5000").expect("held");
            })
        },
    );
    let neighbours = flow(5_001, 45, 46, 4_001);
    c.bench_function(
        "allocate+deallocate, 100 switches, 1000 flows, neighbours",
        |b| {
            b.iter(|| {
                allocator
                    .allocate(&network, black_box(&neighbours))
                    .expect("allocates");
                allocator.deallocate("flow-5001").expect("held");
            })
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
