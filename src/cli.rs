//! The `wfm` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "wfm",
    version,
    about = "Hub-and-spoke workflow orchestrator over Kafka"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// TOML configuration file.
    #[arg(long, global = true, env = "WFM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Bootstrap servers of an external Kafka cluster; without it wfm runs its own broker.
    #[arg(long, global = true, env = "WFM_KAFKA_BROKERS")]
    pub brokers: Option<String>,
    /// Prefix of every topic name.
    #[arg(long, global = true, env = "WFM_TOPIC_PREFIX")]
    pub topic_prefix: Option<String>,
    /// librdkafka property for every client, e.g. `-X socket.timeout.ms=10000` (repeatable).
    #[arg(short = 'X', long = "kafka-property", global = true, value_name = "KEY=VALUE", value_parser = parse_property)]
    pub kafka_properties: Vec<(String, String)>,
    /// librdkafka property for consumers only, e.g. `-C fetch.wait.max.ms=1` (repeatable).
    #[arg(short = 'C', long = "consumer-property", global = true, value_name = "KEY=VALUE", value_parser = parse_property)]
    pub consumer_properties: Vec<(String, String)>,
    #[arg(long, global = true, env = "WFM_LOG_FORMAT", default_value = "pretty")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Listen address of the embedded broker.
    #[arg(long, env = "WFM_BROKER_ADDR")]
    pub broker_addr: Option<SocketAddr>,
    /// Directory for the embedded broker's durable storage.
    #[arg(long, env = "WFM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep the embedded broker's data in memory only.
    #[arg(long)]
    pub ephemeral: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole system in one process: broker (unless external), topics, every component.
    Up {
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        northbound: crate::commands::northbound::NorthboundArgs,
    },
    /// Run only the embedded broker and provision the topics.
    Broker {
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Load generator through the REST API, measured against the broker's hop floor.
    Bench(crate::commands::bench::BenchArgs),
    /// Run one hub instance (flow request state machines) against a running cluster.
    Hub,
    /// Run one coordinator instance (durable callbacks and timeouts) against a running cluster.
    Coordinator,
    /// Run the northbound REST API against a running cluster.
    Northbound(crate::commands::northbound::NorthboundArgs),
    /// Flows through the REST API: create, get, list, delete, history.
    Flow {
        #[command(flatten)]
        client: crate::commands::flow::Client,
        #[command(subcommand)]
        command: crate::commands::flow::FlowCommand,
    },
    /// Run the worker spokes: resource manager (paths, allocation) and/or speaker worker (switch commands).
    Worker(crate::commands::worker::WorkerArgs),
    /// Run the simulated switch controller: topology, flow and meter tables, fault injection.
    Simulator(crate::commands::simulator::SimulatorArgs),
    /// Inspect topics: watermarks, decoded records, consumer groups.
    Topics {
        #[command(subcommand)]
        command: crate::commands::topics::TopicsCommand,
    },
    /// Every message of one request across all topics, as a timeline with hop latencies.
    Trace(crate::commands::trace::TraceArgs),
    /// Compare flows, allocations, switch tables and history; exit non-zero on any violation.
    Check(crate::commands::check::CheckArgs),
    /// Dead letters: list them, or replay them to their origin topic after a fix.
    Dlq {
        #[command(subcommand)]
        command: crate::commands::dlq::DlqCommand,
    },
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))?;
    if key.trim().is_empty() {
        return Err(format!("`{text}` has an empty key"));
    }
    Ok((key.trim().to_owned(), value.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// Zero would mean "no bound" to the stream that sends the requests.
    #[test]
    fn bench_needs_at_least_one_request_in_flight() {
        use clap::Parser;
        let error = Cli::try_parse_from(["wfm", "bench", "--concurrency", "0"]).unwrap_err();
        assert!(error.to_string().contains("--concurrency"), "{error}");
        assert!(Cli::try_parse_from(["wfm", "bench", "--concurrency", "1"]).is_ok());
    }

    #[test]
    fn properties_parse() {
        assert_eq!(parse_property("a.b=1").unwrap(), ("a.b".into(), "1".into()));
        assert!(parse_property("nope").is_err());
        assert!(parse_property("=1").is_err());
    }
}
