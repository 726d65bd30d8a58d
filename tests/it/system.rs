//! A whole wfm system for end-to-end tests: a broker and every component as
//! a separate `wfm` process (so any of them can be SIGKILLed and restarted),
//! plus a client that talks to the hub over Kafka and reads back flows,
//! history and the simulator's switch tables.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use wfm_protocol::flow::{FlowEndpoint, FlowRecord, FlowSpec, FlowsMessage};
use wfm_protocol::history::{HistoryEvent, HistoryMessage};
use wfm_protocol::hub::{CreateFlowRequest, DeleteFlowRequest, HubMessage};
use wfm_protocol::northbound::NorthboundReply;
use wfm_protocol::resources::ReplyTo;
use wfm_protocol::{Envelope, Topic};
use wfm_runtime::{KafkaConfig, Outgoing, Producer};

use crate::harness::{free_port, read_topic, TestBroker, WfmProcess};

/// Short deadlines, so that failure scenarios end within seconds.
pub const TEST_CONFIG: &str = r#"
[hub.timeouts]
request_ms = 20000
step_ms = 8000
rollback_ms = 6000
rollback_retries = 1

[speaker]
max_attempts = 2
initial_backoff_ms = 50
max_backoff_ms = 200
command_timeout_ms = 1000
"#;

/// The resource manager and the speaker worker run as processes of their
/// own (`wfm worker --role …`), so that either can be killed alone.
pub const COMPONENTS: [&str; 5] = ["coordinator", "simulator", "resources", "speaker", "hub"];

/// Fields drop in order: the client and components go before the broker they talk to.
pub struct System {
    pub client: HubClient,
    processes: HashMap<&'static str, WfmProcess>,
    pub broker: TestBroker,
    pub simulator_url: String,
    /// Where `wfm northbound` listens once started (it is not in [`COMPONENTS`]).
    pub northbound_url: String,
    config_path: std::path::PathBuf,
    simulator_addr: String,
    northbound_addr: String,
}

impl System {
    pub async fn start() -> Self {
        let broker = TestBroker::start().await;
        let config_path =
            std::env::temp_dir().join(format!("wfm-test-{}.toml", rand::random::<u64>()));
        std::fs::write(&config_path, TEST_CONFIG).expect("test config written");
        let simulator_addr = format!("127.0.0.1:{}", free_port());
        let northbound_addr = format!("127.0.0.1:{}", free_port());
        let client = HubClient::start(&broker.kafka).await;
        let mut system = Self {
            simulator_url: format!("http://{simulator_addr}"),
            northbound_url: format!("http://{northbound_addr}"),
            broker,
            config_path,
            simulator_addr,
            northbound_addr,
            processes: HashMap::new(),
            client,
        };
        for component in COMPONENTS {
            system.start_component(component).await;
        }
        system
    }

    pub async fn start_component(&mut self, component: &'static str) {
        self.start_instance(component, component).await;
    }

    /// Starts another instance of `component`, known to [`System::kill`] as `name`.
    pub async fn start_instance(&mut self, name: &'static str, component: &'static str) {
        let config = self.config_path.to_str().expect("utf-8 path").to_owned();
        let mut args: Vec<String> = match component {
            "resources" | "speaker" => vec!["worker".into(), "--role".into(), component.into()],
            _ => vec![component.into()],
        };
        args.extend(["--config".into(), config]);
        match component {
            "simulator" => args.extend(["--simulator-addr".into(), self.simulator_addr.clone()]),
            "northbound" => args.extend(["--http-addr".into(), self.northbound_addr.clone()]),
            _ => {}
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = WfmProcess::spawn(&args, Some(&self.broker.kafka)).await;
        self.processes.insert(name, process);
    }

    /// SIGKILL: the instance gets no chance to flush, commit or say goodbye.
    pub async fn kill(&mut self, name: &'static str) {
        if let Some(process) = self.processes.remove(name) {
            process.kill().await;
        }
    }

    pub async fn put_faults(&self, faults: serde_json::Value) {
        let response = reqwest::Client::new()
            .put(format!("{}/faults", self.simulator_url))
            .json(&faults)
            .send()
            .await
            .expect("simulator reachable");
        assert!(
            response.status().is_success(),
            "faults accepted: {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// Every rule on every switch, as `(switch id, flow id, cookie)`.
    pub async fn installed_rules(&self) -> Vec<(String, String, u64)> {
        let switches: Vec<serde_json::Value> =
            reqwest::get(format!("{}/switches", self.simulator_url))
                .await
                .expect("simulator reachable")
                .json()
                .await
                .expect("switch list");
        let mut rules = Vec::new();
        for switch in switches {
            let switch_id = switch["switch_id"].as_str().unwrap_or_default().to_owned();
            for rule in switch["rules"].as_array().into_iter().flatten() {
                rules.push((
                    switch_id.clone(),
                    rule["flow_id"].as_str().unwrap_or_default().to_owned(),
                    rule["cookie"].as_u64().unwrap_or_default(),
                ));
            }
        }
        rules
    }

    /// The current record of every flow in `wfm.flows`.
    pub async fn flows(&self) -> HashMap<String, FlowRecord> {
        let kafka = &self.broker.kafka;
        let records = read_topic(
            kafka,
            &kafka.topics().name(Topic::Flows),
            Duration::from_secs(3),
            |_| false,
        )
        .await;
        let mut flows = HashMap::new();
        for record in records {
            let key = record.key.clone().unwrap_or_default();
            match record.envelope() {
                Some(envelope) => {
                    let FlowsMessage::FlowRecord(flow) = envelope.open().expect("flow record");
                    flows.insert(key, flow);
                }
                None => {
                    flows.remove(&key);
                }
            }
        }
        flows
    }

    /// A flow's history events in log order, exact duplicates (from a replay) removed.
    pub async fn history(&self, flow_id: &str) -> Vec<HistoryEvent> {
        let kafka = &self.broker.kafka;
        let records = read_topic(
            kafka,
            &kafka.topics().name(Topic::History),
            Duration::from_secs(3),
            |_| false,
        )
        .await;
        let mut events: Vec<HistoryEvent> = Vec::new();
        for record in records.iter().filter(|r| r.key.as_deref() == Some(flow_id)) {
            let HistoryMessage::HistoryEvent(event) = record
                .envelope()
                .expect("envelope")
                .open()
                .expect("history");
            if !events.contains(&event) {
                events.push(event);
            }
        }
        events
    }
}

impl Drop for System {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config_path);
    }
}

pub fn endpoint(switch: u64, port: u32, vlan: u16) -> FlowEndpoint {
    FlowEndpoint {
        switch_id: wfm_protocol::topology::switch_id(switch),
        port_number: port,
        vlan_id: vlan,
        inner_vlan_id: 0,
    }
}

pub fn flow(
    flow_id: &str,
    source: FlowEndpoint,
    destination: FlowEndpoint,
    bandwidth: u64,
) -> FlowSpec {
    FlowSpec {
        flow_id: flow_id.into(),
        source,
        destination,
        maximum_bandwidth: bandwidth,
        ignore_bandwidth: false,
        description: String::new(),
        priority: None,
        encapsulation_type: Default::default(),
    }
}

/// Talks to the hub the way the northbound does: commands on `wfm.hub`,
/// answers on `wfm.northbound`, matched by request id.
pub struct HubClient {
    producer: Producer,
    kafka: KafkaConfig,
    replies: Arc<Mutex<Vec<NorthboundReply>>>,
    reader: JoinHandle<()>,
}

impl Drop for HubClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl HubClient {
    pub async fn start(kafka: &KafkaConfig) -> Self {
        let replies = Arc::new(Mutex::new(Vec::new()));
        let consumer: StreamConsumer = wfm_runtime::producer::reader_config(kafka, "test-replies")
            .create()
            .expect("reply reader");
        let topic = kafka.topics().name(Topic::Northbound);
        let mut assignment = TopicPartitionList::new();
        for partition in 0..kafka.partitions_of(Topic::Northbound) {
            assignment
                .add_partition_offset(&topic, partition, Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&assignment).expect("assign");
        let sink = replies.clone();
        let reader = tokio::spawn(async move {
            while let Ok(message) = consumer.recv().await {
                let reply = message
                    .payload()
                    .and_then(|p| Envelope::decode(p, usize::MAX).ok())
                    .and_then(|e| e.open::<NorthboundReply>().ok());
                if let Some(reply) = reply {
                    sink.lock().unwrap().push(reply);
                }
            }
        });
        Self {
            producer: Producer::new(kafka).expect("producer"),
            kafka: kafka.clone(),
            replies,
            reader,
        }
    }

    fn reply_to(&self, request_id: &str) -> ReplyTo {
        ReplyTo {
            topic: self.kafka.topics().name(Topic::Northbound),
            key: request_id.into(),
        }
    }

    async fn send(&self, flow_id: &str, message: &HubMessage, request_id: &str) {
        let envelope = Envelope::new(message, "test", request_id).expect("encodes");
        let out = Outgoing::envelope(self.kafka.topics().name(Topic::Hub), flow_id, &envelope);
        self.producer.send(&out).await.expect("command sent");
    }

    pub async fn create(&self, spec: &FlowSpec) -> String {
        let request_id = format!("create-{}-{}", spec.flow_id, rand::random::<u32>());
        let message = HubMessage::CreateFlow(CreateFlowRequest {
            request_id: request_id.clone(),
            flow: spec.clone(),
            reply_to: self.reply_to(&request_id),
        });
        self.send(&spec.flow_id, &message, &request_id).await;
        request_id
    }

    pub async fn delete(&self, flow_id: &str) -> String {
        let request_id = format!("delete-{flow_id}-{}", rand::random::<u32>());
        let message = HubMessage::DeleteFlow(DeleteFlowRequest {
            request_id: request_id.clone(),
            flow_id: flow_id.into(),
            reply_to: self.reply_to(&request_id),
        });
        self.send(flow_id, &message, &request_id).await;
        request_id
    }

    /// Waits for the first answer matching `pick`.
    pub async fn wait_for(
        &self,
        request_id: &str,
        timeout: Duration,
        pick: impl Fn(&NorthboundReply) -> bool,
    ) -> Option<NorthboundReply> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let found = self
                .replies
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.request_id() == request_id && pick(r))
                .cloned();
            if found.is_some() || tokio::time::Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The request's last word: finished, or rejected.
    pub async fn outcome(&self, request_id: &str, timeout: Duration) -> Option<NorthboundReply> {
        self.wait_for(request_id, timeout, |r| {
            matches!(
                r,
                NorthboundReply::RequestFinished { .. } | NorthboundReply::RequestRejected { .. }
            )
        })
        .await
    }
}
