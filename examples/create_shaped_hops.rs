//! What a flow create's shape costs on the broker and client alone, before
//! any component does any work.
//!
//! Relays that do nothing but forward bare records carry them in the shape of
//! a create: a command into the hub, then one job after another of hub →
//! speaker → switches → speaker → hub (`--fanouts` gives each job's switch
//! records: a create of a bidirectional flow over three switches sends 4, 4,
//! 2 and 2), then the outcome out to the caller. In the shapes with side
//! records, the hub also writes `--side` records per event, half of them read
//! by a view (as history and flow records are). Every relay is a consumer-group member with the components'
//! settings, sending through one shared producer and committing only what
//! the broker acknowledged, as the components do. Each shape is timed in
//! rounds alternating with the bare one-hop floor of `wfm bench`, so its
//! ratio compares with the bench's `create latency / (hops × floor)`. The
//! model has 18 of a create's 20 hops: no resource manager round trip.
//!
//! ```sh
//! target/release/wfm broker --ephemeral &
//! cargo run --release --example create_shaped_hops
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use wfm_runtime::config::KafkaConfig;
use wfm_runtime::producer::{acknowledged, client_config, Outgoing, Producer};

#[derive(Parser)]
struct Args {
    #[arg(long, env = "WFM_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Switch records of each job of a create, in order (install and
    /// validate non-ingress rules, then install and validate ingress rules).
    #[arg(long, value_delimiter = ',', default_value = "4,4,2,2")]
    fanouts: Vec<usize>,
    /// Side records the hub writes per event (snapshot, history, flow, timer).
    #[arg(long, default_value_t = 4)]
    side: usize,
    /// Bytes of each record's payload.
    #[arg(long, default_value_t = 1500)]
    payload: usize,
    /// Samples per shape and round.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// How a create fans out: switch records per job, and side records per hub event.
struct Shape {
    fanouts: Vec<usize>,
    side: usize,
}

impl Shape {
    /// Switch records of the job that has `jobs_left` jobs after it.
    fn fanout(&self, jobs_left: usize) -> usize {
        self.fanouts[self.fanouts.len() - 1 - jobs_left]
    }
}

/// A record's header: the jobs still to run after the current one, and its shape.
type Header = [usize; 2];

struct Topics {
    caller: String,
    hub: String,
    speaker: String,
    switch: String,
    speaker_replies: String,
    viewed: String,
    unread: String,
}

fn record(topic: &str, partition: usize, key: &str, header: Header, payload: &str) -> Outgoing {
    let [jobs_left, shape] = header;
    Outgoing {
        topic: topic.to_owned(),
        key: key.to_owned(),
        partition: Some(partition as i32),
        value: Some(format!("{jobs_left} {shape}|{payload}").into_bytes()),
    }
}

fn parse(message: &impl Message) -> anyhow::Result<(String, Header, String)> {
    let key = String::from_utf8(message.key().context("no key")?.to_vec())?;
    let value = std::str::from_utf8(message.payload().context("no payload")?)?;
    let (header, payload) = value.split_once('|').context("no header")?;
    let mut numbers = header.split(' ').map(str::parse::<usize>);
    let mut next = || -> anyhow::Result<usize> { Ok(numbers.next().context("short header")??) };
    Ok((key, [next()?, next()?], payload.to_owned()))
}

fn group_member(kafka: &KafkaConfig, group: &str, topic: &str) -> anyhow::Result<StreamConsumer> {
    let mut config = client_config(kafka, &kafka.consumer);
    // The settings of the components' consumers (wfm_runtime::consumer).
    config
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "200")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("heartbeat.interval.ms", "500");
    let consumer: StreamConsumer = config.create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// A relay: each record it reads becomes the records `forward` returns, sent
/// before the next record is read, and committed once they are acknowledged.
fn relay<F>(consumer: StreamConsumer, producer: Producer, mut forward: F)
where
    F: FnMut(&str, Header, &str) -> Vec<Outgoing> + Send + 'static,
{
    tokio::spawn(async move {
        let relayed = async {
            loop {
                let message = consumer.recv().await?;
                let (key, header, payload) = parse(&message)?;
                let mut deliveries = Vec::new();
                for out in forward(&key, header, &payload) {
                    deliveries.push(producer.enqueue(&out).await?);
                }
                for delivery in deliveries {
                    acknowledged(delivery).await?;
                }
                consumer.store_offset(message.topic(), message.partition(), message.offset())?;
            }
        };
        let outcome: anyhow::Result<()> = relayed.await;
        if let Err(error) = outcome {
            eprintln!("relay stopped: {error:#}");
            std::process::exit(1);
        }
    });
}

fn start_relays(
    kafka: &KafkaConfig,
    producer: &Producer,
    topics: &Topics,
    shapes: &Arc<Vec<Shape>>,
    run: &str,
) -> anyhow::Result<()> {
    let member = |topic: &str| group_member(kafka, &format!("{run}-{topic}"), topic);
    let (speaker, caller, viewed, unread) = (
        topics.speaker.clone(),
        topics.caller.clone(),
        topics.viewed.clone(),
        topics.unread.clone(),
    );
    let hub_shapes = shapes.clone();
    relay(
        member(&topics.hub)?,
        producer.clone(),
        move |key, [jobs_left, shape], payload| {
            let side_topic = |i: usize| {
                if i.is_multiple_of(2) {
                    &viewed
                } else {
                    &unread
                }
            };
            let mut outs: Vec<Outgoing> = (0..hub_shapes[shape].side)
                .map(|i| record(side_topic(i), 0, key, [0, shape], payload))
                .collect();
            outs.push(match jobs_left {
                0 => record(&caller, 0, key, [0, shape], payload),
                _ => record(&speaker, 0, key, [jobs_left - 1, shape], payload),
            });
            outs
        },
    );
    let switch = topics.switch.clone();
    let speaker_shapes = shapes.clone();
    relay(
        member(&topics.speaker)?,
        producer.clone(),
        move |key, header, payload| {
            let fanout = speaker_shapes[header[1]].fanout(header[0]);
            (0..fanout)
                .map(|partition| record(&switch, partition, key, header, payload))
                .collect()
        },
    );
    let speaker_replies = topics.speaker_replies.clone();
    relay(
        member(&topics.switch)?,
        producer.clone(),
        move |key, header, payload| vec![record(&speaker_replies, 0, key, header, payload)],
    );
    let hub = topics.hub.clone();
    let reply_shapes = shapes.clone();
    let mut replies: HashMap<String, usize> = HashMap::new();
    relay(
        member(&topics.speaker_replies)?,
        producer.clone(),
        move |key, header, payload| {
            let received = replies.entry(key.to_owned()).or_default();
            *received += 1;
            if *received < reply_shapes[header[1]].fanout(header[0]) {
                return Vec::new();
            }
            replies.remove(key);
            vec![record(&hub, 0, key, header, payload)]
        },
    );
    let view = member(&topics.viewed)?;
    tokio::spawn(async move { while view.recv().await.is_ok() {} });
    Ok(())
}

/// Times `samples` records sent to `first` until they come back to the caller.
async fn time_shape(
    producer: &Producer,
    caller: &StreamConsumer,
    first: &str,
    header: Header,
    payload: &str,
    samples: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut millis = Vec::with_capacity(samples);
    for i in 0..samples + 10 {
        let key = format!("{first}-{header:?}-{i}-{:x}", rand::random::<u32>());
        let at = Instant::now();
        let delivery = producer
            .enqueue(&record(first, 0, &key, header, payload))
            .await?;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), caller.recv())
                .await
                .context("a record did not come back within 10 s")??;
            if message.key() == Some(key.as_bytes()) {
                break;
            }
        }
        // The first records also wait for the groups to settle: not counted.
        if i >= 10 {
            millis.push(at.elapsed().as_secs_f64() * 1000.0);
        }
        acknowledged(delivery).await?;
    }
    millis.sort_by(f64::total_cmp);
    Ok((millis[millis.len() / 2], millis[millis.len() * 99 / 100]))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        !args.fanouts.is_empty() && !args.fanouts.contains(&0),
        "--fanouts needs at least one job, each with at least one switch record"
    );
    let jobs = args.fanouts.len();
    let widest = *args.fanouts.iter().max().expect("not empty");
    let mut kafka = KafkaConfig {
        brokers: args.brokers.clone(),
        ..Default::default()
    };
    kafka.tune_for_embedded_broker();
    let run = format!("shaped-hops-{:x}", rand::random::<u32>());
    let name = |role: &str| format!("{run}.{role}");
    let topics = Topics {
        caller: name("caller"),
        hub: name("hub"),
        speaker: name("speaker"),
        switch: name("switch"),
        speaker_replies: name("speaker-replies"),
        viewed: name("viewed"),
        unread: name("unread"),
    };
    let admin: AdminClient<DefaultClientContext> =
        client_config(&kafka, &Default::default()).create()?;
    let single = [
        &topics.caller,
        &topics.hub,
        &topics.speaker,
        &topics.speaker_replies,
        &topics.viewed,
        &topics.unread,
    ];
    let new_topics: Vec<NewTopic> = single
        .iter()
        .map(|topic| NewTopic::new(topic, 1, TopicReplication::Fixed(1)))
        .chain([NewTopic::new(
            &topics.switch,
            widest as i32,
            TopicReplication::Fixed(1),
        )])
        .collect();
    for created in admin
        .create_topics(new_topics.iter(), &AdminOptions::new())
        .await
        .with_context(|| {
            format!(
                "no broker answered at {} (start one with `wfm broker --ephemeral`)",
                args.brokers
            )
        })?
    {
        created.map_err(|(topic, code)| anyhow::anyhow!("cannot create {topic}: {code}"))?;
    }
    let producer = Producer::new(&kafka)?;
    let shape = |fanouts: Vec<usize>, side: usize| Shape { fanouts, side };
    let shapes = Arc::new(vec![
        shape(vec![1; jobs], 0),
        shape(args.fanouts.clone(), 0),
        shape(vec![1; jobs], args.side),
        shape(args.fanouts.clone(), args.side),
    ]);
    start_relays(&kafka, &producer, &topics, &shapes, &run)?;
    let caller = group_member(&kafka, &format!("{run}-caller"), &topics.caller)?;
    let payload = "x".repeat(args.payload);
    let hops = 2 + 4 * jobs;
    // One floor for the whole run, as `wfm bench` has: the floor of each
    // shape's own moment swings by a third on these machines.
    let mut floors = Vec::new();
    let mut timings: Vec<Vec<(f64, f64)>> = vec![Vec::new(); shapes.len()];
    for _ in 0..args.rounds {
        floors.push(
            time_shape(
                &producer,
                &caller,
                &topics.caller,
                [0, 0],
                &payload,
                args.samples,
            )
            .await?,
        );
        for (index, timed) in timings.iter_mut().enumerate() {
            let header = [jobs, index];
            timed.push(
                time_shape(
                    &producer,
                    &caller,
                    &topics.hub,
                    header,
                    &payload,
                    args.samples,
                )
                .await?,
            );
        }
    }
    let floor = median(floors.iter().map(|(p50, _)| *p50));
    let base = hops as f64 * floor;
    println!(
        "{hops} hops a create ({} jobs), {} B records, floor p50 {floor:.3} ms; medians of {} rounds of {} samples",
        jobs, args.payload, args.rounds, args.samples
    );
    for (shape, timed) in shapes.iter().zip(&timings) {
        let p50 = median(timed.iter().map(|(p50, _)| *p50));
        let p99 = median(timed.iter().map(|(_, p99)| *p99));
        println!(
            "switch records {:?}  side records {}:  p50 {p50:.2} ms ({:.2}× {hops} × floor)  p99 {p99:.2} ms ({:.2}×)",
            shape.fanouts, shape.side, p50 / base, p99 / base
        );
    }
    Ok(())
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
