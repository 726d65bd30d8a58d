//! The invariant checker behind `wfm check` and the chaos tests: compares
//! what wfm believes (`wfm.flows`, the resource manager's allocations,
//! `wfm.history`) with what the network holds (the switch controller's
//! tables) and reports every discrepancy.
//!
//! A crate of its own because it needs the hub (the rules a flow should have)
//! and the workers (the allocation record format), and both the `wfm` binary
//! and the integration tests use it; the comparison ([`invariants`]) is pure,
//! the reading ([`collect`]) is the only I/O.

pub mod collect;
pub mod invariants;

pub use collect::{collect, CollectError, Sources};
pub use invariants::{check, Options, Report, Snapshot, SwitchTable, Violation};
