//! Test harness: a real broker (the `wfm broker` binary, in-memory, on a free
//! port) per test, `wfm` component processes that can be killed with SIGKILL,
//! and helpers to read what landed on a topic.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use wfm_protocol::{Envelope, Topic};
use wfm_runtime::{KafkaConfig, RetryConfig};

pub const WFM: &str = env!("CARGO_BIN_EXE_wfm");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `wfm`, pointed at `kafka`'s broker, topics and client settings when given
/// (a subcommand and its arguments follow).
pub fn wfm_command(kafka: Option<&KafkaConfig>) -> Command {
    let mut command = Command::new(WFM);
    if let Some(kafka) = kafka {
        command.env("WFM_KAFKA_BROKERS", &kafka.brokers);
        command.env("WFM_TOPIC_PREFIX", &kafka.topic_prefix);
        for (key, value) in &kafka.client {
            command.arg("-X").arg(format!("{key}={value}"));
        }
        for (key, value) in &kafka.consumer {
            command.arg("-C").arg(format!("{key}={value}"));
        }
    }
    command
}

/// A `wfm` process; killed with SIGKILL when dropped.
pub struct WfmProcess {
    pub child: Child,
    _registered: Registered,
}

impl WfmProcess {
    /// Spawns `wfm <args>` against the broker and waits for its `wfm ready` line.
    pub async fn spawn(args: &[&str], kafka: Option<&KafkaConfig>) -> Self {
        Self::spawn_with_env(args, kafka, &[]).await
    }

    /// [`WfmProcess::spawn`] with extra environment variables.
    pub async fn spawn_with_env(
        args: &[&str],
        kafka: Option<&KafkaConfig>,
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = wfm_command(kafka);
        command
            .args(args)
            .envs(env.iter().copied())
            .env(
                "WFM_LOG",
                std::env::var("WFM_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("wfm binary spawns");
        let registered =
            watchdog().register(Watched::Process(child.id().expect("a running child")));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("wfm ready") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(ready, Ok(true), "wfm {args:?} did not become ready");
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            _registered: registered,
        }
    }

    /// SIGKILL: no shutdown hook runs, nothing is flushed or committed.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM: the process shuts down the way an operator stops it.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("a running process").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "SIGTERM sent to {pid}");
    }
}

/// A broker of its own for one test, with every topic provisioned.
pub struct TestBroker {
    pub kafka: KafkaConfig,
    _process: WfmProcess,
    _test: Registered,
}

impl TestBroker {
    pub async fn start() -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let process =
            WfmProcess::spawn(&["broker", "--ephemeral", "--broker-addr", &addr], None).await;
        let mut kafka = KafkaConfig {
            brokers: addr,
            retry: RetryConfig {
                initial_ms: 10,
                max_ms: 200,
                max_attempts: 4,
            },
            ..KafkaConfig::default()
        };
        kafka.tune_for_embedded_broker();
        let test = std::thread::current()
            .name()
            .unwrap_or("an unnamed test")
            .to_owned();
        Self {
            kafka,
            _process: process,
            _test: watchdog().register(Watched::Test(test, Instant::now())),
        }
    }

    pub fn topic(&self, topic: Topic) -> String {
        self.kafka.topics().name(topic)
    }
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Option<Vec<u8>>,
}

impl Record {
    pub fn envelope(&self) -> Option<Envelope> {
        Envelope::decode(self.value.as_deref()?, usize::MAX).ok()
    }
}

/// Reads every partition of `topic` from the beginning until `done` holds for
/// what was read, or `timeout` passes; returns what was read either way.
pub async fn read_topic(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let consumer: StreamConsumer = wfm_runtime::producer::reader_config(kafka, "test-reader")
        .create()
        .expect("reader");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..kafka.partitions_of(kafka.topics().parse(topic).expect("a wfm topic")) {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(&records) {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => records.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: m.payload().map(<[u8]>::to_vec),
            }),
            Ok(Err(error)) => panic!("reading {topic}: {error}"),
            Err(_) => break,
        }
    }
    records
}

/// The JSON body of `GET url`.
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// No test may hold its broker longer than this. A test that hangs then ends
/// the run within minutes, with its name, instead of holding CI to its limit.
const TEST_LIMIT: Duration = Duration::from_secs(600);

/// What the watchdog keeps an eye on.
enum Watched {
    /// A running test, by name, since it started its broker.
    Test(String, Instant),
    /// A `wfm` child process, killed before the watchdog ends the run: it
    /// would otherwise outlive the run and hold its output pipe open.
    Process(u32),
}

#[derive(Default)]
struct Watchdog {
    watched: Mutex<HashMap<u64, Watched>>,
}

/// Unregisters on drop.
struct Registered(u64);

impl Drop for Registered {
    fn drop(&mut self) {
        watchdog().lock().remove(&self.0);
    }
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_secs(5));
            watchdog().end_the_run_if_a_test_hangs();
        });
        Watchdog::default()
    })
}

impl Watchdog {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Watched>> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self, watched: Watched) -> Registered {
        let id = rand::random();
        self.lock().insert(id, watched);
        Registered(id)
    }

    fn end_the_run_if_a_test_hangs(&self) {
        let watched = self.lock();
        let Some(test) = watched.values().find_map(|w| match w {
            Watched::Test(name, since) if since.elapsed() > TEST_LIMIT => Some(name),
            _ => None,
        }) else {
            return;
        };
        eprintln!("{test} has run for more than {TEST_LIMIT:?}: it hangs; ending the test run");
        for watched in watched.values() {
            if let Watched::Process(pid) = watched {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        std::process::exit(101);
    }
}
