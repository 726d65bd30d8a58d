//! `wfm check`: the invariant checker (see the `wfm-check` crate) against a
//! running system. Exits non-zero when it finds any violation.

use clap::Args;
use wfm_check::{Options, Report, Sources};
use wfm_hub::fsm::Timeouts;

use super::scan::{print_json, table};
use super::system::Cluster;
use crate::config::Config;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Base URL of the switch controller's control API.
    #[arg(
        long,
        env = "WFM_SIMULATOR_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    simulator_url: String,
    /// A flow IN_PROGRESS for longer is stuck; by default the longest a
    /// request can take under the configured hub timeouts.
    #[arg(long, value_name = "MS")]
    stuck_after_ms: Option<i64>,
    /// One JSON document instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{0} invariant violation(s) found")]
struct ViolationsFound(usize);

pub async fn run(config: Config, args: CheckArgs) -> anyhow::Result<()> {
    let options = Options {
        stuck_after_ms: args
            .stuck_after_ms
            .unwrap_or_else(|| longest_request_ms(&config.hub.timeouts)),
    };
    let cluster = Cluster::join(config).await?;
    let sources = Sources {
        kafka: &cluster.config.kafka,
        simulator_url: &args.simulator_url,
    };
    let snapshot = wfm_check::collect(&sources).await?;
    let report = wfm_check::check(&snapshot, &options);
    if args.json {
        print_json(&report)?;
    } else {
        print_report(&report);
    }
    match report.violations.len() {
        0 => Ok(()),
        n => Err(ViolationsFound(n).into()),
    }
}

/// The forward path's deadline plus both rollback steps (rules, resources)
/// with all their retries: after that, a request still IN_PROGRESS has
/// missed a timeout that should have ended it.
fn longest_request_ms(timeouts: &Timeouts) -> i64 {
    let rollback_step = timeouts.rollback_ms * (i64::from(timeouts.rollback_retries) + 1);
    timeouts.request_ms + 2 * rollback_step
}

fn print_report(report: &Report) {
    let by_status: Vec<String> = report
        .flows_by_status
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect();
    println!(
        "checked {} flows ({}; {} changed while read), {} allocations, {} rules on {} switches, {} history events",
        report.flows,
        by_status.join(", "),
        report.unsettled_flows,
        report.allocations,
        report.rules,
        report.switches,
        report.history_events,
    );
    if report.is_clean() {
        println!("no violation");
        return;
    }
    let mut out = table(["#", "VIOLATION"]);
    for (n, violation) in report.violations.iter().enumerate() {
        out.add_row([(n + 1).to_string(), violation.to_string()]);
    }
    println!("{out}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_deadline_covers_the_forward_path_and_both_rollbacks() {
        let timeouts = Timeouts {
            request_ms: 20_000,
            step_ms: 8_000,
            rollback_ms: 6_000,
            rollback_retries: 1,
        };
        assert_eq!(longest_request_ms(&timeouts), 20_000 + 2 * 12_000);
    }
}
